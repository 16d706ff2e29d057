/* /history: append-only signed object histories (contract §5). Owns the
 * in-memory object table, the per-open record buffers, the group
 * committer thread (frames -> fdatasync -> signed checkpoints -> index and
 * anchor -> wake writers), mount-time recovery and the .journal view.
 * Formats are crypto/tlog.c; layout and verification store/history_store.c;
 * the committer is fs/history_commit.c, start-up fs/history_start.c. */
#include "fs/history_int.h"
#include "fs/fs.h"
#include "store/history.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "crypto/tlog.h"
#include "fs/temp.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/bio.h>
#include <openssl/x509.h>

enum { FH_WRITE = 1, FH_READ, FH_JOURNAL };

struct hfh {
	int kind;
	struct hobj *o;
	pthread_mutex_t mu;
	/* FH_WRITE: data since the last commit */
	int append;
	uint8_t *buf;
	size_t len, cap;
	struct hstore_spool *spool;  /* a large record, or NULL */
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


struct history_state H = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.queue_cv = PTHREAD_COND_INITIALIZER,
	.slot_cv = PTHREAD_COND_INITIALIZER,
	.idle_cv = PTHREAD_COND_INITIALIZER,
	.shared_mu = PTHREAD_MUTEX_INITIALIZER };

/* ---- object table ---- */

static unsigned
name_hash(const char *s)
{
	unsigned h = 5381;
	while (*s)
		h = h * 33 + (unsigned char)*s++;
	return h % NBUCKETS;
}

struct hobj *
obj_find_locked(const char *name)
{
	for (struct hobj *o = H.buckets[name_hash(name)]; o; o = o->next)
		if (strcmp(o->name, name) == 0)
			return o;
	return NULL;
}

struct hobj *
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
	o->so = NULL;
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
void
obj_pend_reset_locked(struct hobj *o)
{
	o->pend.tree = o->tree;
	o->pend.nrec = o->nrec;
	o->pend.file_len = o->file_len;
	o->pend.content_len = o->content_len;
	o->pend.last_time = o->nrec ? o->recs[o->nrec - 1].time_us : 0;
}

int
obj_visible_locked(const struct hobj *o)
{
	return o->nrec > 0 || o->bad != NULL || o->opens > 0;
}

void
obj_set_bad_locked(struct hobj *o, const char *why)
{
	if (o->bad == NULL || strcmp(o->bad, why) != 0) {
		free(o->bad);
		o->bad = strdup(why);
		log_err("history/%s: verification failed: %s", o->name, why);
	}
	o->stamp_ok = 0;
}

int
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

void
origin_of(const char *name, char *out, size_t outlen)
{
	snprintf(out, outlen, "%s%s", hstore_prefix(H.hs), name);
}

