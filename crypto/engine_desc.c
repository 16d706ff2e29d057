/* engineSignEncrypt.xml: algorithm names and the <descriptors> section
 * (served descriptors strictly checked, others kept as unserved). Moved
 * from engine.c; shares its parser state through engine_int.h. */
#include "crypto/engine.h"
#include "crypto/engine_int.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libxml/tree.h>
#include <openssl/evp.h>

/* ---- algorithm names (Java spelling, matched case-insensitively as
 * the JCA does; normalised to the canonical spelling) ---- */

struct md_name {
	const char *dashed, *undashed, *with_rsa;
	const EVP_MD *(*md)(void);
	int sign_ok;   /* usable for signatures / JAR digests */
};

static const struct md_name md_names[] = {
	{"SHA-1", "SHA1", NULL, EVP_sha1, 0},
	{"SHA-256", "SHA256", "SHA256withRSA", EVP_sha256, 1},
	{"SHA-384", "SHA384", "SHA384withRSA", EVP_sha384, 1},
	{"SHA-512", "SHA512", "SHA512withRSA", EVP_sha512, 1},
};
#define N_MD (sizeof(md_names) / sizeof(md_names[0]))

enum alg_class { AC_UNKNOWN, AC_AES, AC_DIGEST, AC_RSA_SIGN, AC_OAEP };

/* Which family an algorithm name belongs to; *canon the canonical
 * spelling (static or built in buf), *m the digest. */
static enum alg_class
alg_classify(const char *v, char *buf, size_t buflen, const char **canon,
    const struct md_name **m)
{
	*canon = NULL;
	*m = NULL;
	if (strcasecmp(v, "AES/CBC/PKCS7Padding") == 0 ||
	    strcasecmp(v, "AES/CBC/PKCS5Padding") == 0) {
		*canon = "AES/CBC/PKCS7Padding";
		return AC_AES;
	}
	for (size_t i = 0; i < N_MD; i++) {
		const struct md_name *d = &md_names[i];
		if (strcasecmp(v, d->dashed) == 0 || strcasecmp(v, d->undashed) == 0) {
			*canon = d->dashed;
			*m = d;
			return AC_DIGEST;
		}
		if (d->with_rsa && strcasecmp(v, d->with_rsa) == 0) {
			*canon = d->with_rsa;
			*m = d;
			return AC_RSA_SIGN;
		}
	}
	/* RSA/{ECB,None}/OAEPWith<H>AndMGF1Padding */
	{
		const char *s = v, *h;
		size_t hl;
		if (strncasecmp(s, "RSA/", 4) != 0)
			return AC_UNKNOWN;
		s += 4;
		if (strncasecmp(s, "ECB/", 4) == 0)
			s += 4;
		else if (strncasecmp(s, "None/", 5) == 0)
			s += 5;
		else
			return AC_UNKNOWN;
		if (strncasecmp(s, "OAEPWith", 8) != 0)
			return AC_UNKNOWN;
		h = s + 8;
		s = strcasestr(h, "AndMGF1Padding");
		if (s == NULL || strlen(s) != strlen("AndMGF1Padding"))
			return AC_UNKNOWN;
		hl = (size_t)(s - h);
		for (size_t i = 0; i < N_MD; i++) {
			const struct md_name *d = &md_names[i];
			if ((hl == strlen(d->dashed) &&
			    strncasecmp(h, d->dashed, hl) == 0) ||
			    (hl == strlen(d->undashed) &&
			    strncasecmp(h, d->undashed, hl) == 0)) {
				snprintf(buf, buflen, "RSA/ECB/OAEPWith%sAndMGF1Padding",
				    d->dashed);
				*canon = buf;
				*m = d;
				return AC_OAEP;
			}
		}
		return AC_UNKNOWN;
	}
}

/* One algorithm attribute: classify, check the family, normalise with a
 * warning, store the canonical name. */
