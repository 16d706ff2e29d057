/* engineSignEncrypt.xml: parsing and validation (SPEC §2), descriptor and
 * key lookups, PIN sources and the pin.encrypted scramble. Owns every
 * string of struct engine; descriptors borrow their key from e->keys.
 * The parser refuses any DOCTYPE, so no entity or DTD is ever resolved. */
#include "crypto/engine.h"
#include "crypto/engine_int.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libxml/parser.h>
#include <libxml/parserInternals.h>
#include <libxml/tree.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#define ENGINE_MAX_CONFIG (1024 * 1024)


int
cfg_err(const struct parse *p, long line, const char *fmt, ...)
{
	char msg[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	err_set("%s:%ld: %s", p->path, line, msg);
	return HSMFS_ERR_CONFIG;
}

/* ---- libxml2 callbacks ---- */

/* libxml2 errors land here instead of stderr; the first one is kept. */
static void
xml_serror(void *data, xmlErrorPtr e)
{
	xmlParserCtxtPtr ctxt = data;
	struct parse *p = ctxt ? ctxt->_private : NULL;
	size_t n;

	if (p == NULL || e == NULL || e->level < XML_ERR_ERROR ||
	    p->xml_err_line > 0)
		return;
	p->xml_err_line = e->line > 0 ? e->line : 1;
	snprintf(p->xml_err, sizeof(p->xml_err), "%s",
	    e->message ? e->message : "parse error");
	/* One line per failure: some messages carry a second line. */
	for (char *c = p->xml_err; *c; c++)
		if (*c == '\n' || *c == '\r')
			*c = ' ';
	n = strlen(p->xml_err);
	while (n > 0 && isspace((unsigned char)p->xml_err[n - 1]))
		p->xml_err[--n] = '\0';
}

/* Called as soon as "<!DOCTYPE name ...>" is read, before its internal
 * subset: stopping here means no entity is ever declared, no external
 * subset or parameter entity is ever loaded. */
static void
xml_doctype(void *data, const xmlChar *name, const xmlChar *eid,
    const xmlChar *sid)
{
	xmlParserCtxtPtr ctxt = data;
	struct parse *p = ctxt->_private;

	if (p->doctype_line == 0)
		p->doctype_line = ctxt->input ? ctxt->input->line : 1;
	xmlStopParser(ctxt);
}

static void
xml_ext_subset(void *data, const xmlChar *name, const xmlChar *eid,
    const xmlChar *sid)
{
	xml_doctype(data, name, eid, sid);
}

/* Remember where each start tag ends (byte offset + 1 in node->_private)
 * so that errors can point at the line of the offending attribute. */
static void
xml_start_element(void *data, const xmlChar *localname, const xmlChar *prefix,
    const xmlChar *uri, int nb_ns, const xmlChar **ns, int nb_attr,
    int nb_def, const xmlChar **attrs)
{
	xmlParserCtxtPtr ctxt = data;
	struct parse *p = ctxt->_private;

	p->start_element(data, localname, prefix, uri, nb_ns, ns, nb_attr,
	    nb_def, attrs);
	if (ctxt->node != NULL && ctxt->input != NULL && ctxt->input->cur &&
	    ctxt->input->base)
		ctxt->node->_private = (void *)(uintptr_t)(ctxt->input->consumed +
		    (size_t)(ctxt->input->cur - ctxt->input->base) + 1);
}

/* ---- line numbers ---- */

static long
line_at(const struct parse *p, size_t off)
{
	long line = 1;
	for (size_t i = 0; i < off && i < p->len; i++)
		if (p->buf[i] == '\n')
			line++;
	return line;
}

/* Offset of the '<' opening node's start tag, or (size_t)-1. Attribute
 * values cannot hold a raw '<', so the nearest one before the tag's end
 * is its start. Checked against the name in case the input was
 * transcoded (offsets would then not match the file). */
static size_t
tag_start(const struct parse *p, xmlNodePtr n)
{
	uintptr_t end = (uintptr_t)n->_private;
	size_t i, nl;

	if (end == 0 || end - 1 > p->len)
		return (size_t)-1;
	i = end - 1;
	while (i > 0 && p->buf[i] != '<')
		i--;
	nl = strlen((const char *)n->name);
	if (p->buf[i] != '<' || i + 1 + nl > p->len ||
	    memcmp(p->buf + i + 1, n->name, nl) != 0)
		return (size_t)-1;
	return i;
}

long
node_line(const struct parse *p, xmlNodePtr n)
{
	size_t s = tag_start(p, n);
	return s == (size_t)-1 ? xmlGetLineNo(n) : line_at(p, s);
}

/* Line of attribute name inside node's start tag (the tag's line when
 * it cannot be found). */
long
attr_line(const struct parse *p, xmlNodePtr n, const char *name)
{
	size_t i = tag_start(p, n), an = strlen(name);
	long line;

	if (i == (size_t)-1)
		return xmlGetLineNo(n);
	line = line_at(p, i);
	i += 1 + strlen((const char *)n->name);
	for (;;) {
		size_t s;
		char q;
		while (i < p->len && isspace((unsigned char)p->buf[i]))
			if (p->buf[i++] == '\n')
				line++;
		if (i >= p->len || p->buf[i] == '>' || p->buf[i] == '/')
			break;
		s = i;
		while (i < p->len && p->buf[i] != '=' &&
		    !isspace((unsigned char)p->buf[i]))
			i++;
		if (i - s == an && memcmp(p->buf + s, name, an) == 0)
			return line;
		while (i < p->len && p->buf[i] != '"' && p->buf[i] != '\'')
			if (p->buf[i++] == '\n')
				line++;
		if (i >= p->len)
			break;
		q = p->buf[i++];
		while (i < p->len && p->buf[i] != q)
			if (p->buf[i++] == '\n')
				line++;
		i++;
	}
	return node_line(p, n);
}

/* ---- tree helpers ---- */

/* "prefix", ":", "name" for messages about namespaced elements. */
#define QNAME(n) ((n)->ns && (n)->ns->prefix ? \
	(const char *)(n)->ns->prefix : ""), ((n)->ns && (n)->ns->prefix ? \
	":" : ""), (const char *)(n)->name

