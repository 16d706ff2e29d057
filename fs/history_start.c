/* /history: start-up (keys, store id, index and anchor, recovery of every
 * object), verification of an object before reads, reload and stop. */
#include "fs/history_int.h"
#include "fs/fs.h"
#include "store/history.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "crypto/tlog.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/x509.h>

/* ---- loading and verification ---- */

struct load_ctx {
	struct hobj *o;
	struct hrec *recs;
	size_t cap;
	uint64_t n, content;
	struct tlog_tree tree;
	int err;
};

static int
load_frame(const struct tlog_frame *f, void *arg)
{
	struct load_ctx *l = arg;
	struct hrec r = { f->payload_offset, f->payload_len, l->content,
		f->rec.time_us, f->rec.uid, { 0 } };
	memcpy(r.leaf_hash, f->leaf_hash, TLOG_HASH_LEN);
	if (recs_push(&l->recs, &l->cap, l->n, &r) != 0) {
		l->err = HSMFS_ERR_NOMEM;
		return 1;
	}
	l->n++;
	l->content += f->payload_len;
	tlog_tree_append(&l->tree, f->leaf_hash);
	return 0;
}

/* Fill c->known with what the index and anchor say about o. */
static void
known_of_locked(const struct hobj *o, struct hstore_check *c)
{
	c->nknown = 0;
	if (o->known_size > 0) {
		c->known[0].size = o->known_size;
		memcpy(c->known[0].root, o->known_root, TLOG_HASH_LEN);
		c->known[0].what = "newest known (index or anchor)";
		c->nknown = 1;
	}
}

/* Shared store: the database's rows of o were found damaged (r is
 * HSMFS_ERR_BADMSG, err_detail() says how): o fails with EBADMSG and
 * user.hsmfs.verify says why. Returns r. */
static int
bad_row(struct hobj *o, int r)
{
	if (r == HSMFS_ERR_BADMSG) {
		pthread_mutex_lock(&H.lock);
		obj_set_bad_locked(o, err_detail());
		pthread_mutex_unlock(&H.lock);
	}
	return r;
}

/* Full check of o's file against its newest checkpoint, at mount
 * (recover = 1: cut unsigned or torn frames after the signed size, load
 * the record table) or when the file changed behind our back. */
int
obj_verify(struct hobj *o, int recover)
{
	struct tlog_checkpoint cp;
	struct hstore_check c;
	struct load_ctx l;
	char *cp_text = NULL;
	size_t used;
	struct stat st;
	struct hstore_obj *so;
	int r;

	memset(&cp, 0, sizeof(cp));
	memset(&c, 0, sizeof(c));
	memset(&l, 0, sizeof(l));
	tlog_tree_init(&l.tree);

	pthread_mutex_lock(&H.lock);
	so = o->so;
	if (o->cp_text && (cp_text = strdup(o->cp_text)) == NULL) {
		pthread_mutex_unlock(&H.lock);
		return HSMFS_ERR_NOMEM;
	}
	known_of_locked(o, &c);
	if (H.global_bad)
		obj_set_bad_locked(o, H.global_bad);
	r = o->bad && recover ? HSMFS_ERR_BADMSG : 0;
	pthread_mutex_unlock(&H.lock);
	if (r != 0)
		goto out;

	if (cp_text && tlog_checkpoint_parse(cp_text, strlen(cp_text), &cp,
	    &used) != 0) {
		pthread_mutex_lock(&H.lock);
		obj_set_bad_locked(o, "newest checkpoint does not parse");
		pthread_mutex_unlock(&H.lock);
		r = HSMFS_ERR_BADMSG;
		goto out;
	}
	c.cp = cp_text ? &cp : NULL;
	c.keys = H.vkeys;
	c.nkeys = H.nvkeys;
	if (recover) {
		c.cb = load_frame;
		c.arg = &l;
	}
	if (so == NULL) {
		if (c.cp != NULL || c.nknown > 0) {
			pthread_mutex_lock(&H.lock);
			obj_set_bad_locked(o, "history file is missing");
			pthread_mutex_unlock(&H.lock);
			r = HSMFS_ERR_BADMSG;
		}
		goto out;
	}
	if ((r = hstore_obj_stat(so, &st)) != 0) {
		bad_row(o, r);
		goto out;
	}
	r = hstore_obj_check(so, &c);
	if (r == 0 && l.err)
		r = l.err;
	if (r == HSMFS_ERR_BADMSG) {
		pthread_mutex_lock(&H.lock);
		obj_set_bad_locked(o, c.reason);
		pthread_mutex_unlock(&H.lock);
		goto out;
	}
	if (r != 0)
		goto out;
	if (recover) {
		/* Everything after the signed size was never acknowledged (a
		 * shared store has none: rows after it are another node's
		 * newer records, committed since its checkpoint was read). */
		if (st.st_size > c.signed_end && !H.shared) {
			log_warn("history/%s: cutting %lld unsigned byte(s) after "
			    "record %" PRIu64 " (%s)", o->name,
			    (long long)(st.st_size - c.signed_end), l.n,
			    c.torn ? c.torn : "complete but unsigned records");
			if ((r = hstore_obj_cut(so, c.signed_end, 1)) != 0) {
				err_prefix("history/%s: cannot cut the torn tail: ",
				    o->name);
				goto out;
			}
			if ((r = hstore_obj_stat(so, &st)) != 0)
				goto out;
		}
		pthread_mutex_lock(&H.lock);
		free(o->recs);
		o->recs = l.recs;
		o->cap = l.cap;
		l.recs = NULL;
		o->nrec = l.n;
		o->content_len = l.content;
		o->file_len = c.signed_end;
		o->tree = l.tree;
		obj_pend_reset_locked(o);
		o->signer = c.which_key;
		o->stamp = st;
		o->stamp_ok = 1;
		pthread_mutex_unlock(&H.lock);
	} else {
		pthread_mutex_lock(&H.lock);
		/* Only a file exactly as we left it refreshes the stamp; a
		 * file with in-flight frames after it is checked again. */
		if (st.st_size == o->file_len && c.good == o->nrec) {
			o->stamp = st;
			o->stamp_ok = 1;
		}
		o->signer = c.which_key;
		pthread_mutex_unlock(&H.lock);
	}
	r = 0;
out:
	free(l.recs);
	free(cp_text);
	tlog_checkpoint_clear(&cp);
	return r;
}

