/* The history area on PostgreSQL (store/history_pg.h; contract §9,
 * docs/scale.md): one history per object for every node of a cluster.
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
#include <openssl/rand.h>

#define FETCH_ROWS 256          /* rows per statement when filling a cache */
#define FETCH_BYTES (32 << 20)  /* not 256 rows of 16 MiB in one result */
#define INSERT_ROWS 100         /* rows per INSERT statement */

struct hpg {
	struct pg *pg;
	int cachedir;               /* -1: memory files */
};

struct hpg_obj {
	struct hpg *p;
	char name[256];
	pthread_mutex_t mu;         /* the cache's end (n, bytes) */
	int fd;                     /* cache of committed frames */
	uint64_t n;
	off_t bytes;
	struct tlog_tree tree;      /* of the cache's n records */
	char last_id[37];           /* record_id of its last row */
};

/* An object of a batch: where its committed frames ended when locked,
 * its frontier then, and the frames framed after it. */
struct bobj {
	struct hpg_obj *o;
	uint64_t n0;
	off_t b0;
	struct tlog_tree tree;
	uint8_t *buf;
	size_t len, cap;
	int aborted;
	int done;                   /* its rows went into the transaction */
	char last_id[37];           /* record_id of its last row */
};

struct hpg_batch {
	struct hpg *p;
	struct pg_conn *c;
	int open;                   /* a transaction is open on c */
	struct bobj *v;
	size_t n, cap;
	char rid[40];               /* first record's id ("" until known) */
	char rid_obj[256];
};

static uint64_t
be64(const char *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | (uint8_t)p[i];
	return v;
}

static void
uuid_text(char out[37])
{
	uint8_t u[16];
	if (RAND_bytes(u, sizeof(u)) != 1) {
		/* RAND_bytes fails only without entropy: never reuse an id. */
		static uint64_t ctr;
		uint64_t t = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
		t += __atomic_add_fetch(&ctr, 1, __ATOMIC_RELAXED);
		memcpy(u, &t, 8);
		memcpy(u + 8, &ctr, 8);
	}
	u[6] = (uint8_t)((u[6] & 0x0f) | 0x40);   /* version 4 */
	u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);   /* RFC 4122 variant */
	snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
	    "%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2], u[3], u[4], u[5],
	    u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

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
			uint64_t seq = be64(PQgetvalue(res, i, 0));
			uint64_t off = be64(PQgetvalue(res, i, 1));
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

/* ---- batches ---- */

int
hpg_batch_begin(struct hpg *p, struct hpg_batch **out)
{
	struct hpg_batch *b;
	int r;

	*out = NULL;
	if ((b = calloc(1, sizeof(*b))) == NULL)
		return HSMFS_ERR_NOMEM;
	b->p = p;
	if ((r = pg_acquire(p->pg, &b->c)) != 0) {
		free(b);
		return r;
	}
	if ((r = pg_begin(b->c)) != 0) {
		pg_release(p->pg, b->c);
		free(b);
		return r;
	}
	b->open = 1;
	*out = b;
	return 0;
}

static struct bobj *
bobj_of(struct hpg_batch *b, const struct hpg_obj *o)
{
	for (size_t i = 0; i < b->n; i++)
		if (b->v[i].o == o)
			return &b->v[i];
	return NULL;
}

/* The frontier column: the tree of size leaves' right edge. */
static int
frontier_decode(const char *name, uint64_t size, const char *f, size_t len,
    struct tlog_tree *t)
{
	unsigned n = (unsigned)__builtin_popcountll(size);
	tlog_tree_init(t);
	if (len != (size_t)n * TLOG_HASH_LEN) {
		err_set("%s: the frontier in the database does not fit its size "
		    "%" PRIu64, name, size);
		return HSMFS_ERR_BADMSG;
	}
	t->size = size;
	t->n = n;
	for (unsigned i = 0; i < n; i++)
		memcpy(t->edge[i], f + (size_t)i * TLOG_HASH_LEN, TLOG_HASH_LEN);
	return 0;
}

/* A text[] literal of the names: {"a","b"} with " and \ escaped. */
static char *
names_array(struct hpg_obj *const *obs, size_t n)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (f == NULL)
		return NULL;
	fputc('{', f);
	for (size_t i = 0; i < n; i++) {
		fputs(i ? ",\"" : "\"", f);
		for (const char *c = obs[i]->name; *c; c++) {
			if (*c == '"' || *c == '\\')
				fputc('\\', f);
			fputc(*c, f);
		}
		fputc('"', f);
	}
	fputc('}', f);
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	return buf;
}

