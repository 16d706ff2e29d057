/* S/MIME (RFC 8551) for /mail: owns the message checks (RFC 5322 header
 * syntax, address extraction), the MIME preparation that makes a message
 * safe to sign (CRLF, transfer encodings) and the CMS detached signature.
 * Everything works on whole in-memory messages; the caller owns I/O. */
#include "crypto/smime.h"
#include "hsm/hsm.h"
#include "common/err.h"
#include "common/util.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

/* ---- growable byte buffer ---- */

struct buf {
	char *p;
	size_t n, cap;
	int oom;
};

static void
buf_add(struct buf *b, const void *d, size_t n)
{
	if (b->oom)
		return;
	if (b->n + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		char *np;
		while (cap < b->n + n + 1)
			cap *= 2;
		if ((np = realloc(b->p, cap)) == NULL) {
			b->oom = 1;
			return;
		}
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->n, d, n);
	b->n += n;
	b->p[b->n] = '\0';
}

static void
buf_str(struct buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

/* Append with every line ending (LF, CRLF, lone CR) turned into CRLF. */
static void
buf_add_crlf(struct buf *b, const char *d, size_t n)
{
	size_t start = 0;
	for (size_t i = 0; i < n; i++) {
		if (d[i] != '\n' && d[i] != '\r')
			continue;
		buf_add(b, d + start, i - start);
		buf_add(b, "\r\n", 2);
		if (d[i] == '\r' && i + 1 < n && d[i + 1] == '\n')
			i++;
		start = i + 1;
	}
	buf_add(b, d + start, n - start);
}

int
smime_crlf(const void *in, size_t len, uint8_t **out, size_t *outlen)
{
	struct buf b = { 0 };
	buf_add_crlf(&b, in, len);
	buf_add(&b, "", 0);
	if (b.oom) {
		free(b.p);
		return HSMFS_ERR_NOMEM;
	}
	*out = (uint8_t *)b.p;
	*outlen = b.n;
	return 0;
}

/* ---- header section ---- */

struct hdr {
	const char *name;   /* points into the message */
	size_t nlen;
	const char *raw;    /* whole field, folded lines, original EOLs */
	size_t rlen;
};

struct parsed {
	struct hdr *h;
	size_t nh;
	const char *body;
	size_t blen;
};

static int
hdr_is(const struct hdr *h, const char *name)
{
	return strlen(name) == h->nlen && strncasecmp(h->name, name, h->nlen) == 0;
}

/* Unfolded value after the colon, NUL-terminated (caller frees). */
static char *
hdr_value(const struct hdr *h)
{
	const char *v = h->name + h->nlen + 1;
	size_t n = (size_t)(h->raw + h->rlen - v), j = 0;
	char *out = malloc(n + 1);
	if (out == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (v[i] != '\r' && v[i] != '\n')
			out[j++] = v[i];
	out[j] = '\0';
	return out;
}

static int
parse_headers(const char *m, size_t len, struct parsed *ps)
{
	const char *p = m, *end = m + len;
	size_t cap = 0, lineno = 0;
	struct hdr *cur = NULL;

	memset(ps, 0, sizeof(*ps));
	if (len == 0) {
		err_set("the message is empty");
		return HSMFS_ERR_INVALID;
	}
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t clen;
		lineno++;
		if ((size_t)(p - m) > SMIME_MAX_HEADER) {
			err_set("header section larger than %d bytes", SMIME_MAX_HEADER);
			return HSMFS_ERR_INVALID;
		}
		if (nl == NULL) {
			err_set("no blank line after the header fields (line %zu is the "
			    "last one): write headers, an empty line, then the body",
			    lineno);
			return HSMFS_ERR_INVALID;
		}
		clen = (size_t)(nl - p);
		if (clen > 0 && p[clen - 1] == '\r')
			clen--;
		if (clen == 0) {
			ps->body = nl + 1;
			ps->blen = (size_t)(end - ps->body);
			break;
		}
		if (clen > SMIME_MAX_LINE) {
			err_set("header line %zu is %zu characters long (RFC 5322 "
			    "allows %d)", lineno, clen, SMIME_MAX_LINE);
			return HSMFS_ERR_INVALID;
		}
		for (size_t i = 0; i < clen; i++) {
			unsigned char c = (unsigned char)p[i];
			if (c >= 0x80) {
				err_set("header line %zu has non-ASCII bytes: use RFC 2047 "
				    "encoded words", lineno);
				return HSMFS_ERR_INVALID;
			}
			if ((c < 32 && c != '\t') || c == 127) {
				err_set("header line %zu has a control character (0x%02x)",
				    lineno, c);
				return HSMFS_ERR_INVALID;
			}
		}
		if (p[0] == ' ' || p[0] == '\t') {
			if (cur == NULL) {
				err_set("line 1 starts with white space: not a header field");
				return HSMFS_ERR_INVALID;
			}
			cur->rlen = (size_t)(nl + 1 - cur->raw);
		} else {
			const char *colon = memchr(p, ':', clen);
			size_t nlen;
			if (colon == NULL || colon == p) {
				err_set("line %zu is not a header field (\"Name: value\"); "
				    "is the blank line between headers and body missing?",
				    lineno);
				return HSMFS_ERR_INVALID;
			}
			nlen = (size_t)(colon - p);
			for (size_t i = 0; i < nlen; i++) {
				if (p[i] <= 32 || p[i] >= 127) {
					err_set("line %zu: invalid header field name", lineno);
					return HSMFS_ERR_INVALID;
				}
			}
			if (ps->nh == cap) {
				struct hdr *nh;
				cap = cap ? cap * 2 : 16;
				if ((nh = realloc(ps->h, cap * sizeof(*nh))) == NULL)
					return HSMFS_ERR_NOMEM;
				ps->h = nh;
			}
			cur = &ps->h[ps->nh++];
			cur->name = p;
			cur->nlen = nlen;
			cur->raw = p;
			cur->rlen = (size_t)(nl + 1 - p);
		}
		p = nl + 1;
	}
	if (ps->body == NULL) {
		err_set("no blank line after the header fields: write headers, an "
		    "empty line, then the body");
		return HSMFS_ERR_INVALID;
	}
	return 0;
}

/* ---- addresses (RFC 5322 3.4) ---- */

static int
is_atext(int c)
{
	return isalnum(c) || (c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

static int
dot_atom_ok(const char *s, size_t n)
{
	if (n == 0 || s[0] == '.' || s[n - 1] == '.')
		return 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '.') {
			if (s[i + 1] == '.')
				return 0;
		} else if (!is_atext((unsigned char)s[i])) {
			return 0;
		}
	}
	return 1;
}

/* addr-spec as it goes into SMTP: dot-atom or quoted local part, dot-atom
 * or literal domain; nothing that could end the RCPT TO:<...> argument. */
static int
addr_spec_ok(const char *a)
{
	const char *at = strrchr(a, '@');
	size_t llen, dlen;
	if (at == NULL || at == a || at[1] == '\0' || strlen(a) > 254)
		return 0;
	llen = (size_t)(at - a);
	dlen = strlen(at + 1);
	if (a[0] == '"') {
		if (llen < 2 || a[llen - 1] != '"')
			return 0;
		for (size_t i = 1; i + 1 < llen; i++) {
			unsigned char c = (unsigned char)a[i];
			if (c == '\\') {
				if (++i + 1 >= llen)
					return 0;
				continue;
			}
			if (c < 32 || c >= 127 || c == '"')
				return 0;
		}
	} else if (!dot_atom_ok(a, llen)) {
		return 0;
	}
	if (at[1] == '[') {
		if (at[dlen] != ']')
			return 0;
		for (size_t i = 2; i < dlen; i++) {
			unsigned char c = (unsigned char)at[i];
			if (c <= 32 || c >= 127 || c == '[' || c == ']' || c == '\\')
				return 0;
		}
		return 1;
	}
	return dot_atom_ok(at + 1, dlen);
}

struct addrs {
	char **v;
	size_t n, cap;
};

static int
addrs_push(struct addrs *a, const char *s, size_t n)
{
	char *c;
	if (a->n == a->cap) {
		char **nv;
		a->cap = a->cap ? a->cap * 2 : 8;
		if ((nv = realloc(a->v, a->cap * sizeof(*nv))) == NULL)
			return HSMFS_ERR_NOMEM;
		a->v = nv;
	}
	if ((c = strndup(s, n)) == NULL)
		return HSMFS_ERR_NOMEM;
	a->v[a->n++] = c;
	return 0;
}

static void
addrs_free(struct addrs *a)
{
	for (size_t i = 0; i < a->n; i++)
		free(a->v[i]);
	free(a->v);
	memset(a, 0, sizeof(*a));
}

/* One mailbox ("Name <a@b>", "a@b (comment)", "\"x y\" <a@b>") to its
 * addr-spec. Empty input gives an empty result (list separators). */
static int
mailbox_addr(const char *s, size_t n, const char *field, struct addrs *out)
{
	char *tmp = malloc(n + 1);
	size_t j = 0;
	int depth = 0, inq = 0, r = HSMFS_ERR_INVALID;
	const char *lt = NULL, *gt = NULL;
	char *a;

	if (tmp == NULL)
		return HSMFS_ERR_NOMEM;
	/* Find <...> outside quotes and comments. */
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (inq) {
			if (c == '\\')
				i++;
			else if (c == '"')
				inq = 0;
		} else if (depth > 0) {
			if (c == '\\')
				i++;
			else if (c == '(')
				depth++;
			else if (c == ')')
				depth--;
		} else if (c == '"') {
			inq = 1;
		} else if (c == '(') {
			depth = 1;
		} else if (c == '<' && lt == NULL) {
			lt = s + i;
		} else if (c == '>' && lt != NULL && gt == NULL) {
			gt = s + i;
		}
	}
	if (inq || depth) {
		err_set("%s: unbalanced quote or parenthesis", field);
		goto out;
	}
	if (lt != NULL) {
		const char *b = lt + 1, *e;
		if (gt == NULL) {
			err_set("%s: '<' without '>'", field);
			goto out;
		}
		/* Obsolete source route "<@a,@b:x@y>". */
		if (*b == '@') {
			const char *c = memchr(b, ':', (size_t)(gt - b));
			if (c == NULL) {
				err_set("%s: malformed route address", field);
				goto out;
			}
			b = c + 1;
		}
		/* Only white space or comments may follow the address: anything
		 * else would reach the SMTP command line. */
		for (const char *t = gt + 1; t < s + n; t++) {
			if (*t == '(') {
				int d = 1;
				while (++t < s + n && d > 0)
					d += *t == '(' ? 1 : *t == ')' ? -1 : 0;
				t--;
				continue;
			}
			if (*t != ' ' && *t != '\t') {
				err_set("%s: text after <address>", field);
				goto out;
			}
		}
		e = gt;
		while (b < e && (*b == ' ' || *b == '\t'))
			b++;
		while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
			e--;
		memcpy(tmp, b, (size_t)(e - b));
		j = (size_t)(e - b);
	} else {
		/* Bare addr-spec: drop comments and surrounding white space. */
		depth = 0;
		inq = 0;
		for (size_t i = 0; i < n; i++) {
			char c = s[i];
			if (!inq && c == '(') {
				depth++;
				continue;
			}
			if (depth > 0) {
				if (c == '\\')
					i++;
				else if (c == ')')
					depth--;
				continue;
			}
			if (c == '"')
				inq = !inq;
			else if (inq && c == '\\' && i + 1 < n)
				tmp[j++] = s[i++];
			if (!inq && (c == ' ' || c == '\t')) {
				tmp[j++] = ' ';
				continue;
			}
			tmp[j++] = c;
		}
		while (j > 0 && tmp[j - 1] == ' ')
			j--;
		a = tmp;
		while (*a == ' ' && a < tmp + j)
			a++;
		memmove(tmp, a, j - (size_t)(a - tmp));
		j -= (size_t)(a - tmp);
	}
	tmp[j] = '\0';
	if (j == 0) {
		r = lt != NULL ? (err_set("%s: empty address <>", field),
		    HSMFS_ERR_INVALID) : 0;
		goto out;
	}
	if (!addr_spec_ok(tmp)) {
		err_set("%s: \"%.80s\" is not an address (local@domain)", field, tmp);
		goto out;
	}
	r = addrs_push(out, tmp, j);
out:
	free(tmp);
	return r;
}

