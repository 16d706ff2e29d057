/* hsmfs-tool migrate-store -o config=FILE,shared=URI STORE: move a local
 * store's fields, histories and queued mail into the shared store
 * (docs/scale.md "Moving a local store into the database"). The store
 * lock is held for the run (no daemon on STORE meanwhile). Idempotent
 * and resumable: each field, message and history object is one atomic
 * step, and what the database already has is reported "already there".
 *   fields     the NX02 envelopes as they are (never opened), one INSERT
 *              each unless the name exists (same envelope: there; another:
 *              a conflict, not overwritten);
 *   mail       what waits in STORE's queue, into the cluster's queue
 *              through store/mailq.h (same name, Message-ID, bytes, next
 *              attempt); once the database has it, the local copy goes to
 *              STORE's failed/ with the reason "moved to the shared store",
 *              so no local mount sends it again;
 *   histories  store/history_import.h: verified in STORE, moved in one
 *              transaction per object with a checkpoint naming the
 *              cluster, verified again from the database.
 * STORE keeps its fields and histories (untouched): from now on it is
 * mounted with shared= only. Exit status 1 when anything was refused. */
#include "tool/tool.h"
#include "tool/fieldtool.h"
#include "crypto/engine.h"
#include "crypto/fingerprint.h"
#include "crypto/keyring.h"
#include "store/fields.h"
#include "store/history_import.h"
#include "store/mailq.h"
#include "store/pg.h"
#include "store/pg_cluster.h"
#include "store/storelock.h"
#include "store/store.h"
#include "common/err.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MOVED_REASON "moved to the shared store by hsmfs-tool migrate-store " \
	"(delivered from the cluster's queue, not from here)"

struct tally {
	unsigned long moved, there, conflicts, failed;
};

struct mig {
	const char *store;
	int storefd;
	struct pg *pg;
	const char *shared;
	char prefix[TLOG_ORIGIN_MAX];
	struct engine *e;
	struct keyring *kr;
	struct tally f, m, h;
	unsigned long h_invalid, h_unverified;
	int backend_missing;
};

static void
fail_line(const char *what, const char *name, const char *why)
{
	printf("%s %s: FAILED: %s\n", what, name, why);
}

/* ---- names (a listing callback may not change what it lists) ---- */

static void
names_cb(void *arg, const char *name)
{
	names_add(arg, name);
}

static int
names_obj_cb(const char *name, void *arg)
{
	names_add(arg, name);
	return 0;
}


/* ---- fields ---- */

struct fctx {
	struct mig *m;
	struct fields_store *local, *db;
};

static int
field_one(void *arg, const char *name)
{
	struct fctx *x = arg;
	struct fields_lock *lk = NULL;
	char *text = NULL, *dbtext = NULL;
	size_t len = 0, dblen = 0;
	int r;

	if ((r = fields_store_get(x->local, name, &text, &len)) != 0) {
		if (r != HSMFS_ERR_NOTFOUND) {
			fail_line("field", name, err_detail());
			x->m->f.failed++;
		}
		return 0;
	}
	if ((r = fields_store_lock(x->db, name, NULL, &lk)) == 0) {
		r = fields_store_put(x->db, name, text, len && text[len - 1] == '\n' ?
		    len - 1 : len, FIELDS_NOREPLACE);
		if (r == -EEXIST)
			r = fields_store_get(x->db, name, &dbtext, &dblen);
		fields_store_unlock(x->db, lk);
	}
	if (r == 0 && dbtext == NULL) {
		printf("field %s: moved\n", name);
		x->m->f.moved++;
	} else if (r == 0 && dblen == len && memcmp(dbtext, text, len) == 0) {
		printf("field %s: already there\n", name);
		x->m->f.there++;
	} else if (r == 0) {
		printf("field %s: CONFLICT: the database holds another envelope "
		    "under this name; not overwritten\n", name);
		x->m->f.conflicts++;
	} else {
		fail_line("field", name, err_detail());
		x->m->f.failed++;
	}
	free(text);
	free(dbtext);
	return r == HSMFS_ERR_NOMEM ? r : 0;
}

static int
migrate_fields(struct mig *m)
{
	struct store_conf local = { .dirfd = m->storefd };
	struct store_conf shared = { .dirfd = m->storefd, .shared = m->shared,
		.pg = m->pg };
	struct fctx x = { m, NULL, NULL };
	int r;

	if (faccessat(m->storefd, "fields", F_OK, 0) != 0)
		return 0;
	if ((r = fields_store_open(&local, &x.local)) == 0 &&
	    (r = fields_store_open(&shared, &x.db)) == 0)
		r = fields_store_list(x.local, field_one, &x);
	if (r != 0)
		fprintf(stderr, "hsmfs-tool migrate-store: fields: %s\n",
		    err_detail());
	fields_store_close(x.local);
	fields_store_close(x.db);
	return r;
}

