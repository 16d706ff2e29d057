/* The cluster's configuration row and the node registry (store/pg_cluster.h). */
#include "store/pg_cluster.h"
#include "crypto/fingerprint.h"
#include "common/err.h"

#include <stdio.h>
#include <string.h>

static int
register_node(struct pg_conn *c, const char *node, const char *hex,
    const char *lines)
{
	const char *v[3] = { node, hex, lines };

	return pg_exec(c, "INSERT INTO hsmfs_nodes (name, fingerprint, config_lines) "
	    "VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET fingerprint = "
	    "$2, config_lines = $3, last_seen = now()", 3, v, NULL, NULL, 0, NULL);
}

int
pg_cluster_config(struct pg_conn *c, enum pg_cluster_mode mode,
    const char *node, const char *lines, const char *origin,
    struct pg_cluster_info *out)
{
	PGresult *res = NULL;
	const char *v[3];
	int r;

	memset(out, 0, sizeof(*out));
	fingerprint_hash(lines, out->fingerprint);
	v[0] = out->fingerprint;
	v[1] = lines;
	if ((r = pg_exec(c, mode == PG_CLUSTER_CHECK ?
	    "SELECT config_lines, origin FROM hsmfs_cluster" :
	    "SELECT config_lines, origin FROM hsmfs_cluster FOR UPDATE",
	    0, NULL, NULL, NULL, 0, &res)) != 0)
		return r;
	if (PQntuples(res) == 0) {
		PQclear(res);
		if (mode != PG_CLUSTER_INIT) {
			err_set("the database has no cluster configuration recorded; "
			    "run hsmfs-tool db-init");
			return HSMFS_ERR_CONFIG;
		}
		v[2] = origin;
		if ((r = pg_exec(c, "INSERT INTO hsmfs_cluster (fingerprint, "
		    "config_lines, origin) VALUES ($1, $2, coalesce($3, 'hsmfs/' || "
		    "current_database())) RETURNING origin", 3, v, NULL, NULL, 0,
		    &res)) != 0)
			return r;
		snprintf(out->origin, sizeof(out->origin), "%s", PQgetvalue(res, 0, 0));
		PQclear(res);
		out->outcome = PG_CLUSTER_CREATED;
		return node ? register_node(c, node, out->fingerprint, lines) : 0;
	}
	snprintf(out->origin, sizeof(out->origin), "%s", PQgetvalue(res, 0, 1));
	r = fingerprint_compare(PQgetvalue(res, 0, 0), lines);
	PQclear(res);
	if (r < 0)
		return r;
	out->outcome = r == 1 ? PG_CLUSTER_ROTATION : PG_CLUSTER_UNCHANGED;
	if (mode == PG_CLUSTER_CHECK)
		return 0;
	if (out->outcome == PG_CLUSTER_ROTATION &&
	    (r = pg_exec(c, "UPDATE hsmfs_cluster SET fingerprint = $1, "
	    "config_lines = $2, updated = now()", 2, v, NULL, NULL, 0, NULL)) != 0)
		return r;
	return node ? register_node(c, node, out->fingerprint, lines) : 0;
}

int
pg_cluster_version(const struct store_conf *c, const char *desc,
    int *version)
{
	PGresult *res = NULL;
	struct pg_conn *pc;
	size_t dl = strlen(desc);
	int r, low = -1;

	*version = 0;
	if (c->pg == NULL)
		return 0;
	if ((r = pg_acquire(c->pg, &pc)) != 0)
		return r;
	r = pg_exec(pc, "SELECT config_lines FROM hsmfs_nodes", 0, NULL, NULL,
	    NULL, 0, &res);
	pg_release(c->pg, pc);
	if (r != 0)
		return r;
	for (int i = 0; i < PQntuples(res); i++) {
		const char *p = PQgetvalue(res, i, 0);
		int high = 0;
		for (; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
			int v;
			if (strncmp(p, desc, dl) == 0 && p[dl] == ' ' &&
			    sscanf(p + dl, " v%d", &v) == 1 && v > high)
				high = v;
		}
		if (low < 0 || high < low)
			low = high;
	}
	PQclear(res);
	*version = low < 0 ? 0 : low;
	return 0;
}
