/* /mail inside fs/: the state shared by the FUSE side (fs/mail.c:
 * views, writers, admission) and the sender (fs/mail_sender.c: start,
 * stop, delivery and its schedule, status). The queue itself is the
 * store's (store/mailq.h), SMTP is fs/smtp.c.
 *
 * Locking: mail.lock guards the open writers, the sender's wake-up
 * (mail.cond, mail.wakes) and the status fields below; it may be held
 * while calling into the queue (which has its own lock, taken after it).
 * The sender never holds it during signing or network I/O; an entry it
 * works on is leased and left alone by the FUSE side. On the shared
 * store (PostgreSQL) the sender does not hold it during its queue calls
 * either (each is one transaction, safe against the other nodes and so
 * against this node's FUSE side): a hung database then does not stall
 * the views through the sender. Whoever signals mail.cond increments
 * mail.wakes, so the sender sees a wake-up that came while it was
 * unlocked. */
#ifndef HSMFS_FS_MAIL_INT_H
#define HSMFS_FS_MAIL_INT_H

#include "fs/fs.h"
#include "fs/smtp.h"
#include "fs/temp.h"
#include "store/mailq.h"

#include <pthread.h>

#define MAIL_FIRST_DELAY 2           /* s before the first attempt (1-2 s) */

/* A message being written: visible as MNT/mail/NAME until released. */
struct writer {
	char name[256];
	char *buf;
	size_t len, cap;
	int dirty;            /* written since the last successful commit */
	int committed;        /* queued: further writes are refused */
	int staged;           /* a temporary's content is in the staging box */
	int result;           /* last flush result */
	struct writer *next;
};

struct mail_state {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t thread;
	int started, thread_running, stopping;
	unsigned long wakes;         /* incremented with each signal of cond */
	struct mailq *q;
	/* key, md, key_name: set at start and by a reload under the
	 * configuration write lock; the sender reads them holding it. */
	hsm_key *key;
	const EVP_MD *md;
	char key_name[256];
	struct smtp_relay relay;     /* relay.url NULL: no smtp= */
	struct writer *writers;
	struct temp_area temps;      /* swept; the entries are mailq's */
	unsigned long sent_total;
	char last_error[MAILQ_REASON_MAX];
	long long last_error_time;
};

extern struct mail_state mail;

/* fs/mail_sender.c: the folder's life cycle and status. */
int mail_start(void);
void mail_stop(void);
int mail_reload_prepare(const struct engine *e, struct keyring *kr,
    void **next);
void mail_reload_finish(void *next, int commit);
void mail_status(FILE *out);
void mail_metrics(struct metrics *m);
/* Wake the sender: a message was queued (takes mail.lock). */
void mail_wake(void);

#endif
