/* The store lock: STORE/lock, an exclusive flock(2) held by the one daemon
 * of a store for its whole life (and by an offline rekey-fields for its
 * run). The file's one line "PID ROLE [MOUNTPOINT]" names the holder for
 * the refusal message; the lock itself is the flock, never the text. */
#ifndef HSMFS_COMMON_STORELOCK_H
#define HSMFS_COMMON_STORELOCK_H

#include <stddef.h>

#define STORELOCK_NAME "lock"

/* Take the lock of the store open at dirfd without waiting. Returns 0 with
 * *fd the open lock file (close-on-exec; keep it open to hold the lock,
 * forks inherit it), 1 when another process holds it (holder filled with
 * its "PID ROLE [MOUNTPOINT]" line, "unknown process" when it has not
 * written one yet), or a negative HSMFS_ERR_* with err_detail() set.
 * A read-only store without a lock file yields 0 and *fd = -1. */
int storelock_take(int dirfd, int *fd, char *holder, size_t holder_len);
/* Write the holder line (again after a fork changed the PID). */
void storelock_set_owner(int fd, const char *role, const char *mountpoint);

#endif
