/* Error codes shared by every layer, and a per-thread detail string.
 * Library code returns one of these (negative) and never exits; the layer
 * that set the code also sets a human detail with err_set(), which the
 * caller that logs (fs/ or tool/) prints once, with its own context. */
#ifndef HSMFS_COMMON_ERR_H
#define HSMFS_COMMON_ERR_H

#include <stddef.h>

enum hsmfs_err {
	HSMFS_OK = 0,
	HSMFS_ERR_NOMEM = -1,
	HSMFS_ERR_INVALID = -2,      /* bad input from the user: EINVAL */
	HSMFS_ERR_BADMSG = -3,       /* failed verification/authentication: EBADMSG */
	HSMFS_ERR_HSM = -4,          /* token or module failure: EIO */
	HSMFS_ERR_PIN_INCORRECT = -5,
	HSMFS_ERR_PIN_LOCKED = -6,
	HSMFS_ERR_NOTFOUND = -7,     /* key, certificate, slot, file missing */
	HSMFS_ERR_CONFIG = -8,
	HSMFS_ERR_IO = -9,           /* system call failed: detail has errno text */
	HSMFS_ERR_NOSPC = -10,
	HSMFS_ERR_UNSUPPORTED = -11, /* feature not configured: EOPNOTSUPP */
	HSMFS_ERR_CRYPTO = -12,      /* OpenSSL failure not caused by input */
	HSMFS_ERR_PERM = -13,        /* operation not allowed: EPERM */
	HSMFS_ERR_TOOBIG = -14,      /* EFBIG */
};

/* Static name of a code, e.g. "verification failed". */
const char *hsmfs_strerror(int r);
/* errno for a code (positive), for FUSE replies. */
int hsmfs_err_errno(int r);
/* Code for an errno value (ENOSPC -> HSMFS_ERR_NOSPC, ...). */
int hsmfs_errno_err(int e);

/* Per-thread detail of the last failure. err_set() replaces it,
 * err_prefix() prepends context ("jar: " ...). Never put secrets here. */
void err_set(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void err_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void err_clear(void);
const char *err_detail(void);
/* err_set() with the OpenSSL error queue appended (and the queue cleared). */
void err_set_ossl(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
