/* /history: the group committer. Writers queue records (commit_record);
 * a batch is framed into the object files, each touched object fdatasynced
 * while its checkpoint is signed (a pool of threads), then the batch's
 * checkpoints go to the index and the anchor and the writers are woken
 * (docs/history.md "Group commit"). */
#include "fs/history_int.h"
#include "fs/fs.h"
#include "store/history.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "crypto/tlog.h"

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>
#include <openssl/evp.h>

/* ---- the group committer ---- */

/* Per-object state of one batch. */
struct touched {
	struct hobj *o;
	struct hstate end;        /* the object's end after this batch's frames */
	struct hrec *recs;        /* the batch's new records */
	size_t nnew, cap;
	int err;                  /* frames or index failed */
	int sync_err, sign_err;   /* set by the sign pool, read after it */
	char *cp;
	size_t cp_len;
	int created;
};

struct sign_job {
	struct hstore_batch *sb;
	struct touched *t;
	size_t n;
	atomic_size_t next;
};

/* Persistent signing threads: a batch touching k objects needs k
 * signatures, made in parallel (the PKCS#11 backend pools sessions), and
 * even one signature overlaps the committer's fdatasync. The job lives
 * on the committer's stack; `active` keeps it alive while a worker
 * holds it. */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv, idle_cv;
	struct sign_job *job;
	unsigned gen;
	int active, quit, nth;
	pthread_t th[SIGN_THREADS];
} SP = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER,
	.idle_cv = PTHREAD_COND_INITIALIZER };

/* Item 2k fdatasyncs object k's file, item 2k+1 signs its new root. The
 * poster takes item 0, an fdatasync, and so leaves its CPU at once to
 * the worker woken for the signature: had it taken the signature itself
 * (CPU-bound in a software token), the scheduler often queued the woken
 * worker behind it on the same CPU and the sync started only after the
 * signature (measured: 0.6-0.7 ms late, a third slower per append). A
 * signature is published only if its object's sync succeeded too. */
static void
sign_items(struct sign_job *j)
{
	size_t i;
	while ((i = atomic_fetch_add(&j->next, 1)) < 2 * j->n) {
		struct touched *t = &j->t[i / 2];
		uint8_t root[TLOG_HASH_LEN];
		char origin[TLOG_ORIGIN_MAX];
		if (t->err)
			continue;
		if (i % 2 == 0) {
			t->sync_err = hstore_batch_prepare(j->sb, t->o->so);
			if (t->sync_err)
				fs_log_fail("history", t->o->name, NULL, "syncing records",
				    t->sync_err);
			continue;
		}
		tlog_tree_root(&t->end.tree, root);
		origin_of(t->o->name, origin, sizeof(origin));
		t->sign_err = tlog_checkpoint_sign(origin, t->end.nrec, root, &H.signer,
		    1, &t->cp, &t->cp_len);
		if (t->sign_err)
			fs_log_fail("history", t->o->name, keyring_key_name(H.signer),
			    "signing the checkpoint", t->sign_err);
	}
}

static void *
sign_thread(void *arg)
{
	unsigned seen = 0;
	pthread_mutex_lock(&SP.mu);
	for (;;) {
		struct sign_job *j;
		while (!SP.quit && (SP.job == NULL || SP.gen == seen))
			pthread_cond_wait(&SP.cv, &SP.mu);
		if (SP.quit)
			break;
		seen = SP.gen;
		j = SP.job;
		SP.active++;
		pthread_mutex_unlock(&SP.mu);
		sign_items(j);
		pthread_mutex_lock(&SP.mu);
		if (--SP.active == 0)
			pthread_cond_broadcast(&SP.idle_cv);
	}
	pthread_mutex_unlock(&SP.mu);
	return NULL;
}

static void
sign_post(struct sign_job *j)
{
	pthread_mutex_lock(&SP.mu);
	SP.job = j;
	SP.gen++;
	/* Wake one worker per item but the one the poster takes itself. */
	for (size_t k = 1; k < 2 * j->n && k <= (size_t)SP.nth; k++)
		pthread_cond_signal(&SP.cv);
	pthread_mutex_unlock(&SP.mu);
}

