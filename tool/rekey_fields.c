/* hsmfs-tool rekey-fields -o config=FILE STORE: rewrap every field of
 * the store to the newest EncryptedFields version without changing a
 * plaintext. Safe while the store is mounted and never locks readers
 * out: fields are read in batches, rewrapped, and each replaced by a
 * compare-and-replace (only if it still holds the text read; a value
 * the mount wrote meanwhile is left to the next pass). Resumable: each
 * replacement is atomic and fields already current are skipped, so a
 * rerun after a crash finishes the job. Uses only store/fields.h.
 * With -o shared=URI the fields are the database's (no STORE): the same
 * batches, each replacement one UPDATE ... WHERE envelope = old, and
 * one rekey-fields per cluster (an advisory lock). */
#include "tool/tool.h"
#include "tool/fieldtool.h"
#include "crypto/envelope.h"
#include "store/fields.h"
#include "store/store.h"
#include "common/err.h"
#include "store/storelock.h"
#include "store/pg.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/x509.h>

/* Fields read per batch (one round trip to a shared store). */
#define BATCH 32

enum outcome { DONE_CURRENT, DONE_REWRAPPED, DONE_CHANGED, DONE_GONE,
	DONE_FAILED };

struct rekey {
	struct fields_store *fs;
	struct fieldtool *t;
	const uint8_t *new_id;
	X509 *new_cert;
};

