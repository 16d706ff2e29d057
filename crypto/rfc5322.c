/* RFC 5322 message text for /mail: the header section parsed into
 * fields (unfolded, with their raw extent), the address syntax (mailbox,
 * address lists, groups, addr-spec) and the Date field format. */
#include "crypto/rfc5322.h"
#include "crypto/smime.h"
#include "common/err.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

int
rfc5322_hdr_is(const struct hdr *h, const char *name)
{
	return strlen(name) == h->nlen && strncasecmp(h->name, name, h->nlen) == 0;
}

/* Unfolded value after the colon, NUL-terminated (caller frees). */
char *
rfc5322_hdr_value(const struct hdr *h)
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

int
rfc5322_parse_headers(const char *m, size_t len, struct parsed *ps)
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

int
rfc5322_dot_atom_ok(const char *s, size_t n)
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
	} else if (!rfc5322_dot_atom_ok(a, llen)) {
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
	return rfc5322_dot_atom_ok(at + 1, dlen);
}

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

void
rfc5322_addrs_free(struct addrs *a)
{
	for (size_t i = 0; i < a->n; i++)
		free(a->v[i]);
	free(a->v);
	memset(a, 0, sizeof(*a));
}

/* One step of the scans below over quoted strings and comments: with
 * s[*i] inside either (a backslash skipping the next byte) or opening one,
 * the state moves and 1 is returned; 0 when s[*i] stands outside both. */
static int
qc_step(const char *s, size_t *i, int *inq, int *depth)
{
	char c = s[*i];
	if (*inq) {
		if (c == '\\')
			(*i)++;
		else if (c == '"')
			*inq = 0;
		return 1;
	}
	if (*depth > 0) {
		if (c == '\\')
			(*i)++;
		else if (c == '(')
			(*depth)++;
		else if (c == ')')
			(*depth)--;
		return 1;
	}
	if (c == '"')
		*inq = 1;
	else if (c == '(')
		*depth = 1;
	else
		return 0;
	return 1;
}

/* "<addr>" between lt and gt of s[0..n) into tmp (*j bytes): an obsolete
 * route dropped, only white space or comments after it. */
static int
angle_addr(const char *s, size_t n, const char *lt, const char *gt,
    const char *field, char *tmp, size_t *j)
{
	const char *b = lt + 1, *e;
	if (gt == NULL) {
		err_set("%s: '<' without '>'", field);
		return HSMFS_ERR_INVALID;
	}
	/* Obsolete source route "<@a,@b:x@y>". */
	if (*b == '@') {
		const char *c = memchr(b, ':', (size_t)(gt - b));
		if (c == NULL) {
			err_set("%s: malformed route address", field);
			return HSMFS_ERR_INVALID;
		}
		b = c + 1;
	}
	/* Only white space or comments may follow the address: anything else
	 * would reach the SMTP command line. */
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
			return HSMFS_ERR_INVALID;
		}
	}
	e = gt;
	while (b < e && (*b == ' ' || *b == '\t'))
		b++;
	while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
		e--;
	memcpy(tmp, b, (size_t)(e - b));
	*j = (size_t)(e - b);
	return 0;
}

/* Bare addr-spec s[0..n) into tmp: comments and surrounding white space
 * dropped. Returns its length. */
static size_t
bare_addr(const char *s, size_t n, char *tmp)
{
	size_t j = 0;
	int depth = 0, inq = 0;
	char *a;

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
	return j - (size_t)(a - tmp);
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

	if (tmp == NULL)
		return HSMFS_ERR_NOMEM;
	/* Find <...> outside quotes and comments. */
	for (size_t i = 0; i < n; i++) {
		if (qc_step(s, &i, &inq, &depth))
			continue;
		if (s[i] == '<' && lt == NULL)
			lt = s + i;
		else if (s[i] == '>' && lt != NULL && gt == NULL)
			gt = s + i;
	}
	if (inq || depth) {
		err_set("%s: unbalanced quote or parenthesis", field);
		goto out;
	}
	if (lt != NULL) {
		if (angle_addr(s, n, lt, gt, field, tmp, &j) != 0)
			goto out;
	} else {
		j = bare_addr(s, n, tmp);
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
int
rfc5322_address_list(const char *v, const char *field, struct addrs *out)
{
	size_t n = strlen(v), start = 0;
	int depth = 0, inq = 0, angle = 0, ingroup = 0, r;

	for (size_t i = 0; i <= n; i++) {
		/* v[n] is the NUL: outside quotes it ends the last mailbox. */
		char c = i < n ? v[i] : ',';
		if (i < n && qc_step(v, &i, &inq, &depth))
			continue;
		if (i == n && (inq || depth))
			continue;
		switch (c) {
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

void
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
