/* hsmfs-tool db-init: create or migrate the shared store's schema
 * (store/sql/schema.sql), grant the daemon role its least privileges, and
 * record the cluster's configuration fingerprint (crypto/fingerprint.h).
 * Idempotent; one transaction under an advisory lock, so two db-init at
 * once serialise. --check changes nothing: it runs the checks a node
 * makes at mount (schema version, configuration) and reports them. */
#include "tool/tool.h"
#include "store/pg.h"
#include "store/pg_cluster.h"
#include "crypto/fingerprint.h"
#include "common/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An arbitrary constant: hsmfs's db-init lock. */
#define DB_INIT_LOCK "7340327157163393"

struct dbopts {
	const char *config, *shared, *password, *role, *origin;
	int check;
};

static int
parse(int argc, char **argv, struct dbopts *o)
{
	for (int i = 1; i < argc; i++) {
		char *val, *tok, *save;
		if (strcmp(argv[i], "--help") == 0) {
			tool_usage(stdout, "db-init");
			return TOOL_OK;
		}
		if (strcmp(argv[i], "--check") == 0) {
			o->check = 1;
			continue;
		}
		if (strcmp(argv[i], "-o") == 0 && i + 1 < argc)
			val = argv[++i];
		else if (strncmp(argv[i], "-o", 2) == 0 && argv[i][2])
			val = argv[i] + 2;
		else {
			fprintf(stderr, "hsmfs-tool db-init: unexpected argument %s\n",
			    argv[i]);
			return TOOL_USAGE;
		}
		for (tok = strtok_r(val, ",", &save); tok;
		    tok = strtok_r(NULL, ",", &save)) {
			if (strncmp(tok, "config=", 7) == 0)
				o->config = tok + 7;
			else if (strncmp(tok, "shared=", 7) == 0)
				o->shared = tok + 7;
			else if (strncmp(tok, "shared_password=", 16) == 0)
				o->password = tok + 16;
			else if (strncmp(tok, "daemon_role=", 12) == 0)
				o->role = tok + 12;
			else if (strncmp(tok, "origin=", 7) == 0)
				o->origin = tok + 7;
			else {
				fprintf(stderr, "hsmfs-tool db-init: unknown option -o %s\n",
				    tok);
				return TOOL_USAGE;
			}
		}
	}
	if (o->config == NULL || o->shared == NULL) {
		tool_usage(stderr, "db-init");
		return TOOL_USAGE;
	}
	return -1;
}

/* The daemon role: everything the areas need, nothing that changes or
 * removes history (also refused by the schema's trigger). */
static int
grant(struct pg_conn *c, const char *role)
{
	static const char *const fmt[] = {
		"GRANT USAGE ON SCHEMA %s TO %s",
		"GRANT SELECT ON hsmfs_schema_version TO %s",
		/* The rotation's columns only, never origin (checkpoints
		 * name it); the REVOKE takes back an older db-init's grant. */
		"REVOKE UPDATE ON hsmfs_cluster FROM %s",
		"GRANT SELECT, UPDATE (fingerprint, config_lines, updated) "
		    "ON hsmfs_cluster TO %s",
		"GRANT SELECT, INSERT, UPDATE ON hsmfs_nodes TO %s",
		"GRANT SELECT, INSERT, UPDATE, DELETE ON hsmfs_fields TO %s",
		"GRANT SELECT, INSERT, UPDATE ON hsmfs_history_objects TO %s",
		"GRANT SELECT, INSERT ON hsmfs_history_records, hsmfs_checkpoints TO %s",
		"REVOKE UPDATE, DELETE, TRUNCATE ON hsmfs_history_records, "
		    "hsmfs_checkpoints FROM %s",
		"GRANT SELECT, INSERT, UPDATE, DELETE ON hsmfs_mail_queue TO %s",
		"GRANT SELECT, INSERT, DELETE ON hsmfs_mail_done TO %s",
		"GRANT USAGE ON ALL SEQUENCES IN SCHEMA %s TO %s",
	};
	PGresult *res = NULL;
	char *id = NULL, *schema = NULL, sql[512];
	int r;

	if ((r = pg_exec(c, "SELECT 1 FROM pg_roles WHERE rolname = $1", 1,
	    &role, NULL, NULL, 0, &res)) != 0)
		return r;
	if (PQntuples(res) != 1) {
		PQclear(res);
		err_set("daemon_role %s does not exist; create it first (CREATE ROLE "
		    "%s LOGIN)", role, role);
		return HSMFS_ERR_CONFIG;
	}
	PQclear(res);
	if ((r = pg_exec(c, "SELECT current_schema()", 0, NULL, NULL, NULL, 0,
	    &res)) != 0)
		return r;
	id = PQescapeIdentifier(pg_conn_raw(c), role, strlen(role));
	schema = PQescapeIdentifier(pg_conn_raw(c), PQgetvalue(res, 0, 0),
	    strlen(PQgetvalue(res, 0, 0)));
	PQclear(res);
	if (id == NULL || schema == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	for (size_t i = 0; i < sizeof(fmt) / sizeof(fmt[0]) && r == 0; i++) {
		if (strncmp(fmt[i], "GRANT USAGE ON", 14) == 0)
			snprintf(sql, sizeof(sql), fmt[i], schema, id);
		else
			snprintf(sql, sizeof(sql), fmt[i], id);
		r = pg_exec(c, sql, 0, NULL, NULL, NULL, 0, NULL);
	}
out:
	PQfreemem(id);
	PQfreemem(schema);
	return r;
}

/* Version found before (-1: no schema), or a code for a newer schema. */
static int
schema_version(struct pg_conn *c, int *found)
{
	PGresult *res = NULL;
	int r;

	*found = -1;
	if ((r = pg_exec(c, "SELECT to_regclass('hsmfs_schema_version') IS NOT NULL",
	    0, NULL, NULL, NULL, 0, &res)) != 0)
		return r;
	if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
		PQclear(res);
		return 0;
	}
	PQclear(res);
	if ((r = pg_exec(c, "SELECT coalesce(max(version), 0) FROM "
	    "hsmfs_schema_version", 0, NULL, NULL, NULL, 0, &res)) != 0)
		return r;
	*found = atoi(PQgetvalue(res, 0, 0));
	PQclear(res);
	if (*found > PG_SCHEMA_VERSION) {
		err_set("database schema version %d is unknown to this hsmfs (it "
		    "knows %d); upgrade hsmfs-tool", *found, PG_SCHEMA_VERSION);
		return HSMFS_ERR_CONFIG;
	}
	return 0;
}