/* Help with what is left, then wait until no worker holds the job. */
static void
sign_finish(struct sign_job *j)
{
	sign_items(j);
	pthread_mutex_lock(&SP.mu);
	SP.job = NULL;
	while (SP.active > 0)
		pthread_cond_wait(&SP.idle_cv, &SP.mu);
	pthread_mutex_unlock(&SP.mu);
}

static uint64_t
now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* One part of a frame, at off. */
static int
frame_part(struct hstore_batch *sb, struct hobj *o, const void *p, size_t len,
    off_t off)
{
	struct iovec iov = { (void *)p, len };
	return hstore_batch_frame(sb, o->so, off, &iov, 1);
}

/* The frame of a spooled record: header, payload copied from the spool
 * in chunks (hashed on the way), hash. *off advances. */
static int
write_spooled(struct hstore_batch *sb, struct hobj *o, struct hreq *q,
    const uint8_t *hdr, size_t hlen, EVP_MD_CTX *md,
    uint8_t hash[TLOG_HASH_LEN], off_t *off)
{
	uint8_t *chunk;
	int r;
	if ((r = frame_part(sb, o, hdr, hlen, *off)) != 0)
		return r;
	*off += (off_t)hlen;
	if ((chunk = malloc(1 << 16)) == NULL)
		return HSMFS_ERR_NOMEM;
	for (uint64_t done = 0; done < q->len;) {
		ssize_t n = hstore_spool_read(q->spool, chunk, 1 << 16,
		    (off_t)done);
		if (n <= 0) {
			if (n == 0)
				err_set("read spool: short");
			r = n < 0 ? (int)n : HSMFS_ERR_IO;
			goto out;
		}
		if (EVP_DigestUpdate(md, chunk, (size_t)n) != 1) {
			r = HSMFS_ERR_CRYPTO;
			goto out;
		}
		if ((r = frame_part(sb, o, chunk, (size_t)n, *off)) != 0)
			goto out;
		*off += n;
		done += (uint64_t)n;
	}
	r = HSMFS_ERR_CRYPTO;
	if (EVP_DigestFinal_ex(md, hash, NULL) != 1)
		goto out;
	if ((r = frame_part(sb, o, hash, TLOG_HASH_LEN, *off)) != 0)
		goto out;
	*off += TLOG_HASH_LEN;
out:
	free(chunk);
	return r;
}

/* Append one frame for q at t's end. */
static int
write_frame(struct hstore_batch *sb, struct touched *t, struct hreq *q)
{
	struct tlog_record rec;
	uint8_t hdr[TLOG_FRAME_HDR + TLOG_LEAF_HDR], hash[TLOG_HASH_LEN];
	struct hrec hr;
	EVP_MD_CTX *md = NULL;
	static const uint8_t zero = 0;
	off_t off = t->end.file_len;
	int r = HSMFS_ERR_NOMEM;

	rec.seq = t->end.nrec;
	rec.time_us = now_us();
	if (rec.time_us < t->end.last_time)
		rec.time_us = t->end.last_time;  /* clock stepped back: keep order */
	rec.uid = q->uid;
	tlog_frame_header(rec.seq, (uint32_t)(TLOG_LEAF_HDR + q->len), hdr);
	tlog_leaf_header(&rec, hdr + TLOG_FRAME_HDR);
	if ((md = EVP_MD_CTX_new()) == NULL ||
	    EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(md, &zero, 1) != 1 ||
	    EVP_DigestUpdate(md, hdr + TLOG_FRAME_HDR, TLOG_LEAF_HDR) != 1)
		goto out;
	hr.payload_off = off + (off_t)sizeof(hdr);
	if (q->spool != NULL) {
		if ((r = write_spooled(sb, t->o, q, hdr, sizeof(hdr), md, hash,
		    &off)) != 0)
			goto out;
	} else {
		/* A record in memory: the whole frame in one write. */
		struct iovec iov[3] = { { hdr, sizeof(hdr) },
			{ q->buf, (size_t)q->len }, { hash, sizeof(hash) } };
		r = HSMFS_ERR_CRYPTO;
		if (EVP_DigestUpdate(md, q->buf, q->len) != 1 ||
		    EVP_DigestFinal_ex(md, hash, NULL) != 1)
			goto out;
		if ((r = hstore_batch_frame(sb, t->o->so, off, iov, 3)) != 0)
			goto out;
		off += (off_t)(sizeof(hdr) + q->len + sizeof(hash));
	}
	hr.payload_len = q->len;
	hr.content_off = t->end.content_len;
	hr.time_us = rec.time_us;
	hr.uid = rec.uid;
	memcpy(hr.leaf_hash, hash, TLOG_HASH_LEN);
	if ((r = recs_push(&t->recs, &t->cap, t->nnew, &hr)) != 0)
		goto out;
	t->nnew++;
	tlog_tree_append(&t->end.tree, hash);
	t->end.nrec++;
	t->end.file_len = off;
	t->end.content_len += q->len;
	t->end.last_time = rec.time_us;
	r = 0;
out:
	EVP_MD_CTX_free(md);
	return r;
}

