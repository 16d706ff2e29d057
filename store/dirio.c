/* Atomic, durable writes to the backing store (temp + fsync + rename +
 * fsync dir). Temp names start with a dot so no folder ever lists them. */
#include "store/dirio.h"
#include "common/err.h"
#include "common/util.h"

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
	return util_write_all(fd, buf, len);
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
	if ((r = util_write_all(t.fd, data, len)) != 0) {
		store_tmp_abort(&t);
		return r;
	}
	return store_tmp_commit(&t, name);
}

static int
unlink_tmp(int dirfd, const char *name, void *arg)
{
	(void)arg;
	if (strncmp(name, ".tmp.", 5) == 0)
		unlinkat(dirfd, name, 0);
	return 0;
}

void
store_cleanup_tmp(int dirfd)
{
	(void)util_foreach_dir(dirfd, unlink_tmp, NULL);
}

int
store_read_file(int dirfd, const char *name, size_t max, char **out, size_t *len)
{
	return util_read_file_at(dirfd, name, max, out, len);
}
