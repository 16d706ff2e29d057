/* engineSignEncrypt.xml: parsing and validation (SPEC §2), descriptor and
 * key lookups, PIN sources and the pin.encrypted scramble. Owns every
 * string of struct engine; descriptors borrow their key from e->keys.
 * The parser refuses any DOCTYPE, so no entity or DTD is ever resolved. */
#include "crypto/engine.h"
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
#define ENGINE_MAX_PIN 256

/* Parser state reached from libxml2 callbacks through ctxt->_private. */
struct parse {
	const char *path;
	char *dir;                /* config directory, for relative pin.file */
	const char *buf;          /* the file as read, for attribute lines */
	size_t len;
	xmlParserCtxtPtr ctxt;
	startElementNsSAX2Func start_element;  /* libxml2's own tree builder */
	int doctype_line;         /* > 0: a DOCTYPE was seen (and refused) */
	int xml_err_line;         /* > 0: first libxml2 error */
	char xml_err[256];
};

static int __attribute__((format(printf, 3, 4)))
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

static long
node_line(const struct parse *p, xmlNodePtr n)
{
	size_t s = tag_start(p, n);
	return s == (size_t)-1 ? xmlGetLineNo(n) : line_at(p, s);
}

/* Line of attribute name inside node's start tag (the tag's line when
 * it cannot be found). */
static long
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

static int
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
static int
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

static int
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
static int
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
static int
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

static int
parse_descriptor(const struct parse *p, xmlNodePtr n,
    struct engine_descriptor *d)
{
	static const char *const attrs[] = {"name", "version", NULL};
	static const char *const fields_attrs[] = {"algorithm", "size",
		"result", "key", "asymCipher", NULL};
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
	return 0;
}

/* ---- keys ---- */

