/* PostgreSQL connection pool, statements and transactions (store/pg.h). */
#include "store/pg.h"
#include "common/err.h"
#include "common/util.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PG_MAX_POOL 64
#define PG_MAX_PASSWORD 1024

struct pg_conn {
	PGconn *conn;
	int busy;
	int dead;            /* replace at the next acquire */
	int timed_out;       /* the last query had no answer in time */
	char sqlstate[6];
};

struct pg {
	char *uri;
	char *password_file;
	char appname[64];
	unsigned size;
	struct pg_conn conns[PG_MAX_POOL];
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int ever_connected;
	struct pg_status st;
};

static uint64_t
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* libpq messages end with "\n" and may hold several lines: one line. */
static void
one_line(const char *in, char *out, size_t size)
{
	size_t n = 0;

	for (; in && *in && n + 1 < size; in++) {
		if (*in == '\t') {
			if (n > 0 && out[n - 1] != ' ')
				out[n++] = ' ';
			continue;
		}
		if (*in == '\n' || *in == '\r') {
			if (in[1] != '\0' && n + 3 < size && n > 0) {
				out[n++] = ';';
				out[n++] = ' ';
			}
			continue;
		}
		out[n++] = *in;
	}
	while (n > 0 && (out[n - 1] == ' ' || out[n - 1] == ';'))
		n--;
	out[n] = '\0';
}

static void
note_error(struct pg *p, const char *msg)
{
	pthread_mutex_lock(&p->mu);
	p->st.failures++;
	snprintf(p->st.last_error, sizeof(p->st.last_error), "%s", msg);
	pthread_mutex_unlock(&p->mu);
}

/* shared_password=FILE: whole file, one trailing newline stripped, into
 * secure memory. Refused when group or others may read it. */