static int
alg_attr(const struct parse *p, xmlNodePtr n, const char *attr,
    const char *value, enum alg_class want, const char *desc,
    const char *accepted, char **canon_out, const struct md_name **m)
{
	char buf[64];
	const char *canon;
	enum alg_class c = alg_classify(value, buf, sizeof(buf), &canon, m);

	if (c == AC_UNKNOWN)
		return cfg_err(p, attr_line(p, n, attr), "%s=\"%s\" of descriptor "
		    "%s: unknown algorithm; use %s", attr, value, desc, accepted);
	if (c != want || (c != AC_OAEP && c != AC_AES && !(*m)->sign_ok))
		return cfg_err(p, attr_line(p, n, attr), "%s=\"%s\" does not fit "
		    "descriptor %s; use %s", attr, value, desc, accepted);
	if (strcmp(canon, value) != 0)
		log_warn("%s:%ld: %s=\"%s\" of descriptor %s normalised to \"%s\"; "
		    "write it that way", p->path, attr_line(p, n, attr), attr,
		    value, desc, canon);
	if ((*canon_out = strdup(canon)) == NULL)
		return HSMFS_ERR_NOMEM;
	return 0;
}

/* ---- descriptors ---- */

static const char *const desc_names[] = {
	ENGINE_ENCRYPTED_FIELDS, ENGINE_CONFIG_ZIP_SIGNER,
	ENGINE_OBJECT_HISTORY_SIGNER, ENGINE_SIGN_EMAIL, NULL,
};

/* Levenshtein distance of two short names, capped at 3. */
static int
edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	int row[65], prev, tmp;

	if (la > 64 || lb > 64)
		return 3;
	for (size_t j = 0; j <= lb; j++)
		row[j] = (int)j;
	for (size_t i = 1; i <= la; i++) {
		prev = row[0];
		row[0] = (int)i;
		for (size_t j = 1; j <= lb; j++) {
			int best = prev + (a[i - 1] != b[j - 1]);
			if (row[j] + 1 < best)
				best = row[j] + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			tmp = row[j];
			row[j] = best;
			prev = tmp;
		}
	}
	return row[lb] > 3 ? 3 : row[lb];
}

/* Whether a <descriptor> is one hsmfs serves. Any other name belongs to
 * the Identity Manager (ConfigZipEncrypter, SelfServiceJWTSigner, att_*,
 * ...) and is accepted unserved, unless it is a near miss of a served
 * name: a typo there would silently switch a folder off. */
static int
desc_served(const struct parse *p, xmlNodePtr n, int *served)
{
	xmlChar *x = xmlGetNoNsProp(n, (const xmlChar *)"name");
	const char *name = (const char *)x;
	int r = 0;

	*served = 1;        /* a missing name is reported by parse_descriptor */
	if (x == NULL || name[0] == '\0' || in_list(name, desc_names))
		goto out;
	for (size_t i = 0; desc_names[i]; i++)
		if (strcasecmp(name, desc_names[i]) == 0 ||
		    edit_distance(name, desc_names[i]) <= 1) {
			r = cfg_err(p, attr_line(p, n, "name"), "descriptor "
			    "name=\"%s\" looks like %s, which hsmfs serves; fix "
			    "the spelling (names are case-sensitive)", name,
			    desc_names[i]);
			goto out;
		}
	*served = 0;
out:
	xmlFree(x);
	return r;
}

/* *s with each control character (&#10; and the like in the file)
 * written as \xNN, so that a listing line (check, .status) stays one
 * line whatever an unserved descriptor is called. */
static int
escape_controls(char **s)
{
	size_t n = 0;
	char *out, *o;

	if (*s == NULL)
		return 0;
	for (const char *c = *s; *c; c++)
		n += iscntrl((unsigned char)*c) ? 4 : 1;
	if (n == strlen(*s))
		return 0;
	if ((out = malloc(n + 1)) == NULL)
		return HSMFS_ERR_NOMEM;
	o = out;
	for (const char *c = *s; *c; c++)
		if (iscntrl((unsigned char)*c))
			o += sprintf(o, "\\x%02x", (unsigned char)*c);
		else
			*o++ = *c;
	*o = '\0';
	free(*s);
	*s = out;
	return 0;
}

