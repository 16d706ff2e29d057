/* Log sink: stderr or syslog, chosen once after daemonizing. */
#include "common/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static int log_syslog;
static int log_level = LOG_INFO;
static const char *log_ident = "hsmfs";
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static void (*log_hook)(int prio, const char *line);

void
log_set_hook(void (*hook)(int prio, const char *line))
{
	log_hook = hook;
}

void
log_init(const char *ident, int use_syslog, int level)
{
	log_ident = ident;
	log_level = level;
	log_set_syslog(use_syslog);
}

void
log_set_syslog(int use_syslog)
{
	log_syslog = use_syslog;
	if (use_syslog)
		openlog(log_ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

void
log_set_level(int level)
{
	log_level = level;
}

int
log_parse_level(const char *s)
{
	static const struct { const char *n; int l; } names[] = {
		{"error", LOG_ERR}, {"err", LOG_ERR}, {"warning", LOG_WARNING},
		{"warn", LOG_WARNING}, {"notice", LOG_NOTICE}, {"info", LOG_INFO},
		{"debug", LOG_DEBUG},
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcasecmp(s, names[i].n) == 0)
			return names[i].l;
	return -1;
}

void
log_msg(int prio, const char *fmt, ...)
{
	char line[2048];
	va_list ap;

	if (prio > log_level && (log_hook == NULL || prio > LOG_WARNING))
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (log_hook != NULL && prio <= LOG_WARNING)
		log_hook(prio, line);
	if (prio > log_level)
		return;
	if (log_syslog) {
		syslog(prio, "%s", line);
		return;
	}
	static const char *const tag[] = {"emerg", "alert", "crit", "error",
		"warning", "notice", "info", "debug"};
	pthread_mutex_lock(&log_lock);
	fprintf(stderr, "%s: %s: %s\n", log_ident, tag[prio & 7], line);
	pthread_mutex_unlock(&log_lock);
}