int
hpg_batch_lock(struct hpg_batch *b, struct hpg_obj *const *obs, size_t n,
    uint64_t *nrec, off_t *bytes)
{
	PGresult *res = NULL;
	const char *v[1];
	char *names;
	int r = 0, rows;

	if (b->n != 0) {
		err_set("history: a batch locks its objects once");
		return HSMFS_ERR_INVALID;
	}
	if (n == 0)
		return 0;
	if ((b->v = calloc(n, sizeof(*b->v))) == NULL ||
	    (names = names_array(obs, n)) == NULL)
		return HSMFS_ERR_NOMEM;
	b->cap = n;
	v[0] = names;
	/* New objects' rows first, then every lock, both in name order: two
	 * nodes' batches never wait for each other in a cycle. */
	if ((r = pg_exec(b->c, "INSERT INTO hsmfs_history_objects (name) SELECT "
	    "x FROM unnest($1::text[]) AS x ORDER BY x ON CONFLICT (name) DO "
	    "NOTHING", 1, v, NULL, NULL, 0, NULL)) != 0 ||
	    (r = pg_exec(b->c, "SELECT name, size, bytes, frontier FROM "
	    "hsmfs_history_objects WHERE name = ANY ($1::text[]) ORDER BY name "
	    "FOR UPDATE", 1, v, NULL, NULL, 1, &res)) != 0) {
		free(names);
		return r;
	}
	free(names);
	rows = PQntuples(res);
	for (size_t i = 0; i < n && r == 0; i++) {
		struct bobj *x = &b->v[i];
		int k;
		for (k = 0; k < rows && strcmp(PQgetvalue(res, k, 0), obs[i]->name); k++)
			;
		if (k == rows) {
			err_set("%s: the object's row vanished", obs[i]->name);
			r = HSMFS_ERR_IO;
			break;
		}
		x->o = obs[i];
		x->n0 = be64(PQgetvalue(res, k, 1));
		x->b0 = (off_t)be64(PQgetvalue(res, k, 2));
		r = frontier_decode(obs[i]->name, x->n0, PQgetvalue(res, k, 3),
		    (size_t)PQgetlength(res, k, 3), &x->tree);
		nrec[i] = x->n0;
		bytes[i] = x->b0;
		b->n = i + 1;
	}
	PQclear(res);
	return r;
}

int
hpg_batch_frame(struct hpg_batch *b, struct hpg_obj *o, off_t off,
    const struct iovec *iov, int n)
{
	struct bobj *x = bobj_of(b, o);
	size_t add = 0;
	int same = 1;

	if (x == NULL || off != x->b0 + (off_t)x->len) {
		err_set("%s: frames at %lld do not follow the locked end",
		    o->name, (long long)off);
		return HSMFS_ERR_INVALID;
	}
	/* A rewritten frontier fails this object here, not the batch at commit. */
	pthread_mutex_lock(&o->mu);
	if (x->len == 0 && o->n == x->n0 && o->bytes == x->b0)
		same = o->tree.size == x->tree.size && o->tree.n == x->tree.n &&
		    memcmp(o->tree.edge, x->tree.edge,
		    (size_t)x->tree.n * TLOG_HASH_LEN) == 0;
	pthread_mutex_unlock(&o->mu);
	if (!same) {
		err_set("%s: the frontier in the database does not match the "
		    "object's records (the object's row was rewritten)", o->name);
		return HSMFS_ERR_BADMSG;
	}
	for (int i = 0; i < n; i++)
		add += iov[i].iov_len;
	if (x->len + add > x->cap) {
		size_t nc = x->cap ? x->cap : 4096;
		uint8_t *p;
		while (nc < x->len + add)
			nc *= 2;
		if ((p = realloc(x->buf, nc)) == NULL)
			return HSMFS_ERR_NOMEM;
		x->buf = p;
		x->cap = nc;
	}
	for (int i = 0; i < n; i++) {
		memcpy(x->buf + x->len, iov[i].iov_base, iov[i].iov_len);
		x->len += iov[i].iov_len;
	}
	return 0;
}

