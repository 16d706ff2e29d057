/* S/MIME (RFC 8551) for /mail: owns the message checks (RFC 5322 header
 * syntax, address extraction), the MIME preparation that makes a message
 * safe to sign (CRLF, transfer encodings) and the CMS detached signature.
 * Everything works on whole in-memory messages; the caller owns I/O.
 * Header parsing and address syntax are in rfc5322.c. */
#include "crypto/smime.h"
#include "crypto/rfc5322.h"
#include "common/err.h"
#include "common/util.h"
#include "hsm/hsm.h"

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
			seen += rfc5322_hdr_is(&ps->h[i], once[k]);
		if (seen > 1) {
			err_set("%s appears %d times (RFC 5322 allows one)", once[k], seen);
			r = HSMFS_ERR_INVALID;
			goto out;
		}
	}
	for (size_t i = 0; i < ps->nh; i++) {
		const struct hdr *h = &ps->h[i];
		if (rfc5322_hdr_is(h, "From")) {
			if ((v = rfc5322_hdr_value(h)) == NULL) {
				r = HSMFS_ERR_NOMEM;
				goto out;
			}
			if ((r = rfc5322_address_list(v, "From", &from)) != 0)
				goto out;
			free(v);
			v = NULL;
		} else if (rfc5322_hdr_is(h, "Date")) {
			m.has_date = 1;
		} else if (rfc5322_hdr_is(h, "Message-ID")) {
			char *s, *e;
			if ((v = rfc5322_hdr_value(h)) == NULL) {
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
			if (!rfc5322_hdr_is(&ps->h[i], rcpt_fields[k]))
				continue;
			if ((v = rfc5322_hdr_value(&ps->h[i])) == NULL) {
				r = HSMFS_ERR_NOMEM;
				goto out;
			}
			if ((r = rfc5322_address_list(v, rcpt_fields[k], &rc)) != 0)
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
	rfc5322_addrs_free(&from);
	rfc5322_addrs_free(&rc);
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
	if ((r = rfc5322_parse_headers(msg, len, &ps)) == 0)
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
	if (dom == NULL || dom[1] == '[' || !rfc5322_dot_atom_ok(dom + 1, strlen(dom + 1)))
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
	if ((r = rfc5322_parse_headers(msg, len, &ps)) != 0 ||
	    (r = check_parsed(&ps, &m)) != 0)
		goto out;
	body = (const unsigned char *)ps.body;

	for (size_t i = 0; i < ps.nh; i++) {
		const struct hdr *h = &ps.h[i];
		if (rfc5322_hdr_is(h, "Content-Type"))
			ctype = h;
		else if (rfc5322_hdr_is(h, "Content-Transfer-Encoding"))
			cte = h;
		if (rfc5322_hdr_is(h, "Bcc") || rfc5322_hdr_is(h, "Resent-Bcc") ||
		    rfc5322_hdr_is(h, "MIME-Version") ||
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