static int
is_ws_only(const xmlChar *s)
{
	for (; s && *s; s++)
		if (!isspace(*s))
			return 0;
	return 1;
}

/* libxml2 stamps a text node with the line where it ends; the error
 * should point at its first non-blank character. */
static long
text_line(xmlNodePtr t)
{
	long line = xmlGetLineNo(t);
	const xmlChar *c = t->content;

	while (c && *c && isspace(*c))
		c++;
	for (; c && *c; c++)
		if (*c == '\n')
			line--;
	return line > 0 ? line : 1;
}

/* Element children of n, refusing stray text. *count gets how many. */
static int
check_content(const struct parse *p, xmlNodePtr n, size_t *count)
{
	size_t c = 0;

	for (xmlNodePtr ch = n->children; ch; ch = ch->next) {
		switch (ch->type) {
		case XML_ELEMENT_NODE:
			c++;
			break;
		case XML_TEXT_NODE:
			if (is_ws_only(ch->content))
				break;
			/* Invisible in an editor: say what it is. */
			if (strstr((const char *)ch->content, "\xef\xbb\xbf") != NULL)
				return cfg_err(p, text_line(ch), "a byte order mark "
				    "(U+FEFF, bytes EF BB BF) inside <%s>: only the "
				    "start of the file may hold one (files pasted "
				    "together?); remove it", (const char *)n->name);
			/* fallthrough */
		case XML_CDATA_SECTION_NODE:
			return cfg_err(p, text_line(ch), "unexpected text "
			    "inside <%s>: only elements and attributes are used; "
			    "remove it", (const char *)n->name);
		case XML_ENTITY_REF_NODE:
			return cfg_err(p, xmlGetLineNo(ch), "entity reference "
			    "inside <%s>: entities are not expanded; remove it",
			    (const char *)n->name);
		default:
			break;           /* comments, processing instructions */
		}
	}
	if (count)
		*count = c;
	return 0;
}

