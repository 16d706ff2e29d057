/* MNT/.metrics: Prometheus text exposition format 0.0.4, rendered at
 * open. Owns the daemon-wide error counters (fs_log_fail and the log
 * hook feed them) and the series of keys, tokens, folders and the store;
 * folders contribute their own through folder_ops.metrics. Samples are
 * collected per family and written family by family, each with one HELP
 * and one TYPE line, as the format requires. */
#include "fs/metrics.h"
#include "fs/fs.h"

#include "common/err.h"
#include "common/util.h"
#include "common/log.h"
#include "store/pg.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>
#include <openssl/asn1.h>
#include <openssl/x509.h>

struct family {
	const char *name;      /* static strings: callers pass literals */
	const char *help;
	enum metric_type type;
	char *buf;             /* sample lines */
	size_t len;
	FILE *f;
};

struct metrics {
	struct family *fam;
	size_t n, cap;
	int oom;
};

/* ---- error counters (any thread) ---- */

#define MAX_ERR_FOLDERS 8
static pthread_mutex_t err_lock = PTHREAD_MUTEX_INITIALIZER;
static const char *err_folder[MAX_ERR_FOLDERS];   /* static folder names */
static unsigned long err_count[MAX_ERR_FOLDERS][KEYRING_ERR_KINDS];
static unsigned long log_errors, log_warnings;
static char last_error[512];
static long long last_error_time;

/* Index of a result in the kind tables: -r - 1000 for an hsmfs_err, the
 * matching code's for a -errno, 0 ("other") for anything else. */
static int
err_kind(int r)
{
	if (r < 0 && r > -4096 && !HSMFS_IS_ERR(r))
		r = hsmfs_errno_err(-r);
	return HSMFS_IS_ERR(r) && -r - 1000 < KEYRING_ERR_KINDS ? -r - 1000 : 0;
}

/* The hsmfs_err code of kind index i (0 for "other"). */
static int
kind_code(int i)
{
	return i > 0 ? -(i + 1000) : 0;
}

const char *
metrics_err_kind(int r)
{
	static const char *const kinds[KEYRING_ERR_KINDS] = {
		"other", "nomem", "invalid", "badmsg", "hsm", "pin_incorrect",
		"pin_locked", "notfound", "config", "io", "nospc", "unsupported",
		"crypto", "perm", "toobig", "other",
	};
	return kinds[err_kind(r)];
}

void
metrics_count_error(const char *folder, int r)
{
	int kind = err_kind(r);
	pthread_mutex_lock(&err_lock);
	for (size_t i = 0; i < MAX_ERR_FOLDERS; i++) {
		if (err_folder[i] == NULL)
			err_folder[i] = folder;
		if (strcmp(err_folder[i], folder) == 0) {
			err_count[i][kind]++;
			break;
		}
	}
	pthread_mutex_unlock(&err_lock);
}

static void
log_hook(int prio, const char *line)
{
	pthread_mutex_lock(&err_lock);
	if (prio <= LOG_ERR) {
		log_errors++;
		snprintf(last_error, sizeof(last_error), "%s", line);
		last_error_time = (long long)time(NULL);
	} else {
		log_warnings++;
	}
	pthread_mutex_unlock(&err_lock);
}

void
metrics_init(void)
{
	log_set_hook(log_hook);
}

long long
metrics_last_error(char *buf, size_t size)
{
	long long t;
	pthread_mutex_lock(&err_lock);
	snprintf(buf, size, "%s", last_error);
	t = last_error_time;
	pthread_mutex_unlock(&err_lock);
	return t;
}

/* ---- collection ---- */

static struct family *
family_get(struct metrics *m, const char *name, enum metric_type t,
    const char *help)
{
	struct family *f;
	for (size_t i = 0; i < m->n; i++)
		if (strcmp(m->fam[i].name, name) == 0)
			return m->fam[i].f ? &m->fam[i] : NULL;
	if (m->n == m->cap) {
		size_t cap = m->cap ? 2 * m->cap : 64;
		struct family *nf = realloc(m->fam, cap * sizeof(*nf));
		if (nf == NULL) {
			m->oom = 1;
			return NULL;
		}
		m->fam = nf;
		m->cap = cap;
	}
	f = &m->fam[m->n++];
	memset(f, 0, sizeof(*f));
	f->name = name;
	f->help = help;
	f->type = t;
	if ((f->f = open_memstream(&f->buf, &f->len)) == NULL)
		m->oom = 1;
	return f->f ? f : NULL;
}

