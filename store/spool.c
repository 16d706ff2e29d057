/* Write spools of the zip folders, the store side: temp file per open
 * handle in the folder's store directory, running SHA-256, committed by
 * rename, copy-on-write after commit, the list of names in flight. The
 * FUSE handles on top are in fs/zipfh.c. */
#include "store/spool.h"
#include "store/dirio.h"
#include "common/err.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Feed everything readable at fd (pread from 0, 1 MiB at a time) to fn;
 * stops at fn's first non-zero return. 0 or -errno. */
static int
each_chunk(int fd, int (*fn)(void *arg, const char *buf, size_t n), void *arg)
{
	char *buf = malloc(1 << 20);
	off_t off = 0;
	int r = 0;
	if (buf == NULL)
		return -ENOMEM;
	for (;;) {
		ssize_t n = pread(fd, buf, 1 << 20, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			break;
		}
		if (n == 0 || (r = fn(arg, buf, (size_t)n)) != 0)
			break;
		off += n;
	}
	free(buf);
	return r;
}

static int
write_chunk(void *arg, const char *buf, size_t n)
{
	return util_write_all(*(int *)arg, buf, n) != 0 ? -EIO : 0;
}

static int
copy_fd(int from, int to)
{
	return each_chunk(from, write_chunk, &to);
}

static int
new_tmp(struct spool *s, int from_fd)
{
	struct store_tmp t;
	int r = store_tmp_create(s->dirfd, &t);
	if (r != 0)
		return -hsmfs_err_errno(r);
	if (from_fd >= 0 && (r = copy_fd(from_fd, t.fd)) != 0) {
		store_tmp_abort(&t);
		return r;
	}
	if (s->fd >= 0)
		close(s->fd);
	s->fd = t.fd;
	snprintf(s->tmp, sizeof(s->tmp), "%s", t.name);
	/* The running hash only covers content written from offset 0. */
	s->hash_broken = from_fd >= 0;
	s->hashed = 0;
	EVP_DigestInit_ex(s->hash, EVP_sha256(), NULL);
	return 0;
}

int
spool_open(struct spool_list *l, int dirfd, const char *name, int from_fd,
    struct spool **out)
{
	struct spool *s = calloc(1, sizeof(*s));
	int r;
	if (s == NULL || (s->hash = EVP_MD_CTX_new()) == NULL) {
		free(s);
		return -ENOMEM;
	}
	pthread_mutex_init(&s->lock, NULL);
	snprintf(s->name, sizeof(s->name), "%s", name);
	s->dirfd = dirfd;
	s->fd = -1;
	s->writable = 1;
	/* A new or truncated file is content to act on even if never written;
	 * reopening an existing one (touch, O_APPEND with nothing appended)
	 * is not. */
	s->dirty = from_fd < 0;
	if ((r = new_tmp(s, from_fd)) != 0) {
		EVP_MD_CTX_free(s->hash);
		free(s);
		return r;
	}
	s->list = l;
	pthread_mutex_lock(&l->lock);
	s->next = l->head;
	l->head = s;
	pthread_mutex_unlock(&l->lock);
	*out = s;
	return 0;
}

/* After a commit the fd is the live file: never modify it in place. */
static int
cow(struct spool *s)
{
	int r, old;
	if (s->tmp[0] != '\0')
		return 0;
	old = s->fd;
	s->fd = -1;
	r = new_tmp(s, old);
	close(old);
	return r;
}

int
spool_write(struct spool *s, const char *buf, size_t size, off_t off)
{
	int r;
	if ((r = cow(s)) != 0)
		return s->write_err = r;
	if ((r = util_pwrite_all(s->fd, buf, size, off)) != 0) {
		s->dirty = 1;
		return s->write_err = -hsmfs_err_errno(r);
	}
	if (!s->hash_broken && (uint64_t)off == s->hashed) {
		EVP_DigestUpdate(s->hash, buf, size);
		s->hashed += size;
	} else {
		s->hash_broken = 1;
	}
	s->dirty = 1;
	return (int)size;
}

int
spool_truncate(struct spool *s, off_t size)
{
	int r;
	if ((r = cow(s)) != 0)
		return s->write_err = r;
	if (ftruncate(s->fd, size) < 0) {
		s->dirty = 1;
		return s->write_err = -errno;
	}
	if (size == 0) {
		s->write_err = 0;
		EVP_DigestInit_ex(s->hash, EVP_sha256(), NULL);
		s->hashed = 0;
		s->hash_broken = 0;
	} else if ((uint64_t)size != s->hashed) {
		s->hash_broken = 1;
	}
	s->dirty = 1;
	return 0;
}

int
spool_sha256(struct spool *s, uint8_t out[32])
{
	struct stat st;
	if (fstat(s->fd, &st) < 0)
		return -errno;
	if (!s->hash_broken && (uint64_t)st.st_size == s->hashed) {
		EVP_MD_CTX *c = EVP_MD_CTX_new();
		if (c == NULL || EVP_MD_CTX_copy_ex(c, s->hash) != 1 ||
		    EVP_DigestFinal_ex(c, out, NULL) != 1) {
			EVP_MD_CTX_free(c);
			return -EIO;
		}
		EVP_MD_CTX_free(c);
		return 0;
	}
	return spool_hash_fd(s->fd, out);
}

static int
hash_chunk(void *arg, const char *buf, size_t n)
{
	return EVP_DigestUpdate(arg, buf, n) == 1 ? 0 : -EIO;
}

int
spool_hash_fd(int fd, uint8_t out[32])
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	int r = -ENOMEM;
	if (c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
	    (r = each_chunk(fd, hash_chunk, c)) == 0 &&
	    EVP_DigestFinal_ex(c, out, NULL) != 1)
		r = -EIO;
	EVP_MD_CTX_free(c);
	return r;
}

int
spool_commit(struct spool *s, int dstdir, const char *name)
{
	if (s->tmp[0] == '\0')
		return 0;
	if (fsync(s->fd) < 0)
		return -errno;
	if (renameat(s->dirfd, s->tmp, dstdir, name) < 0)
		return -errno;
	s->tmp[0] = '\0';
	if (fsync(dstdir) < 0)
		return -errno;
	return 0;
}

void
spool_close(struct spool *s)
{
	struct spool **pp;
	if (s == NULL)
		return;
	pthread_mutex_lock(&s->list->lock);
	for (pp = &s->list->head; *pp; pp = &(*pp)->next)
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	pthread_mutex_unlock(&s->list->lock);
	if (s->fd >= 0)
		close(s->fd);
	if (s->tmp[0] != '\0')
		unlinkat(s->dirfd, s->tmp, 0);
	EVP_MD_CTX_free(s->hash);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

int
spool_lookup(struct spool_list *l, const char *name, off_t *size)
{
	int found = 0;
	pthread_mutex_lock(&l->lock);
	for (struct spool *s = l->head; s; s = s->next) {
		struct stat st;
		if (strcmp(s->name, name) != 0 || s->tmp[0] == '\0')
			continue;
		found = 1;
		*size = fstat(s->fd, &st) == 0 ? st.st_size : 0;
		break;
	}
	pthread_mutex_unlock(&l->lock);
	return found;
}

void
spool_rename(struct spool_list *l, const char *from, const char *to)
{
	pthread_mutex_lock(&l->lock);
	for (struct spool *s = l->head; s; s = s->next)
		if (strcmp(s->name, from) == 0)
			snprintf(s->name, sizeof(s->name), "%s", to);
	pthread_mutex_unlock(&l->lock);
}
