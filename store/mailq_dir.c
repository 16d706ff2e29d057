/* The mail queue in a directory (store/mailq.h; layout in docs/mail.md):
 *
 * STORE/mail/queue/NAME   one entry file per queued message: a small
 *                         header, the message as written, the signed wire
 *                         form (empty while signing must be retried)
 * STORE/mail/retry/NAME   schedule after a failed attempt or a requeue
 * STORE/mail/sent/NAME    the entry file after the relay's 250
 * STORE/mail/failed/NAME  the entry file after a permanent failure,
 * STORE/mail/errors/NAME  and why
 * STORE/mail/.temp/.NAME  staged entries: the folder's temp area (fs/
 *                         sweeps it), node-local
 * Every move is one rename of the entry file, so a message is in exactly
 * one state after a crash. The index of queue/ (names, schedules,
 * leases) is in memory, guarded by q->lock with every rename into or
 * out of queue/. */
#define MAILQ_BE mailq_dir  /* store/mailq.c dispatches */
#include "store/mailq_backend.h"
#include "store/dirio.h"
#include "crypto/smime.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAIL_MAGIC "hsmfs-mail 1\n"
#define MAIL_HDR_MAX 4096
#define MAILQ_STAGE_DIR ".temp"

struct mailq {
	pthread_mutex_t lock;
	int mailfd, qfd, retryfd, sentfd, failfd, errfd, stagefd;
	struct mailq_item *q;
	size_t nq, capq;
};

struct mailq_reader {
	int fd;
	off_t base;
	size_t len;
};

/* The header of an entry file and its length. */
struct ehdr {
	struct mailq_hdr h;
	size_t hdrlen;
};

static long long
now_s(void)
{
	return (long long)time(NULL);
}

static int
file_exists(int dirfd, const char *name)
{
	struct stat st;
	return fstatat(dirfd, name, &st, 0) == 0;
}

/* ---- index (lock held) ---- */

static struct mailq_item *
q_find_locked(struct mailq *q, const char *name)
{
	for (size_t i = 0; i < q->nq; i++)
		if (strcmp(q->q[i].name, name) == 0)
			return &q->q[i];
	return NULL;
}

static int
q_add_locked(struct mailq *q, const char *name, const struct mailq_sched *st,
    size_t msglen)
{
	if (q->nq == q->capq) {
		size_t cap = q->capq ? q->capq * 2 : 64;
		struct mailq_item *nq = realloc(q->q, cap * sizeof(*nq));
		if (nq == NULL)
			return HSMFS_ERR_NOMEM;
		q->q = nq;
		q->capq = cap;
	}
	memset(&q->q[q->nq], 0, sizeof(q->q[0]));
	snprintf(q->q[q->nq].name, sizeof(q->q[0].name), "%s", name);
	q->q[q->nq].st = *st;
	q->q[q->nq].msglen = msglen;
	q->nq++;
	return 0;
}

static void
q_del_locked(struct mailq *q, struct mailq_item *e)
{
	size_t i = (size_t)(e - q->q);
	q->q[i] = q->q[--q->nq];
}

/* ---- entry files ---- */

static int
hdr_format(const struct mailq_hdr *h, char *buf, size_t size)
{
	return snprintf(buf, size, MAIL_MAGIC "queued %lld\ndate %lld\nmsgid %s\n"
	    "msg %zu\nsigned %zu\n\n", h->queued, h->date, h->msgid, h->msglen,
	    h->siglen);
}

/* Parse the header at the start of buf (len bytes available). */
static int
hdr_parse(const char *buf, size_t len, struct ehdr *eh)
{
	struct mailq_hdr *h = &eh->h;
	const char *end = NULL, *p;
	char tmp[MAIL_HDR_MAX + 1], *line, *save = NULL;
	size_t n;

	memset(eh, 0, sizeof(*eh));
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
	eh->hdrlen = n;
	if (h->msgid[0] != '<' || h->msglen > SMIME_MAX_MSG ||
	    h->siglen > 2 * (size_t)SMIME_MAX_MSG) {
		err_set("mail queue entry header is damaged");
		return HSMFS_ERR_BADMSG;
	}
	return 0;
}

