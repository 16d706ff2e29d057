/* /mail: owns the durable outgoing mail queue under STORE/mail/ and the
 * one sender thread that signs (S/MIME, crypto/smime.c) and delivers it
 * over SMTP with libcurl. Layout, views and retry policy: docs/mail.md.
 *
 * STORE/mail/queue/NAME   one entry file per queued message: a small
 *                         header, the message as written, the signed wire
 *                         form (empty while signing must be retried)
 * STORE/mail/retry/NAME   schedule after a failed attempt or a requeue
 * STORE/mail/sent/NAME    the entry file after the relay's 250
 * STORE/mail/failed/NAME  the entry file after a permanent failure,
 * STORE/mail/errors/NAME  and why
 * STORE/mail/.temp/.NAME  a writer's temporary, checked and signed at its
 *                         close like a queued entry (or empty), queued
 *                         when renamed onto a valid name (fs/temp.h)
 * Every move is one rename of the entry file, so a message is in exactly
 * one state after a crash.
 *
 * Locking: mail.lock guards the in-memory queue, the open writers and
 * every rename into or out of queue/ and failed/. The sender thread
 * never holds it during signing or network I/O; an entry it works on is
 * marked inflight and left alone by the FUSE side. */
#include "fs/fs.h"
#include "store/dirio.h"
#include "fs/temp.h"
#include "crypto/smime.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include <openssl/x509v3.h>

#define MAIL_MAX_BACKOFF 3600        /* RFC 5321 4.5.4.1 doubling cap */
#define MAIL_XATTR "user.hsmfs.mail"
#define MAIL_MAGIC "hsmfs-mail 1\n"
#define MAIL_HDR_MAX 4096
#define MAIL_SYNC_BATCH 64           /* deliveries per sent/ directory fsync */
#define MAIL_FIRST_DELAY 2           /* s before the first attempt (1-2 s) */

/* The fixed part of an entry file, written once at queueing time. */
struct entry_hdr {
	long long queued;     /* when it was written */
	long long date;       /* Date used when the message had none */
	char msgid[256];      /* Message-ID used when the message had none */
	size_t msglen, siglen;
	size_t hdrlen;        /* bytes before the message */
};

/* The schedule of a queued message (retry/NAME when it has one). */
struct mstate {
	long long queued;     /* start of the max-age clock */
	long long next;       /* next attempt */
	unsigned attempts;
	char last[384];       /* last reply or local reason */
};

struct qent {
	char name[256];
	struct mstate st;
	size_t msglen;        /* for stat without reading the file */
	int inflight;
};

/* A message being written: visible as MNT/mail/NAME until released. */
struct writer {
	char name[256];
	char *buf;
	size_t len, cap;
	int dirty;            /* written since the last successful commit */
	int committed;        /* queued: further writes are refused */
	int staged;           /* a temporary's content is in .temp/ */
	int result;           /* last flush result */
	struct writer *next;
};

enum mfh_kind { FH_WRITER = 1, FH_FILE };

/* An open file: a writer, or a byte range of a store file. */
struct mfh {
	enum mfh_kind kind;
	int fd;
	off_t base;
	size_t len;
	struct writer *w;
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t thread;
	int started, thread_running, stopping;
	int mailfd, qfd, retryfd, sentfd, failfd, errfd;
	/* key, md, key_name: set at start and by a reload under the
	 * configuration write lock; the sender reads them holding it. */
	hsm_key *key;
	const EVP_MD *md;
	char key_name[256];
	char *url;            /* libcurl URL (smtp+starttls:// rewritten) */
	int starttls;
	char *auth_user;      /* SMTP AUTH, from -o smtp_auth=FILE */
	char *auth_pass;      /* secure heap, wiped at stop */
	size_t auth_pass_size;
	struct qent *q;
	size_t nq, capq;
	struct writer *writers;
	struct temp_area temps;
	unsigned long sent_total;
	char last_error[384];
	long long last_error_time;
} mail = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.cond = PTHREAD_COND_INITIALIZER,
	.mailfd = -1, .qfd = -1, .retryfd = -1, .sentfd = -1, .failfd = -1,
	.errfd = -1,
	.temps = TEMP_AREA_INIT,
};

/* ---- small helpers ---- */

static long long
now_s(void)
{
	return (long long)time(NULL);
}

/* One printable line: replies may carry CR/LF or control bytes. */
static void
clean_line(char *s)
{
	size_t n = strlen(s);
	while (n > 0 && (s[n - 1] == '\r' || s[n - 1] == '\n' || s[n - 1] == ' '))
		s[--n] = '\0';
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 32 || (unsigned char)s[i] == 127)
			s[i] = ' ';
}

static struct qent *
q_find_locked(const char *name)
{
	for (size_t i = 0; i < mail.nq; i++)
		if (strcmp(mail.q[i].name, name) == 0)
			return &mail.q[i];
	return NULL;
}

/* The writer that owns a name: once its message is queued (or a
 * temporary's staged) the name belongs to the queue (or the temp area),
 * even while the writer's release is still on its way. */
static struct writer *
w_find_locked(const char *name)
{
	for (struct writer *w = mail.writers; w; w = w->next)
		if (strcmp(w->name, name) == 0 && !w->committed && !w->staged)
			return w;
	return NULL;
}

static int
q_add_locked(const char *name, const struct mstate *st, size_t msglen)
{
	if (mail.nq == mail.capq) {
		size_t cap = mail.capq ? mail.capq * 2 : 64;
		struct qent *nq = realloc(mail.q, cap * sizeof(*nq));
		if (nq == NULL)
			return HSMFS_ERR_NOMEM;
		mail.q = nq;
		mail.capq = cap;
	}
	memset(&mail.q[mail.nq], 0, sizeof(mail.q[0]));
	snprintf(mail.q[mail.nq].name, sizeof(mail.q[0].name), "%s", name);
	mail.q[mail.nq].st = *st;
	mail.q[mail.nq].msglen = msglen;
	mail.nq++;
	return 0;
}

static void
q_del_locked(struct qent *e)
{
	size_t i = (size_t)(e - mail.q);
	mail.q[i] = mail.q[--mail.nq];
}

static int
file_exists(int dirfd, const char *name)
{
	struct stat st;
	return fstatat(dirfd, name, &st, 0) == 0;
}

/* ---- entry files ---- */

static int
hdr_format(const struct entry_hdr *h, char *buf, size_t size)
{
	return snprintf(buf, size, MAIL_MAGIC "queued %lld\ndate %lld\nmsgid %s\n"
	    "msg %zu\nsigned %zu\n\n", h->queued, h->date, h->msgid, h->msglen,
	    h->siglen);
}

/* Parse the header at the start of buf (len bytes available). */
static int
hdr_parse(const char *buf, size_t len, struct entry_hdr *h)
{
	const char *end = NULL, *p;
	char tmp[MAIL_HDR_MAX + 1], *line, *save = NULL;
	size_t n;

	memset(h, 0, sizeof(*h));
	if (len > MAIL_HDR_MAX)
		len = MAIL_HDR_MAX;
	for (p = buf; p + 1 < buf + len; p++)
		if (p[0] == '\n' && p[1] == '\n') {
			end = p + 2;
			break;
		}
	if (end == NULL || strncmp(buf, MAIL_MAGIC, strlen(MAIL_MAGIC)) != 0) {
		err_set("not a mail queue entry (bad header)");
		return HSMFS_ERR_BADMSG;
	}
	n = (size_t)(end - buf);
	memcpy(tmp, buf, n);
	tmp[n] = '\0';
	for (line = strtok_r(tmp, "\n", &save); line;
	    line = strtok_r(NULL, "\n", &save)) {
		if (strncmp(line, "queued ", 7) == 0)
			h->queued = atoll(line + 7);
		else if (strncmp(line, "date ", 5) == 0)
			h->date = atoll(line + 5);
		else if (strncmp(line, "msgid ", 6) == 0)
			snprintf(h->msgid, sizeof(h->msgid), "%s", line + 6);
		else if (strncmp(line, "msg ", 4) == 0)
			h->msglen = (size_t)strtoull(line + 4, NULL, 10);
		else if (strncmp(line, "signed ", 7) == 0)
			h->siglen = (size_t)strtoull(line + 7, NULL, 10);
	}
	h->hdrlen = n;
	if (h->msgid[0] != '<' || h->msglen > SMIME_MAX_MSG ||
	    h->siglen > 2 * (size_t)SMIME_MAX_MSG) {
		err_set("mail queue entry header is damaged");
		return HSMFS_ERR_BADMSG;
	}
	return 0;
}

