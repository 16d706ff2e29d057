/* STORE/fields/: the on-disk layout of secret fields, shared by the daemon
 * (fs/fields.c) and hsmfs-tool rekey-fields, which may run while mounted.
 * One file per field, named like the field, holding its NX02 envelope as
 * one text line; ".lock" serialises replacements of the same name between
 * processes; ".tmp.*" are temp files of interrupted replacements. */
#ifndef HSMFS_FS_FIELDSTORE_H
#define HSMFS_FS_FIELDSTORE_H

#include <stddef.h>

#define FIELDSTORE_DIR "fields"
#define FIELDSTORE_LOCK ".lock"
/* An envelope line of the largest field, with room to spare. */
#define FIELDSTORE_TEXT_MAX ((size_t)2 << 20)

/* Exclusive lock on one field name across processes (an OFD byte-range
 * lock in .lock at a hash of the name, so every thread and process gets
 * its own lock and unrelated names rarely wait on each other). Returns a
 * lock handle (>= 0) for fieldstore_unlock, or a negative hsmfs_err. */
int fieldstore_lock(int dirfd, const char *name);
/* Two names at once (rename), in a fixed order against deadlock. */
int fieldstore_lock2(int dirfd, const char *a, const char *b, int *h1, int *h2);
void fieldstore_unlock(int handle);

/* Write text + "\n" to a temp file, fsync, then under the name's lock
 * rename it onto NAME and fsync the directory. */
int fieldstore_replace(int dirfd, const char *name, const char *text,
    size_t len);
/* Same with the lock already held by the caller. */
int fieldstore_replace_locked(int dirfd, const char *name, const char *text,
    size_t len);

/* Read the envelope line of NAME (NUL-terminated, caller frees). */
int fieldstore_read(int dirfd, const char *name, char **text, size_t *len);

#endif
