/* /mail: start and stop of the folder, the one sender thread that signs
 * what was queued unsigned (S/MIME, crypto/smime.c) and delivers the
 * queue (fs/smtp.c), the retry schedule of RFC 5321 4.5.4.1, status and
 * metrics. Policy in docs/mail.md. */
#include "fs/mail_int.h"
#include "crypto/smime.h"
#include "store/dirio.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAIL_MAX_BACKOFF 3600        /* RFC 5321 4.5.4.1 doubling cap */
#define MAIL_SYNC_BATCH 64           /* deliveries per durable sync of sent/ */

struct mail_state mail = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.cond = PTHREAD_COND_INITIALIZER,
	.temps = TEMP_AREA_INIT,
};

static long long
now_s(void)
{
	return (long long)time(NULL);
}

void
mail_wake(void)
{
	pthread_mutex_lock(&mail.lock);
	mail.wakes++;
	pthread_cond_signal(&mail.cond);
	pthread_mutex_unlock(&mail.lock);
}

/* The shared store: the sender's queue calls run without mail.lock
 * (fs/mail_int.h), and the status fields take it by themselves. With
 * the directory store the sender holds mail.lock around its queue calls
 * and these do nothing. */
static int
q_shared(void)
{
	return hsmfs_ctx->sconf.pg != NULL;
}

static void
q_unlock(void)
{
	if (q_shared())
		pthread_mutex_unlock(&mail.lock);
}

static void
q_relock(void)
{
	if (q_shared())
		pthread_mutex_lock(&mail.lock);
}

/* ---- outcomes (mail.lock held, or the shared store: q_unlock) ---- */

static void
note_error_locked(const char *reason)
{
	q_relock();
	snprintf(mail.last_error, sizeof(mail.last_error), "%s", reason);
	mail.last_error_time = now_s();
	q_unlock();
}

static void
fail_entry_locked(const char *name, const char *reason)
{
	int r = mailq_fail(mail.q, name, reason);
	if (r != 0 && r != HSMFS_ERR_NOTFOUND)
		log_err("mail/%s: cannot move to failed/: %s", name, err_detail());
	log_err("mail/%s: delivery failed permanently, see failed/%s.error: %s",
	    name, name, reason);
	note_error_locked(reason);
}

/* Temporary failure: next attempt per RFC 5321 4.5.4.1 (first backoff
 * mail_retry, doubling up to an hour), or failed/ after mail_max_age. */
static void
defer_locked(const struct mailq_item *e, const char *reason)
{
	long long now = now_s(), back = hsmfs_ctx->opt.mail_retry;
	for (unsigned i = 1; i < e->st.attempts && back < MAIL_MAX_BACKOFF; i++)
		back *= 2;
	if (back > MAIL_MAX_BACKOFF)
		back = MAIL_MAX_BACKOFF;
	note_error_locked(reason);
	if (now - e->st.queued >= hsmfs_ctx->opt.mail_max_age) {
		char why[512];
		snprintf(why, sizeof(why), "gave up after %u attempts in %lld s: %s",
		    e->st.attempts, now - e->st.queued, reason);
		fail_entry_locked(e->name, why);
		return;
	}
	if (mailq_defer(mail.q, e->name, now + back, reason) != 0)
		log_err("mail/%s: cannot save the schedule: %s", e->name, err_detail());
	log_warn("mail/%s: attempt %u failed, next in %lld s: %s", e->name,
	    e->st.attempts, back, reason);
}

static void
sent_locked(const char *name, const char *reply)
{
	int r = mailq_complete(mail.q, name);
	if (r == HSMFS_ERR_NOTFOUND)
		return;
	if (r != 0)
		log_err("mail/%s: delivered, but %s", name, err_detail());
	log_debug("mail/%s: delivered (%s)", name, reply);
	q_relock();
	mail.sent_total++;
	q_unlock();
}

/* ---- one attempt ---- */

/* Sign an entry queued unsigned (the HSM failed at close). Date and
 * Message-ID come from its header, so they stay stable. */
static int
entry_sign(const char *name, struct mailq_entry *e, uint8_t **sig,
    size_t *siglen)
{
	struct mailq_hdr nh = e->h;
	int r;

	/* The sender thread: hold the configuration so a reload cannot
	 * change or close the key mid-signature. */
	fs_conf_rdlock();
	r = smime_sign(mail.key, mail.md, e->msg, e->h.msglen,
	    (time_t)e->h.date, e->h.msgid, sig, siglen);
	fs_conf_unlock();
	if (r != 0)
		return r;
	nh.siglen = *siglen;
	return mailq_set_signed(mail.q, name, &nh, e->msg, *sig);
}