/* address-list: mailboxes and groups ("name: a@b, c@d;"), comma
 * separated, with quoted strings and comments. */
static int
address_list(const char *v, const char *field, struct addrs *out)
{
	size_t n = strlen(v), start = 0;
	int depth = 0, inq = 0, angle = 0, ingroup = 0, r;

	for (size_t i = 0; i <= n; i++) {
		char c = i < n ? v[i] : ',';
		if (inq) {
			if (c == '\\')
				i++;
			else if (c == '"')
				inq = 0;
			continue;
		}
		if (depth > 0) {
			if (c == '\\')
				i++;
			else if (c == '(')
				depth++;
			else if (c == ')')
				depth--;
			continue;
		}
		switch (c) {
		case '"': inq = 1; break;
		case '(': depth = 1; break;
		case '<': angle = 1; break;
		case '>': angle = 0; break;
		case ':':
			if (angle)
				break;
			if (ingroup) {
				err_set("%s: nested group", field);
				return HSMFS_ERR_INVALID;
			}
			ingroup = 1;        /* display name of the group is dropped */
			start = i + 1;
			break;
		case ';':
			if (angle)
				break;
			if (!ingroup) {
				err_set("%s: ';' outside a group", field);
				return HSMFS_ERR_INVALID;
			}
			if ((r = mailbox_addr(v + start, i - start, field, out)) != 0)
				return r;
			ingroup = 0;
			start = i + 1;
			break;
		case ',':
			if (angle && i < n)
				break;
			if ((r = mailbox_addr(v + start, i - start, field, out)) != 0)
				return r;
			start = i + 1;
			break;
		}
		if (out->n > SMIME_MAX_RCPTS) {
			err_set("%s: more than %d addresses", field, SMIME_MAX_RCPTS);
			return HSMFS_ERR_INVALID;
		}
	}
	if (inq || depth || angle || ingroup) {
		err_set("%s: unterminated quote, comment, <address> or group", field);
		return HSMFS_ERR_INVALID;
	}
	return 0;
}

