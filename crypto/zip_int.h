/* Internal to crypto/: the strict zip reader (zip.c) and entry data
 * (zip_data.c) shared by the JAR signer and verifier. Not named zip.h:
 * crypto/ is on the include path of its own files, and <zip.h> is
 * libzip's. */
#ifndef HSMFS_CRYPTO_ZIP_INT_H
#define HSMFS_CRYPTO_ZIP_INT_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <zip.h>
#include <openssl/evp.h>

#include "crypto/jar.h"          /* JAR_MAX_ENTRIES and the bomb limits */

#define CHUNK (64 * 1024)
#define MAX_META (16u << 20)    /* manifest / .SF / block size cap */

struct zent {
	char *name;              /* raw bytes, NUL-terminated (no NUL inside) */
	size_t nlen;
	uint16_t flags, method, dtime, ddate;
	uint32_t crc;
	uint64_t csize, usize;
	uint64_t loff;           /* local header */
	uint64_t doff;           /* compressed data */
	uint64_t end;            /* after data (and data descriptor) */
	uint64_t cdoff;          /* its central directory record ... */
	uint32_t cdlen;          /* ... and that record's length */
	int cd64;                /* the record uses zip64 fields */
};

struct zarc {
	int fd;
	uint64_t size;
	struct zent *e;
	size_t n;
	uint64_t cd_off;
	struct zent **byname;    /* sorted by name, for lookups */
	int zip64;               /* zip64 end record */
	uint64_t z64rec_off;     /* zip64 end record (locator: 56 bytes on) */
	uint64_t eocd_off;       /* end of central directory record */
	uint64_t comment_off;    /* archive comment */
	uint16_t comment_len;
};

static inline int
zent_is_dir(const struct zent *e)
{
	return e->nlen > 0 && e->name[e->nlen - 1] == '/';
}

/* err_set the reason; returns HSMFS_ERR_BADMSG. */
int jar_bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* zip.c. pread exactly len bytes at off (short: a format error). */
int zarc_read(const struct zarc *z, uint64_t off, void *buf, size_t len);
/* Open and check the whole structure (contract §8); zarc_close on failure. */
int zarc_open(const char *path, struct zarc *z);
void zarc_close(struct zarc *z);
/* libzip's view of the same file must agree entry by entry (keep, when
 * not NULL: libzip's handle, for the libzip writer). */
int zarc_libzip_check(const char *path, const struct zarc *z, zip_t **keep);
/* Index of the entry named name, or -1. */
int zarc_find(const struct zarc *z, const char *name);

/* zip_data.c: entry bytes, exactly as declared. zent_digest streams an
 * entry through up to 3 digests; zarc_par_for runs fn(ctx, i) for every
 * i < n on up to 4 threads (the failure of the lowest i wins);
 * zent_slurp reads a whole small entry (at most MAX_META). */
int zent_digest(const struct zarc *z, const struct zent *e, const EVP_MD *const *mds,
    size_t nmd, uint8_t out[][EVP_MAX_MD_SIZE]);
int zarc_par_for(size_t n, uint64_t bytes, int (*fn)(void *, size_t), void *ctx);
uint64_t zarc_total_csize(const struct zarc *z);
int zent_slurp(const struct zarc *z, const struct zent *e, uint8_t **out,
    size_t *len);

/* A new entry of the signed zip (the three signature files), deflated. */
struct new_entry {
	const char *name;
	const uint8_t *data;
	size_t len;
	uint8_t *comp;           /* raw deflate of data */
	size_t clen;
	uint32_t crc;
	uint64_t off;
};

/* The zip header emitter, one for both writers (jar_sign.c): each call
 * fills the fixed part of one record (the name, then the extra field,
 * follow it). New entries are deflated, version 2.0, mode -rw-r--r--. */
#define ZHDR_LOCAL 30
#define ZHDR_CENTRAL 46
#define ZHDR_END 22
#define ZHDR_PAD_ID 0xd935       /* zipalign's alignment padding field */
void zhdr_dos_time(time_t t, uint16_t *dtime, uint16_t *ddate);
void zhdr_local(uint8_t *h, const struct new_entry *ne, uint16_t dtime,
    uint16_t ddate, uint16_t xlen);
void zhdr_central(uint8_t *h, const struct new_entry *ne, uint16_t dtime,
    uint16_t ddate);
/* A padding extra field of len bytes in all (len >= 4). */
void zhdr_pad(uint8_t *x, uint16_t len);
/* The end record (no zip64: the caller checked that none is needed). */
void zhdr_end(uint8_t *h, uint64_t n, uint64_t cd_size, uint64_t cd_off,
    uint16_t comment_len);
/* Point a copied central directory record at its new local header. */
void zhdr_set_offset(uint8_t *cdrec, uint64_t loff);

#endif
