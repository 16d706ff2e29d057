/* The history area on PostgreSQL (store/history_pg.h; contract §9,
 * docs/scale.md; batches in store/history_pg_batch.c): one history per
 * object for every node of a cluster.
 *
 * Tables (store/sql/schema.sql): hsmfs_history_objects has one row per
 * object (records `size`, frames' length `bytes`, the RFC 6962 frontier,
 * the newest checkpoint); hsmfs_history_records one row per record (its
 * leaf, and `off`, where its frame starts: a row is the directory
 * backend's frame, so the daemon's framing, reads and verification are
 * the same for both backends); hsmfs_checkpoints every signed checkpoint.
 * Both are append-only for the daemons (GRANTs and a trigger).
 *
 * A batch is one transaction. Its first act on an object is to lock the
 * object's row (FOR UPDATE; the caller locks objects in name order, so two
 * nodes never deadlock) and report where the committed frames end: the
 * caller brings its state of the object up to date if another node
 * appended meanwhile, then frames after it. The frames wait in memory
 * until commit, which checks them against the signed checkpoint (index
 * and hash of each frame, the size and root the frontier extends to),
 * inserts the rows, the checkpoint and the object's new state, and
 * COMMITs: nothing of a batch is visible before, all of it after. A
 * connection lost during COMMIT leaves the outcome unknown: a new
 * connection locks the object's row (waiting for the old transaction to
 * end, if the server still runs it) and looks the batch's first record up
 * by its id; the batch counts as committed only if it is there, and it is
 * never redone.
 *
 * Reads come from a node-local cache of each object's frames (an
 * unlinked file in STORE/history): rows are appended to it from the
 * database as they are needed and after this node's own commits. It
 * holds only committed frames and is verified like a directory store's
 * object file before anything is read from it. */
#include "store/history_pg.h"
#include "store/history_pg_int.h"
#include "store/pg.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "crypto/tlog.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define FETCH_ROWS 256          /* rows per statement when filling a cache */
#define FETCH_BYTES (32 << 20)  /* not 256 rows of 16 MiB in one result */

/* An unlinked file for a cache: in dir (node-local disk), else memory. */
static int
anon_file(int dir)
{
	int fd = -1;
	if (dir >= 0)
		fd = openat(dir, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0)
		fd = memfd_create("hsmfs-history", MFD_CLOEXEC);
	if (fd < 0) {
		err_set("history cache: %s", strerror(errno));
		return hsmfs_errno_err(errno);
	}
	return fd;
}

/* One statement on a pool connection. */
static int
exec1(struct hpg *p, const char *sql, int n, const char *const *v,
    int binary, PGresult **res)
{
	struct pg_conn *c;
	int r;
	if ((r = pg_acquire(p->pg, &c)) != 0)
		return r;
	r = pg_exec(c, sql, n, v, NULL, NULL, binary, res);
	pg_release(p->pg, c);
	return r;
}

static int
origin_prefix(struct hpg *p, char *prefix, size_t plen)
{
	PGresult *res = NULL;
	int r;
	if ((r = exec1(p, "SELECT origin FROM hsmfs_cluster", 0, NULL, 0,
	    &res)) != 0)
		return r;
	if (PQntuples(res) != 1) {
		PQclear(res);
		err_set("the database has no cluster row; run hsmfs-tool db-init");
		return HSMFS_ERR_CONFIG;
	}
	r = hstore_pg_origin_prefix(PQgetvalue(res, 0, 0), prefix,
	    plen < TLOG_ORIGIN_MAX - 256 ? plen : TLOG_ORIGIN_MAX - 256);
	PQclear(res);
	return r;
}

int
hpg_open(const struct store_conf *conf, int cachedir, char *prefix,
    size_t plen, struct hpg **out)
{
	struct hpg *p;
	int r;

	*out = NULL;
	if (conf->pg == NULL) {
		err_set("history: the shared store is not open");
		return HSMFS_ERR_CONFIG;
	}
	if ((p = calloc(1, sizeof(*p))) == NULL)
		return HSMFS_ERR_NOMEM;
	p->pg = conf->pg;
	p->cachedir = cachedir;
	if ((r = origin_prefix(p, prefix, plen)) != 0) {
		free(p);
		return r;
	}
	*out = p;
	return 0;
}

void
hpg_close(struct hpg *p)
{
	free(p);
}