/* ---- check ---- */

void
smime_msg_clear(struct smime_msg *m)
{
	if (m == NULL)
		return;
	free(m->from);
	for (size_t i = 0; i < m->nrcpts; i++)
		free(m->rcpts[i]);
	free(m->rcpts);
	free(m->msgid);
	memset(m, 0, sizeof(*m));
}

static int
seen_before(char **v, size_t n, const char *a)
{
	for (size_t i = 0; i < n; i++)
		if (strcasecmp(v[i], a) == 0)
			return 1;
	return 0;
}

static int
check_parsed(const struct parsed *ps, struct smime_msg *out)
{
	static const char *const once[] = { "From", "Sender", "Date",
	    "Message-ID", "Subject", "MIME-Version", "Content-Type",
	    "Content-Transfer-Encoding" };
	static const char *const rcpt_fields[] = { "To", "Cc", "Bcc" };
	struct addrs from = { 0 }, rc = { 0 };
	struct smime_msg m = { 0 };
	size_t nbcc_start = 0;
	char *v = NULL;
	int r;

	for (size_t k = 0; k < sizeof(once) / sizeof(once[0]); k++) {
		int seen = 0;
		for (size_t i = 0; i < ps->nh; i++)
			seen += hdr_is(&ps->h[i], once[k]);
		if (seen > 1) {
			err_set("%s appears %d times (RFC 5322 allows one)", once[k], seen);
			r = HSMFS_ERR_INVALID;
			goto out;
		}
	}
	for (size_t i = 0; i < ps->nh; i++) {
		const struct hdr *h = &ps->h[i];
		if (hdr_is(h, "From")) {
			if ((v = hdr_value(h)) == NULL) {
				r = HSMFS_ERR_NOMEM;
				goto out;
			}
			if ((r = address_list(v, "From", &from)) != 0)
				goto out;
			free(v);
			v = NULL;
		} else if (hdr_is(h, "Date")) {
			m.has_date = 1;
		} else if (hdr_is(h, "Message-ID")) {
			char *s, *e;
			if ((v = hdr_value(h)) == NULL) {
				r = HSMFS_ERR_NOMEM;
				goto out;
			}
			for (s = v; *s == ' ' || *s == '\t'; s++)
				;
			e = s + strlen(s);
			while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
				e--;
			if (e - s < 3 || *s != '<' || e[-1] != '>' ||
			    memchr(s, '@', (size_t)(e - s)) == NULL) {
				err_set("Message-ID is not of the form <id@domain>");
				r = HSMFS_ERR_INVALID;
				goto out;
			}
			if ((m.msgid = strndup(s, (size_t)(e - s))) == NULL) {
				r = HSMFS_ERR_NOMEM;
				goto out;
			}
			free(v);
			v = NULL;
		}
	}
	if (from.n != 1) {
		err_set(from.n == 0 ? "no From address: add \"From: you@example.org\"" :
		    "From has %zu addresses: give exactly one", from.n);
		r = HSMFS_ERR_INVALID;
		goto out;
	}
	for (size_t k = 0; k < 3; k++) {
		if (k == 2)
			nbcc_start = rc.n;
		for (size_t i = 0; i < ps->nh; i++) {
			if (!hdr_is(&ps->h[i], rcpt_fields[k]))
				continue;
			if ((v = hdr_value(&ps->h[i])) == NULL) {
				r = HSMFS_ERR_NOMEM;
				goto out;
			}
			if ((r = address_list(v, rcpt_fields[k], &rc)) != 0)
				goto out;
			free(v);
			v = NULL;
		}
	}
	if (rc.n == 0) {
		err_set("no recipient: add an address in To, Cc or Bcc");
		r = HSMFS_ERR_INVALID;
		goto out;
	}
	m.from = from.v[0];
	from.v[0] = NULL;
	if ((m.rcpts = calloc(rc.n, sizeof(*m.rcpts))) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	for (size_t i = 0; i < rc.n; i++) {
		if (seen_before(m.rcpts, m.nrcpts, rc.v[i]))
			continue;
		if (i >= nbcc_start)
			m.nbcc++;
		m.rcpts[m.nrcpts++] = rc.v[i];
		rc.v[i] = NULL;
	}
	*out = m;
	memset(&m, 0, sizeof(m));
	r = 0;
out:
	free(v);
	addrs_free(&from);
	addrs_free(&rc);
	smime_msg_clear(&m);
	return r;
}

int
smime_check(const void *msg, size_t len, struct smime_msg *out)
{
	struct parsed ps;
	int r;
	if (len > SMIME_MAX_MSG) {
		err_set("message larger than %d bytes", SMIME_MAX_MSG);
		return HSMFS_ERR_INVALID;
	}
	if ((r = parse_headers(msg, len, &ps)) == 0)
		r = check_parsed(&ps, out);
	free(ps.h);
	return r;
}

int
smime_msgid_new(const char *from, char *buf, size_t size)
{
	uint8_t rnd[16];
	char hex[33];
	const char *dom = from ? strrchr(from, '@') : NULL;
	if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
		err_set_ossl("RAND_bytes");
		return HSMFS_ERR_CRYPTO;
	}
	util_hex(rnd, sizeof(rnd), hex);
	/* A domain literal is a valid id-right but looks odd; use our own. */
	if (dom == NULL || dom[1] == '[' || !dot_atom_ok(dom + 1, strlen(dom + 1)))
		dom = "@hsmfs.invalid";
	if ((size_t)snprintf(buf, size, "<%s.hsmfs%s>", hex, dom) >= size) {
		err_set("Message-ID buffer too small");
		return HSMFS_ERR_INVALID;
	}
	return 0;
}

