/* store/mailq.h: one handle, one backend (store/mailq_backend.h): the
 * PostgreSQL queue shared by a cluster (store/mailq_pg.c) when the store
 * configuration names a database, else the directory under STORE
 * (store/mailq_dir.c). Every call passes straight through. */
#include "store/mailq.h"
#include "store/mailq_backend.h"
#include "common/err.h"

#include <stdlib.h>

struct mailq {
	struct mailq_dir *dir;    /* exactly one of the two */
	struct mailq_pg *pg;
};

struct mailq_reader {
	struct mailq_dir_reader *dir;
	struct mailq_pg_reader *pg;
};

#define PASS(q, fn, ...) \
	((q)->pg ? mailq_pg_##fn((q)->pg, __VA_ARGS__) : \
	    mailq_dir_##fn((q)->dir, __VA_ARGS__))

int
mailq_open(const struct store_conf *conf, struct mailq **out, size_t *nqueued,
    long long *oldest)
{
	struct mailq *q = calloc(1, sizeof(*q));
	int r;

	*out = NULL;
	if (q == NULL)
		return HSMFS_ERR_NOMEM;
	r = conf->pg ? mailq_pg_open(conf, &q->pg, nqueued, oldest) :
	    mailq_dir_open(conf, &q->dir, nqueued, oldest);
	if (r != 0) {
		free(q);
		return r;
	}
	*out = q;
	return 0;
}

void
mailq_close(struct mailq *q)
{
	if (q == NULL)
		return;
	if (q->pg)
		mailq_pg_close(q->pg);
	else
		mailq_dir_close(q->dir);
	free(q);
}

int
mailq_enqueue(struct mailq *q, const char *name, const struct mailq_hdr *h,
    const void *msg, const void *sig, long long first_delay)
{
	return PASS(q, enqueue, name, h, msg, sig, first_delay);
}

int
mailq_stage(struct mailq *q, const char *name, const struct mailq_hdr *h,
    const void *msg, const void *sig)
{
	return PASS(q, stage, name, h, msg, sig);
}

int
mailq_publish(struct mailq *q, const char *tmp, const char *name,
    long long first_delay, struct mailq_hdr *h)
{
	return PASS(q, publish, tmp, name, first_delay, h);
}

int
mailq_requeue(struct mailq *q, const char *name)
{
	return PASS(q, requeue, name);
}

int
mailq_lease(struct mailq *q, long long now, long long lease_s,
    struct mailq_item *out, long long *soonest)
{
	return PASS(q, lease, now, lease_s, out, soonest);
}

int
mailq_set_signed(struct mailq *q, const char *name, const struct mailq_hdr *h,
    const void *msg, const void *sig)
{
	return PASS(q, set_signed, name, h, msg, sig);
}

int
mailq_complete(struct mailq *q, const char *name)
{
	return PASS(q, complete, name);
}

int
mailq_sync(struct mailq *q)
{
	return q->pg ? mailq_pg_sync(q->pg) : mailq_dir_sync(q->dir);
}

int
mailq_fail(struct mailq *q, const char *name, const char *reason)
{
	return PASS(q, fail, name, reason);
}

int
mailq_defer(struct mailq *q, const char *name, long long next,
    const char *reason)
{
	return PASS(q, defer, name, next, reason);
}

int
mailq_find(struct mailq *q, const char *name, struct mailq_item *out)
{
	return PASS(q, find, name, out);
}

int
mailq_exists(struct mailq *q, enum mailq_box box, const char *name)
{
	return PASS(q, exists, box, name);
}

void
mailq_summary(struct mailq *q, size_t *nqueued, long long *oldest,
    long long *next, size_t *nfailed)
{
	PASS(q, summary, nqueued, oldest, next, nfailed);
}

int
mailq_list(struct mailq *q, enum mailq_box box,
    void (*cb)(void *arg, const char *name), void *arg)
{
	return PASS(q, list, box, cb, arg);
}

int
mailq_read(struct mailq *q, enum mailq_box box, const char *name,
    struct mailq_entry *e)
{
	return PASS(q, read, box, name, e);
}

int
mailq_reader_open(struct mailq *q, enum mailq_box box, const char *name,
    enum mailq_part part, struct mailq_reader **rp, size_t *len,
    long long *mtime)
{
	struct mailq_reader *r = calloc(1, sizeof(*r));
	int e;

	*rp = NULL;
	if (r == NULL)
		return HSMFS_ERR_NOMEM;
	e = q->pg ? mailq_pg_reader_open(q->pg, box, name, part, &r->pg, len,
	    mtime) : mailq_dir_reader_open(q->dir, box, name, part, &r->dir,
	    len, mtime);
	if (e != 0) {
		free(r);
		return e;
	}
	*rp = r;
	return 0;
}

ssize_t
mailq_reader_pread(struct mailq_reader *r, void *buf, size_t size, size_t off)
{
	return r->pg ? mailq_pg_reader_pread(r->pg, buf, size, off) :
	    mailq_dir_reader_pread(r->dir, buf, size, off);
}

void
mailq_reader_close(struct mailq_reader *r)
{
	if (r == NULL)
		return;
	if (r->pg)
		mailq_pg_reader_close(r->pg);
	else
		mailq_dir_reader_close(r->dir);
	free(r);
}

int
mailq_remove(struct mailq *q, enum mailq_box box, const char *name)
{
	return PASS(q, remove, box, name);
}
