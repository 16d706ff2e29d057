/* A local store's histories into the shared store (store/history_import.h):
 * the directory backend's frames read with crypto/tlog.h, rows written
 * and read back through store/pg.h. Only hsmfs-tool migrate-store calls
 * this (the daemon never moves histories). */
#include "store/history_import.h"
#include "store/pg.h"
#include "common/err.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Records per INSERT statement, and the leaf bytes a batch may hold
 * before it is sent anyway. */
#define ROWS 64
#define BATCH_BYTES ((size_t)4 << 20)
/* Records read back per SELECT by hstore_import_check_db (leaves may be
 * large: a bounded result). */
#define CHECK_ROWS 256
/* tlog_scan callback's "stop here, not an error". */
#define SCAN_STOP 1

/* ---- the local objects ---- */

int
hstore_import_list(int storefd, hstore_name_cb cb, void *arg)
{
	int fd, r;

	/* Not hstore_list_objects: that needs an open area, which would
	 * create one in a store that has none. */
	fd = openat(storefd, HSTORE_DIR "/" HSTORE_OBJECTS,
	    O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		err_set(HSTORE_DIR "/" HSTORE_OBJECTS ": %s", strerror(errno));
		return hsmfs_errno_err(errno);
	}
	r = hstore_list_dir(fd, cb, arg);
	close(fd);
	return r;
}

static int
reason(struct hstore_import *im, enum hstore_import_outcome o,
    const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(im->reason, sizeof(im->reason), fmt, ap);
	va_end(ap);
	im->outcome = o;
	return 0;
}

/* ---- the frames of the local object ---- */

struct leaf {
	uint64_t seq;
	off_t off;
	uint8_t *data;
	size_t len;
};

struct scan {
	int fd;
	uint64_t limit;             /* signed size: frames from here are not moved */
	struct tlog_tree tree;
	off_t end;
	struct pg_conn *c;          /* NULL: the first pass (tree only) */
	const char *object;
	struct leaf rows[ROWS];
	size_t nrows, bytes;
	int err;
};

static void
rows_free(struct scan *s)
{
	for (size_t i = 0; i < s->nrows; i++)
		free(s->rows[i].data);
	s->nrows = 0;
	s->bytes = 0;
}

/* One INSERT of the batch's rows. */
static int
rows_flush(struct scan *s)
{
	char sql[ROWS * 80 + 128], nums[ROWS][2][24];
	const char *v[1 + 3 * ROWS];
	int len[1 + 3 * ROWS], fmt[1 + 3 * ROWS], n = 1, r;
	size_t pos;

	if (s->nrows == 0)
		return 0;
	v[0] = s->object;
	len[0] = 0;
	fmt[0] = 0;
	pos = (size_t)snprintf(sql, sizeof(sql), "INSERT INTO "
	    "hsmfs_history_records (object, seq, off, record_id, leaf) VALUES ");
	for (size_t i = 0; i < s->nrows; i++) {
		snprintf(nums[i][0], sizeof(nums[i][0]), "%" PRIu64, s->rows[i].seq);
		snprintf(nums[i][1], sizeof(nums[i][1]), "%lld",
		    (long long)s->rows[i].off);
		pos += (size_t)snprintf(sql + pos, sizeof(sql) - pos,
		    "%s($1, $%d::bigint, $%d::bigint, gen_random_uuid(), $%d)",
		    i ? ", " : "", n + 1, n + 2, n + 3);
		v[n] = nums[i][0];
		v[n + 1] = nums[i][1];
		v[n + 2] = (const char *)s->rows[i].data;
		len[n] = len[n + 1] = 0;
		fmt[n] = fmt[n + 1] = 0;
		len[n + 2] = (int)s->rows[i].len;
		fmt[n + 2] = 1;
		n += 3;
	}
	r = pg_exec(s->c, sql, n, v, len, fmt, 0, NULL);
	rows_free(s);
	return r;
}

