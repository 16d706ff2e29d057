/* Internals of /history shared by its three files:
 *   fs/history.c         FUSE operations, views, object table, status
 *   fs/history_commit.c  the group committer (batches, sign pool, frames,
 *                        index publish, cut-back, compaction)
 *   fs/history_start.c   start, recovery and verification, keys, reload
 * Not a public interface: nothing outside fs/history*.c includes it. */
#ifndef HSMFS_FS_HISTORY_INT_H
#define HSMFS_FS_HISTORY_INT_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

#include "fs/fs.h"
#include "crypto/tlog.h"
#include "store/history.h"

#define JOURNAL ".journal"
#define XATTR_VERIFY "user.hsmfs.verify"
/* A record is kept in memory up to this size, then spooled to an
 * unlinked temp file in the store (plaintext history is not secret). */
#define SPOOL_AFTER (1u << 20)
#define SIGN_THREADS 8

/* One committed record, for reads and the journal. */
struct hrec {
	off_t payload_off;
	uint64_t payload_len;
	uint64_t content_off;     /* offset of the payload in the object's content */
	uint64_t time_us;
	uint32_t uid;
	uint8_t leaf_hash[TLOG_HASH_LEN];
};

/* Where the frames written for an object end: its tree, record count,
 * file and content length and the time of its last record. */
struct hstate {
	struct tlog_tree tree;
	uint64_t nrec;
	off_t file_len;
	uint64_t content_len;
	uint64_t last_time;
};

/* An object. Committed state (nrec .. cp_text) changes only when a batch
 * is published, under H.lock; everyone else copies what they need under
 * H.lock. Objects are never freed while mounted (names are permanent). */
struct hobj {
	struct hobj *next;
	char *name;
	struct hstore_obj *so;    /* its frames in the store, NULL until the first record */
	char *bad;                /* why it fails verification (NULL: good) */
	uint64_t nrec;
	off_t file_len;           /* bytes of the nrec frames */
	uint64_t content_len;
	struct hrec *recs;
	size_t cap;
	struct tlog_tree tree;
	char *cp_text;            /* newest signed checkpoint */
	size_t cp_len;
	int signer;               /* index in H.vkeys of cp_text's signer */
	/* The newest checkpoint known from the index or the anchor (rollback). */
	uint64_t known_size;
	uint8_t known_root[TLOG_HASH_LEN];
	/* File state the last verification (or our own commit) vouched for. */
	struct stat stamp;
	int stamp_ok;
	int opens;                /* write handles: a new object is visible */
	/* End of the frames written so far: ahead of the committed state
	 * while a batch is on its way to the index, equal to it otherwise
	 * (changed by the framing thread, under H.lock). */
	struct hstate pend;
};

struct hreq {
	struct hreq *next;
	struct hobj *o;
	uint8_t *buf;             /* payload in memory, or */
	struct hstore_spool *spool;  /* or spooled (non-NULL) */
	uint64_t len;
	uint32_t uid;
	int done, result;
	pthread_cond_t cv;        /* signalled under H.lock when done */
};

#define NBUCKETS 1024

struct history_state {
	int configured;
	struct hstore *hs;                /* the history area of the store */
	int shared;                       /* other nodes append too (store/history.h) */
	pthread_mutex_t shared_mu;        /* shared: one batch or reload of an
	                                     object's state at a time */
	hsm_key *signer;                  /* newest ObjectHistorySigner */
	EVP_PKEY **vkeys;                 /* every configured version */
	X509 **vcerts;
	size_t nvkeys;
	char *global_bad;                 /* index or anchor unreadable */

	pthread_mutex_t lock;
	pthread_cond_t queue_cv, slot_cv, idle_cv;
	struct hreq *queue, **queue_tail;
	pthread_t committer, finisher;
	int running, stopping, finisher_up, finisher_quit;
	struct batch *slot;               /* handed to the finisher */
	int framing;                      /* a batch is being framed and signed */
	int index_busy;                   /* a batch is in its index stage */
	int broken;                       /* a batch failed at the index:
	                                     cut back before the next one */
	int broken_err;
	off_t compact_at;                 /* rewrite the index past this size */
	struct hobj *buckets[NBUCKETS];
	uint64_t nobjects;
	/* stats */
	uint64_t batches, records, signatures, max_batch, pipelined;
	uint64_t catchups;                /* shared: reloads after other nodes' records */
	double ack_ms;                    /* sum of enqueue-to-answer times */
	uint64_t nacks;
	time_t last_commit;         /* wall time of the last batch with a record */
};

extern struct history_state H;

/* fs/history.c: the object table (H.lock held for *_locked) */
struct hobj *obj_find_locked(const char *name);
struct hobj *obj_get_locked(const char *name);
void obj_pend_reset_locked(struct hobj *o);
int obj_visible_locked(const struct hobj *o);
void obj_set_bad_locked(struct hobj *o, const char *why);
int recs_push(struct hrec **recs, size_t *cap, uint64_t n, const struct hrec *r);
void origin_of(const char *name, char *out, size_t outlen);

/* fs/history_start.c */
int obj_verify(struct hobj *o, int recover);
int obj_check(struct hobj *o);
int obj_refresh_held(struct hobj *o);
int obj_sync_shared(const char *name);
int history_start(void);
void history_stop(void);
int history_reload_prepare(const struct engine *e, struct keyring *kr,
    void **next);
void history_reload_finish(void *next, int commit);

/* fs/history_commit.c */
int commit_record(struct hobj *o, uint8_t *buf, struct hstore_spool *spool,
    uint64_t len, uint32_t uid);
int history_commit_start(void);
void history_commit_stop(void);

#endif