/* Header of an open entry file, checked against the file size. */
static int
hdr_read_fd(int fd, struct entry_hdr *h)
{
	char buf[MAIL_HDR_MAX];
	struct stat st;
	ssize_t n = pread(fd, buf, sizeof(buf), 0);
	int r;
	if (n < 0 || fstat(fd, &st) < 0) {
		err_set("read entry: %s", strerror(errno));
		return HSMFS_ERR_IO;
	}
	if ((r = hdr_parse(buf, (size_t)n, h)) != 0)
		return r;
	if ((size_t)st.st_size != h->hdrlen + h->msglen + h->siglen) {
		err_set("mail queue entry is truncated");
		return HSMFS_ERR_BADMSG;
	}
	return 0;
}

static int
hdr_read_at(int dirfd, const char *name, struct entry_hdr *h)
{
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC), r;
	if (fd < 0) {
		err_set("open %s: %s", name, strerror(errno));
		return hsmfs_errno_err(errno);
	}
	r = hdr_read_fd(fd, h);
	close(fd);
	return r;
}

/* Whole entry: *buf holds header, message, signature. */
static int
entry_read(int dirfd, const char *name, struct entry_hdr *h, char **buf)
{
	size_t len;
	int r;
	if ((r = store_read_file(dirfd, name, MAIL_HDR_MAX + 3 * (size_t)SMIME_MAX_MSG,
	    buf, &len)) != 0)
		return r;
	if ((r = hdr_parse(*buf, len, h)) == 0 &&
	    len != h->hdrlen + h->msglen + h->siglen) {
		err_set("mail queue entry %s is truncated", name);
		r = HSMFS_ERR_BADMSG;
	}
	if (r != 0) {
		free(*buf);
		*buf = NULL;
	}
	return r;
}

/* Write a complete entry to a fsync'ed temp file in queue/. */
static int
entry_tmp(struct entry_hdr *h, const void *msg, const void *sig,
    struct store_tmp *t)
{
	char hb[MAIL_HDR_MAX];
	int n = hdr_format(h, hb, sizeof(hb)), r;
	if (n < 0 || (size_t)n >= sizeof(hb)) {
		err_set("mail entry header too long");
		return HSMFS_ERR_INVALID;
	}
	h->hdrlen = (size_t)n;
	if ((r = store_tmp_create(mail.qfd, t)) != 0)
		return r;
	if ((r = store_write_all(t->fd, hb, (size_t)n)) != 0 ||
	    (r = store_write_all(t->fd, msg, h->msglen)) != 0 ||
	    (h->siglen && (r = store_write_all(t->fd, sig, h->siglen)) != 0))
		goto fail;
	if (fsync(t->fd) < 0) {
		err_set("fsync: %s", strerror(errno));
		r = hsmfs_errno_err(errno);
		goto fail;
	}
	return 0;
fail:
	store_tmp_abort(t);
	return r;
}

/* ---- schedules ---- */

static int
sched_write(const char *name, const struct mstate *st)
{
	char buf[1024];
	int n = snprintf(buf, sizeof(buf), "queued %lld\nnext %lld\nattempts %u\n"
	    "last %s\n", st->queued, st->next, st->attempts, st->last);
	return store_write_atomic(mail.retryfd, name, buf, (size_t)n);
}

/* The schedule of a queue entry: retry/NAME, else a fresh one. */
static void
sched_read(const char *name, const struct entry_hdr *h, struct mstate *st)
{
	char *txt = NULL, *line, *save = NULL;
	memset(st, 0, sizeof(*st));
	st->queued = st->next = h->queued;
	if (store_read_file(mail.retryfd, name, 4096, &txt, NULL) != 0)
		return;
	for (line = strtok_r(txt, "\n", &save); line;
	    line = strtok_r(NULL, "\n", &save)) {
		if (strncmp(line, "queued ", 7) == 0)
			st->queued = atoll(line + 7);
		else if (strncmp(line, "next ", 5) == 0)
			st->next = atoll(line + 5);
		else if (strncmp(line, "attempts ", 9) == 0)
			st->attempts = (unsigned)strtoul(line + 9, NULL, 10);
		else if (strncmp(line, "last ", 5) == 0)
			snprintf(st->last, sizeof(st->last), "%s", line + 5);
	}
	free(txt);
}

/* ---- queue admission (FUSE flush) ---- */

/* Check, sign and durably queue one written message. */
static int
mail_commit(struct writer *w)
{
	struct smime_msg m = { 0 };
	struct entry_hdr h = { 0 };
	struct mstate st = { 0 };
	struct store_tmp t;
	uint8_t *sig = NULL;
	size_t siglen = 0;
	int r;

	err_clear();
	if ((r = smime_check(w->buf, w->len, &m)) != 0)
		goto out;
	/* Receivers compare From with the certificate; sign anyway (the
	 * relay may rewrite), but say why clients will flag it. */
	if (X509_check_email(keyring_key_cert(mail.key), m.from, 0, 0) != 1)
		log_warn("mail/%s: From %s is not an address of key %s's "
		    "certificate; receivers will flag the signature", w->name,
		    m.from, mail.key_name);
	h.queued = h.date = now_s();
	if (m.msgid)
		snprintf(h.msgid, sizeof(h.msgid), "%s", m.msgid);
	else if ((r = smime_msgid_new(m.from, h.msgid, sizeof(h.msgid))) != 0)
		goto out;
	/* MIME problems (an 8-bit multipart) are the writer's to fix; a
	 * failing HSM does not lose the message: it is queued unsigned and
	 * the sender signs it when the token is back. */
	if ((r = smime_sign(mail.key, mail.md, w->buf, w->len, (time_t)h.date,
	    h.msgid, &sig, &siglen)) != 0) {
		if (r == HSMFS_ERR_INVALID)
			goto out;
		fs_log_fail("mail", w->name, mail.key_name,
		    "signing failed, queued unsigned; the sender will retry", r);
		free(sig);
		sig = NULL;
		siglen = 0;
	}
	h.msglen = w->len;
	h.siglen = siglen;
	if ((r = entry_tmp(&h, w->buf, sig, &t)) != 0)
		goto out;
	/* The first attempt waits a moment: tools set the mode or times
	 * of the name right after close (install -m, rsync, mv), and a sent
	 * message leaves the name at once. */
	st.queued = h.queued;
	st.next = h.queued + MAIL_FIRST_DELAY;
	if (temp_name(w->name)) {
		/* Checked and signed; queued when renamed into place. */
		if (renameat(mail.qfd, t.name, mail.temps.dirfd, w->name) < 0) {
			int e = errno;
			store_tmp_abort(&t);
			err_set("rename into the temp area: %s", strerror(e));
			r = hsmfs_errno_err(e);
			goto out;
		}
		close(t.fd);
		r = store_fsync_dir(mail.temps.dirfd);
		goto out;
	}
	pthread_mutex_lock(&mail.lock);
	if (q_find_locked(w->name) != NULL) {
		pthread_mutex_unlock(&mail.lock);
		store_tmp_abort(&t);
		err_set("a message with this name is already queued");
		r = HSMFS_ERR_PERM;
		goto out;
	}
	if (renameat2(mail.qfd, t.name, mail.qfd, w->name, RENAME_NOREPLACE) < 0) {
		int e = errno;
		pthread_mutex_unlock(&mail.lock);
		store_tmp_abort(&t);
		err_set("rename into the queue: %s", strerror(e));
		r = hsmfs_errno_err(e);
		goto out;
	}
	close(t.fd);
	/* A stale schedule of an older message with this name must not
	 * delay this one. */
	unlinkat(mail.retryfd, w->name, 0);
	r = q_add_locked(w->name, &st, h.msglen);
	pthread_mutex_unlock(&mail.lock);
	/* Durable before close() returns; the sender may already be at it. */
	if (r == 0)
		r = store_fsync_dir(mail.qfd);
	if (r == 0) {
		pthread_mutex_lock(&mail.lock);
		pthread_cond_signal(&mail.cond);
		pthread_mutex_unlock(&mail.lock);
		log_debug("mail/%s: queued for %zu recipient(s), Message-ID %s",
		    w->name, m.nrcpts, h.msgid);
	}
out:
	free(sig);
	smime_msg_clear(&m);
	return r;
}

