/* The PostgreSQL backend of the fields area (store/fields.h) on table
 * hsmfs_fields (store/sql/schema.sql): one row per field, the envelope
 * line without its "\n" (get adds it). Every call is one statement or
 * one transaction, durable at COMMIT.
 *
 * Per-name locks are session advisory locks (two-key form, class
 * LOCK_CLASS, key = FNV-1a of the name) taken on a pool connection that
 * the lock keeps checked out until unlock; the calls the lock holder's
 * thread makes meanwhile (put, remove, rename, get) run on that same
 * connection (a thread-local note), so a thread never waits for a
 * second pool connection while it holds one: no pool deadlock. If that
 * connection dies, the server drops its locks and the holder's next
 * statement fails (EIO): nothing is written without the lock. The
 * maintenance lock (rekey-fields) is a session advisory lock of class
 * MAINT_CLASS on a connection held until close. */
#include "store/fields.h"
#include "store/store.h"
#include "store/pg.h"
#include "common/err.h"
#include "common/util.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOCK_CLASS "1752392961"    /* 0x68736601 "hsf\1": per-name locks */
#define MAINT_CLASS "1752392962"   /* 0x68736602: rekey-fields */

struct pg_store {
	struct fields_store base;
	struct pg *pg;
	struct pg_conn *maint;   /* holds the maintenance lock, or NULL */
};

struct fields_lock {
	struct pg_conn *c;
	struct pg_store *s;
};

/* The lock this thread holds on a store (one at a time in fs/fields.c). */
static __thread struct fields_lock *held;

static struct pg_store *
ps_of(struct fields_store *fs)
{
	return (struct pg_store *)fs;
}

/* The connection for a call: the thread's lock connection, else one
 * from the pool (*own = 1: give it back). */
static int
conn_get(struct pg_store *s, struct pg_conn **c, int *own)
{
	if (held != NULL && held->s == s) {
		*c = held->c;
		*own = 0;
		return 0;
	}
	*own = 1;
	return pg_acquire(s->pg, c);
}

static void
conn_put(struct pg_store *s, struct pg_conn *c, int own)
{
	if (own)
		pg_release(s->pg, c);
}

static const char *
name_key(const char *name, char buf[16])
{
	uint32_t h = 2166136261u;   /* FNV-1a, as the directory backend */
	for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
		h ^= *p;
		h *= 16777619u;
	}
	snprintf(buf, 16, "%d", (int)(h & 0x7fffffff));
	return buf;
}

/* Strip the "\n" a caller's text (as get returned it) may end with. */
static size_t
line_len(const char *text, size_t len)
{
	return len > 0 && text[len - 1] == '\n' ? len - 1 : len;
}

/* The row of field NAME: one statement on a pool (or the held lock's)
 * connection; HSMFS_ERR_NOTFOUND when there is none. */
static int
field_row(struct pg_store *s, const char *name, const char *sql, int n,
    const char *const *v, PGresult **res)
{
	struct pg_conn *c;
	int own, r;

	*res = NULL;
	if ((r = conn_get(s, &c, &own)) != 0)
		return r;
	r = pg_exec(c, sql, n, v, NULL, NULL, 0, res);
	conn_put(s, c, own);
	if (r != 0)
		return r;
	if (PQntuples(*res) != 1) {
		PQclear(*res);
		*res = NULL;
		err_set("%s: no such field", name);
		return HSMFS_ERR_NOTFOUND;
	}
	return 0;
}

static int
pgs_get(struct fields_store *fs, const char *name, char **text, size_t *len)
{
	PGresult *res;
	size_t n;
	int r;

	*text = NULL;
	*len = 0;
	if ((r = field_row(ps_of(fs), name,
	    "SELECT envelope FROM hsmfs_fields WHERE name = $1", 1, &name,
	    &res)) != 0)
		return r;
	n = (size_t)PQgetlength(res, 0, 0);
	if ((*text = malloc(n + 2)) == NULL) {
		PQclear(res);
		return HSMFS_ERR_NOMEM;
	}
	memcpy(*text, PQgetvalue(res, 0, 0), n);
	(*text)[n] = '\n';
	(*text)[n + 1] = '\0';
	*len = n + 1;
	PQclear(res);
	return 0;
}