/* ---- MIME preparation ---- */

static int
is_content_field(const struct hdr *h)
{
	return h->nlen > 8 && strncasecmp(h->name, "Content-", 8) == 0;
}

static int
valid_utf8(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned char c = s[i];
		size_t k;
		unsigned cp;
		if (c < 0x80) {
			i++;
			continue;
		}
		if ((c & 0xe0) == 0xc0)
			k = 1, cp = c & 0x1f;
		else if ((c & 0xf0) == 0xe0)
			k = 2, cp = c & 0x0f;
		else if ((c & 0xf8) == 0xf0)
			k = 3, cp = c & 0x07;
		else
			return 0;
		if (i + k >= n)
			return 0;
		for (size_t j = 1; j <= k; j++) {
			if ((s[i + j] & 0xc0) != 0x80)
				return 0;
			cp = (cp << 6) | (s[i + j] & 0x3f);
		}
		if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) ||
		    (k == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		i += k + 1;
	}
	return 1;
}

/* Does the body need a transfer encoding to be 7-bit (RFC 2045 2.7)?
 * 8-bit bytes, NUL, a CR not followed by LF, or a line over 998. */
static int
body_needs_encoding(const unsigned char *b, size_t n)
{
	size_t col = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = b[i];
		if (c >= 0x80 || c == 0)
			return 1;
		if (c == '\r') {
			if (i + 1 >= n || b[i + 1] != '\n')
				return 1;
			continue;
		}
		if (c == '\n') {
			col = 0;
			continue;
		}
		if (++col > SMIME_MAX_LINE)
			return 1;
	}
	return 0;
}

