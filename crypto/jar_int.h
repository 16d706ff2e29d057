/* Internal to the JAR code (manifest.c, jar_sign.c, jar_verify.c): the
 * manifest text model and the META-INF roles of the entries. */
#ifndef HSMFS_CRYPTO_JAR_INT_H
#define HSMFS_CRYPTO_JAR_INT_H

#include "crypto/zip_int.h"

/* An entry's part in the signature (meta_roles). */
enum { ROLE_ENTRY, ROLE_DIR, ROLE_MANIFEST, ROLE_SF, ROLE_BLOCK, ROLE_OWN };

struct mf_attr {
	char *name, *value;
};

struct mf_section {
	size_t off, len;         /* raw bytes, including the blank line */
	struct mf_attr *a;
	size_t na;
	const char *name;        /* value of Name: (individual sections) */
};

struct mf {
	struct mf_section *s;    /* s[0] is the main section */
	size_t ns, cap;
	struct mf_section **idx; /* s[1..] sorted by name */
	const char *dup;         /* a name with two sections, if any */
};

struct sbuf {
	char *b;
	size_t n, cap;
};

/* Strong digest attributes of a section ("<ALG>-Digest<suffix>"), at
 * most 3; weak ones are counted so the reason can say "SHA-1". */
struct dattr {
	const EVP_MD *md;
	const char *b64;
};

/* manifest.c */
void mf_free(struct mf *m);
const char *mf_get(const struct mf_section *s, const char *name);
const struct mf_section *mf_find(const struct mf *m, const char *name);
int mf_parse(const char *b, size_t n, struct mf *m, const char *what);
int sb_put(struct sbuf *s, const void *p, size_t n);
int sb_header(struct sbuf *s, const char *name, const char *value);
const char *md_java_name(const EVP_MD *md);
const EVP_MD *md_from_java(const char *s, size_t n);
int is_weak_digest_attr(const char *name, const char *suffix);
int jar_b64(const uint8_t *d, size_t n, char **out);
int jar_digest_b64(const EVP_MD *md, const void *p, size_t n, char **out);
size_t section_digests(const struct mf_section *s, const char *suffix,
    struct dattr *d, int *weak);
int mf_build_main(struct sbuf *mf, const struct mf *old, const char *created_by);
int mf_build_section(struct sbuf *mf, const struct mf *old, const char *name,
    const char *attr, const char *b64);
int mf_build_sf(struct sbuf *sf, const EVP_MD *md, const char *created,
    const struct sbuf *mf, size_t main_len, const struct zarc *z,
    char *const *sections);

/* jar_verify.c, used by the signer too */
int jar_meta_roles(const struct zarc *z, const char *own, uint8_t *role, int *block);
int jar_find_manifest(const struct zarc *z, long *idx);

#endif