static int
pgs_stat(struct fields_store *fs, const char *name, struct fields_meta *m,
    char *head, size_t headlen)
{
	PGresult *res;
	char hl[24];
	const char *v[2] = { name, hl };
	int r;

	memset(m, 0, sizeof(*m));
	snprintf(hl, sizeof(hl), "%zu", head ? headlen : 0);
	if ((r = field_row(ps_of(fs), name, "SELECT octet_length(envelope) + 1, "
	    "extract(epoch FROM mtime)::bigint, left(envelope, $2::int) "
	    "FROM hsmfs_fields WHERE name = $1", 2, v, &res)) != 0)
		return r;
	m->size = (size_t)strtoull(PQgetvalue(res, 0, 0), NULL, 10);
	m->mtime = (time_t)strtoll(PQgetvalue(res, 0, 1), NULL, 10);
	if (head != NULL && headlen > 0) {
		size_t n = (size_t)PQgetlength(res, 0, 2);
		if (n > headlen)
			n = headlen;
		memcpy(head, PQgetvalue(res, 0, 2), n);
		if (n < headlen && n + 1 == m->size)
			head[n++] = '\n';
		m->head_len = n;
	}
	PQclear(res);
	return 0;
}

static void
pgs_unlock(struct fields_store *fs, struct fields_lock *lk)
{
	(void)fs;
	if (lk == NULL)
		return;
	/* A failure marks the connection dead: the server then drops the
	 * locks with the session. */
	pg_exec(lk->c, "SELECT pg_advisory_unlock_all()", 0, NULL, NULL, NULL, 0,
	    NULL);
	if (held == lk)
		held = NULL;
	pg_release(lk->s->pg, lk->c);
	free(lk);
}

static int
pgs_lock(struct fields_store *fs, const char *a, const char *b,
    struct fields_lock **out)
{
	struct pg_store *s = ps_of(fs);
	struct fields_lock *lk;
	char ka[16], kb[16];
	const char *v[2];
	long la, lb;
	int r;

	*out = NULL;
	if ((lk = calloc(1, sizeof(*lk))) == NULL)
		return HSMFS_ERR_NOMEM;
	if ((r = pg_acquire(s->pg, &lk->c)) != 0) {
		free(lk);
		return r;
	}
	lk->s = s;
	name_key(a, ka);
	name_key(b ? b : a, kb);
	la = atol(ka);
	lb = atol(kb);
	/* Two names in a fixed order (no deadlock between two renames). */
	v[0] = la <= lb ? ka : kb;
	v[1] = la <= lb ? kb : ka;
	r = pg_exec(lk->c, la == lb ?
	    "SELECT pg_advisory_lock(" LOCK_CLASS ", $1::int)" :
	    "SELECT pg_advisory_lock(" LOCK_CLASS ", $1::int), "
	    "pg_advisory_lock(" LOCK_CLASS ", $2::int)", la == lb ? 1 : 2, v,
	    NULL, NULL, 0, NULL);
	if (r != 0) {
		pgs_unlock(fs, lk);
		return r;
	}
	held = lk;
	*out = lk;
	return 0;
}

static int
pgs_put(struct fields_store *fs, const char *name, const char *text,
    size_t len, unsigned flags)
{
	struct pg_store *s = ps_of(fs);
	PGresult *res = NULL;
	struct pg_conn *c;
	char *line;
	const char *v[2];
	int own, r;

	len = line_len(text, len);
	if ((line = malloc(len + 1)) == NULL)
		return HSMFS_ERR_NOMEM;
	memcpy(line, text, len);
	line[len] = '\0';
	v[0] = name;
	v[1] = line;
	if ((r = conn_get(s, &c, &own)) != 0) {
		free(line);
		return r;
	}
	r = pg_exec(c, flags & FIELDS_NOREPLACE ?
	    "INSERT INTO hsmfs_fields (name, envelope) VALUES ($1, $2) "
	    "ON CONFLICT (name) DO NOTHING" :
	    "INSERT INTO hsmfs_fields (name, envelope) VALUES ($1, $2) "
	    "ON CONFLICT (name) DO UPDATE SET envelope = EXCLUDED.envelope, "
	    "mtime = now(), version = hsmfs_fields.version + 1",
	    2, v, NULL, NULL, 0, &res);
	conn_put(s, c, own);
	free(line);
	if (r != 0)
		return r;
	if (strcmp(PQcmdTuples(res), "0") == 0) {
		PQclear(res);
		err_set("%s: exists", name);
		return -EEXIST;
	}
	PQclear(res);
	return 0;
}