/* One batch on its way: framed and signed by the committer, then
 * taken to the index and published by the finisher (or by the committer
 * itself when nothing else is waiting). */
struct batch {
	struct hstore_batch *sb;  /* its frames in the store */
	struct hreq *reqs;
	size_t nreq;
	struct touched *t;
	size_t nt;
	char *all;                /* the batch's checkpoints, in index order */
	size_t all_len;
};

static void
batch_free(struct batch *b)
{
	for (size_t i = 0; i < b->nt; i++) {
		free(b->t[i].recs);
		free(b->t[i].cp);
	}
	free(b->t);
	free(b->all);
	hstore_batch_end(b->sb);
	free(b);
}

/* Answer every request of b not answered yet with err (0: its object's
 * result) and wake its writer. H.lock held; q lives on the writer's
 * stack, so nothing of it is touched after the lock is dropped. */
static void
batch_answer_locked(struct batch *b, int err)
{
	for (struct hreq *q = b->reqs; q; q = q->next) {
		if (q->result == 0 && err != 0)
			q->result = err;
		if (q->result == 0)
			for (size_t i = 0; i < b->nt; i++)
				if (b->t[i].o == q->o)
					q->result = b->t[i].err;
		if (q->result == 0) {
			H.records++;
			H.last_commit = time(NULL);
		}
		q->done = 1;
		pthread_cond_signal(&q->cv);
	}
	H.batches++;
	if (b->nreq > H.max_batch)
		H.max_batch = b->nreq;
}

static int
touched_cmp(const void *a, const void *b)
{
	return strcmp(((const struct touched *)a)->o->name,
	    ((const struct touched *)b)->o->name);
}

/* Shared store: lock the batch's objects in name order (two nodes never
 * wait for each other in a cycle) and frame after where the database
 * says each one's records end: when another node appended since, this
 * node's state of the object is reloaded first (it holds the row lock,
 * so nothing moves meanwhile). H.shared_mu held. */
static void
lock_touched(struct hstore_batch *sb, struct touched *t, size_t nt)
{
	struct hstore_obj **obs = calloc(nt ? nt : 1, sizeof(*obs));
	uint64_t *nrec = calloc(nt ? nt : 1, sizeof(*nrec));
	off_t *end = calloc(nt ? nt : 1, sizeof(*end));
	size_t *at = calloc(nt ? nt : 1, sizeof(*at)), k = 0;
	int r = HSMFS_ERR_NOMEM;

	qsort(t, nt, sizeof(*t), touched_cmp);
	if (obs != NULL && nrec != NULL && end != NULL && at != NULL) {
		for (size_t i = 0; i < nt; i++)
			if (!t[i].err) {
				at[k] = i;
				obs[k++] = t[i].o->so;
			}
		r = hstore_batch_lock(sb, obs, k, nrec, end);
	}
	if (r != 0) {
		fs_log_fail("history", "", NULL, "locking the batch's objects", r);
		for (size_t i = 0; i < nt; i++)
			if (!t[i].err)
				t[i].err = r;
		k = 0;
	}
	for (size_t j = 0; j < k; j++) {
		struct touched *x = &t[at[j]];
		struct hobj *o = x->o;
		uint64_t n = nrec[j];
		off_t bytes = end[j];
		int stale;

		pthread_mutex_lock(&H.lock);
		stale = n != o->nrec || bytes != o->file_len;
		pthread_mutex_unlock(&H.lock);
		if (stale && (r = obj_refresh_held(o)) != 0) {
			if (r != HSMFS_ERR_BADMSG)
				fs_log_fail("history", o->name, NULL,
				    "reading other nodes' records", r);
			x->err = r;
			continue;
		}
		pthread_mutex_lock(&H.lock);
		if (o->bad) {
			x->err = HSMFS_ERR_BADMSG;
		} else if (n != o->nrec || bytes != o->file_len) {
			err_set("history/%s: the database holds %" PRIu64 " records, "
			    "this node verified %" PRIu64, o->name, n, o->nrec);
			log_err("%s", err_detail());
			x->err = HSMFS_ERR_IO;
		}
		x->end = o->pend;
		pthread_mutex_unlock(&H.lock);
	}
	free(obs);
	free(nrec);
	free(end);
	free(at);
}