/* ---- delivery ---- */

enum outcome { SENT, TEMPFAIL, PERMFAIL };

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
	clean_line(line);
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
	return __atomic_load_n(&mail.stopping, __ATOMIC_RELAXED) ? 1 : 0;
}

static enum outcome
smtp_send(CURL *h, const struct smime_msg *m, const uint8_t *data, size_t len,
    char *reason, size_t rsize, int *conn_fail)
{
	struct curl_slist *rcpt = NULL;
	struct upload u = { data, len, 0 };
	char errbuf[CURL_ERROR_SIZE] = "", from[300];
	struct replies rp = { "", "" };
	const char *last = rp.last;
	long code = 0;
	CURLcode rc;
	enum outcome o;

	*conn_fail = 0;
	snprintf(from, sizeof(from), "<%s>", m->from);
	for (size_t i = 0; i < m->nrcpts; i++) {
		char a[300];
		struct curl_slist *n;
		snprintf(a, sizeof(a), "<%s>", m->rcpts[i]);
		if ((n = curl_slist_append(rcpt, a)) == NULL) {
			snprintf(reason, rsize, "out of memory");
			curl_slist_free_all(rcpt);
			return TEMPFAIL;
		}
		rcpt = n;
	}
	curl_easy_setopt(h, CURLOPT_URL, mail.url);
	curl_easy_setopt(h, CURLOPT_USE_SSL, mail.starttls ? (long)CURLUSESSL_ALL :
	    (long)CURLUSESSL_NONE);
	if (hsmfs_ctx->opt.smtp_ca)
		curl_easy_setopt(h, CURLOPT_CAINFO, hsmfs_ctx->opt.smtp_ca);
	if (mail.auth_user) {
		curl_easy_setopt(h, CURLOPT_USERNAME, mail.auth_user);
		curl_easy_setopt(h, CURLOPT_PASSWORD, mail.auth_pass);
	}
	curl_easy_setopt(h, CURLOPT_MAIL_FROM, from);
	curl_easy_setopt(h, CURLOPT_MAIL_RCPT, rcpt);
	curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
	curl_easy_setopt(h, CURLOPT_READFUNCTION, read_cb);
	curl_easy_setopt(h, CURLOPT_READDATA, &u);
	curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)len);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(h, CURLOPT_VERBOSE, 1L);
	curl_easy_setopt(h, CURLOPT_DEBUGFUNCTION, debug_cb);
	curl_easy_setopt(h, CURLOPT_DEBUGDATA, (void *)&rp);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 15L);
	curl_easy_setopt(h, CURLOPT_TIMEOUT, 300L);
	curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, progress_cb);

	rc = curl_easy_perform(h);
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
	curl_easy_setopt(h, CURLOPT_MAIL_RCPT, NULL);
	curl_slist_free_all(rcpt);

	if (rc == CURLE_OK) {
		snprintf(reason, rsize, "%s", last[0] ? last : "250");
		return SENT;
	}
	if (rc == CURLE_LOGIN_DENIED) {
		/* A configuration problem, not the message's: keep it queued. */
		o = TEMPFAIL;
		snprintf(reason, rsize, "SMTP AUTH refused (check -o smtp_auth): %.200s",
		    rp.err[0] ? rp.err : errbuf);
	} else if (code >= 500 && code < 600) {
		o = PERMFAIL;
		snprintf(reason, rsize, "%s", rp.err[0] ? rp.err : errbuf);
	} else if (code >= 400 && code < 500) {
		o = TEMPFAIL;
		snprintf(reason, rsize, "%s", rp.err[0] ? rp.err : errbuf);
	} else {
		/* No SMTP reply to judge by: connection, TLS or timeout. */
		o = TEMPFAIL;
		*conn_fail = 1;
		snprintf(reason, rsize, "%s", errbuf[0] ? errbuf :
		    curl_easy_strerror(rc));
	}
	clean_line(reason);
	return o;
}


/* Sign an entry queued unsigned (the HSM failed at close). Date and
 * Message-ID come from its header, so they stay stable. */
