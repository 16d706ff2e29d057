/* Unit tests for store/fields.h on the directory backend: what every
 * backend must do (a shared one runs the same calls). put/get/stat,
 * rename with NOREPLACE and EXCHANGE, remove, list (temporaries and
 * internals not listed), compare-and-replace (replaced, changed, gone),
 * the maintenance lock, and a shared URI refused for now. */
#include "store/fields.h"
#include "store/store.h"
#include "common/err.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK(%s) failed\n", \
	__FILE__, __LINE__, #c); failures++; } } while (0)

/* 1 if name holds text + "\n". */
static int
holds(struct fields_store *fs, const char *name, const char *text)
{
	char *got = NULL;
	size_t len = 0;
	int ok;
	if (fields_store_get(fs, name, &got, &len) != 0)
		return 0;
	ok = len == strlen(text) + 1 && memcmp(got, text, len - 1) == 0 &&
	    got[len - 1] == '\n';
	free(got);
	return ok;
}

static int
count(void *arg, const char *name)
{
	(void)name;
	(*(int *)arg)++;
	return 0;
}

static void
test_basic(struct fields_store *fs)
{
	struct fields_meta m;
	struct fields_lock *lk;
	char head[4];
	int n = 0;

	CHECK(fields_store_get(fs, "a", &(char *){NULL}, &(size_t){0}) ==
	    HSMFS_ERR_NOTFOUND);
	CHECK(fields_store_lock(fs, "a", "b", &lk) == 0);
	CHECK(fields_store_put(fs, "a", "NX02one", 7, 0) == 0);
	CHECK(fields_store_put(fs, "b", "NX02two", 7, 0) == 0);
	CHECK(fields_store_put(fs, "b", "NX02x", 5, FIELDS_NOREPLACE) == -EEXIST);
	fields_store_unlock(fs, lk);
	CHECK(holds(fs, "a", "NX02one") && holds(fs, "b", "NX02two"));
	CHECK(fields_store_stat(fs, "a", &m, head, sizeof(head)) == 0);
	CHECK(m.size == 8 && m.head_len == 4 && memcmp(head, "NX02", 4) == 0 &&
	    m.mtime > 0);
	CHECK(fields_store_stat(fs, "zz", &m, NULL, 0) == HSMFS_ERR_NOTFOUND);

	CHECK(fields_store_rename(fs, "a", "b", FIELDS_NOREPLACE) == -EEXIST);
	CHECK(fields_store_rename(fs, "a", "b", FIELDS_EXCHANGE) == 0);
	CHECK(holds(fs, "a", "NX02two") && holds(fs, "b", "NX02one"));
	CHECK(fields_store_rename(fs, "a", "c", 0) == 0);
	CHECK(fields_store_rename(fs, "a", "d", 0) == HSMFS_ERR_NOTFOUND);
	CHECK(holds(fs, "c", "NX02two"));
	CHECK(fields_store_put(fs, ".tmpname", "NX02t", 5, 0) == 0);
	CHECK(fields_store_list(fs, count, &n) == 0 && n == 2);   /* b, c */
	CHECK(fields_store_remove(fs, "c") == 0);
	CHECK(fields_store_remove(fs, "c") == HSMFS_ERR_NOTFOUND);
	CHECK(fields_store_remove(fs, ".tmpname") == 0);
}

static void
test_cas(struct fields_store *fs)
{
	char *old = NULL;
	size_t ol = 0;

	CHECK(fields_store_put(fs, "k", "NX02v1", 6, 0) == 0);
	CHECK(fields_store_get(fs, "k", &old, &ol) == 0);
	CHECK(fields_store_cas(fs, "k", old, ol, "NX02v2", 6) == 0);
	CHECK(holds(fs, "k", "NX02v2"));
	/* Still holding what was read first? No: left alone. */
	CHECK(fields_store_cas(fs, "k", old, ol, "NX02v3", 6) == 1);
	CHECK(holds(fs, "k", "NX02v2"));
	CHECK(fields_store_remove(fs, "k") == 0);
	CHECK(fields_store_cas(fs, "k", old, ol, "NX02v3", 6) ==
	    HSMFS_ERR_NOTFOUND);
	free(old);
}

int
main(void)
{
	char dir[] = "/tmp/test-fields-store.XXXXXX", cmd[64];
	struct store_conf sc = { .dirfd = -1 };
	struct fields_store *fs = NULL, *fs2 = NULL;

	if (mkdtemp(dir) == NULL ||
	    (sc.dirfd = open(dir, O_RDONLY | O_DIRECTORY)) < 0) {
		perror(dir);
		return 1;
	}
	sc.shared = "postgresql:///x";
	CHECK(fields_store_open(&sc, &fs) == HSMFS_ERR_UNSUPPORTED && fs == NULL);
	sc.shared = NULL;
	CHECK(fields_store_open(&sc, &fs) == 0);
	CHECK(fields_store_open(&sc, &fs2) == 0);
	if (fs == NULL || fs2 == NULL)
		return 1;
	test_basic(fs);
	test_cas(fs);
	/* One maintenance holder at a time, released at close. */
	CHECK(fields_store_maint_lock(fs) == 0);
	CHECK(fields_store_maint_lock(fs2) == 1);
	fields_store_close(fs);
	CHECK(fields_store_maint_lock(fs2) == 0);
	fields_store_recover(fs2, 0);
	fields_store_close(fs2);
	close(sc.dirfd);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		failures++;
	if (failures)
		fprintf(stderr, "%d check(s) failed\n", failures);
	return failures != 0;
}