/* Header of an open entry file, checked against the file size. */
static int
hdr_read_fd(int fd, struct ehdr *eh)
{
	char buf[MAIL_HDR_MAX];
	struct stat st;
	ssize_t n = pread(fd, buf, sizeof(buf), 0);
	int r;
	if (n < 0 || fstat(fd, &st) < 0) {
		err_set("read entry: %s", strerror(errno));
		return HSMFS_ERR_IO;
	}
	if ((r = hdr_parse(buf, (size_t)n, eh)) != 0)
		return r;
	if ((size_t)st.st_size != eh->hdrlen + eh->h.msglen + eh->h.siglen) {
		err_set("mail queue entry is truncated");
		return HSMFS_ERR_BADMSG;
	}
	return 0;
}

static int
hdr_read_at(int dirfd, const char *name, struct ehdr *eh)
{
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC), r;
	if (fd < 0) {
		err_set("open %s: %s", name, strerror(errno));
		return hsmfs_errno_err(errno);
	}
	r = hdr_read_fd(fd, eh);
	close(fd);
	return r;
}

/* Whole entry: e->buf holds header, message, signature. */
static int
entry_read(int dirfd, const char *name, struct mailq_entry *e)
{
	struct ehdr eh;
	size_t len;
	int r;
	memset(e, 0, sizeof(*e));
	if ((r = util_read_file_at(dirfd, name, MAIL_HDR_MAX + 3 * (size_t)SMIME_MAX_MSG,
	    &e->buf, &len)) != 0)
		return r;
	if ((r = hdr_parse(e->buf, len, &eh)) == 0 &&
	    len != eh.hdrlen + eh.h.msglen + eh.h.siglen) {
		err_set("mail queue entry %s is truncated", name);
		r = HSMFS_ERR_BADMSG;
	}
	if (r != 0) {
		mailq_entry_free(e);
		return r;
	}
	e->h = eh.h;
	e->msg = e->buf + eh.hdrlen;
	e->sig = e->msg + eh.h.msglen;
	return 0;
}

void
mailq_entry_free(struct mailq_entry *e)
{
	free(e->buf);
	memset(e, 0, sizeof(*e));
}