/* Shared store: o grew on other nodes. Check only the frames after what
 * this node verified, from its tree (the store's frames before them only
 * grow), against the newest checkpoint, and append their records. */
static int
obj_catch_up(struct hobj *o)
{
	struct tlog_checkpoint cp;
	struct hstore_check c;
	struct load_ctx l;
	struct tlog_tree from;
	struct hstore_obj *so;
	char *cp_text;
	size_t used;
	off_t from_off;
	int r;

	memset(&cp, 0, sizeof(cp));
	memset(&c, 0, sizeof(c));
	memset(&l, 0, sizeof(l));
	pthread_mutex_lock(&H.lock);
	so = o->so;
	cp_text = o->cp_text ? strdup(o->cp_text) : NULL;
	from = o->tree;
	from_off = o->file_len;
	l.content = o->content_len;
	l.tree = o->tree;
	known_of_locked(o, &c);
	pthread_mutex_unlock(&H.lock);
	if (cp_text == NULL)
		return HSMFS_ERR_NOMEM;
	if (tlog_checkpoint_parse(cp_text, strlen(cp_text), &cp, &used) != 0) {
		pthread_mutex_lock(&H.lock);
		obj_set_bad_locked(o, "newest checkpoint does not parse");
		pthread_mutex_unlock(&H.lock);
		r = HSMFS_ERR_BADMSG;
		goto out;
	}
	c.cp = &cp;
	c.keys = H.vkeys;
	c.nkeys = H.nvkeys;
	c.cb = load_frame;
	c.arg = &l;
	c.from = &from;
	c.from_off = from_off;
	r = hstore_obj_check(so, &c);
	if (r == 0 && l.err)
		r = l.err;
	pthread_mutex_lock(&H.lock);
	if (r == HSMFS_ERR_BADMSG) {
		obj_set_bad_locked(o, c.reason);
	} else if (r == 0 && (o->nrec != from.size || o->file_len != from_off)) {
		r = HSMFS_ERR_IO;     /* cannot happen under H.shared_mu */
		err_set("history/%s: changed while catching up", o->name);
	} else if (r == 0) {
		for (uint64_t k = 0; k < l.n && r == 0; k++)
			r = recs_push(&o->recs, &o->cap, o->nrec + k, &l.recs[k]);
		if (r == 0) {
			o->nrec += l.n;
			o->content_len = l.content;
			o->file_len = c.signed_end;
			o->tree = l.tree;
			o->signer = c.which_key;
			obj_pend_reset_locked(o);
		}
	}
	pthread_mutex_unlock(&H.lock);
out:
	free(l.recs);
	free(cp_text);
	tlog_checkpoint_clear(&cp);
	return r;
}

