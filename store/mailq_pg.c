/* The mail queue shared by a cluster, in PostgreSQL (store/mailq.h;
 * docs/mail.md "Shared queue", schema in store/sql/schema.sql):
 *
 * hsmfs_mail_queue  one row per queued message: name, the message as
 *                   written (entry), its signed form, Date, Message-ID,
 *                   the schedule (due, attempts, reason) and the lease
 *                   (state 'sending', lease_holder, lease_expiry)
 * hsmfs_mail_done   sent/ and failed/ of the whole cluster
 *
 * Every call is one statement (one transaction, durable at its COMMIT).
 * A node claims the earliest due row with FOR UPDATE SKIP LOCKED (two
 * nodes never claim one row at once) and a lease of lease_s seconds on
 * the database's clock; complete, fail and defer act only while this
 * handle still holds the lease. A node killed mid-send never ends its
 * lease: when it expires any node claims the row again and delivers it
 * (at-least-once; the Message-ID stays, so a duplicate is recognisable).
 *
 * Staged entries (a writer's temporary, renamed into place on the same
 * node) stay node-local: they are kept by the directory backend under
 * STORE/mail/.temp, and publish INSERTs the staged entry, then removes
 * the temporary. */
#define MAILQ_BE mailq_pg
#include "store/mailq_backend.h"
#include "store/pg.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#include <endian.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* Without a local wake-up (a message queued on another node), the
 * sender looks at the queue at least this often (s); also the retry
 * period while the database is unreachable. */
#define MAILQ_PG_POLL 5
/* Leases this handle holds (one per sender thread in practice), and
 * deliveries whose completion could not reach the database yet. */
#define MAILQ_PG_HELD 16

struct mailq {
	struct pg *pg;
	struct mailq_dir *local;      /* staged entries (node-local) */
	char holder[128];             /* "NODE#RANDOM": this handle's leases */
	pthread_mutex_t lock;         /* down, cache */
	int down;                     /* the outage is logged (once) */
	size_t nq, nfailed;           /* the last summary that worked */
	long long oldest, next;
	struct mailq_item held[MAILQ_PG_HELD];  /* leased here (lock) */
	long long held_id[MAILQ_PG_HELD];       /* their rows' ids */
	size_t nheld;
	char pending[MAILQ_PG_HELD][MAILQ_NAME_MAX];  /* sent, to record */
	size_t npending;
};

struct mailq_reader {
	struct mailq_dir_reader *local;
	char *buf;
	size_t len;
};

static long long
now_s(void)
{
	return (long long)time(NULL);
}

static void
col_str(const PGresult *res, int row, int col, char *buf, size_t size)
{
	int n = PQgetisnull(res, row, col) ? 0 : PQgetlength(res, row, col);
	if ((size_t)n >= size)
		n = (int)size - 1;
	memcpy(buf, PQgetvalue(res, row, col), (size_t)n);
	buf[n] = '\0';
}

/* Note the database's state: log the first failure of an outage and the
 * recovery, once each. */
static void
note_state(struct mailq *q, int r)
{
	int io = r == HSMFS_ERR_IO;
	pthread_mutex_lock(&q->lock);
	if (io && !q->down)
		log_warn("mail: the shared queue's database is unreachable; mail "
		    "waits, retrying every %d s: %s", MAILQ_PG_POLL, err_detail());
	else if (!io && q->down)
		log_info("mail: the shared queue's database is back");
	q->down = io;
	pthread_mutex_unlock(&q->lock);
}

/* The leases held here (lock taken inside). */
static void
held_add(struct mailq *q, const struct mailq_item *it, long long id)
{
	pthread_mutex_lock(&q->lock);
	if (q->nheld < MAILQ_PG_HELD) {
		q->held_id[q->nheld] = id;
		q->held[q->nheld++] = *it;
	}
	pthread_mutex_unlock(&q->lock);
}

/* The row id of a lease held here, -1 when none. */
static long long
held_row(struct mailq *q, const char *name)
{
	long long id = -1;
	pthread_mutex_lock(&q->lock);
	for (size_t i = 0; i < q->nheld && id < 0; i++)
		if (strcmp(q->held[i].name, name) == 0)
			id = q->held_id[i];
	pthread_mutex_unlock(&q->lock);
	return id;
}

