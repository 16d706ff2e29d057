/* The history area's objects and batches, directory backend
 * (store/history.h): an object is STORE/history/objects/NAME.log, a
 * batch the list of objects it wrote to and where it began in each. */
#include "store/history.h"
#include "store/history_dir.h"
#include "store/history_pg.h"
#include "store/dirio.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct hstore_obj {
	int fd;
	char name[256];
	struct hpg_obj *pg;          /* shared store: the object there */
};

struct batch_obj {
	struct hstore_obj *ob;
	off_t start;                 /* its length before this batch */
};

struct hstore_batch {
	struct hstore *hs;
	struct batch_obj *o;
	size_t n, cap;
	struct hpg_batch *pg;        /* shared store: its transaction */
};

static int
obj_fail(const struct hstore_obj *ob, const char *what, int e)
{
	err_set("%s %s" HSTORE_SUFFIX ": %s", what, ob->name, strerror(e));
	return hsmfs_errno_err(e);
}

int
hstore_obj_open(struct hstore *hs, const char *name, int create,
    struct hstore_obj **out)
{
	struct hstore_obj *ob;
	char fn[300];
	int e;

	*out = NULL;
	if (strlen(name) >= sizeof(ob->name)) {
		err_set("object name too long");
		return HSMFS_ERR_INVALID;
	}
	if ((ob = calloc(1, sizeof(*ob))) == NULL)
		return HSMFS_ERR_NOMEM;
	snprintf(ob->name, sizeof(ob->name), "%s", name);
	ob->fd = -1;
	if (hs->pg != NULL) {
		if ((e = hpg_obj_open(hs->pg, name, create, &ob->pg)) != 0) {
			free(ob);
			return e;
		}
		*out = ob;
		return 0;
	}
	snprintf(fn, sizeof(fn), "%s" HSTORE_SUFFIX, name);
	ob->fd = openat(hs->objfd, fn, O_RDWR | O_CLOEXEC |
	    (create ? O_CREAT : 0), 0600);
	if (ob->fd < 0) {
		e = obj_fail(ob, "open", errno);
		free(ob);
		return e;
	}
	*out = ob;
	return 0;
}

void
hstore_obj_close(struct hstore_obj *ob)
{
	if (ob == NULL)
		return;
	util_close_fd(&ob->fd);
	hpg_obj_close(ob->pg);
	free(ob);
}

int
hstore_obj_stat(struct hstore_obj *ob, struct stat *st)
{
	if (ob->pg != NULL)
		return hpg_obj_stat(ob->pg, st);
	return fstat(ob->fd, st) < 0 ? obj_fail(ob, "stat", errno) : 0;
}

ssize_t
hstore_obj_read(struct hstore_obj *ob, void *buf, size_t len, off_t off)
{
	if (ob->pg != NULL)
		return hpg_obj_read(ob->pg, buf, len, off);
	for (;;) {
		ssize_t n = pread(ob->fd, buf, len, off);
		if (n >= 0)
			return n;
		if (errno != EINTR)
			return obj_fail(ob, "read", errno);
	}
}

int
hstore_obj_check(struct hstore_obj *ob, struct hstore_check *c)
{
	if (ob->pg != NULL)
		return hpg_obj_check(ob->pg, c);
	return hstore_check_object(ob->fd, c);
}

int
hstore_obj_newest(struct hstore_obj *ob, char **text, size_t *len)
{
	if (ob->pg == NULL) {
		err_set("history: the newest checkpoint of %s is in the index",
		    ob->name);
		return HSMFS_ERR_UNSUPPORTED;
	}
	return hpg_obj_newest(ob->pg, text, len);
}

int
hstore_obj_cut(struct hstore_obj *ob, off_t len, int durable)
{
	/* A shared object's rows are committed with their checkpoint: there
	 * is never anything unsigned to cut (its cache holds only rows). */
	if (ob->pg != NULL)
		return 0;
	if (ftruncate(ob->fd, len) < 0 || (durable && fdatasync(ob->fd) < 0))
		return obj_fail(ob, "cut", errno);
	return 0;
}

struct hstore_spool {
	int fd;
};

