/* /mail: owns the durable outgoing mail queue under STORE/mail/ and the
 * one sender thread that signs (S/MIME, crypto/smime.c) and delivers it
 * over SMTP with libcurl. Layout, views and retry policy: docs/mail.md.
 *
 * STORE/mail/queue/NAME/   one directory per queued message, created
 *     msg                  complete (temp dir, fsync, rename): the text
 *     signed               as written, the signed wire form (missing if
 *     state                signing must be retried) and the schedule.
 * STORE/mail/sent/NAME     the signed bytes exactly as the relay took them
 * STORE/mail/failed/NAME/  a queue directory plus "error"
 *
 * Locking: mail.lock guards the in-memory queue, the open writers and
 * every rename into or out of queue/ and failed/. The sender thread
 * never holds it during signing or network I/O; an entry it is working
 * on is marked inflight and left alone by the FUSE side. */
#include "fs/fs.h"
#include "fs/store.h"
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
#include <openssl/rand.h>

#define MAIL_MAX_BACKOFF 3600        /* RFC 5321 4.5.4.1 doubling cap */
#define MAIL_XATTR "user.hsmfs.mail"

/* The schedule of one message, mirrored in its state file. */
struct mstate {
	long long queued;     /* first queued (unix seconds) */
	long long next;       /* next attempt */
	long long date;       /* Date used when the message had none */
	unsigned attempts;
	char msgid[256];      /* Message-ID used when the message had none */
	char last[384];       /* last reply or local reason */
};

struct qent {
	char name[256];
	struct mstate st;
	int inflight;
};

/* A message being written: visible as MNT/mail/NAME until released. */
struct writer {
	char name[256];
	char *buf;
	size_t len, cap;
	int dirty;            /* written since the last successful commit */
	int committed;        /* queued: further writes are refused */
	int result;           /* last flush result */
	struct writer *next;
};

enum mfh_kind { FH_WRITER = 1, FH_FILE };

struct mfh {
	enum mfh_kind kind;
	int fd;
	struct writer *w;
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t thread;
	int started, thread_running, stopping;
	int mailfd, qfd, sentfd, failfd;
	hsm_key *key;
	const EVP_MD *md;
	const char *key_name;
	char *url;            /* libcurl URL (smtp+starttls:// rewritten) */
	int starttls;
	struct qent *q;
	size_t nq, capq;
	struct writer *writers;
	unsigned long sent_total, failed_total;
	char last_error[384];
	long long last_error_time;
} mail = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.cond = PTHREAD_COND_INITIALIZER,
	.mailfd = -1, .qfd = -1, .sentfd = -1, .failfd = -1,
};

/* ---- small helpers ---- */

static long long
now_s(void)
{
	return (long long)time(NULL);
}

static void
iso_time(long long t, char *buf, size_t size)
{
	time_t tt = (time_t)t;
	struct tm tm;
	gmtime_r(&tt, &tm);
	strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
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

static struct writer *
w_find_locked(const char *name)
{
	for (struct writer *w = mail.writers; w; w = w->next)
		if (strcmp(w->name, name) == 0)
			return w;
	return NULL;
}

static int
q_add_locked(const char *name, const struct mstate *st)
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
	mail.nq++;
	return 0;
}

static void
q_del_locked(struct qent *e)
{
	size_t i = (size_t)(e - mail.q);
	mail.q[i] = mail.q[--mail.nq];
}

/* Remove a queue-style entry directory and whatever it holds. */
static void
rm_entry(int parent, const char *name)
{
	int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d;
	struct dirent *de;
	if (fd >= 0 && (d = fdopendir(fd)) != NULL) {
		while ((de = readdir(d)) != NULL)
			if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
				unlinkat(dirfd(d), de->d_name, 0);
		closedir(d);
	} else if (fd >= 0) {
		close(fd);
	}
	unlinkat(parent, name, AT_REMOVEDIR);
}

static int
state_format(const struct mstate *st, char *buf, size_t size)
{
	return snprintf(buf, size, "queued %lld\nnext %lld\ndate %lld\n"
	    "attempts %u\nmsgid %s\nlast %s\n", st->queued, st->next, st->date,
	    st->attempts, st->msgid, st->last);
}

