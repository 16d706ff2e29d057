/* Configuration fingerprint and its comparison (crypto/fingerprint.h). */
#include "crypto/fingerprint.h"
#include "crypto/engine.h"
#include "crypto/keyring.h"
#include "hsm/hsm.h"
#include "common/err.h"
#include "common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

/* The one call into the key API: the keyring's interface is changing
 * (keyring.h); only this wrapper follows it. The certificate's DER, else
 * the public key's SubjectPublicKeyInfo; SHA-256 hex into hex, "-" when
 * the key is not open. */
static void
key_digest(struct keyring *kr, const struct engine_descriptor *d,
    char *hex, size_t size)
{
	hsm_key *k = kr ? keyring_unwrapper(kr, d) : NULL;
	unsigned char md[EVP_MAX_MD_SIZE];
	const unsigned char *spki = NULL;
	unsigned int mdlen = 0;
	size_t slen = 0;
	X509 *cert;

	snprintf(hex, size, "-");
	if (k == NULL)
		return;
	if ((cert = hsm_key_cert(k)) != NULL) {
		if (X509_digest(cert, EVP_sha256(), md, &mdlen) == 1 && size > 6 + 64) {
			memcpy(hex, "cert=", 5);
			util_hex(md, mdlen, hex + 5);
		}
		return;
	}
	if ((spki = hsm_key_spki(k, &slen)) != NULL &&
	    EVP_Digest(spki, slen, md, &mdlen, EVP_sha256(), NULL) == 1 &&
	    size > 6 + 64) {
		memcpy(hex, "spki=", 5);
		util_hex(md, mdlen, hex + 5);
	}
}

/* Values are config tokens; a space would split the line's fields. */
static void
put(char **buf, size_t *len, size_t *cap, const char *key, const char *v)
{
	size_t need;
	char *nb;

	if (v == NULL || *buf == NULL)
		return;
	need = *len + strlen(key) + strlen(v) + 3;
	if (need > *cap) {
		*cap = need * 2;
		if ((nb = realloc(*buf, *cap)) == NULL) {
			free(*buf);
			*buf = NULL;
			return;
		}
		*buf = nb;
	}
	*len += (size_t)sprintf(*buf + *len, "%s%s%s", key, *key ? "=" : "", v);
	for (char *s = *buf + *len - strlen(v); *s; s++)
		if (*s == ' ' || *s == '\n' || *s == '\t')
			*s = '_';
	(*buf)[(*len)++] = ' ';
	(*buf)[*len] = '\0';
}

static int
cmp_lines(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *
desc_line(const struct engine_descriptor *d, struct keyring *kr)
{
	size_t len = 0, cap = 256;
	char *b = malloc(cap), ver[24], size[24], keyd[80];

	if (b == NULL)
		return NULL;
	b[0] = '\0';
	snprintf(ver, sizeof(ver), "v%d", d->version);
	put(&b, &len, &cap, "", d->name);
	put(&b, &len, &cap, "", ver);
	put(&b, &len, &cap, "algorithm", d->algorithm);
	if (d->size > 0) {
		snprintf(size, sizeof(size), "%d", d->size);
		put(&b, &len, &cap, "size", size);
	}
	put(&b, &len, &cap, "result", d->result);
	put(&b, &len, &cap, "asym", d->asym_cipher);
	put(&b, &len, &cap, "key", d->key_name);
	key_digest(kr, d, keyd, sizeof(keyd));
	put(&b, &len, &cap, "", keyd);
	if (b && len > 0)
		b[len - 1] = '\0';   /* the trailing space */
	return b;
}

static char *
unserved_line(const struct engine_unserved *u)
{
	size_t len = 0, cap = 128;
	char *b = malloc(cap), ver[80];

	if (b == NULL)
		return NULL;
	b[0] = '\0';
	snprintf(ver, sizeof(ver), "v%s", u->version ? u->version : "-");
	put(&b, &len, &cap, "", u->name);
	put(&b, &len, &cap, "", ver);
	put(&b, &len, &cap, "", "unserved");
	put(&b, &len, &cap, "key", u->key_name);
	if (b && len > 0)
		b[len - 1] = '\0';
	return b;
}

int
fingerprint_lines(const struct engine *e, struct keyring *kr, char **out)
{
	size_t n = e->ndescs + e->nunserved, total = 1, off = 0;
	char **lines = calloc(n ? n : 1, sizeof(*lines)), *txt = NULL;
	int r = HSMFS_ERR_NOMEM;

	if (lines == NULL)
		return HSMFS_ERR_NOMEM;
	for (size_t i = 0; i < e->ndescs; i++)
		if ((lines[i] = desc_line(&e->descs[i], kr)) == NULL)
			goto out;
	for (size_t i = 0; i < e->nunserved; i++)
		if ((lines[e->ndescs + i] = unserved_line(&e->unserved[i])) == NULL)
			goto out;
	qsort(lines, n, sizeof(*lines), cmp_lines);
	for (size_t i = 0; i < n; i++)
		total += strlen(lines[i]) + 1;
	if ((txt = malloc(total)) == NULL)
		goto out;
	for (size_t i = 0; i < n; i++)
		off += (size_t)sprintf(txt + off, "%s\n", lines[i]);
	txt[off] = '\0';
	*out = txt;
	r = 0;
out:
	for (size_t i = 0; i < n; i++)
		free(lines[i]);
	free(lines);
	return r;
}

int
fingerprint_config_file(const char *config, char **out)
{
	struct engine *e = NULL;
	struct keyring *kr = NULL;
	int r;

	if ((r = engine_load(config, &e)) == 0 &&
	    (r = keyring_open(e, &kr)) == 0)
		r = fingerprint_lines(e, kr, out);
	keyring_free(kr);
	engine_free(e);
	return r;
}

void
fingerprint_hash(const char *lines, char hex[65])
{
	unsigned char md[32];
	unsigned int mdlen = 0;

	EVP_Digest(lines, strlen(lines), md, &mdlen, EVP_sha256(), NULL);
	util_hex(md, 32, hex);
}

/* One parsed line: name, version (-1: not a number), the rest. */
struct fline {
	char name[128];
	long version;
	const char *line;   /* in the caller's text, up to '\n' */
	size_t len;
};

static size_t
parse_all(const char *txt, struct fline *out, size_t max)
{
	size_t n = 0;

	for (const char *s = txt; s && *s && n < max;) {
		const char *nl = strchr(s, '\n'), *sp;
		size_t len = nl ? (size_t)(nl - s) : strlen(s);
		struct fline *f = &out[n];

		f->line = s;
		f->len = len;
		f->version = -1;
		sp = memchr(s, ' ', len);
		snprintf(f->name, sizeof(f->name), "%.*s",
		    (int)(sp ? (size_t)(sp - s) : len), s);
		if (sp && sp[1] == 'v') {
			char *end;
			long v = strtol(sp + 2, &end, 10);
			if (end > sp + 2 && (*end == ' ' || *end == '\n' || *end == '\0'))
				f->version = v;
		}
		if (len > 0)
			n++;
		s = nl ? nl + 1 : NULL;
	}
	return n;
}

static const struct fline *
find(const struct fline *all, size_t n, const struct fline *f)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(all[i].name, f->name) == 0 && all[i].version == f->version &&
		    (f->version >= 0 || (all[i].len == f->len &&
		    memcmp(all[i].line, f->line, f->len) == 0)))
			return &all[i];
	return NULL;
}

