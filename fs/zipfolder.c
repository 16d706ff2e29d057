/* The getattr, readdir, rename, create and listxattr logic /sign-out and
 * /verify-in share (fs/zipfolder.h). */
#include "fs/zipfolder.h"
#include "fs/fs.h"

#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int
zipfolder_dir_of(const struct zipfolder *z, const char *name)
{
	return temp_name(name) ? z->temps->dirfd : z->dirfd;
}

int
zipfolder_getattr(const struct zipfolder *z, const char *path, struct stat *st)
{
	struct stat s;
	off_t size;
	if (*path == '\0')
		return -ENOSYS;
	if (!temp_name_ok(path))
		return -ENOENT;
	if (fstatat(zipfolder_dir_of(z, path), path, &s, AT_SYMLINK_NOFOLLOW) == 0) {
		fs_stat_file(st, 0644, s.st_size, s.st_mtime);
		return 0;
	}
	if (spool_lookup(z->spools, path, &size)) {
		fs_stat_file(st, 0644, size, time(NULL));
		return 0;
	}
	/* A refused zip leaves only its reason, readable as an xattr. */
	if (z->recdir >= 0 && fstatat(z->recdir, path, &s, 0) == 0) {
		fs_stat_file(st, 0644, 0, s.st_mtime);
		return 0;
	}
	return -ENOENT;
}

struct fill_ctx {
	const struct zipfolder *z;
	void *buf;
	fuse_fill_dir_t fill;
	int records;                /* listing recdir: skip names listed */
};

static int
fill_one(int dirfd, const char *name, void *arg)
{
	struct fill_ctx *c = arg;
	(void)dirfd;
	if (!util_name_valid(name))
		return 0;
	if (c->records && faccessat(c->z->dirfd, name, F_OK,
	    AT_SYMLINK_NOFOLLOW) == 0)
		return 0;   /* listed already */
	c->fill(c->buf, name, NULL, 0, 0);
	return 0;
}

int
zipfolder_readdir(const struct zipfolder *z, const char *path, void *buf,
    fuse_fill_dir_t fill)
{
	struct fill_ctx c = { z, buf, fill, 0 };
	if (*path != '\0')
		return -ENOTDIR;
	fill(buf, ".", NULL, 0, 0);
	fill(buf, "..", NULL, 0, 0);
	temp_area_sweep(z->temps);
	if (util_foreach_dir(z->dirfd, fill_one, &c) != 0)
		return -EIO;
	c.records = 1;
	if (z->recdir >= 0 && util_foreach_dir(z->recdir, fill_one, &c) != 0)
		return -EIO;
	return 0;
}

int
zipfolder_rename_ok(const char *from, const char *to, unsigned int flags)
{
	if (!temp_name_ok(from) || !temp_name_ok(to) ||
	    (temp_name(to) && !temp_name(from)) ||
	    (flags & RENAME_EXCHANGE))
		return -EINVAL;
	return 0;
}

int
zipfolder_create_ok(const struct zipfolder *z, const char *path)
{
	if (!temp_name_ok(path))
		return -EINVAL;
	if (temp_name(path))
		temp_area_sweep(z->temps);
	return 0;
}

int
zipfolder_listxattr(const char *path, int fd, const char *xname, char *list,
    size_t size)
{
	if (!temp_name_ok(path) ||
	    faccessat(fd, path, F_OK, AT_SYMLINK_NOFOLLOW) != 0)
		return 0;
	return fs_xattr_reply(xname, strlen(xname) + 1, list, size);
}