/* ---- mail ---- */

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path) < 0 ? -1 : 0;
}

static int
same_entry(const struct mailq_entry *a, const struct mailq_entry *b)
{
	return strcmp(a->h.msgid, b->h.msgid) == 0 && a->h.msglen == b->h.msglen &&
	    memcmp(a->msg, b->msg, a->h.msglen) == 0;
}

/* What the cluster's queue has of name: -1 nothing, 0 the same message
 * (queued, sent or failed), 1 another message queued under that name. */
static int
db_has(struct mailq *db, const char *name, const struct mailq_entry *e,
    const char **where)
{
	static const struct { enum mailq_box box; const char *what; } boxes[] = {
		{ MAILQ_QUEUED, "queued" }, { MAILQ_SENT, "sent" },
		{ MAILQ_FAILED, "failed" },
	};
	for (size_t i = 0; i < sizeof(boxes) / sizeof(boxes[0]); i++) {
		struct mailq_entry d;
		int same;
		if (!mailq_exists(db, boxes[i].box, name) ||
		    mailq_read(db, boxes[i].box, name, &d) != 0)
			continue;
		same = same_entry(e, &d);
		mailq_entry_free(&d);
		*where = boxes[i].what;
		if (same)
			return 0;
		if (boxes[i].box == MAILQ_QUEUED)
			return 1;
	}
	return -1;
}

static void
mail_one(struct mig *m, struct mailq *lq, struct mailq *db, const char *name)
{
	struct mailq_item it;
	struct mailq_entry e;
	const char *where = NULL;
	int has, r;

	if (!mailq_find(lq, name, &it))
		return;
	if ((r = mailq_read(lq, MAILQ_QUEUED, name, &e)) != 0) {
		fail_line("mail", name, err_detail());
		m->m.failed++;
		return;
	}
	has = db_has(db, name, &e, &where);
	if (has == 1) {
		printf("mail %s %s: CONFLICT: the cluster's queue holds another "
		    "message under this name; left in the local queue\n", name,
		    e.h.msgid);
		m->m.conflicts++;
	} else if (has == 0) {
		printf("mail %s %s: already there (%s)\n", name, e.h.msgid, where);
		m->m.there++;
	} else if ((r = mailq_enqueue(db, name, &e.h, e.msg, e.h.siglen ? e.sig :
	    NULL, it.st.next - e.h.queued)) == 0) {
		printf("mail %s %s: moved\n", name, e.h.msgid);
		m->m.moved++;
	} else {
		fail_line("mail", name, err_detail());
		m->m.failed++;
	}
	/* The database has it (committed): the local copy must never be
	 * sent from STORE again. */
	if (has == 0 || (has < 0 && r == 0))
		mailq_fail(lq, name, MOVED_REASON);
	mailq_entry_free(&e);
}