static int
entry_sign(const char *name, struct entry_hdr *h, char **buf)
{
	struct store_tmp t;
	struct entry_hdr nh = *h;
	uint8_t *sig = NULL;
	size_t siglen = 0;
	char *nb;
	int r;

	/* The sender thread: hold the configuration so a reload cannot
	 * change or close the key mid-signature. */
	fs_conf_rdlock();
	r = smime_sign(mail.key, mail.md, *buf + h->hdrlen, h->msglen,
	    (time_t)h->date, h->msgid, &sig, &siglen);
	fs_conf_unlock();
	if (r != 0)
		return r;
	nh.siglen = siglen;
	if ((r = entry_tmp(&nh, *buf + h->hdrlen, sig, &t)) != 0)
		goto out;
	if ((r = store_tmp_commit(&t, name)) != 0)
		goto out;
	if ((nb = malloc(nh.hdrlen + nh.msglen + siglen + 1)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	hdr_format(&nh, nb, nh.hdrlen + 1);
	memcpy(nb + nh.hdrlen, *buf + h->hdrlen, h->msglen);
	memcpy(nb + nh.hdrlen + nh.msglen, sig, siglen);
	free(*buf);
	*buf = nb;
	*h = nh;
out:
	free(sig);
	return r;
}

static void
note_error_locked(const char *reason)
{
	snprintf(mail.last_error, sizeof(mail.last_error), "%s", reason);
	mail.last_error_time = now_s();
}

/* queue/NAME -> failed/NAME with errors/NAME (lock held). */
static void
fail_entry_locked(struct qent *e, const char *reason)
{
	char buf[1024], t[32];
	struct entry_hdr h;
	int n;

	util_iso_utc(now_s(), t, sizeof(t));
	if (hdr_read_at(mail.qfd, e->name, &h) != 0)
		snprintf(h.msgid, sizeof(h.msgid), "(unknown)");
	n = snprintf(buf, sizeof(buf), "%s %s\nattempts: %u\nqueued: %lld\n"
	    "message-id: %s\n", t, reason, e->st.attempts, e->st.queued, h.msgid);
	if (store_write_atomic(mail.errfd, e->name, buf, (size_t)n) != 0)
		log_err("mail/%s: cannot record the failure: %s", e->name,
		    err_detail());
	if (renameat(mail.qfd, e->name, mail.failfd, e->name) < 0)
		log_err("mail/%s: cannot move to failed/: %s", e->name, strerror(errno));
	unlinkat(mail.retryfd, e->name, 0);
	store_fsync_dir(mail.failfd);
	store_fsync_dir(mail.qfd);
	log_err("mail/%s: delivery failed permanently, see failed/%s.error: %s",
	    e->name, e->name, reason);
	note_error_locked(reason);
	q_del_locked(e);
}

/* Temporary failure: next attempt per RFC 5321 4.5.4.1 (first backoff
 * mail_retry, doubling up to an hour), or failed/ after mail_max_age. */
static void
defer_locked(struct qent *e, const char *reason)
{
	long long now = now_s(), back = hsmfs_ctx->opt.mail_retry;
	for (unsigned i = 1; i < e->st.attempts && back < MAIL_MAX_BACKOFF; i++)
		back *= 2;
	if (back > MAIL_MAX_BACKOFF)
		back = MAIL_MAX_BACKOFF;
	snprintf(e->st.last, sizeof(e->st.last), "%s", reason);
	note_error_locked(reason);
	if (now - e->st.queued >= hsmfs_ctx->opt.mail_max_age) {
		char why[512];
		snprintf(why, sizeof(why), "gave up after %u attempts in %lld s: %s",
		    e->st.attempts, now - e->st.queued, reason);
		fail_entry_locked(e, why);
		return;
	}
	e->st.next = now + back;
	if (sched_write(e->name, &e->st) != 0)
		log_err("mail/%s: cannot save the schedule: %s", e->name, err_detail());
	log_warn("mail/%s: attempt %u failed, next in %lld s: %s", e->name,
	    e->st.attempts, back, reason);
}

/* One attempt for one entry; called without the lock, e inflight. */
static enum outcome
deliver(CURL *h, const char *name, char *reason, size_t rsize, int *conn_fail)
{
	struct entry_hdr eh;
	struct smime_msg m = { 0 };
	enum outcome o = TEMPFAIL;
	char *buf = NULL;
	int r;

	*conn_fail = 0;
	err_clear();
	if ((r = entry_read(mail.qfd, name, &eh, &buf)) != 0) {
		snprintf(reason, rsize, "cannot read the queue entry: %s", err_detail());
		return r == HSMFS_ERR_BADMSG ? PERMFAIL : TEMPFAIL;
	}
	if ((r = smime_check(buf + eh.hdrlen, eh.msglen, &m)) != 0) {
		snprintf(reason, rsize, "message refused: %s", err_detail());
		o = PERMFAIL;
		goto out;
	}
	if (eh.siglen == 0 && (r = entry_sign(name, &eh, &buf)) != 0) {
		snprintf(reason, rsize, "signing with key %s failed: %s",
		    mail.key_name, err_detail());
		o = r == HSMFS_ERR_INVALID ? PERMFAIL : TEMPFAIL;
		goto out;
	}
	o = smtp_send(h, &m, (const uint8_t *)buf + eh.hdrlen + eh.msglen,
	    eh.siglen, reason, rsize, conn_fail);
out:
	free(buf);
	smime_msg_clear(&m);
	return o;
}

static void
sync_dirs(int *pending)
{
	if (*pending == 0)
		return;
	store_fsync_dir(mail.sentfd);
	store_fsync_dir(mail.qfd);
	store_fsync_dir(mail.retryfd);
	*pending = 0;
}

static void *
sender_main(void *arg)
{
	CURL *h = curl_easy_init();
	int unsynced = 0;

	if (h == NULL)
		log_err("mail: curl_easy_init failed; mail stays queued");
	pthread_mutex_lock(&mail.lock);
	while (!mail.stopping) {
		long long now = now_s(), soonest = -1;
		struct qent *due = NULL;
		char name[256], reason[384];
		enum outcome o;
		int conn_fail;

		for (size_t i = 0; i < mail.nq; i++) {
			struct qent *e = &mail.q[i];
			if (e->inflight)
				continue;
			if (soonest < 0 || e->st.next < soonest)
				soonest = e->st.next;
			if (e->st.next <= now &&
			    (due == NULL || e->st.next < due->st.next ||
			    (e->st.next == due->st.next && e->st.queued < due->st.queued)))
				due = e;
		}
		if (due == NULL || mail.url == NULL || h == NULL ||
		    unsynced >= MAIL_SYNC_BATCH) {
			struct timespec ts;
			if (unsynced > 0) {
				/* Renames into sent/ become durable in batches; a
				 * crash before this only re-sends (same Message-ID). */
				pthread_mutex_unlock(&mail.lock);
				sync_dirs(&unsynced);
				pthread_mutex_lock(&mail.lock);
				continue;
			}
			if (soonest < 0 || mail.url == NULL || h == NULL) {
				pthread_cond_wait(&mail.cond, &mail.lock);
				continue;
			}
			ts.tv_sec = (time_t)soonest;
			ts.tv_nsec = 0;
			pthread_cond_timedwait(&mail.cond, &mail.lock, &ts);
			continue;
		}
		due->inflight = 1;
		due->st.attempts++;
		snprintf(name, sizeof(name), "%s", due->name);
		pthread_mutex_unlock(&mail.lock);

		o = deliver(h, name, reason, sizeof(reason), &conn_fail);

		pthread_mutex_lock(&mail.lock);
		if ((due = q_find_locked(name)) == NULL)
			continue;
		due->inflight = 0;
		if (o == SENT) {
			if (renameat(mail.qfd, name, mail.sentfd, name) < 0)
				log_err("mail/%s: delivered, but cannot move it to sent/: %s",
				    name, strerror(errno));
			unlinkat(mail.retryfd, name, 0);
			log_debug("mail/%s: delivered (%s)", name, reason);
			mail.sent_total++;
			q_del_locked(due);
			unsynced++;
		} else if (o == PERMFAIL) {
			fail_entry_locked(due, reason);
		} else {
			defer_locked(due, reason);
			/* RFC 5321 4.5.4.1: do not hammer a relay that is down;
			 * every message due now counts this as its attempt. */
			while (conn_fail) {
				struct qent *e = NULL;
				for (size_t i = 0; i < mail.nq && e == NULL; i++)
					if (!mail.q[i].inflight && mail.q[i].st.next <= now)
						e = &mail.q[i];
				if (e == NULL)
					break;
				e->st.attempts++;
				defer_locked(e, reason);
			}
		}
	}
	pthread_mutex_unlock(&mail.lock);
	sync_dirs(&unsynced);
	if (h)
		curl_easy_cleanup(h);
	return NULL;
}

/* ---- start / stop / status ---- */

static void
auth_clear(void)
{
	free(mail.auth_user);
	mail.auth_user = NULL;
	if (mail.auth_pass)
		secmem_free(mail.auth_pass, mail.auth_pass_size);
	mail.auth_pass = NULL;
	mail.auth_pass_size = 0;
}

/* -o smtp_auth=FILE: user name on the first line, password on the
 * second. Only over TLS: a password never crosses the wire in clear. */
static int
auth_load(const char *path)
{
	char *txt = NULL, *nl, *pw;
	size_t len = 0, pwlen;
	struct stat st;
	int r;

	if (!mail.starttls && strncmp(hsmfs_ctx->opt.smtp, "smtps://", 8) != 0) {
		err_set("smtp_auth=%s needs TLS: use smtp+starttls:// or smtps://",
		    path);
		return HSMFS_ERR_CONFIG;
	}
	if ((r = util_read_file(path, 4096, &txt, &len)) != 0)
		return r;
	if (stat(path, &st) == 0 && (st.st_mode & 077))
		log_warn("mail: %s is readable by group or others; chmod 600 it", path);
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
	if ((mail.auth_user = strdup(txt)) == NULL ||
	    (mail.auth_pass = secmem_alloc(pwlen + 1)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	mail.auth_pass_size = pwlen + 1;
	memcpy(mail.auth_pass, pw, pwlen);
	mail.auth_pass[pwlen] = '\0';
	r = 0;
out:
	OPENSSL_cleanse(txt, len);
	free(txt);
	if (r != 0)
		auth_clear();
	return r;
}

/* Remove temp files and schedules or reasons whose entry is gone. */
static void
prune_orphans(int dirfd, int ownerfd)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d;
	struct dirent *de;
	if (fd < 0 || (d = fdopendir(fd)) == NULL) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (de->d_name[0] == '.' || (ownerfd >= 0 &&
		    !file_exists(ownerfd, de->d_name)))
			unlinkat(dirfd, de->d_name, 0);
	}
	closedir(d);
}

static int
recover_queue(void)
{
	int fd = openat(mail.qfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), r = 0;
	DIR *d;
	struct dirent *de;
	long long now = now_s(), oldest = now;

	if (fd < 0 || (d = fdopendir(fd)) == NULL) {
		if (fd >= 0)
			close(fd);
		err_set("cannot list the mail queue: %s", strerror(errno));
		return HSMFS_ERR_IO;
	}
	while ((de = readdir(d)) != NULL) {
		struct entry_hdr h;
		struct mstate st;
		if (de->d_name[0] == '.')
			continue;
		if (hdr_read_at(mail.qfd, de->d_name, &h) != 0) {
			struct mstate bad = { .queued = now, .next = now };
			/* Entries are renamed into place complete; a damaged one
			 * goes to failed/ for inspection, it is never sent. */
			log_err("mail/%s: %s", de->d_name, err_detail());
			if (q_add_locked(de->d_name, &bad, 0) == 0)
				fail_entry_locked(&mail.q[mail.nq - 1],
				    "queue entry damaged (not sent)");
			continue;
		}
		sched_read(de->d_name, &h, &st);
		if (st.queued < oldest)
			oldest = st.queued;
		if ((r = q_add_locked(de->d_name, &st, h.msglen)) != 0)
			break;
	}
	closedir(d);
	if (mail.nq > 0)
		log_info("mail: %zu message(s) in the queue at start (oldest queued "
		    "%lld s ago)", mail.nq, now - oldest);
	return r;
}

static void
close_fds(void)
{
	int *fds[] = { &mail.qfd, &mail.retryfd, &mail.sentfd, &mail.failfd,
	    &mail.errfd, &mail.mailfd };
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
		if (*fds[i] >= 0)
			close(*fds[i]);
		*fds[i] = -1;
	}
}

static int
mail_start(void)
{
	const struct engine_descriptor *d =
	    engine_newest(hsmfs_ctx->engine, ENGINE_SIGN_EMAIL);
	const char *url = hsmfs_ctx->opt.smtp;
	struct keyring_signer ks;
	struct { const char *name; int *fd; } dirs[] = {
		{ "queue", &mail.qfd }, { "retry", &mail.retryfd },
		{ "sent", &mail.sentfd }, { "failed", &mail.failfd },
		{ "errors", &mail.errfd },
	};
	int r;

	if (d == NULL) {
		err_set("no %s descriptor in %s", ENGINE_SIGN_EMAIL,
		    hsmfs_ctx->opt.config);
		return HSMFS_ERR_UNSUPPORTED;
	}
	if (keyring_signer_of(hsmfs_ctx->keys, d, &ks) != 0 ||
	    (mail.key = ks.key) == NULL) {
		err_set("key %s of %s is not open", d->key_name, ENGINE_SIGN_EMAIL);
		return HSMFS_ERR_NOTFOUND;
	}
	snprintf(mail.key_name, sizeof(mail.key_name), "%s", d->key_name);
	mail.md = d->md ? d->md : EVP_sha256();
	if ((r = store_dir(hsmfs_ctx->store_fd, "mail")) < 0)
		goto fail;
	mail.mailfd = r;
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		if ((r = store_dir(mail.mailfd, dirs[i].name)) < 0)
			goto fail;
		*dirs[i].fd = r;
	}
	if ((r = temp_area_open(&mail.temps, mail.mailfd, -1, -1)) != 0)
		goto fail;
	prune_orphans(mail.qfd, -1);
	prune_orphans(mail.sentfd, -1);
	prune_orphans(mail.failfd, -1);
	prune_orphans(mail.retryfd, mail.qfd);
	prune_orphans(mail.errfd, mail.failfd);
	if ((r = recover_queue()) != 0)
		goto fail;

	if (url != NULL) {
		if (strncmp(url, "smtp+starttls://", 16) == 0) {
			mail.starttls = 1;
			if (asprintf(&mail.url, "smtp://%s", url + 16) < 0)
				mail.url = NULL;
		} else if (strncmp(url, "smtp://", 7) == 0 ||
		    strncmp(url, "smtps://", 8) == 0) {
			mail.url = strdup(url);
		} else {
			err_set("smtp=%s: use smtp://HOST[:PORT], "
			    "smtp+starttls://HOST[:PORT] or smtps://HOST[:PORT]", url);
			r = HSMFS_ERR_CONFIG;
			goto fail;
		}
		if (mail.url == NULL) {
			r = HSMFS_ERR_NOMEM;
			goto fail;
		}
		if (hsmfs_ctx->opt.smtp_auth &&
		    (r = auth_load(hsmfs_ctx->opt.smtp_auth)) != 0)
			goto fail;
	} else {
		log_warn("mail: no smtp= relay configured: messages are signed and "
		    "queued, and wait until hsmfs runs with -o smtp=URL");
	}
	if (hsmfs_ctx->opt.read_only) {
		/* -o ro: the store must not change, so nothing is sent. */
		log_warn("mail: read-only mount: %zu queued message(s) are not sent",
		    mail.nq);
		mail.started = 1;
		return 0;
	}
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		err_set("curl_global_init failed");
		r = HSMFS_ERR_IO;
		goto fail;
	}
	mail.stopping = 0;
	if ((r = pthread_create(&mail.thread, NULL, sender_main, NULL)) != 0) {
		err_set("cannot start the sender thread: %s", strerror(r));
		curl_global_cleanup();
		r = HSMFS_ERR_IO;
		goto fail;
	}
	mail.thread_running = 1;
	mail.started = 1;
	return 0;