/* DELETE or UPDATE that must touch one row: NOTFOUND when it did not. */
static int
one_row(struct pg_conn *c, const char *sql, int n, const char *const *v,
    const char *name)
{
	PGresult *res = NULL;
	int r;

	if ((r = pg_exec(c, sql, n, v, NULL, NULL, 0, &res)) != 0)
		return r;
	r = strcmp(PQcmdTuples(res), "0") == 0 ? HSMFS_ERR_NOTFOUND : 0;
	PQclear(res);
	if (r != 0)
		err_set("%s: no such field", name);
	return r;
}

static int
pgs_remove(struct fields_store *fs, const char *name)
{
	struct pg_store *s = ps_of(fs);
	struct pg_conn *c;
	int own, r;

	if ((r = conn_get(s, &c, &own)) != 0)
		return r;
	r = one_row(c, "DELETE FROM hsmfs_fields WHERE name = $1", 1, &name, name);
	conn_put(s, c, own);
	return r;
}

/* The rename's statements, inside its transaction. */
static int
rename_tx(struct pg_conn *c, const char *from, const char *to, unsigned flags)
{
	const char *v[2] = { from, to };
	PGresult *res = NULL;
	int r;

	if (flags & FIELDS_EXCHANGE) {
		/* Both rows exist: swap their envelopes in one UPDATE. */
		if ((r = pg_exec(c, "UPDATE hsmfs_fields f SET envelope = o.envelope, "
		    "mtime = now(), version = f.version + 1 FROM hsmfs_fields o "
		    "WHERE (f.name = $1 AND o.name = $2) OR (f.name = $2 AND o.name = $1)",
		    2, v, NULL, NULL, 0, &res)) != 0)
			return r;
		r = strcmp(PQcmdTuples(res), "2") == 0 ? 0 : HSMFS_ERR_NOTFOUND;
		PQclear(res);
		if (r != 0)
			err_set("%s or %s: no such field", from, to);
		return r;
	}
	if (strcmp(from, to) == 0)
		return one_row(c, "SELECT 1 FROM hsmfs_fields WHERE name = $1", 1, v,
		    from);
	if ((r = pg_exec(c, flags & FIELDS_NOREPLACE ?
	    "INSERT INTO hsmfs_fields (name, envelope) SELECT $2, envelope FROM "
	    "hsmfs_fields WHERE name = $1 ON CONFLICT (name) DO NOTHING "
	    "RETURNING 1" :
	    "INSERT INTO hsmfs_fields (name, envelope) SELECT $2, envelope FROM "
	    "hsmfs_fields WHERE name = $1 ON CONFLICT (name) DO UPDATE SET "
	    "envelope = EXCLUDED.envelope, mtime = now(), "
	    "version = hsmfs_fields.version + 1 RETURNING 1",
	    2, v, NULL, NULL, 0, &res)) != 0)
		return r;
	r = PQntuples(res) == 1 ? 0 : -1;
	PQclear(res);
	if (r != 0) {
		/* No row copied: from is missing, or (NOREPLACE) to exists. */
		r = one_row(c, "SELECT 1 FROM hsmfs_fields WHERE name = $1", 1, v,
		    from);
		if (r == 0) {
			err_set("%s: exists", to);
			r = -EEXIST;
		}
		return r;
	}
	return one_row(c, "DELETE FROM hsmfs_fields WHERE name = $1", 1, v, from);
}

static int
pgs_rename(struct fields_store *fs, const char *from, const char *to,
    unsigned flags)
{
	struct pg_store *s = ps_of(fs);
	struct pg_conn *c;
	int own, r;

	if ((r = conn_get(s, &c, &own)) != 0)
		return r;
	if ((r = pg_begin(c)) == 0) {
		if ((r = rename_tx(c, from, to, flags)) == 0)
			r = pg_commit(c, NULL);
		else
			pg_rollback(c);
	}
	conn_put(s, c, own);
	return r;
}

