/* Batches of the history area on PostgreSQL (store/history_pg.c says how
 * the backend works): one transaction each; the objects' rows locked in
 * name order, frames kept in memory, checked against the signed
 * checkpoint and inserted at commit, an unknown COMMIT outcome resolved
 * by the first record's id. */
#include "store/history_pg.h"
#include "store/history_pg_int.h"
#include "store/pg.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "crypto/tlog.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <openssl/rand.h>

#define INSERT_ROWS 100         /* rows per INSERT statement */
#define INSERT_BYTES (64 << 20) /* leaves per INSERT statement */

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
		x->n0 = (uint64_t)pg_get_i64(res, k, 1);
		x->b0 = (off_t)pg_get_i64(res, k, 2);
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
	size_t bytes = 0;

	for (int k = 0; *pos < x->len && k < INSERT_ROWS; k++) {
		const uint8_t *leaf, *hash;
		size_t len;
		int r, a, c, d, e;
		/* Large records: a statement carries at most INSERT_BYTES of
		 * leaves (beyond its first), far below the server's 1 GB
		 * message limit and libpq's copy of it. */
		if (k > 0 && x->len - *pos >= TLOG_FRAME_HDR) {
			const uint8_t *h = x->buf + *pos;
			size_t l = (size_t)h[4] << 24 | (size_t)h[5] << 16 |
			    (size_t)h[6] << 8 | h[7];
			if (bytes + l > INSERT_BYTES)
				break;
		}
		if ((r = next_frame(x, pos, *seq, &leaf, &len, &hash)) != 0)
			return r;
		bytes += len;
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
