/* The manifest / signature file text format (JAR specification): parsing
 * into sections with their raw byte ranges, lookups by name, digest
 * attributes, and writing (72-byte lines, CRLF). */
#include "crypto/jar_int.h"
#include "common/err.h"
#include "common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void
mf_free(struct mf *m)
{
	for (size_t i = 0; i < m->ns; i++) {
		for (size_t j = 0; j < m->s[i].na; j++) {
			free(m->s[i].a[j].name);
			free(m->s[i].a[j].value);
		}
		free(m->s[i].a);
	}
	free(m->s);
	free(m->idx);
	memset(m, 0, sizeof(*m));
}

const char *
mf_get(const struct mf_section *s, const char *name)
{
	for (size_t i = 0; i < s->na; i++)
		if (strcasecmp(s->a[i].name, name) == 0)
			return s->a[i].value;
	return NULL;
}

/* Next line [*ls, *le) and the offset after its terminator (CRLF, LF, CR). */
static size_t
mf_line(const char *b, size_t n, size_t p, size_t *le)
{
	size_t i = p;
	while (i < n && b[i] != '\r' && b[i] != '\n')
		i++;
	*le = i;
	if (i < n && b[i] == '\r')
		i++;
	if (i < n && b[i] == '\n' && (i == *le || b[i - 1] == '\r'))
		i++;
	return i;
}

static int
mf_add_attr(struct mf_section *s, const char *line, size_t len)
{
	const char *colon = memchr(line, ':', len);
	struct mf_attr *na;
	if (colon == NULL || colon == line || colon + 1 >= line + len ||
	    colon[1] != ' ')
		return jar_bad("malformed manifest line");
	if ((na = realloc(s->a, (s->na + 1) * sizeof(*na))) == NULL)
		return HSMFS_ERR_NOMEM;
	s->a = na;
	na = &s->a[s->na];
	na->name = strndup(line, (size_t)(colon - line));
	na->value = strndup(colon + 2, len - (size_t)(colon - line) - 2);
	if (na->name == NULL || na->value == NULL) {
		free(na->name);
		free(na->value);
		return HSMFS_ERR_NOMEM;
	}
	s->na++;
	return 0;
}

static int
cmp_sec(const void *a, const void *b)
{
	return strcmp((*(struct mf_section *const *)a)->name,
	    (*(struct mf_section *const *)b)->name);
}

/* Lookups by name stay O(log n): zips may have 200,000 entries. */
static int
mf_index(struct mf *m)
{
	size_t n = m->ns ? m->ns - 1 : 0;
	if ((m->idx = calloc(n ? n : 1, sizeof(*m->idx))) == NULL)
		return HSMFS_ERR_NOMEM;
	for (size_t i = 0; i < n; i++)
		m->idx[i] = &m->s[i + 1];
	qsort(m->idx, n, sizeof(*m->idx), cmp_sec);
	for (size_t i = 1; i < n && m->dup == NULL; i++)
		if (strcmp(m->idx[i - 1]->name, m->idx[i]->name) == 0)
			m->dup = m->idx[i]->name;
	return 0;
}

const struct mf_section *
mf_find(const struct mf *m, const char *name)
{
	struct mf_section key, *kp = &key, **p;
	if (m == NULL || m->ns < 2)
		return NULL;
	key.name = name;
	p = bsearch(&kp, m->idx, m->ns - 1, sizeof(*m->idx), cmp_sec);
	return p ? *p : NULL;
}

/* Parse manifest-format text into sections with their raw byte ranges;
 * continuation lines (leading space) are joined into the attribute. */