/* Quoted-printable (RFC 2045 6.7) of text: line breaks become CRLF hard
 * breaks, soft breaks keep encoded lines within 76 characters. */
static void
qp_encode(struct buf *b, const unsigned char *s, size_t n)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t i = 0;
	while (i < n) {
		size_t e = i, col = 0, lend;
		int has_nl;
		while (e < n && s[e] != '\n')
			e++;
		has_nl = e < n;
		lend = e;
		if (has_nl && lend > i && s[lend - 1] == '\r')
			lend--;
		for (size_t j = i; j < lend; j++) {
			unsigned char c = s[j];
			int last = j + 1 == lend;
			int enc = c == '=' || c >= 127 || (c < 32 && c != '\t') ||
			    ((c == ' ' || c == '\t') && last) ||
			    (c == '.' && col == 0);
			size_t t = enc ? 3 : 1;
			/* Leave room for the soft break "=" unless this ends the line. */
			if (col + t > (last ? 76 : 75)) {
				buf_add(b, "=\r\n", 3);
				col = 0;
				if (c == '.')
					enc = 1, t = 3;
			}
			if (enc) {
				char e3[3] = { '=', hex[c >> 4], hex[c & 15] };
				buf_add(b, e3, 3);
			} else {
				buf_add(b, (const char *)&c, 1);
			}
			col += t;
		}
		if (has_nl)
			buf_add(b, "\r\n", 2);
		i = has_nl ? e + 1 : e;
	}
}

