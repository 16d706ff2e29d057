/* Drives store/mailq.h on PostgreSQL for tests/test_shared_mail.py: two
 * nodes in one process, A and B, each its own pool (node name A or B)
 * and STORE directory, on one database:
 *   test-mailq-pg URI PASSWORD_FILE STORE_A STORE_B
 * then commands on stdin, one a line (H: A or B; BOX: q s f t for
 * queued, sent, failed, staged; PART: msg sig reason):
 *   enq H NAME MSGID         queue "Subject: NAME" signed "SIG NAME"
 *   lease H SECS             -> "ok NAME ATTEMPTS" | "none SOONEST-NOW"
 *   complete|requeue H NAME  sync H  fail H NAME REASON   defer H NAME SECS REASON
 *   setsig H NAME SIG        remove H BOX NAME
 *   stage H TMP | stage0 H TMP | publish H TMP NAME
 *   list H BOX               -> "ok a,b,c" (sorted)
 *   read H BOX NAME          -> "ok MSGID MSGLEN SIGLEN"
 *   part H BOX PART NAME     -> "ok LEN TEXT" (newlines as |)
 *   exists H BOX NAME        -> "ok 0|1"
 *   find H NAME              -> "ok ATTEMPTS LEASED REASON" | "none"
 *   summary H                -> "ok NQUEUED NFAILED"
 *   race SECS                -> A and B lease-and-complete in two threads
 *                               until the queue is empty: "ok A=n B=m dup=d"
 * Other answers: "ok", or "err CODE MS [soonest=S] detail" (MS: how long
 * the call took). Opening prints "open" or "err ..." and exits 1. */
#include "store/mailq.h"
#include "store/pg.h"
#include "common/err.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>

static struct mailq *qa, *qb;
static struct pg *pools[2];
static int npools;

static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int
open_node(const char *uri, const char *pw, const char *node, const char *dir,
    struct mailq **q)
{
	struct pg_conf pc = { .uri = uri, .password_file = pw, .node = node };
	struct store_conf sc = { 0 };
	struct pg *p;
	long long oldest;
	size_t n;
	int r;

