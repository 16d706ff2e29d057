/* Per-open write spools for the zip folders (/sign-out, /verify-in): the
 * bytes of one open file handle go to a temp file in the folder's store
 * directory, hashed as they arrive, and are acted on at flush. Also the
 * list of names being written, so getattr can answer for them. Store
 * side only (no FUSE): the handles are in fs/zipfh.h. */
#ifndef HSMFS_STORE_SPOOL_H
#define HSMFS_STORE_SPOOL_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>
#include <openssl/evp.h>

struct spool_list;

struct spool {
	pthread_mutex_t lock;      /* serialises write/flush/release of the handle */
	struct spool_list *list;
	struct spool *next;        /* in list, under list->lock */
	char name[256];
	int writable;
	int dirfd;                 /* where the temp lives (borrowed) */
	int fd;                    /* read/write fd of the temp, -1 when none */
	char tmp[64];              /* temp name in dirfd, "" once renamed away */
	int dirty;                 /* content changed since the last flush */
	int last_err;              /* -errno of the last flush (0: ok) */
	int write_err;             /* -errno of a failed write or truncate
	                              since the content was last emptied:
	                              the bytes are not what the writer sent,
	                              so a flush must not publish them */
	/* Running SHA-256 of the content while it grows sequentially. */
	EVP_MD_CTX *hash;
	uint64_t hashed;
	int hash_broken;
	void *priv;                /* folder data (e.g. read fd) */
};

struct spool_list {
	pthread_mutex_t lock;
	struct spool *head;
};

/* A handle writing `name`; starts empty (trunc) or as a copy of the bytes
 * of from_fd (-1: empty). Returns 0 or -errno. */
int spool_open(struct spool_list *l, int dirfd, const char *name, int from_fd,
    struct spool **out);
int spool_write(struct spool *s, const char *buf, size_t size, off_t off);
int spool_truncate(struct spool *s, off_t size);
/* SHA-256 of the whole content (from the running hash when writes were
 * sequential, else by reading the temp back). */
int spool_sha256(struct spool *s, uint8_t out[32]);
/* SHA-256 of everything readable at fd (pread from 0). 0 or -errno. */
int spool_hash_fd(int fd, uint8_t out[32]);
/* fsync the temp and rename it onto dstdir/name, fsync dstdir. After this
 * the handle's fd refers to the committed file; a later write first copies
 * it to a fresh temp. Returns 0 or -errno. */
int spool_commit(struct spool *s, int dstdir, const char *name);
/* Remove the temp (if still there) and free. */
void spool_close(struct spool *s);
/* Size of a name being written (1) or 0 when nobody writes it. */
int spool_lookup(struct spool_list *l, const char *name, off_t *size);
/* Rename in-flight handles when the name is renamed. */
void spool_rename(struct spool_list *l, const char *from, const char *to);

#endif
