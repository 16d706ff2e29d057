/* Open file handles of the zip folders (/sign-out, /verify-in) over the
 * write spools of store/spool.h, and the FUSE operations on them. */
#ifndef HSMFS_FS_ZIPFH_H
#define HSMFS_FS_ZIPFH_H

#include <fuse.h>

#include "store/spool.h"

/* An open file handle of a zip folder: a write spool (s) or a plain read
 * fd of the committed file (s NULL). The operations below take s->lock. */
struct spool_fh {
	struct spool *s;
	int fd;
};

/* A writer of `name`: starts as a copy of dirfd/name unless trunc (or it
 * does not exist); spooled in spooldir. 0 or -errno. */
int spool_fh_writer(struct spool_list *l, int spooldir, int dirfd,
    const char *name, int trunc, struct spool_fh **out);
/* A writer of `name` starting as a copy of the bytes readable at from_fd
 * (borrowed; -1: empty), e.g. the very file a verifier just accepted. */
int spool_fh_writer_from(struct spool_list *l, int spooldir, const char *name,
    int from_fd, struct spool_fh **out);
/* A reader of the open fd; takes ownership of fd (closed on failure). */
int spool_fh_reader(int fd, struct spool_fh **out);

/* Folder operations on fi->fh holding a struct spool_fh (fs/fs.h's
 * folder_ops signatures): read, write (EBADF for a reader), truncate
 * (EPERM for a reader or without a handle: committed zips are replaced
 * whole, never cut), fsync (durable at close already), release. */
int spool_op_read(const char *path, char *buf, size_t size, off_t off,
    struct fuse_file_info *fi);
int spool_op_write(const char *path, const char *buf, size_t size, off_t off,
    struct fuse_file_info *fi);
int spool_op_truncate(const char *path, off_t size, struct fuse_file_info *fi);
int spool_op_fsync(const char *path, int datasync, struct fuse_file_info *fi);
int spool_op_release(const char *path, struct fuse_file_info *fi);

#endif