static int
scan_frame(const struct tlog_frame *f, void *arg)
{
	struct scan *s = arg;
	struct leaf *l;
	ssize_t got;

	if (f->index >= s->limit)
		return SCAN_STOP;
	tlog_tree_append(&s->tree, f->leaf_hash);
	s->end = f->end;
	if (s->c == NULL)
		return 0;
	l = &s->rows[s->nrows];
	l->seq = f->index;
	l->off = f->offset;
	l->len = (size_t)(f->end - f->offset) - TLOG_FRAME_OVERHEAD;
	if ((l->data = malloc(l->len ? l->len : 1)) == NULL)
		return s->err = HSMFS_ERR_NOMEM;
	for (size_t done = 0; done < l->len; done += (size_t)got) {
		got = pread(s->fd, l->data + done, l->len - done,
		    f->offset + TLOG_FRAME_HDR + (off_t)done);
		if (got < 0 && errno == EINTR) {
			got = 0;
			continue;
		}
		if (got <= 0) {
			err_set("history/%s: read: %s", s->object,
			    got < 0 ? strerror(errno) : "file shrank");
			free(l->data);
			return s->err = HSMFS_ERR_IO;
		}
	}
	s->nrows++;
	s->bytes += l->len;
	if (s->nrows == ROWS || s->bytes >= BATCH_BYTES)
		return s->err = rows_flush(s);
	return 0;
}

/* Frames 0..limit-1 of the object: their tree and end; with s->c, each
 * also inserted as a row. */
static int
scan_object(struct scan *s)
{
	const char *why = NULL;
	off_t bad;
	int r;

	tlog_tree_init(&s->tree);
	s->end = 0;
	s->err = 0;
	r = tlog_scan(s->fd, 0, 0, scan_frame, s, &bad, &why);
	if (r == SCAN_STOP)
		r = 0;
	if (r == 0 && s->err == 0 && s->c != NULL)
		r = rows_flush(s);
	rows_free(s);
	if (r == 0 && s->err != 0)
		r = s->err;
	if (r == 0 && s->tree.size != s->limit) {
		err_set("history/%s: %" PRIu64 " records read, %" PRIu64 " signed",
		    s->object, s->tree.size, s->limit);
		r = HSMFS_ERR_BADMSG;
	}
	return r;
}

/* ---- the database's side ---- */

/* The object in the database: *exists, its size, and whether it has a
 * checkpoint of size `size` with root `root` (*same). lock: FOR UPDATE
 * (inside the import's transaction). */
static int
db_state(struct pg_conn *c, const char *object, uint64_t size,
    const uint8_t root[TLOG_HASH_LEN], int lock, int *exists,
    uint64_t *dbsize, int *same)
{
	char sz[24];
	const char *v[2] = { object, sz };
	struct tlog_checkpoint cp;
	PGresult *res = NULL;
	size_t used;
	int r;

	*exists = *same = 0;
	*dbsize = 0;
	snprintf(sz, sizeof(sz), "%" PRIu64, size);
	if ((r = pg_exec(c, lock ? "SELECT size FROM hsmfs_history_objects WHERE "
	    "name = $1 FOR UPDATE" : "SELECT size FROM hsmfs_history_objects "
	    "WHERE name = $1", 1, v, NULL, NULL, 0, &res)) != 0)
		return r;
	if (PQntuples(res) == 1) {
		*exists = 1;
		*dbsize = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
	}
	PQclear(res);
	if (!*exists)
		return 0;
	if ((r = pg_exec(c, "SELECT checkpoint FROM hsmfs_checkpoints WHERE "
	    "object = $1 AND size = $2::bigint", 2, v, NULL, NULL, 1, &res)) != 0)
		return r;
	memset(&cp, 0, sizeof(cp));
	if (PQntuples(res) == 1 && tlog_checkpoint_parse(PQgetvalue(res, 0, 0),
	    (size_t)PQgetlength(res, 0, 0), &cp, &used) == 0)
		*same = cp.size == size && memcmp(cp.root, root, TLOG_HASH_LEN) == 0;
	tlog_checkpoint_clear(&cp);
	PQclear(res);
	return 0;
}

struct tx {
	const struct hstore_import_conf *ic;
	struct hstore_import *im;
	struct scan *s;
	const char *cp;
	size_t cplen;
};

/* Whether the database already has the object (CONFLICT or THERE, 1:
 * nothing to do), from db_state. */
static int
judge(struct hstore_import *im, int exists, uint64_t dbsize, int same)
{
	if (!exists || (dbsize == 0 && !same))
		return 0;
	im->db_records = dbsize;
	if (same) {
		im->outcome = HSTORE_IMPORT_THERE;
		return 1;
	}
	reason(im, HSTORE_IMPORT_CONFLICT, "the database holds another history "
	    "of that name (%" PRIu64 " records, no checkpoint of %" PRIu64
	    " records with the local root); left untouched", dbsize, im->records);
	return 1;
}

