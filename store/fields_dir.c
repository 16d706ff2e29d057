/* Field files in STORE/fields/: atomic replacement and the per-name lock
 * that keeps the daemon and an online rekey-fields from losing each
 * other's updates (a rekey reads, rewraps and renames under the lock; the
 * daemon's rename of a new value takes the same lock). */
#include "store/fields_dir.h"
#include "store/dirio.h"
#include "common/err.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

static off_t
name_slot(const char *name)
{
	uint32_t h = 2166136261u;   /* FNV-1a */
	for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
		h ^= *p;
		h *= 16777619u;
	}
	return (off_t)(h & 0x7fffffff);
}

int
fieldstore_lock(int dirfd, const char *name)
{
	struct flock fl;
	int fd = openat(dirfd, FIELDSTORE_LOCK, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		int e = errno;
		err_set("open %s: %s", FIELDSTORE_LOCK, strerror(e));
		return hsmfs_errno_err(e);
	}
	memset(&fl, 0, sizeof(fl));
	fl.l_type = F_WRLCK;
	fl.l_whence = SEEK_SET;
	fl.l_start = name_slot(name);
	fl.l_len = 1;
	while (fcntl(fd, F_OFD_SETLKW, &fl) < 0) {
		int e = errno;
		if (e == EINTR)
			continue;
		close(fd);
		err_set("lock %s: %s", FIELDSTORE_LOCK, strerror(e));
		return HSMFS_ERR_IO;
	}
	return fd;
}

int
fieldstore_lock2(int dirfd, const char *a, const char *b, int *h1, int *h2)
{
	off_t sa = name_slot(a), sb = name_slot(b);
	int r;
	*h1 = *h2 = -1;
	if (sa == sb) {
		if ((r = fieldstore_lock(dirfd, a)) < 0)
			return r;
		*h1 = r;
		return 0;
	}
	if ((r = fieldstore_lock(dirfd, sa < sb ? a : b)) < 0)
		return r;
	*h1 = r;
	if ((r = fieldstore_lock(dirfd, sa < sb ? b : a)) < 0) {
		fieldstore_unlock(*h1);
		*h1 = -1;
		return r;
	}
	*h2 = r;
	return 0;
}

void
fieldstore_unlock(int handle)
{
	if (handle >= 0)
		close(handle);   /* releases the OFD lock */
}

int
fieldstore_write_tmp(int dirfd, const char *text, size_t len,
    struct store_tmp *t)
{
	int r;
	if ((r = store_tmp_create(dirfd, t)) != 0)
		return r;
	if ((r = store_write_all(t->fd, text, len)) != 0 ||
	    (r = store_write_all(t->fd, "\n", 1)) != 0 ||
	    (fsync(t->fd) < 0 && (r = hsmfs_errno_err(errno)) != 0)) {
		store_tmp_abort(t);
		return r;
	}
	return 0;
}

int
fieldstore_replace_locked(int dirfd, const char *name, const char *text,
    size_t len)
{
	struct store_tmp t;
	int r;
	if ((r = fieldstore_write_tmp(dirfd, text, len, &t)) != 0)
		return r;
	return store_tmp_commit(&t, name);
}

int
fieldstore_read(int dirfd, const char *name, char **text, size_t *len)
{
	return store_read_file(dirfd, name, FIELDSTORE_TEXT_MAX, text, len);
}
