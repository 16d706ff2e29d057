/* Unit tests for the small file helpers of common/util.c: the whole-file
 * reader (exact size limit, missing file), write-all (at the offset and
 * positioned), and the directory walk (every name once, no "." or "..",
 * early stop returns the callback's value). */
#include "common/err.h"
#include "common/util.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

static int failures;
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK(%s) failed\n", \
	__FILE__, __LINE__, #c); failures++; } } while (0)

struct seen {
	int n, dots, stop_at;
	char names[8][16];
};

static int
collect(int dirfd, const char *name, void *arg)
{
	struct seen *s = arg;
	(void)dirfd;
	if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		s->dots++;
	if (s->n < 8)
		snprintf(s->names[s->n], sizeof(s->names[0]), "%s", name);
	s->n++;
	return s->stop_at && s->n == s->stop_at ? 7 : 0;
}

int
main(void)
{
	char dir[] = "/tmp/test-util.XXXXXX", *text = NULL;
	size_t len = 0;
	int dfd, fd;
	struct seen s;

	if (mkdtemp(dir) == NULL || (dfd = open(dir, O_RDONLY | O_DIRECTORY)) < 0) {
		perror("mkdtemp");
		return 1;
	}
	/* write-all then positioned write-all */
	fd = openat(dfd, "a", O_RDWR | O_CREAT | O_EXCL, 0600);
	CHECK(fd >= 0);
	CHECK(util_write_all(fd, "hello world", 11) == 0);
	CHECK(util_pwrite_all(fd, "W", 1, 6) == 0);
	CHECK(util_pwrite_all(fd, "x", 1, -1) == HSMFS_ERR_INVALID);
	close(fd);
	CHECK(util_write_all(-1, "x", 1) == HSMFS_ERR_IO);

	/* pwritev-all: several buffers (an empty one among them) in order */
	fd = openat(dfd, "v", O_RDWR | O_CREAT | O_EXCL, 0600);
	CHECK(fd >= 0);
	{
		char a[] = "ab", c[] = "cde";
		struct iovec iov[3] = { { a, 2 }, { c, 0 }, { c, 3 } };
		char back[8] = { 0 };
		CHECK(util_pwritev_all(fd, iov, 3, 2) == 0);
		CHECK(pread(fd, back, sizeof(back), 0) == 7);
		CHECK(memcmp(back, "\0\0abcde", 7) == 0);
		CHECK(util_pwritev_all(fd, iov, 1, -1) == HSMFS_ERR_INVALID);
	}
	close(fd);
	CHECK(unlinkat(dfd, "v", 0) == 0);
	{
		char x[] = "x";
		struct iovec iov = { x, 1 };
		CHECK(util_pwritev_all(-1, &iov, 1, 0) == HSMFS_ERR_IO);
	}

	/* read: exact limit, one byte over, missing */
	CHECK(util_read_file_at(dfd, "a", 11, &text, &len) == 0);
	CHECK(text != NULL && len == 11 && strcmp(text, "hello World") == 0);
	free(text);
	text = NULL;
	CHECK(util_read_file_at(dfd, "a", 10, &text, &len) == HSMFS_ERR_TOOBIG);
	CHECK(text == NULL);
	CHECK(util_read_file_at(dfd, "missing", 10, &text, &len) ==
	    HSMFS_ERR_NOTFOUND);
	{
		char path[64];
		snprintf(path, sizeof(path), "%s/a", dir);
		CHECK(util_read_file(path, 1 << 20, &text, NULL) == 0);
		CHECK(text != NULL && strcmp(text, "hello World") == 0);
		free(text);
	}
	/* a file over 4 KiB through the growing buffer */
	{
		static char big[10000];
		memset(big, 'b', sizeof(big));
		fd = openat(dfd, "big", O_RDWR | O_CREAT | O_EXCL, 0600);
		CHECK(fd >= 0 && util_write_all(fd, big, sizeof(big)) == 0);
		close(fd);
		text = NULL;
		CHECK(util_read_file_at(dfd, "big", sizeof(big), &text, &len) == 0);
		CHECK(len == sizeof(big) && text && memcmp(text, big, len) == 0);
		free(text);
		CHECK(util_read_file_at(dfd, "big", sizeof(big) - 1, &text, &len) ==
		    HSMFS_ERR_TOOBIG);
	}

	/* directory walk, twice from the same fd (it rewinds), and a stop */
	for (int k = 0; k < 2; k++) {
		memset(&s, 0, sizeof(s));
		CHECK(util_foreach_dir(dfd, collect, &s) == 0);
		CHECK(s.n == 2 && s.dots == 0);
	}
	memset(&s, 0, sizeof(s));
	s.stop_at = 1;
	CHECK(util_foreach_dir(dfd, collect, &s) == 7 && s.n == 1);
	CHECK(util_foreach_dir(-1, collect, &s) < 0);

	unlinkat(dfd, "a", 0);
	unlinkat(dfd, "big", 0);
	close(dfd);
	rmdir(dir);
	if (failures)
		fprintf(stderr, "%d check(s) failed\n", failures);
	return failures != 0;
}
