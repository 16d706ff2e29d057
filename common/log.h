/* Logging: stderr in the foreground, syslog(LOG_DAEMON) when daemonized.
 * One line per event; callers name folder, object and key. Never a PIN
 * or a secret. */
#ifndef HSMFS_COMMON_LOG_H
#define HSMFS_COMMON_LOG_H

#include <syslog.h>

void log_init(const char *ident, int use_syslog, int level);
void log_set_syslog(int use_syslog);
void log_set_level(int level);
int log_parse_level(const char *s); /* "debug", "info", ... or -1 */
/* Called with every warning and error line, whatever the level, before
 * it is written (counters for MNT/.metrics). Set once at start-up. */
void log_set_hook(void (*hook)(int prio, const char *line));
void log_msg(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_err(...)   log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARNING, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
