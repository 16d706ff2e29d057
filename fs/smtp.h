/* SMTP delivery of one signed message with libcurl (docs/mail.md,
 * "Envelope and delivery"): the relay from -o smtp=, smtp_ca=,
 * smtp_auth= and the outcome of one transaction by the relay's reply. */
#ifndef HSMFS_FS_SMTP_H
#define HSMFS_FS_SMTP_H

#include <curl/curl.h>
#include <stddef.h>
#include <stdint.h>

struct smtp_relay {
	char *url;            /* libcurl URL (smtp+starttls:// rewritten) */
	int starttls;
	const char *ca;       /* -o smtp_ca=PEM or NULL (system store) */
	char *auth_user;      /* SMTP AUTH, from -o smtp_auth=FILE */
	char *auth_pass;      /* secure heap, wiped by smtp_relay_clear */
	size_t auth_pass_size;
};

enum smtp_outcome { SMTP_SENT, SMTP_TEMPFAIL, SMTP_PERMFAIL };

/* Parse smtp=URL (smtp://, smtp+starttls://, smtps://) and load the
 * AUTH file (only over TLS). 0 or a negative hsmfs_err; *r is cleared
 * on failure. */
int smtp_relay_init(struct smtp_relay *r, const char *url, const char *ca,
    const char *auth_file);
void smtp_relay_clear(struct smtp_relay *r);

/* One transaction: MAIL FROM:<from>, RCPT TO: every rcpt, DATA. The
 * reply (or libcurl's error) goes to reason, a printable line;
 * *conn_fail is set when there was no SMTP reply at all (relay down).
 * A transfer is aborted as soon as *stop becomes non-zero. */
enum smtp_outcome smtp_send(CURL *h, const struct smtp_relay *relay,
    const char *from, char *const *rcpts, size_t nrcpts,
    const uint8_t *data, size_t len, const int *stop,
    char *reason, size_t rsize, int *conn_fail);

/* Replace CR, LF and control bytes of s (a reply) by spaces, trim the end. */
void smtp_clean_line(char *s);

#endif