/* In one transaction: the object row, every record, the checkpoint. */
static int
import_tx(struct pg_conn *c, void *arg)
{
	struct tx *t = arg;
	struct hstore_import *im = t->im;
	char size[24], bytes[24];
	const char *v[5] = { im->object, size, bytes, NULL, t->cp };
	int len[5] = { 0, 0, 0, (int)(t->s->tree.n * TLOG_HASH_LEN),
		(int)t->cplen };
	int fmt[5] = { 0, 0, 0, 1, 1 };
	uint64_t dbsize;
	int exists, same, r;

	if ((r = db_state(c, im->object, im->records, im->root, 1, &exists,
	    &dbsize, &same)) != 0)
		return r;
	if (judge(im, exists, dbsize, same))
		return 1;
	snprintf(size, sizeof(size), "%" PRIu64, im->records);
	snprintf(bytes, sizeof(bytes), "%lld", (long long)im->bytes);
	v[3] = (const char *)t->s->tree.edge;
	/* An empty row of that name (no record yet) is taken over. */
	if ((r = pg_exec(c, "INSERT INTO hsmfs_history_objects (name, size, "
	    "bytes, frontier, checkpoint, updated) VALUES ($1, $2::bigint, "
	    "$3::bigint, $4, $5, now()) ON CONFLICT (name) DO UPDATE SET size = "
	    "EXCLUDED.size, bytes = EXCLUDED.bytes, frontier = EXCLUDED.frontier, "
	    "checkpoint = EXCLUDED.checkpoint, updated = now() WHERE "
	    "hsmfs_history_objects.size = 0", 5, v, len, fmt, 0, NULL)) != 0)
		return r;
	t->s->c = c;
	r = scan_object(t->s);
	t->s->c = NULL;
	if (r != 0)
		return r;
	/* Every parameter must be used (an unused one has no type). */
	v[2] = t->cp;
	len[2] = (int)t->cplen;
	fmt[2] = 1;
	return pg_exec(c, "INSERT INTO hsmfs_checkpoints (object, size, "
	    "checkpoint) VALUES ($1, $2::bigint, $3)", 3, v, len, fmt, 0, NULL);
}

/* ---- reading the object back ---- */

static int
bad(char *out, size_t outlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(out, outlen, fmt, ap);
	va_end(ap);
	err_set("%s", out);
	return HSMFS_ERR_BADMSG;
}

/* Records [from, to) read back into t (binary rows: seq, off, leaf). */
static int
check_rows(struct pg_conn *c, const char *object, uint64_t from, uint64_t to,
    struct tlog_tree *t, off_t *end, char *why, size_t whylen)
{
	char a[24], b[24];
	const char *v[3] = { object, a, b };
	PGresult *res = NULL;
	uint8_t h[TLOG_HASH_LEN];
	int r, n;

	snprintf(a, sizeof(a), "%" PRIu64, from);
	snprintf(b, sizeof(b), "%" PRIu64, to);
	if ((r = pg_exec(c, "SELECT seq, off, leaf FROM hsmfs_history_records "
	    "WHERE object = $1 AND seq >= $2::bigint AND seq < $3::bigint "
	    "ORDER BY seq", 3, v, NULL, NULL, 1, &res)) != 0)
		return r;
	n = PQntuples(res);
	for (int i = 0; i < n && r == 0; i++) {
		uint64_t seq = (uint64_t)pg_get_i64(res, i, 0);
		off_t off = (off_t)pg_get_i64(res, i, 1);
		size_t ll = (size_t)PQgetlength(res, i, 2);

		if (seq != t->size)
			r = bad(why, whylen, "record %" PRIu64 " is missing in the "
			    "database", t->size);
		else if (off != *end)
			r = bad(why, whylen, "record %" PRIu64 " is at offset %lld, "
			    "its frame starts at %lld", seq, (long long)off,
			    (long long)*end);
		else {
			tlog_leaf_hash((const uint8_t *)PQgetvalue(res, i, 2), ll, h);
			tlog_tree_append(t, h);
			*end = off + (off_t)(ll + TLOG_FRAME_OVERHEAD);
		}
	}
	PQclear(res);
	if (r == 0 && t->size != to)
		r = bad(why, whylen, "record %" PRIu64 " is missing in the database",
		    t->size);
	return r;
}

/* The object row (its frontier and bytes when it still has size
 * records) and the checkpoint of that size. */
