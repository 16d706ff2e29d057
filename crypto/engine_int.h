/* Shared by the engineSignEncrypt.xml parser's files (engine.c,
 * engine_desc.c, engine_key.c); not for use outside crypto/engine*.c. */
#ifndef HSMFS_CRYPTO_ENGINE_INT_H
#define HSMFS_CRYPTO_ENGINE_INT_H

#include "crypto/engine.h"

#include <stddef.h>
#include <libxml/parser.h>
#include <libxml/tree.h>

/* Parser state reached from libxml2 callbacks through ctxt->_private. */
struct parse {
	const char *path;
	char *dir;                /* config directory, for relative pin.file */
	struct engine *e;         /* being filled: parse_key looks up users */
	const char *buf;          /* the file as read, for attribute lines */
	size_t len;
	xmlParserCtxtPtr ctxt;
	startElementNsSAX2Func start_element;  /* libxml2's own tree builder */
	int doctype_line;         /* > 0: a DOCTYPE was seen (and refused) */
	int xml_err_line;         /* > 0: first libxml2 error */
	char xml_err[256];
};

/* "prefix", ":", "name" for messages about namespaced elements. */
#define QNAME(n) ((n)->ns && (n)->ns->prefix ? \
	(const char *)(n)->ns->prefix : ""), ((n)->ns && (n)->ns->prefix ? \
	":" : ""), (const char *)(n)->name

/* err_set("FILE:LINE: message"); returns HSMFS_ERR_CONFIG. */
int cfg_err(const struct parse *p, long line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Line of n's start tag, of attribute name inside it. */
long node_line(const struct parse *p, xmlNodePtr n);
long attr_line(const struct parse *p, xmlNodePtr n, const char *name);
/* Refuse any attribute not in allowed (NULL-terminated). */
int check_attrs(const struct parse *p, xmlNodePtr n,
    const char *const *allowed, const char *where);
/* Attribute value malloc'd (*v = NULL when absent); required: absent or
 * empty is an error naming what. */
int attr_get(xmlNodePtr n, const char *name, char **v);
int attr_required(const struct parse *p, xmlNodePtr n, const char *name,
    const char *what, char **v);
/* The single empty <type> child of a <descriptor> or <key>. */
int only_type_child(const struct parse *p, xmlNodePtr n, const char *what,
    xmlNodePtr *type);
/* Strict unsigned decimal (or 0x hex when allow_hex); -1 if not. */
int parse_ulong(const char *s, int allow_hex, unsigned long *out);

/* Element children of n, refusing stray text; *count gets how many. */
int check_content(const struct parse *p, xmlNodePtr n, size_t *count);
/* s is one of list (NULL-terminated); list joined with ", " into out. */
int in_list(const char *s, const char *const *list);
void list_join(const char *const *list, char *out, size_t outlen);

/* The <descriptors> section (engine_desc.c): served descriptors into
 * e->descs, others into e->unserved, in document order. */
int parse_descriptors(const struct parse *p, xmlNodePtr sec,
    struct engine *e);

/* One <key> (engine_key.c). Needs p->e's descriptors parsed already:
 * whether the key is served decides how strictly it is checked. */
int engine_parse_key(const struct parse *p, xmlNodePtr n,
    struct engine_key *k);

#endif
