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

struct store_tmp;
/* Write text + "\n" to a fresh temp file and fsync it; the caller commits
 * it (store_tmp_commit) under the name's lock, or aborts it. */
int fieldstore_write_tmp(int dirfd, const char *text, size_t len,
    struct store_tmp *t);

/* Replace NAME with text + "\n" atomically and durably (temp, fsync,
 * rename, fsync dir); the caller holds NAME's lock. */
int fieldstore_replace_locked(int dirfd, const char *name, const char *text,
    size_t len);

/* Read the envelope line of NAME (NUL-terminated, caller frees). */
int fieldstore_read(int dirfd, const char *name, char **text, size_t *len);

#endif