static int
in_list(const char *s, const char *const *list)
{
	for (; *list; list++)
		if (strcmp(s, *list) == 0)
			return 1;
	return 0;
}

static void
list_join(const char *const *list, char *out, size_t outlen)
{
	size_t n = 0;
	out[0] = '\0';
	for (; *list && n < outlen; list++)
		n += (size_t)snprintf(out + n, outlen - n, "%s%s",
		    n ? ", " : "", *list);
}

int
check_attrs(const struct parse *p, xmlNodePtr n, const char *const *allowed,
    const char *where)
{
	char names[256];

	for (xmlAttrPtr a = n->properties; a; a = a->next) {
		const char *an = (const char *)a->name;
		if (a->ns == NULL && in_list(an, allowed))
			continue;
		list_join(allowed, names, sizeof(names));
		return cfg_err(p, attr_line(p, n, an), "unknown attribute "
		    "'%s%s%s' on <%s>%s; allowed: %s", a->ns && a->ns->prefix ?
		    (const char *)a->ns->prefix : "", a->ns && a->ns->prefix ?
		    ":" : "", an, (const char *)n->name, where,
		    names[0] ? names : "none");
	}
	return 0;
}

/* Attribute value as a malloc'd string; *v = NULL when absent. */
int
attr_get(xmlNodePtr n, const char *name, char **v)
{
	xmlChar *x;

	*v = NULL;
	if (xmlHasNsProp(n, (const xmlChar *)name, NULL) == NULL)
		return 0;
	if ((x = xmlGetNoNsProp(n, (const xmlChar *)name)) == NULL)
		return HSMFS_ERR_NOMEM;
	*v = strdup((const char *)x);
	OPENSSL_cleanse(x, strlen((const char *)x));
	xmlFree(x);
	return *v ? 0 : HSMFS_ERR_NOMEM;
}

int
attr_required(const struct parse *p, xmlNodePtr n, const char *name,
    const char *what, char **v)
{
	int r;

	if ((r = attr_get(n, name, v)) != 0)
		return r;
	if (*v == NULL)
		return cfg_err(p, node_line(p, n), "%s: missing attribute '%s' "
		    "on <%s>; add it", what, name, (const char *)n->name);
	if ((*v)[0] == '\0') {
		free(*v);
		*v = NULL;
		return cfg_err(p, attr_line(p, n, name), "%s: attribute '%s' "
		    "on <%s> is empty; give it a value", what, name,
		    (const char *)n->name);
	}
	return 0;
}

/* The single <type> child of a <descriptor> or <key>. */
int
only_type_child(const struct parse *p, xmlNodePtr n, const char *what,
    xmlNodePtr *type)
{
	xmlNodePtr found = NULL;
	size_t c;
	int r;

	if ((r = check_content(p, n, &c)) != 0)
		return r;
	for (xmlNodePtr ch = n->children; ch; ch = ch->next) {
		if (ch->type != XML_ELEMENT_NODE)
			continue;
		if (ch->ns != NULL || strcmp((const char *)ch->name, "type") != 0)
			return cfg_err(p, node_line(p, ch), "unknown element "
			    "<%s%s%s> in %s; only <type> belongs here", QNAME(ch),
			    what);
		if (found != NULL)
			return cfg_err(p, node_line(p, ch), "second <type> in "
			    "%s; keep exactly one", what);
		found = ch;
	}
	if (found == NULL)
		return cfg_err(p, node_line(p, n), "%s has no <type> element; "
		    "add one", what);
	if ((r = check_content(p, found, &c)) != 0)
		return r;
	if (c != 0)
		return cfg_err(p, node_line(p, found), "<type> in %s must be "
		    "empty; move its content into attributes", what);
	*type = found;
	return 0;
}