/* One field read before: skip if current, rewrap, compare-and-replace. */
static enum outcome
rekey_one(const struct rekey *k, const char *name, int got, const char *text,
    size_t tl)
{
	const struct engine_descriptor *d;
	struct envelope env;
	enum outcome o = DONE_FAILED;
	char *nt = NULL;
	uint8_t *bin = NULL;
	size_t bl = 0, ntl = 0;
	hsm_key *hk;
	int r = got;

	memset(&env, 0, sizeof(env));
	if (r == HSMFS_ERR_NOTFOUND)
		return DONE_GONE;   /* removed or renamed meanwhile */
	if (r != 0 || (r = envelope_parse_text(text, tl, &env)) != 0)
		goto fail;
	if (envelope_is_current(&env.h, k->t->newest, k->new_id)) {
		o = DONE_CURRENT;
		goto out;
	}
	if ((r = envelope_find_key(k->t->engine, k->t->keys, &env.h, &d, &hk)) != 0 ||
	    (r = envelope_rewrap(&env, hk, k->t->newest, k->new_cert, &bin,
	    &bl)) != 0)
		goto fail;
	if ((nt = envelope_to_text(bin, bl, &ntl)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto fail;
	}
	r = fields_store_cas(k->fs, name, text, tl, nt, ntl);
	if (r == 0 || r == 1 || r == HSMFS_ERR_NOTFOUND) {
		o = r == 0 ? DONE_REWRAPPED : r == 1 ? DONE_CHANGED : DONE_GONE;
		goto out;
	}
fail:
	fprintf(stderr, "%shsmfs-tool rekey-fields: field %s: %s (%s)\n",
	    tool_progress_enabled() ? "\n" : "", name, err_detail(),
	    hsmfs_strerror(r));
out:
	envelope_clear(&env);
	free(bin);
	free(nt);
	return o;
}

struct tally {
	unsigned long current, rewrapped, changed, failed;
};

/* Names [from, from + n) of ns: read them all, then rewrap each. */
static void
rekey_batch(const struct rekey *k, const struct names *ns, size_t from,
    size_t n, struct tally *c)
{
	char *text[BATCH];
	size_t tl[BATCH];
	int got[BATCH];

	for (size_t i = 0; i < n; i++) {
		text[i] = NULL;
		tl[i] = 0;
		got[i] = fields_store_get(k->fs, ns->v[from + i], &text[i], &tl[i]);
	}
	for (size_t i = 0; i < n; i++) {
		switch (rekey_one(k, ns->v[from + i], got[i], text[i], tl[i])) {
		case DONE_CURRENT: c->current++; break;
		case DONE_REWRAPPED: c->rewrapped++; break;
		case DONE_CHANGED: c->changed++; break;
		case DONE_GONE: break;
		case DONE_FAILED: c->failed++; break;
		}
		free(text[i]);
		if (tool_progress_enabled())
			fprintf(stderr, "\rrekey-fields: %zu/%zu", from + i + 1, ns->n);
	}
}

/* The store lock: held by a daemon, rewrap alongside it; free, hold it
 * so no daemon starts on the store meanwhile; held by anything else,
 * refuse. Opens the fields of STORE. */
static int
open_store(const char *store, int *slock, struct fields_store **fs)
{
	struct store_conf sc = { .dirfd = -1 };
	char holder[4200];
	int rc, r;

	*fs = NULL;
	if ((sc.dirfd = open(store, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		int e = errno;
		fprintf(stderr, "hsmfs-tool rekey-fields: %s: %s\n", store,
		    e == ENOENT ? "no fields in this store" : strerror(e));
		return e == ENOENT ? TOOL_OK : TOOL_USAGE;
	}
	rc = storelock_take(sc.dirfd, slock, holder, sizeof(holder));
	if (rc == 0)
		storelock_set_owner(*slock, "hsmfs-tool-rekey-fields", NULL);
	else if (rc == 1 && !strstr(holder, " hsmfs ")) {
		fprintf(stderr, "hsmfs-tool rekey-fields: store %s is in use by "
		    "PID %s; wait for it to finish\n", store, holder);
		close(sc.dirfd);
		return TOOL_USAGE;
	} else if (rc < 0) {
		fprintf(stderr, "hsmfs-tool rekey-fields: store %s: cannot lock: "
		    "%s\n", store, err_detail());
		close(sc.dirfd);
		return TOOL_USAGE;
	}
	r = fields_store_open(&sc, fs);
	close(sc.dirfd);
	/* One rekey at a time. */
	if (r == 0 && (r = fields_store_maint_lock(*fs)) != 0) {
		fields_store_close(*fs);
		*fs = NULL;
	}
	if (r == 1)
		fprintf(stderr, "hsmfs-tool rekey-fields: %s: another rekey-fields "
		    "is running\n", store);
	else if (r != 0)
		fprintf(stderr, "hsmfs-tool rekey-fields: %s: %s\n", store,
		    err_detail());
	return r == 0 ? TOOL_OK : TOOL_USAGE;
}

/* The shared store's fields (shared=): a pool of one connection for the
 * batches and one for the maintenance lock. */
static int
open_shared(const char *uri, const char *pw, struct pg **p,
    struct fields_store **fs)
{
	struct pg_conf pc = { .uri = uri, .password_file = pw,
		.node = "rekey-fields", .pool_size = 2 };
	struct store_conf sc = { .dirfd = -1, .shared = uri,
		.shared_password = pw };
	struct pg_conn *c;
	int r;

	*fs = NULL;
	if ((r = pg_open(&pc, p)) == 0 && (r = pg_acquire(*p, &c)) == 0) {
		r = pg_schema_check(c);
		pg_release(*p, c);
	}
	if (r == 0) {
		sc.pg = *p;
		r = fields_store_open(&sc, fs);
	}
	if (r == 0 && (r = fields_store_maint_lock(*fs)) != 0) {
		fields_store_close(*fs);
		*fs = NULL;
	}
	if (r == 1)
		fprintf(stderr, "hsmfs-tool rekey-fields: another rekey-fields is "
		    "running on the shared store\n");
	else if (r != 0)
		fprintf(stderr, "hsmfs-tool rekey-fields: shared store: %s\n",
		    err_detail());
	return r == 0 ? TOOL_OK : TOOL_USAGE;
}

int
cmd_rekey_fields(int argc, char **argv)
{
	struct fieldtool t;
	struct fields_store *fs = NULL;
	struct names ns = {0};
	struct tally c = {0};
	struct rekey rk;
	const char *config;
	char *pos[1];
	uint8_t new_id[ENVELOPE_KEY_ID_LEN];
	X509 *new_cert;
	unsigned long rewrapped = 0, first_current = 0;
	int npos, rc, r, slock = -1;
	const char *shared, *shared_pw;
	struct pg *pg = NULL;
	hsm_key *k;

	if ((rc = fieldtool_args("rekey-fields", argc, argv, &config, pos, 1,
	    &npos)) != TOOL_OK)
		return rc;
	fieldtool_shared(&shared, &shared_pw);
	if (npos != (shared ? 0 : 1)) {
		tool_usage(stderr, "rekey-fields");
		return TOOL_USAGE;
	}
	if (shared)
		pos[0] = "shared store";
	if ((rc = shared ? open_shared(shared, shared_pw, &pg, &fs) :
	    open_store(pos[0], &slock, &fs)) != TOOL_OK || fs == NULL)
		goto out_fd;
	if ((rc = fieldtool_open("rekey-fields", config, &t)) != TOOL_OK)
		goto out_fd;
	if ((k = keyring_unwrapper(t.keys, t.newest)) == NULL) {
		fprintf(stderr, "hsmfs-tool rekey-fields: key %s is not open\n",
		    t.newest->key_name);
		rc = TOOL_USAGE;
		goto out;
	}
	new_cert = keyring_key_cert(k);
	if (envelope_key_id(new_cert, new_id) != 0) {
		fprintf(stderr, "hsmfs-tool rekey-fields: %s\n", err_detail());
		rc = TOOL_USAGE;
		goto out;
	}
	fields_store_recover(fs, 600);   /* never a live put's temp file */
	rk = (struct rekey){ fs, &t, new_id, new_cert };
	/* Passes until one rewraps nothing: a field renamed or rewritten by
	 * the mount during a pass is looked at again by the next one. */
	for (int pass = 0; pass < 4; pass++) {
		unsigned long pass_rewrapped;
		names_free(&ns);
		if ((r = fields_store_list(fs, names_add, &ns)) != 0) {
			fprintf(stderr, "hsmfs-tool rekey-fields: %s: %s\n", pos[0],
			    err_detail());
			rc = TOOL_USAGE;
			goto out;
		}
		memset(&c, 0, sizeof(c));
		for (size_t i = 0; i < ns.n; i += BATCH)
			rekey_batch(&rk, &ns, i, ns.n - i < BATCH ? ns.n - i : BATCH, &c);
		if (tool_progress_enabled() && ns.n)
			fputc('\n', stderr);
		pass_rewrapped = c.rewrapped;
		rewrapped += pass_rewrapped;
		if (pass == 0)
			first_current = c.current;
		/* A failed field would fail again: report it once. */
		if ((pass_rewrapped == 0 && c.changed == 0) || c.failed > 0)
			break;
	}
	printf("rekey-fields: %lu rewrapped to EncryptedFields version %d, "
	    "%lu already current, %lu failed\n", rewrapped, t.newest->version,
	    first_current, c.failed);
	rc = c.failed ? TOOL_FAIL : TOOL_OK;
out:
	names_free(&ns);
	fieldtool_close(&t);
out_fd:
	fields_store_close(fs);
	pg_close(pg);
	if (slock >= 0)
		close(slock);
	return rc;
}