static int
b64_encode(struct buf *b, const unsigned char *s, size_t n)
{
	char *e = util_b64_encode(s, n);
	size_t el;
	if (e == NULL)
		return HSMFS_ERR_NOMEM;
	el = strlen(e);
	for (size_t i = 0; i < el; i += 76) {
		buf_add(b, e + i, el - i < 76 ? el - i : 76);
		buf_add(b, "\r\n", 2);
	}
	free(e);
	return 0;
}

/* Lower-cased first token of a header value (type/subtype, encoding). */
static void
value_token(const struct hdr *h, char *out, size_t size)
{
	const char *v = h->name + h->nlen + 1, *end = h->raw + h->rlen;
	size_t j = 0;
	while (v < end && (*v == ' ' || *v == '\t' || *v == '\r' || *v == '\n'))
		v++;
	while (v < end && j + 1 < size && *v != ';' && *v != ' ' && *v != '\t' &&
	    *v != '\r' && *v != '\n' && *v != '(')
		out[j++] = (char)tolower((unsigned char)*v++);
	out[j] = '\0';
}

static void
rfc5322_date(time_t t, char *buf, size_t size)
{
	static const char *const wd[] = { "Sun", "Mon", "Tue", "Wed", "Thu",
	    "Fri", "Sat" };
	static const char *const mo[] = { "Jan", "Feb", "Mar", "Apr", "May",
	    "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	struct tm tm;
	gmtime_r(&t, &tm);
	snprintf(buf, size, "%s, %02d %s %04d %02d:%02d:%02d +0000",
	    wd[tm.tm_wday], tm.tm_mday, mo[tm.tm_mon], tm.tm_year + 1900,
	    tm.tm_hour, tm.tm_min, tm.tm_sec);
}

int
smime_prepare(const void *msg, size_t len, time_t date, const char *msgid,
    char **outer, size_t *outer_len, char **inner, size_t *inner_len)
{
	struct parsed ps = { 0 };
	struct smime_msg m = { 0 };
	struct buf ob = { 0 }, ib = { 0 };
	const struct hdr *ctype = NULL, *cte = NULL;
	char type[128] = "", enc[64] = "";
	const unsigned char *body;
	int r, need;

	if (len > SMIME_MAX_MSG) {
		err_set("message larger than %d bytes", SMIME_MAX_MSG);
		return HSMFS_ERR_INVALID;
	}
	if ((r = parse_headers(msg, len, &ps)) != 0 ||
	    (r = check_parsed(&ps, &m)) != 0)
		goto out;
	body = (const unsigned char *)ps.body;

	for (size_t i = 0; i < ps.nh; i++) {
		const struct hdr *h = &ps.h[i];
		if (hdr_is(h, "Content-Type"))
			ctype = h;
		else if (hdr_is(h, "Content-Transfer-Encoding"))
			cte = h;
		if (hdr_is(h, "Bcc") || hdr_is(h, "Resent-Bcc") ||
		    hdr_is(h, "MIME-Version") ||
		    is_content_field(h))
			continue;
		buf_add_crlf(&ob, h->raw, h->rlen);
	}
	if (!m.has_date) {
		char d[64];
		rfc5322_date(date, d, sizeof(d));
		buf_str(&ob, "Date: ");
		buf_str(&ob, d);
		buf_str(&ob, "\r\n");
	}
	if (m.msgid == NULL) {
		if (msgid == NULL || msgid[0] != '<') {
			err_set("no Message-ID given for a message without one");
			r = HSMFS_ERR_INVALID;
			goto out;
		}
		buf_str(&ob, "Message-ID: ");
		buf_str(&ob, msgid);
		buf_str(&ob, "\r\n");
	}

	if (ctype)
		value_token(ctype, type, sizeof(type));
	if (cte)
		value_token(cte, enc, sizeof(enc));
	need = body_needs_encoding(body, ps.blen);
	if (need) {
		int text;
		if (cte && strcmp(enc, "7bit") != 0 && strcmp(enc, "8bit") != 0 &&
		    strcmp(enc, "binary") != 0) {
			err_set("the body declares Content-Transfer-Encoding: %s but is "
			    "not 7-bit", enc);
			r = HSMFS_ERR_INVALID;
			goto out;
		}
		if (strncmp(type, "multipart/", 10) == 0 ||
		    strncmp(type, "message/", 8) == 0) {
			err_set("%s body with 8-bit or long lines: encode its parts "
			    "(quoted-printable or base64) before writing", type);
			r = HSMFS_ERR_INVALID;
			goto out;
		}
		for (size_t i = 0; i < ps.nh; i++) {
			const struct hdr *h = &ps.h[i];
			if (is_content_field(h) && h != cte)
				buf_add_crlf(&ib, h->raw, h->rlen);
		}
		if (ctype == NULL) {
			text = valid_utf8(body, ps.blen);
			buf_str(&ib, text ? "Content-Type: text/plain; charset=utf-8\r\n" :
			    "Content-Type: application/octet-stream\r\n");
		} else {
			text = strncmp(type, "text/", 5) == 0;
		}
		buf_str(&ib, text ? "Content-Transfer-Encoding: quoted-printable\r\n\r\n" :
		    "Content-Transfer-Encoding: base64\r\n\r\n");
		if (text)
			qp_encode(&ib, body, ps.blen);
		else if ((r = b64_encode(&ib, body, ps.blen)) != 0)
			goto out;
	} else {
		for (size_t i = 0; i < ps.nh; i++)
			if (is_content_field(&ps.h[i]))
				buf_add_crlf(&ib, ps.h[i].raw, ps.h[i].rlen);
		if (ctype == NULL)
			buf_str(&ib, "Content-Type: text/plain; charset=us-ascii\r\n");
		buf_str(&ib, "\r\n");
		buf_add_crlf(&ib, ps.body, ps.blen);
	}
	buf_add(&ob, "", 0);
	buf_add(&ib, "", 0);
	if (ob.oom || ib.oom) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	*outer = ob.p;
	*outer_len = ob.n;
	*inner = ib.p;
	*inner_len = ib.n;
	ob.p = ib.p = NULL;
	r = 0;
out:
	free(ob.p);
	free(ib.p);
	free(ps.h);
	smime_msg_clear(&m);
	return r;
}

/* ---- signing ---- */

int
smime_sign(hsm_key *k, const EVP_MD *md, const void *msg, size_t len,
    time_t date, const char *msgid, uint8_t **out, size_t *outlen)
{
	char *outer = NULL, *inner = NULL;
	size_t olen = 0, ilen = 0;
	BIO *in = NULL, *mem = NULL;
	CMS_ContentInfo *cms = NULL;
	X509 *cert = hsm_key_cert(k);
	EVP_PKEY *pkey = hsm_key_pkey(k);
	const unsigned int flags = CMS_DETACHED | CMS_STREAM | CMS_PARTIAL |
	    CMS_BINARY;
	struct buf b = { 0 };
	char *data;
	long dlen;
	int r;

	if (cert == NULL || pkey == NULL) {
		err_set("key %s has no certificate or private key", hsm_key_name(k));
		return HSMFS_ERR_NOTFOUND;
	}
	if ((r = smime_prepare(msg, len, date, msgid, &outer, &olen, &inner,
	    &ilen)) != 0)
		return r;
	if ((in = BIO_new_mem_buf(inner, (int)ilen)) == NULL ||
	    (mem = BIO_new(BIO_s_mem())) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	/* The content is already canonical CRLF MIME: CMS_BINARY stops
	 * OpenSSL from translating it, so the digest covers exactly the
	 * bytes that go on the wire. */
	if ((cms = CMS_sign(NULL, NULL, NULL, NULL, flags)) == NULL ||
	    CMS_add1_signer(cms, cert, pkey, md, flags) == NULL) {
		err_set_ossl("key %s: CMS signer setup failed", hsm_key_name(k));
		r = HSMFS_ERR_CRYPTO;
		goto out;
	}
	/* Streaming: the digest and the private-key operation run here. */
	if (SMIME_write_CMS(mem, cms, in, (int)flags) != 1) {
		err_set_ossl("key %s: S/MIME signing failed", hsm_key_name(k));
		r = HSMFS_ERR_HSM;
		goto out;
	}
	dlen = BIO_get_mem_data(mem, &data);
	/* OpenSSL writes LF line ends around and inside the signature part;
	 * the content part is already CRLF, so only bare LFs change. */
	buf_add(&b, outer, olen);
	buf_add_crlf(&b, data, (size_t)dlen);
	if (b.oom) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	*out = (uint8_t *)b.p;
	*outlen = b.n;
	b.p = NULL;
	r = 0;
out:
	free(b.p);
	CMS_ContentInfo_free(cms);
	BIO_free(in);
	BIO_free(mem);
	free(outer);
	free(inner);
	return r;
}
