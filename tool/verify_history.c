/* hsmfs-tool verify-history: offline verification of one object's history
 * in a store (mounted or not), by the same rules as the daemon
 * (hstore_verify_object, store/history.h), optionally against checkpoints
 * kept elsewhere: an auditor's --expect file and the -o history_anchor
 * file (--anchor). Here: arguments, keys, printing. */
#include "tool/tool.h"
#include "store/history.h"
#include "store/pg.h"
#include "common/err.h"
#include "common/util.h"
#include "crypto/engine.h"
#include "crypto/keyring.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#define MAX_KEYS 32

static int
add_pem_certs(const char *path, EVP_PKEY **keys, X509 **certs, size_t *n)
{
	FILE *f = fopen(path, "r");
	X509 *x;
	int got = 0;
	if (f == NULL) {
		fprintf(stderr, "hsmfs-tool verify-history: %s: %s\n", path,
		    strerror(errno));
		return -1;
	}
	while (*n < MAX_KEYS && (x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) {
		keys[*n] = X509_get0_pubkey(x);
		certs[(*n)++] = x;
		got++;
	}
	fclose(f);
	ERR_clear_error();
	if (got == 0) {
		fprintf(stderr, "hsmfs-tool verify-history: %s: no PEM certificate\n",
		    path);
		return -1;
	}
	return 0;
}

static void
print_dn(X509 *c)
{
	if (c == NULL)
		return;
	printf(" signer=");
	X509_NAME_print_ex_fp(stdout, X509_get_subject_name(c), 0, XN_FLAG_RFC2253);
}

struct vh_args {
	const char *store, *expect, *anchor;
	const char *pems[8];
	size_t npems;
};

/* STORE OBJECT [--expect CP] [--anchor FILE] [--cert PEM]... -1: usage
 * printed. */
static int
parse_args(int argc, char **argv, struct tool_opts *o, struct vh_args *a,
    struct hstore_verify *v)
{
	int opts = 1;                       /* until "--": names may start with - */

	memset(a, 0, sizeof(*a));
	for (int i = 1; i < argc; i++) {
		int k = opts ? tool_common_opt(argc, argv, &i, o) : 0;
		if (k < 0)
			return -1;
		if (k > 0)
			continue;
		if (opts && strcmp(argv[i], "--") == 0) {
			opts = 0;
		} else if (opts && (strcmp(argv[i], "--expect") == 0 ||
		    strcmp(argv[i], "--anchor") == 0 ||
		    strcmp(argv[i], "--cert") == 0) && i + 1 < argc) {
			if (argv[i][2] == 'e')
				a->expect = argv[++i];
			else if (argv[i][2] == 'a')
				a->anchor = argv[++i];
			else if (a->npems < 8)
				a->pems[a->npems++] = argv[++i];
		} else if (opts && argv[i][0] == '-') {
			fprintf(stderr, "hsmfs-tool verify-history: unknown option %s\n",
			    argv[i]);
			tool_usage(stderr, "verify-history");
			return -1;
		} else if (a->store == NULL) {
			a->store = argv[i];
		} else if (v->object == NULL) {
			v->object = argv[i];
		} else {
			tool_usage(stderr, "verify-history");
			return -1;
		}
	}
	if (o->shared != NULL && v->object == NULL) {
		/* A shared store needs no STORE: the one name is the object. */
		v->object = a->store;
		a->store = NULL;
	}
	if ((a->store == NULL && o->shared == NULL) || v->object == NULL ||
	    (o->config == NULL && a->npems == 0)) {
		fprintf(stderr, "hsmfs-tool verify-history: need STORE (or "
		    "shared=URI), OBJECT and -o config=FILE (or --cert PEM)\n");
		tool_usage(stderr, "verify-history");
		return -1;
	}
	if (!util_name_valid(v->object)) {
		fprintf(stderr, "hsmfs-tool verify-history: %s: not a valid object "
		    "name\n", v->object);
		return -1;
	}
	return 0;
}

int
cmd_verify_history(int argc, char **argv)
{
	struct tool_opts o = { 0 };
	const char *store, *expect, *anchor;
	struct vh_args a;
	size_t nkeys = 0;
	EVP_PKEY *keys[MAX_KEYS];
	X509 *certs[MAX_KEYS], *owned[MAX_KEYS];
	size_t nowned = 0;
	struct engine *e = NULL;
	struct keyring *kr = NULL;
	struct hstore_verify v;
	struct store_conf conf = { .dirfd = -1 };
	struct pg *pool = NULL;
	int r, ret = TOOL_USAGE;

	memset(&v, 0, sizeof(v));
	if (parse_args(argc, argv, &o, &a, &v) != 0)
		goto out;
	store = a.store;
	expect = a.expect;
	anchor = a.anchor;

	/* Verification keys: every configured ObjectHistorySigner version,
	 * and certificates given with --cert. */
	if (o.config != NULL) {
		if ((r = engine_load(o.config, &e)) != 0) {
			fprintf(stderr, "hsmfs-tool verify-history: %s\n", err_detail());
			goto out;
		}
		if ((r = keyring_open(e, &kr)) != 0) {
			fprintf(stderr, "hsmfs-tool verify-history: %s (%s)\n",
			    err_detail(), hsmfs_strerror(r));
			goto out;
		}
		for (size_t i = 0; i < e->ndescs && nkeys < MAX_KEYS; i++) {
			hsm_key *k;
			if (strcmp(e->descs[i].name, ENGINE_OBJECT_HISTORY_SIGNER) != 0 ||
			    (k = keyring_unwrapper(kr, &e->descs[i])) == NULL)
				continue;
			keys[nkeys] = keyring_key_pubkey(k);
			certs[nkeys++] = keyring_key_cert(k);
		}
	}
	for (size_t i = 0; i < a.npems; i++) {
		size_t before = nkeys;
		if (add_pem_certs(a.pems[i], keys, certs, &nkeys) != 0)
			goto out;
		for (size_t k = before; k < nkeys; k++)
			owned[nowned++] = certs[k];
	}
	if (nkeys == 0) {
		fprintf(stderr, "hsmfs-tool verify-history: no ObjectHistorySigner "
		    "key in the config\n");
		goto out;
	}

	if (o.shared != NULL) {
		struct pg_conf pc = { .uri = o.shared,
			.password_file = o.shared_password, .node = "verify-history",
			.pool_size = 1 };
		struct pg_conn *c;
		if ((r = pg_open(&pc, &pool)) == 0 && (r = pg_acquire(pool, &c)) == 0) {
			r = pg_schema_check(c);
			pg_release(pool, c);
		}
		if (r != 0) {
			fprintf(stderr, "hsmfs-tool verify-history: shared store: %s\n",
			    err_detail());
			goto out;
		}
		conf.shared = o.shared;
		conf.shared_password = o.shared_password;
		conf.pg = pool;
	} else if ((conf.dirfd = open(store, O_RDONLY | O_DIRECTORY |
	    O_CLOEXEC)) < 0) {
		fprintf(stderr, "hsmfs-tool verify-history: %s: %s\n", store,
		    strerror(errno));
		goto out;
	}
	v.keys = keys;
	v.nkeys = nkeys;
	v.anchor = anchor;
	v.expect = expect;
	r = hstore_verify_object(&conf, &v);
	if (r == HSMFS_ERR_BADMSG) {
		printf("invalid: %s: %s\n", v.object, v.reason);
		ret = TOOL_FAIL;
		goto out;
	}
	if (r != 0) {
		fprintf(stderr, "hsmfs-tool verify-history: %s\n", err_detail());
		goto out;
	}
	{
		char *b64 = util_b64_encode(v.root, TLOG_HASH_LEN);
		printf("valid: %s records=%" PRIu64 " root=%s", v.object,
		    v.records, b64 ? b64 : "");
		free(b64);
	}
	if (v.which_key >= 0)
		print_dn(certs[v.which_key]);
	printf("\n");
	if (v.unsigned_after > 0)
		printf("note: %" PRIu64 " unsigned record(s) after the checkpoint "
		    "(never acknowledged; cut at the next mount)\n",
		    v.unsigned_after);
	else if (v.torn)
		printf("note: torn data after the last signed record (%s; cut at "
		    "the next mount)\n", v.torn);
	ret = TOOL_OK;
out:
	if (conf.dirfd >= 0)
		close(conf.dirfd);
	pg_close(pool);
	for (size_t i = 0; i < nowned; i++)
		X509_free(owned[i]);
	keyring_free(kr);
	engine_free(e);
	return ret;
}