/* A descriptor hsmfs does not serve: only what a listing needs is read
 * (name, version, key= of its <type>); any attribute is accepted. */
static int
parse_unserved(const struct parse *p, xmlNodePtr n, struct engine_unserved *u)
{
	xmlNodePtr t = NULL;
	int r;

	u->line = (int)node_line(p, n);
	if ((r = attr_required(p, n, "name", "a descriptor", &u->name)) != 0 ||
	    (r = attr_get(n, "version", &u->version)) != 0 ||
	    (r = escape_controls(&u->name)) != 0 ||
	    (r = escape_controls(&u->version)) != 0)
		return r;
	if ((r = check_content(p, n, NULL)) != 0)
		return r;
	for (xmlNodePtr ch = n->children; ch; ch = ch->next)
		if (ch->type == XML_ELEMENT_NODE && ch->ns == NULL &&
		    strcmp((const char *)ch->name, "type") == 0) {
			t = ch;
			break;
		}
	if (t == NULL)
		return 0;
	if ((r = check_content(p, t, NULL)) != 0 ||
	    (r = attr_get(t, "key", &u->key_name)) != 0 ||
	    (r = escape_controls(&u->key_name)) != 0)
		return r;
	if (u->key_name != NULL && u->key_name[0] == '\0')
		return cfg_err(p, attr_line(p, t, "key"), "descriptor %s: "
		    "attribute 'key' is empty; name a <key> or remove it",
		    u->name);
	return 0;
}

static int
parse_descriptor(const struct parse *p, xmlNodePtr n,
    struct engine_descriptor *d)
{
	static const char *const attrs[] = {"name", "version", NULL};
	static const char *const fields_attrs[] = {"algorithm", "size",
		"result", "key", "asymCipher", "initVector", NULL};
	static const char *const sign_attrs[] = {"algorithm", "key", NULL};
	char what[300], names[128], *v = NULL;
	const struct md_name *m;
	xmlNodePtr t;
	unsigned long ul;
	int r;

	d->line = (int)node_line(p, n);
	if ((r = check_attrs(p, n, attrs, "")) != 0)
		return r;
	if ((r = attr_required(p, n, "name", "a descriptor", &d->name)) != 0)
		return r;
	if (!in_list(d->name, desc_names)) {
		list_join(desc_names, names, sizeof(names));
		return cfg_err(p, attr_line(p, n, "name"), "descriptor "
		    "name=\"%s\" is not known; use one of %s", d->name, names);
	}
	snprintf(what, sizeof(what), "descriptor %s", d->name);
	if ((r = attr_required(p, n, "version", what, &v)) != 0)
		return r;
	if (parse_ulong(v, 0, &ul) != 0 || ul < 1 || ul > INT_MAX) {
		r = cfg_err(p, attr_line(p, n, "version"), "version=\"%s\" of "
		    "descriptor %s: use a positive whole number", v, d->name);
		free(v);
		return r;
	}
	free(v);
	d->version = (int)ul;
	snprintf(what, sizeof(what), "descriptor %s version %d", d->name,
	    d->version);
	if ((r = only_type_child(p, n, what, &t)) != 0)
		return r;