static int
state_write(int entfd, const struct mstate *st)
{
	char buf[1024];
	int n = state_format(st, buf, sizeof(buf));
	return store_write_atomic(entfd, "state", buf, (size_t)n);
}

static int
state_read(int entfd, struct mstate *st)
{
	char *txt = NULL, *line, *save = NULL;
	int r;
	if ((r = store_read_file(entfd, "state", 4096, &txt, NULL)) != 0)
		return r;
	for (line = strtok_r(txt, "\n", &save); line;
	    line = strtok_r(NULL, "\n", &save)) {
		if (strncmp(line, "queued ", 7) == 0)
			st->queued = atoll(line + 7);
		else if (strncmp(line, "next ", 5) == 0)
			st->next = atoll(line + 5);
		else if (strncmp(line, "date ", 5) == 0)
			st->date = atoll(line + 5);
		else if (strncmp(line, "attempts ", 9) == 0)
			st->attempts = (unsigned)strtoul(line + 9, NULL, 10);
		else if (strncmp(line, "msgid ", 6) == 0)
			snprintf(st->msgid, sizeof(st->msgid), "%s", line + 6);
		else if (strncmp(line, "last ", 5) == 0)
			snprintf(st->last, sizeof(st->last), "%s", line + 5);
	}
	free(txt);
	return 0;
}

static int
file_exists(int dirfd, const char *name)
{
	struct stat st;
	return fstatat(dirfd, name, &st, 0) == 0;
}

/* ---- queue admission (FUSE flush) ---- */

static int
write_file_sync(int dirfd, const char *name, const void *data, size_t len)
{
	int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	int r;
	if (fd < 0) {
		err_set("create %s: %s", name, strerror(errno));
		return hsmfs_errno_err(errno);
	}
	if ((r = store_write_all(fd, data, len)) == 0 && fsync(fd) < 0) {
		err_set("fsync %s: %s", name, strerror(errno));
		r = hsmfs_errno_err(errno);
	}
	if (close(fd) < 0 && r == 0) {
		err_set("close %s: %s", name, strerror(errno));
		r = hsmfs_errno_err(errno);
	}
	return r;
}