/* Strict unsigned decimal (or 0x hex when allow_hex). */
int
parse_ulong(const char *s, int allow_hex, unsigned long *out)
{
	int base = 10;
	char *end;
	unsigned long v;

	if (allow_hex && (strncmp(s, "0x", 2) == 0 || strncmp(s, "0X", 2) == 0)) {
		base = 16;
		s += 2;
	}
	if (!isxdigit((unsigned char)s[0]) || (base == 10 &&
	    !isdigit((unsigned char)s[0])))
		return -1;
	errno = 0;
	v = strtoul(s, &end, base);
	if (errno != 0 || *end != '\0')
		return -1;
	*out = v;
	return 0;
}

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

/* ---- sections ---- */

static int
parse_section(const struct parse *p, xmlNodePtr sec, const char *child,
    size_t elem_size, void **arr, size_t *count,
    int (*parse_one)(const struct parse *, xmlNodePtr, void *))
{
	static const char *const none[] = {NULL};
	size_t c, i = 0;
	int r;

	if ((r = check_attrs(p, sec, none, "")) != 0)
		return r;
	if ((r = check_content(p, sec, &c)) != 0)
		return r;
	if ((*arr = calloc(c ? c : 1, elem_size)) == NULL)
		return HSMFS_ERR_NOMEM;
	for (xmlNodePtr ch = sec->children; ch; ch = ch->next) {
		if (ch->type != XML_ELEMENT_NODE)
			continue;
		if (ch->ns != NULL || strcmp((const char *)ch->name, child) != 0)
			return cfg_err(p, node_line(p, ch), "unknown element "
			    "<%s%s%s> in <%s>; only <%s> belongs here", QNAME(ch),
			    (const char *)sec->name, child);
		*count = i + 1;   /* so that engine_free sees partial entries */
		if ((r = parse_one(p, ch, (char *)*arr + i * elem_size)) != 0)
			return r;
		i++;
	}
	return 0;
}

/* <descriptors>: served ones into e->descs, the others into
 * e->unserved, in document order. */
static int
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

static int
parse_key_cb(const struct parse *p, xmlNodePtr n, void *k)
{
	return engine_parse_key(p, n, k);
}