	if (strcmp(d->name, ENGINE_ENCRYPTED_FIELDS) == 0) {
		if ((r = check_attrs(p, t, fields_attrs, " of descriptor "
		    ENGINE_ENCRYPTED_FIELDS)) != 0)
			return r;
		if ((r = attr_required(p, t, "algorithm", what, &v)) != 0)
			return r;
		r = alg_attr(p, t, "algorithm", v, AC_AES, d->name,
		    "AES/CBC/PKCS7Padding", &d->algorithm, &m);
		free(v);
		if (r != 0)
			return r;
		d->alg = ENGINE_ALG_AES_CBC_PKCS7;
		if ((r = attr_required(p, t, "size", what, &v)) != 0)
			return r;
		if (strcmp(v, "128") != 0 && strcmp(v, "192") != 0 &&
		    strcmp(v, "256") != 0) {
			r = cfg_err(p, attr_line(p, t, "size"), "size=\"%s\" of %s: "
			    "use 128, 192 or 256 (AES key bits)", v, what);
			free(v);
			return r;
		}
		d->size = atoi(v);
		free(v);
		if ((r = attr_get(t, "result", &d->result)) != 0)
			return r;
		if (d->result == NULL && (d->result = strdup("NX02")) == NULL)
			return HSMFS_ERR_NOMEM;
		if (strcmp(d->result, "NX02") != 0)
			return cfg_err(p, attr_line(p, t, "result"), "result=\"%s\" "
			    "of %s: only \"NX02\" is implemented", d->result, what);
		if ((r = attr_required(p, t, "asymCipher", what, &v)) != 0)
			return r;
		r = alg_attr(p, t, "asymCipher", v, AC_OAEP, d->name,
		    "RSA/ECB/OAEPWith<H>AndMGF1Padding with H one of SHA-1, "
		    "SHA-256, SHA-384, SHA-512", &d->asym_cipher, &m);
		free(v);
		if (r != 0)
			return r;
		d->oaep_md = m->md();
		/* Checked against the newest version in parse_root. */
		if (xmlHasNsProp(t, (const xmlChar *)"initVector", NULL) != NULL)
			d->iv_line = (int)attr_line(p, t, "initVector");
	} else {
		int sign = strcmp(d->name, ENGINE_SIGN_EMAIL) == 0;
		if ((r = check_attrs(p, t, sign_attrs, sign ? " of a signature "
		    "descriptor" : " of a signer descriptor")) != 0)
			return r;
		if ((r = attr_required(p, t, "algorithm", what, &v)) != 0)
			return r;
		r = alg_attr(p, t, "algorithm", v, sign ? AC_RSA_SIGN : AC_DIGEST,
		    d->name, sign ? "SHA256withRSA, SHA384withRSA or SHA512withRSA" :
		    "SHA-256, SHA-384 or SHA-512", &d->algorithm, &m);
		free(v);
		if (r != 0)
			return r;
		d->alg = sign ? ENGINE_ALG_RSA_SIGN : ENGINE_ALG_DIGEST;
		d->md = m->md();
	}
	if ((r = attr_required(p, t, "key", what, &d->key_name)) != 0)
		return r;
	d->key_line = (int)attr_line(p, t, "key");
	return 0;
}

/* <descriptors>: served ones into e->descs, the others into
 * e->unserved, in document order. */
int
parse_descriptors(const struct parse *p, xmlNodePtr sec, struct engine *e)
{
	static const char *const none[] = {NULL};
	size_t c;
	int r, served;

	if ((r = check_attrs(p, sec, none, "")) != 0)
		return r;
	if ((r = check_content(p, sec, &c)) != 0)
		return r;
	if ((e->descs = calloc(c ? c : 1, sizeof(*e->descs))) == NULL ||
	    (e->unserved = calloc(c ? c : 1, sizeof(*e->unserved))) == NULL)
		return HSMFS_ERR_NOMEM;
	for (xmlNodePtr ch = sec->children; ch; ch = ch->next) {
		if (ch->type != XML_ELEMENT_NODE)
			continue;
		if (ch->ns != NULL || strcmp((const char *)ch->name,
		    "descriptor") != 0)
			return cfg_err(p, node_line(p, ch), "unknown element "
			    "<%s%s%s> in <descriptors>; only <descriptor> belongs "
			    "here", QNAME(ch));
		if ((r = desc_served(p, ch, &served)) != 0)
			return r;
		/* Counted first so that engine_free sees partial entries. */
		if (served)
			r = parse_descriptor(p, ch, &e->descs[e->ndescs++]);
		else
			r = parse_unserved(p, ch, &e->unserved[e->nunserved++]);
		if (r != 0)
			return r;
	}
	return 0;
}
