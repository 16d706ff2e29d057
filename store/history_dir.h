/* The directory backend's handle of the history area, shared by
 * store/history_area.c (the area, its index and anchor) and
 * store/history_batch.c (objects and batches). Private to store/. */
#ifndef HSMFS_STORE_HISTORY_DIR_H
#define HSMFS_STORE_HISTORY_DIR_H

#include <sys/types.h>

#include "crypto/tlog.h"

struct hpg;

struct hstore {
	int dirfd, objfd, cpfd, anchorfd;
	char *anchor;                /* path, or NULL */
	char store_id[17];
	char prefix[TLOG_ORIGIN_MAX];
	off_t cp_len;                /* good length of the index */
	int index_lost;              /* objects exist but the index was missing */
	struct hpg *pg;              /* shared store: the PostgreSQL backend
	                                (store/history_pg.h); dirfd is then the
	                                node-local part (spools, caches) */
};

/* The checkpoints appended to the index as one durable unit, then to
 * the anchor (store/history_area.c). */
int hstore_index_append(struct hstore *hs, const char *notes, size_t len);
/* The same checkpoints to the anchor, if any (a failure is logged). */
void hstore_anchor_append(struct hstore *hs, const char *notes, size_t len);

#endif