/* Length of the valid UTF-8 sequence at s (1 to 4), 0 when invalid. */
static size_t
utf8_len(const unsigned char *s)
{
	size_t n;
	unsigned cp;
	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		n = 2, cp = s[0] & 0x1f;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		n = 3, cp = s[0] & 0x0f;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		n = 4, cp = s[0] & 0x07;
	else
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
	    (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
		return 0;
	return n;
}

/* The format is UTF-8: a byte that is not (a path in another encoding)
 * becomes U+FFFD. */
static void
put_escaped(FILE *out, const char *s, int quote)
{
	for (; *s; s++) {
		size_t n = utf8_len((const unsigned char *)s);
		if (n == 0) {
			fputs("\xef\xbf\xbd", out);
		} else if (n > 1) {
			fwrite(s, 1, n, out);
			s += n - 1;
		} else if (*s == '\\')
			fputs("\\\\", out);
		else if (*s == '\n')
			fputs("\\n", out);
		else if (*s == '"' && quote)
			fputs("\\\"", out);
		else
			fputc(*s, out);
	}
}

static void
put_value(FILE *out, double v)
{
	if (isnan(v))
		fputs("NaN", out);
	else if (isinf(v))
		fputs(v > 0 ? "+Inf" : "-Inf", out);
	else if (v > -1e15 && v < 1e15 && v == (double)(long long)v)
		fprintf(out, "%lld", (long long)v);
	else
		fprintf(out, "%.9g", v);
}

/* name{labels[,le="x"]} value */
static void
put_sample(FILE *out, const char *name, const char *suffix, const char *labels,
    const char *le, double v)
{
	fprintf(out, "%s%s", name, suffix);
	if (*labels || le) {
		fprintf(out, "{%s", labels);
		if (le)
			fprintf(out, "%sle=\"%s\"", *labels ? "," : "", le);
		fputc('}', out);
	}
	fputc(' ', out);
	put_value(out, v);
	fputc('\n', out);
}

/* Labels from NULL-terminated name, value pairs: a="b",c="d". */
static char *
labels_of(va_list ap)
{
	char *buf = NULL;
	size_t n = 0;
	const char *k, *v;
	FILE *f = open_memstream(&buf, &n);
	if (f == NULL)
		return NULL;
	for (int first = 1; (k = va_arg(ap, const char *)) != NULL; first = 0) {
		v = va_arg(ap, const char *);
		fprintf(f, "%s%s=\"", first ? "" : ",", k);
		put_escaped(f, v ? v : "", 1);
		fputc('"', f);
	}
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	return buf;
}

void
metrics_add(struct metrics *m, enum metric_type t, const char *family,
    const char *help, double v, ...)
{
	struct family *f = family_get(m, family, t, help);
	char *labels;
	va_list ap;
	if (f == NULL)
		return;
	va_start(ap, v);
	labels = labels_of(ap);
	va_end(ap);
	if (labels == NULL) {
		m->oom = 1;
		return;
	}
	put_sample(f->f, family, "", labels, NULL, v);
	free(labels);
}

void
metrics_histogram(struct metrics *m, const char *family, const char *help,
    const double *bounds, const unsigned long *counts, size_t nb, double sum,
    ...)
{
	struct family *f = family_get(m, family, METRIC_HISTOGRAM, help);
	unsigned long cum = 0;
	char *labels, le[32];
	va_list ap;
	if (f == NULL)
		return;
	va_start(ap, sum);
	labels = labels_of(ap);
	va_end(ap);
	if (labels == NULL) {
		m->oom = 1;
		return;
	}
	for (size_t i = 0; i < nb; i++) {
		cum += counts[i];
		snprintf(le, sizeof(le), "%.9g", bounds[i]);
		put_sample(f->f, family, "_bucket", labels, le, (double)cum);
	}
	cum += counts[nb];
	put_sample(f->f, family, "_bucket", labels, "+Inf", (double)cum);
	put_sample(f->f, family, "_sum", labels, NULL, sum);
	put_sample(f->f, family, "_count", labels, NULL, (double)cum);
	free(labels);
}

void
metrics_summary(struct metrics *m, const char *family, const char *help,
    double sum, unsigned long count, ...)
{
	struct family *f = family_get(m, family, METRIC_SUMMARY, help);
	char *labels;
	va_list ap;
	if (f == NULL)
		return;
	va_start(ap, count);
	labels = labels_of(ap);
	va_end(ap);
	if (labels == NULL) {
		m->oom = 1;
		return;
	}
	put_sample(f->f, family, "_sum", labels, NULL, sum);
	put_sample(f->f, family, "_count", labels, NULL, (double)count);
	free(labels);
}

/* ---- the daemon's own series ---- */

static long long
asn1_time_unix(const ASN1_TIME *t)
{
	struct tm tm;
	if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
		return 0;
	return (long long)timegm(&tm);
}

static void
key_metrics(struct metrics *m, struct keyring *kr, size_t i, int ask)
{
	struct keyring_status s;
	const char *nm;
	X509 *cert;
	double bounds[KEYRING_LATENCY_BUCKETS - 1];
	int present, logged_in;

	keyring_status(kr, i, ask, &s);
	nm = s.name;
	cert = s.cert;
	present = s.present;
	logged_in = s.logged_in;
	metrics_add(m, METRIC_GAUGE, "hsmfs_key_info",
	    "Configured keys that are open: backend and token (label or file)",
	    1, "key", nm, "backend",
	    s.backend, "token", s.where, (char *)NULL);
	if (cert != NULL) {
		metrics_add(m, METRIC_GAUGE, "hsmfs_cert_not_after_seconds",
		    "Expiry of the key's certificate (notAfter), Unix time",
		    (double)asn1_time_unix(X509_get0_notAfter(cert)),
		    "key", nm, (char *)NULL);
		metrics_add(m, METRIC_GAUGE, "hsmfs_cert_not_before_seconds",
		    "Start of validity of the key's certificate (notBefore), Unix time",
		    (double)asn1_time_unix(X509_get0_notBefore(cert)),
		    "key", nm, (char *)NULL);
	}
	metrics_add(m, METRIC_GAUGE, "hsmfs_token_present",
	    "1 when the key's token is present in its slot", present,
	    "key", nm, (char *)NULL);
	metrics_add(m, METRIC_GAUGE, "hsmfs_token_logged_in",
	    "1 when the daemon is logged in to the key's token (or it needs no login)",
	    logged_in, "key", nm, (char *)NULL);
	metrics_add(m, METRIC_COUNTER, "hsmfs_hsm_operations_total",
	    "Private-key operations (sign, decrypt) with the key", (double)s.st.ops,
	    "key", nm, (char *)NULL);
	/* Every kind a token failure commonly has, so that rate() sees the
	 * first one; other kinds once they occurred. */
	for (int kind = 0; kind < KEYRING_ERR_KINDS; kind++) {
		if (s.st.errors_by[kind] == 0 && kind_code(kind) != HSMFS_ERR_HSM &&
		    kind_code(kind) != HSMFS_ERR_PIN_INCORRECT &&
		    kind_code(kind) != HSMFS_ERR_PIN_LOCKED)
			continue;
		metrics_add(m, METRIC_COUNTER, "hsmfs_hsm_errors_total",
		    "Failed private-key operations by kind", (double)s.st.errors_by[kind],
		    "key", nm, "kind", metrics_err_kind(kind_code(kind)), (char *)NULL);
	}
	for (size_t b = 0; b < KEYRING_LATENCY_BUCKETS - 1; b++)
		bounds[b] = keyring_latency_bounds_ms[b] / 1000.0;
	metrics_histogram(m, "hsmfs_hsm_latency_seconds",
	    "Latency of private-key operations in the HSM", bounds, s.st.latency,
	    KEYRING_LATENCY_BUCKETS - 1, s.st.total_ms / 1000.0, "key", nm, (char *)NULL);
	metrics_add(m, METRIC_GAUGE, "hsmfs_hsm_sessions_in_use",
	    "PKCS#11 sessions of the key's token checked out now",
	    s.st.pool_in_use, "key", nm, (char *)NULL);
	metrics_add(m, METRIC_GAUGE, "hsmfs_hsm_sessions_max",
	    "Size of the key's token session pool", s.st.pool_size,
	    "key", nm, (char *)NULL);
	metrics_add(m, METRIC_GAUGE, "hsmfs_hsm_last_operation_timestamp_seconds",
	    "Time of the key's last operation, Unix time (0: none yet)",
	    (double)s.st.last_time, "key", nm, (char *)NULL);
}

static void
store_metrics(struct metrics *m)
{
	struct statvfs sv;
	if (hsmfs_ctx->store_fd < 0 || fstatvfs(hsmfs_ctx->store_fd, &sv) != 0)
		return;
	metrics_add(m, METRIC_GAUGE, "hsmfs_store_free_bytes",
	    "Bytes available to the daemon on the store's file system",
	    (double)sv.f_bavail * (double)sv.f_frsize, (char *)NULL);
	metrics_add(m, METRIC_GAUGE, "hsmfs_store_size_bytes",
	    "Size of the store's file system",
	    (double)sv.f_blocks * (double)sv.f_frsize, (char *)NULL);
	metrics_add(m, METRIC_GAUGE, "hsmfs_store_free_inodes",
	    "Inodes available on the store's file system",
	    (double)sv.f_favail, (char *)NULL);
}

/* The shared store's pool (store/pg.h): state, reconnects, failures,
 * round trip; ask: measured now (one SELECT 1, bounded by the pool's
 * timeouts), else the last measure. */
static int
database_state(int ask, struct pg_status *st)
{
	struct pg *p = hsmfs_ctx->sconf.pg;

	if (p == NULL)
		return 0;
	if (ask)
		pg_ping(p, NULL);
	pg_status(p, st);
	return 1;
}

static void
database_metrics(struct metrics *m, int ask)
{
	struct pg_status st;

	if (!database_state(ask, &st))
		return;
	metrics_add(m, METRIC_GAUGE, "hsmfs_database_up",
	    "1 when the shared store's database answered the last statement",
	    st.state == PG_STATE_UP, (char *)NULL);
	metrics_add(m, METRIC_COUNTER, "hsmfs_database_reconnects_total",
	    "Database connections opened after the first", (double)st.reconnects,
	    (char *)NULL);
	metrics_add(m, METRIC_COUNTER, "hsmfs_database_failures_total",
	    "Failed database connects and statements", (double)st.failures,
	    (char *)NULL);
	metrics_add(m, METRIC_GAUGE, "hsmfs_database_connections",
	    "Database connections open now", (double)st.open, (char *)NULL);
	metrics_add(m, METRIC_GAUGE, "hsmfs_database_rtt_seconds",
	    "Round trip of the last SELECT 1 (0: never measured)",
	    (double)st.rtt_us / 1e6, (char *)NULL);
}

void
metrics_status_database(FILE *out, int ask)
{
	struct pg_status st;

	if (!database_state(ask, &st))
		return;
	fprintf(out, "database.state: %s\n", st.state == PG_STATE_UP ? "up" : "down");
	fprintf(out, "database.cluster: %s\n", hsmfs_ctx->cluster_origin);
	fprintf(out, "database.reconnects: %lu\n", st.reconnects);
	fprintf(out, "database.failures: %lu\n", st.failures);
	fprintf(out, "database.connections: %u\n", st.open);
	fprintf(out, "database.rtt_ms: %.3f\n", (double)st.rtt_us / 1000.0);
	fprintf(out, "database.last_error: %s\n",
	    st.last_error[0] ? st.last_error : "none");
}

static void
error_metrics(struct metrics *m)
{
	pthread_mutex_lock(&err_lock);
	for (size_t i = 0; i < MAX_ERR_FOLDERS && err_folder[i]; i++)
		for (int kind = 0; kind < KEYRING_ERR_KINDS; kind++)
			if (err_count[i][kind] > 0)
				metrics_add(m, METRIC_COUNTER, "hsmfs_errors_total",
				    "Failed operations by folder and kind (one log line each)",
				    (double)err_count[i][kind], "folder", err_folder[i],
				    "kind", metrics_err_kind(kind_code(kind)), (char *)NULL);
	metrics_add(m, METRIC_COUNTER, "hsmfs_log_messages_total",
	    "Error and warning lines logged", (double)log_errors,
	    "level", "error", (char *)NULL);
	metrics_add(m, METRIC_COUNTER, "hsmfs_log_messages_total", NULL,
	    (double)log_warnings, "level", "warning", (char *)NULL);
	metrics_add(m, METRIC_GAUGE, "hsmfs_last_error_timestamp_seconds",
	    "Time of the last error line logged, Unix time (0: none); the text is in .status",
	    (double)last_error_time, (char *)NULL);
	pthread_mutex_unlock(&err_lock);
}

/* ---- .status lines ---- */

void
metrics_status_key(FILE *out, const struct keyring_status *s)
{
	const char *nm = s->name;
	X509 *cert = s->cert;
	int present = s->present, logged_in = s->logged_in;
	char t[32];

	if (cert != NULL) {
		long long na = asn1_time_unix(X509_get0_notAfter(cert));
		util_iso_utc(na, t, sizeof(t));
		fprintf(out, "key.%s.cert_not_after: %s (in %lld days)\n", nm, t,
		    (na - (long long)time(NULL)) / 86400);
	}
	fprintf(out, "key.%s.token_state: %s\n", nm, !present ? "absent" :
	    logged_in ? "present, logged in" : "present, not logged in");
}

void
metrics_status_tail(FILE *out)
{
	struct statvfs sv;
	if (hsmfs_ctx->store_fd >= 0 && fstatvfs(hsmfs_ctx->store_fd, &sv) == 0)
		fprintf(out, "store.free: %.1f MiB (%.0f%%)\n",
		    (double)sv.f_bavail * (double)sv.f_frsize / 1048576.0,
		    sv.f_blocks ? 100.0 * (double)sv.f_bavail / (double)sv.f_blocks : 0.0);
	pthread_mutex_lock(&err_lock);
	for (size_t i = 0; i < MAX_ERR_FOLDERS && err_folder[i]; i++)
		for (int kind = 0; kind < KEYRING_ERR_KINDS; kind++)
			if (err_count[i][kind] > 0)
				fprintf(out, "errors.%s.%s: %lu\n", err_folder[i],
				    metrics_err_kind(kind_code(kind)), err_count[i][kind]);
	fprintf(out, "log.errors: %lu\nlog.warnings: %lu\n", log_errors,
	    log_warnings);
	if (last_error_time) {
		char t[32];
		util_iso_utc(last_error_time, t, sizeof(t));
		fprintf(out, "log.last_error: %s %s\n", t, last_error);
	}
	pthread_mutex_unlock(&err_lock);
}

static const char *const type_name[] = {
	[METRIC_COUNTER] = "counter",
	[METRIC_GAUGE] = "gauge",
	[METRIC_HISTOGRAM] = "histogram",
	[METRIC_SUMMARY] = "summary",
};

char *
metrics_render(const struct fs_folder_state *folders, size_t nfolders,
    int ask, size_t *len)
{
	struct metrics m = {0};
	char *buf = NULL;
	size_t n = 0;
	FILE *out;
	struct keyring *kr = hsmfs_ctx->keys;

	metrics_add(&m, METRIC_GAUGE, "hsmfs_info", "hsmfs version and store", 1,
	    "version", HSMFS_VERSION, "store", hsmfs_ctx->store, (char *)NULL);
	metrics_add(&m, METRIC_GAUGE, "hsmfs_start_time_seconds",
	    "Start of the daemon, Unix time", (double)hsmfs_ctx->started,
	    (char *)NULL);
	for (size_t i = 0; kr && i < keyring_count(kr); i++)
		key_metrics(&m, kr, i, ask);
	for (size_t i = 0; i < nfolders; i++) {
		int up = strcmp(folders[i].state, "ready") == 0;
		metrics_add(&m, METRIC_GAUGE, "hsmfs_folder_up",
		    "1 when the folder serves writes", up,
		    "folder", folders[i].name, (char *)NULL);
		metrics_add(&m, METRIC_GAUGE, "hsmfs_folder_state",
		    "The folder's state (ready, not_configured, failed) and why",
		    1, "folder", folders[i].name, "state", folders[i].state,
		    "reason", folders[i].reason, (char *)NULL);
	}
	for (size_t i = 0; i < nfolders; i++)
		if (folders[i].metrics && strcmp(folders[i].state, "ready") == 0)
			folders[i].metrics(&m);
	store_metrics(&m);
	database_metrics(&m, ask);
	error_metrics(&m);

	if ((out = open_memstream(&buf, &n)) == NULL)
		m.oom = 1;
	for (size_t i = 0; i < m.n; i++) {
		struct family *f = &m.fam[i];
		if (f->f == NULL)
			continue;
		if (fclose(f->f) != 0)
			m.oom = 1;
		f->f = NULL;
		if (out == NULL || f->buf == NULL)
			continue;
		fprintf(out, "# HELP %s ", f->name);
		put_escaped(out, f->help ? f->help : "", 0);
		fprintf(out, "\n# TYPE %s %s\n", f->name, type_name[f->type]);
		fwrite(f->buf, 1, f->len, out);
	}
	for (size_t i = 0; i < m.n; i++) {
		if (m.fam[i].f)
			fclose(m.fam[i].f);
		free(m.fam[i].buf);
	}
	free(m.fam);
	if (out != NULL && fclose(out) != 0)
		m.oom = 1;
	if (m.oom) {
		free(buf);
		return NULL;
	}
	*len = n;
	return buf;
}