static void
held_del(struct mailq *q, const char *name)
{
	pthread_mutex_lock(&q->lock);
	for (size_t i = 0; i < q->nheld; i++)
		if (strcmp(q->held[i].name, name) == 0) {
			q->held_id[i] = q->held_id[q->nheld - 1];
			q->held[i] = q->held[--q->nheld];
			break;
		}
	pthread_mutex_unlock(&q->lock);
}

static int
held_find(struct mailq *q, const char *name, struct mailq_item *out)
{
	int found = 0;
	pthread_mutex_lock(&q->lock);
	for (size_t i = 0; i < q->nheld && !found; i++)
		if (strcmp(q->held[i].name, name) == 0) {
			found = 1;
			if (out)
				*out = q->held[i];
		}
	pthread_mutex_unlock(&q->lock);
	return found;
}

/* One statement on a pool connection: binary results, text parameters
 * except where fmts says binary. *res (NULL: not wanted) to PQclear.
 * A unique violation is HSMFS_ERR_PERM. */
static int
q_exec(struct mailq *q, const char *sql, int n, const char *const *vals,
    const int *lens, const int *fmts, PGresult **res)
{
	struct pg_conn *c;
	int r;

	if (res)
		*res = NULL;
	if ((r = pg_acquire(q->pg, &c)) == 0) {
		r = pg_exec(c, sql, n, vals, lens, fmts, 1, res);
		if (r != 0 && strcmp(pg_sqlstate(c), "23505") == 0)
			r = HSMFS_ERR_PERM;
		pg_release(q->pg, c);
	}
	if (r == 0 || r == HSMFS_ERR_IO)
		note_state(q, r);
	return r;
}

/* A statement whose effect is on one row: 0, or HSMFS_ERR_NOTFOUND with
 * `what` when no row matched. */
static int
q_exec_one(struct mailq *q, const char *sql, int n, const char *const *vals,
    const int *lens, const int *fmts, const char *name, const char *what)
{
	PGresult *res;
	int r = q_exec(q, sql, n, vals, lens, fmts, &res);

	if (r != 0)
		return r;
	if (atoi(PQcmdTuples(res)) < 1) {
		err_set("mail/%s: %s", name, what);
		r = HSMFS_ERR_NOTFOUND;
	}
	PQclear(res);
	return r;
}

/* ---- open / close ---- */