/* One attempt for one leased entry; called without the lock. */
static enum smtp_outcome
deliver(CURL *h, const char *name, char *reason, size_t rsize, int *conn_fail)
{
	struct mailq_entry e;
	struct smime_msg m = { 0 };
	enum smtp_outcome o = SMTP_TEMPFAIL;
	uint8_t *sig = NULL;
	size_t siglen;
	int r;

	*conn_fail = 0;
	err_clear();
	if ((r = mailq_read(mail.q, MAILQ_QUEUED, name, &e)) != 0) {
		snprintf(reason, rsize, "cannot read the queue entry: %s", err_detail());
		return r == HSMFS_ERR_BADMSG ? SMTP_PERMFAIL : SMTP_TEMPFAIL;
	}
	siglen = e.h.siglen;
	if ((r = smime_check(e.msg, e.h.msglen, &m)) != 0) {
		snprintf(reason, rsize, "message refused: %s", err_detail());
		o = SMTP_PERMFAIL;
		goto out;
	}
	if (siglen == 0 && (r = entry_sign(name, &e, &sig, &siglen)) != 0) {
		snprintf(reason, rsize, "signing with key %s failed: %s",
		    mail.key_name, err_detail());
		o = r == HSMFS_ERR_INVALID ? SMTP_PERMFAIL : SMTP_TEMPFAIL;
		goto out;
	}
	o = smtp_send(h, &mail.relay, m.from, m.rcpts, m.nrcpts,
	    sig ? sig : (const uint8_t *)e.sig, siglen, &mail.stopping,
	    reason, rsize, conn_fail);
out:
	free(sig);
	mailq_entry_free(&e);
	smime_msg_clear(&m);
	return o;
}

/* ---- the sender thread ---- */

/* Wait for work (lock held): until soonest, or a signal. */
static void
wait_locked(long long soonest)
{
	struct timespec ts;
	if (soonest < 0) {
		pthread_cond_wait(&mail.cond, &mail.lock);
		return;
	}
	ts.tv_sec = (time_t)soonest;
	ts.tv_nsec = 0;
	pthread_cond_timedwait(&mail.cond, &mail.lock, &ts);
}

/* The outcome of one attempt (lock held; not on the shared store). */
static void
settle_locked(const struct mailq_item *it, enum smtp_outcome o,
    const char *reason, int conn_fail, long long now, int *unsynced)
{
	struct mailq_item e;

	if (!mailq_find(mail.q, it->name, NULL))
		return;     /* gone meanwhile */
	if (o == SMTP_SENT) {
		sent_locked(it->name, reason);
		(*unsynced)++;
		return;
	}
	if (o == SMTP_PERMFAIL) {
		fail_entry_locked(it->name, reason);
		return;
	}
	defer_locked(it, reason);
	/* RFC 5321 4.5.4.1: do not hammer a relay that is down; every
	 * message due now counts this as its attempt. */
	while (conn_fail && mailq_lease(mail.q, now, hsmfs_ctx->opt.mail_lease,
	    &e, NULL) == 0)
		defer_locked(&e, reason);
}

/* Lease the next due entry (lock held; released around the call on the
 * shared store): 1 when there is none or the queue failed. */
static int
lease_next(long long now, struct mailq_item *it, long long *soonest)
{
	int r;

	q_unlock();
	r = mailq_lease(mail.q, now, hsmfs_ctx->opt.mail_lease, it, soonest);
	q_relock();
	return r != 0;
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
		struct mailq_item it;
		char reason[MAILQ_REASON_MAX];
		enum smtp_outcome o;
		unsigned long wakes;
		int conn_fail;

		if (mail.relay.url == NULL || h == NULL) {
			wait_locked(-1);
			continue;
		}
		wakes = mail.wakes;
		if (unsynced >= MAIL_SYNC_BATCH || lease_next(now, &it, &soonest)) {
			if (unsynced > 0) {
				/* Deliveries become durable in batches; a crash
				 * before this only re-sends (same Message-ID). */
				pthread_mutex_unlock(&mail.lock);
				mailq_sync(mail.q);
				unsynced = 0;
				pthread_mutex_lock(&mail.lock);
				continue;
			}
			if (mail.wakes == wakes && !mail.stopping)
				wait_locked(soonest);
			continue;
		}
		pthread_mutex_unlock(&mail.lock);
		o = deliver(h, it.name, reason, sizeof(reason), &conn_fail);
		pthread_mutex_lock(&mail.lock);
		q_unlock();
		settle_locked(&it, o, reason, conn_fail, now, &unsynced);
		q_relock();
	}
	pthread_mutex_unlock(&mail.lock);
	if (unsynced > 0)
		mailq_sync(mail.q);
	if (h)
		curl_easy_cleanup(h);
	return NULL;
}

/* ---- start / stop ---- */

