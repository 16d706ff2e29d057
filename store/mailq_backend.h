/* The backends behind store/mailq.h; store/mailq.c picks one per handle
 * (PostgreSQL when store_conf.pg is set, else the directory).
 *
 * A backend's source is written with mailq.h's own names and renames
 * them to its prefix by defining MAILQ_BE before including this header
 * and then store/mailq.h:
 *     #define MAILQ_BE mailq_pg
 *     #include "store/mailq_backend.h"
 *     #include "store/mailq.h"
 * so struct mailq becomes struct mailq_pg, mailq_lease mailq_pg_lease,
 * and so on (mailq_entry_free stays shared: an entry is one malloc'd
 * buffer in every backend). MAILQ_BACKEND_DECLARE below then declares
 * every backend's functions; in a backend's own source it repeats the
 * renamed mailq.h prototypes, so the compiler checks they agree. */
#ifndef HSMFS_STORE_MAILQ_BACKEND_H
#define HSMFS_STORE_MAILQ_BACKEND_H

#ifdef MAILQ_BE
#define MAILQ_BE_CAT2(a, b) a##b
#define MAILQ_BE_CAT(a, b) MAILQ_BE_CAT2(a, b)
#define mailq MAILQ_BE
#define mailq_reader MAILQ_BE_CAT(MAILQ_BE, _reader)
#define mailq_open MAILQ_BE_CAT(MAILQ_BE, _open)
#define mailq_close MAILQ_BE_CAT(MAILQ_BE, _close)
#define mailq_enqueue MAILQ_BE_CAT(MAILQ_BE, _enqueue)
#define mailq_stage MAILQ_BE_CAT(MAILQ_BE, _stage)
#define mailq_publish MAILQ_BE_CAT(MAILQ_BE, _publish)
#define mailq_requeue MAILQ_BE_CAT(MAILQ_BE, _requeue)
#define mailq_lease MAILQ_BE_CAT(MAILQ_BE, _lease)
#define mailq_set_signed MAILQ_BE_CAT(MAILQ_BE, _set_signed)
#define mailq_complete MAILQ_BE_CAT(MAILQ_BE, _complete)
#define mailq_sync MAILQ_BE_CAT(MAILQ_BE, _sync)
#define mailq_fail MAILQ_BE_CAT(MAILQ_BE, _fail)
#define mailq_defer MAILQ_BE_CAT(MAILQ_BE, _defer)
#define mailq_find MAILQ_BE_CAT(MAILQ_BE, _find)
#define mailq_exists MAILQ_BE_CAT(MAILQ_BE, _exists)
#define mailq_summary MAILQ_BE_CAT(MAILQ_BE, _summary)
#define mailq_list MAILQ_BE_CAT(MAILQ_BE, _list)
#define mailq_read MAILQ_BE_CAT(MAILQ_BE, _read)
#define mailq_reader_open MAILQ_BE_CAT(MAILQ_BE, _reader_open)
#define mailq_reader_pread MAILQ_BE_CAT(MAILQ_BE, _reader_pread)
#define mailq_reader_close MAILQ_BE_CAT(MAILQ_BE, _reader_close)
#define mailq_remove MAILQ_BE_CAT(MAILQ_BE, _remove)
#endif

#include "store/mailq.h"

/* The functions of backend P (struct P, struct P##_reader). */
#define MAILQ_BACKEND_DECLARE(P) \
	struct P; struct P##_reader; \
	int P##_open(const struct store_conf *conf, struct P **out, \
	    size_t *nqueued, long long *oldest); \
	void P##_close(struct P *q); \
	int P##_enqueue(struct P *q, const char *name, \
	    const struct mailq_hdr *h, const void *msg, const void *sig, \
	    long long first_delay); \
	int P##_stage(struct P *q, const char *name, \
	    const struct mailq_hdr *h, const void *msg, const void *sig); \
	int P##_publish(struct P *q, const char *tmp, const char *name, \
	    long long first_delay, struct mailq_hdr *h); \
	int P##_requeue(struct P *q, const char *name); \
	int P##_lease(struct P *q, long long now, long long lease_s, \
	    struct mailq_item *out, long long *soonest); \
	int P##_set_signed(struct P *q, const char *name, \
	    const struct mailq_hdr *h, const void *msg, const void *sig); \
	int P##_complete(struct P *q, const char *name); \
	int P##_sync(struct P *q); \
	int P##_fail(struct P *q, const char *name, const char *reason); \
	int P##_defer(struct P *q, const char *name, long long next, \
	    const char *reason); \
	int P##_find(struct P *q, const char *name, struct mailq_item *out); \
	int P##_exists(struct P *q, enum mailq_box box, const char *name); \
	void P##_summary(struct P *q, size_t *nqueued, long long *oldest, \
	    long long *next, size_t *nfailed); \
	int P##_list(struct P *q, enum mailq_box box, \
	    void (*cb)(void *arg, const char *name), void *arg); \
	int P##_read(struct P *q, enum mailq_box box, const char *name, \
	    struct mailq_entry *e); \
	int P##_reader_open(struct P *q, enum mailq_box box, \
	    const char *name, enum mailq_part part, struct P##_reader **r, \
	    size_t *len, long long *mtime); \
	ssize_t P##_reader_pread(struct P##_reader *r, void *buf, size_t size, \
	    size_t off); \
	void P##_reader_close(struct P##_reader *r); \
	int P##_remove(struct P *q, enum mailq_box box, const char *name);

MAILQ_BACKEND_DECLARE(mailq_dir)
MAILQ_BACKEND_DECLARE(mailq_pg)

#endif