/* Stage 1, in the committer: frames after everything written so far (the
 * batch before may still be on its way to the index), then each touched
 * object's new root signed while its file is fdatasynced. An object that
 * fails here is cut back to where this batch began; the written end of
 * the others moves on. */
static void
stage_frame_sign(struct batch *b)
{
	struct touched *t = NULL;
	size_t nt = 0, cap = 0;
	int r, new_dirent = 0;
	struct sign_job job;

	if ((r = hstore_batch_begin(H.hs, &b->sb)) != 0) {
		for (struct hreq *q = b->reqs; q; q = q->next) {
			b->nreq++;
			q->result = r;
		}
		return;
	}
	/* The objects first (locked in name order on a shared store), then
	 * the frames, in the order the records came. */
	for (struct hreq *q = b->reqs; q; q = q->next) {
		struct touched *x = NULL;
		b->nreq++;
		for (size_t i = 0; i < nt; i++)
			if (t[i].o == q->o)
				x = &t[i];
		if (x == NULL) {
			if (nt == cap) {
				size_t nc = cap ? cap * 2 : 8;
				struct touched *p = realloc(t, nc * sizeof(*p));
				if (p == NULL) {
					q->result = HSMFS_ERR_NOMEM;
					continue;
				}
				t = p;
				cap = nc;
			}
			x = &t[nt++];
			memset(x, 0, sizeof(*x));
			x->o = q->o;
			pthread_mutex_lock(&H.lock);
			x->end = q->o->pend;
			if (q->o->bad)
				x->err = HSMFS_ERR_BADMSG;
			pthread_mutex_unlock(&H.lock);
			if (!x->err && x->o->so == NULL) {
				struct hstore_obj *so;
				if ((r = hstore_obj_open(H.hs, x->o->name, 1, &so)) != 0) {
					x->err = r;
				} else {
					pthread_mutex_lock(&H.lock);
					x->o->so = so;
					pthread_mutex_unlock(&H.lock);
					x->created = 1;
					new_dirent = 1;
				}
			}
		}
	}
	if (H.shared)
		lock_touched(b->sb, t, nt);
	for (struct hreq *q = b->reqs; q; q = q->next) {
		struct touched *x = NULL;
		if (q->result != 0)
			continue;
		for (size_t i = 0; i < nt; i++)
			if (t[i].o == q->o)
				x = &t[i];
		if (x == NULL || x->err)
			continue;
		if ((r = write_frame(b->sb, x, q)) != 0) {
			fs_log_fail("history", x->o->name, NULL, "appending a record", r);
			x->err = r;
		}
	}
	b->t = t;
	b->nt = nt;
	if (nt == 0)
		return;
	memset(&job, 0, sizeof(job));
	job.sb = b->sb;
	job.t = t;
	job.n = nt;
	atomic_init(&job.next, 0);
	sign_post(&job);
	sign_finish(&job);
	for (size_t i = 0; i < nt; i++)
		if (!t[i].err)
			t[i].err = t[i].sync_err ? t[i].sync_err : t[i].sign_err;
	if (new_dirent && hstore_objects_sync(H.hs) != 0) {
		for (size_t i = 0; i < nt; i++)
			if (t[i].created && !t[i].err)
				t[i].err = HSMFS_ERR_IO;
	}
	for (size_t i = 0; i < nt; i++) {
		struct hobj *o = t[i].o;
		char *p;
		if (!t[i].err && t[i].cp != NULL) {
			if ((p = realloc(b->all, b->all_len + t[i].cp_len)) == NULL) {
				t[i].err = HSMFS_ERR_NOMEM;
			} else {
				b->all = p;
				memcpy(b->all + b->all_len, t[i].cp, t[i].cp_len);
				b->all_len += t[i].cp_len;
			}
		}
		if (t[i].err) {
			/* Never acknowledged: cut this batch's frames off. */
			if (o->so != NULL)
				hstore_batch_abort(b->sb, o->so);
			continue;
		}
		pthread_mutex_lock(&H.lock);
		o->pend = t[i].end;
		pthread_mutex_unlock(&H.lock);
	}
}