static int
parse_root(const struct parse *p, xmlNodePtr root, struct engine *e)
{
	static const char *const none[] = {NULL};
	xmlNodePtr descs = NULL, keys = NULL;
	int r;

	if (root == NULL)
		return cfg_err(p, 1, "no root element; the file must hold "
		    "<engineSignEncrypt>");
	if (root->ns != NULL)
		return cfg_err(p, node_line(p, root), "root element <%s> is in "
		    "namespace \"%s\"; remove the xmlns attribute",
		    (const char *)root->name, (const char *)root->ns->href);
	if (strcmp((const char *)root->name, "engineSignEncrypt") != 0)
		return cfg_err(p, node_line(p, root), "root element is <%s>; "
		    "expected <engineSignEncrypt>", (const char *)root->name);
	if ((r = check_attrs(p, root, none, "")) != 0 ||
	    (r = check_content(p, root, NULL)) != 0)
		return r;
	for (xmlNodePtr ch = root->children; ch; ch = ch->next) {
		xmlNodePtr *slot;
		if (ch->type != XML_ELEMENT_NODE)
			continue;
		if (ch->ns == NULL && strcmp((const char *)ch->name, "descriptors") == 0)
			slot = &descs;
		else if (ch->ns == NULL && strcmp((const char *)ch->name, "keys") == 0)
			slot = &keys;
		else
			return cfg_err(p, node_line(p, ch), "unknown element "
			    "<%s%s%s> in <engineSignEncrypt>; only <descriptors> "
			    "and <keys> belong here", QNAME(ch));
		if (*slot != NULL)
			return cfg_err(p, node_line(p, ch), "second <%s> element; "
			    "merge it into the one on line %ld",
			    (const char *)ch->name, node_line(p, *slot));
		*slot = ch;
	}
	if (descs != NULL && (r = parse_descriptors(p, descs, e)) != 0)
		return r;
	if (keys != NULL && (r = parse_section(p, keys, "key", sizeof(*e->keys),
	    (void **)&e->keys, &e->nkeys, parse_key_cb)) != 0)
		return r;

	for (size_t i = 0; i < e->nkeys; i++)
		for (size_t j = 0; j < i; j++)
			if (strcmp(e->keys[i].name, e->keys[j].name) == 0)
				return cfg_err(p, e->keys[i].line, "duplicate key "
				    "name=\"%s\" (first on line %d); rename one",
				    e->keys[i].name, e->keys[j].line);
	for (size_t i = 0; i < e->ndescs; i++) {
		struct engine_descriptor *d = &e->descs[i];
		for (size_t j = 0; j < i; j++)
			if (strcmp(d->name, e->descs[j].name) == 0 &&
			    d->version == e->descs[j].version)
				return cfg_err(p, d->line, "duplicate descriptor "
				    "%s version=\"%d\" (first on line %d); give each "
				    "version its own number", d->name, d->version,
				    e->descs[j].line);
		for (size_t j = 0; j < e->nkeys; j++)
			if (strcmp(d->key_name, e->keys[j].name) == 0)
				d->key = &e->keys[j];
		if (d->key == NULL)
			return cfg_err(p, d->key_line, "descriptor %s version %d "
			    "names key=\"%s\", which is not in <keys>; add the key "
			    "or fix the name", d->name, d->version, d->key_name);
	}
	for (size_t i = 0; i < e->nunserved; i++) {
		struct engine_unserved *u = &e->unserved[i];
		if (u->key_name == NULL)
			continue;
		for (size_t j = 0; j < e->nkeys && u->key == NULL; j++)
			if (strcmp(u->key_name, e->keys[j].name) == 0)
				u->key = &e->keys[j];
		if (u->key == NULL)
			return cfg_err(p, u->line, "descriptor %s (not served by "
			    "hsmfs) names key=\"%s\", which is not in <keys>; add "
			    "the key or fix the name", u->name, u->key_name);
	}
	/* initVector exists in the engine for data once encrypted with a
	 * fixed IV. Every NX02 envelope carries its own IV, so reading needs
	 * no attribute: older versions keep decrypting. New fields use the
	 * newest version, and hsmfs never writes with a fixed IV. */
	{
		const struct engine_descriptor *nf = engine_newest(e,
		    ENGINE_ENCRYPTED_FIELDS);
		if (nf != NULL && nf->iv_line > 0)
			return cfg_err(p, nf->iv_line, "initVector on %s version %d: "
			    "new fields are encrypted with the newest version, and "
			    "hsmfs never encrypts with a fixed IV (each NX02 envelope "
			    "gets a random one); add a newer %s version without "
			    "initVector, or remove it", nf->name, nf->version,
			    nf->name);
		for (size_t i = 0; i < e->ndescs; i++)
			if (e->descs[i].iv_line > 0)
				log_info("%s:%d: initVector on %s version %d is not "
				    "needed by hsmfs: each NX02 envelope carries its own "
				    "IV, so data of this version still decrypts", p->path,
				    e->descs[i].iv_line, e->descs[i].name,
				    e->descs[i].version);
	}
	if (e->ndescs == 0)
		log_warn("%s: no descriptors configured; every folder will refuse "
		    "writes", p->path);
	return 0;
}

/* Best effort: the plain-text PIN attributes also sit in libxml2's tree. */
static void
wipe_pins(xmlNodePtr n)
{
	for (; n; n = n->next) {
		if (n->type != XML_ELEMENT_NODE)
			continue;
		for (xmlAttrPtr a = n->properties; a; a = a->next) {
			if (strcmp((const char *)a->name, "pin") != 0 &&
			    strcmp((const char *)a->name, "pin.encrypted") != 0 &&
			    strcmp((const char *)a->name, "uri") != 0)
				continue;
			for (xmlNodePtr t = a->children; t; t = t->next)
				if (t->content && (t->doc == NULL || t->doc->dict ==
				    NULL || !xmlDictOwns(t->doc->dict, t->content)))
					OPENSSL_cleanse(t->content,
					    strlen((const char *)t->content));
		}
		wipe_pins(n->children);
	}
}

