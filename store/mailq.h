/* The mail queue area of the store (docs/mail.md): queued entries with
 * their schedules, sent/ and failed/ with the reasons, and a staging box
 * for writers' temporaries (node-local). An entry is the message as
 * written plus its signed wire form (empty while signing is still to be
 * done), with the Date and Message-ID fixed at queueing time.
 *
 * Every call is the unit of durability: when it returns 0 its change is
 * stored (mailq_complete excepted, see there). Callers never see how:
 * the directory backend (store/mailq_dir.c) renames files under
 * STORE/mail/ and keeps an in-memory index with in-process leases; the
 * shared backend (store/mailq_pg.c) keeps rows and claims with SELECT
 * ... FOR UPDATE SKIP LOCKED and lease columns (store/mailq.c picks). Returns 0 or a negative HSMFS_ERR_* (detail
 * in err_detail()). Thread-safe: one internal lock, never held across a
 * caller's code except a listing callback. */
#ifndef HSMFS_STORE_MAILQ_H
#define HSMFS_STORE_MAILQ_H

#include "store/store.h"

#include <stddef.h>
#include <sys/types.h>

#define MAILQ_NAME_MAX 256
#define MAILQ_REASON_MAX 384

struct mailq;

enum mailq_box {
	MAILQ_QUEUED,         /* waiting or being delivered */
	MAILQ_SENT,           /* delivered */
	MAILQ_FAILED,         /* given up; has a reason */
	MAILQ_STAGED,         /* a writer's temporary, checked and signed */
};

/* The fixed part of an entry, written once at queueing time. */
struct mailq_hdr {
	long long queued;     /* when it was written */
	long long date;       /* Date used when the message had none */
	char msgid[256];      /* Message-ID used when the message had none */
	size_t msglen, siglen;
};

/* The schedule of a queued message. */
struct mailq_sched {
	long long queued;     /* start of the max-age clock */
	long long next;       /* next attempt */
	unsigned attempts;
	char last[MAILQ_REASON_MAX];  /* last reply or local reason */
};

/* A queued entry as the index knows it. */
struct mailq_item {
	char name[MAILQ_NAME_MAX];
	struct mailq_sched st;
	size_t msglen;
	int leased;           /* being delivered */
};

/* A whole entry: msg is the message as written, sig the signed form. */
struct mailq_entry {
	struct mailq_hdr h;
	char *buf;
	const char *msg, *sig;
};
void mailq_entry_free(struct mailq_entry *e);

/* Open the area (creating it) and recover: remove leftovers of a crash,
 * orphan schedules and reasons, move an entry that does not parse to
 * failed/ ("queue entry damaged (not sent)"), index the queue. *nqueued
 * and *oldest (queueing time; now when empty) describe what was found.
 * conf->pg != NULL: the cluster's queue in PostgreSQL (store/mailq_pg.c;
 * staged entries stay under STORE), where recovery is the lease expiry;
 * else the directory under STORE (store/mailq_dir.c), which refuses
 * conf->shared without conf->pg (HSMFS_ERR_UNSUPPORTED). */
int mailq_open(const struct store_conf *conf, struct mailq **out,
    size_t *nqueued, long long *oldest);
void mailq_close(struct mailq *q);

/* Queue a new entry under name, first attempt at h->queued+first_delay.
 * HSMFS_ERR_PERM when the name is queued already. A stale schedule of an
 * older entry of that name is dropped. sig may be NULL (h->siglen 0). */
int mailq_enqueue(struct mailq *q, const char *name,
    const struct mailq_hdr *h, const void *msg, const void *sig,
    long long first_delay);
/* Keep an entry as a staged temporary (replaces one of that name);
 * h == NULL stages an empty one, which mailq_publish refuses. */
int mailq_stage(struct mailq *q, const char *name,
    const struct mailq_hdr *h, const void *msg, const void *sig);
/* Staged tmp -> queued name (first attempt at now+first_delay), once:
 * HSMFS_ERR_PERM when name is taken, HSMFS_ERR_INVALID when the staged
 * entry is empty, HSMFS_ERR_NOTFOUND when it is gone. *h gets its header. */