static int
parse_key(const struct parse *p, xmlNodePtr n, struct engine_key *k)
{
	static const char *const attrs[] = {"name", NULL};
	static const char *const hsm_attrs[] = {"name", "locationValue", "pin",
		"pin.encrypted", "pin.file", "pin.env", "alias", "slot",
		"tokenLabel", "rawRsaFallback", NULL};
	static const char *const p12_attrs[] = {"name", "locationValue", "pin",
		"pin.encrypted", "pin.file", "pin.env", "alias", NULL};
	static const char *const pin_attrs[] = {"pin", "pin.encrypted",
		"pin.file", "pin.env", NULL};
	char what[300], *v = NULL;
	const char *first = NULL;
	xmlNodePtr t;
	int r, npin = 0;

	k->line = (int)node_line(p, n);
	if ((r = check_attrs(p, n, attrs, "")) != 0)
		return r;
	if ((r = attr_required(p, n, "name", "a key", &k->name)) != 0)
		return r;
	for (const char *c = k->name; *c; c++)
		if (iscntrl((unsigned char)*c))
			return cfg_err(p, attr_line(p, n, "name"), "key name "
			    "contains a control character; rename it");
	snprintf(what, sizeof(what), "key %s", k->name);
	if ((r = only_type_child(p, n, what, &t)) != 0)
		return r;
	if ((r = attr_required(p, t, "name", what, &v)) != 0)
		return r;
	if (strcmp(v, "HSM") == 0)
		k->type = ENGINE_KEY_HSM;
	else if (strcmp(v, "P12") == 0 || strcmp(v, "PKCS12") == 0)
		k->type = ENGINE_KEY_P12;
	else {
		r = cfg_err(p, attr_line(p, t, "name"), "<type name=\"%s\"> of %s: "
		    "unknown key type; use HSM, P12 or PKCS12", v, what);
		free(v);
		return r;
	}
	free(v);
	if ((r = check_attrs(p, t, k->type == ENGINE_KEY_HSM ? hsm_attrs :
	    p12_attrs, k->type == ENGINE_KEY_HSM ? " of an HSM key" :
	    " of a P12 key")) != 0)
		return r;
	if ((r = attr_required(p, t, "locationValue", what, &k->location)) != 0)
		return r;
	if (k->location[0] != '/' && strchr(k->location, '/') != NULL &&
	    k->type == ENGINE_KEY_HSM)
		/* dlopen would resolve it against whatever cwd hsmfs has. */
		return cfg_err(p, attr_line(p, t, "locationValue"), "%s: "
		    "locationValue=\"%s\" is a relative path; give the PKCS#11 "
		    "module as an absolute path or a bare file name", what,
		    k->location);
	if (k->location[0] != '/' && k->type == ENGINE_KEY_P12) {
		/* Like pin.file: relative to the config, as hsmfs runs in /. */
		char *abs;
		if (asprintf(&abs, "%s/%s", p->dir, k->location) < 0)
			return HSMFS_ERR_NOMEM;
		free(k->location);
		k->location = abs;
	}
	if ((r = attr_get(t, "alias", &k->alias)) != 0)
		return r;
	if (k->type == ENGINE_KEY_HSM && k->alias == NULL)
		return cfg_err(p, node_line(p, t), "%s: missing attribute 'alias' "
		    "(the CKA_LABEL of the private key and certificate); add it",
		    what);
	if (k->alias != NULL && k->alias[0] == '\0')
		return cfg_err(p, attr_line(p, t, "alias"), "%s: attribute 'alias' "
		    "is empty; give the label or remove it", what);

	if (k->type == ENGINE_KEY_HSM) {
		if ((r = attr_get(t, "slot", &v)) != 0)
			return r;
		if (v != NULL) {
			if (parse_ulong(v, 1, &k->slot) != 0) {
				r = cfg_err(p, attr_line(p, t, "slot"), "slot=\"%s\" of "
				    "%s: use a slot ID as listed by pkcs11-tool -L "
				    "(decimal or 0x hex)", v, what);
				free(v);
				return r;
			}
			k->has_slot = 1;
			free(v);
		}
		if ((r = attr_get(t, "tokenLabel", &k->token_label)) != 0)
			return r;
		if (k->token_label != NULL && k->token_label[0] == '\0')
			return cfg_err(p, attr_line(p, t, "tokenLabel"), "%s: "
			    "attribute 'tokenLabel' is empty; give the label or "
			    "remove it", what);
		if ((r = attr_get(t, "rawRsaFallback", &v)) != 0)
			return r;
		if (v != NULL) {
			if (strcasecmp(v, "false") == 0)
				k->no_raw_rsa = 1;
			else if (strcasecmp(v, "true") != 0) {
				r = cfg_err(p, attr_line(p, t, "rawRsaFallback"),
				    "rawRsaFallback=\"%s\" of %s: use true or false",
				    v, what);
				free(v);
				return r;
			}
			free(v);
		}
	}

	/* Exactly one PIN source. */
	for (size_t i = 0; pin_attrs[i]; i++) {
		if (xmlHasNsProp(t, (const xmlChar *)pin_attrs[i], NULL) == NULL)
			continue;
		if (npin++ > 0)
			return cfg_err(p, attr_line(p, t, pin_attrs[i]), "%s has "
			    "both '%s' and '%s'; keep exactly one PIN source",
			    what, first, pin_attrs[i]);
		first = pin_attrs[i];
	}
	if (npin == 0)
		return cfg_err(p, node_line(p, t), "%s has no PIN source; add "
		    "one of pin, pin.encrypted (hsmfs-tool scramble-pin), "
		    "pin.file or pin.env", what);
	if ((r = attr_get(t, "pin", &k->pin)) != 0 ||
	    (r = attr_get(t, "pin.encrypted", &k->pin_encrypted)) != 0)
		return r;
	if (k->pin != NULL && k->pin[0] == '\0' && k->type == ENGINE_KEY_HSM)
		return cfg_err(p, attr_line(p, t, "pin"), "%s: attribute 'pin' is "
		    "empty; give the token's user PIN", what);
	if (k->pin_encrypted != NULL) {
		char *pin = NULL;
		if (engine_pin_unscramble(k->pin_encrypted, &pin) != 0)
			return cfg_err(p, attr_line(p, t, "pin.encrypted"), "%s: "
			    "%s", what, err_detail());
		engine_pin_free(pin);
	}
	if ((r = attr_get(t, "pin.file", &v)) != 0)
		return r;
	if (v != NULL) {
		if (v[0] == '\0') {
			free(v);
			return cfg_err(p, attr_line(p, t, "pin.file"), "%s: "
			    "attribute 'pin.file' is empty; give a file name", what);
		}
		/* Relative: a systemd credential (LoadCredential=) when
		 * $CREDENTIALS_DIRECTORY holds it, else relative to the
		 * config, not to whatever cwd hsmfs has. */
		if (v[0] == '/')
			k->pin_file = v;
		else {
			const char *cred = getenv("CREDENTIALS_DIRECTORY");
			int n = -1;
			if (cred != NULL && cred[0] == '/') {
				if ((n = asprintf(&k->pin_file, "%s/%s", cred, v)) >= 0 &&
				    access(k->pin_file, F_OK) != 0) {
					free(k->pin_file);
					n = -1;
				}
			}
			if (n < 0 && asprintf(&k->pin_file, "%s/%s", p->dir, v) < 0)
				k->pin_file = NULL;
			free(v);
			if (k->pin_file == NULL)
				return HSMFS_ERR_NOMEM;
		}
		v = NULL;
	}
	if ((r = attr_get(t, "pin.env", &k->pin_env)) != 0)
		return r;
	if (k->pin_env != NULL && (k->pin_env[0] == '\0' ||
	    strchr(k->pin_env, '=') != NULL))
		return cfg_err(p, attr_line(p, t, "pin.env"), "%s: pin.env=\"%s\" "
		    "is not an environment variable name", what, k->pin_env);
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

static int
parse_desc_cb(const struct parse *p, xmlNodePtr n, void *d)
{
	return parse_descriptor(p, n, d);
}

static int
parse_key_cb(const struct parse *p, xmlNodePtr n, void *k)
{
	return parse_key(p, n, k);
}

/* Line of the key= attribute of the i-th descriptor under descs. */
static long
desc_key_line(const struct parse *p, xmlNodePtr descs, size_t i, long dflt)
{
	for (xmlNodePtr ch = descs->children; ch; ch = ch->next) {
		if (ch->type != XML_ELEMENT_NODE || i-- > 0)
			continue;
		for (xmlNodePtr t = ch->children; t; t = t->next)
			if (t->type == XML_ELEMENT_NODE)
				return attr_line(p, t, "key");
		break;
	}
	return dflt;
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
	if (descs != NULL && (r = parse_section(p, descs, "descriptor",
	    sizeof(*e->descs), (void **)&e->descs, &e->ndescs,
	    parse_desc_cb)) != 0)
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
			return cfg_err(p, desc_key_line(p, descs, i, d->line),
			    "descriptor %s version %d names "
			    "key=\"%s\", which is not in <keys>; add the key or fix "
			    "the name", d->name, d->version, d->key_name);
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
			    strcmp((const char *)a->name, "pin.encrypted") != 0)
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
	}
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