int
hstore_spool_open(struct hstore *hs, struct hstore_spool **out)
{
	struct hstore_spool *sp;
	struct store_tmp t;
	int r;

	*out = NULL;
	if ((sp = malloc(sizeof(*sp))) == NULL)
		return HSMFS_ERR_NOMEM;
	sp->fd = openat(hs->dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (sp->fd < 0 && errno != EOPNOTSUPP && errno != EISDIR) {
		err_set("history spool: %s", strerror(errno));
		r = hsmfs_errno_err(errno);
		free(sp);
		return r;
	}
	if (sp->fd < 0) {
		if ((r = store_tmp_create(hs->dirfd, &t)) != 0) {
			free(sp);
			return r;
		}
		unlinkat(hs->dirfd, t.name, 0);
		sp->fd = t.fd;
	}
	*out = sp;
	return 0;
}

int
hstore_spool_write(struct hstore_spool *sp, const void *buf, size_t len)
{
	return util_write_all(sp->fd, buf, len);
}

ssize_t
hstore_spool_read(struct hstore_spool *sp, void *buf, size_t len, off_t off)
{
	for (;;) {
		ssize_t n = pread(sp->fd, buf, len, off);
		if (n >= 0)
			return n;
		if (errno != EINTR) {
			int e = errno;
			err_set("read spool: %s", strerror(e));
			return hsmfs_errno_err(e);
		}
	}
}

void
hstore_spool_close(struct hstore_spool *sp)
{
	if (sp == NULL)
		return;
	util_close_fd(&sp->fd);
	free(sp);
}

int
hstore_batch_begin(struct hstore *hs, struct hstore_batch **out)
{
	int r;
	if ((*out = calloc(1, sizeof(**out))) == NULL)
		return HSMFS_ERR_NOMEM;
	(*out)->hs = hs;
	if (hs->pg != NULL && (r = hpg_batch_begin(hs->pg, &(*out)->pg)) != 0) {
		free(*out);
		*out = NULL;
		return r;
	}
	return 0;
}

int
hstore_batch_lock(struct hstore_batch *b, struct hstore_obj *const *obs,
    size_t n, uint64_t *nrec, off_t *bytes)
{
	struct hpg_obj **po;
	int r;

	if (b->pg == NULL) {
		err_set("history: only a shared store locks objects");
		return HSMFS_ERR_UNSUPPORTED;
	}
	if ((po = calloc(n ? n : 1, sizeof(*po))) == NULL)
		return HSMFS_ERR_NOMEM;
	for (size_t i = 0; i < n; i++)
		po[i] = obs[i]->pg;
	r = hpg_batch_lock(b->pg, po, n, nrec, bytes);
	free(po);
	return r;
}

int
hstore_batch_frame(struct hstore_batch *b, struct hstore_obj *ob, off_t off,
    struct iovec *iov, int n)
{
	size_t i;

	if (b->pg != NULL)
		return hpg_batch_frame(b->pg, ob->pg, off, iov, n);
	for (i = 0; i < b->n && b->o[i].ob != ob; i++)
		;
	if (i == b->n) {
		if (b->n == b->cap) {
			size_t nc = b->cap ? b->cap * 2 : 8;
			struct batch_obj *p = realloc(b->o, nc * sizeof(*p));
			if (p == NULL)
				return HSMFS_ERR_NOMEM;
			b->o = p;
			b->cap = nc;
		}
		b->o[b->n].ob = ob;
		b->o[b->n].start = off;
		b->n++;
	}
	return util_pwritev_all(ob->fd, iov, n, off);
}

int
hstore_batch_prepare(struct hstore_batch *b, struct hstore_obj *ob)
{
	int r = 0;
	/* Shared store: durable at COMMIT, nothing to do before. */
	for (size_t i = 0; i < b->n; i++) {
		if (ob != NULL && b->o[i].ob != ob)
			continue;
		if (fdatasync(b->o[i].ob->fd) < 0 && r == 0)
			r = obj_fail(b->o[i].ob, "fdatasync", errno);
	}
	return r;
}

void
hstore_batch_abort(struct hstore_batch *b, struct hstore_obj *ob)
{
	if (b->pg != NULL) {
		hpg_batch_abort(b->pg, ob ? ob->pg : NULL);
		return;
	}
	for (size_t i = 0; i < b->n; i++) {
		if (ob != NULL && b->o[i].ob != ob)
			continue;
		if (ftruncate(b->o[i].ob->fd, b->o[i].start) < 0)
			log_err("history/%s: cannot cut unacknowledged records: %s",
			    b->o[i].ob->name, strerror(errno));
	}
}

int
hstore_batch_commit(struct hstore_batch *b, const char *notes, size_t len)
{
	if (b->pg != NULL) {
		int r = hpg_batch_commit(b->pg, b->hs->prefix, notes, len);
		if (r == 0)
			hstore_anchor_append(b->hs, notes, len);
		return r;
	}
	return hstore_index_append(b->hs, notes, len);
}

void
hstore_batch_end(struct hstore_batch *b)
{
	if (b == NULL)
		return;
	hpg_batch_end(b->pg);
	free(b->o);
	free(b);
}