static int
init_db(struct pg_conn *c, const struct dbopts *o, const char *lines)
{
	static const char *const what[2][3] = {
		{ "unchanged", "extended (rolling rotation: the newer versions are "
		    "recorded)", "recorded" },
		{ "unchanged", "accepted as a rolling rotation", "recorded" },
	};
	struct pg_cluster_info info;
	const char *schema = "up to date";
	int r, before;

	if ((r = pg_begin(c)) != 0)
		return r;
	if ((r = pg_exec(c, "SELECT pg_advisory_xact_lock(" DB_INIT_LOCK ")", 0,
	    NULL, NULL, NULL, 0, NULL)) != 0 ||
	    (r = schema_version(c, &before)) != 0)
		return r;
	if (o->check) {
		if ((r = pg_schema_check(c)) != 0)
			return r;
	} else {
		/* Migrations from `before` go here, one per version. */
		if ((r = pg_exec_script(c, pg_schema_sql)) != 0)
			return r;
		if (before < 0)
			schema = "created";
		else if (before < PG_SCHEMA_VERSION)
			schema = "migrated";
		if (o->role && (r = grant(c, o->role)) != 0)
			return r;
	}
	if ((r = pg_cluster_config(c, o->check ? PG_CLUSTER_CHECK : PG_CLUSTER_INIT,
	    NULL, lines, o->origin, &info)) != 0)
		return r;
	if (o->check)
		pg_rollback(c);
	else if ((r = pg_commit(c, NULL)) != 0)
		return r;
	printf("db-init: schema version %d %s; configuration %.16s %s; origin %s\n",
	    PG_SCHEMA_VERSION, o->check ? "ok" : schema, info.fingerprint,
	    what[o->check][info.outcome], info.origin);
	return 0;
}

int
cmd_db_init(int argc, char **argv)
{
	struct dbopts o = {0};
	struct pg_conf pc = {0};
	struct pg *p = NULL;
	struct pg_conn *c = NULL;
	char *lines = NULL;
	int r, rc = TOOL_USAGE;

	if ((r = parse(argc, argv, &o)) >= 0)
		return r;
	if (fingerprint_config_file(o.config, &lines) != 0) {
		fprintf(stderr, "hsmfs-tool db-init: %s\n", err_detail());
		goto out;
	}
	pc.uri = o.shared;
	pc.password_file = o.password;
	pc.node = "db-init";
	pc.pool_size = 1;
	if (pg_open(&pc, &p) != 0 || pg_acquire(p, &c) != 0) {
		fprintf(stderr, "hsmfs-tool db-init: %s\n", err_detail());
		goto out;
	}
	if ((r = init_db(c, &o, lines)) != 0) {
		fprintf(stderr, "hsmfs-tool db-init: %s\n", err_detail());
		rc = r == HSMFS_ERR_CONFIG ? TOOL_FAIL : TOOL_USAGE;
		goto out;
	}
	rc = TOOL_OK;
out:
	if (c)
		pg_release(p, c);
	pg_close(p);
	free(lines);
	return rc;
}
