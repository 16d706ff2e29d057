/* Open file handles of the zip folders (/sign-out, /verify-in): a write
 * spool of store/spool.c or a plain read fd, and the folder operations on
 * them (fs/zipfh.h). */
#include "fs/zipfh.h"
#include "common/err.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int
spool_fh_writer(struct spool_list *l, int spooldir, int dirfd, const char *name,
    int trunc, struct spool_fh **out)
{
	int from = -1, r;
	if (!trunc && (from = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0 &&
	    errno != ENOENT)
		return -errno;
	r = spool_fh_writer_from(l, spooldir, name, from, out);
	if (from >= 0)
		close(from);
	return r;
}

int
spool_fh_writer_from(struct spool_list *l, int spooldir, const char *name,
    int from_fd, struct spool_fh **out)
{
	struct spool_fh *h;
	int r;
	if ((h = calloc(1, sizeof(*h))) == NULL)
		return -ENOMEM;
	h->fd = -1;
	if ((r = spool_open(l, spooldir, name, from_fd, &h->s)) != 0) {
		free(h);
		return r;
	}
	*out = h;
	return 0;
}

int
spool_fh_reader(int fd, struct spool_fh **out)
{
	struct spool_fh *h = calloc(1, sizeof(*h));
	if (h == NULL) {
		close(fd);
		return -ENOMEM;
	}
	h->fd = fd;
	*out = h;
	return 0;
}

static struct spool_fh *
fh_of(struct fuse_file_info *fi)
{
	return fi ? (struct spool_fh *)(uintptr_t)fi->fh : NULL;
}

int
spool_op_read(const char *path, char *buf, size_t size, off_t off,
    struct fuse_file_info *fi)
{
	struct spool_fh *h = fh_of(fi);
	struct spool *s = h->s;
	ssize_t n;
	if (s)
		pthread_mutex_lock(&s->lock);
	do
		n = pread(s ? s->fd : h->fd, buf, size, off);
	while (n < 0 && errno == EINTR);
	if (s)
		pthread_mutex_unlock(&s->lock);
	return n < 0 ? -errno : (int)n;
}

int
spool_op_write(const char *path, const char *buf, size_t size, off_t off,
    struct fuse_file_info *fi)
{
	struct spool_fh *h = fh_of(fi);
	int r;
	if (h->s == NULL)
		return -EBADF;
	pthread_mutex_lock(&h->s->lock);
	r = spool_write(h->s, buf, size, off);
	pthread_mutex_unlock(&h->s->lock);
	return r;
}

int
spool_op_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	struct spool_fh *h = fh_of(fi);
	int r;
	if (h == NULL || h->s == NULL)
		return -EPERM;
	pthread_mutex_lock(&h->s->lock);
	r = spool_truncate(h->s, size);
	pthread_mutex_unlock(&h->s->lock);
	return r;
}

int
spool_op_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	return 0;
}

int
spool_op_release(const char *path, struct fuse_file_info *fi)
{
	struct spool_fh *h = fh_of(fi);
	if (h == NULL)
		return 0;
	if (h->s)
		spool_close(h->s);
	if (h->fd >= 0)
		close(h->fd);
	free(h);
	return 0;
}
