/* MNT/.metrics: the daemon's state in the Prometheus text exposition
 * format (version 0.0.4). Folders add their own series through
 * folder_ops.metrics; fs/metrics.c adds the daemon's, the keys' and the
 * store's, groups samples by family and renders the text. */
#ifndef HSMFS_FS_METRICS_H
#define HSMFS_FS_METRICS_H

#include <stddef.h>
#include <stdio.h>

#include "crypto/keyring.h"

enum metric_type {
	METRIC_COUNTER,
	METRIC_GAUGE,
	METRIC_HISTOGRAM,
	METRIC_SUMMARY,   /* _sum and _count only, no quantiles */
};

/* A collection being rendered (one per read of .metrics). */
struct metrics;

/* One sample of family (counters end in _total). Labels follow as
 * name, value pairs ending with NULL; values are escaped here. The first
 * call for a family fixes its type and help text. */
void metrics_add(struct metrics *m, enum metric_type t, const char *family,
    const char *help, double v, ...) __attribute__((sentinel));
/* A histogram sample set: counts per bucket (not cumulative), nb upper
 * bounds for the first nb buckets, counts[nb] the rest (+Inf). */
void metrics_histogram(struct metrics *m, const char *family, const char *help,
    const double *bounds, const unsigned long *counts, size_t nb, double sum,
    ...) __attribute__((sentinel));
/* A summary without quantiles (mean = sum / count). */
void metrics_summary(struct metrics *m, const char *family, const char *help,
    double sum, unsigned long count, ...) __attribute__((sentinel));

/* Count a failure reported by fs_log_fail() (folder, hsmfs_err code),
 * and remember the last error line of the log (the log hook). */
void metrics_count_error(const char *folder, int r);
/* Hook the log (common/log.c) to count error and warning lines. */
void metrics_init(void);
/* "kind" label of an hsmfs_err code: "invalid", "hsm", "nospc", ... */
const char *metrics_err_kind(int r);
/* The last error line and its time (0: none yet), for .status. */
long long metrics_last_error(char *buf, size_t size);

/* Lines for the human .status: a key's certificate expiry and token
 * state (from keyring_status(); its ask is 0 in getattr, which runs
 * under the kernel's lock of the root directory: it must never wait for
 * a module); the store's free space, error counts and the last error. */
void metrics_status_key(FILE *out, const struct keyring_status *s);
void metrics_status_tail(FILE *out);
/* database.* lines of .status when shared= (ask: ping it first). */
void metrics_status_database(FILE *out, int ask);

/* Folder state as fs/main.c knows it. */
struct fs_folder_state {
	const char *name;
	const char *state;    /* "ready", "not_configured", "failed" */
	const char *reason;   /* why not ready ("" when ready) */
	void (*metrics)(struct metrics *m);   /* the folder's own, or NULL */
};
/* Render .metrics (malloc'ed, *len bytes); NULL when out of memory.
 * ask as for metrics_status_key. */
char *metrics_render(const struct fs_folder_state *folders, size_t nfolders,
    int ask, size_t *len);

#endif
