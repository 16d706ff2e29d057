/* Unit tests for store/mailq.h on the directory backend: enqueue and the
 * name rule, lease order and attempts, defer, complete, fail with its
 * reason, requeue, staging and publish, the views' readers, and recovery
 * at open (schedules kept, orphans and temporaries removed, a damaged
 * entry moved to failed/, never leased). A shared backend runs the same
 * calls. */
#include "store/mailq.h"
#include "store/dirio.h"
#include "common/err.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int failures;
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK(%s) failed\n", \
	__FILE__, __LINE__, #c); failures++; } } while (0)

static void
hdr(struct mailq_hdr *h, long long queued, const char *msg, const char *sig)
{
	memset(h, 0, sizeof(*h));
	h->queued = h->date = queued;
	snprintf(h->msgid, sizeof(h->msgid), "<%lld.test@example.org>", queued);
	h->msglen = strlen(msg);
	h->siglen = sig ? strlen(sig) : 0;
}

static void
count_cb(void *arg, const char *name)
{
	(void)name;
	(*(int *)arg)++;
}

static int
count(struct mailq *q, enum mailq_box box)
{
	int n = 0;
	CHECK(mailq_list(q, box, count_cb, &n) == 0);
	return n;
}

static int
read_part(struct mailq *q, enum mailq_box box, const char *name,
    enum mailq_part part, char *buf, size_t size)
{
	struct mailq_reader *r;
	size_t len;
	ssize_t n;
	if (mailq_reader_open(q, box, name, part, &r, &len, NULL) != 0)
		return -1;
	n = mailq_reader_pread(r, buf, size - 1, 0);
	mailq_reader_close(r);
	if (n < 0 || (size_t)n != len)
		return -1;
	buf[n] = '\0';
	return 0;
}

static void
test_queue(struct store_conf *conf, long long now)
{
	struct mailq *q;
	struct mailq_hdr h;
	struct mailq_item it;
	struct mailq_entry e;
	long long soonest, oldest;
	size_t n;
	char buf[1024];

	CHECK(mailq_open(conf, &q, &n, &oldest) == 0 && n == 0);
	hdr(&h, now - 100, "msg-a", "sig-a");
	CHECK(mailq_enqueue(q, "a", &h, "msg-a", "sig-a", 0) == 0);
	hdr(&h, now - 50, "msg-b", NULL);
	CHECK(mailq_enqueue(q, "b", &h, "msg-b", NULL, 0) == 0);
	CHECK(mailq_enqueue(q, "b", &h, "msg-b", NULL, 0) == HSMFS_ERR_PERM);
	hdr(&h, now, "msg-c", "sig-c");
	CHECK(mailq_enqueue(q, "c", &h, "msg-c", "sig-c", 1000) == 0);
	CHECK(count(q, MAILQ_QUEUED) == 3);
	CHECK(mailq_find(q, "a", &it) && it.msglen == 5 && !it.leased);

	/* Earliest due first; c is not due; a leased entry is not leased twice. */
	CHECK(mailq_lease(q, now, 60, &it, &soonest) == 0);
	CHECK(strcmp(it.name, "a") == 0 && it.st.attempts == 1);
	CHECK(mailq_lease(q, now, 60, &it, &soonest) == 0 && strcmp(it.name, "b") == 0);
	CHECK(mailq_lease(q, now, 60, &it, &soonest) == HSMFS_ERR_NOTFOUND);
	CHECK(soonest == now + 1000);
	CHECK(mailq_find(q, "a", &it) && it.leased);

	/* b: signed later, then deferred; a: delivered. */
	CHECK(mailq_read(q, MAILQ_QUEUED, "b", &e) == 0 && e.h.siglen == 0 &&
	    memcmp(e.msg, "msg-b", 5) == 0);
	e.h.siglen = 5;
	CHECK(mailq_set_signed(q, "b", &e.h, e.msg, "sig-b") == 0);
	mailq_entry_free(&e);
	CHECK(mailq_defer(q, "b", now + 300, "451 try later") == 0);
	CHECK(mailq_find(q, "b", &it) && !it.leased && it.st.next == now + 300 &&
	    strcmp(it.st.last, "451 try later") == 0 && it.st.attempts == 1);
	CHECK(mailq_complete(q, "a") == 0 && mailq_sync(q) == 0);
	CHECK(!mailq_find(q, "a", NULL) && mailq_exists(q, MAILQ_SENT, "a"));
	CHECK(read_part(q, MAILQ_SENT, "a", MAILQ_PART_SIGNED, buf, sizeof(buf)) == 0 &&
	    strcmp(buf, "sig-a") == 0);
	CHECK(mailq_remove(q, MAILQ_QUEUED, "b") == HSMFS_ERR_PERM);

	/* c fails; its reason is a view; requeue brings it back due now. */
	CHECK(mailq_fail(q, "c", "550 no such user") == 0);
	CHECK(mailq_exists(q, MAILQ_FAILED, "c") && !mailq_find(q, "c", NULL));
	CHECK(read_part(q, MAILQ_FAILED, "c", MAILQ_PART_REASON, buf, sizeof(buf)) == 0 &&
	    strstr(buf, " 550 no such user\n") != NULL &&
	    strstr(buf, "message-id: <") != NULL);
	CHECK(read_part(q, MAILQ_FAILED, "c", MAILQ_PART_MSG, buf, sizeof(buf)) == 0 &&
	    strcmp(buf, "msg-c") == 0);
	CHECK(mailq_requeue(q, "c") == 0 && mailq_find(q, "c", &it) &&
	    it.st.attempts == 0 && it.st.next <= (long long)time(NULL));
	CHECK(!mailq_exists(q, MAILQ_FAILED, "c"));
	CHECK(mailq_reader_open(q, MAILQ_FAILED, "c", MAILQ_PART_REASON,
	    &(struct mailq_reader *){ NULL }, &n, NULL) == HSMFS_ERR_NOTFOUND);

	/* Staging: empty is refused, a signed one is published once. */
	CHECK(mailq_stage(q, ".e", NULL, NULL, NULL) == 0);
	CHECK(mailq_publish(q, ".e", "e", 2, &h) == HSMFS_ERR_INVALID);
	hdr(&h, now, "msg-d", "sig-d");
	CHECK(mailq_stage(q, ".d", &h, "msg-d", "sig-d") == 0);
	CHECK(read_part(q, MAILQ_STAGED, ".d", MAILQ_PART_MSG, buf, sizeof(buf)) == 0 &&
	    strcmp(buf, "msg-d") == 0);
	CHECK(mailq_publish(q, ".d", "b", 2, &h) == HSMFS_ERR_PERM);
	CHECK(mailq_publish(q, ".d", "d", 2, &h) == 0 && mailq_find(q, "d", NULL));
	CHECK(mailq_publish(q, ".d", "d2", 2, &h) == HSMFS_ERR_NOTFOUND);
	CHECK(mailq_remove(q, MAILQ_STAGED, ".e") == 0);
	mailq_close(q);
}