int
hpg_load_notes(struct hpg *p, const char *prefix, hstore_note_cb cb, void *arg)
{
	PGresult *res = NULL;
	size_t pl = strlen(prefix);
	int r;

	if ((r = exec1(p, "SELECT name, checkpoint FROM hsmfs_history_objects "
	    "WHERE checkpoint IS NOT NULL ORDER BY name", 0, NULL, 1, &res)) != 0)
		return r;
	for (int i = 0; i < PQntuples(res) && r == 0; i++) {
		struct tlog_checkpoint cp;
		const char *name = PQgetvalue(res, i, 0);
		size_t used;
		memset(&cp, 0, sizeof(cp));
		if (tlog_checkpoint_parse(PQgetvalue(res, i, 1),
		    (size_t)PQgetlength(res, i, 1), &cp, &used) != 0) {
			err_set("the newest checkpoint of %s in the database does not "
			    "parse", name);
			r = HSMFS_ERR_BADMSG;
		} else if (strncmp(cp.origin, prefix, pl) != 0 ||
		    strcmp(cp.origin + pl, name) != 0) {
			err_set("the newest checkpoint of %s in the database names "
			    "%s", name, cp.origin);
			r = HSMFS_ERR_BADMSG;
		} else {
			r = cb(name, &cp, arg);
		}
		tlog_checkpoint_clear(&cp);
	}
	PQclear(res);
	return r;
}

int
hpg_list_objects(struct hpg *p, hstore_name_cb cb, void *arg)
{
	PGresult *res = NULL;
	int r;

	if ((r = exec1(p, "SELECT name FROM hsmfs_history_objects WHERE size > 0 "
	    "ORDER BY name", 0, NULL, 0, &res)) != 0)
		return r;
	for (int i = 0; i < PQntuples(res) && r == 0; i++)
		if (util_name_valid(PQgetvalue(res, i, 0)))
			r = cb(PQgetvalue(res, i, 0), arg);
	PQclear(res);
	return r;
}

/* The object's row as a stat (st_size: frames' length, st_blocks: records);
 * with o, also whether it contradicts o's cache (see below). */
static int
stat_row(struct hpg *p, const char *name, struct hpg_obj *o, struct stat *st)
{
	PGresult *res = NULL;
	struct pg_conn *c;
	char nb[24] = "-1", id[37] = "00000000-0000-0000-0000-000000000000";
	const char *v[3] = { name, nb, id };
	uint64_t us, h = 1469598103934665603u;
	int r;

	if (o != NULL) {
		pthread_mutex_lock(&o->mu);
		if (o->n > 0) {
			snprintf(nb, sizeof(nb), "%" PRIu64, o->n);
			memcpy(id, o->last_id, sizeof(id));
		}
		pthread_mutex_unlock(&o->mu);
	}
	/* A commit inserts the rows and the checkpoint and moves the row's
	 * size at once: rows at or after that size or the newest checkpoint's
	 * (one statement, one snapshot) were written outside a commit or the
	 * row rewritten (the daemon role can UPDATE it). */
	if ((r = pg_acquire(p->pg, &c)) != 0)
		return r;
	r = pg_exec(c, "SELECT bytes, size, (extract(epoch FROM updated) * "
	    "1000000)::bigint, EXISTS (SELECT 1 FROM hsmfs_history_records r "
	    "WHERE r.object = o.name AND r.seq >= LEAST(o.size, (SELECT "
	    "coalesce(max(c.size), 0) FROM hsmfs_checkpoints c WHERE c.object = "
	    "o.name))), o.size = $2::bigint "
	    "AND NOT EXISTS (SELECT 1 FROM hsmfs_history_records r WHERE "
	    "r.object = o.name AND r.seq = $2::bigint - 1 AND r.record_id = "
	    "$3::uuid) FROM hsmfs_history_objects o WHERE o.name = $1", 3, v,
	    NULL, NULL, 0, &res);
	pg_release(p->pg, c);
	if (r != 0)
		return r;
	if (PQntuples(res) != 1) {
		PQclear(res);
		err_set("%s: no such object", name);
		return HSMFS_ERR_NOTFOUND;
	}
	if (PQgetvalue(res, 0, 3)[0] == 't') {
		err_set("the database holds rows of %s after the %s records its "
		    "row counts or its newest checkpoint signs (written outside a "
		    "commit, or the row rewritten)", name, PQgetvalue(res, 0, 1));
		PQclear(res);
		return HSMFS_ERR_BADMSG;
	}
	/* As many rows as the cache, not ending with its last: another history. */
	if (PQgetvalue(res, 0, 4)[0] == 't') {
		err_set("the database's %s records of %s are not the ones this node "
		    "verified (rows replaced, or the database restored and "
		    "appended to)", PQgetvalue(res, 0, 1), name);
		PQclear(res);
		return HSMFS_ERR_BADMSG;
	}
	memset(st, 0, sizeof(*st));
	for (const unsigned char *s = (const unsigned char *)name; *s; s++)
		h = (h ^ *s) * 1099511628211u;
	st->st_ino = (ino_t)(h | 1);
	st->st_dev = 0x68737067;    /* "hspg": one device for the database */
	st->st_nlink = 1;
	st->st_mode = S_IFREG | 0600;
	st->st_size = (off_t)strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	st->st_blocks = (blkcnt_t)strtoll(PQgetvalue(res, 0, 1), NULL, 10);
	us = strtoull(PQgetvalue(res, 0, 2), NULL, 10);
	st->st_mtim.tv_sec = (time_t)(us / 1000000u);
	st->st_mtim.tv_nsec = (long)(us % 1000000u) * 1000;
	st->st_ctim = st->st_mtim;
	PQclear(res);
	return 0;
}

