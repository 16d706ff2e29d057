/* /history: append-only signed object histories (SPEC §5). Owns the
 * in-memory object table, the per-open record buffers, the group
 * committer thread (frames -> fdatasync -> signed checkpoints -> index and
 * anchor -> wake writers), mount-time recovery and the .journal view.
 * Formats are crypto/tlog.c; layout and verification fs/history_store.c. */
#include "fs/fs.h"
#include "store/history_store.h"
#include "store/dirio.h"
#include "fs/temp.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "crypto/tlog.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <openssl/bio.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

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
	int fd;                   /* objects/NAME.log, -1 until the first record */
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
	int spool_fd;             /* spooled (>= 0) */
	uint64_t len;
	uint32_t uid;
	int done, result;
	pthread_cond_t cv;        /* signalled under H.lock when done */
};

enum { FH_WRITE = 1, FH_READ, FH_JOURNAL };

struct hfh {
	int kind;
	struct hobj *o;
	pthread_mutex_t mu;
	/* FH_WRITE: data since the last commit */
	int append;
	uint8_t *buf;
	size_t len, cap;
	int spool_fd;
	uint64_t pending;         /* bytes since the last commit */
	uint64_t next_off;        /* non-O_APPEND: where the next write must be */
	int werr;                 /* a write failed: the record is void (-errno) */
	uint32_t uid;
	/* FH_READ: the verified snapshot */
	uint64_t content_len;
	/* FH_JOURNAL */
	char *text;
	size_t tlen;
};

#define NBUCKETS 1024

static struct {
	int configured;
	int dirfd, objfd, cpfd, anchorfd;
	char store_id[17];
	char prefix[64];
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
	off_t cp_len;
	off_t compact_at;                 /* rewrite the index past this size */
	struct hobj *buckets[NBUCKETS];
	uint64_t nobjects;
	/* stats */
	uint64_t batches, records, signatures, max_batch, pipelined;
	double ack_ms;                    /* sum of enqueue-to-answer times */
	uint64_t nacks;
	time_t last_commit;         /* wall time of the last batch with a record */
} H = { .dirfd = -1, .objfd = -1, .cpfd = -1, .anchorfd = -1,
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.queue_cv = PTHREAD_COND_INITIALIZER,
	.slot_cv = PTHREAD_COND_INITIALIZER,
	.idle_cv = PTHREAD_COND_INITIALIZER };

/* ---- object table ---- */

static unsigned
name_hash(const char *s)
{
	unsigned h = 5381;
	while (*s)
		h = h * 33 + (unsigned char)*s++;
	return h % NBUCKETS;
}

static struct hobj *
obj_find_locked(const char *name)
{
	for (struct hobj *o = H.buckets[name_hash(name)]; o; o = o->next)
		if (strcmp(o->name, name) == 0)
			return o;
	return NULL;
}

static struct hobj *
obj_get_locked(const char *name)
{
	struct hobj *o = obj_find_locked(name);
	unsigned b;
	if (o)
		return o;
	if ((o = calloc(1, sizeof(*o))) == NULL ||
	    (o->name = strdup(name)) == NULL) {
		free(o);
		return NULL;
	}
	o->fd = -1;
	o->signer = -1;
	tlog_tree_init(&o->tree);
	tlog_tree_init(&o->pend.tree);
	b = name_hash(name);
	o->next = H.buckets[b];
	H.buckets[b] = o;
	H.nobjects++;
	return o;
}

/* Nothing in flight for o: its written end is its committed state. */
static void
obj_pend_reset_locked(struct hobj *o)
{
	o->pend.tree = o->tree;
	o->pend.nrec = o->nrec;
	o->pend.file_len = o->file_len;
	o->pend.content_len = o->content_len;
	o->pend.last_time = o->nrec ? o->recs[o->nrec - 1].time_us : 0;
}

static int
obj_visible_locked(const struct hobj *o)
{
	return o->nrec > 0 || o->bad != NULL || o->opens > 0;
}

static void
obj_set_bad_locked(struct hobj *o, const char *why)
{
	if (o->bad == NULL || strcmp(o->bad, why) != 0) {
		free(o->bad);
		o->bad = strdup(why);
		log_err("history/%s: verification failed: %s", o->name, why);
	}
	o->stamp_ok = 0;
}

static int
recs_push(struct hrec **recs, size_t *cap, uint64_t n, const struct hrec *r)
{
	if (n >= *cap) {
		size_t nc = *cap ? *cap * 2 : 16;
		struct hrec *p = realloc(*recs, nc * sizeof(*p));
		if (p == NULL)
			return HSMFS_ERR_NOMEM;
		*recs = p;
		*cap = nc;
	}
	(*recs)[n] = *r;
	return 0;
}

static void
origin_of(const char *name, char *out, size_t outlen)
{
	snprintf(out, outlen, "%s%s", H.prefix, name);
}

/* ---- loading and verification ---- */

struct load_ctx {
	struct hobj *o;
	struct hrec *recs;
	size_t cap;
	uint64_t n, content;
	struct tlog_tree tree;
	int err;
};

static int
load_frame(const struct tlog_frame *f, void *arg)
{
	struct load_ctx *l = arg;
	struct hrec r = { f->payload_offset, f->payload_len, l->content,
		f->rec.time_us, f->rec.uid, { 0 } };
	memcpy(r.leaf_hash, f->leaf_hash, TLOG_HASH_LEN);
	if (recs_push(&l->recs, &l->cap, l->n, &r) != 0) {
		l->err = HSMFS_ERR_NOMEM;
		return 1;
	}
	l->n++;
	l->content += f->payload_len;
	tlog_tree_append(&l->tree, f->leaf_hash);
	return 0;
}

/* Fill c->known with what the index and anchor say about o. */
static void
known_of_locked(const struct hobj *o, struct hstore_check *c)
{
	c->nknown = 0;
	if (o->known_size > 0) {
		c->known[0].size = o->known_size;
		memcpy(c->known[0].root, o->known_root, TLOG_HASH_LEN);
		c->known[0].what = "newest known (index or anchor)";
		c->nknown = 1;
	}
}

/* Full check of o's file against its newest checkpoint, at mount
 * (recover = 1: cut unsigned or torn frames after the signed size, load
 * the record table) or when the file changed behind our back. */
