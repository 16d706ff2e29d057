/* Measurement helper for bench/history.sh (not installed, not a test):
 *   histbench sign CONFIG SECONDS        raw ObjectHistorySigner signatures/s
 *   histbench fsync DIR SECONDS          append+fdatasync/s of a file in DIR
 *   histbench append FILE THREADS SECONDS  acknowledged appends/s: each
 *        thread loops open(O_APPEND)/write/close on FILE (one record each)
 * Prints one line "<what> <ops> <seconds> <ops/s>". */
#include "crypto/engine.h"
#include "hsm/hsm.h"
#include "crypto/keyring.h"
#include "common/err.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double
now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int
bench_sign(const char *config, double secs)
{
	struct engine *e = NULL;
	struct keyring *kr = NULL;
	const struct engine_descriptor *d;
	hsm_key *k;
	uint8_t sig[1024];
	size_t siglen;
	long n = 0;
	double t0, t;
	if (engine_load(config, &e) != 0 || keyring_open(e, &kr) != 0) {
		fprintf(stderr, "histbench: %s\n", err_detail());
		return 2;
	}
	d = engine_newest(e, ENGINE_OBJECT_HISTORY_SIGNER);
	if (d == NULL || (k = keyring_unwrapper(kr, d)) == NULL) {
		fprintf(stderr, "histbench: no ObjectHistorySigner key\n");
		return 2;
	}
	t0 = now();
	do {
		char msg[64];
		int len = snprintf(msg, sizeof(msg), "checkpoint %ld\n", n);
		siglen = sizeof(sig);
		if (hsm_key_sign(k, EVP_sha256(), msg, (size_t)len, sig, &siglen) != 0) {
			fprintf(stderr, "histbench: sign: %s\n", err_detail());
			return 1;
		}
		n++;
	} while ((t = now() - t0) < secs);
	printf("hsm_sign %ld %.3f %.1f\n", n, t, n / t);
	keyring_free(kr);
	engine_free(e);
	return 0;
}

static int
bench_fsync(const char *dir, double secs)
{
	char path[4096];
	char rec[128];
	long n = 0;
	double t0, t;
	int fd;
	snprintf(path, sizeof(path), "%s/.histbench.%d", dir, (int)getpid());
	if ((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600)) < 0) {
		perror(path);
		return 2;
	}
	memset(rec, 'x', sizeof(rec));
	t0 = now();
	do {
		if (write(fd, rec, sizeof(rec)) != (ssize_t)sizeof(rec) ||
		    fdatasync(fd) != 0) {
			perror("write/fdatasync");
			return 1;
		}
		n++;
	} while ((t = now() - t0) < secs);
	close(fd);
	unlink(path);
	printf("fdatasync %ld %.3f %.1f\n", n, t, n / t);
	return 0;
}

static const char *afile;
static double adeadline;
static atomic_long acount, aerrors;

static void *
appender(void *arg)
{
	char rec[64];
	long i = 0;
	int len;
	while (now() < adeadline) {
		int fd = open(afile, O_WRONLY | O_CREAT | O_APPEND, 0644);
		len = snprintf(rec, sizeof(rec), "t%ld-%ld\n", (long)(intptr_t)arg, i++);
		if (fd < 0 || write(fd, rec, (size_t)len) != len) {
			atomic_fetch_add(&aerrors, 1);
			if (fd >= 0)
				close(fd);
			continue;
		}
		if (close(fd) != 0) {
			atomic_fetch_add(&aerrors, 1);
			continue;
		}
		atomic_fetch_add(&acount, 1);
	}
	return NULL;
}

static int
bench_append(const char *file, int threads, double secs)
{
	pthread_t th[256];
	double t0;
	if (threads < 1 || threads > 256)
		return 2;
	afile = file;
	t0 = now();
	adeadline = t0 + secs;
	for (int i = 0; i < threads; i++)
		pthread_create(&th[i], NULL, appender, (void *)(intptr_t)i);
	for (int i = 0; i < threads; i++)
		pthread_join(th[i], NULL);
	t0 = now() - t0;
	printf("append_%d %ld %.3f %.1f errors=%ld\n", threads, (long)acount, t0,
	    (double)acount / t0, (long)aerrors);
	return aerrors ? 1 : 0;
}

int
main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "sign") == 0)
		return bench_sign(argv[2], atof(argv[3]));
	if (argc == 4 && strcmp(argv[1], "fsync") == 0)
		return bench_fsync(argv[2], atof(argv[3]));
	if (argc == 5 && strcmp(argv[1], "append") == 0)
		return bench_append(argv[2], atoi(argv[3]), atof(argv[4]));
	fprintf(stderr, "usage: histbench sign CONFIG S | fsync DIR S | "
	    "append FILE THREADS S\n");
	return 2;
}