void
hpg_batch_abort(struct hpg_batch *b, struct hpg_obj *o)
{
	for (size_t i = 0; i < b->n; i++)
		if (o == NULL || b->v[i].o == o) {
			b->v[i].aborted = 1;
			b->v[i].len = 0;
		}
}

/* One frame of x's buffer at *pos: its leaf, after checking its index
 * and hash (the rows hold leaves; a frame is rebuilt from its leaf). */
static int
next_frame(struct bobj *x, size_t *pos, uint64_t seq, const uint8_t **leaf,
    size_t *len, const uint8_t **leaf_hash)
{
	const uint8_t *p = x->buf + *pos;
	uint8_t want[TLOG_FRAME_HDR], hash[TLOG_HASH_LEN];
	uint32_t l;

	if (x->len - *pos < TLOG_FRAME_OVERHEAD)
		goto bad;
	l = (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 | (uint32_t)p[6] << 8 | p[7];
	if (x->len - *pos - TLOG_FRAME_OVERHEAD < l)
		goto bad;
	tlog_frame_header(seq, l, want);
	tlog_leaf_hash(p + TLOG_FRAME_HDR, l, hash);
	if (memcmp(p, want, sizeof(want)) != 0 ||
	    memcmp(p + TLOG_FRAME_HDR + l, hash, TLOG_HASH_LEN) != 0)
		goto bad;
	*leaf = p + TLOG_FRAME_HDR;
	*len = l;
	*leaf_hash = p + TLOG_FRAME_HDR + l;
	*pos += TLOG_FRAME_OVERHEAD + l;
	return 0;
bad:
	err_set("%s: frame %" PRIu64 " of the batch is malformed", x->o->name, seq);
	return HSMFS_ERR_INVALID;
}

/* One statement's rows: up to INSERT_ROWS frames of an object, and, for
 * the object's last statement, its checkpoint and new state. */
enum { P = 4, NP = 1 + P * INSERT_ROWS + 4 };
struct rows {
	const char *v[NP];
	int lens[NP], fmts[NP], np;
	char nums[INSERT_ROWS][2][24], ids[INSERT_ROWS][37];
	char size[24], bytes[24];
	uint8_t frontier[64 * TLOG_HASH_LEN];
};

static int
param(struct rows *w, const void *p, int len, int binary)
{
	w->v[w->np] = p;
	w->lens[w->np] = len;
	w->fmts[w->np] = binary;
	return ++w->np;     /* its $n */
}

/* The rows of x's frames from *pos (record *seq, frame offset *off), at
 * most INSERT_ROWS, as a VALUES list into f; the batch's first record id
 * is kept for an unknown outcome. */
static int
rows_of(struct hpg_batch *b, struct bobj *x, struct rows *w, FILE *f,
    size_t *pos, uint64_t *seq, off_t *off)
{
	for (int k = 0; *pos < x->len && k < INSERT_ROWS; k++) {
		const uint8_t *leaf, *hash;
		size_t len;
		int r, a, c, d, e;
		if ((r = next_frame(x, pos, *seq, &leaf, &len, &hash)) != 0)
			return r;
		snprintf(w->nums[k][0], 24, "%" PRIu64, *seq);
		snprintf(w->nums[k][1], 24, "%lld", (long long)*off);
		uuid_text(w->ids[k]);
		memcpy(x->last_id, w->ids[k], sizeof(x->last_id));
		if (b->rid[0] == '\0') {
			memcpy(b->rid, w->ids[k], 37);
			snprintf(b->rid_obj, sizeof(b->rid_obj), "%s", x->o->name);
		}
		a = param(w, w->nums[k][0], 0, 0);
		c = param(w, w->nums[k][1], 0, 0);
		d = param(w, w->ids[k], 0, 0);
		e = param(w, leaf, (int)len, 1);
		fprintf(f, "%s($1, $%d, $%d, $%d, $%d)", k ? ", " : "", a, c, d, e);
		tlog_tree_append(&x->tree, hash);
		(*seq)++;
		*off += (off_t)(TLOG_FRAME_OVERHEAD + len);
	}
	return 0;
}

/* x's rows, its checkpoint and its new state, after checking that the
 * frames extend the locked tree to exactly the signed size and root: one
 * statement (data-modifying CTEs) for up to INSERT_ROWS records, plain
 * INSERTs of INSERT_ROWS rows before it for more. */
static int
commit_object(struct hpg_batch *b, struct bobj *x,
    const struct tlog_checkpoint *cp)
{
	uint8_t root[TLOG_HASH_LEN];
	uint64_t seq = x->n0;
	off_t off = x->b0;
	size_t pos = 0;
	struct rows *w;
	int r = 0;

	if (x->aborted || x->done) {
		err_set("%s: a checkpoint for frames that are not in the batch",
		    x->o->name);
		return HSMFS_ERR_INVALID;
	}
	if ((w = malloc(sizeof(*w))) == NULL)
		return HSMFS_ERR_NOMEM;
	for (;;) {
		char *vals = NULL, *sql = NULL;
		size_t vl = 0;
		FILE *f = open_memstream(&vals, &vl);
		int last, nm, ns, nc, nb, nf;

		w->np = 0;
		param(w, x->o->name, 0, 0);
		if (f == NULL) {
			r = HSMFS_ERR_NOMEM;
			break;
		}
		r = rows_of(b, x, w, f, &pos, &seq, &off);
		if (fclose(f) != 0 && r == 0)
			r = HSMFS_ERR_NOMEM;
		last = pos >= x->len;
		if (r == 0 && !last) {
			if (asprintf(&sql, "INSERT INTO hsmfs_history_records (object, "
			    "seq, off, record_id, leaf) VALUES %s", vals) < 0)
				r = HSMFS_ERR_NOMEM;
			else
				r = pg_exec(b->c, sql, w->np, w->v, w->lens, w->fmts, 0,
				    NULL);
			free(sql);
			free(vals);
			if (r != 0)
				break;
			continue;
		}
		if (r == 0) {
			tlog_tree_root(&x->tree, root);
			if (cp->size != x->tree.size) {
				err_set("%s: the checkpoint (size %" PRIu64 ") does not "
				    "sign the records framed after the locked end (size %"
				    PRIu64 ")", x->o->name, cp->size, x->tree.size);
				r = HSMFS_ERR_INVALID;
			} else if (memcmp(cp->root, root, TLOG_HASH_LEN) != 0) {
				/* The node signed its verified records' root: the
				 * frontier was rewritten. */
				err_set("%s: the frontier in the database does not extend "
				    "the verified records to the signed root (the "
				    "object's row was rewritten)", x->o->name);
				r = HSMFS_ERR_BADMSG;
			}
		}
		if (r != 0) {
			free(vals);
			break;
		}
		for (unsigned i = 0; i < x->tree.n; i++)
			memcpy(w->frontier + (size_t)i * TLOG_HASH_LEN, x->tree.edge[i],
			    TLOG_HASH_LEN);
		snprintf(w->size, sizeof(w->size), "%" PRIu64, cp->size);
		snprintf(w->bytes, sizeof(w->bytes), "%lld", (long long)off);
		ns = param(w, w->size, 0, 0);
		nc = param(w, cp->text, (int)cp->text_len, 1);
		nb = param(w, w->bytes, 0, 0);
		nf = param(w, w->frontier, (int)(x->tree.n * TLOG_HASH_LEN), 1);
		nm = vl > 0 ? 1 : 0;
		if (asprintf(&sql, "WITH %s%s%sc AS (INSERT INTO hsmfs_checkpoints "
		    "(object, size, checkpoint) VALUES ($1, $%d::bigint, $%d)) "
		    "UPDATE hsmfs_history_objects SET size = $%d::bigint, bytes = "
		    "$%d::bigint, frontier = $%d, checkpoint = $%d, updated = "
		    "clock_timestamp() WHERE name = $1",
		    nm ? "r AS (INSERT INTO hsmfs_history_records (object, seq, "
		    "off, record_id, leaf) VALUES " : "", nm ? vals : "",
		    nm ? "), " : "", ns, nc, ns, nb, nf, nc) < 0)
			r = HSMFS_ERR_NOMEM;
		else
			r = pg_exec(b->c, sql, w->np, w->v, w->lens, w->fmts, 0, NULL);
		free(sql);
		free(vals);
		if (r == 0)
			x->done = 1;
		break;
	}
	free(w);
	return r;
}

/* The connection died during COMMIT: did it commit? A new connection
 * locks the object's row, so a transaction the server still runs ends
 * first (commits or rolls back), then looks the first record up. */
static int
resolve_unknown(struct hpg_batch *b)
{
	struct pg_conn *c;
	PGresult *res = NULL;
	const char *o[1] = { b->rid_obj }, *v[1] = { b->rid };
	int r, found;

	if (b->rid[0] == '\0') {
		err_set("database: connection lost during COMMIT");
		return HSMFS_ERR_IO;
	}
	if ((r = pg_acquire(b->p->pg, &c)) != 0)
		goto unknown;
	if ((r = pg_begin(c)) != 0) {
		pg_release(b->p->pg, c);
		goto unknown;
	}
	if ((r = pg_exec(c, "SELECT 1 FROM hsmfs_history_objects WHERE name = $1 "
	    "FOR UPDATE", 1, o, NULL, NULL, 0, NULL)) != 0 ||
	    (r = pg_exec(c, "SELECT 1 FROM hsmfs_history_records WHERE record_id "
	    "= $1", 1, v, NULL, NULL, 0, &res)) != 0) {
		pg_rollback(c);
		pg_release(b->p->pg, c);
		goto unknown;
	}
	found = PQntuples(res) == 1;
	PQclear(res);
	pg_rollback(c);
	pg_release(b->p->pg, c);
	if (found) {
		log_warn("history: connection lost during COMMIT; record %s is in "
		    "the database: the batch committed", b->rid);
		return 0;
	}
	log_warn("history: connection lost during COMMIT; record %s is not in "
	    "the database: the batch did not commit", b->rid);
	err_set("database: connection lost during COMMIT; the records were not "
	    "committed");
	return HSMFS_ERR_IO;
unknown:
	err_set("database: connection lost during COMMIT and the outcome cannot "
	    "be read back (%s); the records are not acknowledged", err_detail());
	return HSMFS_ERR_IO;
}

/* After COMMIT: this batch's frames join each object's cache when the
 * cache ends where the batch began (else the next read fetches them). */
static void
cache_publish(struct hpg_batch *b)
{
	for (size_t i = 0; i < b->n; i++) {
		struct bobj *x = &b->v[i];
		struct hpg_obj *o = x->o;
		uint64_t frames = x->tree.size - x->n0;
		if (!x->done || x->len == 0)
			continue;
		pthread_mutex_lock(&o->mu);
		if (o->n == x->n0 && o->bytes == x->b0) {
			/* On failure the cache still ends at o->bytes: the rows
			 * are fetched there at the next read. */
			if (util_pwrite_all(o->fd, x->buf, x->len, o->bytes) == 0) {
				o->n += frames;
				o->bytes += (off_t)x->len;
				o->tree = x->tree;
				memcpy(o->last_id, x->last_id, sizeof(o->last_id));
			}
		}
		pthread_mutex_unlock(&o->mu);
	}
}

int
hpg_batch_commit(struct hpg_batch *b, const char *prefix, const char *notes,
    size_t len)
{
	size_t pos = 0, pl = strlen(prefix);
	int r = 0, unknown = 0;

	if (!b->open) {
		err_set("database: the batch's transaction is not open");
		return HSMFS_ERR_IO;
	}
	while (pos < len && r == 0) {
		struct tlog_checkpoint cp;
		size_t used = 0;
		struct bobj *x = NULL;
		memset(&cp, 0, sizeof(cp));
		if (tlog_checkpoint_parse(notes + pos, len - pos, &cp, &used) != 0) {
			r = HSMFS_ERR_INVALID;
			break;
		}
		pos += used;
		if (strncmp(cp.origin, prefix, pl) == 0)
			for (size_t i = 0; i < b->n && x == NULL; i++)
				if (strcmp(b->v[i].o->name, cp.origin + pl) == 0)
					x = &b->v[i];
		if (x == NULL) {
			err_set("checkpoint for %s: not an object of this batch",
			    cp.origin);
			r = HSMFS_ERR_INVALID;
		} else {
			r = commit_object(b, x, &cp);
		}
		tlog_checkpoint_clear(&cp);
	}
	if (r != 0) {
		pg_rollback(b->c);
		b->open = 0;
		return r;
	}
	r = pg_commit(b->c, &unknown);
	b->open = 0;
	if (r != 0 && unknown)
		r = resolve_unknown(b);
	if (r == 0)
		cache_publish(b);
	return r;
}

void
hpg_batch_end(struct hpg_batch *b)
{
	if (b == NULL)
		return;
	if (b->open)
		pg_rollback(b->c);
	pg_release(b->p->pg, b->c);
	for (size_t i = 0; i < b->n; i++)
		free(b->v[i].buf);
	free(b->v);
	free(b);
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