/* Build a complete entry in a temp directory; *tmp gets its name. */
static int
entry_build(const struct writer *w, const uint8_t *sig, size_t siglen,
    const struct mstate *st, char *tmp, size_t tmpsize)
{
	uint8_t rnd[8];
	char sbuf[1024], hex[17];
	int fd = -1, r;

	if (RAND_bytes(rnd, sizeof(rnd)) != 1)
		return HSMFS_ERR_CRYPTO;
	util_hex(rnd, sizeof(rnd), hex);
	snprintf(tmp, tmpsize, ".tmp.%s", hex);
	if (mkdirat(mail.qfd, tmp, 0700) < 0) {
		err_set("mkdir %s: %s", tmp, strerror(errno));
		return hsmfs_errno_err(errno);
	}
	if ((fd = openat(mail.qfd, tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		err_set("open %s: %s", tmp, strerror(errno));
		r = hsmfs_errno_err(errno);
		goto out;
	}
	if ((r = write_file_sync(fd, "msg", w->buf, w->len)) != 0)
		goto out;
	if (sig && (r = write_file_sync(fd, "signed", sig, siglen)) != 0)
		goto out;
	if ((r = write_file_sync(fd, "state", sbuf,
	    (size_t)state_format(st, sbuf, sizeof(sbuf)))) != 0)
		goto out;
	r = store_fsync_dir(fd);
out:
	if (fd >= 0)
		close(fd);
	if (r != 0)
		rm_entry(mail.qfd, tmp);
	return r;
}

/* Check, sign and durably queue one written message. */
static int
mail_commit(struct writer *w)
{
	struct smime_msg m = { 0 };
	struct mstate st = { 0 };
	uint8_t *sig = NULL;
	size_t siglen = 0;
	char tmp[64], *o = NULL, *in = NULL;
	size_t ol, il;
	int r;

	err_clear();
	if ((r = smime_check(w->buf, w->len, &m)) != 0)
		goto out;
	st.queued = st.next = st.date = now_s();
	if (m.msgid)
		snprintf(st.msgid, sizeof(st.msgid), "%s", m.msgid);
	else if ((r = smime_msgid_new(m.from, st.msgid, sizeof(st.msgid))) != 0)
		goto out;
	/* MIME problems (an 8-bit multipart) are the writer's to fix. */
	if ((r = smime_prepare(w->buf, w->len, (time_t)st.date, st.msgid, &o, &ol,
	    &in, &il)) != 0)
		goto out;
	/* A failing HSM does not lose the message: it is queued unsigned and
	 * the sender signs it when the token is back. */
	if ((r = smime_sign(mail.key, mail.md, w->buf, w->len, (time_t)st.date,
	    st.msgid, &sig, &siglen)) != 0) {
		fs_log_fail("mail", w->name, mail.key_name,
		    "signing failed, queued unsigned; the sender will retry", r);
		snprintf(st.last, sizeof(st.last), "signing failed: %s", err_detail());
		clean_line(st.last);
		sig = NULL;
	}
	if ((r = entry_build(w, sig, siglen, &st, tmp, sizeof(tmp))) != 0)
		goto out;
	pthread_mutex_lock(&mail.lock);
	if (q_find_locked(w->name) != NULL) {
		pthread_mutex_unlock(&mail.lock);
		rm_entry(mail.qfd, tmp);
		err_set("a message with this name is already queued");
		r = HSMFS_ERR_PERM;
		goto out;
	}
	if (renameat2(mail.qfd, tmp, mail.qfd, w->name, RENAME_NOREPLACE) < 0) {
		int e = errno;
		pthread_mutex_unlock(&mail.lock);
		rm_entry(mail.qfd, tmp);
		err_set("rename into the queue: %s", strerror(e));
		r = hsmfs_errno_err(e);
		goto out;
	}
	r = q_add_locked(w->name, &st);
	pthread_cond_signal(&mail.cond);
	pthread_mutex_unlock(&mail.lock);
	if (r == 0)
		r = store_fsync_dir(mail.qfd);
	if (r == 0)
		log_info("mail/%s: queued for %zu recipient(s), Message-ID %s",
		    w->name, m.nrcpts, st.msgid);
out:
	free(o);
	free(in);
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
	if (code >= 500 && code < 600) {
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

/* Sign an entry queued unsigned (HSM was down at close, or a restart
 * found it so). Date and Message-ID come from its state: stable. */
static int
entry_sign(int entfd, const char *name, const struct mstate *st)
{
	char *msg = NULL;
	size_t len = 0, siglen = 0;
	uint8_t *sig = NULL;
	int r;
	if ((r = store_read_file(entfd, "msg", SMIME_MAX_MSG, &msg, &len)) != 0)
		return r;
	r = smime_sign(mail.key, mail.md, msg, len, (time_t)st->date, st->msgid,
	    &sig, &siglen);
	if (r == 0)
		r = store_write_atomic(entfd, "signed", sig, siglen);
	free(sig);
	free(msg);
	return r;
}

/* Move an entry from queue/ to failed/ with its reason (lock held). */
static void
fail_entry_locked(struct qent *e, const char *reason)
{
	char buf[1024], t[32];
	int entfd = openat(mail.qfd, e->name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int n;

	iso_time(now_s(), t, sizeof(t));
	snprintf(e->st.last, sizeof(e->st.last), "%s", reason);
	if (entfd >= 0) {
		n = snprintf(buf, sizeof(buf), "%s %s\nattempts: %u\nqueued: %lld\n"
		    "message-id: %s\n", t, reason, e->st.attempts, e->st.queued,
		    e->st.msgid);
		if (store_write_atomic(entfd, "error", buf, (size_t)n) != 0 ||
		    state_write(entfd, &e->st) != 0)
			log_err("mail/%s: cannot record the failure: %s", e->name,
			    err_detail());
		close(entfd);
	}
	rm_entry(mail.failfd, e->name);
	if (renameat(mail.qfd, e->name, mail.failfd, e->name) < 0)
		log_err("mail/%s: cannot move to failed/: %s", e->name, strerror(errno));
	store_fsync_dir(mail.failfd);
	store_fsync_dir(mail.qfd);
	log_err("mail/%s: delivery failed permanently, see failed/%s.error: %s",
	    e->name, e->name, reason);
	mail.failed_total++;
	q_del_locked(e);
}

static void
note_error_locked(const char *reason)
{
	snprintf(mail.last_error, sizeof(mail.last_error), "%s", reason);
	mail.last_error_time = now_s();
}

/* Temporary failure: next attempt per RFC 5321 4.5.4.1 (first backoff
 * mail_retry, doubling up to an hour), or failed/ after mail_max_age. */
static void
defer_locked(struct qent *e, const char *reason)
{
	long long now = now_s(), back = hsmfs_ctx->opt.mail_retry;
	int entfd;
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
	if ((entfd = openat(mail.qfd, e->name, O_RDONLY | O_DIRECTORY |
	    O_CLOEXEC)) >= 0) {
		if (state_write(entfd, &e->st) != 0)
			log_err("mail/%s: cannot save the schedule: %s", e->name,
			    err_detail());
		close(entfd);
	}
	log_warn("mail/%s: attempt %u failed, next in %lld s: %s", e->name,
	    e->st.attempts, back, reason);
}

/* After the relay's 250: sent/NAME is the signed file, then the entry
 * goes. A crash in between is recognised at start by the Message-ID. */
static void
finish_sent_locked(struct qent *e, int entfd)
{
	if (renameat(entfd, "signed", mail.sentfd, e->name) < 0)
		log_err("mail/%s: delivered but cannot move to sent/: %s", e->name,
		    strerror(errno));
	store_fsync_dir(mail.sentfd);
	unlinkat(entfd, "state", 0);
	rm_entry(mail.qfd, e->name);
	store_fsync_dir(mail.qfd);
	mail.sent_total++;
	q_del_locked(e);
}

/* One attempt for one entry; called without the lock, e inflight. */
static enum outcome
deliver(CURL *h, const char *name, const struct mstate *st, int *entfd_out,
    char *reason, size_t rsize, int *conn_fail)
{
	int entfd = openat(mail.qfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	char *msg = NULL, *sig = NULL;
	size_t mlen = 0, slen = 0;
	struct smime_msg m = { 0 };
	enum outcome o = TEMPFAIL;
	int r;

	*conn_fail = 0;
	*entfd_out = -1;
	if (entfd < 0) {
		snprintf(reason, rsize, "queue entry vanished: %s", strerror(errno));
		return TEMPFAIL;
	}
	if (!file_exists(entfd, "signed")) {
		err_clear();
		if ((r = entry_sign(entfd, name, st)) != 0) {
			snprintf(reason, rsize, "signing with key %s failed: %s",
			    mail.key_name, err_detail());
			o = r == HSMFS_ERR_INVALID ? PERMFAIL : TEMPFAIL;
			goto out;
		}
	}
	if ((r = store_read_file(entfd, "msg", SMIME_MAX_MSG, &msg, &mlen)) != 0 ||
	    (r = store_read_file(entfd, "signed", 2 * SMIME_MAX_MSG, &sig,
	    &slen)) != 0) {
		snprintf(reason, rsize, "cannot read the queue entry: %s", err_detail());
		goto out;
	}
	if ((r = smime_check(msg, mlen, &m)) != 0) {
		snprintf(reason, rsize, "message refused: %s", err_detail());
		o = PERMFAIL;
		goto out;
	}
	o = smtp_send(h, &m, (const uint8_t *)sig, slen, reason, rsize, conn_fail);
out:
	free(msg);
	free(sig);
	smime_msg_clear(&m);
	if (o == SENT)
		*entfd_out = entfd;
	else
		close(entfd);
	return o;
}

static void *
sender_main(void *arg)
{
	CURL *h = curl_easy_init();

	if (h == NULL)
		log_err("mail: curl_easy_init failed; mail stays queued");
	pthread_mutex_lock(&mail.lock);
	while (!mail.stopping) {
		long long now = now_s(), soonest = -1;
		struct qent *due = NULL;
		struct mstate st;
		char name[256], reason[384];
		enum outcome o;
		int entfd, conn_fail;

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
		if (due == NULL || mail.url == NULL || h == NULL) {
			struct timespec ts;
			if (soonest < 0 || mail.url == NULL || h == NULL) {
				pthread_cond_wait(&mail.cond, &mail.lock);
				continue;
			}
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec = (time_t)soonest;
			ts.tv_nsec = 0;
			pthread_cond_timedwait(&mail.cond, &mail.lock, &ts);
			continue;
		}
		due->inflight = 1;
		due->st.attempts++;
		st = due->st;
		snprintf(name, sizeof(name), "%s", due->name);
		pthread_mutex_unlock(&mail.lock);

		o = deliver(h, name, &st, &entfd, reason, sizeof(reason), &conn_fail);

		pthread_mutex_lock(&mail.lock);
		if ((due = q_find_locked(name)) == NULL) {
			if (entfd >= 0)
				close(entfd);
			continue;
		}
		due->inflight = 0;
		if (o == SENT) {
			log_info("mail/%s: delivered (%s)", name, reason);
			finish_sent_locked(due, entfd);
			close(entfd);
		} else if (o == PERMFAIL) {
			note_error_locked(reason);
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
	if (h)
		curl_easy_cleanup(h);
	return NULL;
}

/* ---- start / stop / status ---- */

static int
recover_queue(void)
{
	DIR *d;
	struct dirent *de;
	int fd = openat(mail.qfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), r = 0;
	long long now = now_s();

	if (fd < 0 || (d = fdopendir(fd)) == NULL) {
		if (fd >= 0)
			close(fd);
		err_set("cannot list the mail queue: %s", strerror(errno));
		return HSMFS_ERR_IO;
	}
	while ((de = readdir(d)) != NULL) {
		struct mstate st = { 0 };
		int entfd;
		if (de->d_name[0] == '.') {
			if (strncmp(de->d_name, ".tmp.", 5) == 0)
				rm_entry(mail.qfd, de->d_name);
			continue;
		}
		entfd = openat(mail.qfd, de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (entfd < 0)
			continue;
		store_cleanup_tmp(entfd);
		if (!file_exists(entfd, "msg")) {
			/* Removal after delivery was interrupted. */
			close(entfd);
			rm_entry(mail.qfd, de->d_name);
			continue;
		}
		if (state_read(entfd, &st) != 0 || st.msgid[0] == '\0') {
			struct stat sb;
			fstatat(entfd, "msg", &sb, 0);
			memset(&st, 0, sizeof(st));
			st.queued = st.next = st.date = (long long)sb.st_mtime;
			unlinkat(entfd, "signed", 0);
			if (smime_msgid_new(NULL, st.msgid, sizeof(st.msgid)) != 0 ||
			    state_write(entfd, &st) != 0)
				log_err("mail/%s: cannot rebuild the state file: %s",
				    de->d_name, err_detail());
		}
		if (!file_exists(entfd, "signed") &&
		    file_exists(mail.sentfd, de->d_name)) {
			/* Was it delivered right before a crash? sent/NAME then
			 * carries this entry's Message-ID. */
			char *txt = NULL;
			if (store_read_file(mail.sentfd, de->d_name, 2 * SMIME_MAX_MSG,
			    &txt, NULL) == 0 && strstr(txt, st.msgid) != NULL) {
				free(txt);
				close(entfd);
				rm_entry(mail.qfd, de->d_name);
				log_info("mail/%s: delivery had completed before the "
				    "restart", de->d_name);
				continue;
			}
			free(txt);
		}
		close(entfd);
		if ((r = q_add_locked(de->d_name, &st)) != 0)
			break;
	}
	closedir(d);
	store_fsync_dir(mail.qfd);
	if (mail.nq > 0)
		log_info("mail: %zu message(s) in the queue at start (oldest queued "
		    "%lld s ago)", mail.nq, now - (mail.nq ? mail.q[0].st.queued : now));
	return r;
}

static void
close_fds(void)
{
	int *fds[] = { &mail.qfd, &mail.sentfd, &mail.failfd, &mail.mailfd };
	for (size_t i = 0; i < 4; i++) {
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
	int r;

	if (d == NULL) {
		err_set("no %s descriptor in %s", ENGINE_SIGN_EMAIL,
		    hsmfs_ctx->opt.config);
		return HSMFS_ERR_UNSUPPORTED;
	}
	if ((mail.key = keyring_key(hsmfs_ctx->keys, d)) == NULL) {
		err_set("key %s of %s is not open", d->key_name, ENGINE_SIGN_EMAIL);
		return HSMFS_ERR_NOTFOUND;
	}
	mail.key_name = d->key_name;
	mail.md = d->md ? d->md : EVP_sha256();
	if ((r = store_dir(hsmfs_ctx->store_fd, "mail")) < 0)
		goto fail;
	mail.mailfd = r;
	if ((r = store_dir(mail.mailfd, "queue")) < 0)
		goto fail;
	mail.qfd = r;
	if ((r = store_dir(mail.mailfd, "sent")) < 0)
		goto fail;
	mail.sentfd = r;
	if ((r = store_dir(mail.mailfd, "failed")) < 0)
		goto fail;
	mail.failfd = r;
	store_cleanup_tmp(mail.sentfd);
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
	} else {
		log_warn("mail: no smtp= relay configured: messages are signed and "
		    "queued, and wait until hsmfs runs with -o smtp=URL");
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
	free(mail.url);
	mail.url = NULL;
	close_fds();
	return r;
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
	if (mail.thread_running)
		pthread_join(mail.thread, NULL);
	mail.thread_running = 0;
	curl_global_cleanup();
	mail.started = 0;
	free(mail.url);
	mail.url = NULL;
	free(mail.q);
	mail.q = NULL;
	mail.nq = mail.capq = 0;
	close_fds();
}

static size_t
count_failed(void)
{
	int fd = openat(mail.failfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
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
	size_t nq, failed = count_failed();
	char t[32];

	pthread_mutex_lock(&mail.lock);
	nq = mail.nq;
	for (size_t i = 0; i < mail.nq; i++) {
		if (oldest < 0 || mail.q[i].st.queued < oldest)
			oldest = mail.q[i].st.queued;
		if (next < 0 || mail.q[i].st.next < next)
			next = mail.q[i].st.next;
	}
	fprintf(out, "mail.relay: %s\n", mail.url ? hsmfs_ctx->opt.smtp :
	    "none (no smtp= option: messages wait in the queue)");
	fprintf(out, "mail.key: %s\n", mail.key_name);
	fprintf(out, "mail.queued: %zu\n", nq);
	fprintf(out, "mail.oldest_age: %lld\n", oldest < 0 ? 0 : now - oldest);
	if (next < 0 || mail.url == NULL) {
		fprintf(out, "mail.next_retry: %s\n", mail.url ? "none" : "waiting for a relay");
	} else {
		iso_time(next < now ? now : next, t, sizeof(t));
		fprintf(out, "mail.next_retry: %s (in %lld s)\n", t,
		    next < now ? 0 : next - now);
	}
	fprintf(out, "mail.sent: %lu\n", mail.sent_total);
	fprintf(out, "mail.failed: %zu\n", failed);
	if (mail.last_error[0]) {
		iso_time(mail.last_error_time, t, sizeof(t));
		fprintf(out, "mail.last_error: %s %s\n", t, mail.last_error);
	}
	pthread_mutex_unlock(&mail.lock);
}

/* ---- path views ---- */

enum view {
	V_NONE, V_ROOT, V_SENTDIR, V_FAILDIR,
	V_WRITER, V_QUEUED, V_SENT, V_FAILED, V_FAILED_ERR,
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
	if (strncmp(path, "sent/", 5) == 0) {
		if (!util_name_valid(path + 5))
			return V_NONE;
		snprintf(name, size, "%s", path + 5);
		return mail.started && file_exists(mail.sentfd, name) ? V_SENT : V_NONE;
	}
	if (strncmp(path, "failed/", 7) == 0) {
		const char *n = path + 7;
		size_t l = strlen(n);
		if (!util_name_valid(n) || !mail.started)
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
	if (strchr(path, '/') != NULL || !util_name_valid(path))
		return V_NONE;
	snprintf(name, size, "%s", path);
	if (w_find_locked(name))
		return V_WRITER;
	if (q_find_locked(name))
		return V_QUEUED;
	return V_NONE;
}

static int
stat_at(int dirfd, const char *rel, struct stat *st)
{
	struct stat sb;
	if (fstatat(dirfd, rel, &sb, 0) < 0)
		return -ENOENT;
	fs_stat_file(st, 0444, sb.st_size, sb.st_mtime);
	return 0;
}

static int
mail_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	char name[256], rel[300];
	enum view v;
	int r = -ENOENT;
	struct writer *w;

	pthread_mutex_lock(&mail.lock);
	v = classify_locked(path, name, sizeof(name));
	switch (v) {
	case V_ROOT: case V_SENTDIR: case V_FAILDIR:
		fs_stat_dir(st);
		r = 0;
		break;
	case V_WRITER:
		w = w_find_locked(name);
		fs_stat_file(st, 0600, (off_t)w->len, time(NULL));
		r = 0;
		break;
	case V_QUEUED:
		snprintf(rel, sizeof(rel), "%s/msg", name);
		r = stat_at(mail.qfd, rel, st);
		break;
	case V_SENT:
		r = stat_at(mail.sentfd, name, st);
		break;
	case V_FAILED:
		snprintf(rel, sizeof(rel), "%s/msg", name);
		r = stat_at(mail.failfd, rel, st);
		break;
	case V_FAILED_ERR:
		snprintf(rel, sizeof(rel), "%s/error", name);
		r = stat_at(mail.failfd, rel, st);
		break;
	case V_NONE:
		break;
	}
	pthread_mutex_unlock(&mail.lock);
	return r;
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
			if (q_find_locked(w->name) == NULL)
				fill(buf, w->name, NULL, 0, 0);
		pthread_mutex_unlock(&mail.lock);
	} else if (mail.started) {
		fill_dir(*path == 's' ? mail.sentfd : mail.failfd, buf, fill,
		    *path == 'f');
	}
	return 0;
}

static int
mail_open(const char *path, struct fuse_file_info *fi)
{
	char name[256], rel[300];
	struct mfh *h;
	enum view v;
	int fd = -1, dirfd = -1;

	pthread_mutex_lock(&mail.lock);
	v = classify_locked(path, name, sizeof(name));
	switch (v) {
	case V_ROOT: case V_SENTDIR: case V_FAILDIR:
		pthread_mutex_unlock(&mail.lock);
		return -EISDIR;
	case V_NONE:
		pthread_mutex_unlock(&mail.lock);
		return -ENOENT;
	case V_WRITER:
		pthread_mutex_unlock(&mail.lock);
		return -EBUSY;      /* one writer per message */
	case V_QUEUED:
		dirfd = mail.qfd;
		snprintf(rel, sizeof(rel), "%s/msg", name);
		break;
	case V_SENT:
		dirfd = mail.sentfd;
		snprintf(rel, sizeof(rel), "%s", name);
		break;
	case V_FAILED:
		dirfd = mail.failfd;
		snprintf(rel, sizeof(rel), "%s/msg", name);
		break;
	case V_FAILED_ERR:
		dirfd = mail.failfd;
		snprintf(rel, sizeof(rel), "%s/error", name);
		break;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		pthread_mutex_unlock(&mail.lock);
		return -EACCES;     /* queued, sent and failed mail is read-only */
	}
	fd = openat(dirfd, rel, O_RDONLY | O_CLOEXEC);
	pthread_mutex_unlock(&mail.lock);
	if (fd < 0)
		return -ENOENT;
	if ((h = calloc(1, sizeof(*h))) == NULL) {
		close(fd);
		return -ENOMEM;
	}
	h->kind = FH_FILE;
	h->fd = fd;
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
	if (!util_name_valid(path) || strcmp(path, "sent") == 0 ||
	    strcmp(path, "failed") == 0)
		return -EINVAL;
	if (hsmfs_ctx->opt.read_only)
		return -EROFS;
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
	if (h == NULL)
		return -EBADF;
	if (h->kind == FH_WRITER)
		return -EBADF;
	n = pread(h->fd, buf, size, off);
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
	r = mail_commit(w);
	if (r == 0) {
		w->committed = 1;
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
		rm_entry(mail.failfd, name);
		store_fsync_dir(mail.failfd);
		if (file_exists(mail.failfd, name))
			r = -EIO;
		break;
	case V_FAILED_ERR:
		r = -EPERM;     /* remove the message, its reason goes with it */
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

/* mv failed/NAME NAME: queue it again, same Message-ID, fresh schedule. */
static int
mail_rename(const char *from, const char *to, unsigned int flags)
{
	char name[256], dummy[256];
	struct mstate st = { 0 };
	enum view v, tv;
	int entfd, r = 0;

	if (flags & RENAME_EXCHANGE)
		return -EINVAL;
	pthread_mutex_lock(&mail.lock);
	v = classify_locked(from, name, sizeof(name));
	tv = classify_locked(to, dummy, sizeof(dummy));
	if (v != V_FAILED || strcmp(name, to) != 0) {
		r = v == V_NONE ? -ENOENT : -EPERM;
		goto out;
	}
	if (tv != V_NONE) {
		r = -EEXIST;
		goto out;
	}
	if ((entfd = openat(mail.failfd, name, O_RDONLY | O_DIRECTORY |
	    O_CLOEXEC)) < 0) {
		r = -ENOENT;
		goto out;
	}
	state_read(entfd, &st);
	st.queued = st.next = now_s();
	st.attempts = 0;
	snprintf(st.last, sizeof(st.last), "requeued from failed/");
	if (st.date == 0)
		st.date = st.queued;
	if (st.msgid[0] == '\0' && smime_msgid_new(NULL, st.msgid,
	    sizeof(st.msgid)) != 0) {
		close(entfd);
		r = -EIO;
		goto out;
	}
	if (state_write(entfd, &st) != 0) {
		close(entfd);
		r = -hsmfs_err_errno(HSMFS_ERR_IO);
		goto out;
	}
	unlinkat(entfd, "error", 0);
	close(entfd);
	if (renameat2(mail.failfd, name, mail.qfd, name, RENAME_NOREPLACE) < 0) {
		r = -errno;
		goto out;
	}
	store_fsync_dir(mail.qfd);
	store_fsync_dir(mail.failfd);
	if (q_add_locked(name, &st) != 0) {
		r = -ENOMEM;
		goto out;
	}
	log_info("mail/%s: queued again from failed/", name);
	pthread_cond_signal(&mail.cond);
out:
	pthread_mutex_unlock(&mail.lock);
	return r;
}

/* user.hsmfs.mail on a queued or failed message: its schedule. */
static int
mail_getxattr(const char *path, const char *xname, char *value, size_t size)
{
	char name[256], buf[1024], tq[32], tn[32];
	struct mstate st = { 0 };
	enum view v;
	int n, entfd;
	struct qent *e;

	if (strcmp(xname, MAIL_XATTR) != 0)
		return -ENODATA;
	pthread_mutex_lock(&mail.lock);
	v = classify_locked(path, name, sizeof(name));
	if (v == V_QUEUED && (e = q_find_locked(name)) != NULL) {
		st = e->st;
	} else if (v == V_FAILED && (entfd = openat(mail.failfd, name,
	    O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
		state_read(entfd, &st);
		close(entfd);
	} else {
		pthread_mutex_unlock(&mail.lock);
		return -ENODATA;
	}
	pthread_mutex_unlock(&mail.lock);
	iso_time(st.queued, tq, sizeof(tq));
	iso_time(st.next, tn, sizeof(tn));
	n = snprintf(buf, sizeof(buf), "state=%s queued=%s attempts=%u next=%s "
	    "message-id=%s last=%s", v == V_QUEUED ? "queued" : "failed", tq,
	    st.attempts, v == V_QUEUED ? tn : "-", st.msgid,
	    st.last[0] ? st.last : "-");
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
	if (v != V_QUEUED && v != V_FAILED)
		return 0;
	return fs_xattr_reply(MAIL_XATTR, sizeof(MAIL_XATTR), list, size);
}

const struct folder_ops mail_folder = {
	.name = "mail",
	.start = mail_start,
	.stop = mail_stop,
	.status = mail_status,
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
	.getxattr = mail_getxattr,
	.listxattr = mail_listxattr,
};
