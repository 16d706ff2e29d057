/* Unit tests for store/pg.c without a server (refused port, a server that
 * never answers: EIO within connect_timeout, no hang; URI and password
 * file checks) and for crypto/fingerprint.c's comparison rule. The tests
 * against a real PostgreSQL are in tests/test_shared_db.py. */
#include "store/pg.h"
#include "crypto/fingerprint.h"
#include "common/err.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int failures;
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK(%s) failed (%s)\n", \
	__FILE__, __LINE__, #c, err_detail()); failures++; } } while (0)

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A loopback socket: listening (the kernel completes handshakes, nobody
 * answers) or closed again (connections refused). Returns the port. */
static int
loopback(int listening, int *fdout)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t al = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &al) != 0 ||
	    (listening && listen(fd, 16) != 0)) {
		perror("loopback");
		exit(2);
	}
	*fdout = fd;
	return ntohs(a.sin_port);
}

static void
test_unreachable(void)
{
	struct pg_conf pc = {0};
	struct pg *p = NULL;
	char uri[128];
	double t0, dt;
	int fd, port, r;

	/* Nothing listens: refused at once. */
	port = loopback(0, &fd);
	snprintf(uri, sizeof(uri), "postgresql://hsmfs@127.0.0.1:%d/hsmfs", port);
	pc.uri = uri;
	t0 = now_s();
	r = pg_open(&pc, &p);
	dt = now_s() - t0;
	CHECK(r == HSMFS_ERR_IO && p == NULL);
	CHECK(hsmfs_err_errno(r) == 5);
	CHECK(strstr(err_detail(), "database: cannot connect") != NULL);
	CHECK(strchr(err_detail(), '\n') == NULL);
	printf("refused port: %s after %.3f s\n", hsmfs_strerror(r), dt);
	close(fd);

	/* Accepted by the kernel, never answered (a hung or stopped-with-
	 * SIGSTOP server, a black-holed route): the default connect_timeout
	 * (PG_DEFAULT_CONNECT_TIMEOUT s) ends it with EIO. */
	port = loopback(1, &fd);
	snprintf(uri, sizeof(uri), "postgresql://hsmfs@127.0.0.1:%d/hsmfs", port);
	t0 = now_s();
	r = pg_open(&pc, &p);
	dt = now_s() - t0;
	CHECK(r == HSMFS_ERR_IO && p == NULL);
	CHECK(dt < PG_DEFAULT_CONNECT_TIMEOUT + 5);
	printf("silent server: %s after %.3f s (connect_timeout %d s)\n",
	    hsmfs_strerror(r), dt, PG_DEFAULT_CONNECT_TIMEOUT);
	/* The URI overrides our default. */
	snprintf(uri, sizeof(uri),
	    "postgresql://hsmfs@127.0.0.1:%d/hsmfs?connect_timeout=2", port);
	t0 = now_s();
	r = pg_open(&pc, &p);
	dt = now_s() - t0;
	CHECK(r == HSMFS_ERR_IO && dt < PG_DEFAULT_CONNECT_TIMEOUT);
	printf("silent server, connect_timeout=2 in the URI: %.3f s\n", dt);
	close(fd);
}

static void
test_conf(void)
{
	struct pg_conf pc = {0};
	struct pg *p = NULL;
	char path[] = "/tmp/test-pg-pw.XXXXXX";
	int fd;

	pc.uri = "postgresql://hsmfs:secret@127.0.0.1:1/hsmfs";
	CHECK(pg_open(&pc, &p) == HSMFS_ERR_CONFIG);
	CHECK(strstr(err_detail(), "holds a password") != NULL);
	CHECK(strstr(err_detail(), "secret") == NULL);
	pc.uri = "postgresql://[bad";
	CHECK(pg_open(&pc, &p) == HSMFS_ERR_CONFIG);
	pc.uri = "";
	CHECK(pg_open(&pc, &p) == HSMFS_ERR_CONFIG);

	if ((fd = mkstemp(path)) < 0 || write(fd, "pw\n", 3) != 3) {
		perror("mkstemp");
		exit(2);
	}
	close(fd);
	pc.uri = "postgresql://hsmfs@127.0.0.1:1/hsmfs";
	pc.password_file = path;
	chmod(path, 0644);
	CHECK(pg_open(&pc, &p) == HSMFS_ERR_CONFIG);
	CHECK(strstr(err_detail(), "accessible by group or others") != NULL);
	chmod(path, 0600);
	/* Read, then the connection is refused: the file was accepted. */
	CHECK(pg_open(&pc, &p) == HSMFS_ERR_IO);
	unlink(path);
	pc.password_file = "/nonexistent/pw";
	CHECK(pg_open(&pc, &p) == HSMFS_ERR_CONFIG);
}

static void
test_fingerprint(void)
{
	const char *c1 =
	    "EncryptedFields v1 algorithm=AES size=256 key=k1 cert=aa\n"
	    "ObjectHistorySigner v1 algorithm=SHA-256 key=h1 cert=bb\n";
	const char *rot =
	    "EncryptedFields v1 algorithm=AES size=256 key=k1 cert=aa\n"
	    "EncryptedFields v2 algorithm=AES size=256 key=k2 cert=cc\n"
	    "ObjectHistorySigner v1 algorithm=SHA-256 key=h1 cert=bb\n";
	const char *othercert =
	    "EncryptedFields v1 algorithm=AES size=256 key=k1 cert=dd\n"
	    "ObjectHistorySigner v1 algorithm=SHA-256 key=h1 cert=bb\n";
	const char *older =
	    "EncryptedFields v0 algorithm=AES size=256 key=k0 cert=ee\n"
	    "EncryptedFields v1 algorithm=AES size=256 key=k1 cert=aa\n"
	    "ObjectHistorySigner v1 algorithm=SHA-256 key=h1 cert=bb\n";
	const char *newdesc =
	    "EncryptedFields v1 algorithm=AES size=256 key=k1 cert=aa\n"
	    "ObjectHistorySigner v1 algorithm=SHA-256 key=h1 cert=bb\n"
	    "SignEmailDescriptor v1 algorithm=SHA256withRSA key=m1 cert=ff\n";
	char h1[65], h2[65];

	CHECK(fingerprint_compare(c1, c1) == 0);
	CHECK(fingerprint_compare(c1, rot) == 1);
	/* The node lacks a version the cluster has. */
	CHECK(fingerprint_compare(rot, c1) == HSMFS_ERR_CONFIG);
	CHECK(strstr(err_detail(), "EncryptedFields version 2 is in the cluster") != NULL);
	CHECK(fingerprint_compare(c1, othercert) == HSMFS_ERR_CONFIG);
	CHECK(strstr(err_detail(), "EncryptedFields version 1: cluster has cert=aa, "
	    "this node has cert=dd") != NULL);
	CHECK(fingerprint_compare(c1, older) == HSMFS_ERR_CONFIG);
	CHECK(strstr(err_detail(), "newest, 1") != NULL);
	CHECK(fingerprint_compare(c1, newdesc) == HSMFS_ERR_CONFIG);
	CHECK(strstr(err_detail(), "the cluster has no SignEmailDescriptor") != NULL);
	fingerprint_hash(c1, h1);
	fingerprint_hash(rot, h2);
	CHECK(strlen(h1) == 64 && strcmp(h1, h2) != 0);
}

int
main(void)
{
	test_conf();
	test_fingerprint();
	test_unreachable();
	if (failures)
		fprintf(stderr, "%d check(s) failed\n", failures);
	return failures ? 1 : 0;
}