/* Everything start opened; safe on a partial start and twice. */
static void
release_all(void)
{
	smtp_relay_clear(&mail.relay);
	temp_area_close(&mail.temps);
	mailq_close(mail.q);
	mail.q = NULL;
}

static int
open_key(void)
{
	const struct engine_descriptor *d =
	    engine_newest(hsmfs_ctx->engine, ENGINE_SIGN_EMAIL);
	struct keyring_signer ks;

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
	return 0;
}

/* The queue and the writers' temp area. */
static int
open_store(void)
{
	struct store_conf conf = hsmfs_ctx->sconf;
	long long oldest;
	size_t n;
	int r, fd;

	if ((r = mailq_open(&conf, &mail.q, &n, &oldest)) != 0)
		return r;
	if (n > 0)
		log_info("mail: %zu message(s) in the queue at start (oldest queued "
		    "%lld s ago)", n, now_s() - oldest);
	if ((fd = store_dir(hsmfs_ctx->store_fd, "mail")) < 0)
		return fd;
	r = temp_area_open(&mail.temps, fd, -1, -1);
	close(fd);
	return r;
}

static int
start_sender(void)
{
	int r;
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		err_set("curl_global_init failed");
		return HSMFS_ERR_IO;
	}
	mail.stopping = 0;
	if ((r = pthread_create(&mail.thread, NULL, sender_main, NULL)) != 0) {
		err_set("cannot start the sender thread: %s", strerror(r));
		curl_global_cleanup();
		return HSMFS_ERR_IO;
	}
	mail.thread_running = 1;
	return 0;
}

int
mail_start(void)
{
	const char *url = hsmfs_ctx->opt.smtp;
	int r;

	if ((r = open_key()) != 0)
		return r;
	if ((r = open_store()) != 0)
		goto fail;
	if (url != NULL) {
		if ((r = smtp_relay_init(&mail.relay, url, hsmfs_ctx->opt.smtp_ca,
		    hsmfs_ctx->opt.smtp_auth)) != 0)
			goto fail;
	} else {
		log_warn("mail: no smtp= relay configured: messages are signed and "
		    "queued, and wait until hsmfs runs with -o smtp=URL");
	}
	if (hsmfs_ctx->opt.read_only) {
		size_t n;
		/* -o ro: the store must not change, so nothing is sent. */
		mailq_summary(mail.q, &n, NULL, NULL, NULL);
		log_warn("mail: read-only mount: %zu queued message(s) are not sent",
		    n);
		mail.started = 1;
		return 0;
	}
	if ((r = start_sender()) != 0)
		goto fail;
	mail.started = 1;
	return 0;
fail:
	release_all();
	return r;
}

void
mail_stop(void)
{
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
	release_all();
}

/* Reload: the next message is signed with the newest SignEmailDescriptor
 * (the relay options are not part of a reload). */
struct mail_keys {
	hsm_key *key;
	const EVP_MD *md;
	char key_name[256];
};

int
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

void
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

/* ---- status ---- */

void
mail_status(FILE *out)
{
	long long now = now_s(), oldest = -1, next = -1;
	size_t nq = 0, failed = 0;
	char t[32];

	if (mail.q)
		mailq_summary(mail.q, &nq, &oldest, &next, &failed);
	pthread_mutex_lock(&mail.lock);
	fprintf(out, "mail.relay: %s\n", !mail.thread_running ?
	    "none (read-only mount: messages wait in the queue)" :
	    mail.relay.url ? hsmfs_ctx->opt.smtp :
	    "none (no smtp= option: messages wait in the queue)");
	fprintf(out, "mail.key: %s\n", mail.key_name);
	fprintf(out, "mail.queued: %zu\n", nq);
	fprintf(out, "mail.oldest_age: %lld\n", oldest < 0 ? 0 : now - oldest);
	if (next < 0 || mail.relay.url == NULL) {
		fprintf(out, "mail.next_retry: %s\n", mail.relay.url ? "none" :
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

void
mail_metrics(struct metrics *m)
{
	long long now = now_s(), oldest = -1;
	size_t nq = 0, failed = 0;

	if (mail.q)
		mailq_summary(mail.q, &nq, &oldest, NULL, &failed);
	pthread_mutex_lock(&mail.lock);
	metrics_add(m, METRIC_GAUGE, "hsmfs_mail_queued",
	    "Messages in the queue (signed, not yet delivered)", (double)nq,
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
	    mail.thread_running && mail.relay.url != NULL, (char *)NULL);
	metrics_add(m, METRIC_GAUGE, "hsmfs_mail_last_error_timestamp_seconds",
	    "Time of the last delivery failure, Unix time (0: none)",
	    (double)mail.last_error_time, (char *)NULL);
	pthread_mutex_unlock(&mail.lock);
}
