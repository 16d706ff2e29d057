/* The PostgreSQL connection layer of the shared store (contract §9,
 * docs/scale.md): every area's PostgreSQL backend (fields, history, mail
 * queue) talks to the database only through here.
 *
 * A pool of at most `pool_size` connections per process, checked out for
 * one transaction or one statement and given back. Why a pool and not a
 * connection per thread: FUSE worker threads come and go (libfuse starts
 * and ends them with the load), so per-thread connections would follow
 * the thread count and leak at thread exit; a small pool bounds each
 * node's share of the server's max_connections (nodes x pool_size), and
 * a transaction naturally stays on the connection it checked out.
 *
 * Connections are opened from the libpq URI (shared=) with our defaults
 * placed before it, so the URI overrides any of them:
 *   connect_timeout=5 (s), keepalives=1, keepalives_idle=10,
 *   keepalives_interval=5, keepalives_count=3, tcp_user_timeout=15000 (ms),
 *   options='-c statement_timeout=10000' (ms), application_name='hsmfs NODE'.
 * The password comes from libpq's own means (PGPASSFILE, passfile=) or
 * from shared_password=FILE: read at each connect into secure memory,
 * given to libpq, wiped; the file must not be accessible by group or
 * others (libpq applies the same rule to its passfile). A URI holding a
 * password is refused (it would show in ps and logs).
 *
 * Reconnection is automatic: a checked-out connection that is dead (the
 * server closed it, or a statement failed with the connection lost) is
 * replaced at the next pg_acquire. Every statement waits at most
 * PG_CLIENT_DEADLINE for its answer (then the
 * connection dropped), so no call blocks longer than connect_timeout +
 * PG_CLIENT_DEADLINE whatever the server does. Errors are HSMFS_ERR_* with one
 * err_set() line "database: <server message> (SQLSTATE x)"; a lost or
 * unreachable server, a statement timeout: HSMFS_ERR_IO (EIO). */
#ifndef HSMFS_STORE_PG_H
#define HSMFS_STORE_PG_H

#include <stddef.h>
#include <stdint.h>
#include <libpq-fe.h>

#define PG_SCHEMA_VERSION 3
#define PG_DEFAULT_POOL 4
#define PG_DEFAULT_CONNECT_TIMEOUT 5        /* s */
#define PG_DEFAULT_STATEMENT_TIMEOUT 10000  /* ms */
#define PG_DEFAULT_TCP_USER_TIMEOUT 15000   /* ms */
/* Client-side bound on any one statement's answer: statement_timeout
 * (server side) plus a margin; a server that never answers (hung, or
 * stopped with its kernel alive) costs at most this, then EIO. */
#define PG_CLIENT_DEADLINE (PG_DEFAULT_STATEMENT_TIMEOUT + 5000)  /* ms */

struct pg_conf {
	const char *uri;            /* shared=: a libpq URI or conninfo */
	const char *password_file;  /* shared_password=, or NULL */
	const char *node;           /* this node's name (NULL: hostname) */
	unsigned pool_size;         /* 0: PG_DEFAULT_POOL */
};

struct pg;       /* the pool (thread-safe) */
struct pg_conn;  /* one checked-out connection (one thread at a time) */

/* Check the URI and open the first connection (so a wrong URI, password
 * or unreachable server is reported at open, with err_detail()). */
int pg_open(const struct pg_conf *conf, struct pg **out);
void pg_close(struct pg *p);

/* Check out a live connection (waits while all pool_size are in use;
 * reconnects a dead one). Give it back with pg_release, idle (after a
 * commit or rollback). */
int pg_acquire(struct pg *p, struct pg_conn **out);
void pg_release(struct pg *p, struct pg_conn *c);

/* One statement, parameters only by value ($1...): values[i] text or
 * binary per formats[i] (NULL formats: all text; lengths needed only for
 * binary), result in text (result_binary 0) or binary. *res (may be NULL
 * when the rows are not wanted) is the PGresult to PQclear. */
int pg_exec(struct pg_conn *c, const char *sql, int nparams,
    const char *const *values, const int *lengths, const int *formats,
    int result_binary, PGresult **res);
/* A constant SQL script (several statements, no parameters): db-init. */
int pg_exec_script(struct pg_conn *c, const char *sql);
/* A bigint (int8) / integer (int4) column of a binary result (result_binary
 * 1), row and col; -1 when NULL or not of that width. */
long long pg_get_i64(const PGresult *res, int row, int col);
long long pg_get_i32(const PGresult *res, int row, int col);
/* SQLSTATE of the last failed statement on c ("" when none or when the
 * connection was lost before a server answer), e.g. "23505". */
const char *pg_sqlstate(const struct pg_conn *c);
PGconn *pg_conn_raw(struct pg_conn *c);

/* Transactions. pg_commit: 0 when committed; on failure a code, and
 * *unknown = 1 when the connection was lost after COMMIT was sent (the
 * outcome is unknown: look the transaction's record up by its id after
 * reconnecting; never acknowledge it blindly, never redo it blindly). */
int pg_begin(struct pg_conn *c);
int pg_commit(struct pg_conn *c, int *unknown);
void pg_rollback(struct pg_conn *c);
/* begin, fn, commit on one checked-out connection; a serialization
 * failure or deadlock (40001, 40P01) reruns fn up to 3 times, so fn must
 * have no effect outside the transaction (or be idempotent). *unknown as
 * for pg_commit (may be NULL when the caller has no record id). */
int pg_tx(struct pg *p, int (*fn)(struct pg_conn *c, void *arg), void *arg,
    int *unknown);

/* The schema: PG_SCHEMA_VERSION exactly, else one err_set() line
 * (missing schema, older: run db-init, newer/unknown: upgrade hsmfs). */
int pg_schema_check(struct pg_conn *c);
/* The embedded schema script (store/sql/schema.sql). */
extern const char pg_schema_sql[];

/* For .status / .metrics. */
enum pg_state { PG_STATE_DOWN = 0, PG_STATE_UP = 1 };
struct pg_status {
	enum pg_state state;
	unsigned long reconnects;   /* connections opened after the first */
	unsigned long failures;     /* failed connects and statements */
	unsigned open;              /* connections open now */
	uint64_t rtt_us;            /* last pg_ping round trip, 0: never */
	char last_error[256];       /* "" when none */
};
void pg_status(struct pg *p, struct pg_status *st);
/* SELECT 1 on a pool connection; records the round trip. */
int pg_ping(struct pg *p, uint64_t *rtt_us);

#endif
