/* Names, whole-file reads, write-all, directory walks, encodings and the secure heap wrapper. */
#include "common/util.h"
#include "common/err.h"
#include "common/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

int
util_name_valid(const char *name)
{
	size_t n = 0;
	if (name == NULL || name[0] == '\0' || name[0] == '.')
		return 0;
	for (const char *p = name; *p; p++, n++) {
		char c = *p;
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		    (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
			return 0;
		if (n >= 255)
			return 0;
	}
	return 1;
}

/* errno of the failed call as an hsmfs_err, with "what name: text". */
static int
sys_fail(const char *what, const char *name)
{
	int e = errno;
	err_set("%s %s: %s", what, name, strerror(e));
	return hsmfs_errno_err(e);
}

int
util_read_file_at(int dirfd, const char *name, size_t max, char **out,
    size_t *len)
{
	int fd, r = HSMFS_ERR_IO;
	char *buf = NULL;
	size_t n = 0, cap = max < 4096 ? max + 1 : 4096;
	ssize_t got;

	if ((fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC)) < 0)
		return sys_fail("open", name);
	if ((buf = malloc(cap + 1)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	for (;;) {
		if (n == cap) {
			char *nb;
			if (n > max) {
				err_set("%s: larger than %zu bytes", name, max);
				r = HSMFS_ERR_TOOBIG;
				goto out;
			}
			cap = cap > max / 2 ? max + 1 : cap * 2;
			if ((nb = realloc(buf, cap + 1)) == NULL) {
				r = HSMFS_ERR_NOMEM;
				goto out;
			}
			buf = nb;
		}
		got = read(fd, buf + n, cap - n);
		if (got < 0) {
			if (errno == EINTR)
				continue;
			r = sys_fail("read", name);
			goto out;
		}
		if (got == 0)
			break;
		n += (size_t)got;
	}
	if (n > max) {
		err_set("%s: larger than %zu bytes", name, max);
		r = HSMFS_ERR_TOOBIG;
		goto out;
	}
	buf[n] = '\0';
	*out = buf;
	buf = NULL;
	if (len)
		*len = n;
	r = 0;
out:
	free(buf);
	close(fd);
	return r;
}

int
util_read_file(const char *path, size_t max, char **out, size_t *len)
{
	return util_read_file_at(AT_FDCWD, path, max, out, len);
}

/* The one write loop: pwrite at off, or write at the file offset when
 * off < 0; EINTR and short writes retried. */
static int
write_loop(int fd, const void *buf, size_t len, off_t off)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = off < 0 ? write(fd, p, len) : pwrite(fd, p, len, off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return sys_fail("write", "file");
		}
		if (n == 0) {
			err_set("write file: no progress");
			return HSMFS_ERR_IO;
		}
		p += n;
		len -= (size_t)n;
		if (off >= 0)
			off += n;
	}
	return 0;
}

int
util_write_all(int fd, const void *buf, size_t len)
{
	return write_loop(fd, buf, len, -1);
}

int
util_pwrite_all(int fd, const void *buf, size_t len, off_t off)
{
	if (off < 0) {
		err_set("write file: negative offset");
		return HSMFS_ERR_INVALID;
	}
	return write_loop(fd, buf, len, off);
}

int
util_pwritev_all(int fd, struct iovec *iov, int n, off_t off)
{
	if (off < 0) {
		err_set("write file: negative offset");
		return HSMFS_ERR_INVALID;
	}
	while (n > 0 && iov->iov_len == 0) {
		iov++;
		n--;
	}
	while (n > 0) {
		ssize_t w = pwritev(fd, iov, n, off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return sys_fail("write", "file");
		}
		if (w == 0) {
			err_set("write file: no progress");
			return HSMFS_ERR_IO;
		}
		off += w;
		while (n > 0 && (size_t)w >= iov->iov_len) {
			w -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (char *)iov->iov_base + w;
			iov->iov_len -= (size_t)w;
		}
	}
	return 0;
}

void
util_close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