fail:
	auth_clear();
	free(mail.url);
	mail.url = NULL;
	free(mail.q);
	mail.q = NULL;
	mail.nq = mail.capq = 0;
	temp_area_close(&mail.temps);
	close_fds();
	return r;
}

/* Reload: the next message is signed with the newest SignEmailDescriptor
 * (the relay options are not part of a reload). */
struct mail_keys {
	hsm_key *key;
	const EVP_MD *md;
	char key_name[256];
};

static int
mail_reload_prepare(const struct engine *e, struct keyring *kr, void **next)
{
	const struct engine_descriptor *d = engine_newest(e, ENGINE_SIGN_EMAIL);
	struct keyring_signer ks;
	struct mail_keys *k;

	if (d == NULL) {
		err_set("no %s descriptor in %s (a reload cannot remove a folder's "
		    "descriptor; remount for that)", ENGINE_SIGN_EMAIL, e->path);
		return HSMFS_ERR_CONFIG;
	}
	if ((k = calloc(1, sizeof(*k))) == NULL)
		return HSMFS_ERR_NOMEM;
	if (keyring_signer_of(kr, d, &ks) != 0 || (k->key = ks.key) == NULL) {
		err_set("key %s of %s is not open", d->key_name, ENGINE_SIGN_EMAIL);
		free(k);
		return HSMFS_ERR_NOTFOUND;
	}
	k->md = d->md ? d->md : EVP_sha256();
	snprintf(k->key_name, sizeof(k->key_name), "%s", d->key_name);
	*next = k;
	return 0;
}

static void
mail_reload_finish(void *next, int commit)
{
	struct mail_keys *k = next;

	if (k != NULL && commit) {
		mail.key = k->key;
		mail.md = k->md;
		memcpy(mail.key_name, k->key_name, sizeof(mail.key_name));
	}
	free(k);
}

static void
mail_stop(void)
{
	if (!mail.started)
		return;
	pthread_mutex_lock(&mail.lock);
	__atomic_store_n(&mail.stopping, 1, __ATOMIC_RELAXED);
	pthread_cond_broadcast(&mail.cond);
	pthread_mutex_unlock(&mail.lock);
	if (mail.thread_running) {
		pthread_join(mail.thread, NULL);
		curl_global_cleanup();
	}
	mail.thread_running = 0;
	mail.started = 0;
	auth_clear();
	free(mail.url);
	mail.url = NULL;
	free(mail.q);
	mail.q = NULL;
	mail.nq = mail.capq = 0;
	temp_area_close(&mail.temps);
	close_fds();
}

static size_t
count_dir(int dirfd)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d;
	struct dirent *de;
	size_t n = 0;
	if (fd < 0 || (d = fdopendir(fd)) == NULL) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	while ((de = readdir(d)) != NULL)
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

static void
mail_status(FILE *out)
{
	long long now = now_s(), oldest = -1, next = -1;
	size_t nq, failed = count_dir(mail.failfd);
	char t[32];

	pthread_mutex_lock(&mail.lock);
	nq = mail.nq;
	for (size_t i = 0; i < mail.nq; i++) {
		if (oldest < 0 || mail.q[i].st.queued < oldest)
			oldest = mail.q[i].st.queued;
		if (next < 0 || mail.q[i].st.next < next)
			next = mail.q[i].st.next;
	}
	fprintf(out, "mail.relay: %s\n", !mail.thread_running ?
	    "none (read-only mount: messages wait in the queue)" :
	    mail.url ? hsmfs_ctx->opt.smtp :
	    "none (no smtp= option: messages wait in the queue)");
	fprintf(out, "mail.key: %s\n", mail.key_name);
	fprintf(out, "mail.queued: %zu\n", nq);
	fprintf(out, "mail.oldest_age: %lld\n", oldest < 0 ? 0 : now - oldest);
	if (next < 0 || mail.url == NULL) {
		fprintf(out, "mail.next_retry: %s\n", mail.url ? "none" :
		    "waiting for a relay");
	} else {
		util_iso_utc(next < now ? now : next, t, sizeof(t));
		fprintf(out, "mail.next_retry: %s (in %lld s)\n", t,
		    next < now ? 0 : next - now);
	}
	fprintf(out, "mail.sent: %lu\n", mail.sent_total);
	fprintf(out, "mail.failed: %zu\n", failed);
	if (mail.last_error[0]) {
		util_iso_utc(mail.last_error_time, t, sizeof(t));
		fprintf(out, "mail.last_error: %s %s\n", t, mail.last_error);
	}
	pthread_mutex_unlock(&mail.lock);
}

