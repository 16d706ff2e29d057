/* hsmfs-tool verify-history: offline verification of one object's history
 * in a store (mounted or not), by the same rules as the daemon
 * (fs/history_store.c), optionally against checkpoints kept elsewhere: an
 * auditor's --expect file and the -o history_anchor file (--anchor). */
#include "tool/tool.h"
#include "store/history_store.h"
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

struct vh {
	const char *object;
	struct tlog_checkpoint newest;   /* from the store index */
	int have_newest;
	uint64_t anchor_size;
	uint8_t anchor_root[TLOG_HASH_LEN];
	int in_anchor;
	uint64_t frames;
};

static int
newest_cb(const char *object, const struct tlog_checkpoint *cp, void *arg)
{
	struct vh *v = arg;
	size_t used;
	if (strcmp(object, v->object) != 0)
		return 0;
	if (v->have_newest && cp->size < v->newest.size) {
		err_set("the checkpoint index goes backwards for %s", object);
		return HSMFS_ERR_BADMSG;
	}
	tlog_checkpoint_clear(&v->newest);
	v->have_newest = 0;
	if (tlog_checkpoint_parse(cp->text, cp->text_len, &v->newest, &used) != 0)
		return HSMFS_ERR_INVALID;
	v->have_newest = 1;
	return 0;
}

static int
anchor_cb(const char *object, const struct tlog_checkpoint *cp, void *arg)
{
	struct vh *v = arg;
	if (strcmp(object, v->object) != 0 || cp->size < v->anchor_size)
		return 0;
	v->anchor_size = cp->size;
	memcpy(v->anchor_root, cp->root, TLOG_HASH_LEN);
	v->in_anchor = 1;
	return 0;
}

static int
count_cb(const struct tlog_frame *f, void *arg)
{
	((struct vh *)arg)->frames++;
	return 0;
}

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

