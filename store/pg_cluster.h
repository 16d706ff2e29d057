/* The cluster's configuration in the database (docs/scale.md, "Same
 * configuration everywhere"): the one check db-init and every node at
 * mount make, inside the caller's transaction on c (the cluster row is
 * locked FOR UPDATE, so two nodes recording a rotation serialise). */
#ifndef HSMFS_STORE_PG_CLUSTER_H
#define HSMFS_STORE_PG_CLUSTER_H

#include <stddef.h>
#include "store/pg.h"
#include "store/store.h"

enum pg_cluster_mode {
	PG_CLUSTER_CHECK,   /* compare only, change nothing */
	PG_CLUSTER_JOIN,    /* a node at mount: compare, record the union of a
	                       rolling rotation, register node in hsmfs_nodes */
	PG_CLUSTER_INIT,    /* db-init: as JOIN, and create the cluster row */
};

enum pg_cluster_outcome {
	PG_CLUSTER_UNCHANGED = 0,
	PG_CLUSTER_ROTATION = 1,   /* accepted: extra newer versions (recorded
	                              unless CHECK) */
	PG_CLUSTER_CREATED = 2,    /* INIT on an empty database */
};

struct pg_cluster_info {
	enum pg_cluster_outcome outcome;
	char origin[256];          /* the cluster's name: checkpoint origins */
	char fingerprint[65];      /* SHA-256 hex of lines */
};

/* lines: crypto/fingerprint.h's text of this node's configuration; node:
 * the node's name (JOIN, INIT: may be NULL, then no hsmfs_nodes row);
 * origin: INIT only, NULL for "hsmfs/DBNAME". Refused: HSMFS_ERR_CONFIG
 * with err_detail() naming the difference (or the missing cluster row). */
/* Shared store (c->pg): the newest version of descriptor desc that every
 * node registered in hsmfs_nodes has in its configuration lines ("NAME
 * vN ..."), into *version (0: some node has none, no node is registered,
 * or the store is not shared). New work (a sealed field, a signed
 * checkpoint) uses only a version every node can open (the rolling
 * rotation, docs/scale.md). */
int pg_cluster_version(const struct store_conf *c, const char *desc,
    int *version);

int pg_cluster_config(struct pg_conn *c, enum pg_cluster_mode mode,
    const char *node, const char *lines, const char *origin,
    struct pg_cluster_info *out);

#endif