static void
mail_metrics(struct metrics *m)
{
	long long now = now_s(), oldest = -1;
	size_t failed = count_dir(mail.failfd);

	pthread_mutex_lock(&mail.lock);
	for (size_t i = 0; i < mail.nq; i++)
		if (oldest < 0 || mail.q[i].st.queued < oldest)
			oldest = mail.q[i].st.queued;
	metrics_add(m, METRIC_GAUGE, "hsmfs_mail_queued",
	    "Messages in the queue (signed, not yet delivered)", (double)mail.nq,
	    (char *)NULL);
	metrics_add(m, METRIC_GAUGE, "hsmfs_mail_oldest_age_seconds",
	    "Age of the oldest queued message (0: queue empty)",
	    (double)(oldest < 0 ? 0 : now - oldest), (char *)NULL);
	metrics_add(m, METRIC_COUNTER, "hsmfs_mail_sent_total",
	    "Messages delivered to the relay since the start", (double)mail.sent_total,
	    (char *)NULL);
	metrics_add(m, METRIC_GAUGE, "hsmfs_mail_failed",
	    "Messages in mail/failed/ (given up)", (double)failed, (char *)NULL);
	metrics_add(m, METRIC_GAUGE, "hsmfs_mail_relay_configured",
	    "1 when an smtp= relay is configured and the sender runs",
	    mail.thread_running && mail.url != NULL, (char *)NULL);
	metrics_add(m, METRIC_GAUGE, "hsmfs_mail_last_error_timestamp_seconds",
	    "Time of the last delivery failure, Unix time (0: none)",
	    (double)mail.last_error_time, (char *)NULL);
	pthread_mutex_unlock(&mail.lock);
}

/* ---- path views ---- */

enum view {
	V_NONE, V_ROOT, V_SENTDIR, V_FAILDIR,
	V_WRITER, V_QUEUED, V_SENT, V_FAILED, V_FAILED_ERR,
	V_STAGED,             /* a closed temporary (.NAME) */
};

/* Classify a path; *name gets the message name. Lock held. */
static enum view
classify_locked(const char *path, char *name, size_t size)
{
	if (*path == '\0')
		return V_ROOT;
	if (strcmp(path, "sent") == 0)
		return V_SENTDIR;
	if (strcmp(path, "failed") == 0)
		return V_FAILDIR;
	if (!mail.started)
		return V_NONE;
	if (strncmp(path, "sent/", 5) == 0) {
		if (!util_name_valid(path + 5))
			return V_NONE;
		snprintf(name, size, "%s", path + 5);
		return file_exists(mail.sentfd, name) ? V_SENT : V_NONE;
	}
	if (strncmp(path, "failed/", 7) == 0) {
		const char *n = path + 7;
		size_t l = strlen(n);
		if (!util_name_valid(n))
			return V_NONE;
		snprintf(name, size, "%s", n);
		if (file_exists(mail.failfd, name))
			return V_FAILED;
		if (l > 6 && strcmp(n + l - 6, ".error") == 0) {
			snprintf(name, size, "%.*s", (int)(l - 6), n);
			if (util_name_valid(name) && file_exists(mail.failfd, name))
				return V_FAILED_ERR;
		}
		return V_NONE;
	}
	if (strchr(path, '/') != NULL || !temp_name_ok(path))
		return V_NONE;
	snprintf(name, size, "%s", path);
	if (w_find_locked(name))
		return V_WRITER;
	if (temp_name(name))
		return file_exists(mail.temps.dirfd, name) ? V_STAGED : V_NONE;
	if (q_find_locked(name))
		return V_QUEUED;
	return V_NONE;
}

/* Open the file behind a view and find the byte range it shows:
 * the message as written (queued, failed), the signed form (sent) or
 * the whole reason file (failed/NAME.error). */
static int
view_open(enum view v, const char *name, int *fdp, off_t *base, size_t *len)
{
	struct entry_hdr h;
	struct stat st;
	int dirfd = v == V_QUEUED ? mail.qfd : v == V_SENT ? mail.sentfd :
	    v == V_FAILED ? mail.failfd : v == V_STAGED ? mail.temps.dirfd :
	    mail.errfd;
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -ENOENT;
	if (v == V_FAILED_ERR || (v == V_STAGED && fstat(fd, &st) == 0 &&
	    st.st_size == 0)) {
		if (fstat(fd, &st) < 0) {
			close(fd);
			return -EIO;
		}
		*base = 0;
		*len = (size_t)st.st_size;
	} else {
		if (hdr_read_fd(fd, &h) != 0) {
			close(fd);
			return -EIO;
		}
		*base = (off_t)h.hdrlen + (v == V_SENT ? (off_t)h.msglen : 0);
		*len = v == V_SENT ? h.siglen : h.msglen;
	}
	*fdp = fd;
	return 0;
}

/* Every mail view (queued, sent, failed and its .error) is the mount
 * owner's alone: with allow_other the others must not read messages, Bcc
 * lines (queued and failed keep them) or a relay's reply naming a
 * recipient. A message being written is 0600. */
#define MAIL_VIEW_MODE 0400

static int
mail_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	char name[256];
	enum view v;
	struct writer *w;
	struct qent *e;
	struct stat sb;
	off_t base;
	size_t len;
	int fd, r = -ENOENT;

	pthread_mutex_lock(&mail.lock);
	v = classify_locked(path, name, sizeof(name));
	switch (v) {
	case V_ROOT: case V_SENTDIR: case V_FAILDIR:
		fs_stat_dir(st);
		pthread_mutex_unlock(&mail.lock);
		return 0;
	case V_WRITER:
		w = w_find_locked(name);
		fs_stat_file(st, 0600, (off_t)w->len, time(NULL));
		pthread_mutex_unlock(&mail.lock);
		return 0;
	case V_QUEUED:
		e = q_find_locked(name);
		fs_stat_file(st, MAIL_VIEW_MODE, (off_t)e->msglen,
		    (time_t)e->st.queued);
		pthread_mutex_unlock(&mail.lock);
		return 0;
	case V_NONE:
		pthread_mutex_unlock(&mail.lock);
		return -ENOENT;
	default:
		break;
	}
	pthread_mutex_unlock(&mail.lock);
	if ((r = view_open(v, name, &fd, &base, &len)) != 0)
		return r;
	fstat(fd, &sb);
	close(fd);
	fs_stat_file(st, v == V_STAGED ? 0600 : MAIL_VIEW_MODE, (off_t)len, sb.st_mtime);
	return 0;
}

static void
fill_dir(int dirfd, void *buf, fuse_fill_dir_t fill, int with_error)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d;
	struct dirent *de;
	if (fd < 0 || (d = fdopendir(fd)) == NULL) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((de = readdir(d)) != NULL) {
		char en[300];
		if (de->d_name[0] == '.')
			continue;
		fill(buf, de->d_name, NULL, 0, 0);
		if (with_error) {
			snprintf(en, sizeof(en), "%s.error", de->d_name);
			if (util_name_valid(en))
				fill(buf, en, NULL, 0, 0);
		}
	}
	closedir(d);
}