/* Shared store: o's newest checkpoint and frames from the database, then
 * the check and reload: of what is new (obj_catch_up) when this node
 * has verified records of o before, else whole (obj_verify). H.shared_mu held (a batch
 * holds it while it frames after o's state). */
int
obj_refresh_held(struct hobj *o)
{
	struct hstore_obj *so;
	char *text = NULL;
	size_t len = 0;
	int r, incremental;

	pthread_mutex_lock(&H.lock);
	so = o->so;
	pthread_mutex_unlock(&H.lock);
	if (so == NULL) {
		if ((r = hstore_obj_open(H.hs, o->name, 0, &so)) != 0)
			return r;
		pthread_mutex_lock(&H.lock);
		if (o->so == NULL) {
			o->so = so;
			so = NULL;
		}
		pthread_mutex_unlock(&H.lock);
		hstore_obj_close(so);
	}
	pthread_mutex_lock(&H.lock);
	so = o->so;
	pthread_mutex_unlock(&H.lock);
	if ((r = hstore_obj_newest(so, &text, &len)) != 0)
		return bad_row(o, r);
	pthread_mutex_lock(&H.lock);
	if (text != NULL) {
		free(o->cp_text);
		o->cp_text = text;
		o->cp_len = len;
	}
	pthread_mutex_unlock(&H.lock);
	if (text == NULL && o->known_size == 0)
		return 0;     /* a row without records yet */
	pthread_mutex_lock(&H.lock);
	H.catchups++;
	incremental = o->nrec > 0 && o->bad == NULL;
	pthread_mutex_unlock(&H.lock);
	return incremental ? obj_catch_up(o) : obj_verify(o, 1);
}

static int
obj_refresh(struct hobj *o)
{
	int r;
	pthread_mutex_lock(&H.shared_mu);
	r = obj_refresh_held(o);
	pthread_mutex_unlock(&H.shared_mu);
	return r;
}

/* Shared store, before reads: reload o when the database holds more of it
 * than this node has (another node appended). One statement when not. */
static int
obj_check_shared(struct hobj *o)
{
	struct stat st;
	struct hstore_obj *so;
	int r, fresh, had;

	/* What o held before asking: a commit published while the question
	 * is on its way is not in the answer. */
	pthread_mutex_lock(&H.lock);
	r = o->bad ? HSMFS_ERR_BADMSG : 0;
	so = o->so;
	had = o->nrec > 0 || o->known_size > 0;
	pthread_mutex_unlock(&H.lock);
	if (r != 0)
		return r;
	/* By its cache when it has one: a row that contradicts the records
	 * this node verified fails too, not only a longer one. */
	r = so ? hstore_obj_stat(so, &st) : hstore_object_stat(H.hs, o->name, &st);
	if (r == HSMFS_ERR_BADMSG)
		return bad_row(o, r);
	if (r == HSMFS_ERR_NOTFOUND) {
		if (!had)
			return 0;
		pthread_mutex_lock(&H.lock);
		obj_set_bad_locked(o, "its records vanished from the database");
		pthread_mutex_unlock(&H.lock);
		return HSMFS_ERR_BADMSG;
	}
	if (r != 0)
		return r;
	pthread_mutex_lock(&H.lock);
	fresh = st.st_size == o->file_len && (o->so != NULL || st.st_size == 0);
	pthread_mutex_unlock(&H.lock);
	return fresh ? 0 : obj_refresh(o);
}

/* Shared store: before an op looks name up, load it from the database if
 * another node created it, or bring it up to date. 0 or a code. */
int
obj_sync_shared(const char *name)
{
	struct hobj *o;
	int r;

	if (!H.shared)
		return 0;
	pthread_mutex_lock(&H.lock);
	o = obj_find_locked(name);
	pthread_mutex_unlock(&H.lock);
	if (o == NULL) {
		struct stat st;
		r = hstore_object_stat(H.hs, name, &st);
		if (r == HSMFS_ERR_NOTFOUND || (r == 0 && st.st_size == 0))
			return 0;
		if (r != 0 && r != HSMFS_ERR_BADMSG)
			return r;   /* a damaged row: o->bad answers, below */
		pthread_mutex_lock(&H.lock);
		o = obj_get_locked(name);
		pthread_mutex_unlock(&H.lock);
		if (o == NULL)
			return HSMFS_ERR_NOMEM;
	}
	r = obj_check_shared(o);
	return r == HSMFS_ERR_BADMSG ? 0 : r;   /* o->bad answers for it */
}

