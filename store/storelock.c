/* STORE/lock: see store/storelock.h. flock locks belong to the open file
 * description, so a daemon that forks (libfuse's daemonize) keeps the lock
 * in the child after the parent exits. */
#include "store/storelock.h"
#include "common/err.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

static void
read_holder(int fd, char *out, size_t len)
{
	ssize_t n;
	char *nl;

	if (len == 0)
		return;
	n = pread(fd, out, len - 1, 0);
	out[n > 0 ? n : 0] = '\0';
	if ((nl = strchr(out, '\n')) != NULL)
		*nl = '\0';
	if (out[0] == '\0')
		snprintf(out, len, "unknown process");
}

int
storelock_take(int dirfd, int *fd, char *holder, size_t holder_len)
{
	int lfd, e;

	*fd = -1;
	lfd = openat(dirfd, STORELOCK_NAME, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW,
	    0600);
	if (lfd < 0 && (errno == EROFS || errno == EACCES)) {
		/* A read-only store: lock the file if there is one. */
		lfd = openat(dirfd, STORELOCK_NAME, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		if (lfd < 0 && errno == ENOENT)
			return 0;
	}
	if (lfd < 0) {
		err_set("%s: %s", STORELOCK_NAME, strerror(errno));
		return HSMFS_ERR_IO;
	}
	while (flock(lfd, LOCK_EX | LOCK_NB) < 0) {
		if (errno == EINTR)
			continue;
		e = errno;
		if (e == EWOULDBLOCK) {
			read_holder(lfd, holder, holder_len);
			close(lfd);
			return 1;
		}
		close(lfd);
		err_set("%s: flock: %s", STORELOCK_NAME, strerror(e));
		return HSMFS_ERR_IO;
	}
	*fd = lfd;
	return 0;
}

void
storelock_set_owner(int fd, const char *role, const char *mountpoint)
{
	char line[4200];
	int n;

	if (fd < 0)
		return;
	n = snprintf(line, sizeof(line), "%ld %s%s%s\n", (long)getpid(), role,
	    mountpoint ? " " : "", mountpoint ? mountpoint : "");
	if (n < 0 || (size_t)n >= sizeof(line))
		return;
	/* Best effort: the text only names the holder in messages. */
	if (ftruncate(fd, 0) == 0 && pwrite(fd, line, (size_t)n, 0) < 0)
		return;
}
