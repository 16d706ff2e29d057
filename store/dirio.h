/* The backing store: STORE/<folder>/..., files 0600, directories 0700.
 * Every visible change is atomic and durable: write a temp file (a dot
 * name, never listed), fsync, rename into place, fsync the directory.
 * Returns 0 or a negative hsmfs_err (HSMFS_ERR_NOSPC for a full disk). */
#ifndef HSMFS_STORE_DIRIO_H
#define HSMFS_STORE_DIRIO_H

#include <stddef.h>
#include <sys/types.h>

/* Open (creating 0700) a subdirectory of STORE, or of another dir fd.
 * Returns an O_DIRECTORY fd or a negative hsmfs_err. */
int store_dir(int parent_fd, const char *sub);

struct store_tmp {
	int dirfd;
	int fd;
	char name[64];
};

int store_tmp_create(int dirfd, struct store_tmp *t);
/* Delegates kept only for fs/history* and store/history*, which still
 * call them (issue #15, history part); everything else calls
 * util_write_all / util_read_file_at directly. */
/* Write all of buf at the current offset: util_write_all(). */
int store_write_all(int fd, const void *buf, size_t len);
/* fsync, rename onto name, fsync dir. The tmp is consumed either way. */
int store_tmp_commit(struct store_tmp *t, const char *name);
void store_tmp_abort(struct store_tmp *t);
/* Whole-buffer atomic replace. */
int store_write_atomic(int dirfd, const char *name, const void *data, size_t len);
int store_fsync_dir(int dirfd);
/* Remove leftover temp files (".tmp.*") after a crash. */
void store_cleanup_tmp(int dirfd);
/* Read a whole small file at dirfd/name: util_read_file_at(). */
int store_read_file(int dirfd, const char *name, size_t max, char **out, size_t *len);

#endif