static void
test_recovery(struct store_conf *conf, int mailfd, long long now)
{
	struct mailq *q;
	struct mailq_item it;
	long long oldest;
	size_t n, nf;
	int qfd = openat(mailfd, "queue", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int rfd = openat(mailfd, "retry", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	/* A damaged entry, a leftover temp file and an orphan schedule. */
	CHECK(store_write_atomic(qfd, "bad", "hsmfs-mail 1\nqueued 1\n", 22) == 0);
	CHECK(store_write_atomic(qfd, ".tmp.left", "x", 1) == 0);
	CHECK(store_write_atomic(rfd, "gone", "next 1\n", 7) == 0);
	CHECK(mailq_open(conf, &q, &n, &oldest) == 0);
	CHECK(n == 3);      /* b (deferred), c (requeued), d (published) */
	CHECK(mailq_find(q, "b", &it) && it.st.next == now + 300 &&
	    strcmp(it.st.last, "451 try later") == 0 && it.st.attempts == 1);
	CHECK(!mailq_find(q, "bad", NULL) && mailq_exists(q, MAILQ_FAILED, "bad"));
	CHECK(faccessat(qfd, ".tmp.left", F_OK, 0) != 0);
	CHECK(faccessat(rfd, "gone", F_OK, 0) != 0);
	mailq_summary(q, &n, &oldest, NULL, &nf);
	CHECK(n == 3 && nf == 1 && oldest <= now);
	CHECK(mailq_remove(q, MAILQ_FAILED, "bad") == 0 && count(q, MAILQ_FAILED) == 0);
	mailq_close(q);
	close(qfd);
	close(rfd);
}

int
main(void)
{
	char dir[] = "/tmp/hsmfs-test-mailq.XXXXXX", cmd[64];
	struct store_conf conf = { 0 };
	struct mailq *q;
	size_t n;
	long long oldest, now = (long long)time(NULL);
	int mailfd;

	if (mkdtemp(dir) == NULL)
		return 2;
	conf.dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	conf.shared = "postgresql://x@y/z";
	CHECK(mailq_open(&conf, &q, &n, &oldest) == HSMFS_ERR_UNSUPPORTED && q == NULL);
	conf.shared = NULL;
	test_queue(&conf, now);
	mailfd = openat(conf.dirfd, "mail", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	test_recovery(&conf, mailfd, now);
	close(mailfd);
	close(conf.dirfd);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", dir);
	if (failures)
		fprintf(stderr, "%d check(s) failed\n", failures);
	return failures ? 1 : 0;
}