	if ((sc.dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
		return HSMFS_ERR_IO;
	if ((r = pg_open(&pc, &p)) != 0)
		return r;
	pools[npools++] = p;
	sc.pg = p;
	return mailq_open(&sc, q, &n, &oldest);
}

static enum mailq_box
box_of(const char *s)
{
	return *s == 's' ? MAILQ_SENT : *s == 'f' ? MAILQ_FAILED :
	    *s == 't' ? MAILQ_STAGED : MAILQ_QUEUED;
}

struct names { char buf[8192]; char *v[256]; size_t n; };

static void
name_cb(void *arg, const char *name)
{
	struct names *ns = arg;
	size_t used = 0;

	for (size_t i = 0; i < ns->n; i++)
		used += strlen(ns->v[i]) + 1;
	if (ns->n < 256 && used + strlen(name) + 1 <= sizeof(ns->buf)) {
		ns->v[ns->n] = strcpy(ns->buf + used, name);
		ns->n++;
	}
}

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- race: both nodes drain the queue at once ---- */

static char done_names[4096][MAILQ_NAME_MAX];
static size_t ndone;
static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;

static void *
drain(void *arg)
{
	struct mailq *q = arg;
	struct mailq_item it;
	long n = 0;

	while (mailq_lease(q, 0, 60, &it, NULL) == 0) {
		if (mailq_complete(q, it.name) == 0)
			n++;
		pthread_mutex_lock(&done_lock);
		if (ndone < 4096)
			snprintf(done_names[ndone++], MAILQ_NAME_MAX, "%s", it.name);
		pthread_mutex_unlock(&done_lock);
	}
	return (void *)n;
}

static void
race(void)
{
	pthread_t ta, tb;
	void *na, *nb;
	size_t dup = 0;

	ndone = 0;
	pthread_create(&ta, NULL, drain, qa);
	pthread_create(&tb, NULL, drain, qb);
	pthread_join(ta, &na);
	pthread_join(tb, &nb);
	for (size_t i = 0; i < ndone; i++)
		for (size_t j = i + 1; j < ndone; j++)
			dup += strcmp(done_names[i], done_names[j]) == 0;
	printf("ok A=%ld B=%ld dup=%zu\n", (long)na, (long)nb, dup);
}

/* One command on node q; the answer line printed. */
static void
command(struct mailq *q, const char *cmd, char *a1, char *a2, char *rest)
{
	double t0 = now_ms();
	long long soonest = -2;
	int r = 0;

	if (strcmp(cmd, "enq") == 0 || strcmp(cmd, "stage") == 0) {
		char msg[512], sig[512];
		struct mailq_hdr h = { 0 };
		h.queued = h.date = (long long)time(NULL);
		snprintf(h.msgid, sizeof(h.msgid), "%s", *a2 ? a2 : "<none@x>");
		h.msglen = (size_t)snprintf(msg, sizeof(msg), "Subject: %s\r\n\r\n"
		    "body %s\r\n", a1, a1);
		h.siglen = (size_t)snprintf(sig, sizeof(sig), "SIG %s", a1);
		r = *cmd == 'e' ? mailq_enqueue(q, a1, &h, msg, sig, 0) :
		    mailq_stage(q, a1, &h, msg, sig);
	} else if (strcmp(cmd, "stage0") == 0) {
		r = mailq_stage(q, a1, NULL, NULL, NULL);
	} else if (strcmp(cmd, "publish") == 0) {
		struct mailq_hdr h;
		r = mailq_publish(q, a1, a2, 0, &h);
	} else if (strcmp(cmd, "lease") == 0) {
		struct mailq_item it;
		if ((r = mailq_lease(q, (long long)time(NULL), atoll(a1), &it,
		    &soonest)) == 0) {
			printf("ok %s %u\n", it.name, it.st.attempts);
			return;
		}
		if (r == HSMFS_ERR_NOTFOUND) {
			printf("none %lld\n", soonest - (long long)time(NULL));
			return;
		}
	} else if (strcmp(cmd, "complete") == 0) {
		r = mailq_complete(q, a1);
	} else if (strcmp(cmd, "sync") == 0) {
		r = mailq_sync(q);
	} else if (strcmp(cmd, "requeue") == 0) {
		r = mailq_requeue(q, a1);
	} else if (strcmp(cmd, "fail") == 0) {
		char why[512];
		snprintf(why, sizeof(why), "%s%s%s", a2, *rest ? " " : "", rest);
		r = mailq_fail(q, a1, why);
	} else if (strcmp(cmd, "defer") == 0) {
		r = mailq_defer(q, a1, (long long)time(NULL) + atoll(a2), rest);
	} else if (strcmp(cmd, "setsig") == 0) {
		struct mailq_hdr h = { 0 };
		h.siglen = strlen(a2);
		r = mailq_set_signed(q, a1, &h, "", a2);
	} else if (strcmp(cmd, "remove") == 0) {
		r = mailq_remove(q, box_of(a1), a2);
	} else if (strcmp(cmd, "list") == 0) {
		static struct names ns;
		ns.n = 0;
		if ((r = mailq_list(q, box_of(a1), name_cb, &ns)) == 0) {
			qsort(ns.v, ns.n, sizeof(ns.v[0]), cmp_str);
			printf("ok ");
			for (size_t i = 0; i < ns.n; i++)
				printf("%s%s", i ? "," : "", ns.v[i]);
			printf("\n");
			return;
		}
	} else if (strcmp(cmd, "read") == 0) {
		struct mailq_entry e;
		if ((r = mailq_read(q, box_of(a1), a2, &e)) == 0) {
			printf("ok %s %zu %zu\n", e.h.msgid, e.h.msglen, e.h.siglen);
			mailq_entry_free(&e);
			return;
		}
	} else if (strcmp(cmd, "part") == 0) {
		struct mailq_reader *rd;
		enum mailq_part p = *a2 == 's' ? MAILQ_PART_SIGNED : *a2 == 'r' ?
		    MAILQ_PART_REASON : MAILQ_PART_MSG;
		char buf[2048];
		size_t len;
		ssize_t n;
		if ((r = mailq_reader_open(q, box_of(a1), rest, p, &rd, &len,
		    NULL)) == 0) {
			n = mailq_reader_pread(rd, buf, sizeof(buf) - 1, 0);
			mailq_reader_close(rd);
			buf[n > 0 ? n : 0] = '\0';
			for (char *c = buf; *c; c++)
				if (*c == '\n' || *c == '\r')
					*c = '|';
			printf("ok %zu %s\n", len, buf);
			return;
		}
	} else if (strcmp(cmd, "exists") == 0) {
		printf("ok %d\n", mailq_exists(q, box_of(a1), a2));
		return;
	} else if (strcmp(cmd, "find") == 0) {
		struct mailq_item it;
		if (mailq_find(q, a1, &it))
			printf("ok %u %d %s\n", it.st.attempts, it.leased, it.st.last);
		else
			printf("none\n");
		return;
	} else if (strcmp(cmd, "summary") == 0) {
		size_t n, f;
		mailq_summary(q, &n, NULL, NULL, &f);
		printf("ok %zu %zu\n", n, f);
		return;
	} else {
		printf("? %s\n", cmd);
		return;
	}
	if (r == 0)
		printf("ok\n");
	else if (soonest != -2)
		printf("err %d %.0f soonest=%lld %s\n", r, now_ms() - t0,
		    soonest - (long long)time(NULL), err_detail());
	else
		printf("err %d %.0f %s\n", r, now_ms() - t0, err_detail());
}

int
main(int argc, char **argv)
{
	char line[1024];
	int r;

	if (argc != 5) {
		fprintf(stderr, "usage: test-mailq-pg URI PASSWORD_FILE STORE_A "
		    "STORE_B\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if ((r = open_node(argv[1], argv[2], "A", argv[3], &qa)) != 0 ||
	    (r = open_node(argv[1], argv[2], "B", argv[4], &qb)) != 0) {
		printf("err %d 0 %s\n", r, err_detail());
		return 1;
	}
	printf("open\n");
	while (fgets(line, sizeof(line), stdin)) {
		char cmd[32] = "", h[8] = "", a1[256] = "", a2[256] = "";
		char rest[512] = "";
		int n = 0;

		line[strcspn(line, "\n")] = '\0';
		if (sscanf(line, "race %255s", a1) == 1) {
			race();
			continue;
		}
		if (sscanf(line, "%31s %7s %n", cmd, h, &n) < 2) {
			printf("? %s\n", line);
			continue;
		}
		/* a1, a2, then the rest of the line (a reason with spaces). */
		{
			int m = 0;
			const char *p = line + n;
			if (sscanf(p, "%255s %n", a1, &m) == 1) {
				p += m;
				m = 0;
				if (sscanf(p, "%255s %n", a2, &m) == 1) {
					p += m;
					snprintf(rest, sizeof(rest), "%s", p);
				}
			}
		}
		command(*h == 'B' ? qb : qa, cmd, a1, a2, rest);
	}
	mailq_close(qa);
	mailq_close(qb);
	while (npools > 0)
		pg_close(pools[--npools]);
	return 0;
}