static int
read_password(const char *path, char **out)
{
	char *buf = NULL;
	size_t n = 0;
	struct stat st;
	int fd, r = HSMFS_ERR_CONFIG;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) < 0) {
		err_set("shared_password %s: cannot open: %s", path, strerror(errno));
		return HSMFS_ERR_CONFIG;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		err_set("shared_password %s: not a regular file", path);
		goto out;
	}
	if (st.st_mode & 077) {
		err_set("shared_password %s: accessible by group or others (mode "
		    "%04o); run chmod 600 %s", path, (unsigned)(st.st_mode & 07777),
		    path);
		goto out;
	}
	if ((buf = secmem_alloc(PG_MAX_PASSWORD + 2)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	for (;;) {
		ssize_t got = read(fd, buf + n, PG_MAX_PASSWORD + 1 - n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			err_set("shared_password %s: read: %s", path, strerror(errno));
			goto out;
		}
		if (got == 0)
			break;
		n += (size_t)got;
		if (n > PG_MAX_PASSWORD) {
			err_set("shared_password %s: longer than %d bytes", path,
			    PG_MAX_PASSWORD);
			goto out;
		}
	}
	if (n > 0 && buf[n - 1] == '\n')
		n--;
	if (n > 0 && buf[n - 1] == '\r')
		n--;
	buf[n] = '\0';
	if (n == 0 || memchr(buf, '\n', n) || memchr(buf, '\0', n)) {
		err_set("shared_password %s: must hold the password on one line",
		    path);
		goto out;
	}
	*out = buf;
	buf = NULL;
	r = 0;
out:
	if (buf)
		secmem_free(buf, PG_MAX_PASSWORD + 2);
	close(fd);
	return r;
}

/* Server NOTICEs (e.g. "already exists, skipping") are not errors: libpq
 * would print them on stderr. */
static void
quiet_notice(void *arg, const char *message)
{
	(void)arg;
	(void)message;
}

/* Our defaults first, the URI after them (so it overrides them), the
 * password file's content last. */
static PGconn *
connect_one(struct pg *p, int *r)
{
	char ct[16], tut[16], opts[64];
	const char *kw[16], *val[16];
	char *pw = NULL;
	PGconn *conn;
	int n = 0;

	snprintf(ct, sizeof(ct), "%d", PG_DEFAULT_CONNECT_TIMEOUT);
	snprintf(tut, sizeof(tut), "%d", PG_DEFAULT_TCP_USER_TIMEOUT);
	snprintf(opts, sizeof(opts), "-c statement_timeout=%d",
	    PG_DEFAULT_STATEMENT_TIMEOUT);
	kw[n] = "connect_timeout"; val[n++] = ct;
	kw[n] = "keepalives"; val[n++] = "1";
	kw[n] = "keepalives_idle"; val[n++] = "10";
	kw[n] = "keepalives_interval"; val[n++] = "5";
	kw[n] = "keepalives_count"; val[n++] = "3";
	kw[n] = "tcp_user_timeout"; val[n++] = tut;
	kw[n] = "options"; val[n++] = opts;
	kw[n] = "application_name"; val[n++] = p->appname;
	kw[n] = "dbname"; val[n++] = p->uri;
	if (p->password_file) {
		if ((*r = read_password(p->password_file, &pw)) != 0)
			return NULL;
		kw[n] = "password"; val[n++] = pw;
	}
	kw[n] = NULL; val[n] = NULL;
	conn = PQconnectdbParams(kw, val, 1);
	if (pw)
		secmem_free(pw, PG_MAX_PASSWORD + 2);
	if (conn == NULL) {
		err_set("database: out of memory");
		*r = HSMFS_ERR_NOMEM;
		return NULL;
	}
	if (PQstatus(conn) != CONNECTION_OK) {
		char line[512];
		one_line(PQerrorMessage(conn), line, sizeof(line));
		err_set("database: cannot connect: %s", line);
		PQfinish(conn);
		*r = HSMFS_ERR_IO;
		return NULL;
	}
	PQsetNoticeProcessor(conn, quiet_notice, NULL);
	*r = 0;
	return conn;
}

/* An idle connection the server has closed (restart, failover, idle
 * timeout) has something to read (its FATAL message) or an EOF: replace
 * it before use. Pool connections never LISTEN, so an idle connection
 * has nothing else to say; a rare unsolicited ParameterStatus costs one
 * reconnect. */
static int
idle_conn_dead(PGconn *conn)
{
	struct pollfd pfd;

	if (PQstatus(conn) != CONNECTION_OK ||
	    PQtransactionStatus(conn) != PQTRANS_IDLE)
		return 1;
	pfd.fd = PQsocket(conn);
	pfd.events = POLLIN;
	pfd.revents = 0;
	if (pfd.fd < 0)
		return 1;
	return poll(&pfd, 1, 0) != 0;
}

int
pg_open(const struct pg_conf *conf, struct pg **out)
{
	PQconninfoOption *opts, *o;
	struct pg_conn *c;
	char *perr = NULL, host[48];
	struct pg *p;
	int r;

	*out = NULL;
	if (conf->uri == NULL || *conf->uri == '\0') {
		err_set("shared=: empty; give a libpq URI (postgresql://USER@HOST/DB)");
		return HSMFS_ERR_CONFIG;
	}
	if ((opts = PQconninfoParse(conf->uri, &perr)) == NULL) {
		char line[256];
		one_line(perr, line, sizeof(line));
		err_set("shared=: not a libpq URI: %s", perr ? line : "out of memory");
		PQfreemem(perr);
		return HSMFS_ERR_CONFIG;
	}
	for (o = opts; o->keyword; o++)
		if (strcmp(o->keyword, "password") == 0 && o->val && *o->val) {
			PQconninfoFree(opts);
			err_set("shared=: the URI holds a password (it would show in "
			    "ps and logs); use PGPASSFILE, passfile= or shared_password=");
			return HSMFS_ERR_CONFIG;
		}
	PQconninfoFree(opts);
	if ((p = calloc(1, sizeof(*p))) == NULL)
		return HSMFS_ERR_NOMEM;
	p->size = conf->pool_size ? conf->pool_size : PG_DEFAULT_POOL;
	if (p->size > PG_MAX_POOL)
		p->size = PG_MAX_POOL;
	if (conf->node)
		snprintf(host, sizeof(host), "%s", conf->node);
	else if (gethostname(host, sizeof(host)) != 0)
		snprintf(host, sizeof(host), "unknown");
	host[sizeof(host) - 1] = '\0';
	snprintf(p->appname, sizeof(p->appname), "hsmfs %s", host);
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	p->uri = strdup(conf->uri);
	p->password_file = conf->password_file ? strdup(conf->password_file) : NULL;
	if (p->uri == NULL || (conf->password_file && p->password_file == NULL)) {
		pg_close(p);
		return HSMFS_ERR_NOMEM;
	}
	if ((r = pg_acquire(p, &c)) != 0) {
		pg_close(p);
		return r;
	}
	pg_release(p, c);
	*out = p;
	return 0;
}

void
pg_close(struct pg *p)
{
	if (p == NULL)
		return;
	for (unsigned i = 0; i < PG_MAX_POOL; i++)
		if (p->conns[i].conn)
			PQfinish(p->conns[i].conn);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	free(p->uri);
	free(p->password_file);
	free(p);
}

int
pg_acquire(struct pg *p, struct pg_conn **out)
{
	struct pg_conn *c = NULL;
	PGconn *conn, *old = NULL;
	int r;

	pthread_mutex_lock(&p->mu);
	for (;;) {
		/* Prefer an open idle connection, else an empty slot. */
		for (unsigned i = 0; i < p->size && c == NULL; i++)
			if (!p->conns[i].busy && p->conns[i].conn)
				c = &p->conns[i];
		for (unsigned i = 0; i < p->size && c == NULL; i++)
			if (!p->conns[i].busy)
				c = &p->conns[i];
		if (c)
			break;
		pthread_cond_wait(&p->cv, &p->mu);
	}
	c->busy = 1;
	pthread_mutex_unlock(&p->mu);
	c->sqlstate[0] = '\0';
	if (c->conn && (c->dead || idle_conn_dead(c->conn))) {
		old = c->conn;
		c->conn = NULL;
	}
	if (old) {
		PQfinish(old);
		pthread_mutex_lock(&p->mu);
		p->st.open--;
		pthread_mutex_unlock(&p->mu);
	}
	c->dead = 0;
	if (c->conn) {
		*out = c;
		return 0;
	}
	if ((conn = connect_one(p, &r)) == NULL) {
		note_error(p, err_detail());
		pthread_mutex_lock(&p->mu);
		p->st.state = PG_STATE_DOWN;
		c->busy = 0;
		pthread_cond_signal(&p->cv);
		pthread_mutex_unlock(&p->mu);
		return r;
	}
	c->conn = conn;
	pthread_mutex_lock(&p->mu);
	if (p->ever_connected)
		p->st.reconnects++;
	p->ever_connected = 1;
	p->st.open++;
	p->st.state = PG_STATE_UP;
	pthread_mutex_unlock(&p->mu);
	*out = c;
	return 0;
}

void
pg_release(struct pg *p, struct pg_conn *c)
{
	if (c == NULL)
		return;
	/* Never hand out a connection inside a transaction. */
	if (c->conn && !c->dead && PQtransactionStatus(c->conn) != PQTRANS_IDLE) {
		PGTransactionStatusType t = PQtransactionStatus(c->conn);
		if (t == PQTRANS_UNKNOWN || t == PQTRANS_ACTIVE)
			c->dead = 1;
		else
			pg_rollback(c);
	}
	pthread_mutex_lock(&p->mu);
	c->busy = 0;
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

PGconn *
pg_conn_raw(struct pg_conn *c)
{
	return c->conn;
}

long long
pg_get_i64(const PGresult *res, int row, int col)
{
	uint64_t v;
	if (PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 8)
		return -1;
	memcpy(&v, PQgetvalue(res, row, col), 8);
	return (long long)be64toh(v);
}

long long
pg_get_i32(const PGresult *res, int row, int col)
{
	uint32_t v;
	if (PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 4)
		return -1;
	memcpy(&v, PQgetvalue(res, row, col), 4);
	return (long long)(int32_t)be32toh(v);
}

const char *
pg_sqlstate(const struct pg_conn *c)
{
	return c->sqlstate;
}

/* SQLSTATE -> HSMFS_ERR_*: connection, timeouts, server shutdown and
 * anything unexpected are EIO; the rest by class. */
static int
map_sqlstate(const char *s)
{
	if (s == NULL || *s == '\0')
		return HSMFS_ERR_IO;
	if (strncmp(s, "42501", 5) == 0)
		return HSMFS_ERR_PERM;
	if (strncmp(s, "53100", 5) == 0)
		return HSMFS_ERR_NOSPC;
	if (strncmp(s, "22", 2) == 0 || strncmp(s, "23", 2) == 0)
		return HSMFS_ERR_INVALID;
	if (strncmp(s, "42P01", 5) == 0)
		return HSMFS_ERR_NOTFOUND;
	return HSMFS_ERR_IO;
}

/* Fails with the result's server message (or the connection's), one line.
 * Marks c dead when the connection is gone. */
static int
result_error(struct pg_conn *c, PGresult *res)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *prim = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	char line[512];

	snprintf(c->sqlstate, sizeof(c->sqlstate), "%s", state ? state : "");
	if (PQstatus(c->conn) != CONNECTION_OK || (state && strncmp(state, "08", 2) == 0))
		c->dead = 1;
	one_line(prim ? prim : PQerrorMessage(c->conn), line, sizeof(line));
	if (c->timed_out) {
		c->timed_out = 0;
		err_set("database: no answer within %d ms (server hung or "
		    "unreachable); connection dropped", PG_CLIENT_DEADLINE);
	} else if (c->dead && (state == NULL || *state == '\0'))
		err_set("database: connection lost: %s", line);
	else
		err_set("database: %s (SQLSTATE %s)", line, state ? state : "?");
	return map_sqlstate(state);
}

/* The answer to the query just sent, within PG_CLIENT_DEADLINE ms: a
 * server that accepts but never answers (stopped, hung, a dead peer whose
 * kernel still ACKs) would otherwise block the caller for ever, since
 * statement_timeout runs in the server and keepalives see a live kernel.
 * Past the deadline the connection is dropped
 * (NULL, c->dead, a COMMIT's outcome unknown). Returns the last result. */
static PGresult *
wait_result(struct pg_conn *c, int *timed_out)
{
	uint64_t end = now_us() + (uint64_t)PG_CLIENT_DEADLINE * 1000u;
	PGresult *last = NULL, *rs;
	struct pollfd pfd;

	*timed_out = 0;
	for (;;) {
		int flush = PQflush(c->conn);
		uint64_t now;

		if (flush < 0)
			break;
		if (flush == 0 && !PQisBusy(c->conn)) {
			if ((rs = PQgetResult(c->conn)) == NULL)
				return last;
			PQclear(last);
			last = rs;
			continue;
		}
		if ((now = now_us()) >= end) {
			/* No PQcancel: it waits, unbounded, for the postmaster
			 * to close its socket. Dropping the connection is
			 * enough: the server's statement_timeout ends the
			 * statement, and a backend whose client is gone rolls
			 * its transaction back. */
			*timed_out = 1;
			break;
		}
		pfd.fd = PQsocket(c->conn);
		pfd.events = POLLIN | (flush ? POLLOUT : 0);
		pfd.revents = 0;
		if (poll(&pfd, 1, (int)((end - now) / 1000u) + 1) < 0 && errno != EINTR)
			break;
		if ((pfd.revents & (POLLIN | POLLERR | POLLHUP)) &&
		    !PQconsumeInput(c->conn))
			break;
	}
	PQclear(last);
	c->dead = 1;
	return NULL;
}

static PGresult *
run_query(struct pg_conn *c, const char *sql, int nparams,
    const char *const *values, const int *lengths, const int *formats,
    int result_binary, int script)
{
	PGresult *rs;
	int sent, timed_out = 0;

	if (script)
		sent = PQsendQuery(c->conn, sql);
	else
		sent = PQsendQueryParams(c->conn, sql, nparams, NULL, values, lengths,
		    formats, result_binary);
	if (!sent) {
		if (PQstatus(c->conn) != CONNECTION_OK)
			c->dead = 1;
		return NULL;
	}
	rs = wait_result(c, &timed_out);
	if (timed_out)
		c->timed_out = 1;
	return rs;
}

int
pg_exec(struct pg_conn *c, const char *sql, int nparams,
    const char *const *values, const int *lengths, const int *formats,
    int result_binary, PGresult **res)
{
	PGresult *rs;
	ExecStatusType t;

	if (res)
		*res = NULL;
	c->sqlstate[0] = '\0';
	rs = run_query(c, sql, nparams, values, lengths, formats, result_binary, 0);
	t = rs ? PQresultStatus(rs) : PGRES_FATAL_ERROR;
	if (t != PGRES_COMMAND_OK && t != PGRES_TUPLES_OK) {
		int r = result_error(c, rs);
		PQclear(rs);
		return r;
	}
	if (res)
		*res = rs;
	else
		PQclear(rs);
	return 0;
}

int
pg_exec_script(struct pg_conn *c, const char *sql)
{
	PGresult *rs;
	ExecStatusType t;
	int r = 0;

	c->sqlstate[0] = '\0';
	rs = run_query(c, sql, 0, NULL, NULL, NULL, 0, 1);
	t = rs ? PQresultStatus(rs) : PGRES_FATAL_ERROR;
	if (t != PGRES_COMMAND_OK && t != PGRES_TUPLES_OK)
		r = result_error(c, rs);
	PQclear(rs);
	return r;
}

int
pg_begin(struct pg_conn *c)
{
	return pg_exec(c, "BEGIN", 0, NULL, NULL, NULL, 0, NULL);
}

int
pg_commit(struct pg_conn *c, int *unknown)
{
	int r;

	if (unknown)
		*unknown = 0;
	if ((r = pg_exec(c, "COMMIT", 0, NULL, NULL, NULL, 0, NULL)) == 0) {
		/* COMMIT of an aborted transaction "succeeds" as ROLLBACK. */
		if (PQtransactionStatus(c->conn) != PQTRANS_IDLE) {
			err_set("database: COMMIT left the transaction open");
			return HSMFS_ERR_IO;
		}
		return 0;
	}
	/* Sent, but no answer: the server may have committed or not. A
	 * server error with a SQLSTATE (e.g. a deferred constraint) means it
	 * did not commit. */
	if (c->dead && c->sqlstate[0] == '\0') {
		if (unknown)
			*unknown = 1;
		err_prefix("COMMIT outcome unknown: ");
	}
	return r;
}

void
pg_rollback(struct pg_conn *c)
{
	PGresult *rs;

	if (c->conn == NULL || PQstatus(c->conn) != CONNECTION_OK) {
		c->dead = 1;
		return;
	}
	rs = run_query(c, "ROLLBACK", 0, NULL, NULL, NULL, 0, 0);
	if (rs == NULL || PQresultStatus(rs) != PGRES_COMMAND_OK)
		c->dead = 1;
	PQclear(rs);
}

int
pg_tx(struct pg *p, int (*fn)(struct pg_conn *c, void *arg), void *arg,
    int *unknown)
{
	struct pg_conn *c;
	int r = 0;

	if (unknown)
		*unknown = 0;
	for (int attempt = 0; attempt < 3; attempt++) {
		if ((r = pg_acquire(p, &c)) != 0)
			return r;
		if ((r = pg_begin(c)) != 0 && c->dead && attempt == 0) {
			/* Lost before anything was done: once more, reconnected. */
			pg_release(p, c);
			continue;
		}
		if (r == 0 && (r = fn(c, arg)) == 0)
			r = pg_commit(c, unknown);
		if (r != 0) {
			int retry = strcmp(c->sqlstate, "40001") == 0 ||
			    strcmp(c->sqlstate, "40P01") == 0;
			note_error(p, err_detail());
			pg_release(p, c);    /* rolls back if still open */
			if (retry && (unknown == NULL || !*unknown))
				continue;
			return r;
		}
		pg_release(p, c);
		return 0;
	}
	return r;
}

int
pg_schema_check(struct pg_conn *c)
{
	PGresult *res = NULL;
	int r, v;

	r = pg_exec(c, "SELECT max(version) FROM hsmfs_schema_version", 0, NULL,
	    NULL, NULL, 0, &res);
	if (r == HSMFS_ERR_NOTFOUND) {
		err_set("database has no hsmfs schema; run hsmfs-tool db-init");
		return HSMFS_ERR_CONFIG;
	}
	if (r != 0)
		return r;
	if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
		PQclear(res);
		err_set("database: hsmfs_schema_version is empty; run hsmfs-tool db-init");
		return HSMFS_ERR_CONFIG;
	}
	v = atoi(PQgetvalue(res, 0, 0));
	PQclear(res);
	if (v < PG_SCHEMA_VERSION) {
		err_set("database schema version %d is older than this hsmfs's %d; "
		    "run hsmfs-tool db-init to migrate it", v, PG_SCHEMA_VERSION);
		return HSMFS_ERR_CONFIG;
	}
	if (v > PG_SCHEMA_VERSION) {
		err_set("database schema version %d is unknown to this hsmfs (it "
		    "knows %d); upgrade hsmfs on this node", v, PG_SCHEMA_VERSION);
		return HSMFS_ERR_CONFIG;
	}
	return 0;
}

void
pg_status(struct pg *p, struct pg_status *st)
{
	pthread_mutex_lock(&p->mu);
	*st = p->st;
	pthread_mutex_unlock(&p->mu);
}

int
pg_ping(struct pg *p, uint64_t *rtt_us)
{
	struct pg_conn *c;
	uint64_t t0;
	int r;

	if ((r = pg_acquire(p, &c)) != 0)
		return r;
	t0 = now_us();
	r = pg_exec(c, "SELECT 1", 0, NULL, NULL, NULL, 0, NULL);
	t0 = now_us() - t0;
	if (r != 0)
		note_error(p, err_detail());
	pg_release(p, c);
	pthread_mutex_lock(&p->mu);
	if (r == 0)
		p->st.rtt_us = t0;
	else
		p->st.state = PG_STATE_DOWN;
	pthread_mutex_unlock(&p->mu);
	if (r == 0 && rtt_us)
		*rtt_us = t0;
	return r;
}