int
hpg_object_stat(struct hpg *p, const char *name, struct stat *st)
{
	return stat_row(p, name, NULL, st);
}

int
hpg_obj_open(struct hpg *p, const char *name, int create, struct hpg_obj **out)
{
	struct hpg_obj *o;
	int r;

	*out = NULL;
	if (strlen(name) >= sizeof(o->name)) {
		err_set("object name too long");
		return HSMFS_ERR_INVALID;
	}
	if (!create) {
		struct stat st;
		if ((r = hpg_object_stat(p, name, &st)) != 0)
			return r;
	}
	if ((o = calloc(1, sizeof(*o))) == NULL)
		return HSMFS_ERR_NOMEM;
	o->p = p;
	snprintf(o->name, sizeof(o->name), "%s", name);
	if ((o->fd = anon_file(p->cachedir)) < 0) {
		r = o->fd;
		free(o);
		return r;
	}
	tlog_tree_init(&o->tree);
	pthread_mutex_init(&o->mu, NULL);
	*out = o;
	return 0;
}

void
hpg_obj_close(struct hpg_obj *o)
{
	if (o == NULL)
		return;
	util_close_fd(&o->fd);
	pthread_mutex_destroy(&o->mu);
	free(o);
}

int
hpg_obj_stat(struct hpg_obj *o, struct stat *st)
{
	return stat_row(o->p, o->name, o, st);
}

/* Append one record's frame to the cache at its end. o->mu held. */
static int
cache_put(struct hpg_obj *o, uint64_t seq, const uint8_t *leaf, size_t len,
    const char *id, size_t idlen)
{
	uint8_t hdr[TLOG_FRAME_HDR], hash[TLOG_HASH_LEN];
	struct iovec iov[3] = { { hdr, sizeof(hdr) }, { (void *)leaf, len },
		{ hash, sizeof(hash) } };
	int r;

	tlog_frame_header(seq, (uint32_t)len, hdr);
	tlog_leaf_hash(leaf, len, hash);
	if ((r = util_pwritev_all(o->fd, iov, 3, o->bytes)) != 0)
		return r;
	tlog_tree_append(&o->tree, hash);
	snprintf(o->last_id, sizeof(o->last_id), "%.*s", (int)idlen, id);
	o->n++;
	o->bytes += (off_t)(TLOG_FRAME_OVERHEAD + len);
	return 0;
}

/* Bring the cache up to the committed rows. o->mu held. The cache only
 * grows (callers resume verification where it ended before: struct
 * hstore_check's from): rows that do not continue it -- rewritten, or a
 * database restored to an older state -- are a damaged history, never a
 * reason to refill it. */
static int
cache_sync_locked(struct hpg_obj *o)
{
	char nb[24], wb[24];
	const char *v[3] = { o->name, nb, wb };
	int r = 0;

	for (;;) {
		PGresult *res = NULL;
		off_t window = o->bytes + FETCH_BYTES;
		int rows;
		snprintf(nb, sizeof(nb), "%" PRIu64, o->n);
		snprintf(wb, sizeof(wb), "%lld", (long long)window);
		/* After the first row, only rows starting in the window. */
		if ((r = exec1(o->p, "SELECT seq, off, leaf, record_id::text FROM "
		    "hsmfs_history_records WHERE object = $1 AND seq >= $2 AND "
		    "(seq = $2 OR off < $3) ORDER BY seq LIMIT " "256", 3, v, 1,
		    &res)) != 0)
			return r;
		rows = PQntuples(res);
		for (int i = 0; i < rows && r == 0; i++) {
			uint64_t seq = (uint64_t)pg_get_i64(res, i, 0);
			uint64_t off = (uint64_t)pg_get_i64(res, i, 1);
			size_t len = (size_t)PQgetlength(res, i, 2);
			if (seq != o->n || off != (uint64_t)o->bytes ||
			    len < TLOG_LEAF_HDR || len > TLOG_LEAF_MAX) {
				err_set("record %" PRIu64 " in the database does not "
				    "continue the %" PRIu64 " records read before (rows "
				    "rewritten or the database rolled back)", seq, o->n);
				r = HSMFS_ERR_BADMSG;
				break;
			}
			r = cache_put(o, seq, (const uint8_t *)PQgetvalue(res, i, 2), len,
			    PQgetvalue(res, i, 3), (size_t)PQgetlength(res, i, 3));
		}
		PQclear(res);
		if (r != 0 || rows == 0 || (rows < FETCH_ROWS && o->bytes < window))
			return r;
	}
}