static void
history_status(FILE *out)
{
	pthread_mutex_lock(&H.lock);
	/* Shared: the objects this node has loaded (the cluster's are in the
	 * database); catch-ups: reloads after other nodes' records. */
	fprintf(out, "history.store: %s\n", H.shared ? "shared" : "directory");
	fprintf(out, "history.objects: %" PRIu64 "\n", H.nobjects);
	if (H.shared)
		fprintf(out, "history.catchups: %" PRIu64 "\n", H.catchups);
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
	fprintf(out, "history.anchor: %s\n", H.hs && hstore_anchor(H.hs) ?
	    hstore_anchor(H.hs) : "none");
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
	metrics_add(m, METRIC_COUNTER, "hsmfs_history_catchups_total",
	    "Objects reloaded from the shared store after other nodes appended",
	    (double)H.catchups, (char *)NULL);
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

/* Shared store: name as the database has it now (loaded if another node
 * created it, reloaded if it appended). 0 or -errno. */
static int
sync_errno(const char *name)
{
	int r = obj_sync_shared(name);
	if (r == 0)
		return 0;
	fs_log_fail("history", name, NULL, "reading the shared store", r);
	return -hsmfs_err_errno(r);
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
	if ((r = sync_errno(name)) != 0)
		return r;
	r = -ENOENT;
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

struct fill_ctx {
	void *buf;
	fuse_fill_dir_t fill;
};

static int
fill_one(const char *name, void *arg)
{
	struct fill_ctx *f = arg;
	f->fill(f->buf, name, NULL, 0, 0);
	return 0;
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
	if (H.shared) {
		/* The cluster's objects, and this node's new ones being written. */
		struct fill_ctx fc = { buf, fill };
		int r = hstore_list_objects(H.hs, fill_one, &fc);
		if (r != 0) {
			fs_log_fail("history", "", NULL, "listing the shared store", r);
			return -hsmfs_err_errno(r);
		}
		pthread_mutex_lock(&H.lock);
		for (unsigned b = 0; b < NBUCKETS; b++)
			for (struct hobj *o = H.buckets[b]; o; o = o->next)
				if (o->nrec == 0 && (o->bad || (kind == 0 && o->opens > 0)))
					fill(buf, o->name, NULL, 0, 0);
		pthread_mutex_unlock(&H.lock);
		return 0;
	}
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
	h->spool = NULL;
	pthread_mutex_init(&h->mu, NULL);
	return h;
}

static void
fh_free(struct hfh *h)
{
	if (h == NULL)
		return;
	free(h->buf);
	hstore_spool_close(h->spool);
	free(h->text);
	pthread_mutex_destroy(&h->mu);
	free(h);
}

static int
verify_errno(struct hobj *o)
{
	int r = obj_check(o);
	if (r == 0 || r == HSMFS_ERR_BADMSG)
		return -hsmfs_err_errno(r);
	fs_log_fail("history", o->name, NULL, "verifying", r);
	return -hsmfs_err_errno(r);
}

/* Common open of an object for writing (existing or new). */
static int
open_object(const char *name, struct fuse_file_info *fi, int creating)
{
	int acc = fi->flags & O_ACCMODE, r, known;
	struct hobj *o;
	struct hfh *h;

	/* An append to an object this node has records of needs nothing
	 * fresher (the committer catches up under the row lock, and O_TRUNC
	 * and O_EXCL are refused whatever the database adds); anything else
	 * asks the database first. */
	pthread_mutex_lock(&H.lock);
	o = obj_find_locked(name);
	known = o != NULL && o->nrec > 0 && o->bad == NULL;
	pthread_mutex_unlock(&H.lock);
	if ((acc != O_WRONLY || !known) && (r = sync_errno(name)) != 0)
		return r;
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
	if ((r = sync_errno(name)) != 0)
		return r;
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
		struct hstore_obj *so;

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
		so = h->o->so;
		pthread_mutex_unlock(&H.lock);
		if (take == 0)
			break;
		n = hstore_obj_read(so, buf + done, take, foff);
		if (n <= 0)
			return done > 0 ? (int)done : -EIO;
		done += (size_t)n;
	}
	return (int)done;
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
	if (h->pending + size + TLOG_LEAF_HDR > hstore_leaf_max(H.hs)) {
		if (H.shared)
			log_err("history/%s: record refused: larger than the shared "
			    "store's %llu MiB per record", h->o->name,
			    (unsigned long long)(HSTORE_SHARED_LEAF_MAX >> 20));
		r = -EFBIG;
		goto out;
	}
	if (h->spool == NULL && h->len + size > SPOOL_AFTER) {
		/* A spool in the store (not the sign-out/verify-in spool of
		 * fs/spool.h). */
		int e = hstore_spool_open(H.hs, &h->spool);
		if (e == 0 && (e = hstore_spool_write(h->spool, h->buf,
		    h->len)) != 0) {
			hstore_spool_close(h->spool);
			h->spool = NULL;
		}
		if (e != 0) {
			r = -hsmfs_err_errno(e);
			goto out;
		}
		free(h->buf);
		h->buf = NULL;
		h->len = h->cap = 0;
	}
	if (h->spool != NULL) {
		int e = hstore_spool_write(h->spool, buf, size);
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
		r = hsmfs_errno_err(-h->werr);   /* for the log line's text */
		h->werr = 0;
	} else {
		r = commit_record(h->o, h->buf, h->spool, h->pending, h->uid);
	}
	/* Committed or not, this data is done with: a failed record was
	 * never acknowledged, and close() reports the failure. */
	free(h->buf);
	h->buf = NULL;
	h->len = h->cap = 0;
	hstore_spool_close(h->spool);
	h->spool = NULL;
	h->pending = 0;
	pthread_mutex_unlock(&h->mu);
	if (r != 0) {
		fs_log_fail("history", h->o->name, H.signer ? keyring_key_name(H.signer)
		    : NULL, "record not committed", r);
		return -hsmfs_err_errno(r);
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
	if ((r = sync_errno(obj)) != 0)
		return r;
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