static int
stamp_same(const struct stat *a, const struct stat *b)
{
	return a->st_ino == b->st_ino && a->st_dev == b->st_dev &&
	    a->st_size == b->st_size &&
	    a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
	    a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
	    a->st_ctim.tv_sec == b->st_ctim.tv_sec &&
	    a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Before reads: is o (still) valid? Cheap when the file is exactly as the
 * last verification or our own last commit left it. */
int
obj_check(struct hobj *o)
{
	struct stat st;
	int ok;
	struct hstore_obj *so;

	if (H.shared)
		return obj_check_shared(o);
	pthread_mutex_lock(&H.lock);
	if (o->bad) {
		pthread_mutex_unlock(&H.lock);
		return HSMFS_ERR_BADMSG;
	}
	so = o->so;
	pthread_mutex_unlock(&H.lock);
	if (so == NULL)
		return 0;
	/* The file by name, not our fd: a replaced file must be noticed. */
	if (hstore_object_stat(H.hs, o->name, &st) != 0) {
		pthread_mutex_lock(&H.lock);
		obj_set_bad_locked(o, "history file is missing");
		pthread_mutex_unlock(&H.lock);
		return HSMFS_ERR_BADMSG;
	}
	pthread_mutex_lock(&H.lock);
	ok = o->stamp_ok && stamp_same(&st, &o->stamp);
	if (!ok && o->stamp_ok &&
	    (st.st_ino != o->stamp.st_ino || st.st_dev != o->stamp.st_dev))
		obj_set_bad_locked(o, "history file was replaced while mounted");
	pthread_mutex_unlock(&H.lock);
	if (ok)
		return 0;
	return obj_verify(o, 0);
}

/* ---- start / stop ---- */

static int
load_note(const char *object, const struct tlog_checkpoint *cp, void *arg)
{
	int is_anchor = *(int *)arg;
	struct hobj *o;
	if (!util_name_valid(object))
		return 0;
	pthread_mutex_lock(&H.lock);
	o = obj_get_locked(object);
	if (o == NULL) {
		pthread_mutex_unlock(&H.lock);
		return HSMFS_ERR_NOMEM;
	}
	if (!is_anchor) {
		/* The index only grows: the last note of an object is newest. */
		char *t = strdup(cp->text);
		if (t == NULL) {
			pthread_mutex_unlock(&H.lock);
			return HSMFS_ERR_NOMEM;
		}
		if (o->cp_text && cp->size < o->known_size)
			obj_set_bad_locked(o, "checkpoint index goes backwards");
		free(o->cp_text);
		o->cp_text = t;
		o->cp_len = cp->text_len;
	}
	if (cp->size > o->known_size) {
		o->known_size = cp->size;
		memcpy(o->known_root, cp->root, TLOG_HASH_LEN);
	} else if (cp->size == o->known_size &&
	    memcmp(cp->root, o->known_root, TLOG_HASH_LEN) != 0) {
		obj_set_bad_locked(o, is_anchor ? "anchor and index disagree on "
		    "the root" : "two checkpoints of one size with different roots");
	}
	pthread_mutex_unlock(&H.lock);
	return 0;
}

/* Read the index or the anchor (and cut a torn tail). Text that is not
 * notes fails every object, not the start. */
static int
load_notes(int is_anchor)
{
	int r = hstore_load_notes(H.hs, is_anchor, load_note, &is_anchor);
	if (r == HSMFS_ERR_BADMSG) {
		free(H.global_bad);
		H.global_bad = strdup(err_detail());
		log_err("history: %s; every object fails verification until it "
		    "is repaired", err_detail());
		return 0;
	}
	return r;
}

/* The signer and verification keys of a configuration: the newest
 * ObjectHistorySigner (on a shared store the newest every node has, so
 * that every node verifies what this one signs) first (index 0 signs,
 * o->signer = 0), then every other configured version. */
struct hkeys {
	hsm_key *signer;
	EVP_PKEY **vkeys;
	X509 **vcerts;
	size_t nvkeys;
};

static int
hkeys_of(const struct engine *e, struct keyring *kr, struct hkeys *hk)
{
	const struct engine_descriptor *newest =
	    engine_newest(e, ENGINE_OBJECT_HISTORY_SIGNER);
	struct keyring_signer s, *v;
	size_t n;
	int r;

	memset(hk, 0, sizeof(*hk));
	if (newest == NULL) {
		err_set("no ObjectHistorySigner descriptor in the config");
		return HSMFS_ERR_UNSUPPORTED;
	}
	if ((r = fs_cluster_newest(e, ENGINE_OBJECT_HISTORY_SIGNER, "history",
	    &newest)) != 0 || (r = keyring_signer_of(kr, newest, &s)) != 0)
		return r;
	hk->signer = s.key;
	if ((r = keyring_verifiers(kr, ENGINE_OBJECT_HISTORY_SIGNER, &v, &n)) != 0)
		return r;
	hk->vkeys = calloc(n + 1, sizeof(*hk->vkeys));
	hk->vcerts = calloc(n + 1, sizeof(*hk->vcerts));
	if (hk->vkeys == NULL || hk->vcerts == NULL) {
		free(hk->vkeys);
		free(hk->vcerts);
		free(v);
		return HSMFS_ERR_NOMEM;
	}
	/* The signer's certificate first (o->signer = 0 after a commit). */
	hk->vkeys[hk->nvkeys] = s.pubkey;
	hk->vcerts[hk->nvkeys++] = s.cert;
	for (size_t i = 0; i < n; i++) {
		if (X509_cmp(v[i].cert, s.cert) == 0)
			continue;
		hk->vkeys[hk->nvkeys] = v[i].pubkey;
		hk->vcerts[hk->nvkeys++] = v[i].cert;
	}
	free(v);
	return 0;
}

static int
load_keys(void)
{
	struct hkeys hk;
	int r;

	if ((r = hkeys_of(hsmfs_ctx->engine, hsmfs_ctx->keys, &hk)) != 0)
		return r;
	H.signer = hk.signer;
	H.vkeys = hk.vkeys;
	H.vcerts = hk.vcerts;
	H.nvkeys = hk.nvkeys;
	return 0;
}

/* Reload: new checkpoints are signed with the new newest version; every
 * configured version verifies. The signer is read by committing threads
 * under the configuration read lock (run_batch_locked), so the swap under
 * the write lock is never seen half done. Objects remember their newest
 * checkpoint's signer as an index: remap it to the new order. */
int
history_reload_prepare(const struct engine *e, struct keyring *kr, void **next)
{
	struct hkeys *hk = malloc(sizeof(*hk));
	int r;

	if (hk == NULL)
		return HSMFS_ERR_NOMEM;
	if ((r = hkeys_of(e, kr, hk)) != 0) {
		free(hk);
		return r;
	}
	*next = hk;
	return 0;
}

void
history_reload_finish(void *next, int commit)
{
	struct hkeys *hk = next;

	if (hk == NULL)
		return;
	if (commit) {
		pthread_mutex_lock(&H.lock);
		for (unsigned b = 0; b < NBUCKETS; b++)
			for (struct hobj *o = H.buckets[b]; o; o = o->next) {
				X509 *c;
				if (o->signer < 0 || (size_t)o->signer >= H.nvkeys)
					continue;
				c = H.vcerts[o->signer];
				o->signer = -1;
				for (size_t i = 0; c && i < hk->nvkeys; i++)
					if (hk->vcerts[i] && X509_cmp(hk->vcerts[i], c) == 0) {
						o->signer = (int)i;
						break;
					}
			}
		if (hk->signer != H.signer)
			log_info("history: new checkpoints are signed with key %s",
			    keyring_key_name(hk->signer));
		free(H.vkeys);
		free(H.vcerts);
		H.signer = hk->signer;
		H.vkeys = hk->vkeys;
		H.vcerts = hk->vcerts;
		H.nvkeys = hk->nvkeys;
		pthread_mutex_unlock(&H.lock);
	} else {
		free(hk->vkeys);
		free(hk->vcerts);
	}
	free(hk);
}

/* Start step: the history area (directories, store id, index, anchor)
 * and what its index and anchor know. */
static int
start_area(void)
{
	struct store_conf conf = hsmfs_ctx->sconf;
	int r;

	if ((r = hstore_open(&conf, hsmfs_ctx->opt.history_anchor, &H.hs)) != 0)
		return r;
	/* Shared: objects are loaded from the database when first used (their
	 * rows are the index); the node-local anchor still says what this
	 * node acknowledged. */
	if ((H.shared = hstore_is_shared(H.hs)))
		return load_notes(1);
	if (hstore_index_lost(H.hs)) {
		H.global_bad = strdup("the checkpoint index is missing");
		log_err("history: %s/%s is missing but objects exist",
		    HSTORE_DIR, HSTORE_CHECKPOINTS);
	}
	if ((r = load_notes(0)) != 0)
		return r;
	return load_notes(1);
}

/* Start step: open every object file; objects named by the index but
 * without a file are reported by obj_verify. */
static int
open_one(const char *name, void *arg)
{
	struct hobj *o;

	pthread_mutex_lock(&H.lock);
	o = obj_get_locked(name);
	pthread_mutex_unlock(&H.lock);
	if (o == NULL)
		return HSMFS_ERR_NOMEM;
	if (hstore_obj_open(H.hs, name, 0, &o->so) != 0)
		log_err("history/%s: %s", name, err_detail());
	return 0;
}

/* Start step: verify every object, cutting what was never acknowledged.
 * An object that cannot be checked fails verification; start goes on. */
static void
start_recover(void)
{
	for (unsigned b = 0; b < NBUCKETS; b++) {
		for (struct hobj *o = H.buckets[b]; o; o = o->next) {
			int r;
			err_clear();
			r = obj_verify(o, 1);
			if (r != 0 && r != HSMFS_ERR_BADMSG) {
				fs_log_fail("history", o->name, NULL, "recovery", r);
				pthread_mutex_lock(&H.lock);
				obj_set_bad_locked(o, err_detail());
				pthread_mutex_unlock(&H.lock);
			}
		}
	}
}

/* Release everything start opened or loaded: after a failed start (no
 * thread runs) and at stop (threads joined). Leaves H as before start. */
static void
history_release(void)
{
	pthread_mutex_lock(&H.lock);
	for (unsigned b = 0; b < NBUCKETS; b++) {
		struct hobj *o = H.buckets[b], *next;
		for (; o; o = next) {
			next = o->next;
			hstore_obj_close(o->so);
			free(o->name);
			free(o->bad);
			free(o->recs);
			free(o->cp_text);
			free(o);
		}
		H.buckets[b] = NULL;
	}
	H.nobjects = 0;
	hstore_close(H.hs);
	H.hs = NULL;
	free(H.global_bad);
	H.global_bad = NULL;
	free(H.vkeys);
	free(H.vcerts);
	H.vkeys = NULL;
	H.vcerts = NULL;
	H.nvkeys = 0;
	H.signer = NULL;
	pthread_mutex_unlock(&H.lock);
}

/* Start: keys, directories, store id, index, anchor, objects, recovery,
 * then the committer. Any failure releases what the steps before opened,
 * so a folder that did not start holds nothing. */
int
history_start(void)
{
	int r;

	if ((r = load_keys()) != 0 || (r = start_area()) != 0 ||
	    (!H.shared && (r = hstore_list_objects(H.hs, open_one, NULL)) != 0))
		goto fail;
	if (!H.shared)
		start_recover();
	H.compact_at = 64 << 20;
	{
		/* Tests shrink the threshold to exercise compaction. */
		const char *c = getenv("HSMFS_HISTORY_COMPACT_BYTES");
		if (c && atol(c) > 0)
			H.compact_at = atol(c);
	}
	if ((r = history_commit_start()) != 0)
		goto fail;
	H.running = 1;
	H.configured = 1;
	log_info("history: %" PRIu64 " object(s), signing with %s%s%s", H.nobjects,
	    keyring_key_name(H.signer), hstore_anchor(H.hs) ? ", anchor " : "",
	    hstore_anchor(H.hs) ? hstore_anchor(H.hs) : "");
	return 0;
fail:
	history_release();
	return r;
}

/* Safe whatever start did: a failed start released everything itself
 * (nothing runs); after a successful one the threads are joined and the
 * queue drained. Objects and descriptors stay: ops may still look them
 * up until the mount is gone, and the process exits after it. */
void
history_stop(void)
{
	pthread_mutex_lock(&H.lock);
	if (!H.running) {
		pthread_mutex_unlock(&H.lock);
		return;
	}
	H.stopping = 1;
	pthread_cond_signal(&H.queue_cv);
	pthread_mutex_unlock(&H.lock);
	history_commit_stop();
	pthread_mutex_lock(&H.lock);
	H.running = 0;
	pthread_mutex_unlock(&H.lock);
}