/* Stage 2, in the finisher (or the committer): the batch's checkpoints in
 * one append to the index, fdatasync, the anchor; then publish and wake
 * the writers. If the index cannot take them the batch fails, and
 * H.broken makes the committer cut every object back to its committed
 * state before the next batch is answered: its frames, and those of a
 * batch framed after it, are never acknowledged. */
static void
stage_index_publish(struct batch *b)
{
	struct touched *t = b->t;
	size_t nt = b->nt;
	int r = 0;

	if (b->all_len > 0) {
		/* The batch's durable unit (the anchor after it, logged). */
		if ((r = hstore_batch_commit(b->sb, b->all, b->all_len)) != 0)
			fs_log_fail("history", HSTORE_CHECKPOINTS, NULL,
			    "writing checkpoints", r);
	}
	pthread_mutex_lock(&H.lock);
	if (r != 0) {
		H.broken = 1;
		H.broken_err = r;
	}
	for (size_t i = 0; i < nt && r == 0; i++) {
		struct hobj *o = t[i].o;
		if (t[i].err)
			continue;
		for (size_t k = 0; k < t[i].nnew; k++)
			if (recs_push(&o->recs, &o->cap, o->nrec + k, &t[i].recs[k]) != 0)
				abort();   /* nothing sane left to do: state would lie */
		o->tree = t[i].end.tree;
		o->nrec = t[i].end.nrec;
		o->file_len = t[i].end.file_len;
		o->content_len = t[i].end.content_len;
		free(o->cp_text);
		o->cp_text = t[i].cp;
		o->cp_len = t[i].cp_len;
		t[i].cp = NULL;
		o->signer = 0;
		o->known_size = o->nrec;
		tlog_tree_root(&o->tree, o->known_root);
		/* Frames of the next batch may already follow: the stamp
		 * vouches for the file, reads stop at file_len. (A shared
		 * store's freshness is its row's length, asked before reads:
		 * no round trip to the database under H.lock.) */
		if (!H.shared)
			o->stamp_ok = hstore_obj_stat(o->so, &o->stamp) == 0;
		H.signatures++;
	}
	batch_answer_locked(b, r);
	pthread_mutex_unlock(&H.lock);
	batch_free(b);
}

/* A batch failed at the index: no frame after an object's committed end
 * will be acknowledged. Cut them off. H.lock held, nothing in flight. */
static void
cut_back_locked(void)
{
	for (unsigned k = 0; k < NBUCKETS; k++)
		for (struct hobj *o = H.buckets[k]; o; o = o->next) {
			if (o->pend.file_len == o->file_len && o->pend.nrec == o->nrec)
				continue;
			if (o->so != NULL && hstore_obj_cut(o->so, o->file_len, 0) != 0)
				log_err("history/%s: cannot cut unacknowledged records: %s",
				    o->name, err_detail());
			obj_pend_reset_locked(o);
		}
	H.broken = 0;
}

/* The index only needs the newest checkpoint of each object; once it has
 * grown past H.compact_at it is rewritten with just those (temp + fsync +
 * rename + fsync dir, so a crash leaves the old or the new index, both
 * complete). Runs in the committer, the index's only writer. */
static void
index_compact(void)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	int r = HSMFS_ERR_NOMEM;

	if (f != NULL) {
		pthread_mutex_lock(&H.lock);
		for (unsigned b = 0; b < NBUCKETS; b++)
			for (struct hobj *o = H.buckets[b]; o; o = o->next)
				if (o->cp_text)
					fwrite(o->cp_text, 1, o->cp_len, f);
		pthread_mutex_unlock(&H.lock);
		if (fclose(f) == 0)
			r = hstore_index_rewrite(H.hs, buf, len);
	}
	free(buf);
	if (r != 0)
		fs_log_fail("history", HSTORE_CHECKPOINTS, NULL,
		    "compacting the index", r);
}

