/* Error codes shared by every layer, and a per-thread detail string.
 * Library code returns one of these (negative) and never exits; the layer
 * that set the code also sets a human detail with err_set(), which the
 * caller that logs (fs/ or tool/) prints once, with its own context. */
#ifndef HSMFS_COMMON_ERR_H
#define HSMFS_COMMON_ERR_H

#include <stddef.h>

enum hsmfs_err {
	HSMFS_OK = 0,
	HSMFS_ERR_NOMEM = -1001,
	HSMFS_ERR_INVALID = -1002,      /* bad input from the user: EINVAL */
	HSMFS_ERR_BADMSG = -1003,       /* failed verification/authentication: EBADMSG */
	HSMFS_ERR_HSM = -1004,          /* token or module failure: EIO */
	HSMFS_ERR_PIN_INCORRECT = -1005,
	HSMFS_ERR_PIN_LOCKED = -1006,
	HSMFS_ERR_NOTFOUND = -1007,     /* key, certificate, slot, file missing */
	HSMFS_ERR_CONFIG = -1008,
	HSMFS_ERR_IO = -1009,           /* system call failed: detail has errno text */
	HSMFS_ERR_NOSPC = -1010,
	HSMFS_ERR_UNSUPPORTED = -1011, /* feature not configured: EOPNOTSUPP */
	HSMFS_ERR_CRYPTO = -1012,      /* OpenSSL failure not caused by input */
	HSMFS_ERR_PERM = -1013,        /* operation not allowed: EPERM */
	HSMFS_ERR_TOOBIG = -1014,      /* EFBIG */
};

/* Static name of a code, e.g. "verification failed". */
const char *hsmfs_strerror(int r);
/* The codes lie below -1000, apart from -errno values, so a result can
 * be told apart without knowing which layer produced it. */
#define HSMFS_ERR_MIN (-1014)
#define HSMFS_ERR_MAX (-1001)
#define HSMFS_IS_ERR(r) ((r) <= HSMFS_ERR_MAX && (r) >= HSMFS_ERR_MIN)
/* errno (positive) for a code, for FUSE replies and exit messages; a
 * -errno value passes through (-EPERM -> EPERM), so the op wrappers of
 * fs/ convert whatever a lower layer returned exactly once. */
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
