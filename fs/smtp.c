/* SMTP over libcurl: one transaction per message on a reused easy
 * handle, judged by the relay's reply (docs/mail.md, "Reply codes"),
 * and the relay's configuration (URL scheme, AUTH file). */
#include "fs/smtp.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#include <stdio.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <openssl/crypto.h>

void
smtp_clean_line(char *s)
{
	size_t n = strlen(s);
	while (n > 0 && (s[n - 1] == '\r' || s[n - 1] == '\n' || s[n - 1] == ' '))
		s[--n] = '\0';
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 32 || (unsigned char)s[i] == 127)
			s[i] = ' ';
}

/* ---- relay configuration ---- */

void
smtp_relay_clear(struct smtp_relay *r)
{
	free(r->url);
	r->url = NULL;
	free(r->auth_user);
	r->auth_user = NULL;
	if (r->auth_pass)
		secmem_free(r->auth_pass, r->auth_pass_size);
	r->auth_pass = NULL;
	r->auth_pass_size = 0;
	r->starttls = 0;
	r->ca = NULL;
}

/* -o smtp_auth=FILE: user name on the first line, password on the
 * second. Only over TLS: a password never crosses the wire in clear. */
static int
auth_load(struct smtp_relay *rl, const char *path, int tls)
{
	char *txt = NULL, *nl, *pw;
	size_t len = 0, pwlen;
	struct stat st;
	int r;

	if (!tls) {
		err_set("smtp_auth=%s needs TLS: use smtp+starttls:// or smtps://",
		    path);
		return HSMFS_ERR_CONFIG;
	}
	if ((r = util_read_file(path, 4096, &txt, &len)) != 0)
		return r;
	r = HSMFS_ERR_CONFIG;
	if ((nl = strchr(txt, '\n')) == NULL || nl == txt) {
		err_set("%s: expected a user name line and a password line", path);
		goto out;
	}
	*nl = '\0';
	pw = nl + 1;
	pwlen = strcspn(pw, "\r\n");
	if (pwlen == 0 || strchr(txt, '\r') != NULL) {
		err_set("%s: expected a user name line and a password line", path);
		goto out;
	}
	if ((rl->auth_user = strdup(txt)) == NULL ||
	    (rl->auth_pass = secmem_alloc(pwlen + 1)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	rl->auth_pass_size = pwlen + 1;
	memcpy(rl->auth_pass, pw, pwlen);
	rl->auth_pass[pwlen] = '\0';
	/* Warned once the file is known to be an AUTH file. */
	if (stat(path, &st) == 0 && (st.st_mode & 077))
		log_warn("mail: %s is readable by group or others; chmod 600 it", path);
	r = 0;
out:
	OPENSSL_cleanse(txt, len);
	free(txt);
	return r;
}

/* HOST, [IPv6] or HOST:PORT, optionally "/", after the scheme of url
 * (rest points there). 0 or HSMFS_ERR_CONFIG with err_set(). */
static int
host_port_check(const char *url, const char *rest)
{
	const char *p = rest, *end;
	size_t hl;
	int ok;

	if (*p == '[') {
		end = strchr(p, ']');
		ok = end != NULL && end > p + 1 &&
		    strspn(p + 1, "0123456789abcdefABCDEF:.") == (size_t)(end - p - 1);
		p = end ? end + 1 : p;
	} else {
		hl = strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
		    "0123456789.-");
		ok = hl > 0 && p[0] != '-' && p[0] != '.';
		p += hl;
	}
	if (!ok) {
		err_set("smtp=%s: no valid host name after the scheme", url);
		return HSMFS_ERR_CONFIG;
	}
	if (*p == ':') {
		char *e2;
		long port;
		errno = 0;
		port = strtol(p + 1, &e2, 10);
		if (e2 == p + 1 || errno != 0 || port < 1 || port > 65535) {
			err_set("smtp=%s: port must be a number from 1 to 65535", url);
			return HSMFS_ERR_CONFIG;
		}
		p = e2;
	}
	if (strcmp(p, "") != 0 && strcmp(p, "/") != 0) {
		err_set("smtp=%s: unexpected \"%s\" after the host%s", url, p,
		    p > rest ? " and port" : "");
		return HSMFS_ERR_CONFIG;
	}
	return 0;
}

int
smtp_relay_init(struct smtp_relay *rl, const char *url, const char *ca,
    const char *auth_file)
{
	const char *rest;
	int r = 0, tls = 1;

	memset(rl, 0, sizeof(*rl));
	rl->ca = ca;
	if (strncmp(url, "smtp+starttls://", 16) == 0) {
		rl->starttls = 1;
		rest = url + 16;
	} else if (strncmp(url, "smtps://", 8) == 0) {
		rest = url + 8;
	} else if (strncmp(url, "smtp://", 7) == 0) {
		rest = url + 7;
		tls = 0;
	} else {
		err_set("smtp=%s: unsupported scheme; use smtp://HOST[:PORT], "
		    "smtp+starttls://HOST[:PORT] or smtps://HOST[:PORT]", url);
		return HSMFS_ERR_CONFIG;
	}
	if ((r = host_port_check(url, rest)) != 0)
		return r;
	if (rl->starttls) {
		if (asprintf(&rl->url, "smtp://%s", rest) < 0)
			rl->url = NULL;
	} else {
		rl->url = strdup(url);
	}
	if (rl->url == NULL)
		r = HSMFS_ERR_NOMEM;
	else if (auth_file != NULL)
		r = auth_load(rl, auth_file, tls);
	if (r != 0)
		smtp_relay_clear(rl);
	return r;
}

/* ---- one transaction ---- */

struct upload {
	const uint8_t *p;
	size_t len, off;
};

static size_t
read_cb(char *buf, size_t size, size_t n, void *arg)
{
	struct upload *u = arg;
	size_t want = size * n, left = u->len - u->off;
	if (want > left)
		want = left;
	memcpy(buf, u->p + u->off, want);
	u->off += want;
	return want;
}

/* The relay's replies: the last line, and the last 4xx/5xx line (curl
 * sends QUIT after a rejection, so the last line alone would be "221"). */
struct replies {
	char last[384];
	char err[384];
};

static int
debug_cb(CURL *h, curl_infotype type, char *data, size_t size, void *arg)
{
	struct replies *rp = arg;
	char line[384];
	if (type != CURLINFO_HEADER_IN || size == 0)
		return 0;
	if (size > sizeof(line) - 1)
		size = sizeof(line) - 1;
	memcpy(line, data, size);
	line[size] = '\0';
	smtp_clean_line(line);
	memcpy(rp->last, line, sizeof(line));
	if ((line[0] == '4' || line[0] == '5') && size >= 3)
		memcpy(rp->err, line, sizeof(line));
	return 0;
}

/* Abort a transfer when the mount is going away (not acknowledged:
 * the message stays queued). */
static int
progress_cb(void *arg, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
	return __atomic_load_n((const int *)arg, __ATOMIC_RELAXED) ? 1 : 0;
}

static void
set_options(CURL *h, const struct smtp_relay *rl, struct curl_slist *rcpt,
    const char *from, struct upload *u, char *errbuf, struct replies *rp,
    const int *stop)
{
	curl_easy_setopt(h, CURLOPT_URL, rl->url);
	curl_easy_setopt(h, CURLOPT_USE_SSL, rl->starttls ? (long)CURLUSESSL_ALL :
	    (long)CURLUSESSL_NONE);
	if (rl->ca)
		curl_easy_setopt(h, CURLOPT_CAINFO, rl->ca);
	if (rl->auth_user) {
		curl_easy_setopt(h, CURLOPT_USERNAME, rl->auth_user);
		curl_easy_setopt(h, CURLOPT_PASSWORD, rl->auth_pass);
	}
	curl_easy_setopt(h, CURLOPT_MAIL_FROM, from);
	curl_easy_setopt(h, CURLOPT_MAIL_RCPT, rcpt);
	curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
	curl_easy_setopt(h, CURLOPT_READFUNCTION, read_cb);
	curl_easy_setopt(h, CURLOPT_READDATA, u);
	curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)u->len);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(h, CURLOPT_VERBOSE, 1L);
	curl_easy_setopt(h, CURLOPT_DEBUGFUNCTION, debug_cb);
	curl_easy_setopt(h, CURLOPT_DEBUGDATA, (void *)rp);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 15L);
	curl_easy_setopt(h, CURLOPT_TIMEOUT, 300L);
	curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, progress_cb);
	curl_easy_setopt(h, CURLOPT_XFERINFODATA, (void *)stop);
}