static void
index_maybe_compact(void)
{
	if (hstore_index_size(H.hs) > H.compact_at)
		index_compact();
}

/* Frame and sign b, then take it to the index: hand it to the finisher
 * when more work is queued (the committer goes on framing the next batch
 * while this one's index fdatasync runs), else do it here. Framing is one
 * thread's at a time (H.framing) and batches reach the index in order
 * (H.index_busy); once b is framed the next batch may be framed beside
 * b's index stage. Called and returns with H.lock held. */
static void
run_batch_locked(struct batch *b, int may_hand_off)
{
	if (H.broken && !H.index_busy)
		cut_back_locked();
	H.framing = 1;
	pthread_mutex_unlock(&H.lock);
	/* H.signer is swapped by a reload: sign under the configuration read
	 * lock (taken without H.lock held; nested in a flush's own). A
	 * shared store's batch is one transaction holding its objects' rows:
	 * framed, signed and committed by this thread, under H.shared_mu, and
	 * never handed off (the next batch would frame after rows it cannot
	 * see). */
	fs_conf_rdlock();
	if (H.shared) {
		pthread_mutex_lock(&H.shared_mu);
		may_hand_off = 0;
	}
	stage_frame_sign(b);
	fs_conf_unlock();
	pthread_mutex_lock(&H.lock);
	while (H.index_busy)
		pthread_cond_wait(&H.idle_cv, &H.lock);
	if (H.broken) {
		/* The batch before failed at the index, and this one's frames
		 * follow its frames. */
		int e = H.broken_err;
		log_warn("history: %zu record(s) not committed: framed after "
		    "a batch the checkpoint index could not take", b->nreq);
		cut_back_locked();
		batch_answer_locked(b, e);
		H.framing = 0;
		pthread_cond_signal(&H.queue_cv);
		pthread_mutex_unlock(&H.lock);
		batch_free(b);
		if (H.shared)
			pthread_mutex_unlock(&H.shared_mu);
		pthread_mutex_lock(&H.lock);
		return;
	}
	H.index_busy = 1;
	H.framing = 0;
	if (H.stopping)
		pthread_cond_signal(&H.queue_cv);   /* the committer waits for us */
	if (H.queue != NULL) {
		pthread_cond_signal(&H.queue_cv);
		if (may_hand_off && H.finisher_up) {
			H.slot = b;
			H.pipelined++;
			pthread_cond_signal(&H.slot_cv);
			return;
		}
	}
	pthread_mutex_unlock(&H.lock);
	stage_index_publish(b);
	if (H.shared)
		pthread_mutex_unlock(&H.shared_mu);
	index_maybe_compact();
	pthread_mutex_lock(&H.lock);
	H.index_busy = 0;
	pthread_cond_broadcast(&H.idle_cv);
}

/* Takes everything queued as one batch: while it is signed and synced
 * the next collects, so batches grow with load. A lone writer's record
 * does not come here: its flush thread commits it (commit_record). */
static void *
committer_main(void *arg)
{
	pthread_mutex_lock(&H.lock);
	for (;;) {
		struct batch *b;
		while ((H.queue == NULL || H.framing) && !H.stopping)
			pthread_cond_wait(&H.queue_cv, &H.lock);
		while (H.framing)
			pthread_cond_wait(&H.queue_cv, &H.lock);
		if (H.queue == NULL)
			break;
		if ((b = calloc(1, sizeof(*b))) == NULL) {
			struct batch none = { .reqs = H.queue };
			err_set("out of memory");
			H.queue = NULL;
			H.queue_tail = &H.queue;
			batch_answer_locked(&none, HSMFS_ERR_NOMEM);
			continue;
		}
		b->reqs = H.queue;
		H.queue = NULL;
		H.queue_tail = &H.queue;
		run_batch_locked(b, 1);
	}
	while (H.index_busy)
		pthread_cond_wait(&H.idle_cv, &H.lock);
	if (H.broken)
		cut_back_locked();
	H.finisher_quit = 1;
	pthread_cond_signal(&H.slot_cv);
	pthread_mutex_unlock(&H.lock);
	return NULL;
}

