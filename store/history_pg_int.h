/* Internals of the PostgreSQL backend of the history area shared by its
 * two files: store/history_pg.c (the area, objects, their node-local
 * caches, offline verification) and store/history_pg_batch.c (batches:
 * locks, frames, commit, an unknown COMMIT outcome). Private to them. */
#ifndef HSMFS_STORE_HISTORY_PG_INT_H
#define HSMFS_STORE_HISTORY_PG_INT_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#include "crypto/tlog.h"
#include "store/history_pg.h"

struct hpg {
	struct pg *pg;
	int cachedir;               /* -1: memory files */
};

struct hpg_obj {
	struct hpg *p;
	char name[256];
	pthread_mutex_t mu;         /* the cache's end (n, bytes) */
	int fd;                     /* cache of committed frames */
	uint64_t n;
	off_t bytes;
	struct tlog_tree tree;      /* of the cache's n records */
	char last_id[37];           /* record_id of its last row */
};

#endif