static int
obj_verify(struct hobj *o, int recover)
{
	struct tlog_checkpoint cp;
	struct hstore_check c;
	struct load_ctx l;
	char *cp_text = NULL;
	size_t used;
	struct stat st;
	int fd, r;

	memset(&cp, 0, sizeof(cp));
	memset(&c, 0, sizeof(c));
	memset(&l, 0, sizeof(l));
	tlog_tree_init(&l.tree);

	pthread_mutex_lock(&H.lock);
	fd = o->fd;
	if (o->cp_text && (cp_text = strdup(o->cp_text)) == NULL) {
		pthread_mutex_unlock(&H.lock);
		return HSMFS_ERR_NOMEM;
	}
	known_of_locked(o, &c);
	if (H.global_bad)
		obj_set_bad_locked(o, H.global_bad);
	r = o->bad && recover ? HSMFS_ERR_BADMSG : 0;
	pthread_mutex_unlock(&H.lock);
	if (r != 0)
		goto out;

	if (cp_text && tlog_checkpoint_parse(cp_text, strlen(cp_text), &cp,
	    &used) != 0) {
		pthread_mutex_lock(&H.lock);
		obj_set_bad_locked(o, "newest checkpoint does not parse");
		pthread_mutex_unlock(&H.lock);
		r = HSMFS_ERR_BADMSG;
		goto out;
	}
	c.cp = cp_text ? &cp : NULL;
	c.keys = H.vkeys;
	c.nkeys = H.nvkeys;
	if (recover) {
		c.cb = load_frame;
		c.arg = &l;
	}
	if (fd < 0) {
		if (c.cp != NULL || c.nknown > 0) {
			pthread_mutex_lock(&H.lock);
			obj_set_bad_locked(o, "history file is missing");
			pthread_mutex_unlock(&H.lock);
			r = HSMFS_ERR_BADMSG;
		}
		goto out;
	}
	if (fstat(fd, &st) < 0) {
		r = HSMFS_ERR_IO;
		goto out;
	}
	r = hstore_check_object(fd, &c);
	if (r == 0 && l.err)
		r = l.err;
	if (r == HSMFS_ERR_BADMSG) {
		pthread_mutex_lock(&H.lock);
		obj_set_bad_locked(o, c.reason);
		pthread_mutex_unlock(&H.lock);
		goto out;
	}
	if (r != 0)
		goto out;
	if (recover) {
		/* Everything after the signed size was never acknowledged. */
		if (st.st_size > c.signed_end) {
			log_warn("history/%s: cutting %lld unsigned byte(s) after "
			    "record %" PRIu64 " (%s)", o->name,
			    (long long)(st.st_size - c.signed_end), l.n,
			    c.torn ? c.torn : "complete but unsigned records");
			if (ftruncate(fd, c.signed_end) < 0 || fdatasync(fd) < 0) {
				err_set("history/%s: cannot cut the torn tail: %s",
				    o->name, strerror(errno));
				r = HSMFS_ERR_IO;
				goto out;
			}
			if (fstat(fd, &st) < 0) {
				r = HSMFS_ERR_IO;
				goto out;
			}
		}
		pthread_mutex_lock(&H.lock);
		free(o->recs);
		o->recs = l.recs;
		o->cap = l.cap;
		l.recs = NULL;
		o->nrec = l.n;
		o->content_len = l.content;
		o->file_len = c.signed_end;
		o->tree = l.tree;
		obj_pend_reset_locked(o);
		o->signer = c.which_key;
		o->stamp = st;
		o->stamp_ok = 1;
		pthread_mutex_unlock(&H.lock);
	} else {
		pthread_mutex_lock(&H.lock);
		/* Only a file exactly as we left it refreshes the stamp; a
		 * file with in-flight frames after it is checked again. */
		if (st.st_size == o->file_len && c.good == o->nrec) {
			o->stamp = st;
			o->stamp_ok = 1;
		}
		o->signer = c.which_key;
		pthread_mutex_unlock(&H.lock);
	}
	r = 0;
out:
	free(l.recs);
	free(cp_text);
	tlog_checkpoint_clear(&cp);
	return r;
}

static int
stamp_same(const struct stat *a, const struct stat *b)
{
	return a->st_ino == b->st_ino && a->st_dev == b->st_dev &&
	    a->st_size == b->st_size &&
	    a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
	    a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
	    a->st_ctim.tv_sec == b->st_ctim.tv_sec &&
	    a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Before reads: is o (still) valid? Cheap when the file is exactly as the
 * last verification or our own last commit left it. */
static int
obj_check(struct hobj *o)
{
	struct stat st;
	int fd, ok;

	pthread_mutex_lock(&H.lock);
	if (o->bad) {
		pthread_mutex_unlock(&H.lock);
		return HSMFS_ERR_BADMSG;
	}
	fd = o->fd;
	pthread_mutex_unlock(&H.lock);
	if (fd < 0)
		return 0;
	/* The file by name, not our fd: a replaced file must be noticed. */
	{
		char fn[300];
		snprintf(fn, sizeof(fn), "%s" HSTORE_SUFFIX, o->name);
		if (fstatat(H.objfd, fn, &st, 0) < 0) {
			pthread_mutex_lock(&H.lock);
			obj_set_bad_locked(o, "history file is missing");
			pthread_mutex_unlock(&H.lock);
			return HSMFS_ERR_BADMSG;
		}
	}
	pthread_mutex_lock(&H.lock);
	ok = o->stamp_ok && stamp_same(&st, &o->stamp);
	if (!ok && o->stamp_ok &&
	    (st.st_ino != o->stamp.st_ino || st.st_dev != o->stamp.st_dev))
		obj_set_bad_locked(o, "history file was replaced while mounted");
	pthread_mutex_unlock(&H.lock);
	if (ok)
		return 0;
	return obj_verify(o, 0);
}

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
	off_t start_len;          /* file length before this batch's frames */
};