static void *
finisher_main(void *arg)
{
	pthread_mutex_lock(&H.lock);
	for (;;) {
		struct batch *b;
		while (H.slot == NULL && !H.finisher_quit)
			pthread_cond_wait(&H.slot_cv, &H.lock);
		if (H.slot == NULL)
			break;
		b = H.slot;
		H.slot = NULL;
		pthread_mutex_unlock(&H.lock);
		stage_index_publish(b);
		index_maybe_compact();
		pthread_mutex_lock(&H.lock);
		H.index_busy = 0;
		pthread_cond_broadcast(&H.idle_cv);
	}
	pthread_mutex_unlock(&H.lock);
	return NULL;
}

/* Queue a record and wait until it is durable and signed. */
int
commit_record(struct hobj *o, uint8_t *buf, struct hstore_spool *spool,
    uint64_t len, uint32_t uid)
{
	struct hreq q;
	struct batch *fast;
	struct timespec a, z;
	memset(&q, 0, sizeof(q));
	q.o = o;
	q.buf = buf;
	q.spool = spool;
	q.len = len;
	q.uid = uid;
	pthread_cond_init(&q.cv, NULL);
	clock_gettime(CLOCK_MONOTONIC, &a);
	pthread_mutex_lock(&H.lock);
	if (!H.running) {
		pthread_mutex_unlock(&H.lock);
		pthread_cond_destroy(&q.cv);
		err_set("history is not running");
		return HSMFS_ERR_UNSUPPORTED;
	}
	if (!H.framing && H.queue == NULL && !H.stopping &&
	    (fast = calloc(1, sizeof(*fast))) != NULL) {
		/* Nobody is framing and nothing waits: commit it from this
		 * thread, sparing a lone writer two thread hand-offs. Records
		 * arriving meanwhile queue for the committer. */
		fast->reqs = &q;
		run_batch_locked(fast, 0);
	} else {
		*H.queue_tail = &q;
		H.queue_tail = &q.next;
		pthread_cond_signal(&H.queue_cv);
	}
	while (!q.done)
		pthread_cond_wait(&q.cv, &H.lock);
	clock_gettime(CLOCK_MONOTONIC, &z);
	H.nacks++;
	H.ack_ms += (double)(z.tv_sec - a.tv_sec) * 1e3 +
	    (double)(z.tv_nsec - a.tv_nsec) / 1e6;
	pthread_mutex_unlock(&H.lock);
	pthread_cond_destroy(&q.cv);
	return q.result;
}

static void
sign_pool_stop(void)
{
	pthread_mutex_lock(&SP.mu);
	SP.quit = 1;
	pthread_cond_broadcast(&SP.cv);
	pthread_mutex_unlock(&SP.mu);
	for (int i = 0; i < SP.nth; i++)
		pthread_join(SP.th[i], NULL);
	SP.nth = 0;
}

/* Compact an index grown past the threshold, then start the sign pool,
 * the finisher and the committer (history_start's last step). */
int
history_commit_start(void)
{
	if (hstore_index_size(H.hs) > H.compact_at)
		index_compact();
	H.queue_tail = &H.queue;
	for (SP.nth = 0; SP.nth < SIGN_THREADS; SP.nth++)
		if (pthread_create(&SP.th[SP.nth], NULL, sign_thread, NULL) != 0)
			break;
	/* Without the finisher the committer does both stages itself. */
	H.finisher_up = pthread_create(&H.finisher, NULL, finisher_main,
	    NULL) == 0;
	if (pthread_create(&H.committer, NULL, committer_main, NULL) != 0) {
		if (H.finisher_up) {
			pthread_mutex_lock(&H.lock);
			H.finisher_quit = 1;
			pthread_cond_signal(&H.slot_cv);
			pthread_mutex_unlock(&H.lock);
			pthread_join(H.finisher, NULL);
		}
		sign_pool_stop();
		err_set("cannot start the committer thread");
		return HSMFS_ERR_NOMEM;
	}
	return 0;
}

/* Join the committer (which drains the queue), the finisher and the sign
 * pool (history_stop, after H.stopping is set). */
void
history_commit_stop(void)
{
	pthread_join(H.committer, NULL);
	if (H.finisher_up)
		pthread_join(H.finisher, NULL);
	sign_pool_stop();
}