enum smtp_outcome
smtp_send(CURL *h, const struct smtp_relay *rl, const char *from_addr,
    char *const *rcpts, size_t nrcpts, const uint8_t *data, size_t len,
    const int *stop, char *reason, size_t rsize, int *conn_fail)
{
	struct curl_slist *rcpt = NULL;
	struct upload u = { data, len, 0 };
	char errbuf[CURL_ERROR_SIZE] = "", from[300];
	struct replies rp = { "", "" };
	const char *last = rp.last;
	long code = 0;
	CURLcode rc;
	enum smtp_outcome o;

	*conn_fail = 0;
	snprintf(from, sizeof(from), "<%s>", from_addr);
	for (size_t i = 0; i < nrcpts; i++) {
		char a[300];
		struct curl_slist *n;
		snprintf(a, sizeof(a), "<%s>", rcpts[i]);
		if ((n = curl_slist_append(rcpt, a)) == NULL) {
			snprintf(reason, rsize, "out of memory");
			curl_slist_free_all(rcpt);
			return SMTP_TEMPFAIL;
		}
		rcpt = n;
	}
	set_options(h, rl, rcpt, from, &u, errbuf, &rp, stop);
	rc = curl_easy_perform(h);
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
	curl_easy_setopt(h, CURLOPT_MAIL_RCPT, NULL);
	curl_slist_free_all(rcpt);

	if (rc == CURLE_OK) {
		snprintf(reason, rsize, "%s", last[0] ? last : "250");
		return SMTP_SENT;
	}
	if (rc == CURLE_LOGIN_DENIED) {
		/* A configuration problem, not the message's: keep it queued. */
		o = SMTP_TEMPFAIL;
		snprintf(reason, rsize, "SMTP AUTH refused (check -o smtp_auth): %.200s",
		    rp.err[0] ? rp.err : errbuf);
	} else if (code >= 500 && code < 600) {
		o = SMTP_PERMFAIL;
		snprintf(reason, rsize, "%s", rp.err[0] ? rp.err : errbuf);
	} else if (code >= 400 && code < 500) {
		o = SMTP_TEMPFAIL;
		snprintf(reason, rsize, "%s", rp.err[0] ? rp.err : errbuf);
	} else {
		/* No SMTP reply to judge by: connection, TLS or timeout. */
		o = SMTP_TEMPFAIL;
		*conn_fail = 1;
		snprintf(reason, rsize, "%s", errbuf[0] ? errbuf :
		    curl_easy_strerror(rc));
	}
	smtp_clean_line(reason);
	return o;
}
