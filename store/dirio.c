/* Atomic, durable writes to the backing store (temp + fsync + rename +
 * fsync dir). Temp names start with a dot so no folder ever lists them. */
#include "store/dirio.h"
#include "common/err.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/rand.h>

static int
sys_err(const char *what, const char *name)
{
	int e = errno;
	err_set("%s %s: %s", what, name, strerror(e));
	return hsmfs_errno_err(e);
}

int
store_dir(int parent_fd, const char *sub)
{
	int fd;
	if (mkdirat(parent_fd, sub, 0700) < 0 && errno != EEXIST)
		return sys_err("mkdir", sub);
	if ((fd = openat(parent_fd, sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
		return sys_err("open", sub);
	return fd;
}

int
store_tmp_create(int dirfd, struct store_tmp *t)
{
	uint8_t rnd[8];
	for (int tries = 0; tries < 16; tries++) {
		if (RAND_bytes(rnd, sizeof(rnd)) != 1)
			return HSMFS_ERR_CRYPTO;
		snprintf(t->name, sizeof(t->name), ".tmp.%02x%02x%02x%02x%02x%02x%02x%02x",
		    rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
		t->fd = openat(dirfd, t->name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (t->fd >= 0) {
			t->dirfd = dirfd;
			return 0;
		}
		if (errno != EEXIST)
			return sys_err("create", t->name);
	}
	err_set("cannot create a temporary file");
	return HSMFS_ERR_IO;
}

int
store_write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return sys_err("write", "store file");
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int
store_fsync_dir(int dirfd)
{
	if (fsync(dirfd) < 0)
		return sys_err("fsync", "directory");
	return 0;
}

int
store_tmp_commit(struct store_tmp *t, const char *name)
{
	int r;
	if (fsync(t->fd) < 0) {
		r = sys_err("fsync", name);
		store_tmp_abort(t);
		return r;
	}
	if (close(t->fd) < 0) {
		t->fd = -1;
		r = sys_err("close", name);
		store_tmp_abort(t);
		return r;
	}
	t->fd = -1;
	if (renameat(t->dirfd, t->name, t->dirfd, name) < 0) {
		r = sys_err("rename", name);
		store_tmp_abort(t);
		return r;
	}
	return store_fsync_dir(t->dirfd);
}

void
store_tmp_abort(struct store_tmp *t)
{
	if (t->fd >= 0)
		close(t->fd);
	t->fd = -1;
	unlinkat(t->dirfd, t->name, 0);
}

int
store_write_atomic(int dirfd, const char *name, const void *data, size_t len)
{
	struct store_tmp t;
	int r;
	if ((r = store_tmp_create(dirfd, &t)) != 0)
		return r;
	if ((r = store_write_all(t.fd, data, len)) != 0) {
		store_tmp_abort(&t);
		return r;
	}
	return store_tmp_commit(&t, name);
}

void
store_cleanup_tmp(int dirfd)
{
	int fd = dup(dirfd);
	DIR *d;
	struct dirent *de;
	if (fd < 0 || (d = fdopendir(fd)) == NULL) {
		if (fd >= 0)
			close(fd);
		return;
	}
	rewinddir(d);
	while ((de = readdir(d)) != NULL)
		if (strncmp(de->d_name, ".tmp.", 5) == 0)
			unlinkat(dirfd, de->d_name, 0);
	closedir(d);
}

int
store_read_file(int dirfd, const char *name, size_t max, char **out, size_t *len)
{
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	struct stat st;
	char *buf;
	size_t n = 0;
	if (fd < 0)
		return sys_err("open", name);
	if (fstat(fd, &st) < 0) {
		int r = sys_err("stat", name);
		close(fd);
		return r;
	}
	if ((size_t)st.st_size > max) {
		close(fd);
		err_set("%s: larger than %zu bytes", name, max);
		return HSMFS_ERR_TOOBIG;
	}
	if ((buf = malloc((size_t)st.st_size + 1)) == NULL) {
		close(fd);
		return HSMFS_ERR_NOMEM;
	}
	while (n < (size_t)st.st_size) {
		ssize_t got = read(fd, buf + n, (size_t)st.st_size - n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			int r = got < 0 ? sys_err("read", name) : HSMFS_ERR_IO;
			free(buf);
			close(fd);
			return r;
		}
		n += (size_t)got;
	}
	close(fd);
	buf[n] = '\0';
	*out = buf;
	if (len)
		*len = n;
	return 0;
}