int
mf_parse(const char *b, size_t n, struct mf *m, const char *what)
{
	size_t p = 0;
	char *line = NULL;
	size_t cap = 0, ll = 0;
	int r;

	memset(m, 0, sizeof(*m));
	if (memchr(b, '\0', n) != NULL) {
		r = jar_bad("%s contains a NUL byte", what);
		goto out;
	}
	while (p < n || m->ns == 0) {
		struct mf_section *s, *ns;
		if (m->ns == m->cap) {  /* geometric: 200,000 sections */
			size_t nc = m->cap ? m->cap * 2 : 64;
			if ((ns = realloc(m->s, nc * sizeof(*ns))) == NULL) {
				r = HSMFS_ERR_NOMEM;
				goto out;
			}
			m->s = ns;
			m->cap = nc;
		}
		s = &m->s[m->ns++];
		memset(s, 0, sizeof(*s));
		s->off = p;
		ll = 0;
		for (;;) {
			size_t le, next;
			if (p >= n) {
				if (ll && (r = mf_add_attr(s, line, ll)) != 0)
					goto out;
				break;
			}
			next = mf_line(b, n, p, &le);
			if (le == p) {          /* blank line ends the section */
				if (ll && (r = mf_add_attr(s, line, ll)) != 0)
					goto out;
				p = next;
				break;
			}
			if (b[p] == ' ') {
				if (ll == 0) {
					r = jar_bad("%s: continuation line without a header", what);
					goto out;
				}
			} else if (ll) {
				if ((r = mf_add_attr(s, line, ll)) != 0)
					goto out;
				ll = 0;
			}
			{
				size_t add = le - p - (b[p] == ' ' ? 1 : 0);
				const char *src = b + p + (b[p] == ' ' ? 1 : 0);
				if (ll + add + 1 > cap) {
					char *nl = realloc(line, ll + add + 256);
					if (nl == NULL) {
						r = HSMFS_ERR_NOMEM;
						goto out;
					}
					line = nl;
					cap = ll + add + 256;
				}
				memcpy(line + ll, src, add);
				ll += add;
				line[ll] = '\0';
			}
			p = next;
		}
		s->len = p - s->off;
		if (m->ns > 1) {
			if (s->na == 0) {     /* stray blank line: not a section */
				m->ns--;
				free(s->a);
				continue;
			}
			if ((s->name = mf_get(s, "Name")) == NULL ||
			    strcasecmp(s->a[0].name, "Name") != 0) {
				r = jar_bad("%s: section without a leading Name", what);
				goto out;
			}
		}
	}
	r = mf_index(m);
out:
	free(line);
	if (r != 0)
		mf_free(m);
	return r;
}

int
sb_put(struct sbuf *s, const void *p, size_t n)
{
	if (s->n + n + 1 > s->cap) {
		size_t nc = (s->n + n + 1) * 2;
		char *nb = realloc(s->b, nc);
		if (nb == NULL)
			return HSMFS_ERR_NOMEM;
		s->b = nb;
		s->cap = nc;
	}
	memcpy(s->b + s->n, p, n);
	s->n += n;
	s->b[s->n] = '\0';
	return 0;
}

/* "Name: value" wrapped at 72 bytes per line (continuations start with a
 * space), never inside a UTF-8 sequence, CRLF terminated. */
int
sb_header(struct sbuf *s, const char *name, const char *value)
{
	size_t nl = strlen(name), vl = strlen(value), width = 72, used;
	char *full = malloc(nl + 2 + vl + 1);
	size_t fl, p = 0;
	int r = 0;
	if (full == NULL)
		return HSMFS_ERR_NOMEM;
	memcpy(full, name, nl);
	memcpy(full + nl, ": ", 2);
	memcpy(full + nl + 2, value, vl + 1);
	fl = nl + 2 + vl;
	used = 0;
	while (p < fl && r == 0) {
		size_t take = fl - p;
		if (p > 0) {
			r = sb_put(s, " ", 1);
			used = 1;
		}
		if (take > width - used) {
			take = width - used;
			while (take > 1 && ((unsigned char)full[p + take] & 0xc0) == 0x80)
				take--;
		}
		if (r == 0)
			r = sb_put(s, full + p, take);
		if (r == 0)
			r = sb_put(s, "\r\n", 2);
		p += take;
	}
	free(full);
	return r;
}

const char *
md_java_name(const EVP_MD *md)
{
	switch (EVP_MD_get_type(md)) {
	case NID_sha256: return "SHA-256";
	case NID_sha384: return "SHA-384";
	case NID_sha512: return "SHA-512";
	}
	return NULL;
}

/* Accepted digest attribute prefixes; SHA-1 and MD5 are deliberately
 * absent (contract §3: a SHA-1 signature is invalid). */
const EVP_MD *
md_from_java(const char *s, size_t n)
{
	if (n == 7 && strncasecmp(s, "SHA-256", 7) == 0)
		return EVP_sha256();
	if (n == 7 && strncasecmp(s, "SHA-384", 7) == 0)
		return EVP_sha384();
	if (n == 7 && strncasecmp(s, "SHA-512", 7) == 0)
		return EVP_sha512();
	return NULL;
}

int
is_weak_digest_attr(const char *name, const char *suffix)
{
	size_t n = strlen(name), sl = strlen(suffix);
	if (n <= sl || strcasecmp(name + n - sl, suffix) != 0)
		return 0;
	return strncasecmp(name, "SHA1", 4) == 0 || strncasecmp(name, "SHA-1", 5) == 0 ||
	    strncasecmp(name, "MD5", 3) == 0 || strncasecmp(name, "MD2", 3) == 0;
}

int
jar_b64(const uint8_t *d, size_t n, char **out)
{
	if ((*out = util_b64_encode(d, n)) == NULL)
		return HSMFS_ERR_NOMEM;
	return 0;
}