static int
migrate_mail(struct mig *m)
{
	struct store_conf local = { .dirfd = m->storefd };
	struct store_conf shared = { .dirfd = -1, .shared = m->shared,
		.pg = m->pg };
	struct mailq *lq = NULL, *db = NULL;
	struct names ns = { 0 };
	char tmp[] = "/tmp/hsmfs-migrate-XXXXXX";
	long long oldest;
	size_t n;
	int r;

	if (faccessat(m->storefd, "mail", F_OK, 0) != 0)
		return 0;
	/* The cluster's queue keeps writers' staged entries under its
	 * node's STORE: give it an empty one of its own (the local queue
	 * is STORE's; opening it twice would count it as left behind). */
	if (mkdtemp(tmp) == NULL ||
	    (shared.dirfd = open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		fprintf(stderr, "hsmfs-tool migrate-store: %s: %s\n", tmp,
		    strerror(errno));
		return HSMFS_ERR_IO;
	}
	if ((r = mailq_open(&local, &lq, &n, &oldest)) == 0 &&
	    (r = mailq_open(&shared, &db, &n, &oldest)) == 0 &&
	    (r = mailq_list(lq, MAILQ_QUEUED, names_cb, &ns)) == 0 &&
	    (r = ns.err) == 0)
		for (size_t i = 0; i < ns.n; i++)
			mail_one(m, lq, db, ns.v[i]);
	if (r != 0)
		fprintf(stderr, "hsmfs-tool migrate-store: mail: %s\n", err_detail());
	else if (lq != NULL)
		r = mailq_sync(lq);
	names_free(&ns);
	mailq_close(db);
	mailq_close(lq);
	close(shared.dirfd);
	nftw(tmp, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	return r;
}

/* ---- histories ---- */

static void
history_line(struct mig *m, const struct hstore_import *im)
{
	char *b64 = util_b64_encode(im->root, TLOG_HASH_LEN);
	const char *what = im->outcome == HSTORE_IMPORT_MOVED ? "moved" :
	    "already there";

	if (im->db_check != 0) {
		printf("history %s: %s, but NOT verified from the database: %s\n",
		    im->object, what, im->reason);
		m->h_unverified++;
	} else if (im->backend_verify == HSMFS_ERR_UNSUPPORTED) {
		printf("history %s: %s, %" PRIu64 " records, root %s (read back "
		    "from the database and checked; not verified from the database "
		    "(backend missing))\n", im->object, what, im->records, b64);
		m->backend_missing = 1;
	} else if (im->backend_verify != 0) {
		printf("history %s: %s, but NOT verified from the database: %s\n",
		    im->object, what, im->reason);
		m->h_unverified++;
	} else {
		printf("history %s: %s, %" PRIu64 " records, root %s (verified "
		    "before and after)\n", im->object, what, im->records, b64);
	}
	free(b64);
}

static int
migrate_histories(struct mig *m)
{
	struct hstore_import_conf ic = { .storefd = m->storefd, .pg = m->pg,
		.shared = m->shared, .prefix = m->prefix };
	const struct engine_descriptor *newest;
	struct keyring_signer s, *vs = NULL;
	struct names ns = { 0 };
	EVP_PKEY **keys = NULL;
	size_t nv = 0;
	int r;

	if ((r = hstore_import_list(m->storefd, names_obj_cb, &ns)) != 0 ||
	    (r = ns.err) != 0) {
		fprintf(stderr, "hsmfs-tool migrate-store: history: %s\n",
		    err_detail());
		goto out;
	}
	if (ns.n == 0)
		goto out;
	if ((newest = engine_newest(m->e, ENGINE_OBJECT_HISTORY_SIGNER)) == NULL) {
		fprintf(stderr, "hsmfs-tool migrate-store: the store has histories "
		    "and the config no ObjectHistorySigner descriptor\n");
		r = HSMFS_ERR_CONFIG;
		goto out;
	}
	if ((r = keyring_signer_of(m->kr, newest, &s)) != 0 ||
	    (r = keyring_verifiers(m->kr, ENGINE_OBJECT_HISTORY_SIGNER, &vs,
	    &nv)) != 0 || (keys = calloc(nv + 1, sizeof(*keys))) == NULL) {
		fprintf(stderr, "hsmfs-tool migrate-store: %s\n", r ? err_detail() :
		    "out of memory");
		r = r ? r : HSMFS_ERR_NOMEM;
		goto out;
	}
	for (size_t i = 0; i < nv; i++)
		keys[i] = vs[i].pubkey;
	ic.signer = s.key;
	ic.keys = keys;
	ic.nkeys = nv;
	for (size_t i = 0; i < ns.n && r == 0; i++) {
		struct hstore_import im = { .object = ns.v[i] };
		if ((r = hstore_import_object(&ic, &im)) != 0) {
			fprintf(stderr, "hsmfs-tool migrate-store: history %s: %s\n",
			    ns.v[i], err_detail());
			break;
		}
		switch (im.outcome) {
		case HSTORE_IMPORT_MOVED:
		case HSTORE_IMPORT_THERE:
			*(im.outcome == HSTORE_IMPORT_MOVED ? &m->h.moved :
			    &m->h.there) += 1;
			history_line(m, &im);
			break;
		case HSTORE_IMPORT_CONFLICT:
			printf("history %s: CONFLICT: %s\n", im.object, im.reason);
			m->h.conflicts++;
			break;
		case HSTORE_IMPORT_INVALID:
			printf("history %s: NOT MOVED: %s\n", im.object, im.reason);
			m->h_invalid++;
			break;
		case HSTORE_IMPORT_FAILED:
			fail_line("history", im.object, im.reason);
			m->h.failed++;
			break;
		}
	}
out:
	free(keys);
	free(vs);
	names_free(&ns);
	return r;
}

/* ---- the run ---- */

static void
summary(const struct mig *m)
{
	printf("migrate-store: fields %lu moved, %lu already there, %lu "
	    "conflicts", m->f.moved, m->f.there, m->f.conflicts);
	if (m->f.failed)
		printf(", %lu failed", m->f.failed);
	printf("; histories %lu moved, %lu already there, %lu conflicts, %lu "
	    "not valid", m->h.moved, m->h.there, m->h.conflicts, m->h_invalid);
	if (m->h.failed)
		printf(", %lu failed", m->h.failed);
	if (m->h.moved + m->h.there > 0)
		printf(m->h_unverified ? " (%lu NOT verified from the database)" :
		    m->backend_missing ? " (roots checked in the database; not "
		    "verified from the database (backend missing))" :
		    " (roots verified)", m->h_unverified);
	printf("; mail %lu moved, %lu already there, %lu conflicts", m->m.moved,
	    m->m.there, m->m.conflicts);
	if (m->m.failed)
		printf(", %lu failed", m->m.failed);
	printf("\n");
	if (m->f.moved + m->h.moved + m->m.moved > 0)
		printf("note: from now on mount %s only with shared= (its fields "
		    "and histories stay in it, no longer current; its moved "
		    "messages are in its mail/failed/)\n", m->store);
}

static int
refused(const struct mig *m)
{
	return m->f.conflicts + m->f.failed + m->h.conflicts + m->h.failed +
	    m->h_invalid + m->h_unverified + m->m.conflicts + m->m.failed > 0 ||
	    m->backend_missing;
}

/* The cluster: schema, this configuration, the checkpoints' origin. */
static int
open_cluster(struct mig *m, const struct tool_opts *o)
{
	struct pg_conf pc = { .uri = o->shared, .password_file = o->shared_password,
		.node = "migrate-store", .pool_size = 2 };
	struct pg_cluster_info info;
	struct pg_conn *c = NULL;
	char *lines = NULL;
	int r;

	if ((r = engine_load(o->config, &m->e)) != 0 ||
	    (r = keyring_open(m->e, &m->kr)) != 0 ||
	    (r = fingerprint_lines(m->e, m->kr, &lines)) != 0 ||
	    (r = pg_open(&pc, &m->pg)) != 0 || (r = pg_acquire(m->pg, &c)) != 0)
		goto out;
	if ((r = pg_schema_check(c)) == 0 &&
	    (r = pg_cluster_config(c, PG_CLUSTER_CHECK, NULL, lines, NULL,
	    &info)) == 0)
		r = hstore_pg_origin_prefix(info.origin, m->prefix,
		    sizeof(m->prefix));
	pg_release(m->pg, c);
out:
	if (r != 0)
		fprintf(stderr, "hsmfs-tool migrate-store: %s\n", err_detail());
	free(lines);
	return r;
}

/* The store lock: migrate-store has STORE to itself. */
static int
lock_store(const char *store, int storefd, int *lockfd)
{
	char holder[4200];
	int r = storelock_take(storefd, lockfd, holder, sizeof(holder));

	if (r == 0) {
		if (*lockfd >= 0)
			storelock_set_owner(*lockfd, "hsmfs-tool-migrate-store", NULL);
		return 0;
	}
	if (r == 1)
		fprintf(stderr, "hsmfs-tool migrate-store: store %s is in use by PID "
		    "%s; unmount it first\n", store, holder);
	else
		fprintf(stderr, "hsmfs-tool migrate-store: store %s: cannot lock: "
		    "%s\n", store, err_detail());
	return -1;
}

int
cmd_migrate_store(int argc, char **argv)
{
	struct tool_opts o = { 0 };
	struct mig m;
	int lockfd = -1, rc = TOOL_USAGE, r, r2, r3;

	memset(&m, 0, sizeof(m));
	m.storefd = -1;
	for (int i = 1; i < argc; i++) {
		int k = tool_common_opt(argc, argv, &i, &o);
		if (k < 0)
			return TOOL_USAGE;
		if (k > 0)
			continue;
		if (argv[i][0] == '-' || m.store != NULL) {
			tool_usage(stderr, "migrate-store");
			return TOOL_USAGE;
		}
		m.store = argv[i];
	}
	if (m.store == NULL || o.config == NULL || o.shared == NULL) {
		tool_usage(stderr, "migrate-store");
		return TOOL_USAGE;
	}
	m.shared = o.shared;
	/* One line per step as it is done (a run watched, or killed). */
	setvbuf(stdout, NULL, _IOLBF, 0);
	if ((m.storefd = open(m.store, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		fprintf(stderr, "hsmfs-tool migrate-store: %s: %s\n", m.store,
		    strerror(errno));
		return TOOL_USAGE;
	}
	if (lock_store(m.store, m.storefd, &lockfd) != 0)
		goto out;
	if ((r = open_cluster(&m, &o)) != 0) {
		rc = r == HSMFS_ERR_CONFIG ? TOOL_FAIL : TOOL_USAGE;
		goto out;
	}
	/* Each area on its own: a failure of one (reported) stops only it. */
	r = migrate_fields(&m);
	r2 = migrate_mail(&m);
	r3 = migrate_histories(&m);
	summary(&m);
	rc = r || r2 || r3 ? TOOL_USAGE : refused(&m) ? TOOL_FAIL : TOOL_OK;
out:
	pg_close(m.pg);
	keyring_free(m.kr);
	engine_free(m.e);
	if (lockfd >= 0)
		close(lockfd);
	close(m.storefd);
	return rc;
}
