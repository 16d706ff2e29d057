/* The directory backend of the fields area (store/fields.h): one file
 * per field in STORE/fields/, named like the field, holding its envelope
 * line; a put writes a temp file (".tmp.*"), fsyncs it and renames it
 * into place, then fsyncs the directory. ".lock" carries the per-name
 * locks (OFD byte-range locks at a hash of the name, so every thread
 * and process gets its own and unrelated names rarely wait on each
 * other) and, by flock, the maintenance lock of rekey-fields. */
#include "store/fields.h"
#include "store/store.h"
#include "store/dirio.h"
#include "common/err.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIELDS_DIR "fields"
#define LOCK_FILE ".lock"

struct dir_store {
	struct fields_store base;
	int dirfd;
	int own;       /* close dirfd at close */
	int maintfd;   /* flock of the maintenance lock, or -1 */
};

struct fields_lock {
	int h[2];
};

static int
dirfd_of(struct fields_store *fs)
{
	return ((struct dir_store *)fs)->dirfd;
}

static int
sys_err(const char *what, const char *name)
{
	int e = errno;
	err_set("%s %s: %s", what, name, strerror(e));
	return hsmfs_errno_err(e);
}

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

static int
lock_one(int dirfd, off_t slot)
{
	struct flock fl;
	int fd = openat(dirfd, LOCK_FILE, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return sys_err("open", LOCK_FILE);
	memset(&fl, 0, sizeof(fl));
	fl.l_type = F_WRLCK;
	fl.l_whence = SEEK_SET;
	fl.l_start = slot;
	fl.l_len = 1;
	while (fcntl(fd, F_OFD_SETLKW, &fl) < 0) {
		int e = errno;
		if (e == EINTR)
			continue;
		close(fd);
		err_set("lock %s: %s", LOCK_FILE, strerror(e));
		return HSMFS_ERR_IO;
	}
	return fd;
}

static void
dir_unlock(struct fields_store *fs, struct fields_lock *lk)
{
	(void)fs;
	if (lk == NULL)
		return;
	for (int i = 0; i < 2; i++)
		if (lk->h[i] >= 0)
			close(lk->h[i]);   /* releases the OFD lock */
	free(lk);
}

static int
dir_lock(struct fields_store *fs, const char *a, const char *b,
    struct fields_lock **out)
{
	struct fields_lock *lk = malloc(sizeof(*lk));
	off_t sa = name_slot(a), sb = b ? name_slot(b) : sa;
	int r;

	*out = NULL;
	if (lk == NULL)
		return HSMFS_ERR_NOMEM;
	lk->h[0] = lk->h[1] = -1;
	if ((r = lock_one(dirfd_of(fs), sa < sb ? sa : sb)) < 0)
		goto fail;
	lk->h[0] = r;
	if (sa != sb && (r = lock_one(dirfd_of(fs), sa < sb ? sb : sa)) < 0)
		goto fail;
	if (sa != sb)
		lk->h[1] = r;
	*out = lk;
	return 0;
fail:
	dir_unlock(fs, lk);
	return r;
}

static int
dir_get(struct fields_store *fs, const char *name, char **text, size_t *len)
{
	return util_read_file_at(dirfd_of(fs), name, FIELDS_TEXT_MAX, text, len);
}

static int
dir_stat(struct fields_store *fs, const char *name, struct fields_meta *m,
    char *head, size_t headlen)
{
	struct stat st;
	ssize_t n;
	int fd;

	memset(m, 0, sizeof(*m));
	if (fstatat(dirfd_of(fs), name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return sys_err("stat", name);
	if (!S_ISREG(st.st_mode)) {
		err_set("%s: not a field", name);
		return HSMFS_ERR_NOTFOUND;
	}
	m->size = (size_t)st.st_size;
	m->mtime = st.st_mtime;
	if (head == NULL || headlen == 0)
		return 0;
	if ((fd = openat(dirfd_of(fs), name, O_RDONLY | O_CLOEXEC)) < 0)
		return sys_err("open", name);
	n = pread(fd, head, headlen, 0);
	close(fd);
	if (n < 0)
		return sys_err("read", name);
	m->head_len = (size_t)n;
	return 0;
}

static int
dir_put(struct fields_store *fs, const char *name, const char *text,
    size_t len, unsigned flags)
{
	struct store_tmp t;
	int r;

	if ((flags & FIELDS_NOREPLACE) &&
	    faccessat(dirfd_of(fs), name, F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
		err_set("%s: exists", name);
		return -EEXIST;
	}
	if ((r = store_tmp_create(dirfd_of(fs), &t)) != 0)
		return r;
	if ((r = util_write_all(t.fd, text, len)) != 0 ||
	    (r = util_write_all(t.fd, "\n", 1)) != 0) {
		store_tmp_abort(&t);
		return r;
	}
	return store_tmp_commit(&t, name);   /* fsync, rename, fsync dir */
}

static int
dir_remove(struct fields_store *fs, const char *name)
{
	if (unlinkat(dirfd_of(fs), name, 0) < 0)
		return sys_err("unlink", name);
	return store_fsync_dir(dirfd_of(fs));
}

static int
dir_rename(struct fields_store *fs, const char *from, const char *to,
    unsigned flags)
{
	unsigned rf = (flags & FIELDS_NOREPLACE ? RENAME_NOREPLACE : 0) |
	    (flags & FIELDS_EXCHANGE ? RENAME_EXCHANGE : 0);

	if (renameat2(dirfd_of(fs), from, dirfd_of(fs), to, rf) < 0) {
		if (errno == EEXIST || errno == ENOTEMPTY) {
			err_set("%s: exists", to);
			return -EEXIST;
		}
		return sys_err("rename", from);
	}
	return store_fsync_dir(dirfd_of(fs));
}

static int
dir_cas(struct fields_store *fs, const char *name, const char *old,
    size_t oldlen, const char *text, size_t len)
{
	struct fields_lock *lk;
	char *cur = NULL;
	size_t cl = 0;
	int r;

	if ((r = dir_lock(fs, name, NULL, &lk)) != 0)
		return r;
	if ((r = dir_get(fs, name, &cur, &cl)) == 0) {
		if (cl != oldlen || memcmp(cur, old, cl) != 0)
			r = 1;
		else
			r = dir_put(fs, name, text, len, 0);
	}
	dir_unlock(fs, lk);
	free(cur);
	return r;
}

struct list_arg {
	fields_name_cb cb;
	void *arg;
};

static int
list_one(int dirfd, const char *name, void *arg)
{
	struct list_arg *la = arg;
	(void)dirfd;
	return util_name_valid(name) ? la->cb(la->arg, name) : 0;
}

static int
dir_list(struct fields_store *fs, fields_name_cb cb, void *arg)
{
	struct list_arg la = { cb, arg };
	return util_foreach_dir(dirfd_of(fs), list_one, &la);
}

static int
dir_maint_lock(struct fields_store *fs)
{
	struct dir_store *ds = (struct dir_store *)fs;
	int fd;

	if (ds->maintfd >= 0)
		return 0;
	/* flock is independent of the per-name OFD locks on the same file. */
	if ((fd = openat(ds->dirfd, LOCK_FILE, O_RDWR | O_CREAT | O_CLOEXEC,
	    0600)) < 0)
		return sys_err("open", LOCK_FILE);
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int r = errno == EWOULDBLOCK ? 1 : sys_err("flock", LOCK_FILE);
		close(fd);
		return r;
	}
	ds->maintfd = fd;
	return 0;
}

/* Temp files of a put that a crash interrupted are invisible and hold
 * only envelopes. */
static int
recover_one(int dirfd, const char *name, void *arg)
{
	time_t before = *(time_t *)arg;
	struct stat st;

	if (strncmp(name, ".tmp.", 5) == 0 &&
	    fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    st.st_mtime < before)
		unlinkat(dirfd, name, 0);
	return 0;
}

static void
dir_recover(struct fields_store *fs, long min_age)
{
	time_t before = time(NULL) - min_age;
	if (min_age <= 0)
		store_cleanup_tmp(dirfd_of(fs));
	else
		util_foreach_dir(dirfd_of(fs), recover_one, &before);
}

static void
dir_close(struct fields_store *fs)
{
	struct dir_store *ds = (struct dir_store *)fs;
	if (ds->maintfd >= 0)
		close(ds->maintfd);
	if (ds->own && ds->dirfd >= 0)
		close(ds->dirfd);
	free(ds);
}

static const struct fields_store_ops dir_ops = {
	.close = dir_close,
	.get = dir_get,
	.stat = dir_stat,
	.lock = dir_lock,
	.unlock = dir_unlock,
	.put = dir_put,
	.remove = dir_remove,
	.rename = dir_rename,
	.cas = dir_cas,
	.list = dir_list,
	.maint_lock = dir_maint_lock,
	.recover = dir_recover,
};

static int
dir_new(int dirfd, int own, struct fields_store **out)
{
	struct dir_store *ds = calloc(1, sizeof(*ds));
	if (ds == NULL) {
		if (own)
			close(dirfd);
		return HSMFS_ERR_NOMEM;
	}
	ds->base.ops = &dir_ops;
	ds->dirfd = dirfd;
	ds->own = own;
	ds->maintfd = -1;
	*out = &ds->base;
	return 0;
}

int
fields_store_node_dir(const struct store_conf *c)
{
	return store_dir(c->dirfd, FIELDS_DIR);
}

int
fields_store_open_dir(int dirfd, struct fields_store **out)
{
	return dir_new(dirfd, 0, out);
}

int
fields_store_open(const struct store_conf *c, struct fields_store **out)
{
	int fd;

	*out = NULL;
	if (c->pg != NULL)
		return fields_store_open_pg(c, out);
	if (c->shared != NULL) {
		err_set("fields: a shared store is not supported yet");
		return HSMFS_ERR_UNSUPPORTED;
	}
	if ((fd = store_dir(c->dirfd, FIELDS_DIR)) < 0)
		return fd;
	return dir_new(fd, 1, out);
}
