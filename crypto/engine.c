/* engineSignEncrypt.xml: parsing and validation (contract §2), descriptor and
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
int
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

int
in_list(const char *s, const char *const *list)
{
	for (; *list; list++)
		if (strcmp(s, *list) == 0)
			return 1;
	return 0;
}

void
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
	char why[256];
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
	/* contract §2: the file holds PINs (or their scramble). */
	if (st.st_mode & 077)
		log_warn("%s: accessible by group or others (mode %04o) but may "
		    "hold PINs; run chmod 600 %s", path,
		    (unsigned)(st.st_mode & 07777), path);
	/* The bytes come from the one whole-file reader (which opens path
	 * again and enforces the same size limit). */
	if ((r = util_read_file(path, ENGINE_MAX_CONFIG, buf, len)) != 0) {
		if (r != HSMFS_ERR_NOMEM) {
			snprintf(why, sizeof(why), "%s", err_detail());
			err_set("%s: cannot read the configuration: %s", path, why);
			r = HSMFS_ERR_CONFIG;
		}
		goto out;
	}
	r = 0;
out:
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