int
jar_digest_b64(const EVP_MD *md, const void *p, size_t n, char **out)
{
	uint8_t d[EVP_MAX_MD_SIZE];
	unsigned dl;
	if (EVP_Digest(p, n, d, &dl, md, NULL) != 1) {
		err_set_ossl("digest");
		return HSMFS_ERR_CRYPTO;
	}
	return jar_b64(d, dl, out);
}

size_t
section_digests(const struct mf_section *s, const char *suffix,
    struct dattr *d, int *weak)
{
	size_t nd = 0, sl = strlen(suffix);
	for (size_t i = 0; i < s->na; i++) {
		const char *n = s->a[i].name;
		size_t l = strlen(n);
		const EVP_MD *md;
		if (l <= sl || strcasecmp(n + l - sl, suffix) != 0)
			continue;
		if ((md = md_from_java(n, l - sl)) != NULL) {
			if (nd < 3) {
				d[nd].md = md;
				d[nd].b64 = s->a[i].value;
				nd++;
			}
		} else if (is_weak_digest_attr(n, suffix)) {
			(*weak)++;
		}
	}
	return nd;
}

/* The main section of an existing manifest is kept (its attributes, in
 * order, re-wrapped); a fresh one gets Manifest-Version and Created-By. */
int
mf_build_main(struct sbuf *mf, const struct mf *old, const char *created_by)
{
	int r = 0;
	if (old && old->ns > 0 && old->s[0].na > 0) {
		const struct mf_section *s = &old->s[0];
		if (mf_get(s, "Manifest-Version") == NULL)
			r = sb_header(mf, "Manifest-Version", "1.0");
		for (size_t i = 0; i < s->na && r == 0; i++)
			r = sb_header(mf, s->a[i].name, s->a[i].value);
		if (r == 0 && mf_get(s, "Created-By") == NULL)
			r = sb_header(mf, "Created-By", created_by);
	} else {
		r = sb_header(mf, "Manifest-Version", "1.0");
		if (r == 0)
			r = sb_header(mf, "Created-By", created_by);
	}
	if (r == 0)
		r = sb_put(mf, "\r\n", 2);
	return r;
}

/* One manifest section. An entry's section in an existing manifest keeps
 * its attributes and order (only our digest line is set), so the section
 * bytes of another signer using the same digest stay what it signed. */
int
mf_build_section(struct sbuf *mf, const struct mf *old, const char *name,
    const char *attr, const char *b64)
{
	const struct mf_section *os = mf_find(old, name);
	int r, wrote = 0;
	if ((r = sb_header(mf, "Name", name)) != 0)
		return r;
	for (size_t i = 1; os && i < os->na && r == 0; i++) {
		if (strcasecmp(os->a[i].name, attr) == 0) {
			if (wrote)
				continue;
			r = sb_header(mf, attr, b64);
			wrote = 1;
		} else {
			r = sb_header(mf, os->a[i].name, os->a[i].value);
		}
	}
	if (r == 0 && !wrote)
		r = sb_header(mf, attr, b64);
	if (r == 0)
		r = sb_put(mf, "\r\n", 2);
	return r;
}

/* The signature file: whole-manifest and main-section digests, then one
 * section per entry (sections[i] not NULL) over its exact manifest
 * section bytes. main_len: length of the manifest's main section. */
int
mf_build_sf(struct sbuf *sf, const EVP_MD *md, const char *created,
    const struct sbuf *mf, size_t main_len, const struct zarc *z,
    char *const *sections)
{
	const char *alg = md_java_name(md);
	char name[48], attr[32];
	char *b64 = NULL;
	int r;

	snprintf(attr, sizeof(attr), "%s-Digest", alg);
	if ((r = sb_header(sf, "Signature-Version", "1.0")) != 0 ||
	    (r = sb_header(sf, "Created-By", created)) != 0 ||
	    (r = jar_digest_b64(md, mf->b, main_len, &b64)) != 0)
		goto out;
	snprintf(name, sizeof(name), "%s-Digest-Manifest-Main-Attributes", alg);
	if ((r = sb_header(sf, name, b64)) != 0)
		goto out;
	free(b64);
	b64 = NULL;
	if ((r = jar_digest_b64(md, mf->b, mf->n, &b64)) != 0)
		goto out;
	snprintf(name, sizeof(name), "%s-Digest-Manifest", alg);
	if ((r = sb_header(sf, name, b64)) != 0 ||
	    (r = sb_put(sf, "\r\n", 2)) != 0)
		goto out;
	for (size_t i = 0; i < z->n; i++) {
		if (sections[i] == NULL)
			continue;
		if ((r = sb_header(sf, "Name", z->e[i].name)) != 0 ||
		    (r = sb_header(sf, attr, sections[i])) != 0 ||
		    (r = sb_put(sf, "\r\n", 2)) != 0)
			goto out;
	}
out:
	free(b64);
	return r;
}