static int
check_row_and_checkpoint(struct pg_conn *c, const char *prefix,
    const char *object, const struct tlog_tree *t, off_t end,
    EVP_PKEY *const *keys, size_t nkeys, char *why, size_t whylen)
{
	char sz[24], origin[TLOG_ORIGIN_MAX];
	const char *v[2] = { object, sz };
	struct tlog_checkpoint cp;
	uint8_t root[TLOG_HASH_LEN];
	PGresult *res = NULL;
	size_t used;
	int r;

	snprintf(sz, sizeof(sz), "%" PRIu64, t->size);
	if ((r = pg_exec(c, "SELECT size, bytes, frontier FROM "
	    "hsmfs_history_objects WHERE name = $1", 1, v, NULL, NULL, 1,
	    &res)) != 0)
		return r;
	if (PQntuples(res) != 1)
		r = bad(why, whylen, "no object row");
	else if ((uint64_t)pg_get_i64(res, 0, 0) == t->size &&
	    ((off_t)pg_get_i64(res, 0, 1) != end ||
	    (size_t)PQgetlength(res, 0, 2) != t->n * TLOG_HASH_LEN ||
	    memcmp(PQgetvalue(res, 0, 2), t->edge, t->n * TLOG_HASH_LEN) != 0))
		r = bad(why, whylen, "the object row's frontier or length does not "
		    "match its records");
	PQclear(res);
	if (r != 0)
		return r;
	if ((r = pg_exec(c, "SELECT checkpoint FROM hsmfs_checkpoints WHERE "
	    "object = $1 AND size = $2::bigint", 2, v, NULL, NULL, 1, &res)) != 0)
		return r;
	memset(&cp, 0, sizeof(cp));
	snprintf(origin, sizeof(origin), "%s%s", prefix, object);
	tlog_tree_root(t, root);
	if (PQntuples(res) != 1)
		r = bad(why, whylen, "no checkpoint of %s records", sz);
	else if (tlog_checkpoint_parse(PQgetvalue(res, 0, 0),
	    (size_t)PQgetlength(res, 0, 0), &cp, &used) != 0)
		r = bad(why, whylen, "checkpoint: %s", err_detail());
	else if (strcmp(cp.origin, origin) != 0)
		r = bad(why, whylen, "checkpoint origin %s, not %s", cp.origin,
		    origin);
	else if (cp.size != t->size || memcmp(cp.root, root, TLOG_HASH_LEN) != 0)
		r = bad(why, whylen, "the checkpoint's size or root does not match "
		    "the records");
	else if (tlog_checkpoint_verify(&cp, keys, nkeys, NULL) != 0)
		r = bad(why, whylen, "checkpoint: %s", err_detail());
	tlog_checkpoint_clear(&cp);
	PQclear(res);
	return r;
}

int
hstore_import_check_db(struct pg *pg, const char *prefix, const char *object,
    uint64_t size, const uint8_t root[TLOG_HASH_LEN], EVP_PKEY *const *keys,
    size_t nkeys, char *why, size_t whylen)
{
	struct pg_conn *c;
	struct tlog_tree t;
	uint8_t got[TLOG_HASH_LEN];
	off_t end = 0;
	int r;

	why[0] = '\0';
	tlog_tree_init(&t);
	if ((r = pg_acquire(pg, &c)) != 0)
		return r;
	for (uint64_t from = 0; from < size && r == 0; from += CHECK_ROWS)
		r = check_rows(c, object, from, size - from > CHECK_ROWS ?
		    from + CHECK_ROWS : size, &t, &end, why, whylen);
	if (r == 0) {
		tlog_tree_root(&t, got);
		if (memcmp(got, root, TLOG_HASH_LEN) != 0)
			r = bad(why, whylen, "the records in the database do not hash "
			    "to the local root");
	}
	if (r == 0)
		r = check_row_and_checkpoint(c, prefix, object, &t, end, keys, nkeys,
		    why, whylen);
	pg_release(pg, c);
	return r;
}

/* ---- one object ---- */

/* The local verification (hstore_verify_object on STORE). 1: not valid
 * (im->outcome INVALID). */
static int
verify_local(const struct hstore_import_conf *ic, struct hstore_import *im)
{
	struct store_conf local = { .dirfd = ic->storefd };
	struct hstore_verify v;
	int r;

	memset(&v, 0, sizeof(v));
	v.object = im->object;
	v.keys = ic->keys;
	v.nkeys = ic->nkeys;
	r = hstore_verify_object(&local, &v);
	if (r == HSMFS_ERR_BADMSG) {
		reason(im, HSTORE_IMPORT_INVALID, "does not verify in the local "
		    "store: %s", v.reason);
		return 1;
	}
	if (r != 0) {
		reason(im, HSTORE_IMPORT_INVALID, "%s", err_detail());
		return 1;
	}
	im->records = v.records;
	memcpy(im->root, v.root, TLOG_HASH_LEN);
	return 0;
}

