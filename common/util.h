/* Small helpers every layer needs: names, whole-file reads and writes,
 * one directory walk, hex/base64
 * through OpenSSL, and secure (locked, wiped) buffers for secrets. */
#ifndef HSMFS_COMMON_UTIL_H
#define HSMFS_COMMON_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* docs/contract.md §1: 1..255 chars of [A-Za-z0-9._-], not starting with a dot. */
int util_name_valid(const char *name);

/* Read a whole (small) file of at most max bytes; *out is NUL-terminated,
 * caller frees. Returns 0 or a negative hsmfs_err with err_set()
 * (HSMFS_ERR_NOTFOUND when missing, HSMFS_ERR_TOOBIG over max). The
 * _at form opens name relative to dirfd (AT_FDCWD: the working dir). */
int util_read_file(const char *path, size_t max, char **out, size_t *len);
int util_read_file_at(int dirfd, const char *name, size_t max, char **out,
    size_t *len);

/* Write all of buf (at the file offset, or at off for the p form),
 * retrying EINTR and short writes. 0 or a negative hsmfs_err
 * (HSMFS_ERR_NOSPC for a full disk) with err_set(). */
int util_write_all(int fd, const void *buf, size_t len);
int util_pwrite_all(int fd, const void *buf, size_t len, off_t off);
/* The same for n buffers written one after the other from off (pwritev);
 * iov is consumed (its entries are changed). */
struct iovec;
int util_pwritev_all(int fd, struct iovec *iov, int n, off_t off);

/* Call fn(dirfd, name, arg) for every entry of the directory open at
 * dirfd but "." and "..", from its start; dirfd stays open. fn returns 0
 * to go on; anything else stops the walk and is returned. Returns 0,
 * fn's value, or a negative hsmfs_err when the directory cannot be read. */
/* close(*fd) when open, then *fd = -1: safe to repeat. */
void util_close_fd(int *fd);

typedef int (*util_dir_fn)(int dirfd, const char *name, void *arg);
int util_foreach_dir(int dirfd, util_dir_fn fn, void *arg);

/* ISO 8601 UTC ("2026-12-05T21:22:14Z") of unix seconds t into buf. */
void util_iso_utc(long long t, char *buf, size_t size);

/* Hex (lowercase) of len bytes into out (2*len+1 bytes). */
void util_hex(const uint8_t *in, size_t len, char *out);

/* Base64 without newlines (OpenSSL EVP_EncodeBlock). Caller frees. */
char *util_b64_encode(const uint8_t *in, size_t len);
/* Strict base64 decode (no whitespace, correct padding). Caller frees.
 * Returns 0 or HSMFS_ERR_INVALID. */
int util_b64_decode(const char *in, size_t inlen, uint8_t **out, size_t *outlen);

/* Secure memory for plaintext secrets: OpenSSL's secure heap (mlocked,
 * guard pages, excluded from core dumps) once secmem_init() succeeded,
 * plain heap otherwise (with a warning at init). Always wiped on free. */
int secmem_init(size_t heap_size);
/* For any process that holds PINs or plaintext: PR_SET_DUMPABLE 0 (no core
 * dump, no ptrace or /proc/PID/mem by the same user), then secmem_init().
 * Call it after any fork that precedes the secrets (locks are not
 * inherited) and before the first PIN is read. 0, or an error already
 * logged as a warning (the process goes on, less protected). */
int secmem_harden(size_t heap_size);
/* When the secure heap is full, secmem_alloc falls back to ordinary
 * memory: warned once in the log, and counted here. */
unsigned long secmem_fallbacks(void);
void *secmem_alloc(size_t n);
void *secmem_realloc(void *p, size_t oldn, size_t newn);
void secmem_free(void *p, size_t n);

#endif