int mailq_publish(struct mailq *q, const char *tmp, const char *name,
    long long first_delay, struct mailq_hdr *h);
/* failed/name -> queued again: same bytes and Message-ID, a fresh
 * schedule (due now, attempts 0) and max-age clock; the reason goes. */
int mailq_requeue(struct mailq *q, const char *name);

/* Claim the due (next <= now), unleased entry with the earliest next
 * time (then the oldest) for lease_s seconds; its attempts count goes up
 * by one. HSMFS_ERR_NOTFOUND when none is due; *soonest (may be NULL)
 * gets the earliest next time of any unleased entry, or -1. A lease ends
 * with mailq_complete, mailq_fail or mailq_defer. The shared backend
 * uses the database's clock for now and the lease (the same for every
 * node), and sets *soonest at most a few seconds ahead (other nodes
 * queue too; after HSMFS_ERR_IO: when to retry). */
int mailq_lease(struct mailq *q, long long now, long long lease_s,
    struct mailq_item *out, long long *soonest);
/* Re-sign an entry queued unsigned: its signed form is stored; Date and
 * Message-ID stay. */
int mailq_set_signed(struct mailq *q, const char *name,
    const struct mailq_hdr *h, const void *msg, const void *sig);
/* Delivered: queued -> sent. At-least-once: the directory backend makes
 * completions durable in batches, at mailq_sync (a crash before only
 * re-sends, same Message-ID); the shared backend commits each call and
 * keeps for its next sync or lease only a completion the database missed
 * (while the lease runs: not sent twice). */
int mailq_complete(struct mailq *q, const char *name);
int mailq_sync(struct mailq *q);
/* Permanent failure: queued -> failed with "UTC-TIME reason", attempts,
 * queued and message-id lines as its reason. */
int mailq_fail(struct mailq *q, const char *name, const char *reason);
/* Temporary failure: next attempt at next, last reply reason. */
int mailq_defer(struct mailq *q, const char *name, long long next,
    const char *reason);

/* Views. mailq_find: the index entry of a queued name (1, *out filled
 * when out != NULL) or 0. mailq_exists: 1 when box holds name. */
int mailq_find(struct mailq *q, const char *name, struct mailq_item *out);
int mailq_exists(struct mailq *q, enum mailq_box box, const char *name);
/* Queue summary: count, oldest queueing time and earliest next attempt
 * (-1 when empty); *nfailed the number of failed entries. */
void mailq_summary(struct mailq *q, size_t *nqueued, long long *oldest,
    long long *next, size_t *nfailed);
/* Names in a box (MAILQ_QUEUED from the index, in no order). */
int mailq_list(struct mailq *q, enum mailq_box box,
    void (*cb)(void *arg, const char *name), void *arg);
/* Read an entry whole (queued, sent, failed). */
int mailq_read(struct mailq *q, enum mailq_box box, const char *name,
    struct mailq_entry *e);

/* What a view shows of an entry: the message as written (queued, failed,
 * staged), the signed form (sent), or a failed entry's reason. */
enum mailq_part { MAILQ_PART_MSG, MAILQ_PART_SIGNED, MAILQ_PART_REASON };
struct mailq_reader;
/* Open a stable snapshot of a part (it keeps its bytes when the entry
 * moves on); *len and *mtime describe it. A staged empty entry is 0
 * bytes. HSMFS_ERR_NOTFOUND when it is not there. */
int mailq_reader_open(struct mailq *q, enum mailq_box box, const char *name,
    enum mailq_part part, struct mailq_reader **r, size_t *len,
    long long *mtime);
ssize_t mailq_reader_pread(struct mailq_reader *r, void *buf, size_t size,
    size_t off);
void mailq_reader_close(struct mailq_reader *r);

/* Remove a sent entry, a failed entry with its reason, or a staged one. */
int mailq_remove(struct mailq *q, enum mailq_box box, const char *name);

#endif