static int
mail_readdir(const char *path, void *buf, fuse_fill_dir_t fill)
{
	if (*path != '\0' && strcmp(path, "sent") != 0 && strcmp(path, "failed") != 0)
		return -ENOTDIR;
	fill(buf, ".", NULL, 0, 0);
	fill(buf, "..", NULL, 0, 0);
	if (*path == '\0') {
		fill(buf, "sent", NULL, 0, 0);
		fill(buf, "failed", NULL, 0, 0);
		pthread_mutex_lock(&mail.lock);
		for (size_t i = 0; i < mail.nq; i++)
			fill(buf, mail.q[i].name, NULL, 0, 0);
		for (struct writer *w = mail.writers; w; w = w->next)
			if (!w->committed && !w->staged && util_name_valid(w->name) &&
			    q_find_locked(w->name) == NULL)
				fill(buf, w->name, NULL, 0, 0);
		pthread_mutex_unlock(&mail.lock);
		temp_area_sweep(&mail.temps);
	} else if (mail.started) {
		fill_dir(*path == 's' ? mail.sentfd : mail.failfd, buf, fill,
		    *path == 'f');
	}
	return 0;
}

static int mail_create(const char *path, mode_t mode,
    struct fuse_file_info *fi);

static int
mail_open(const char *path, struct fuse_file_info *fi)
{
	char name[256];
	struct mfh *h;
	enum view v;
	off_t base = 0;
	size_t len = 0;
	int fd = -1, r;

	pthread_mutex_lock(&mail.lock);
	v = classify_locked(path, name, sizeof(name));
	pthread_mutex_unlock(&mail.lock);
	switch (v) {
	case V_ROOT: case V_SENTDIR: case V_FAILDIR:
		return -EISDIR;
	case V_NONE:
		return -ENOENT;
	case V_WRITER:
		return -EBUSY;      /* one writer per message */
	default:
		break;
	}
	/* A temporary is rewritten whole (Files.write, createTempFile then
	 * a copy): a new writer replaces it at close. */
	if (v == V_STAGED && (fi->flags & O_ACCMODE) != O_RDONLY &&
	    (fi->flags & O_TRUNC))
		return mail_create(path, 0600, fi);
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))
		return -EACCES;     /* queued, sent and failed mail is read-only */
	/* The entry may move (queue -> sent) between the lookup and here:
	 * the open fd keeps its bytes; a vanished one is ENOENT. */
	if ((r = view_open(v, name, &fd, &base, &len)) != 0)
		return r;
	if ((h = calloc(1, sizeof(*h))) == NULL) {
		close(fd);
		return -ENOMEM;
	}
	h->kind = FH_FILE;
	h->fd = fd;
	h->base = base;
	h->len = len;
	fi->fh = (uint64_t)(uintptr_t)h;
	fi->direct_io = 1;
	return 0;
}

static int
mail_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	struct writer *w;
	struct mfh *h;

	if (strchr(path, '/') != NULL)
		return strncmp(path, "sent/", 5) == 0 ||
		    strncmp(path, "failed/", 7) == 0 ? -EACCES : -ENOENT;
	if (!temp_name_ok(path) || strcmp(path, "sent") == 0 ||
	    strcmp(path, "failed") == 0)
		return -EINVAL;
	if (hsmfs_ctx->opt.read_only)
		return -EROFS;
	if (temp_name(path))
		temp_area_sweep(&mail.temps);
	if ((w = calloc(1, sizeof(*w))) == NULL || (h = calloc(1, sizeof(*h))) == NULL) {
		free(w);
		return -ENOMEM;
	}
	snprintf(w->name, sizeof(w->name), "%s", path);
	w->dirty = 1;
	pthread_mutex_lock(&mail.lock);
	if (w_find_locked(path) || q_find_locked(path)) {
		pthread_mutex_unlock(&mail.lock);
		free(w);
		free(h);
		return -EEXIST;
	}
	w->next = mail.writers;
	mail.writers = w;
	pthread_mutex_unlock(&mail.lock);
	h->kind = FH_WRITER;
	h->fd = -1;
	h->w = w;
	fi->fh = (uint64_t)(uintptr_t)h;
	fi->direct_io = 1;
	return 0;
}


static int
mail_read(const char *path, char *buf, size_t size, off_t off,
    struct fuse_file_info *fi)
{
	struct mfh *h = (struct mfh *)(uintptr_t)fi->fh;
	ssize_t n;
	if (h == NULL || h->kind != FH_FILE)
		return -EBADF;
	if (off < 0 || (size_t)off >= h->len)
		return 0;
	if (size > h->len - (size_t)off)
		size = h->len - (size_t)off;
	n = pread(h->fd, buf, size, h->base + off);
	return n < 0 ? -errno : (int)n;
}

static int
w_reserve(struct writer *w, size_t need)
{
	char *nb;
	size_t cap;
	if (need > SMIME_MAX_MSG)
		return -EFBIG;
	if (need <= w->cap)
		return 0;
	cap = w->cap ? w->cap : 4096;
	while (cap < need)
		cap *= 2;
	if ((nb = realloc(w->buf, cap)) == NULL)
		return -ENOMEM;
	w->buf = nb;
	w->cap = cap;
	return 0;
}

static int
mail_write(const char *path, const char *buf, size_t size, off_t off,
    struct fuse_file_info *fi)
{
	struct mfh *h = (struct mfh *)(uintptr_t)fi->fh;
	struct writer *w;
	int r;
	if (h == NULL || h->kind != FH_WRITER)
		return -EBADF;
	w = h->w;
	if (w->committed)
		return -EBADF;      /* already queued at a previous close */
	if (off < 0)
		return -EINVAL;
	if ((r = w_reserve(w, (size_t)off + size)) != 0)
		return r;
	if ((size_t)off > w->len)
		memset(w->buf + w->len, 0, (size_t)off - w->len);
	memcpy(w->buf + off, buf, size);
	if ((size_t)off + size > w->len)
		w->len = (size_t)off + size;
	w->dirty = 1;
	return (int)size;
}

static int
mail_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	struct mfh *h = fi ? (struct mfh *)(uintptr_t)fi->fh : NULL;
	struct writer *w = NULL;
	int r;
	if (h && h->kind == FH_WRITER) {
		w = h->w;
	} else {
		pthread_mutex_lock(&mail.lock);
		w = strchr(path, '/') ? NULL : w_find_locked(path);
		pthread_mutex_unlock(&mail.lock);
	}
	if (w == NULL)
		return -EACCES;
	if (w->committed)
		return -EBADF;
	if (size < 0)
		return -EINVAL;
	if ((r = w_reserve(w, (size_t)size)) != 0)
		return r;
	if ((size_t)size > w->len)
		memset(w->buf + w->len, 0, (size_t)size - w->len);
	w->len = (size_t)size;
	w->dirty = 1;
	return 0;
}

static int
mail_flush(const char *path, struct fuse_file_info *fi)
{
	struct mfh *h = (struct mfh *)(uintptr_t)fi->fh;
	struct writer *w;
	int r;
	if (h == NULL || h->kind != FH_WRITER)
		return 0;
	w = h->w;
	if (!w->dirty || w->committed)
		return w->result;
	if (w->len == 0) {
		/* Created and closed empty (touch, createTempFile, the close
		 * of a shell redirection's first descriptor): nothing to
		 * queue, and writes may follow on another descriptor. A
		 * temporary stays as an empty file, which rename() refuses to
		 * queue; a valid name ends with the writer. */
		if (!temp_name(w->name))
			return 0;
		if ((r = store_write_atomic(mail.temps.dirfd, w->name, "", 0)) == 0) {
			pthread_mutex_lock(&mail.lock);
			w->staged = 1;
			pthread_mutex_unlock(&mail.lock);
		}
		return r == 0 ? 0 : -hsmfs_err_errno(r);
	}
	r = mail_commit(w);
	if (r == 0) {
		pthread_mutex_lock(&mail.lock);
		w->committed = 1;
		w->staged = temp_name(w->name);
		pthread_mutex_unlock(&mail.lock);
		w->dirty = 0;
		w->result = 0;
		return 0;
	}
	fs_log_fail("mail", w->name, r == HSMFS_ERR_INVALID ? NULL : mail.key_name,
	    r == HSMFS_ERR_INVALID ? "message refused, nothing queued" :
	    "cannot queue the message", r);
	w->result = -hsmfs_err_errno(r);
	if (r == HSMFS_ERR_PERM)
		w->result = -EEXIST;
	return w->result;
}

static int
mail_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	return 0;   /* a queued message is already durable; see flush */
}