static int
holder_init(struct mailq *q)
{
	PGresult *res;
	char app[96];
	uint32_t rnd = 0;
	int r;

	if ((r = q_exec(q, "SELECT current_setting('application_name')", 0,
	    NULL, NULL, NULL, &res)) != 0)
		return r;
	col_str(res, 0, 0, app, sizeof(app));
	PQclear(res);
	if (getrandom(&rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
		rnd = (uint32_t)now_s() ^ (uint32_t)getpid();
	/* application_name is "hsmfs NODE" (store/pg.h). */
	snprintf(q->holder, sizeof(q->holder), "%s#%08x",
	    strncmp(app, "hsmfs ", 6) == 0 ? app + 6 : app, rnd);
	return 0;
}

void
mailq_close(struct mailq *q)
{
	if (q == NULL)
		return;
	mailq_dir_close(q->local);
	pthread_mutex_destroy(&q->lock);
	free(q);
}

int
mailq_open(const struct store_conf *conf, struct mailq **out, size_t *nqueued,
    long long *oldest)
{
	struct store_conf local = { .dirfd = conf->dirfd };
	struct mailq *q;
	struct pg_conn *c;
	size_t nlocal;
	long long o;
	int r;

	*out = NULL;
	if ((q = calloc(1, sizeof(*q))) == NULL)
		return HSMFS_ERR_NOMEM;
	pthread_mutex_init(&q->lock, NULL);
	q->pg = conf->pg;
	if ((r = pg_acquire(q->pg, &c)) != 0)
		goto fail;
	r = pg_schema_check(c);
	pg_release(q->pg, c);
	if (r != 0 || (r = holder_init(q)) != 0)
		goto fail;
	/* STORE/mail keeps the staged temporaries; a local queue left there
	 * from before shared= is not sent from here (migrate-store moves it). */
	if ((r = mailq_dir_open(&local, &q->local, &nlocal, &o)) != 0)
		goto fail;
	if (nlocal > 0)
		log_warn("mail: %zu message(s) in STORE/mail/queue are not in the "
		    "shared queue; hsmfs-tool migrate-store moves them", nlocal);
	mailq_summary(q, nqueued, oldest, NULL, NULL);
	if (*oldest < 0)
		*oldest = now_s();
	*out = q;
	return 0;
fail:
	mailq_close(q);
	return r;
}

/* ---- admission ---- */

/* INSERT a new queued row; msg and sig binary. */
static int
insert_entry(struct mailq *q, const char *name, const struct mailq_hdr *h,
    const void *msg, const void *sig, long long due)
{
	static const char sql[] =
	    "INSERT INTO hsmfs_mail_queue (name, message_id, msg_date, queued, "
	    "due, entry, signed) VALUES ($1, $2, $3::bigint, "
	    "to_timestamp($4::bigint), to_timestamp($5::bigint), $6, $7)";
	char date[24], queued[24], when[24];
	const char *v[7] = { name, h->msgid, date, queued, when, msg,
	    sig ? sig : "" };
	int lens[7] = { 0, 0, 0, 0, 0, (int)h->msglen, sig ? (int)h->siglen : 0 };
	int fmts[7] = { 0, 0, 0, 0, 0, 1, 1 };
	int r;

	snprintf(date, sizeof(date), "%lld", h->date);
	snprintf(queued, sizeof(queued), "%lld", h->queued);
	snprintf(when, sizeof(when), "%lld", due);
	r = q_exec(q, sql, 7, v, lens, fmts, NULL);
	if (r == HSMFS_ERR_PERM)
		err_set("mail/%s is queued already", name);
	return r;
}

int
mailq_enqueue(struct mailq *q, const char *name, const struct mailq_hdr *h,
    const void *msg, const void *sig, long long first_delay)
{
	return insert_entry(q, name, h, msg, sig, h->queued + first_delay);
}

int
mailq_stage(struct mailq *q, const char *name, const struct mailq_hdr *h,
    const void *msg, const void *sig)
{
	return mailq_dir_stage(q->local, name, h, msg, sig);
}

int
mailq_publish(struct mailq *q, const char *tmp, const char *name,
    long long first_delay, struct mailq_hdr *h)
{
	struct mailq_dir_reader *rd;
	struct mailq_entry e;
	size_t len;
	int r;

	if ((r = mailq_dir_reader_open(q->local, MAILQ_STAGED, tmp,
	    MAILQ_PART_MSG, &rd, &len, NULL)) != 0)
		return r;
	mailq_dir_reader_close(rd);
	if (len == 0) {
		err_set("empty message");
		return HSMFS_ERR_INVALID;
	}
	if ((r = mailq_dir_read(q->local, MAILQ_STAGED, tmp, &e)) != 0)
		return r;
	r = insert_entry(q, name, &e.h, e.msg, e.h.siglen ? e.sig : NULL,
	    now_s() + first_delay);
	if (r == 0) {
		*h = e.h;
		mailq_dir_remove(q->local, MAILQ_STAGED, tmp);
	}
	mailq_entry_free(&e);
	return r;
}

int
mailq_requeue(struct mailq *q, const char *name)
{
	static const char sql[] =
	    "WITH d AS (DELETE FROM hsmfs_mail_done WHERE id = (SELECT id FROM "
	    "hsmfs_mail_done WHERE name = $1 AND outcome = 'failed' ORDER BY "
	    "done DESC LIMIT 1) RETURNING *) "
	    "INSERT INTO hsmfs_mail_queue (name, message_id, msg_date, entry, "
	    "signed, reason) SELECT name, message_id, msg_date, entry, signed, "
	    "'queued again from failed/' FROM d";
	int r = q_exec_one(q, sql, 1, &name, NULL, NULL, name,
	    "not in failed/");
	if (r == HSMFS_ERR_PERM)
		err_set("mail/%s is queued already", name);
	return r;
}

/* ---- delivery ---- */

static int flush_pending(struct mailq *q);

/* When the sender should look again: the earliest due time or lease
 * expiry, at most MAILQ_PG_POLL s away (other nodes queue too). */
static long long
soonest_time(struct mailq *q)
{
	static const char sql[] =
	    "SELECT ceil(extract(epoch FROM min(CASE WHEN state = 'queued' THEN "
	    "due ELSE greatest(due, lease_expiry) END)))::bigint "
	    "FROM hsmfs_mail_queue";
	long long poll = now_s() + MAILQ_PG_POLL, t = -1;
	PGresult *res;

	if (q_exec(q, sql, 0, NULL, NULL, NULL, &res) == 0) {
		t = pg_get_i64(res, 0, 0);
		PQclear(res);
	}
	return t >= 0 && t < poll ? t : poll;
}

int
mailq_lease(struct mailq *q, long long now, long long lease_s,
    struct mailq_item *out, long long *soonest)
{
	/* One statement: the claim (row lock, skipping rows another node is
	 * claiming) and the lease commit together. */
	static const char sql[] =
	    "WITH c AS (SELECT id FROM hsmfs_mail_queue WHERE due <= now() AND "
	    "(state = 'queued' OR lease_expiry < now()) ORDER BY due, queued "
	    "LIMIT 1 FOR UPDATE SKIP LOCKED) "
	    "UPDATE hsmfs_mail_queue m SET state = 'sending', lease_holder = $1, "
	    "lease_expiry = now() + make_interval(secs => $2::bigint), "
	    "attempts = m.attempts + 1 FROM c WHERE m.id = c.id RETURNING m.name, "
	    "extract(epoch FROM m.queued)::bigint, "
	    "ceil(extract(epoch FROM m.due))::bigint, m.attempts, "
	    "coalesce(m.reason, ''), octet_length(m.entry)::bigint, m.id";
	char ls[24];
	const char *v[2] = { q->holder, ls };
	PGresult *res;
	int r;

	(void)now;      /* the database's clock decides, the same for all nodes */
	snprintf(ls, sizeof(ls), "%lld", lease_s);
	if ((r = flush_pending(q)) != 0 ||
	    (r = q_exec(q, sql, 2, v, NULL, NULL, &res)) != 0) {
		if (soonest)
			*soonest = now_s() + MAILQ_PG_POLL;
		return r;
	}
	if (PQntuples(res) != 1) {
		PQclear(res);
		if (soonest)
			*soonest = soonest_time(q);
		return HSMFS_ERR_NOTFOUND;
	}
	memset(out, 0, sizeof(*out));
	col_str(res, 0, 0, out->name, sizeof(out->name));
	out->st.queued = pg_get_i64(res, 0, 1);
	out->st.next = pg_get_i64(res, 0, 2);
	out->st.attempts = (unsigned)pg_get_i32(res, 0, 3);
	col_str(res, 0, 4, out->st.last, sizeof(out->st.last));
	out->msglen = (size_t)pg_get_i64(res, 0, 5);
	out->leased = 1;
	held_add(q, out, pg_get_i64(res, 0, 6));
	PQclear(res);
	if (soonest)
		*soonest = -1;
	return 0;
}

int
mailq_set_signed(struct mailq *q, const char *name, const struct mailq_hdr *h,
    const void *msg, const void *sig)
{
	const char *v[2] = { name, sig };
	int lens[2] = { 0, (int)h->siglen }, fmts[2] = { 0, 1 };

	(void)msg;      /* the message as written does not change */
	return q_exec_one(q, "UPDATE hsmfs_mail_queue SET signed = $2 WHERE "
	    "name = $1", 2, v, lens, fmts, name, "not queued");
}

/* queued -> done (outcome $3) in one statement, only while this handle
 * holds the lease; a former done entry of that name and outcome goes.
 * A delivery ("sent") also ends the row it leased when the lease has
 * passed to another node meanwhile (id $5): otherwise, with a relay
 * slower than the lease, the nodes would take the row from each other
 * and send it again for ever. */
static int
finish(struct mailq *q, const char *name, const char *outcome,
    const char *reason)
{
	static const char sql[] =
	    "WITH d AS (DELETE FROM hsmfs_mail_queue WHERE name = $1 AND "
	    "((state = 'sending' AND lease_holder = $2) OR id = $5::bigint) "
	    "RETURNING *), "
	    "x AS (DELETE FROM hsmfs_mail_done WHERE name = $1 AND outcome = $3 "
	    "AND EXISTS (SELECT 1 FROM d)) "
	    "INSERT INTO hsmfs_mail_done (id, name, message_id, outcome, attempts, "
	    "node, entry, signed, msg_date, queued, reason) SELECT id, name, "
	    "message_id, $3, attempts, $2, entry, signed, msg_date, queued, "
	    "CASE WHEN $4::text IS NULL THEN NULL ELSE $4 || E'\\nattempts: ' || "
	    "attempts || E'\\nqueued: ' || extract(epoch FROM queued)::bigint || "
	    "E'\\nmessage-id: ' || message_id || E'\\n' END FROM d";
	char id[24];
	const char *v[5] = { name, q->holder, outcome, reason, id };
	int r;

	snprintf(id, sizeof(id), "%lld",
	    strcmp(outcome, "sent") == 0 ? held_row(q, name) : -1LL);
	r = q_exec_one(q, sql, 5, v, NULL, NULL, name,
	    "the lease passed to another node (it delivers; a duplicate "
	    "carries the same Message-ID)");

	if (r == HSMFS_ERR_NOTFOUND)
		log_warn("%s", err_detail());
	if (r == 0 || r == HSMFS_ERR_NOTFOUND)
		held_del(q, name);
	return r;
}

/* Record the deliveries the database missed (lock not held): 0 when
 * none is left. They stay ours while their lease runs, so recorded
 * before it expires nothing is sent twice. */
static int
flush_pending(struct mailq *q)
{
	char name[MAILQ_NAME_MAX];
	int r = 0;

	for (;;) {
		pthread_mutex_lock(&q->lock);
		if (q->npending == 0) {
			pthread_mutex_unlock(&q->lock);
			return 0;
		}
		memcpy(name, q->pending[q->npending - 1], sizeof(name));
		pthread_mutex_unlock(&q->lock);
		if ((r = finish(q, name, "sent", NULL)) == HSMFS_ERR_IO)
			return r;
		pthread_mutex_lock(&q->lock);
		q->npending--;
		pthread_mutex_unlock(&q->lock);
	}
}

int
mailq_complete(struct mailq *q, const char *name)
{
	int r = finish(q, name, "sent", NULL);

	/* Delivered but not recorded: like the directory backend's batches
	 * (mailq.h), recorded at the next mailq_sync or lease. */
	if (r == HSMFS_ERR_IO) {
		pthread_mutex_lock(&q->lock);
		if (q->npending < MAILQ_PG_HELD) {
			snprintf(q->pending[q->npending++], MAILQ_NAME_MAX, "%s", name);
			r = 0;
		}
		pthread_mutex_unlock(&q->lock);
	}
	return r;
}

int
mailq_sync(struct mailq *q)
{
	return flush_pending(q);     /* every other call commits */
}

int
mailq_fail(struct mailq *q, const char *name, const char *reason)
{
	char t[32], why[MAILQ_REASON_MAX + 40];

	util_iso_utc(now_s(), t, sizeof(t));
	snprintf(why, sizeof(why), "%s %s", t, reason);
	return finish(q, name, "failed", why);
}

int
mailq_defer(struct mailq *q, const char *name, long long next,
    const char *reason)
{
	char when[24];
	const char *v[4] = { name, q->holder, when, reason };
	int r;

	snprintf(when, sizeof(when), "%lld", next);
	r = q_exec_one(q, "UPDATE hsmfs_mail_queue SET state = 'queued', "
	    "due = to_timestamp($3::bigint), reason = $4, lease_holder = NULL, "
	    "lease_expiry = NULL WHERE name = $1 AND state = 'sending' AND "
	    "lease_holder = $2", 4, v, NULL, NULL, name,
	    "the lease passed to another node");
	if (r == 0 || r == HSMFS_ERR_NOTFOUND)
		held_del(q, name);
	return r;
}

/* ---- views ---- */

int
mailq_find(struct mailq *q, const char *name, struct mailq_item *out)
{
	static const char sql[] =
	    "SELECT extract(epoch FROM queued)::bigint, "
	    "ceil(extract(epoch FROM due))::bigint, attempts, "
	    "coalesce(reason, ''), octet_length(entry)::bigint, "
	    "(state = 'sending' AND lease_expiry >= now())::int "
	    "FROM hsmfs_mail_queue WHERE name = $1";
	PGresult *res;
	int found;

	/* An unreachable database: only the leases held here (so the
	 * sender settles them), else not found (the view shows nothing). */
	if (q_exec(q, sql, 1, &name, NULL, NULL, &res) != 0)
		return held_find(q, name, out);
	if ((found = PQntuples(res) == 1) && out != NULL) {
		memset(out, 0, sizeof(*out));
		snprintf(out->name, sizeof(out->name), "%s", name);
		out->st.queued = pg_get_i64(res, 0, 0);
		out->st.next = pg_get_i64(res, 0, 1);
		out->st.attempts = (unsigned)pg_get_i32(res, 0, 2);
		col_str(res, 0, 3, out->st.last, sizeof(out->st.last));
		out->msglen = (size_t)pg_get_i64(res, 0, 4);
		out->leased = pg_get_i32(res, 0, 5) == 1;
	}
	PQclear(res);
	return found;
}

int
mailq_exists(struct mailq *q, enum mailq_box box, const char *name)
{
	const char *v[2] = { name, box == MAILQ_SENT ? "sent" : "failed" };
	PGresult *res;
	int found;

	if (box == MAILQ_QUEUED)
		return mailq_find(q, name, NULL);
	if (box == MAILQ_STAGED)
		return mailq_dir_exists(q->local, box, name);
	if (q_exec(q, "SELECT 1 FROM hsmfs_mail_done WHERE name = $1 AND "
	    "outcome = $2 LIMIT 1", 2, v, NULL, NULL, &res) != 0)
		return 0;
	found = PQntuples(res) > 0;
	PQclear(res);
	return found;
}

void
mailq_summary(struct mailq *q, size_t *nqueued, long long *oldest,
    long long *next, size_t *nfailed)
{
	static const char sql[] =
	    "SELECT count(*), extract(epoch FROM min(queued))::bigint, "
	    "ceil(extract(epoch FROM min(due)))::bigint, (SELECT count(DISTINCT "
	    "name) FROM hsmfs_mail_done WHERE outcome = 'failed') "
	    "FROM hsmfs_mail_queue";
	PGresult *res;

	/* Unreachable: the last summary that worked. */
	if (q_exec(q, sql, 0, NULL, NULL, NULL, &res) == 0) {
		pthread_mutex_lock(&q->lock);
		q->nq = (size_t)pg_get_i64(res, 0, 0);
		q->oldest = pg_get_i64(res, 0, 1);
		q->next = pg_get_i64(res, 0, 2);
		q->nfailed = (size_t)pg_get_i64(res, 0, 3);
		pthread_mutex_unlock(&q->lock);
		PQclear(res);
	}
	pthread_mutex_lock(&q->lock);
	*nqueued = q->nq;
	if (oldest)
		*oldest = q->nq ? q->oldest : -1;
	if (next)
		*next = q->nq ? q->next : -1;
	if (nfailed)
		*nfailed = q->nfailed;
	pthread_mutex_unlock(&q->lock);
}

int
mailq_list(struct mailq *q, enum mailq_box box,
    void (*cb)(void *arg, const char *name), void *arg)
{
	const char *v[1] = { box == MAILQ_SENT ? "sent" : "failed" };
	char name[MAILQ_NAME_MAX];
	PGresult *res;
	int r;

	if (box == MAILQ_STAGED)
		return mailq_dir_list(q->local, box, cb, arg);
	if (box == MAILQ_QUEUED)
		r = q_exec(q, "SELECT name FROM hsmfs_mail_queue", 0, NULL, NULL,
		    NULL, &res);
	else
		r = q_exec(q, "SELECT DISTINCT name FROM hsmfs_mail_done WHERE "
		    "outcome = $1", 1, v, NULL, NULL, &res);
	if (r != 0)
		return r;
	for (int i = 0; i < PQntuples(res); i++) {
		col_str(res, i, 0, name, sizeof(name));
		cb(arg, name);
	}
	PQclear(res);
	return 0;
}

/* The row of an entry: message_id, queued, msg_date, entry, signed,
 * reason, mtime (epoch s). */
static int
select_entry(struct mailq *q, enum mailq_box box, const char *name,
    PGresult **res)
{
	const char *v[2] = { name, box == MAILQ_SENT ? "sent" : "failed" };
	int r;

	if (box == MAILQ_QUEUED)
		r = q_exec(q, "SELECT message_id, extract(epoch FROM queued)::bigint, "
		    "msg_date, entry, signed, NULL::text, "
		    "extract(epoch FROM queued)::bigint FROM hsmfs_mail_queue "
		    "WHERE name = $1", 1, v, NULL, NULL, res);
	else
		r = q_exec(q, "SELECT message_id, extract(epoch FROM queued)::bigint, "
		    "msg_date, entry, signed, reason, "
		    "extract(epoch FROM done)::bigint FROM hsmfs_mail_done "
		    "WHERE name = $1 AND outcome = $2 ORDER BY done DESC LIMIT 1",
		    2, v, NULL, NULL, res);
	if (r != 0)
		return r;
	if (PQntuples(*res) != 1) {
		PQclear(*res);
		*res = NULL;
		err_set("mail/%s: not there", name);
		return HSMFS_ERR_NOTFOUND;
	}
	return 0;
}

int
mailq_read(struct mailq *q, enum mailq_box box, const char *name,
    struct mailq_entry *e)
{
	PGresult *res;
	size_t ml, sl;
	int r;

	memset(e, 0, sizeof(*e));
	if (box == MAILQ_STAGED)
		return mailq_dir_read(q->local, box, name, e);
	if ((r = select_entry(q, box, name, &res)) != 0)
		return r;
	ml = (size_t)PQgetlength(res, 0, 3);
	sl = (size_t)PQgetlength(res, 0, 4);
	if ((e->buf = malloc(ml + sl + 1)) == NULL) {
		PQclear(res);
		return HSMFS_ERR_NOMEM;
	}
	col_str(res, 0, 0, e->h.msgid, sizeof(e->h.msgid));
	e->h.queued = pg_get_i64(res, 0, 1);
	e->h.date = pg_get_i64(res, 0, 2);
	e->h.msglen = ml;
	e->h.siglen = sl;
	memcpy(e->buf, PQgetvalue(res, 0, 3), ml);
	memcpy(e->buf + ml, PQgetvalue(res, 0, 4), sl);
	e->buf[ml + sl] = '\0';
	e->msg = e->buf;
	e->sig = e->buf + ml;
	PQclear(res);
	return 0;
}

int
mailq_reader_open(struct mailq *q, enum mailq_box box, const char *name,
    enum mailq_part part, struct mailq_reader **rp, size_t *len,
    long long *mtime)
{
	struct mailq_reader *r = calloc(1, sizeof(*r));
	int col = part == MAILQ_PART_MSG ? 3 : part == MAILQ_PART_SIGNED ? 4 : 5;
	PGresult *res;
	int e;

	*rp = NULL;
	if (r == NULL)
		return HSMFS_ERR_NOMEM;
	if (box == MAILQ_STAGED)
		e = mailq_dir_reader_open(q->local, box, name, part, &r->local,
		    len, mtime);
	else if ((e = select_entry(q, box, name, &res)) == 0) {
		if (part == MAILQ_PART_REASON && PQgetisnull(res, 0, col))
			e = HSMFS_ERR_NOTFOUND;
		else if ((r->len = (size_t)PQgetlength(res, 0, col)) > 0 &&
		    (r->buf = malloc(r->len)) == NULL)
			e = HSMFS_ERR_NOMEM;
		else {
			if (r->len > 0)
				memcpy(r->buf, PQgetvalue(res, 0, col), r->len);
			*len = r->len;
			if (mtime)
				*mtime = pg_get_i64(res, 0, 6);
		}
		PQclear(res);
	}
	if (e != 0) {
		free(r->buf);
		free(r);
		return e;
	}
	*rp = r;
	return 0;
}

ssize_t
mailq_reader_pread(struct mailq_reader *r, void *buf, size_t size, size_t off)
{
	if (r->local)
		return mailq_dir_reader_pread(r->local, buf, size, off);
	if (off >= r->len)
		return 0;
	if (size > r->len - off)
		size = r->len - off;
	memcpy(buf, r->buf + off, size);
	return (ssize_t)size;
}

void
mailq_reader_close(struct mailq_reader *r)
{
	if (r == NULL)
		return;
	mailq_dir_reader_close(r->local);
	free(r->buf);
	free(r);
}

int
mailq_remove(struct mailq *q, enum mailq_box box, const char *name)
{
	const char *v[2] = { name, box == MAILQ_SENT ? "sent" : "failed" };

	if (box == MAILQ_QUEUED)
		return HSMFS_ERR_PERM;
	if (box == MAILQ_STAGED)
		return mailq_dir_remove(q->local, box, name);
	return q_exec_one(q, "DELETE FROM hsmfs_mail_done WHERE name = $1 AND "
	    "outcome = $2", 2, v, NULL, NULL, name, "not there");
}