static int
pgs_cas(struct fields_store *fs, const char *name, const char *old,
    size_t oldlen, const char *text, size_t len)
{
	struct pg_store *s = ps_of(fs);
	PGresult *res = NULL;
	struct pg_conn *c;
	const char *v[3];
	int lens[3], fmts[3] = { 0, 1, 1 };
	int own, r;

	v[0] = name;
	v[1] = old;
	v[2] = text;
	lens[0] = 0;
	lens[1] = (int)line_len(old, oldlen);
	lens[2] = (int)line_len(text, len);
	if ((r = conn_get(s, &c, &own)) != 0)
		return r;
	/* Binary text parameters: exactly the bytes, no NUL needed. */
	r = pg_exec(c, "UPDATE hsmfs_fields SET envelope = $3, mtime = now(), "
	    "version = version + 1 WHERE name = $1 AND envelope = $2", 3, v, lens,
	    fmts, 0, &res);
	if (r == 0 && strcmp(PQcmdTuples(res), "0") == 0) {
		PQclear(res);
		res = NULL;
		r = one_row(c, "SELECT 1 FROM hsmfs_fields WHERE name = $1", 1, v,
		    name);
		if (r == 0)
			r = 1;   /* holds something else now */
	}
	PQclear(res);
	conn_put(s, c, own);
	return r;
}

static int
pgs_list(struct fields_store *fs, fields_name_cb cb, void *arg)
{
	struct pg_store *s = ps_of(fs);
	PGresult *res = NULL;
	struct pg_conn *c;
	int own, r;

	if ((r = conn_get(s, &c, &own)) != 0)
		return r;
	r = pg_exec(c, "SELECT name FROM hsmfs_fields", 0, NULL, NULL, NULL, 0,
	    &res);
	conn_put(s, c, own);
	if (r != 0)
		return r;
	for (int i = 0; i < PQntuples(res) && r == 0; i++) {
		const char *n = PQgetvalue(res, i, 0);
		if (util_name_valid(n))
			r = cb(arg, n);
	}
	PQclear(res);
	return r;
}

static int
pgs_maint_lock(struct fields_store *fs)
{
	struct pg_store *s = ps_of(fs);
	PGresult *res = NULL;
	struct pg_conn *c;
	int r;

	if (s->maint != NULL)
		return 0;
	if ((r = pg_acquire(s->pg, &c)) != 0)
		return r;
	if ((r = pg_exec(c, "SELECT pg_try_advisory_lock(" MAINT_CLASS ", 0)", 0,
	    NULL, NULL, NULL, 0, &res)) != 0) {
		pg_release(s->pg, c);
		return r;
	}
	r = strcmp(PQgetvalue(res, 0, 0), "t") == 0 ? 0 : 1;
	PQclear(res);
	if (r != 0) {
		pg_release(s->pg, c);
		return r;
	}
	s->maint = c;
	return 0;
}

/* Nothing to recover: a put is one statement, never half done. */
static void
pgs_recover(struct fields_store *fs, long min_age)
{
	(void)fs;
	(void)min_age;
}

static void
pgs_close(struct fields_store *fs)
{
	struct pg_store *s = ps_of(fs);

	if (s->maint != NULL) {
		pg_exec(s->maint, "SELECT pg_advisory_unlock_all()", 0, NULL, NULL,
		    NULL, 0, NULL);
		pg_release(s->pg, s->maint);
	}
	free(s);
}

static const struct fields_store_ops pg_ops = {
	.close = pgs_close,
	.get = pgs_get,
	.stat = pgs_stat,
	.lock = pgs_lock,
	.unlock = pgs_unlock,
	.put = pgs_put,
	.remove = pgs_remove,
	.rename = pgs_rename,
	.cas = pgs_cas,
	.list = pgs_list,
	.maint_lock = pgs_maint_lock,
	.recover = pgs_recover,
};

/* The fields of the shared store c->pg (the pool stays the caller's). */
int
fields_store_open_pg(const struct store_conf *c, struct fields_store **out)
{
	struct pg_store *s;

	*out = NULL;
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return HSMFS_ERR_NOMEM;
	s->base.ops = &pg_ops;
	s->pg = c->pg;
	*out = &s->base;
	return 0;
}