static int
cache_sync(struct hpg_obj *o)
{
	int r;
	pthread_mutex_lock(&o->mu);
	r = cache_sync_locked(o);
	pthread_mutex_unlock(&o->mu);
	return r;
}

ssize_t
hpg_obj_read(struct hpg_obj *o, void *buf, size_t len, off_t off)
{
	int r;
	pthread_mutex_lock(&o->mu);
	r = off + (off_t)len > o->bytes ? cache_sync_locked(o) : 0;
	pthread_mutex_unlock(&o->mu);
	if (r != 0)
		return r;
	for (;;) {
		ssize_t n = pread(o->fd, buf, len, off);
		if (n >= 0)
			return n;
		if (errno != EINTR) {
			err_set("history cache %s: %s", o->name, strerror(errno));
			return hsmfs_errno_err(errno);
		}
	}
}

int
hpg_obj_check(struct hpg_obj *o, struct hstore_check *c)
{
	int r;
	if ((r = cache_sync(o)) != 0) {
		if (r == HSMFS_ERR_BADMSG)
			snprintf(c->reason, sizeof(c->reason), "%s", err_detail());
		return r;
	}
	return hstore_check_object(o->fd, c);
}

int
hpg_obj_newest(struct hpg_obj *o, char **text, size_t *len)
{
	PGresult *res = NULL;
	const char *v[1] = { o->name };
	int r;

	*text = NULL;
	*len = 0;
	/* The row's checkpoint must be hsmfs_checkpoints' newest (a commit
	 * writes both; the daemon role can UPDATE only the row). */
	if ((r = exec1(o->p, "SELECT o.checkpoint, o.checkpoint IS NOT DISTINCT "
	    "FROM (SELECT c.checkpoint FROM hsmfs_checkpoints c WHERE c.object = "
	    "o.name ORDER BY c.size DESC LIMIT 1) FROM hsmfs_history_objects o "
	    "WHERE o.name = $1", 1, v, 1, &res)) != 0)
		return r;
	if (PQntuples(res) == 1 && (PQgetlength(res, 0, 1) != 1 ||
	    PQgetvalue(res, 0, 1)[0] != 1)) {
		PQclear(res);
		err_set("the checkpoint in the object's row is not its newest in "
		    "hsmfs_checkpoints (the row was rewritten)");
		return HSMFS_ERR_BADMSG;
	}
	if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
		size_t n = (size_t)PQgetlength(res, 0, 0);
		if ((*text = malloc(n + 1)) == NULL) {
			PQclear(res);
			return HSMFS_ERR_NOMEM;
		}
		memcpy(*text, PQgetvalue(res, 0, 0), n);
		(*text)[n] = '\0';
		*len = n;
	}
	PQclear(res);
	return 0;
}

/* ---- offline verification ---- */

int
hpg_verify_fetch(const struct store_conf *conf, const char *object,
    char *prefix, size_t plen, char **newest, size_t *newest_len, int *fd)
{
	struct hpg *p = NULL;
	struct hpg_obj *o = NULL;
	int r;

	*newest = NULL;
	*fd = -1;
	if ((r = hpg_open(conf, -1, prefix, plen, &p)) != 0)
		return r;
	/* The rows, then the newest checkpoint: it covers every committed row
	 * read, a row after it is a damaged history (hstore_verify_object). */
	if ((r = hpg_obj_open(p, object, 0, &o)) == 0 &&
	    (r = cache_sync(o)) == 0 &&
	    (r = hpg_obj_newest(o, newest, newest_len)) == 0) {
		*fd = o->fd;
		o->fd = -1;
	}
	hpg_obj_close(o);
	hpg_close(p);
	return r;
}