const struct engine_key *
engine_key_by_name(const struct engine *e, const char *name)
{
	for (size_t i = 0; e && i < e->nkeys; i++)
		if (strcmp(e->keys[i].name, name) == 0)
			return &e->keys[i];
	return NULL;
}

/* ---- PINs ---- */

static char *
secure_strndup(const char *s, size_t n)
{
	char *c = secmem_alloc(n + 1);
	if (c != NULL) {
		memcpy(c, s, n);
		c[n] = '\0';
	}
	return c;
}

/* pin.file: the whole file, one trailing LF or CRLF stripped. Read
 * straight into secure memory (no stdio buffers). */
static int
pin_from_file(const struct engine_key *k, char **pin)
{
	const size_t cap = ENGINE_MAX_PIN + 3;
	char *buf = NULL;
	size_t n = 0;
	struct stat st;
	int fd = -1, r = HSMFS_ERR_CONFIG;

	if ((fd = open(k->pin_file, O_RDONLY | O_CLOEXEC | O_NOCTTY)) < 0) {
		err_set("pin.file %s (line %d): cannot open: %s; create it or fix "
		    "pin.file", k->pin_file, k->line, strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 077))
		log_warn("pin.file %s of key %s: accessible by group or others "
		    "(mode %04o); run chmod 600 %s", k->pin_file, k->name,
		    (unsigned)(st.st_mode & 07777), k->pin_file);
	if ((buf = secmem_alloc(cap + 1)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	for (;;) {
		ssize_t got = read(fd, buf + n, cap - n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			err_set("pin.file %s: read: %s", k->pin_file, strerror(errno));
			goto out;
		}
		if (got == 0)
			break;
		n += (size_t)got;
		if (n == cap) {
			err_set("pin.file %s: longer than %d bytes; it must hold only "
			    "the PIN", k->pin_file, ENGINE_MAX_PIN);
			goto out;
		}
	}
	if (n > 0 && buf[n - 1] == '\n') {
		n--;
		if (n > 0 && buf[n - 1] == '\r')
			n--;
	}
	if (n == 0) {
		err_set("pin.file %s is empty; write the PIN into it", k->pin_file);
		goto out;
	}
	if (memchr(buf, '\0', n) || memchr(buf, '\n', n) || memchr(buf, '\r', n)) {
		err_set("pin.file %s holds more than one line or a NUL byte; it "
		    "must hold only the PIN", k->pin_file);
		goto out;
	}
	if (n > ENGINE_MAX_PIN) {
		err_set("pin.file %s: longer than %d bytes; it must hold only the "
		    "PIN", k->pin_file, ENGINE_MAX_PIN);
		goto out;
	}
	if ((*pin = secure_strndup(buf, n)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	r = 0;
out:
	secmem_free(buf, cap + 1);
	if (fd >= 0)
		close(fd);
	return r;
}

int
engine_key_pin(const struct engine_key *k, char **pin)
{
	const char *v;

	if (k->pin != NULL) {
		if ((*pin = secure_strndup(k->pin, strlen(k->pin))) == NULL)
			return HSMFS_ERR_NOMEM;
		return 0;
	}
	if (k->pin_encrypted != NULL)
		return engine_pin_unscramble(k->pin_encrypted, pin);
	if (k->pin_file != NULL)
		return pin_from_file(k, pin);
	if (k->pin_env != NULL) {
		if ((v = getenv(k->pin_env)) == NULL || v[0] == '\0') {
			err_set("pin.env: environment variable %s (line %d) is not "
			    "set or empty; export it before starting", k->pin_env,
			    k->line);
			return HSMFS_ERR_CONFIG;
		}
		if (strlen(v) > ENGINE_MAX_PIN) {
			err_set("pin.env: environment variable %s is longer than %d "
			    "bytes", k->pin_env, ENGINE_MAX_PIN);
			return HSMFS_ERR_CONFIG;
		}
		if ((*pin = secure_strndup(v, strlen(v))) == NULL)
			return HSMFS_ERR_NOMEM;
		return 0;
	}
	err_set("no PIN source (line %d); add pin, pin.encrypted, pin.file or "
	    "pin.env", k->line);
	return HSMFS_ERR_CONFIG;
}

void
engine_pin_free(char *pin)
{
	if (pin != NULL)
		secmem_free(pin, strlen(pin) + 1);
}

/*
 * pin.encrypted, format "S1:" base64(salt || body):
 *   salt  8 random bytes
 *   body  (pin || check) XOR keystream, check = SHA-256(CHECK || salt ||
 *         pin)[0..3], keystream block i = SHA-256(KEY || salt || be32(i)).
 * The constants are public, so anyone with this source recovers the PIN:
 * it only keeps the PIN from being read over a shoulder or grepped. The
 * check value catches edited or truncated values before a login attempt
 * (a wrong PIN would count against the token's retry limit).
 */
#define SCRAMBLE_PREFIX "S1:"
#define SCRAMBLE_SALT 8
#define SCRAMBLE_CHECK 4
static const char scramble_key[] = "hsmfs pin.encrypted v1 keystream";
static const char scramble_chk[] = "hsmfs pin.encrypted v1 check";

static int
scramble_xor(const uint8_t *salt, uint8_t *data, size_t len)
{
	uint8_t block[32];
	int r = HSMFS_ERR_CRYPTO;

	for (uint32_t i = 0; (size_t)i * 32 < len; i++) {
		uint8_t ctr[4] = {(uint8_t)(i >> 24), (uint8_t)(i >> 16),
			(uint8_t)(i >> 8), (uint8_t)i};
		EVP_MD_CTX *c = EVP_MD_CTX_new();
		int ok = c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) &&
		    EVP_DigestUpdate(c, scramble_key, sizeof(scramble_key) - 1) &&
		    EVP_DigestUpdate(c, salt, SCRAMBLE_SALT) &&
		    EVP_DigestUpdate(c, ctr, sizeof(ctr)) &&
		    EVP_DigestFinal_ex(c, block, NULL);
		EVP_MD_CTX_free(c);
		if (!ok)
			goto out;
		for (size_t j = 0; j < 32 && (size_t)i * 32 + j < len; j++)
			data[(size_t)i * 32 + j] ^= block[j];
	}
	r = 0;
out:
	OPENSSL_cleanse(block, sizeof(block));
	return r;
}

static int
scramble_check(const uint8_t *salt, const char *pin, size_t len,
    uint8_t out[SCRAMBLE_CHECK])
{
	uint8_t h[32];
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	int ok = c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) &&
	    EVP_DigestUpdate(c, scramble_chk, sizeof(scramble_chk) - 1) &&
	    EVP_DigestUpdate(c, salt, SCRAMBLE_SALT) &&
	    EVP_DigestUpdate(c, pin, len) && EVP_DigestFinal_ex(c, h, NULL);

	EVP_MD_CTX_free(c);
	memcpy(out, h, SCRAMBLE_CHECK);
	OPENSSL_cleanse(h, sizeof(h));
	return ok ? 0 : HSMFS_ERR_CRYPTO;
}

char *
engine_pin_scramble(const char *pin)
{
	size_t n = pin ? strlen(pin) : 0, total = SCRAMBLE_SALT + n + SCRAMBLE_CHECK;
	uint8_t *raw = NULL;
	char *b64 = NULL, *res = NULL;

	if (n == 0 || n > ENGINE_MAX_PIN)
		return NULL;
	if ((raw = secmem_alloc(total)) == NULL)
		goto out;
	if (RAND_bytes(raw, SCRAMBLE_SALT) != 1)
		goto out;
	memcpy(raw + SCRAMBLE_SALT, pin, n);
	if (scramble_check(raw, pin, n, raw + SCRAMBLE_SALT + n) != 0 ||
	    scramble_xor(raw, raw + SCRAMBLE_SALT, n + SCRAMBLE_CHECK) != 0)
		goto out;
	if ((b64 = util_b64_encode(raw, total)) == NULL)
		goto out;
	if (asprintf(&res, SCRAMBLE_PREFIX "%s", b64) < 0)
		res = NULL;
out:
	secmem_free(raw, total);
	free(b64);
	return res;
}

int
engine_pin_unscramble(const char *scrambled, char **pin)
{
	uint8_t *raw = NULL, chk[SCRAMBLE_CHECK];
	size_t rawlen = 0, n;
	const char *b64;
	int r = HSMFS_ERR_CONFIG;

	if (scrambled == NULL || strncmp(scrambled, SCRAMBLE_PREFIX,
	    strlen(SCRAMBLE_PREFIX)) != 0) {
		err_set("pin.encrypted is not a value made by hsmfs-tool "
		    "scramble-pin (it starts with \"" SCRAMBLE_PREFIX "\"); run "
		    "it again");
		return HSMFS_ERR_CONFIG;
	}
	b64 = scrambled + strlen(SCRAMBLE_PREFIX);
	if (util_b64_decode(b64, strlen(b64), &raw, &rawlen) != 0) {
		raw = NULL;
		err_set("pin.encrypted: damaged value (not base64 after \""
		    SCRAMBLE_PREFIX "\"); run hsmfs-tool scramble-pin again");
		goto out;
	}
	if (rawlen < SCRAMBLE_SALT + 1 + SCRAMBLE_CHECK ||
	    rawlen > SCRAMBLE_SALT + ENGINE_MAX_PIN + SCRAMBLE_CHECK) {
		err_set("pin.encrypted: damaged value (wrong length); run "
		    "hsmfs-tool scramble-pin again");
		goto out;
	}
	n = rawlen - SCRAMBLE_SALT - SCRAMBLE_CHECK;
	if ((r = scramble_xor(raw, raw + SCRAMBLE_SALT, n + SCRAMBLE_CHECK)) != 0) {
		err_set_ossl("pin.encrypted: SHA-256 failed");
		goto out;
	}
	r = HSMFS_ERR_CONFIG;
	if (scramble_check(raw, (const char *)raw + SCRAMBLE_SALT, n, chk) != 0) {
		r = HSMFS_ERR_CRYPTO;
		err_set_ossl("pin.encrypted: SHA-256 failed");
		goto out;
	}
	if (CRYPTO_memcmp(chk, raw + SCRAMBLE_SALT + n, SCRAMBLE_CHECK) != 0 ||
	    memchr(raw + SCRAMBLE_SALT, '\0', n) != NULL) {
		err_set("pin.encrypted: damaged value (check value does not match: "
		    "edited or truncated); run hsmfs-tool scramble-pin again");
		goto out;
	}
	if ((*pin = secure_strndup((const char *)raw + SCRAMBLE_SALT, n)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	r = 0;
out:
	if (raw != NULL) {
		OPENSSL_cleanse(raw, rawlen);
		free(raw);
	}
	OPENSSL_cleanse(chk, sizeof(chk));
	return r;
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

void
engine_scrub_env_pins(const struct engine *e)
{
	extern char **environ;

	for (size_t i = 0; e != NULL && i < e->nkeys; i++) {
		const char *var = e->keys[i].pin_env;
		size_t n;
		if (var == NULL)
			continue;
		n = strlen(var);
		/* The initial environment lives in the stack block that
		 * /proc/PID/environ shows; unsetenv alone leaves it there. */
		for (char **ep = environ; ep != NULL && *ep != NULL; ep++)
			if (strncmp(*ep, var, n) == 0 && (*ep)[n] == '=')
				OPENSSL_cleanse(*ep + n + 1, strlen(*ep + n + 1));
		unsetenv(var);
	}
}