/* After the COMMIT (or finding it there): read back, then the history
 * backend's own verification of the shared store. */
static void
verify_after(const struct hstore_import_conf *ic, struct hstore_import *im)
{
	struct store_conf shared = { .dirfd = ic->storefd, .shared = ic->shared,
		.pg = ic->pg };
	struct hstore_verify v;
	char why[320];

	im->db_check = hstore_import_check_db(ic->pg, ic->prefix, im->object,
	    im->records, im->root, ic->keys, ic->nkeys, why, sizeof(why));
	if (im->db_check != 0)
		snprintf(im->reason, sizeof(im->reason), "read back from the "
		    "database: %s", why[0] ? why : err_detail());
	memset(&v, 0, sizeof(v));
	v.object = im->object;
	v.keys = ic->keys;
	v.nkeys = ic->nkeys;
	im->backend_verify = hstore_verify_object(&shared, &v);
	/* The backend judges the whole object, which may have grown since. */
	if (im->backend_verify == 0 && v.records == im->records &&
	    memcmp(v.root, im->root, TLOG_HASH_LEN) != 0)
		im->backend_verify = HSMFS_ERR_BADMSG;
	if (im->backend_verify == 0 && v.records < im->records)
		im->backend_verify = HSMFS_ERR_BADMSG;
	if (im->backend_verify != 0 && im->db_check == 0)
		snprintf(im->reason, sizeof(im->reason), "%s",
		    im->backend_verify == HSMFS_ERR_BADMSG && v.reason[0] ?
		    v.reason : err_detail());
}

int
hstore_import_object(const struct hstore_import_conf *ic,
    struct hstore_import *im)
{
	struct scan *s = NULL;
	struct tx t;
	struct pg_conn *c;
	char path[300], origin[TLOG_ORIGIN_MAX], *cp = NULL;
	size_t cplen = 0;
	uint64_t dbsize;
	int exists, same, unknown = 0, r;

	im->reason[0] = '\0';
	im->db_check = im->backend_verify = HSMFS_ERR_UNSUPPORTED;
	im->records = im->db_records = 0;
	im->bytes = 0;
	if (verify_local(ic, im))
		return 0;
	/* Nothing to sign or read when the database has it already. */
	if ((r = pg_acquire(ic->pg, &c)) != 0)
		return r;
	r = db_state(c, im->object, im->records, im->root, 0, &exists, &dbsize,
	    &same);
	pg_release(ic->pg, c);
	if (r != 0)
		return r;
	if (judge(im, exists, dbsize, same)) {
		if (im->outcome == HSTORE_IMPORT_THERE)
			verify_after(ic, im);
		return 0;
	}
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return HSMFS_ERR_NOMEM;
	s->object = im->object;
	s->limit = im->records;
	snprintf(path, sizeof(path), HSTORE_DIR "/" HSTORE_OBJECTS "/%s"
	    HSTORE_SUFFIX, im->object);
	if ((s->fd = openat(ic->storefd, path, O_RDONLY | O_CLOEXEC)) < 0) {
		reason(im, HSTORE_IMPORT_FAILED, "%s: %s", path, strerror(errno));
		goto out;
	}
	/* First pass: the tree state and length of the signed frames. */
	if ((r = scan_object(s)) != 0) {
		reason(im, HSTORE_IMPORT_FAILED, "%s", err_detail());
		goto out;
	}
	im->bytes = s->end;
	snprintf(origin, sizeof(origin), "%s%s", ic->prefix, im->object);
	if ((r = tlog_checkpoint_sign(origin, im->records, im->root, &ic->signer,
	    1, &cp, &cplen)) != 0) {
		reason(im, HSTORE_IMPORT_FAILED, "signing the checkpoint: %s",
		    err_detail());
		goto out;
	}
	t = (struct tx){ ic, im, s, cp, cplen };
	r = pg_tx(ic->pg, import_tx, &t, &unknown);
	if (r == 1) {
		if (im->outcome == HSTORE_IMPORT_THERE)
			verify_after(ic, im);
	} else if (r != 0) {
		reason(im, HSTORE_IMPORT_FAILED, "%s%s", err_detail(), unknown ?
		    " (the COMMIT's outcome is unknown: run migrate-store again)" :
		    " (nothing stored)");
	} else {
		im->outcome = HSTORE_IMPORT_MOVED;
		verify_after(ic, im);
	}
	r = 0;
out:
	if (s->fd >= 0)
		close(s->fd);
	free(s);
	free(cp);
	return r == HSMFS_ERR_NOMEM ? r : 0;
}