static int
read_config(const char *path, char **buf, size_t *len)
{
	struct stat st;
	char *b = NULL;
	size_t n = 0;
	int fd, r = HSMFS_ERR_CONFIG;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) < 0) {
		err_set("%s: cannot open the configuration: %s", path,
		    strerror(errno));
		return HSMFS_ERR_CONFIG;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		err_set("%s: not a regular file; config= must name the "
		    "engineSignEncrypt.xml", path);
		goto out;
	}
	if (st.st_size > ENGINE_MAX_CONFIG) {
		err_set("%s: larger than %d bytes; is this the right file?", path,
		    ENGINE_MAX_CONFIG);
		goto out;
	}
	/* SPEC §2: the file holds PINs (or their scramble). */
	if (st.st_mode & 077)
		log_warn("%s: accessible by group or others (mode %04o) but may "
		    "hold PINs; run chmod 600 %s", path,
		    (unsigned)(st.st_mode & 07777), path);
	if ((b = malloc((size_t)st.st_size + 1)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	while (n < (size_t)st.st_size) {
		ssize_t got = read(fd, b + n, (size_t)st.st_size - n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			err_set("%s: read: %s", path, strerror(errno));
			goto out;
		}
		if (got == 0)
			break;
		n += (size_t)got;
	}
	b[n] = '\0';
	*buf = b;
	*len = n;
	b = NULL;
	r = 0;
out:
	free(b);
	close(fd);
	return r;
}

int
engine_load(const char *path, struct engine **out)
{
	struct parse p;
	struct engine *e = NULL;
	char *buf = NULL, *slash;
	size_t len = 0;
	xmlParserCtxtPtr ctxt = NULL;
	int r;

	memset(&p, 0, sizeof(p));
	p.path = path;
	if ((r = read_config(path, &buf, &len)) != 0)
		goto out;
	p.buf = buf;
	p.len = len;
	r = HSMFS_ERR_NOMEM;
	if ((p.dir = strdup(path)) == NULL)
		goto out;
	if ((slash = strrchr(p.dir, '/')) == NULL)
		strcpy(p.dir, ".");
	else if (slash == p.dir)
		slash[1] = '\0';
	else
		*slash = '\0';
	if ((e = calloc(1, sizeof(*e))) == NULL || (e->path = strdup(path)) == NULL)
		goto out;
	p.e = e;

	if (len == 0) {
		r = cfg_err(&p, 1, "malformed XML: the file is empty; write the "
		    "<engineSignEncrypt> configuration into it");
		goto out;
	}
	xmlInitParser();
	if (len > INT_MAX ||
	    (ctxt = xmlCreateMemoryParserCtxt(buf, (int)len)) == NULL)
		goto out;
	ctxt->_private = &p;
	p.ctxt = ctxt;
	/* Our handlers, not libxml2's global ones: no stderr output, and a
	 * DOCTYPE stops the parse before anything in it is processed. */
	ctxt->sax->serror = xml_serror;
	ctxt->sax->internalSubset = xml_doctype;
	ctxt->sax->externalSubset = xml_ext_subset;
	p.start_element = ctxt->sax->startElementNs;
	ctxt->sax->startElementNs = xml_start_element;
	ctxt->sax->initialized = XML_SAX2_MAGIC;
	/* NONET; deliberately no NOENT, DTDLOAD, DTDATTR, DTDVALID, XINCLUDE. */
	xmlCtxtUseOptions(ctxt, XML_PARSE_NONET | XML_PARSE_BIG_LINES);
	/* Whatever libxml2's process-wide defaults say. */
	ctxt->replaceEntities = 0;
	ctxt->loadsubset = 0;
	ctxt->validate = 0;
	xmlParseDocument(ctxt);

	if (p.doctype_line > 0) {
		r = cfg_err(&p, p.doctype_line, "<!DOCTYPE> is not allowed "
		    "(hsmfs loads no DTD and expands no entities); remove it");
		goto out;
	}
	if (p.xml_err_line > 0 || !ctxt->wellFormed || ctxt->myDoc == NULL) {
		r = cfg_err(&p, p.xml_err_line > 0 ? p.xml_err_line :
		    (ctxt->input ? ctxt->input->line : 1), "malformed XML: %s; "
		    "fix the file", p.xml_err_line > 0 ? p.xml_err : "parse error");
		goto out;
	}
	if ((r = parse_root(&p, xmlDocGetRootElement(ctxt->myDoc), e)) != 0)
		goto out;
	*out = e;
	e = NULL;
	r = 0;
out:
	if (ctxt != NULL) {
		if (ctxt->myDoc != NULL) {
			wipe_pins(ctxt->myDoc->children);
			xmlFreeDoc(ctxt->myDoc);
			ctxt->myDoc = NULL;
		}
		if (ctxt->input != NULL && ctxt->input->base != NULL &&
		    ctxt->input->end > ctxt->input->base)
			OPENSSL_cleanse((void *)ctxt->input->base,
			    (size_t)(ctxt->input->end - ctxt->input->base));
		xmlFreeParserCtxt(ctxt);
	}
	if (buf != NULL) {
		OPENSSL_cleanse(buf, len);
		free(buf);
	}
	free(p.dir);
	engine_free(e);
	return r;
}

static void
free_secret(char *s)
{
	if (s != NULL)
		OPENSSL_clear_free(s, strlen(s));
}

void
engine_free(struct engine *e)
{
	if (e == NULL)
		return;
	for (size_t i = 0; i < e->ndescs; i++) {
		struct engine_descriptor *d = &e->descs[i];
		free(d->name);
		free(d->algorithm);
		free(d->result);
		free(d->key_name);
		free(d->asym_cipher);
	}
	for (size_t i = 0; i < e->nunserved; i++) {
		free(e->unserved[i].name);
		free(e->unserved[i].version);
		free(e->unserved[i].key_name);
	}
	for (size_t i = 0; i < e->nkeys; i++) {
		struct engine_key *k = &e->keys[i];
		free(k->name);
		free(k->location);
		free(k->alias);
		free(k->token_label);
		free_secret(k->pin);
		free_secret(k->pin_encrypted);
		free(k->pin_file);
		free(k->pin_env);
		free(k->type_name);
		free(k->problem);
	}
	free(e->unserved);
	free(e->descs);
	free(e->keys);
	free(e->path);
	free(e);
}

const struct engine_descriptor *
engine_newest(const struct engine *e, const char *name)
{
	const struct engine_descriptor *best = NULL;

	for (size_t i = 0; e && i < e->ndescs; i++)
		if (strcmp(e->descs[i].name, name) == 0 &&
		    (best == NULL || e->descs[i].version > best->version))
			best = &e->descs[i];
	return best;
}

const struct engine_descriptor *
engine_version(const struct engine *e, const char *name, int version)
{
	for (size_t i = 0; e && i < e->ndescs; i++)
		if (strcmp(e->descs[i].name, name) == 0 &&
		    e->descs[i].version == version)
			return &e->descs[i];
	return NULL;
}

const char *
engine_key_type_label(const struct engine_key *k)
{
	switch (k->type) {
	case ENGINE_KEY_HSM:
		return "pkcs11";
	case ENGINE_KEY_P12:
		return "pkcs12";
	default:
		return k->type_name ? k->type_name : "?";
	}
}

const struct engine_key *
engine_key_by_name(const struct engine *e, const char *name)
{
	for (size_t i = 0; e && i < e->nkeys; i++)
		if (strcmp(e->keys[i].name, name) == 0)
			return &e->keys[i];
	return NULL;
}


void
engine_key_spec(const struct engine_key *k, const char *pin,
    struct hsm_key_spec *spec)
{
	memset(spec, 0, sizeof(*spec));
	spec->backend = k->type == ENGINE_KEY_HSM ? HSM_BACKEND_PKCS11 :
	    HSM_BACKEND_P12;
	spec->name = k->name;
	spec->location = k->location;
	spec->alias = k->alias;
	spec->has_slot = k->has_slot;
	spec->slot = k->slot;
	spec->token_label = k->token_label;
	spec->pin = pin;
	spec->no_raw_rsa = k->no_raw_rsa;
	spec->require_cert = 1;
	spec->pool_size = 0;
}