static int
mail_release(const char *path, struct fuse_file_info *fi)
{
	struct mfh *h = (struct mfh *)(uintptr_t)fi->fh;
	if (h == NULL)
		return 0;
	if (h->kind == FH_WRITER) {
		struct writer *w = h->w, **pp;
		pthread_mutex_lock(&mail.lock);
		for (pp = &mail.writers; *pp; pp = &(*pp)->next) {
			if (*pp == w) {
				*pp = w->next;
				break;
			}
		}
		pthread_mutex_unlock(&mail.lock);
		free(w->buf);
		free(w);
	} else if (h->fd >= 0) {
		close(h->fd);
	}
	free(h);
	return 0;
}


static int
mail_unlink(const char *path)
{
	char name[256];
	enum view v;
	int r = 0;

	pthread_mutex_lock(&mail.lock);
	v = classify_locked(path, name, sizeof(name));
	switch (v) {
	case V_SENT:
		if (unlinkat(mail.sentfd, name, 0) < 0)
			r = -errno;
		else
			store_fsync_dir(mail.sentfd);
		break;
	case V_FAILED:
		if (unlinkat(mail.failfd, name, 0) < 0) {
			r = -errno;
			break;
		}
		unlinkat(mail.errfd, name, 0);
		store_fsync_dir(mail.failfd);
		break;
	case V_FAILED_ERR:
		r = -EPERM;     /* remove the message, its reason goes with it */
		break;
	case V_STAGED:
		if (unlinkat(mail.temps.dirfd, name, 0) < 0)
			r = -errno;
		break;
	case V_QUEUED: case V_WRITER:
		r = -EBUSY;     /* queued mail is read-only until sent or failed */
		break;
	case V_NONE:
		r = -ENOENT;
		break;
	default:
		r = -EPERM;
		break;
	}
	pthread_mutex_unlock(&mail.lock);
	return r;
}

/* rename(.TMP, NAME): queue the entry its close checked and signed, once.
 * A queued name is not replaced (queued mail is read-only). */
static int
publish_locked(const char *tmp, const char *to, enum view tv)
{
	struct entry_hdr h;
	struct mstate st = { 0 };
	struct stat sb;

	if (strchr(to, '/') != NULL || !util_name_valid(to))
		return temp_name(to) ? -EINVAL : -EPERM;
	if (tv != V_NONE)
		return -EEXIST;
	if (fstatat(mail.temps.dirfd, tmp, &sb, 0) < 0)
		return -ENOENT;
	if (sb.st_size == 0) {
		log_err("mail/%s: not renamed onto %s: empty message, nothing "
		    "queued", tmp, to);
		return -EINVAL;
	}
	if (hdr_read_at(mail.temps.dirfd, tmp, &h) != 0)
		return -EIO;
	st.queued = now_s();
	st.next = st.queued + MAIL_FIRST_DELAY;
	unlinkat(mail.retryfd, to, 0);
	if (renameat2(mail.temps.dirfd, tmp, mail.qfd, to, RENAME_NOREPLACE) < 0)
		return -errno;
	store_fsync_dir(mail.qfd);
	store_fsync_dir(mail.temps.dirfd);
	if (q_add_locked(to, &st, h.msglen) != 0)
		return -ENOMEM;
	pthread_cond_signal(&mail.cond);
	log_debug("mail/%s: queued from %s, Message-ID %s", to, tmp, h.msgid);
	return 0;
}

/* mv failed/NAME NAME: queue it again (same signed bytes and Message-ID),
 * with a fresh schedule and max-age clock. */
static int
mail_rename(const char *from, const char *to, unsigned int flags)
{
	char name[256], dummy[256];
	struct entry_hdr h;
	struct mstate st = { 0 };
	enum view v, tv;
	int r = 0;

	if (flags & RENAME_EXCHANGE)
		return -EINVAL;
	pthread_mutex_lock(&mail.lock);
	v = classify_locked(from, name, sizeof(name));
	tv = classify_locked(to, dummy, sizeof(dummy));
	if (v == V_STAGED) {
		r = publish_locked(name, to, tv);
		goto out;
	}
	if (v != V_FAILED || strcmp(name, to) != 0) {
		r = v == V_NONE ? -ENOENT : -EPERM;
		goto out;
	}
	if (tv != V_NONE) {
		r = -EEXIST;
		goto out;
	}
	if (hdr_read_at(mail.failfd, name, &h) != 0) {
		r = -EIO;
		goto out;
	}
	st.queued = st.next = now_s();
	snprintf(st.last, sizeof(st.last), "queued again from failed/");
	if (sched_write(name, &st) != 0) {
		r = -EIO;
		goto out;
	}
	if (renameat2(mail.failfd, name, mail.qfd, name, RENAME_NOREPLACE) < 0) {
		r = -errno;
		unlinkat(mail.retryfd, name, 0);
		goto out;
	}
	unlinkat(mail.errfd, name, 0);
	store_fsync_dir(mail.qfd);
	store_fsync_dir(mail.failfd);
	if (q_add_locked(name, &st, h.msglen) != 0) {
		r = -ENOMEM;
		goto out;
	}
	log_info("mail/%s: queued again from failed/", name);
	pthread_cond_signal(&mail.cond);
out:
	pthread_mutex_unlock(&mail.lock);
	return r;
}

/* Modes are the folder's: a change is accepted and ignored (install -m,
 * rsync, mv set them after close; see MAIL_FIRST_DELAY). */
static int
mail_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	char name[256];
	enum view v;
	int r = -ENOENT;
	pthread_mutex_lock(&mail.lock);
	v = classify_locked(path, name, sizeof(name));
	if (v == V_ROOT || v == V_SENTDIR || v == V_FAILDIR)
		r = -EPERM;
	else if (v != V_NONE)
		r = 0;
	pthread_mutex_unlock(&mail.lock);
	return r;
}

/* user.hsmfs.mail on a queued message: its schedule. */
static int
mail_getxattr(const char *path, const char *xname, char *value, size_t size)
{
	char name[256], buf[1024], tq[32], tn[32];
	struct mstate st;
	struct qent *e;
	int n;

	if (strcmp(xname, MAIL_XATTR) != 0)
		return -ENODATA;
	pthread_mutex_lock(&mail.lock);
	if (classify_locked(path, name, sizeof(name)) != V_QUEUED ||
	    (e = q_find_locked(name)) == NULL) {
		pthread_mutex_unlock(&mail.lock);
		return -ENODATA;
	}
	st = e->st;
	n = e->inflight;
	pthread_mutex_unlock(&mail.lock);
	util_iso_utc(st.queued, tq, sizeof(tq));
	util_iso_utc(st.next, tn, sizeof(tn));
	n = snprintf(buf, sizeof(buf), "state=%s queued=%s attempts=%u next=%s "
	    "last=%s", n ? "sending" : "queued", tq, st.attempts,
	    mail.url ? tn : "waiting-for-relay", st.last[0] ? st.last : "-");
	return fs_xattr_reply(buf, (size_t)n, value, size);
}

static int
mail_listxattr(const char *path, char *list, size_t size)
{
	char name[256];
	enum view v;
	pthread_mutex_lock(&mail.lock);
	v = classify_locked(path, name, sizeof(name));
	pthread_mutex_unlock(&mail.lock);
	if (v != V_QUEUED)
		return 0;
	return fs_xattr_reply(MAIL_XATTR, sizeof(MAIL_XATTR), list, size);
}

const struct folder_ops mail_folder = {
	.name = "mail",
	.start = mail_start,
	.stop = mail_stop,
	.reload_prepare = mail_reload_prepare,
	.reload_finish = mail_reload_finish,
	.status = mail_status,
	.metrics = mail_metrics,
	.getattr = mail_getattr,
	.readdir = mail_readdir,
	.open = mail_open,
	.create = mail_create,
	.read = mail_read,
	.write = mail_write,
	.flush = mail_flush,
	.fsync = mail_fsync,
	.release = mail_release,
	.truncate = mail_truncate,
	.unlink = mail_unlink,
	.rename = mail_rename,
	.chmod = mail_chmod,
	.getxattr = mail_getxattr,
	.listxattr = mail_listxattr,
};