int
cmd_verify_history(int argc, char **argv)
{
	struct tool_opts o = { 0 };
	const char *store = NULL, *expect = NULL, *anchor = NULL;
	const char *pems[8];
	size_t npems = 0, nkeys = 0;
	EVP_PKEY *keys[MAX_KEYS];
	X509 *certs[MAX_KEYS], *owned[MAX_KEYS];
	size_t nowned = 0;
	struct engine *e = NULL;
	struct keyring *kr = NULL;
	struct vh v;
	struct hstore_check c;
	struct tlog_checkpoint exp;
	char prefix[64], *sid = NULL, path[4096], *text = NULL;
	int dirfd = -1, fd = -1, cpfd = -1, afd = -1, r, ret = TOOL_USAGE;
	size_t len, used;
	off_t good;

	memset(&v, 0, sizeof(v));
	memset(&c, 0, sizeof(c));
	memset(&exp, 0, sizeof(exp));
	for (int i = 1; i < argc; i++) {
		int k = tool_common_opt(argc, argv, &i, &o);
		if (k < 0)
			goto out;
		if (k > 0)
			continue;
		if ((strcmp(argv[i], "--expect") == 0 || strcmp(argv[i], "--anchor") == 0 ||
		    strcmp(argv[i], "--cert") == 0) && i + 1 < argc) {
			if (argv[i][2] == 'e')
				expect = argv[++i];
			else if (argv[i][2] == 'a')
				anchor = argv[++i];
			else if (npems < 8)
				pems[npems++] = argv[++i];
		} else if (argv[i][0] == '-') {
			fprintf(stderr, "hsmfs-tool verify-history: unknown option %s\n",
			    argv[i]);
			tool_usage(stderr, "verify-history");
			goto out;
		} else if (store == NULL) {
			store = argv[i];
		} else if (v.object == NULL) {
			v.object = argv[i];
		} else {
			tool_usage(stderr, "verify-history");
			goto out;
		}
	}
	if (store == NULL || v.object == NULL || (o.config == NULL && npems == 0)) {
		fprintf(stderr, "hsmfs-tool verify-history: need STORE, OBJECT and "
		    "-o config=FILE (or --cert PEM)\n");
		tool_usage(stderr, "verify-history");
		goto out;
	}
	if (!util_name_valid(v.object)) {
		fprintf(stderr, "hsmfs-tool verify-history: %s: not a valid object "
		    "name\n", v.object);
		goto out;
	}

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
	for (size_t i = 0; i < npems; i++) {
		size_t before = nkeys;
		if (add_pem_certs(pems[i], keys, certs, &nkeys) != 0)
			goto out;
		for (size_t k = before; k < nkeys; k++)
			owned[nowned++] = certs[k];
	}
	if (nkeys == 0) {
		fprintf(stderr, "hsmfs-tool verify-history: no ObjectHistorySigner "
		    "key in the config\n");
		goto out;
	}

	snprintf(path, sizeof(path), "%s/" HSTORE_DIR, store);
	if ((dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		fprintf(stderr, "hsmfs-tool verify-history: %s: %s\n", path,
		    strerror(errno));
		goto out;
	}
	if (hstore_read_id(dirfd, &sid) != 0) {
		fprintf(stderr, "hsmfs-tool verify-history: %s/%s: %s\n", path,
		    HSTORE_ID, err_detail());
		goto out;
	}
	hstore_origin_prefix(sid, prefix, sizeof(prefix));
	if ((cpfd = openat(dirfd, HSTORE_CHECKPOINTS, O_RDONLY | O_CLOEXEC)) < 0) {
		fprintf(stderr, "hsmfs-tool verify-history: %s/%s: %s\n", path,
		    HSTORE_CHECKPOINTS, strerror(errno));
		goto out;
	}
	ret = TOOL_FAIL;
	if ((r = hstore_read_notes(cpfd, prefix, newest_cb, &v, &good)) != 0) {
		printf("invalid: %s: checkpoint index: %s\n", v.object, err_detail());
		goto out;
	}
	if (anchor != NULL) {
		if ((afd = open(anchor, O_RDONLY | O_CLOEXEC)) < 0) {
			fprintf(stderr, "hsmfs-tool verify-history: %s: %s\n", anchor,
			    strerror(errno));
			ret = TOOL_USAGE;
			goto out;
		}
		if (hstore_read_notes(afd, prefix, anchor_cb, &v, &good) != 0) {
			printf("invalid: %s: anchor: %s\n", v.object, err_detail());
			goto out;
		}
		if (v.in_anchor) {
			c.known[c.nknown].size = v.anchor_size;
			memcpy(c.known[c.nknown].root, v.anchor_root, TLOG_HASH_LEN);
			c.known[c.nknown++].what = "anchor";
		}
	}
	if (expect != NULL) {
		if (util_read_file(expect, 1 << 16, &text, &len) != 0) {
			fprintf(stderr, "hsmfs-tool verify-history: %s\n", err_detail());
			ret = TOOL_USAGE;
			goto out;
		}
		if (tlog_checkpoint_parse(text, len, &exp, &used) != 0) {
			printf("invalid: %s: expected checkpoint %s: %s\n", v.object,
			    expect, err_detail());
			goto out;
		}
		if (strncmp(exp.origin, prefix, strlen(prefix)) != 0 ||
		    strcmp(exp.origin + strlen(prefix), v.object) != 0) {
			printf("invalid: %s: expected checkpoint is for %s, not this "
			    "store's object\n", v.object, exp.origin);
			goto out;
		}
		if (tlog_checkpoint_verify(&exp, keys, nkeys, NULL) != 0) {
			printf("invalid: %s: expected checkpoint: %s\n", v.object,
			    err_detail());
			goto out;
		}
		c.known[c.nknown].size = exp.size;
		memcpy(c.known[c.nknown].root, exp.root, TLOG_HASH_LEN);
		c.known[c.nknown++].what = "expected";
	}
	snprintf(path, sizeof(path), HSTORE_OBJECTS "/%s" HSTORE_SUFFIX, v.object);
	if ((fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC)) < 0) {
		if (v.have_newest || c.nknown > 0)
			printf("invalid: %s: history file is missing\n", v.object);
		else {
			fprintf(stderr, "hsmfs-tool verify-history: %s: no such object\n",
			    v.object);
			ret = TOOL_USAGE;
		}
		goto out;
	}
	c.cp = v.have_newest ? &v.newest : NULL;
	c.keys = keys;
	c.nkeys = nkeys;
	c.cb = count_cb;
	c.arg = &v;
	r = hstore_check_object(fd, &c);
	if (r == HSMFS_ERR_BADMSG) {
		printf("invalid: %s: %s\n", v.object, c.reason);
		goto out;
	}
	if (r != 0) {
		fprintf(stderr, "hsmfs-tool verify-history: %s: %s\n", v.object,
		    err_detail());
		ret = TOOL_USAGE;
		goto out;
	}
	if (!v.have_newest) {
		printf("invalid: %s: no signed checkpoint for this object\n", v.object);
		goto out;
	}
	{
		char *b64 = util_b64_encode(v.newest.root, TLOG_HASH_LEN);
		printf("valid: %s records=%" PRIu64 " root=%s", v.object,
		    v.newest.size, b64 ? b64 : "");
		free(b64);
	}
	if (c.which_key >= 0)
		print_dn(certs[c.which_key]);
	printf("\n");
	if (c.good > v.newest.size)
		printf("note: %" PRIu64 " unsigned record(s) after the checkpoint "
		    "(never acknowledged; cut at the next mount)\n",
		    c.good - v.newest.size);
	else if (c.torn)
		printf("note: torn data after the last signed record (%s; cut at "
		    "the next mount)\n", c.torn);
	ret = TOOL_OK;
out:
	if (fd >= 0)
		close(fd);
	if (cpfd >= 0)
		close(cpfd);
	if (afd >= 0)
		close(afd);
	if (dirfd >= 0)
		close(dirfd);
	free(sid);
	free(text);
	tlog_checkpoint_clear(&v.newest);
	tlog_checkpoint_clear(&exp);
	for (size_t i = 0; i < nowned; i++)
		X509_free(owned[i]);
	keyring_free(kr);
	engine_free(e);
	return ret;
}