struct sign_job {
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
			if (fdatasync(t->o->fd) < 0) {
				int e = errno;
				err_set("fdatasync: %s", strerror(e));
				t->sync_err = hsmfs_errno_err(e);
				fs_log_fail("history", t->o->name, NULL, "syncing records",
				    t->sync_err);
			}
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

/* pwritev until everything is written (iov is consumed). */
static int
pwritev_all(int fd, struct iovec *iov, int n, off_t off)
{
	while (n > 0) {
		ssize_t w = pwritev(fd, iov, n, off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			int e = errno;
			err_set("write: %s", strerror(e));
			return hsmfs_errno_err(e);
		}
		off += w;
		while (n > 0 && (size_t)w >= iov->iov_len) {
			w -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (uint8_t *)iov->iov_base + w;
			iov->iov_len -= (size_t)w;
		}
	}
	return 0;
}

static int
pwrite_all(int fd, const void *buf, size_t len, off_t off)
{
	struct iovec iov = { (void *)buf, len };
	return pwritev_all(fd, &iov, 1, off);
}

static uint64_t
now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* The frame of a spooled record: header, payload copied from the spool
 * in chunks (hashed on the way), hash. *off advances. */
static int
write_spooled(int fd, struct hreq *q, const uint8_t *hdr, size_t hlen,
    EVP_MD_CTX *md, uint8_t hash[TLOG_HASH_LEN], off_t *off)
{
	uint8_t *chunk;
	int r;
	if ((r = pwrite_all(fd, hdr, hlen, *off)) != 0)
		return r;
	*off += (off_t)hlen;
	if ((chunk = malloc(1 << 16)) == NULL)
		return HSMFS_ERR_NOMEM;
	for (uint64_t done = 0; done < q->len;) {
		ssize_t n = pread(q->spool_fd, chunk, 1 << 16, (off_t)done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			err_set("read spool: %s", n < 0 ? strerror(errno) : "short");
			r = HSMFS_ERR_IO;
			goto out;
		}
		if (EVP_DigestUpdate(md, chunk, (size_t)n) != 1) {
			r = HSMFS_ERR_CRYPTO;
			goto out;
		}
		if ((r = pwrite_all(fd, chunk, (size_t)n, *off)) != 0)
			goto out;
		*off += n;
		done += (uint64_t)n;
	}
	r = HSMFS_ERR_CRYPTO;
	if (EVP_DigestFinal_ex(md, hash, NULL) != 1)
		goto out;
	if ((r = pwrite_all(fd, hash, TLOG_HASH_LEN, *off)) != 0)
		goto out;
	*off += TLOG_HASH_LEN;
out:
	free(chunk);
	return r;
}

/* Append one frame for q at t's end. */
static int
write_frame(struct touched *t, struct hreq *q)
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
	if (q->spool_fd >= 0) {
		if ((r = write_spooled(t->o->fd, q, hdr, sizeof(hdr), md, hash,
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
		if ((r = pwritev_all(t->o->fd, iov, 3, off)) != 0)
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

static int
obj_open_file(struct hobj *o, int create)
{
	char fn[300];
	int fd;
	snprintf(fn, sizeof(fn), "%s" HSTORE_SUFFIX, o->name);
	fd = openat(H.objfd, fn, O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
	if (fd < 0) {
		int e = errno;
		err_set("open %s: %s", fn, strerror(e));
		return hsmfs_errno_err(e);
	}
	return fd;
}

/* One batch on its way: framed and signed by the committer, then
 * taken to the index and published by the finisher (or by the committer
 * itself when nothing else is waiting). */
struct batch {
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
			x->start_len = x->end.file_len;
			if (q->o->bad)
				x->err = HSMFS_ERR_BADMSG;
			pthread_mutex_unlock(&H.lock);
			if (!x->err && x->o->fd < 0) {
				int fd = obj_open_file(x->o, 1);
				if (fd < 0) {
					x->err = fd;
				} else {
					pthread_mutex_lock(&H.lock);
					x->o->fd = fd;
					pthread_mutex_unlock(&H.lock);
					x->created = 1;
					new_dirent = 1;
				}
			}
		}
		if (x->err)
			continue;
		if ((r = write_frame(x, q)) != 0) {
			fs_log_fail("history", x->o->name, NULL, "appending a record", r);
			x->err = r;
		}
	}
	b->t = t;
	b->nt = nt;
	if (nt == 0)
		return;
	memset(&job, 0, sizeof(job));
	job.t = t;
	job.n = nt;
	atomic_init(&job.next, 0);
	sign_post(&job);
	sign_finish(&job);
	for (size_t i = 0; i < nt; i++)
		if (!t[i].err)
			t[i].err = t[i].sync_err ? t[i].sync_err : t[i].sign_err;
	if (new_dirent && fsync(H.objfd) < 0) {
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
			if (o->fd >= 0 && ftruncate(o->fd, t[i].start_len) < 0)
				log_err("history/%s: cannot cut unacknowledged records: %s",
				    o->name, strerror(errno));
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
		r = pwrite_all(H.cpfd, b->all, b->all_len, H.cp_len);
		if (r == 0 && fdatasync(H.cpfd) < 0) {
			err_set("fdatasync checkpoints: %s", strerror(errno));
			r = hsmfs_errno_err(errno);
		}
		if (r != 0) {
			fs_log_fail("history", HSTORE_CHECKPOINTS, NULL,
			    "writing checkpoints", r);
			if (ftruncate(H.cpfd, H.cp_len) < 0)
				log_err("history: cannot cut the checkpoint index back: %s",
				    strerror(errno));
		} else if (H.anchorfd >= 0) {
			/* The anchor is a second copy on another volume: if it
			 * fails the records are still durable and signed here, so
			 * they are acknowledged and the failure is logged. */
			if (store_write_all(H.anchorfd, b->all, b->all_len) != 0 ||
			    fdatasync(H.anchorfd) < 0)
				log_err("history: anchor %s: cannot append checkpoints: "
				    "%s", hsmfs_ctx->opt.history_anchor, err_detail());
		}
	}
	pthread_mutex_lock(&H.lock);
	if (r != 0) {
		H.broken = 1;
		H.broken_err = r;
	} else {
		H.cp_len += (off_t)b->all_len;
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
		 * vouches for the file, reads stop at file_len. */
		o->stamp_ok = fstat(o->fd, &o->stamp) == 0;
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
			if (o->fd >= 0 && ftruncate(o->fd, o->file_len) < 0)
				log_err("history/%s: cannot cut unacknowledged records: %s",
				    o->name, strerror(errno));
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
	struct store_tmp tmp;
	off_t len = 0;
	int r, fd;

	if ((r = store_tmp_create(H.dirfd, &tmp)) != 0)
		goto fail;
	pthread_mutex_lock(&H.lock);
	for (unsigned b = 0; b < NBUCKETS && r == 0; b++)
		for (struct hobj *o = H.buckets[b]; o && r == 0; o = o->next)
			if (o->cp_text) {
				r = store_write_all(tmp.fd, o->cp_text, o->cp_len);
				len += (off_t)o->cp_len;
			}
	pthread_mutex_unlock(&H.lock);
	if (r != 0) {
		store_tmp_abort(&tmp);
		goto fail;
	}
	if ((r = store_tmp_commit(&tmp, HSTORE_CHECKPOINTS)) != 0)
		goto fail;
	if ((fd = openat(H.dirfd, HSTORE_CHECKPOINTS, O_RDWR | O_CLOEXEC)) < 0) {
		/* The new index is in place; without a handle on it no batch
		 * can be acknowledged, so say so loudly. */
		log_err("history: cannot reopen the compacted index: %s",
		    strerror(errno));
		return;
	}
	close(H.cpfd);
	H.cpfd = fd;
	log_info("history: checkpoint index compacted from %lld to %lld bytes",
	    (long long)H.cp_len, (long long)len);
	pthread_mutex_lock(&H.lock);
	H.cp_len = len;
	pthread_mutex_unlock(&H.lock);
	return;
fail:
	fs_log_fail("history", HSTORE_CHECKPOINTS, NULL, "compacting the index", r);
}

static void
index_maybe_compact(void)
{
	if (H.cp_len > H.compact_at)
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
	 * lock (taken without H.lock held; nested in a flush's own). */
	fs_conf_rdlock();
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
static int
commit_record(struct hobj *o, uint8_t *buf, int spool_fd, uint64_t len,
    uint32_t uid)
{
	struct hreq q;
	struct batch *fast;
	struct timespec a, z;
	memset(&q, 0, sizeof(q));
	q.o = o;
	q.buf = buf;
	q.spool_fd = spool_fd;
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

/* ---- start / stop ---- */

static int
load_note(const char *object, const struct tlog_checkpoint *cp, void *arg)
{
	int is_anchor = *(int *)arg;
	struct hobj *o;
	if (!util_name_valid(object))
		return 0;
	pthread_mutex_lock(&H.lock);
	o = obj_get_locked(object);
	if (o == NULL) {
		pthread_mutex_unlock(&H.lock);
		return HSMFS_ERR_NOMEM;
	}
	if (!is_anchor) {
		/* The index only grows: the last note of an object is newest. */
		char *t = strdup(cp->text);
		if (t == NULL) {
			pthread_mutex_unlock(&H.lock);
			return HSMFS_ERR_NOMEM;
		}
		if (o->cp_text && cp->size < o->known_size)
			obj_set_bad_locked(o, "checkpoint index goes backwards");
		free(o->cp_text);
		o->cp_text = t;
		o->cp_len = cp->text_len;
	}
	if (cp->size > o->known_size) {
		o->known_size = cp->size;
		memcpy(o->known_root, cp->root, TLOG_HASH_LEN);
	} else if (cp->size == o->known_size &&
	    memcmp(cp->root, o->known_root, TLOG_HASH_LEN) != 0) {
		obj_set_bad_locked(o, is_anchor ? "anchor and index disagree on "
		    "the root" : "two checkpoints of one size with different roots");
	}
	pthread_mutex_unlock(&H.lock);
	return 0;
}

static int
read_store_id(void)
{
	char *s = NULL;
	int r = hstore_read_id(H.dirfd, &s);
	if (r == HSMFS_ERR_NOTFOUND) {
		/* A new store: a random id keeps origins of different stores
		 * apart (one anchor file may serve several). */
		uint8_t rnd[8];
		char buf[18];
		if (faccessat(H.dirfd, HSTORE_CHECKPOINTS, F_OK, 0) == 0) {
			/* A fresh id would orphan every checkpoint, and recovery
			 * would then cut every object: refuse instead. */
			err_set("history/%s is missing but the store has "
			    "checkpoints: restore it from a backup", HSTORE_ID);
			return HSMFS_ERR_BADMSG;
		}
		if (RAND_bytes(rnd, sizeof(rnd)) != 1)
			return HSMFS_ERR_CRYPTO;
		util_hex(rnd, sizeof(rnd), buf);
		buf[16] = '\n';
		buf[17] = '\0';
		if ((r = store_write_atomic(H.dirfd, HSTORE_ID, buf, 17)) != 0)
			return r;
		memcpy(H.store_id, buf, 16);
		H.store_id[16] = '\0';
		return 0;
	}
	if (r != 0) {
		err_prefix("history/");
		return r;
	}
	memcpy(H.store_id, s, 17);
	free(s);
	return 0;
}

/* Read (and cut the torn tail of) a notes file. */
static int
load_notes_file(int fd, int is_anchor, const char *what)
{
	off_t good;
	struct stat st;
	int r = hstore_read_notes(fd, H.prefix, load_note, &is_anchor, &good);
	if (r != 0) {
		char msg[400];
		snprintf(msg, sizeof(msg), "%s is unreadable: %s", what, err_detail());
		free(H.global_bad);
		H.global_bad = strdup(msg);
		log_err("history: %s; every object fails verification until it "
		    "is repaired", msg);
		return 0;
	}
	if (fstat(fd, &st) == 0 && st.st_size > good) {
		log_warn("history: %s: cutting a torn tail of %lld byte(s)", what,
		    (long long)(st.st_size - good));
		if (ftruncate(fd, good) < 0 || fdatasync(fd) < 0) {
			err_set("%s: cannot cut the torn tail: %s", what, strerror(errno));
			return HSMFS_ERR_IO;
		}
	}
	if (!is_anchor)
		H.cp_len = good;
	return 0;
}

/* The signer and verification keys of a configuration: the newest
 * ObjectHistorySigner first (index 0 signs, o->signer = 0), then every
 * other configured version. */
struct hkeys {
	hsm_key *signer;
	EVP_PKEY **vkeys;
	X509 **vcerts;
	size_t nvkeys;
};

static int
hkeys_of(const struct engine *e, struct keyring *kr, struct hkeys *hk)
{
	const struct engine_descriptor *newest =
	    engine_newest(e, ENGINE_OBJECT_HISTORY_SIGNER);
	struct keyring_signer s, *v;
	size_t n;
	int r;

	memset(hk, 0, sizeof(*hk));
	if (newest == NULL) {
		err_set("no ObjectHistorySigner descriptor in the config");
		return HSMFS_ERR_UNSUPPORTED;
	}
	if ((r = keyring_signer_of(kr, newest, &s)) != 0)
		return r;
	hk->signer = s.key;
	if ((r = keyring_verifiers(kr, ENGINE_OBJECT_HISTORY_SIGNER, &v, &n)) != 0)
		return r;
	hk->vkeys = calloc(n + 1, sizeof(*hk->vkeys));
	hk->vcerts = calloc(n + 1, sizeof(*hk->vcerts));
	if (hk->vkeys == NULL || hk->vcerts == NULL) {
		free(hk->vkeys);
		free(hk->vcerts);
		free(v);
		return HSMFS_ERR_NOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		hk->vkeys[hk->nvkeys] = v[i].pubkey;
		hk->vcerts[hk->nvkeys++] = v[i].cert;
	}
	free(v);
	return 0;
}

static int
load_keys(void)
{
	struct hkeys hk;
	int r;

	if ((r = hkeys_of(hsmfs_ctx->engine, hsmfs_ctx->keys, &hk)) != 0)
		return r;
	H.signer = hk.signer;
	H.vkeys = hk.vkeys;
	H.vcerts = hk.vcerts;
	H.nvkeys = hk.nvkeys;
	return 0;
}

/* Reload: new checkpoints are signed with the new newest version; every
 * configured version verifies. The signer is read by committing threads
 * under the configuration read lock (run_batch_locked), so the swap under
 * the write lock is never seen half done. Objects remember their newest
 * checkpoint's signer as an index: remap it to the new order. */
static int
history_reload_prepare(const struct engine *e, struct keyring *kr, void **next)
{
	struct hkeys *hk = malloc(sizeof(*hk));
	int r;

	if (hk == NULL)
		return HSMFS_ERR_NOMEM;
	if ((r = hkeys_of(e, kr, hk)) != 0) {
		free(hk);
		return r;
	}
	*next = hk;
	return 0;
}

static void
history_reload_finish(void *next, int commit)
{
	struct hkeys *hk = next;

	if (hk == NULL)
		return;
	if (commit) {
		pthread_mutex_lock(&H.lock);
		for (unsigned b = 0; b < NBUCKETS; b++)
			for (struct hobj *o = H.buckets[b]; o; o = o->next) {
				X509 *c;
				if (o->signer < 0 || (size_t)o->signer >= H.nvkeys)
					continue;
				c = H.vcerts[o->signer];
				o->signer = -1;
				for (size_t i = 0; c && i < hk->nvkeys; i++)
					if (hk->vcerts[i] && X509_cmp(hk->vcerts[i], c) == 0) {
						o->signer = (int)i;
						break;
					}
			}
		if (hk->signer != H.signer)
			log_info("history: new checkpoints are signed with key %s",
			    keyring_key_name(hk->signer));
		free(H.vkeys);
		free(H.vcerts);
		H.signer = hk->signer;
		H.vkeys = hk->vkeys;
		H.vcerts = hk->vcerts;
		H.nvkeys = hk->nvkeys;
		pthread_mutex_unlock(&H.lock);
	} else {
		free(hk->vkeys);
		free(hk->vcerts);
	}
	free(hk);
}

static int
history_start(void)
{
	DIR *d = NULL;
	struct dirent *de;
	int fd, r, anchor_flag;

	if ((r = load_keys()) != 0)
		return r;
	if ((r = store_dir(hsmfs_ctx->store_fd, HSTORE_DIR)) < 0)
		return r;
	H.dirfd = r;
	if ((r = store_dir(H.dirfd, HSTORE_OBJECTS)) < 0)
		return r;
	H.objfd = r;
	/* New directories must survive a power loss before the first record
	 * is acknowledged in them (once per mount, cheap). */
	store_fsync_dir(H.dirfd);
	store_fsync_dir(hsmfs_ctx->store_fd);
	store_cleanup_tmp(H.dirfd);
	if ((r = read_store_id()) != 0)
		return r;
	hstore_origin_prefix(H.store_id, H.prefix, sizeof(H.prefix));
	H.cpfd = openat(H.dirfd, HSTORE_CHECKPOINTS, O_RDWR | O_CLOEXEC);
	if (H.cpfd < 0 && errno == ENOENT) {
		/* A store with objects but no index has lost its checkpoints:
		 * never treat that as "nothing was signed". */
		if ((H.cpfd = openat(H.dirfd, HSTORE_CHECKPOINTS,
		    O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) >= 0)
			store_fsync_dir(H.dirfd);
		fd = dup(H.objfd);
		if (fd >= 0 && (d = fdopendir(fd)) != NULL) {
			while ((de = readdir(d)) != NULL)
				if (de->d_name[0] != '.') {
					H.global_bad = strdup("the checkpoint index is missing");
					log_err("history: %s/%s is missing but objects exist",
					    HSTORE_DIR, HSTORE_CHECKPOINTS);
					break;
				}
			closedir(d);
			d = NULL;
		} else if (fd >= 0) {
			close(fd);
		}
	}
	if (H.cpfd < 0) {
		err_set("history/%s: %s", HSTORE_CHECKPOINTS, strerror(errno));
		return hsmfs_errno_err(errno);
	}
	anchor_flag = 0;
	if ((r = load_notes_file(H.cpfd, anchor_flag, "checkpoint index")) != 0)
		return r;
	if (hsmfs_ctx->opt.history_anchor) {
		if (hsmfs_ctx->opt.history_anchor[0] != '/') {
			/* The daemon runs from "/" after daemonizing. */
			err_set("history_anchor=%s: give an absolute path",
			    hsmfs_ctx->opt.history_anchor);
			return HSMFS_ERR_CONFIG;
		}
		H.anchorfd = open(hsmfs_ctx->opt.history_anchor,
		    O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
		if (H.anchorfd < 0) {
			err_set("history_anchor %s: %s", hsmfs_ctx->opt.history_anchor,
			    strerror(errno));
			return hsmfs_errno_err(errno);
		}
		anchor_flag = 1;
		if ((r = load_notes_file(H.anchorfd, anchor_flag, "anchor")) != 0)
			return r;
		/* The anchor's own directory entry must survive a crash too. */
		{
			char *dir = strdup(hsmfs_ctx->opt.history_anchor), *sl;
			int dfd;
			if (dir && (sl = strrchr(dir, '/')) != NULL) {
				*sl = '\0';
				if ((dfd = open(*dir ? dir : "/", O_RDONLY | O_DIRECTORY |
				    O_CLOEXEC)) >= 0) {
					fsync(dfd);
					close(dfd);
				}
			}
			free(dir);
		}
	}

	/* Open every object file; objects named by the index but without a
	 * file are reported by obj_verify. */
	fd = dup(H.objfd);
	if (fd < 0 || (d = fdopendir(fd)) == NULL) {
		if (fd >= 0)
			close(fd);
		err_set("history/objects: %s", strerror(errno));
		return HSMFS_ERR_IO;
	}
	while ((de = readdir(d)) != NULL) {
		size_t n = strlen(de->d_name), sl = strlen(HSTORE_SUFFIX);
		char name[256];
		struct hobj *o;
		if (n <= sl || n - sl >= sizeof(name) ||
		    strcmp(de->d_name + n - sl, HSTORE_SUFFIX) != 0)
			continue;
		memcpy(name, de->d_name, n - sl);
		name[n - sl] = '\0';
		if (!util_name_valid(name))
			continue;
		pthread_mutex_lock(&H.lock);
		o = obj_get_locked(name);
		pthread_mutex_unlock(&H.lock);
		if (o == NULL) {
			closedir(d);
			return HSMFS_ERR_NOMEM;
		}
		if ((o->fd = obj_open_file(o, 0)) < 0) {
			log_err("history/%s: %s", name, err_detail());
			o->fd = -1;
		}
	}
	closedir(d);
	for (unsigned b = 0; b < NBUCKETS; b++) {
		for (struct hobj *o = H.buckets[b]; o; o = o->next) {
			err_clear();
			r = obj_verify(o, 1);
			if (r != 0 && r != HSMFS_ERR_BADMSG) {
				fs_log_fail("history", o->name, NULL, "recovery", r);
				pthread_mutex_lock(&H.lock);
				obj_set_bad_locked(o, err_detail());
				pthread_mutex_unlock(&H.lock);
			}
		}
	}

	H.compact_at = 64 << 20;
	{
		/* Tests shrink the threshold to exercise compaction. */
		const char *c = getenv("HSMFS_HISTORY_COMPACT_BYTES");
		if (c && atol(c) > 0)
			H.compact_at = atol(c);
	}
	if (H.cp_len > H.compact_at)
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
		err_set("cannot start the committer thread");
		return HSMFS_ERR_NOMEM;
	}
	H.running = 1;
	H.configured = 1;
	log_info("history: %" PRIu64 " object(s), signing with %s%s%s", H.nobjects,
	    keyring_key_name(H.signer), H.anchorfd >= 0 ? ", anchor " : "",
	    H.anchorfd >= 0 ? hsmfs_ctx->opt.history_anchor : "");
	return 0;
}

static void
history_stop(void)
{
	pthread_mutex_lock(&H.lock);
	if (!H.running) {
		pthread_mutex_unlock(&H.lock);
		return;
	}
	H.stopping = 1;
	pthread_cond_signal(&H.queue_cv);
	pthread_mutex_unlock(&H.lock);
	pthread_join(H.committer, NULL);
	if (H.finisher_up)
		pthread_join(H.finisher, NULL);
	pthread_mutex_lock(&SP.mu);
	SP.quit = 1;
	pthread_cond_broadcast(&SP.cv);
	pthread_mutex_unlock(&SP.mu);
	for (int i = 0; i < SP.nth; i++)
		pthread_join(SP.th[i], NULL);
	pthread_mutex_lock(&H.lock);
	H.running = 0;
	pthread_mutex_unlock(&H.lock);
}

static void
history_status(FILE *out)
{
	pthread_mutex_lock(&H.lock);
	fprintf(out, "history.objects: %" PRIu64 "\n", H.nobjects);
	fprintf(out, "history.records_committed: %" PRIu64 "\n", H.records);
	fprintf(out, "history.batches: %" PRIu64 "\n", H.batches);
	fprintf(out, "history.signatures: %" PRIu64 "\n", H.signatures);
	fprintf(out, "history.max_batch: %" PRIu64 "\n", H.max_batch);
	fprintf(out, "history.mean_batch: %.2f\n",
	    H.batches ? (double)H.records / (double)H.batches : 0.0);
	fprintf(out, "history.pipelined_batches: %" PRIu64 "\n", H.pipelined);
	fprintf(out, "history.mean_close_ms: %.3f\n",
	    H.nacks ? H.ack_ms / (double)H.nacks : 0.0);
	fprintf(out, "history.last_checkpoint: %lld\n", (long long)H.last_commit);
	fprintf(out, "history.signer: %s\n", H.signer ? keyring_key_name(H.signer) : "");
	fprintf(out, "history.anchor: %s\n", H.anchorfd >= 0 ?
	    hsmfs_ctx->opt.history_anchor : "none");
	pthread_mutex_unlock(&H.lock);
}

static void
history_metrics(struct metrics *m)
{
	const struct engine_descriptor *d;

	pthread_mutex_lock(&H.lock);
	metrics_add(m, METRIC_GAUGE, "hsmfs_history_objects",
	    "Objects with a history", (double)H.nobjects, (char *)NULL);
	metrics_add(m, METRIC_COUNTER, "hsmfs_history_records_total",
	    "History records committed (durable and signed)", (double)H.records,
	    (char *)NULL);
	metrics_add(m, METRIC_COUNTER, "hsmfs_history_batches_total",
	    "Group commits with at least one record", (double)H.batches,
	    (char *)NULL);
	metrics_add(m, METRIC_COUNTER, "hsmfs_history_signatures_total",
	    "Checkpoint signatures made", (double)H.signatures, (char *)NULL);
	metrics_add(m, METRIC_GAUGE, "hsmfs_history_max_batch",
	    "Most records in one group commit so far", (double)H.max_batch,
	    (char *)NULL);
	metrics_summary(m, "hsmfs_history_close_seconds",
	    "Time from a record's close() to its acknowledgement", H.ack_ms / 1e3,
	    (unsigned long)H.nacks, (char *)NULL);
	metrics_add(m, METRIC_GAUGE, "hsmfs_history_last_checkpoint_timestamp_seconds",
	    "Time of the last signed checkpoint, Unix time (0: none yet)",
	    (double)H.last_commit, (char *)NULL);
	pthread_mutex_unlock(&H.lock);
	if ((d = engine_newest(hsmfs_ctx->engine, ENGINE_OBJECT_HISTORY_SIGNER)))
		metrics_add(m, METRIC_GAUGE, "hsmfs_descriptor_version",
		    "Descriptor version used for new work, by descriptor and key",
		    d->version, "descriptor", "ObjectHistorySigner",
		    "key", d->key_name, (char *)NULL);
}

/* ---- the journal view ---- */

static char *
journal_render(struct hobj *o, size_t *len)
{
	char *buf = NULL;
	size_t n = 0;
	FILE *f = open_memstream(&buf, &n);
	if (f == NULL)
		return NULL;
	pthread_mutex_lock(&H.lock);
	for (uint64_t i = 0; i < o->nrec; i++) {
		const struct hrec *r = &o->recs[i];
		char hex[2 * TLOG_HASH_LEN + 1];
		struct tm tm;
		time_t s = (time_t)(r->time_us / 1000000u);
		char ts[32];
		gmtime_r(&s, &tm);
		strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
		util_hex(r->leaf_hash, TLOG_HASH_LEN, hex);
		fprintf(f, "%" PRIu64 " %s.%06uZ %" PRIu32 " %" PRIu64 " %s\n", i, ts,
		    (unsigned)(r->time_us % 1000000u), r->uid, r->payload_len, hex);
	}
	fputc('\n', f);
	if (o->cp_text)
		fwrite(o->cp_text, 1, o->cp_len, f);
	pthread_mutex_unlock(&H.lock);
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	*len = n;
	return buf;
}

/* ---- FUSE operations ---- */

/* Split a path into (journal?, name). Returns 0 for "", 1 for ".journal",
 * 2 for an object, 3 for a journal entry, -1 for anything else. */
static int
parse_path(const char *path, const char **name)
{
	size_t jl = strlen(JOURNAL);
	*name = NULL;
	if (*path == '\0')
		return 0;
	if (strncmp(path, JOURNAL, jl) == 0) {
		if (path[jl] == '\0')
			return 1;
		if (path[jl] != '/' || !util_name_valid(path + jl + 1))
			return -1;
		*name = path + jl + 1;
		return 3;
	}
	if (!util_name_valid(path))
		return -1;
	*name = path;
	return 2;
}

static int
history_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	const char *name;
	int kind = parse_path(path, &name), r = -ENOENT;
	struct hobj *o;

	if (kind == 0 || kind == 1) {
		fs_stat_dir(st);
		return 0;
	}
	if (kind < 0)
		return -ENOENT;
	pthread_mutex_lock(&H.lock);
	o = obj_find_locked(name);
	if (o != NULL && obj_visible_locked(o)) {
		time_t mt = o->nrec ? (time_t)(o->recs[o->nrec - 1].time_us / 1000000u)
		    : time(NULL);
		if (kind == 2) {
			fs_stat_file(st, 0644, (off_t)o->content_len, mt);
			r = 0;
		} else if (o->nrec > 0 || o->bad) {
			pthread_mutex_unlock(&H.lock);
			size_t n = 0;
			char *text = journal_render(o, &n);
			free(text);
			fs_stat_file(st, 0444, (off_t)n, mt);
			return 0;
		}
	}
	pthread_mutex_unlock(&H.lock);
	return r;
}

static int
history_readdir(const char *path, void *buf, fuse_fill_dir_t fill)
{
	const char *name;
	int kind = parse_path(path, &name);
	if (kind != 0 && kind != 1)
		return -ENOTDIR;
	fill(buf, ".", NULL, 0, 0);
	fill(buf, "..", NULL, 0, 0);
	if (kind == 0)
		fill(buf, JOURNAL, NULL, 0, 0);
	pthread_mutex_lock(&H.lock);
	for (unsigned b = 0; b < NBUCKETS; b++)
		for (struct hobj *o = H.buckets[b]; o; o = o->next)
			if (o->nrec > 0 || o->bad || (kind == 0 && o->opens > 0))
				fill(buf, o->name, NULL, 0, 0);
	pthread_mutex_unlock(&H.lock);
	return 0;
}

static struct hfh *
fh_new(int kind, struct hobj *o)
{
	struct hfh *h = calloc(1, sizeof(*h));
	if (h == NULL)
		return NULL;
	h->kind = kind;
	h->o = o;
	h->spool_fd = -1;
	pthread_mutex_init(&h->mu, NULL);
	return h;
}

static void
fh_free(struct hfh *h)
{
	if (h == NULL)
		return;
	free(h->buf);
	if (h->spool_fd >= 0)
		close(h->spool_fd);
	free(h->text);
	pthread_mutex_destroy(&h->mu);
	free(h);
}

static int
verify_errno(struct hobj *o)
{
	int r = obj_check(o);
	if (r == 0)
		return 0;
	if (r == HSMFS_ERR_BADMSG)
		return -EBADMSG;
	fs_log_fail("history", o->name, NULL, "verifying", r);
	return -hsmfs_err_errno(r);
}

/* Common open of an object for writing (existing or new). */
static int
open_object(const char *name, struct fuse_file_info *fi, int creating)
{
	int acc = fi->flags & O_ACCMODE, r;
	struct hobj *o;
	struct hfh *h;

	pthread_mutex_lock(&H.lock);
	o = creating ? obj_get_locked(name) : obj_find_locked(name);
	if (o == NULL || (!creating && !obj_visible_locked(o))) {
		pthread_mutex_unlock(&H.lock);
		return o == NULL && creating ? -ENOMEM : -ENOENT;
	}
	if (acc != O_RDONLY) {
		if (!H.configured) {
			pthread_mutex_unlock(&H.lock);
			log_err("history/%s: write refused: no ObjectHistorySigner "
			    "configured", name);
			return -EOPNOTSUPP;
		}
		if ((fi->flags & O_TRUNC) && o->nrec > 0) {
			pthread_mutex_unlock(&H.lock);
			return -EPERM;
		}
		if (creating && (fi->flags & O_EXCL) && obj_visible_locked(o)) {
			pthread_mutex_unlock(&H.lock);
			return -EEXIST;
		}
	}
	pthread_mutex_unlock(&H.lock);

	/* Any reader sees only a verified history. A write-only open needs
	 * no rescan: the committer appends from the state verified at mount
	 * and kept since, and a history known bad takes no more records. */
	if (acc != O_WRONLY && (o->nrec > 0 || o->bad)) {
		if ((r = verify_errno(o)) != 0)
			return r;
	} else if (o->bad) {
		return -EBADMSG;
	}
	if ((h = fh_new(acc == O_RDONLY ? FH_READ : FH_WRITE, o)) == NULL)
		return -ENOMEM;
	pthread_mutex_lock(&H.lock);
	h->content_len = o->content_len;
	h->next_off = o->content_len;
	if (acc != O_RDONLY)
		o->opens++;
	pthread_mutex_unlock(&H.lock);
	h->append = (fi->flags & O_APPEND) != 0;
	h->uid = (uint32_t)fuse_get_context()->uid;
	fi->fh = (uint64_t)(uintptr_t)h;
	fi->direct_io = 1;
	fi->keep_cache = 0;
	return 0;
}

static int
history_open(const char *path, struct fuse_file_info *fi)
{
	const char *name;
	int kind = parse_path(path, &name), r;
	struct hobj *o;
	struct hfh *h;

	if (kind == 0 || kind == 1)
		return -EISDIR;
	if (kind < 0)
		return -ENOENT;
	/* A writable open of a name we do not have is a create: after a failed
	 * first append the kernel may still hold a positive dentry for the
	 * name and sends open, not create (objects appear on first append). */
	if (kind == 2)
		return open_object(name, fi, (fi->flags & O_ACCMODE) != O_RDONLY);
	if ((fi->flags & O_ACCMODE) != O_RDONLY)
		return -EACCES;
	pthread_mutex_lock(&H.lock);
	o = obj_find_locked(name);
	r = o && (o->nrec > 0 || o->bad) ? 0 : -ENOENT;
	pthread_mutex_unlock(&H.lock);
	if (r != 0)
		return r;
	if ((r = verify_errno(o)) != 0)
		return r;
	if ((h = fh_new(FH_JOURNAL, o)) == NULL)
		return -ENOMEM;
	if ((h->text = journal_render(o, &h->tlen)) == NULL) {
		fh_free(h);
		return -ENOMEM;
	}
	fi->fh = (uint64_t)(uintptr_t)h;
	fi->direct_io = 1;
	return 0;
}

static int
history_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	const char *name;
	int kind = parse_path(path, &name);
	if (kind == 3 || kind == 1)
		return -EACCES;
	if (kind < 0 && temp_name(path)) {
		/* rsync's and editors' temp-file-then-rename cannot append. */
		log_err("history/%s: refused: a history is append-only, written "
		    "by appending to NAME (>>, rsync --append), never by "
		    "renaming a temporary file onto it", path);
		return -EPERM;
	}
	if (kind != 2)
		return -EINVAL;
	return open_object(name, fi, 1);
}

static int
history_read(const char *path, char *buf, size_t size, off_t off,
    struct fuse_file_info *fi)
{
	struct hfh *h = (struct hfh *)(uintptr_t)fi->fh;
	size_t done = 0;

	if (h->kind == FH_JOURNAL) {
		if ((size_t)off >= h->tlen)
			return 0;
		if (size > h->tlen - (size_t)off)
			size = h->tlen - (size_t)off;
		memcpy(buf, h->text + off, size);
		return (int)size;
	}
	while (done < size && (uint64_t)off + done < h->content_len) {
		uint64_t pos = (uint64_t)off + done, lo = 0, hi;
		off_t foff;
		size_t take;
		ssize_t n;
		int fd;

		pthread_mutex_lock(&H.lock);
		hi = h->o->nrec;
		/* Last record whose content starts at or before pos. */
		while (hi - lo > 1) {
			uint64_t mid = lo + (hi - lo) / 2;
			if (h->o->recs[mid].content_off <= pos)
				lo = mid;
			else
				hi = mid;
		}
		{
			const struct hrec *r = &h->o->recs[lo];
			uint64_t in = pos - r->content_off;
			foff = r->payload_off + (off_t)in;
			take = size - done;
			if (take > r->payload_len - in)
				take = (size_t)(r->payload_len - in);
		}
		fd = h->o->fd;
		pthread_mutex_unlock(&H.lock);
		if (take == 0)
			break;
		n = pread(fd, buf + done, take, foff);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return done > 0 ? (int)done : -EIO;
		done += (size_t)n;
	}
	return (int)done;
}

/* An unlinked temp file in the store for a large record. */
static int
spool_open(void)
{
	struct store_tmp t;
	int fd = openat(H.dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR))
		return fd >= 0 ? fd : -errno;
	if (store_tmp_create(H.dirfd, &t) != 0)
		return -EIO;
	unlinkat(H.dirfd, t.name, 0);
	return t.fd;
}

static int
history_write(const char *path, const char *buf, size_t size, off_t off,
    struct fuse_file_info *fi)
{
	struct hfh *h = (struct hfh *)(uintptr_t)fi->fh;
	int r = (int)size;

	if (h->kind != FH_WRITE)
		return -EBADF;
	pthread_mutex_lock(&h->mu);
	if (!h->append) {
		uint64_t end;
		pthread_mutex_lock(&H.lock);
		end = h->o->content_len + h->pending;
		pthread_mutex_unlock(&H.lock);
		if ((uint64_t)off != end) {
			r = -EPERM;
			goto out;
		}
	}
	if (h->pending + size + TLOG_LEAF_HDR > TLOG_LEAF_MAX) {
		r = -EFBIG;
		goto out;
	}
	if (h->spool_fd < 0 && h->len + size > SPOOL_AFTER) {
		int e;
		if ((h->spool_fd = spool_open()) < 0) {
			r = h->spool_fd;
			h->spool_fd = -1;
			goto out;
		}
		if ((e = store_write_all(h->spool_fd, h->buf, h->len)) != 0) {
			r = -hsmfs_err_errno(e);
			close(h->spool_fd);
			h->spool_fd = -1;
			goto out;
		}
		free(h->buf);
		h->buf = NULL;
		h->len = h->cap = 0;
	}
	if (h->spool_fd >= 0) {
		int e = store_write_all(h->spool_fd, buf, size);
		if (e != 0) {
			r = -hsmfs_err_errno(e);
			goto out;
		}
	} else {
		if (h->len + size > h->cap) {
			size_t nc = h->cap ? h->cap : 4096;
			uint8_t *p;
			while (nc < h->len + size)
				nc *= 2;
			if ((p = realloc(h->buf, nc)) == NULL) {
				r = -ENOMEM;
				goto out;
			}
			h->buf = p;
			h->cap = nc;
		}
		memcpy(h->buf + h->len, buf, size);
		h->len += size;
	}
	h->pending += size;
out:
	/* A record missing a part that failed is not what was written:
	 * remember, so close() drops it and reports the error. EPERM for a
	 * misplaced write leaves the record as it was. */
	if (r < 0 && r != -EPERM && h->pending > 0)
		h->werr = r;
	pthread_mutex_unlock(&h->mu);
	return r;
}

/* Commit the data written through h since its last commit. */
static int
fh_commit(struct hfh *h)
{
	int r;
	pthread_mutex_lock(&h->mu);
	if (h->pending == 0 && h->werr == 0) {
		pthread_mutex_unlock(&h->mu);
		return 0;
	}
	err_clear();
	if (h->werr != 0) {
		err_set("a write of this record failed; record dropped");
		r = hsmfs_errno_err(-h->werr);
		h->werr = 0;
	} else {
		r = commit_record(h->o, h->buf, h->spool_fd, h->pending, h->uid);
	}
	/* Committed or not, this data is done with: a failed record was
	 * never acknowledged, and close() reports the failure. */
	free(h->buf);
	h->buf = NULL;
	h->len = h->cap = 0;
	if (h->spool_fd >= 0)
		close(h->spool_fd);
	h->spool_fd = -1;
	h->pending = 0;
	pthread_mutex_unlock(&h->mu);
	if (r != 0) {
		fs_log_fail("history", h->o->name, H.signer ? keyring_key_name(H.signer)
		    : NULL, "record not committed", r);
		return r == HSMFS_ERR_BADMSG ? -EBADMSG : -hsmfs_err_errno(r);
	}
	return 0;
}

static int
history_flush(const char *path, struct fuse_file_info *fi)
{
	struct hfh *h = (struct hfh *)(uintptr_t)fi->fh;
	if (h == NULL || h->kind != FH_WRITE)
		return 0;
	return fh_commit(h);
}

static int
history_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	/* A record is one open..close; its durability is close()'s promise.
	 * Committing here would split the record. */
	return 0;
}

static int
history_release(const char *path, struct fuse_file_info *fi)
{
	struct hfh *h = (struct hfh *)(uintptr_t)fi->fh;
	if (h == NULL)
		return 0;
	if (h->kind == FH_WRITE) {
		/* Normally flush committed everything; release without flush
		 * (rare) still commits rather than dropping data. */
		fh_commit(h);
		pthread_mutex_lock(&H.lock);
		h->o->opens--;
		pthread_mutex_unlock(&H.lock);
	}
	fh_free(h);
	return 0;
}

static int
history_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	const char *name;
	int kind = parse_path(path, &name), r = -EPERM;
	struct hobj *o;
	if (kind != 2)
		return kind == 3 ? -EACCES : -EPERM;
	/* A new object with nothing in it: truncating to 0 changes nothing
	 * (shells and cp do this after create). */
	pthread_mutex_lock(&H.lock);
	o = obj_find_locked(name);
	if (o && o->nrec == 0 && !o->bad && o->opens > 0 && size == 0)
		r = 0;
	pthread_mutex_unlock(&H.lock);
	/* Truncating a writer to its own end changes nothing either
	 * (rsync --inplace does it after writing). */
	if (r != 0 && fi != NULL) {
		struct hfh *h = (struct hfh *)(uintptr_t)fi->fh;
		if (h != NULL && h->kind == FH_WRITE) {
			pthread_mutex_lock(&h->mu);
			pthread_mutex_lock(&H.lock);
			if ((uint64_t)size == h->o->content_len + h->pending)
				r = 0;
			pthread_mutex_unlock(&H.lock);
			pthread_mutex_unlock(&h->mu);
		}
	}
	return r;
}

static int
history_unlink(const char *path)
{
	return -EPERM;
}

static int
history_rename(const char *from, const char *to, unsigned int flags)
{
	return -EPERM;
}

static int
history_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	return -EPERM;
}

static int
history_getxattr(const char *path, const char *name, char *value, size_t size)
{
	const char *obj;
	int kind = parse_path(path, &obj), r;
	struct hobj *o;
	char text[600];

	if (kind != 2 || strcmp(name, XATTR_VERIFY) != 0)
		return -ENODATA;
	pthread_mutex_lock(&H.lock);
	o = obj_find_locked(obj);
	r = o && (o->nrec > 0 || o->bad) ? 0 : -ENODATA;
	pthread_mutex_unlock(&H.lock);
	if (r != 0)
		return r;
	r = obj_check(o);
	pthread_mutex_lock(&H.lock);
	if (r == 0 && o->signer >= 0 && (size_t)o->signer < H.nvkeys) {
		char dn[400] = "";
		X509 *c = H.vcerts[o->signer];
		BIO *b = BIO_new(BIO_s_mem());
		if (b && c) {
			int n;
			X509_NAME_print_ex(b, X509_get_subject_name(c), 0, XN_FLAG_RFC2253);
			n = BIO_read(b, dn, sizeof(dn) - 1);
			dn[n > 0 ? n : 0] = '\0';
		}
		BIO_free(b);
		snprintf(text, sizeof(text), "valid records=%" PRIu64 " signer=%s",
		    o->nrec, dn);
	} else if (r == 0) {
		snprintf(text, sizeof(text), "valid records=%" PRIu64, o->nrec);
	} else {
		snprintf(text, sizeof(text), "invalid: %s",
		    o->bad ? o->bad : err_detail());
	}
	pthread_mutex_unlock(&H.lock);
	return fs_xattr_reply(text, strlen(text), value, size);
}

static int
history_listxattr(const char *path, char *list, size_t size)
{
	const char *obj;
	if (parse_path(path, &obj) != 2)
		return 0;
	return fs_xattr_reply(XATTR_VERIFY, sizeof(XATTR_VERIFY), list, size);
}

static int
history_setxattr(const char *path, const char *name, const char *value,
    size_t size, int flags)
{
	return -EPERM;
}

static int
history_removexattr(const char *path, const char *name)
{
	return -EPERM;
}

const struct folder_ops history_folder = {
	.name = "history",
	.start = history_start,
	.stop = history_stop,
	.reload_prepare = history_reload_prepare,
	.reload_finish = history_reload_finish,
	.status = history_status,
	.metrics = history_metrics,
	.getattr = history_getattr,
	.readdir = history_readdir,
	.open = history_open,
	.create = history_create,
	.read = history_read,
	.write = history_write,
	.flush = history_flush,
	.fsync = history_fsync,
	.release = history_release,
	.truncate = history_truncate,
	.unlink = history_unlink,
	.rename = history_rename,
	.chmod = history_chmod,
	.getxattr = history_getxattr,
	.setxattr = history_setxattr,
	.listxattr = history_listxattr,
	.removexattr = history_removexattr,
};