/* Write a complete entry to a fsync'ed temp file in queue/. */
static int
entry_tmp(struct mailq *q, const struct mailq_hdr *h, const void *msg,
    const void *sig, struct store_tmp *t)
{
	char hb[MAIL_HDR_MAX];
	int n = hdr_format(h, hb, sizeof(hb)), r;
	if (n < 0 || (size_t)n >= sizeof(hb)) {
		err_set("mail entry header too long");
		return HSMFS_ERR_INVALID;
	}
	if ((r = store_tmp_create(q->qfd, t)) != 0)
		return r;
	if ((r = util_write_all(t->fd, hb, (size_t)n)) != 0 ||
	    (r = util_write_all(t->fd, msg, h->msglen)) != 0 ||
	    (h->siglen && (r = util_write_all(t->fd, sig, h->siglen)) != 0))
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
sched_write(struct mailq *q, const char *name, const struct mailq_sched *st)
{
	char buf[1024];
	int n = snprintf(buf, sizeof(buf), "queued %lld\nnext %lld\nattempts %u\n"
	    "last %s\n", st->queued, st->next, st->attempts, st->last);
	return store_write_atomic(q->retryfd, name, buf, (size_t)n);
}

/* The schedule of a queue entry: retry/NAME, else a fresh one. */
static void
sched_read(struct mailq *q, const char *name, const struct mailq_hdr *h,
    struct mailq_sched *st)
{
	char *txt = NULL, *line, *save = NULL;
	memset(st, 0, sizeof(*st));
	st->queued = st->next = h->queued;
	if (util_read_file_at(q->retryfd, name, 4096, &txt, NULL) != 0)
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

/* ---- open / recovery / close ---- */

/* Remove temp files and schedules or reasons whose entry is gone. */
static int
prune_one(int dirfd, const char *name, void *arg)
{
	int ownerfd = *(int *)arg;
	if (name[0] == '.' || (ownerfd >= 0 && !file_exists(ownerfd, name)))
		unlinkat(dirfd, name, 0);
	return 0;
}

static void
prune_orphans(int dirfd, int ownerfd)
{
	(void)util_foreach_dir(dirfd, prune_one, &ownerfd);
}

/* queue/NAME -> failed/NAME with errors/NAME (lock held). */
static void
fail_locked(struct mailq *q, struct mailq_item *e, const char *reason)
{
	char buf[1024], t[32];
	struct ehdr eh;
	int n;

	util_iso_utc(now_s(), t, sizeof(t));
	if (hdr_read_at(q->qfd, e->name, &eh) != 0)
		snprintf(eh.h.msgid, sizeof(eh.h.msgid), "(unknown)");
	n = snprintf(buf, sizeof(buf), "%s %s\nattempts: %u\nqueued: %lld\n"
	    "message-id: %s\n", t, reason, e->st.attempts, e->st.queued, eh.h.msgid);
	if (store_write_atomic(q->errfd, e->name, buf, (size_t)n) != 0)
		log_err("mail/%s: cannot record the failure: %s", e->name,
		    err_detail());
	if (renameat(q->qfd, e->name, q->failfd, e->name) < 0)
		log_err("mail/%s: cannot move to failed/: %s", e->name, strerror(errno));
	unlinkat(q->retryfd, e->name, 0);
	store_fsync_dir(q->failfd);
	store_fsync_dir(q->qfd);
	q_del_locked(q, e);
}

struct recover_arg {
	struct mailq *q;
	long long now, oldest;
};

static int
recover_one(int dirfd, const char *name, void *arg)
{
	struct recover_arg *ra = arg;
	struct mailq *q = ra->q;
	struct ehdr eh;
	struct mailq_sched st;

	if (name[0] == '.')
		return 0;
	if (hdr_read_at(dirfd, name, &eh) != 0) {
		struct mailq_sched bad = { .queued = ra->now, .next = ra->now };
		const char *why = "queue entry damaged (not sent)";
		/* Entries are renamed into place complete; a damaged one goes
		 * to failed/ for inspection, it is never sent. */
		log_err("mail/%s: %s", name, err_detail());
		if (q_add_locked(q, name, &bad, 0) == 0) {
			fail_locked(q, &q->q[q->nq - 1], why);
			log_err("mail/%s: delivery failed permanently, see "
			    "failed/%s.error: %s", name, name, why);
		}
		return 0;
	}
	sched_read(q, name, &eh.h, &st);
	if (st.queued < ra->oldest)
		ra->oldest = st.queued;
	return q_add_locked(q, name, &st, eh.h.msglen);
}

static int
recover_queue(struct mailq *q, long long *oldest)
{
	struct recover_arg ra = { q, now_s(), now_s() };
	int r = util_foreach_dir(q->qfd, recover_one, &ra);
	*oldest = ra.oldest;
	return r;
}

void
mailq_close(struct mailq *q)
{
	int *fds[7];
	if (q == NULL)
		return;
	fds[0] = &q->qfd; fds[1] = &q->retryfd; fds[2] = &q->sentfd;
	fds[3] = &q->failfd; fds[4] = &q->errfd; fds[5] = &q->stagefd;
	fds[6] = &q->mailfd;
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		if (*fds[i] >= 0)
			close(*fds[i]);
	free(q->q);
	pthread_mutex_destroy(&q->lock);
	free(q);
}

int
mailq_open(const struct store_conf *conf, struct mailq **out, size_t *nqueued,
    long long *oldest)
{
	struct mailq *q;
	int r;

	*out = NULL;
	if (conf->shared != NULL) {
		err_set("the mail queue has no shared backend yet");
		return HSMFS_ERR_UNSUPPORTED;
	}
	if ((q = calloc(1, sizeof(*q))) == NULL)
		return HSMFS_ERR_NOMEM;
	pthread_mutex_init(&q->lock, NULL);
	q->mailfd = q->qfd = q->retryfd = q->sentfd = q->failfd = q->errfd =
	    q->stagefd = -1;
	{
		struct { const char *name; int *fd; } dirs[] = {
			{ "queue", &q->qfd }, { "retry", &q->retryfd },
			{ "sent", &q->sentfd }, { "failed", &q->failfd },
			{ "errors", &q->errfd }, { MAILQ_STAGE_DIR, &q->stagefd },
		};
		if ((r = store_dir(conf->dirfd, "mail")) < 0)
			goto fail;
		q->mailfd = r;
		for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
			if ((r = store_dir(q->mailfd, dirs[i].name)) < 0)
				goto fail;
			*dirs[i].fd = r;
		}
	}
	prune_orphans(q->qfd, -1);
	prune_orphans(q->sentfd, -1);
	prune_orphans(q->failfd, -1);
	prune_orphans(q->retryfd, q->qfd);
	prune_orphans(q->errfd, q->failfd);
	if ((r = recover_queue(q, oldest)) != 0)
		goto fail;
	*nqueued = q->nq;
	*out = q;
	return 0;
fail:
	mailq_close(q);
	return r;
}

/* ---- admission ---- */

int
mailq_enqueue(struct mailq *q, const char *name, const struct mailq_hdr *h,
    const void *msg, const void *sig, long long first_delay)
{
	struct mailq_sched st = { .queued = h->queued,
	    .next = h->queued + first_delay };
	struct store_tmp t;
	int r;

	if ((r = entry_tmp(q, h, msg, sig, &t)) != 0)
		return r;
	pthread_mutex_lock(&q->lock);
	if (q_find_locked(q, name) != NULL) {
		pthread_mutex_unlock(&q->lock);
		store_tmp_abort(&t);
		err_set("a message with this name is already queued");
		return HSMFS_ERR_PERM;
	}
	if (renameat2(q->qfd, t.name, q->qfd, name, RENAME_NOREPLACE) < 0) {
		int e = errno;
		pthread_mutex_unlock(&q->lock);
		store_tmp_abort(&t);
		err_set("rename into the queue: %s", strerror(e));
		return hsmfs_errno_err(e);
	}
	close(t.fd);
	/* A stale schedule of an older message with this name must not
	 * delay this one. */
	unlinkat(q->retryfd, name, 0);
	r = q_add_locked(q, name, &st, h->msglen);
	pthread_mutex_unlock(&q->lock);
	/* Durable before the caller acknowledges; a sender may be at it. */
	if (r == 0)
		r = store_fsync_dir(q->qfd);
	return r;
}

int
mailq_stage(struct mailq *q, const char *name, const struct mailq_hdr *h,
    const void *msg, const void *sig)
{
	struct store_tmp t;
	int r;

	if (h == NULL)
		return store_write_atomic(q->stagefd, name, "", 0);
	if ((r = entry_tmp(q, h, msg, sig, &t)) != 0)
		return r;
	if (renameat(q->qfd, t.name, q->stagefd, name) < 0) {
		int e = errno;
		store_tmp_abort(&t);
		err_set("rename into the temp area: %s", strerror(e));
		return hsmfs_errno_err(e);
	}
	close(t.fd);
	return store_fsync_dir(q->stagefd);
}

/* fromfd/from -> queue/name (never over an entry), both directories
 * synced, then into the table. Lock held. */
static int
queue_in_locked(struct mailq *q, int fromfd, const char *from,
    const char *name, const struct mailq_sched *st, size_t msglen)
{
	if (renameat2(fromfd, from, q->qfd, name, RENAME_NOREPLACE) < 0)
		return hsmfs_errno_err(errno);
	store_fsync_dir(q->qfd);
	store_fsync_dir(fromfd);
	return q_add_locked(q, name, st, msglen);
}

int
mailq_publish(struct mailq *q, const char *tmp, const char *name,
    long long first_delay, struct mailq_hdr *h)
{
	struct mailq_sched st = { 0 };
	struct ehdr eh;
	struct stat sb;
	int r = 0;

	if (fstatat(q->stagefd, tmp, &sb, 0) < 0)
		return HSMFS_ERR_NOTFOUND;
	if (sb.st_size == 0) {
		err_set("empty message");
		return HSMFS_ERR_INVALID;
	}
	if (hdr_read_at(q->stagefd, tmp, &eh) != 0)
		return HSMFS_ERR_IO;
	st.queued = now_s();
	st.next = st.queued + first_delay;
	pthread_mutex_lock(&q->lock);
	if (q_find_locked(q, name) != NULL) {
		r = HSMFS_ERR_PERM;
		goto out;
	}
	unlinkat(q->retryfd, name, 0);
	if ((r = queue_in_locked(q, q->stagefd, tmp, name, &st,
	    eh.h.msglen)) != 0)
		goto out;
	*h = eh.h;
out:
	pthread_mutex_unlock(&q->lock);
	return r;
}

int
mailq_requeue(struct mailq *q, const char *name)
{
	struct mailq_sched st = { 0 };
	struct ehdr eh;
	int r = 0;

	if (hdr_read_at(q->failfd, name, &eh) != 0)
		return HSMFS_ERR_IO;
	st.queued = st.next = now_s();
	snprintf(st.last, sizeof(st.last), "queued again from failed/");
	pthread_mutex_lock(&q->lock);
	if (q_find_locked(q, name) != NULL) {
		r = HSMFS_ERR_PERM;
		goto out;
	}
	if (sched_write(q, name, &st) != 0) {
		r = HSMFS_ERR_IO;
		goto out;
	}
	if ((r = queue_in_locked(q, q->failfd, name, name, &st,
	    eh.h.msglen)) != 0) {
		if (!file_exists(q->qfd, name))
			unlinkat(q->retryfd, name, 0);
		goto out;
	}
	unlinkat(q->errfd, name, 0);
out:
	pthread_mutex_unlock(&q->lock);
	return r;
}

/* ---- delivery ---- */

int
mailq_lease(struct mailq *q, long long now, long long lease_s,
    struct mailq_item *out, long long *soonest)
{
	struct mailq_item *due = NULL;
	long long first = -1;

	(void)lease_s;      /* in-process: a lease ends with the process */
	pthread_mutex_lock(&q->lock);
	for (size_t i = 0; i < q->nq; i++) {
		struct mailq_item *e = &q->q[i];
		if (e->leased)
			continue;
		if (first < 0 || e->st.next < first)
			first = e->st.next;
		if (e->st.next <= now &&
		    (due == NULL || e->st.next < due->st.next ||
		    (e->st.next == due->st.next && e->st.queued < due->st.queued)))
			due = e;
	}
	if (due != NULL) {
		due->leased = 1;
		due->st.attempts++;
		*out = *due;
	}
	pthread_mutex_unlock(&q->lock);
	if (soonest)
		*soonest = first;
	return due ? 0 : HSMFS_ERR_NOTFOUND;
}

int
mailq_set_signed(struct mailq *q, const char *name, const struct mailq_hdr *h,
    const void *msg, const void *sig)
{
	struct store_tmp t;
	int r;
	if ((r = entry_tmp(q, h, msg, sig, &t)) != 0)
		return r;
	return store_tmp_commit(&t, name);
}

int
mailq_complete(struct mailq *q, const char *name)
{
	struct mailq_item *e;
	int r = 0;

	pthread_mutex_lock(&q->lock);
	if ((e = q_find_locked(q, name)) == NULL) {
		pthread_mutex_unlock(&q->lock);
		return HSMFS_ERR_NOTFOUND;
	}
	if (renameat(q->qfd, name, q->sentfd, name) < 0) {
		err_set("cannot move it to sent/: %s", strerror(errno));
		r = hsmfs_errno_err(errno);
	}
	unlinkat(q->retryfd, name, 0);
	q_del_locked(q, e);
	pthread_mutex_unlock(&q->lock);
	return r;
}

int
mailq_sync(struct mailq *q)
{
	int r = store_fsync_dir(q->sentfd), r2 = store_fsync_dir(q->qfd),
	    r3 = store_fsync_dir(q->retryfd);
	return r ? r : r2 ? r2 : r3;
}

int
mailq_fail(struct mailq *q, const char *name, const char *reason)
{
	struct mailq_item *e;
	pthread_mutex_lock(&q->lock);
	if ((e = q_find_locked(q, name)) == NULL) {
		pthread_mutex_unlock(&q->lock);
		return HSMFS_ERR_NOTFOUND;
	}
	fail_locked(q, e, reason);
	pthread_mutex_unlock(&q->lock);
	return 0;
}

int
mailq_defer(struct mailq *q, const char *name, long long next,
    const char *reason)
{
	struct mailq_item *e;
	int r;
	pthread_mutex_lock(&q->lock);
	if ((e = q_find_locked(q, name)) == NULL) {
		pthread_mutex_unlock(&q->lock);
		return HSMFS_ERR_NOTFOUND;
	}
	e->leased = 0;
	e->st.next = next;
	snprintf(e->st.last, sizeof(e->st.last), "%s", reason);
	r = sched_write(q, name, &e->st);
	pthread_mutex_unlock(&q->lock);
	return r;
}

/* ---- views ---- */

int
mailq_find(struct mailq *q, const char *name, struct mailq_item *out)
{
	struct mailq_item *e;
	pthread_mutex_lock(&q->lock);
	if ((e = q_find_locked(q, name)) != NULL && out != NULL)
		*out = *e;
	pthread_mutex_unlock(&q->lock);
	return e != NULL;
}

static int
box_fd(struct mailq *q, enum mailq_box box)
{
	return box == MAILQ_QUEUED ? q->qfd : box == MAILQ_SENT ? q->sentfd :
	    box == MAILQ_FAILED ? q->failfd : q->stagefd;
}

int
mailq_exists(struct mailq *q, enum mailq_box box, const char *name)
{
	if (box == MAILQ_QUEUED)
		return mailq_find(q, name, NULL);
	return file_exists(box_fd(q, box), name);
}

static int
count_one(int dirfd, const char *name, void *arg)
{
	(void)dirfd;
	*(size_t *)arg += name[0] != '.';
	return 0;
}

static size_t
count_dir(int dirfd)
{
	size_t n = 0;
	(void)util_foreach_dir(dirfd, count_one, &n);
	return n;
}

struct list_arg {
	void (*cb)(void *arg, const char *name);
	void *arg;
};

static int
list_one(int dirfd, const char *name, void *arg)
{
	struct list_arg *la = arg;
	(void)dirfd;
	if (name[0] != '.')
		la->cb(la->arg, name);
	return 0;
}

void
mailq_summary(struct mailq *q, size_t *nqueued, long long *oldest,
    long long *next, size_t *nfailed)
{
	long long o = -1, n = -1;
	if (nfailed)
		*nfailed = count_dir(q->failfd);
	pthread_mutex_lock(&q->lock);
	for (size_t i = 0; i < q->nq; i++) {
		if (o < 0 || q->q[i].st.queued < o)
			o = q->q[i].st.queued;
		if (n < 0 || q->q[i].st.next < n)
			n = q->q[i].st.next;
	}
	*nqueued = q->nq;
	pthread_mutex_unlock(&q->lock);
	if (oldest)
		*oldest = o;
	if (next)
		*next = n;
}

int
mailq_list(struct mailq *q, enum mailq_box box,
    void (*cb)(void *arg, const char *name), void *arg)
{
	struct list_arg la = { cb, arg };

	if (box == MAILQ_QUEUED) {
		pthread_mutex_lock(&q->lock);
		for (size_t i = 0; i < q->nq; i++)
			cb(arg, q->q[i].name);
		pthread_mutex_unlock(&q->lock);
		return 0;
	}
	return util_foreach_dir(box_fd(q, box), list_one, &la);
}

int
mailq_read(struct mailq *q, enum mailq_box box, const char *name,
    struct mailq_entry *e)
{
	return entry_read(box_fd(q, box), name, e);
}

int
mailq_reader_open(struct mailq *q, enum mailq_box box, const char *name,
    enum mailq_part part, struct mailq_reader **rp, size_t *len,
    long long *mtime)
{
	struct mailq_reader *r;
	struct ehdr eh;
	struct stat st;
	int dirfd = part == MAILQ_PART_REASON ? q->errfd : box_fd(q, box);
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return HSMFS_ERR_NOTFOUND;
	if (fstat(fd, &st) < 0 || (r = malloc(sizeof(*r))) == NULL) {
		close(fd);
		return HSMFS_ERR_IO;
	}
	r->fd = fd;
	if (part == MAILQ_PART_REASON || (box == MAILQ_STAGED && st.st_size == 0)) {
		r->base = 0;
		r->len = (size_t)st.st_size;
	} else {
		if (hdr_read_fd(fd, &eh) != 0) {
			close(fd);
			free(r);
			return HSMFS_ERR_IO;
		}
		r->base = (off_t)eh.hdrlen +
		    (part == MAILQ_PART_SIGNED ? (off_t)eh.h.msglen : 0);
		r->len = part == MAILQ_PART_SIGNED ? eh.h.siglen : eh.h.msglen;
	}
	*len = r->len;
	if (mtime)
		*mtime = (long long)st.st_mtime;
	*rp = r;
	return 0;
}

ssize_t
mailq_reader_pread(struct mailq_reader *r, void *buf, size_t size, size_t off)
{
	ssize_t n;
	if (off >= r->len)
		return 0;
	if (size > r->len - off)
		size = r->len - off;
	n = pread(r->fd, buf, size, r->base + (off_t)off);
	return n < 0 ? hsmfs_errno_err(errno) : n;
}

void
mailq_reader_close(struct mailq_reader *r)
{
	if (r == NULL)
		return;
	close(r->fd);
	free(r);
}

int
mailq_remove(struct mailq *q, enum mailq_box box, const char *name)
{
	int fd = box_fd(q, box);
	if (box == MAILQ_QUEUED)
		return HSMFS_ERR_PERM;
	if (unlinkat(fd, name, 0) < 0)
		return hsmfs_errno_err(errno);
	if (box == MAILQ_FAILED)
		unlinkat(q->errfd, name, 0);
	if (box != MAILQ_STAGED)
		store_fsync_dir(fd);
	return 0;
}
