/* Unit tests for fs/temp.c: which names are writers' temporaries, and the
 * temp area's clean-up at open (everything left over) and by age (old
 * hidden files only; directories and valid names untouched). */
#include "fs/fs.h"
#include "fs/temp.h"
#include "common/err.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* fs/temp.c reads the option through the daemon's context. */
struct hsmfs *hsmfs_ctx;
static struct hsmfs ctx;

static int failures;
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK(%s) failed\n", \
	__FILE__, __LINE__, #c); failures++; } } while (0)

static void
test_names(void)
{
	char longest[257], toolong[258];
	static const char *temps[] = { ".a", ".export.zip.Xy12Zq", ".f.swp",
		"..x", ".1234567890.tmp", ".tmp.0011", "._-" };
	static const char *not_temps[] = { "", ".", "..", "...", "a", ".a b",
		".a/b", ".ä", "..", ".a~", "x.", "./a" };
	for (size_t i = 0; i < sizeof(temps) / sizeof(temps[0]); i++) {
		CHECK(temp_name(temps[i]));
		CHECK(temp_name_ok(temps[i]));
	}
	for (size_t i = 0; i < sizeof(not_temps) / sizeof(not_temps[0]); i++)
		CHECK(!temp_name(not_temps[i]));
	CHECK(temp_name_ok("a") && temp_name_ok("x."));
	CHECK(!temp_name_ok("a b") && !temp_name_ok(".") && !temp_name_ok(""));
	CHECK(!temp_name(NULL) && !temp_name_ok(NULL));
	longest[0] = '.';
	memset(longest + 1, 'x', 254);
	longest[255] = '\0';
	CHECK(temp_name(longest));
	memset(toolong, 'x', 256);
	toolong[0] = '.';
	toolong[256] = '\0';
	CHECK(!temp_name(toolong));
}

static void
touch_at(int dirfd, const char *name, time_t mtime)
{
	struct timespec ts[2] = { { mtime, 0 }, { mtime, 0 } };
	int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	CHECK(fd >= 0);
	if (fd >= 0)
		close(fd);
	CHECK(utimensat(dirfd, name, ts, 0) == 0);
}

static int
exists(int dirfd, const char *name)
{
	return faccessat(dirfd, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
}

static void
test_area(void)
{
	char dir[] = "/tmp/test-temp.XXXXXX";
	struct temp_area a = TEMP_AREA_INIT;
	time_t now = time(NULL);
	int top, rec, t;

	CHECK(mkdtemp(dir) != NULL);
	top = open(dir, O_RDONLY | O_DIRECTORY);
	CHECK(top >= 0);
	CHECK(mkdirat(top, ".temp", 0700) == 0 && mkdirat(top, "rec", 0700) == 0);
	rec = openat(top, "rec", O_RDONLY | O_DIRECTORY);
	t = openat(top, ".temp", O_RDONLY | O_DIRECTORY);
	/* Leftovers of the previous mount: every hidden file goes. */
	touch_at(t, ".left", now);
	touch_at(rec, ".left", now);
	touch_at(rec, "valid", now - 7200);
	CHECK(mkdirat(rec, ".keepdir", 0700) == 0);
	close(t);
	CHECK(temp_area_open(&a, top, rec, -1) == 0);
	CHECK(!exists(a.dirfd, ".left") && !exists(rec, ".left"));
	CHECK(exists(rec, "valid") && exists(rec, ".keepdir"));
	/* By age: only hidden files older than temp_max_age. */
	ctx.opt.temp_max_age = 100;
	touch_at(a.dirfd, ".old", now - 200);
	touch_at(a.dirfd, ".young", now);
	touch_at(rec, ".old", now - 200);
	a.last_sweep = 0;
	temp_area_sweep(&a);
	CHECK(!exists(a.dirfd, ".old") && !exists(rec, ".old"));
	CHECK(exists(a.dirfd, ".young") && exists(rec, "valid"));
	/* At most once a minute. */
	touch_at(a.dirfd, ".old2", now - 200);
	temp_area_sweep(&a);
	CHECK(exists(a.dirfd, ".old2"));
	unlinkat(a.dirfd, ".young", 0);
	unlinkat(a.dirfd, ".old2", 0);
	temp_area_close(&a);
	CHECK(a.dirfd == -1);
	unlinkat(rec, "valid", 0);
	unlinkat(rec, ".keepdir", AT_REMOVEDIR);
	close(rec);
	unlinkat(top, "rec", AT_REMOVEDIR);
	unlinkat(top, ".temp", AT_REMOVEDIR);
	close(top);
	CHECK(rmdir(dir) == 0);
}

int
main(void)
{
	hsmfs_ctx = &ctx;
	test_names();
	test_area();
	if (failures) {
		fprintf(stderr, "test-temp: %d failure(s)\n", failures);
		return 1;
	}
	printf("test-temp: ok\n");
	return 0;
}