/* The first attribute that differs between two lines of one version. */
static void
name_difference(const struct fline *c, const struct fline *nd)
{
	char a[512], b[512], *sa, *sb, *pa = NULL, *pb = NULL;

	snprintf(a, sizeof(a), "%.*s", (int)c->len, c->line);
	snprintf(b, sizeof(b), "%.*s", (int)nd->len, nd->line);
	sa = strtok_r(a, " ", &pa);
	sb = strtok_r(b, " ", &pb);
	while (sa || sb) {
		if (sa == NULL || sb == NULL || strcmp(sa, sb) != 0) {
			err_set("configuration differs from the cluster's: %s version "
			    "%ld: cluster has %s, this node has %s", c->name, c->version,
			    sa ? sa : "(nothing)", sb ? sb : "(nothing)");
			return;
		}
		sa = strtok_r(NULL, " ", &pa);
		sb = strtok_r(NULL, " ", &pb);
	}
}

static long
newest(const struct fline *all, size_t n, const char *name)
{
	long v = -1;

	for (size_t i = 0; i < n; i++)
		if (strcmp(all[i].name, name) == 0 && all[i].version > v)
			v = all[i].version;
	return v;
}

#define FP_MAX_LINES 512

int
fingerprint_compare(const char *cluster, const char *node)
{
	struct fline *c = calloc(FP_MAX_LINES, sizeof(*c));
	struct fline *nd = calloc(FP_MAX_LINES, sizeof(*nd));
	size_t nc, nn;
	int r = HSMFS_ERR_CONFIG, extra = 0;

	if (c == NULL || nd == NULL) {
		free(c);
		free(nd);
		return HSMFS_ERR_NOMEM;
	}
	nc = parse_all(cluster, c, FP_MAX_LINES);
	nn = parse_all(node, nd, FP_MAX_LINES);
	for (size_t i = 0; i < nc; i++) {
		const struct fline *m = find(nd, nn, &c[i]);
		if (m == NULL) {
			err_set("configuration differs from the cluster's: %s version "
			    "%ld is in the cluster's configuration, not in this node's",
			    c[i].name, c[i].version);
			goto out;
		}
		if (m->len != c[i].len || memcmp(m->line, c[i].line, m->len) != 0) {
			name_difference(&c[i], m);
			goto out;
		}
	}
	for (size_t i = 0; i < nn; i++) {
		long top;
		if (find(c, nc, &nd[i]) != NULL)
			continue;
		top = newest(c, nc, nd[i].name);
		if (top < 0 || nd[i].version <= top) {
			if (top < 0)
				err_set("configuration differs from the cluster's: %s "
				    "version %ld is in this node's configuration; the "
				    "cluster has no %s", nd[i].name, nd[i].version,
				    nd[i].name);
			else
				err_set("configuration differs from the cluster's: %s "
				    "version %ld is in this node's configuration, not in "
				    "the cluster's (a rolling rotation may add only a "
				    "version newer than the cluster's newest, %ld)",
				    nd[i].name, nd[i].version, top);
			goto out;
		}
		extra = 1;
	}
	r = extra;
out:
	free(c);
	free(nd);
	return r;
}
