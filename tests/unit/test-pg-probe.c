/* Drives store/pg.c for tests/test_shared_db.py against a real server:
 *   test-pg-probe URI [PASSWORD_FILE]   then commands on stdin, one a line:
 *   ping          -> "ok RTT_US" | "err CODE MS one-line-detail"
 *   bench N       -> "median_us X" (N SELECT 1 round trips)
 *   status        -> "state=up|down reconnects=N failures=N open=N"
 *   tx TABLE ID   -> inserts ID into TABLE (id text) in pg_tx: "ok" | "err ..." |
 *                    "unknown ..." (COMMIT outcome unknown)
 *   join NODE FILE -> pg_cluster_config(JOIN) with FILE's fingerprint lines:
 *                    "ok OUTCOME ORIGIN" | "err CODE MS detail"
 * It opens the pool first: "open" or "err CODE MS detail" and exit 1. */
#include "store/pg.h"
#include "store/pg_cluster.h"
#include "common/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

struct ins { const char *table, *id; };

static int
insert(struct pg_conn *c, void *arg)
{
	struct ins *in = arg;
	char sql[256];

	/* The table name comes from the test; the value is a parameter. */
	snprintf(sql, sizeof(sql), "INSERT INTO %s (id) VALUES ($1)", in->table);
	return pg_exec(c, sql, 1, &in->id, NULL, NULL, 0, NULL);
}

struct join { const char *node; char lines[8192]; struct pg_cluster_info info; };

static int
join(struct pg_conn *c, void *arg)
{
	struct join *j = arg;
	int r = pg_schema_check(c);

	return r ? r : pg_cluster_config(c, PG_CLUSTER_JOIN, j->node, j->lines,
	    NULL, &j->info);
}

int
main(int argc, char **argv)
{
	struct pg_conf pc = {0};
	struct pg *p = NULL;
	char line[512];
	double t0;
	int r;

	if (argc < 2) {
		fprintf(stderr, "usage: test-pg-probe URI [PASSWORD_FILE]\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	pc.uri = argv[1];
	pc.password_file = argc > 2 ? argv[2] : NULL;
	pc.node = "probe";
	t0 = now_ms();
	if ((r = pg_open(&pc, &p)) != 0) {
		printf("err %d %.0f %s\n", r, now_ms() - t0, err_detail());
		return 1;
	}
	printf("open\n");
	while (fgets(line, sizeof(line), stdin)) {
		char table[64], id[64], node[64], file[256];
		unsigned long n;
		uint64_t rtt;

		line[strcspn(line, "\n")] = '\0';
		t0 = now_ms();
		if (strcmp(line, "ping") == 0) {
			if ((r = pg_ping(p, &rtt)) == 0)
				printf("ok %llu\n", (unsigned long long)rtt);
			else
				printf("err %d %.0f %s\n", r, now_ms() - t0, err_detail());
		} else if (sscanf(line, "bench %lu", &n) == 1 && n > 0 && n < 1000000) {
			uint64_t *v = calloc(n, sizeof(*v));
			for (unsigned long i = 0; v && i < n; i++)
				if (pg_ping(p, &v[i]) != 0)
					v[i] = UINT64_MAX;
			if (v) {
				qsort(v, n, sizeof(*v), cmp_u64);
				printf("median_us %llu\n", (unsigned long long)v[n / 2]);
			}
			free(v);
		} else if (strcmp(line, "status") == 0) {
			struct pg_status st;
			pg_status(p, &st);
			printf("state=%s reconnects=%lu failures=%lu open=%u\n",
			    st.state == PG_STATE_UP ? "up" : "down", st.reconnects,
			    st.failures, st.open);
		} else if (sscanf(line, "tx %63s %63s", table, id) == 2) {
			struct ins in = { table, id };
			int unknown = 0;
			r = pg_tx(p, insert, &in, &unknown);
			if (r == 0)
				printf("ok\n");
			else
				printf("%s %d %.0f %s\n", unknown ? "unknown" : "err", r,
				    now_ms() - t0, err_detail());
		} else if (sscanf(line, "join %63s %255s", node, file) == 2) {
			static struct join j;
			FILE *f = fopen(file, "r");
			size_t n = f ? fread(j.lines, 1, sizeof(j.lines) - 1, f) : 0;
			if (f)
				fclose(f);
			j.lines[n] = '\0';
			j.node = node;
			if ((r = pg_tx(p, join, &j, NULL)) == 0)
				printf("ok %d %s\n", (int)j.info.outcome, j.info.origin);
			else
				printf("err %d %.0f %s\n", r, now_ms() - t0, err_detail());
		} else {
			printf("? %s\n", line);
		}
	}
	pg_close(p);
	return 0;
}
