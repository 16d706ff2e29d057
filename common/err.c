/* Error code names and the per-thread failure detail. */
#include "common/err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <openssl/err.h>

static __thread char detail[1024];

const char *
hsmfs_strerror(int r)
{
	switch (r) {
	case HSMFS_OK: return "success";
	case HSMFS_ERR_NOMEM: return "out of memory";
	case HSMFS_ERR_INVALID: return "invalid input";
	case HSMFS_ERR_BADMSG: return "verification failed";
	case HSMFS_ERR_HSM: return "HSM failure";
	case HSMFS_ERR_PIN_INCORRECT: return "PIN incorrect";
	case HSMFS_ERR_PIN_LOCKED: return "PIN locked";
	case HSMFS_ERR_NOTFOUND: return "not found";
	case HSMFS_ERR_CONFIG: return "configuration error";
	case HSMFS_ERR_IO: return "I/O error";
	case HSMFS_ERR_NOSPC: return "no space left on device";
	case HSMFS_ERR_UNSUPPORTED: return "not configured";
	case HSMFS_ERR_CRYPTO: return "cryptographic library failure";
	case HSMFS_ERR_PERM: return "operation not permitted";
	case HSMFS_ERR_TOOBIG: return "too large";
	}
	return "unknown error";
}

int
hsmfs_err_errno(int r)
{
	switch (r) {
	case HSMFS_OK: return 0;
	case HSMFS_ERR_NOMEM: return ENOMEM;
	case HSMFS_ERR_INVALID: return EINVAL;
	case HSMFS_ERR_BADMSG: return EBADMSG;
	case HSMFS_ERR_NOTFOUND: return ENOENT;
	case HSMFS_ERR_NOSPC: return ENOSPC;
	case HSMFS_ERR_UNSUPPORTED: return EOPNOTSUPP;
	case HSMFS_ERR_PERM: return EPERM;
	case HSMFS_ERR_TOOBIG: return EFBIG;
	}
	if (r < 0 && r > -1000)
		return -r;
	return EIO;
}

int
hsmfs_errno_err(int e)
{
	switch (e) {
	case 0: return HSMFS_OK;
	case ENOMEM: return HSMFS_ERR_NOMEM;
	case ENOSPC: case EDQUOT: return HSMFS_ERR_NOSPC;
	case ENOENT: return HSMFS_ERR_NOTFOUND;
	case EINVAL: return HSMFS_ERR_INVALID;
	case EFBIG: return HSMFS_ERR_TOOBIG;
	case EPERM: case EACCES: return HSMFS_ERR_PERM;
	default: return HSMFS_ERR_IO;
	}
}

void
err_set(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
}

void
err_prefix(const char *fmt, ...)
{
	char old[sizeof(detail)];
	size_t n;
	va_list ap;
	memcpy(old, detail, sizeof(old));
	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	n = strlen(detail);
	if (n < sizeof(detail) - 1)
		memcpy(detail + n, old, strnlen(old, sizeof(detail) - 1 - n) + 1);
	detail[sizeof(detail) - 1] = '\0';
}

void
err_clear(void)
{
	detail[0] = '\0';
}

const char *
err_detail(void)
{
	return detail[0] ? detail : "no detail";
}

void
err_set_ossl(const char *fmt, ...)
{
	va_list ap;
	size_t n;
	unsigned long e;
	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	n = strlen(detail);
	/* The last (innermost) reason is the useful one. */
	while ((e = ERR_get_error()) != 0) {
		char buf[256];
		ERR_error_string_n(e, buf, sizeof(buf));
		if (n + 3 < sizeof(detail))
			n += snprintf(detail + n, sizeof(detail) - n, ": %s", buf);
	}
}