int
util_foreach_dir(int dirfd, util_dir_fn fn, void *arg)
{
	int fd = dup(dirfd), r = 0;
	struct dirent *de;
	DIR *d;

	if (fd < 0 || (d = fdopendir(fd)) == NULL) {
		r = sys_fail("list", "directory");
		if (fd >= 0)
			close(fd);
		return r;
	}
	/* The dup shares the offset of dirfd: start from the top. */
	rewinddir(d);
	errno = 0;
	while (r == 0 && (de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		r = fn(dirfd, de->d_name, arg);
		errno = 0;
	}
	if (r == 0 && errno != 0)
		r = sys_fail("list", "directory");
	closedir(d);
	return r;
}

void
util_iso_utc(long long t, char *buf, size_t size)
{
	time_t tt = (time_t)t;
	struct tm tm;
	gmtime_r(&tt, &tm);
	strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

void
util_hex(const uint8_t *in, size_t len, char *out)
{
	static const char d[] = "0123456789abcdef";
	for (size_t i = 0; i < len; i++) {
		out[2 * i] = d[in[i] >> 4];
		out[2 * i + 1] = d[in[i] & 15];
	}
	out[2 * len] = '\0';
}

char *
util_b64_encode(const uint8_t *in, size_t len)
{
	char *out = malloc(4 * ((len + 2) / 3) + 1);
	if (out == NULL)
		return NULL;
	EVP_EncodeBlock((unsigned char *)out, in, (int)len);
	return out;
}

int
util_b64_decode(const char *in, size_t inlen, uint8_t **out, size_t *outlen)
{
	uint8_t *buf;
	int n;
	size_t pad = 0;

	if (inlen % 4 != 0 || inlen > (size_t)1 << 30)
		return HSMFS_ERR_INVALID;
	for (size_t i = 0; i < inlen; i++) {
		char c = in[i];
		int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		    (c >= '0' && c <= '9') || c == '+' || c == '/';
		if (c == '=' && i >= inlen - 2) {
			pad++;
			continue;
		}
		if (!ok || pad)
			return HSMFS_ERR_INVALID;
	}
	if ((buf = malloc(inlen / 4 * 3 + 1)) == NULL)
		return HSMFS_ERR_NOMEM;
	n = EVP_DecodeBlock(buf, (const unsigned char *)in, (int)inlen);
	if (n < 0 || (size_t)n < pad) {
		free(buf);
		return HSMFS_ERR_INVALID;
	}
	*out = buf;
	*outlen = (size_t)n - pad;
	return 0;
}

static int secure_heap;
static unsigned long fallbacks;         /* __atomic: any thread allocates */
static int fallback_warned;

int
secmem_init(size_t heap_size)
{
	if (CRYPTO_secure_malloc_initialized()) {
		secure_heap = 1;
		return 0;
	}
	if (CRYPTO_secure_malloc_init(heap_size, 32) == 1) {
		secure_heap = 1;
		return 0;
	}
	log_warn("secure heap (%zu bytes of locked memory) unavailable; "
	    "secrets use ordinary memory (raise RLIMIT_MEMLOCK)", heap_size);
	return HSMFS_ERR_NOMEM;
}

int
secmem_harden(size_t heap_size)
{
	int r = 0;
	if (prctl(PR_SET_DUMPABLE, 0) != 0) {
		log_warn("cannot make the process non-dumpable: %s", strerror(errno));
		r = HSMFS_ERR_IO;
	}
	if (secmem_init(heap_size) != 0)
		r = HSMFS_ERR_NOMEM;
	return r;
}

void *
secmem_alloc(size_t n)
{
	if (n == 0)
		n = 1;
	if (secure_heap) {
		void *p = OPENSSL_secure_zalloc(n);
		if (p != NULL)
			return p;
		/* Heap exhausted: ordinary memory, still wiped on free; said
		 * once in the log and counted (.status secmem.fallbacks). */
		__atomic_add_fetch(&fallbacks, 1, __ATOMIC_RELAXED);
		if (!__atomic_exchange_n(&fallback_warned, 1, __ATOMIC_RELAXED))
			log_warn("secure heap exhausted (%zu bytes in use): secrets "
			    "now also go to ordinary memory (still wiped on free; "
			    "counted in secmem.fallbacks)",
			    CRYPTO_secure_used());
	}
	return OPENSSL_zalloc(n);
}

unsigned long
secmem_fallbacks(void)
{
	return __atomic_load_n(&fallbacks, __ATOMIC_RELAXED);
}

void *
secmem_realloc(void *p, size_t oldn, size_t newn)
{
	void *np = secmem_alloc(newn);
	if (np == NULL)
		return NULL;
	if (p != NULL) {
		memcpy(np, p, oldn < newn ? oldn : newn);
		secmem_free(p, oldn);
	}
	return np;
}

void
secmem_free(void *p, size_t n)
{
	if (p == NULL)
		return;
	if (secure_heap && CRYPTO_secure_allocated(p)) {
		OPENSSL_secure_clear_free(p, n);
		return;
	}
	OPENSSL_clear_free(p, n);
}
