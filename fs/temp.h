/* Hidden names (".NAME"): the in-progress temporaries of writers that
 * write a temp file and rename() it into place (rsync, editors, Java's
 * createTempFile + ATOMIC_MOVE). A folder does its work (sign, encrypt,
 * check and sign mail) when the temporary is closed and keeps the result
 * in its temp area, STORE/<folder>/.temp/, never listed and never acted
 * on; rename() onto a valid name publishes it atomically. Leftovers of a
 * crash or a killed writer are removed at mount and, once older than
 * -o temp_max_age (default one hour), by a sweep on the next listing or
 * temporary created in the folder. */
#ifndef HSMFS_FS_TEMP_H
#define HSMFS_FS_TEMP_H

#include <pthread.h>
#include <time.h>

#define TEMP_DIR ".temp"
#define TEMP_MAX_AGE_DEFAULT 3600

/* 1 for a temporary's name: a dot, then 1..254 characters of
 * [A-Za-z0-9._-] (not "." or ".."). */
int temp_name(const char *name);
/* A name a folder accepts: valid (docs/contract.md §1) or a temporary. */
int temp_name_ok(const char *name);

struct temp_area {
	int dirfd;               /* STORE/<folder>/.temp */
	int also[2];             /* folder dirs holding per-name records of
	                            temporaries (or -1): swept with them */
	pthread_mutex_t lock;
	time_t last_sweep;
};
#define TEMP_AREA_INIT { -1, { -1, -1 }, PTHREAD_MUTEX_INITIALIZER, 0 }

/* Open (create) the area under the folder's store dir and remove every
 * leftover temporary in it and every hidden record in also[]. Returns 0
 * or a negative hsmfs_err. */
int temp_area_open(struct temp_area *a, int folder_dirfd, int also0, int also1);
void temp_area_close(struct temp_area *a);
/* Remove temporaries older than temp_max_age (at most once a minute). */
void temp_area_sweep(struct temp_area *a);

#endif
