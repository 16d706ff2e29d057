/* /fields: secret fields as plaintext files (NAME) and as their NX02
 * envelopes (.sealed/NAME). Owns the open-file state of both views; the
 * values live in the fields area of the store (store/fields.h). A
 * plaintext exists only in the secure buffer of an open file (filled by
 * an HSM unwrap at open, or by writes), and is wiped at release and on
 * every error path; only envelopes reach the store. Writers' temporaries
 * (".NAME": vim's swap file, rsync's temp) are sealed at close like any
 * value, kept node-local in STORE/fields/.temp/ (a directory
 * fields_store) and published by rename(), which puts their text into
 * the store. */
#include "fs/fs.h"
#include "store/fields.h"
#include "store/store.h"
#include "fs/temp.h"
#include "crypto/envelope.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/x509.h>

#define FOLDER "fields"
#define SEALED ".sealed"

/* Set in start() and by a reload (under the configuration write lock). */
static struct fields_store *store_;   /* the fields */
static struct fields_store *tstore;   /* writers' temporaries, node-local */
static struct temp_area temps = TEMP_AREA_INIT;
static const struct engine_descriptor *newest;  /* NULL: writes refused */
static hsm_key *newest_key;
static X509 *newest_cert;                        /* borrowed from the key */

enum kind { K_ROOT, K_SEALED_DIR, K_FIELD, K_SEALED };

struct fh {
	pthread_mutex_t lock;     /* one writer/reader of buf at a time */
	enum kind kind;
	char name[256];
	int writable, append;
	int dirty;                /* changed since the last commit */
	int created;              /* not in the store until the first commit */
	int orphan;               /* its name was removed or replaced: the
	                             value dies with the file, as on disk */
	uint8_t *buf;             /* plaintext (secure memory) or envelope text */
	size_t len, cap;
	struct fh *next;          /* open writers, under writers_lock */
};
/* name and orphan of a writer change under writers_lock (rm, mv while
 * open); everything else of a fh under its own lock. */

/* Open writers, for stat sizes and listings of values not yet committed
 * (regular-file semantics until close). */
static pthread_mutex_t writers_lock = PTHREAD_MUTEX_INITIALIZER;
static struct fh *writers;

/* Split a folder-relative path. Returns 0, -EINVAL for a bad name,
 * -ENOENT for anything else. */
static int
parse_path(const char *path, enum kind *kind, const char **name)
{
	*name = NULL;
	if (*path == '\0') {
		*kind = K_ROOT;
		return 0;
	}
	if (strcmp(path, SEALED) == 0) {
		*kind = K_SEALED_DIR;
		return 0;
	}
	if (strncmp(path, SEALED "/", sizeof(SEALED)) == 0) {
		*kind = K_SEALED;
		*name = path + sizeof(SEALED);
	} else {
		*kind = K_FIELD;
		*name = path;
	}
	if (strchr(*name, '/') != NULL)
		return -ENOENT;
	return temp_name_ok(*name) ? 0 : -EINVAL;
}

/* Where the envelope of a name lives: a temporary's in the temp area. */
static struct fields_store *
store_of(const char *name)
{
	return temp_name(name) ? tstore : store_;
}

static int
stored(const char *name)
{
	struct fields_meta m;
	return fields_store_stat(store_of(name), name, &m, NULL, 0) == 0;
}

static int
fail(const char *name, const char *key, const char *what, int r)
{
	fs_log_fail(FOLDER, name, key, what, r);
	return -hsmfs_err_errno(r);
}

static struct fh *
fh_of(struct fuse_file_info *fi)
{
	return fi ? (struct fh *)(uintptr_t)fi->fh : NULL;
}

static void
fh_free(struct fh *f)
{
	if (f == NULL)
		return;
	if (f->kind == K_FIELD)
		secmem_free(f->buf, f->cap);
	else
		free(f->buf);
	pthread_mutex_destroy(&f->lock);
	free(f);
}

static void
writer_add(struct fh *f)
{
	pthread_mutex_lock(&writers_lock);
	f->next = writers;
	writers = f;
	pthread_mutex_unlock(&writers_lock);
}

static void
writer_remove(struct fh *f)
{
	pthread_mutex_lock(&writers_lock);
	for (struct fh **p = &writers; *p; p = &(*p)->next)
		if (*p == f) {
			*p = f->next;
			break;
		}
	pthread_mutex_unlock(&writers_lock);
}

/* Open writers follow their name like open files on disk: after mv
 * from -> to they commit under to, a writer of a replaced or removed
 * name (to == NULL: rm) becomes an orphan whose value is dropped. */
static void
writers_renamed(const char *from, const char *to, int exchange)
{
	pthread_mutex_lock(&writers_lock);
	for (struct fh *f = writers; f; f = f->next) {
		if (strcmp(f->name, from) == 0) {
			if (to == NULL)
				f->orphan = 1;
			else
				snprintf(f->name, sizeof(f->name), "%s", to);
		} else if (to != NULL && strcmp(f->name, to) == 0) {
			if (exchange)
				snprintf(f->name, sizeof(f->name), "%s", from);
			else
				f->orphan = 1;
		}
	}
	pthread_mutex_unlock(&writers_lock);
}

/* Size a pending writer shows for name in a view, or -1. Reading len
 * without the fh lock is a benign race for a stat size. */
static off_t
writer_size(const char *name, enum kind kind, int need_created)
{
	off_t sz = -1;
	pthread_mutex_lock(&writers_lock);
	for (struct fh *f = writers; f; f = f->next)
		if (f->kind == kind && strcmp(f->name, name) == 0 &&
		    (f->dirty || f->created) && (!need_created || f->created)) {
			sz = (off_t)__atomic_load_n(&f->len, __ATOMIC_RELAXED);
			break;
		}
	pthread_mutex_unlock(&writers_lock);
	return sz;
}

/* Grow f->buf to hold n bytes (new bytes zero). */
static int
fh_reserve(struct fh *f, size_t n)
{
	size_t cap;
	uint8_t *nb;
	if (n <= f->cap)
		return 0;
	cap = f->cap ? f->cap : 4096;
	while (cap < n)
		cap *= 2;
	/* Envelopes are not secret: the locked heap is kept for plaintext. */
	nb = f->kind == K_FIELD ? secmem_realloc(f->buf, f->cap, cap) :
	    realloc(f->buf, cap);
	if (nb == NULL)
		return -ENOMEM;
	memset(nb + f->cap, 0, cap - f->cap);
	f->buf = nb;
	f->cap = cap;
	return 0;
}

static size_t
view_max(enum kind k)
{
	return k == K_FIELD ? ENVELOPE_MAX_PLAINTEXT : FIELDS_TEXT_MAX;
}

/* Decrypt the stored field into f->buf (HSM unwrap). */
static int
load_plain(struct fh *f)
{
	struct envelope env;
	const struct engine_descriptor *d = NULL;
	hsm_key *k;
	char *text = NULL;
	uint8_t *pt = NULL;
	size_t tl = 0, ptl = 0;
	int r;

	if ((r = fields_store_get(store_of(f->name), f->name, &text, &tl)) != 0)
		return r == HSMFS_ERR_NOTFOUND ? -ENOENT : fail(f->name, NULL, "read", r);
	r = envelope_parse_text(text, tl, &env);
	free(text);
	if (r != 0)
		return fail(f->name, NULL, "stored envelope", r);
	if ((r = envelope_find_key(hsmfs_ctx->engine, hsmfs_ctx->keys, &env.h,
	    &d, &k)) != 0 || (r = envelope_open(&env, k, &pt, &ptl)) != 0) {
		envelope_clear(&env);
		return fail(f->name, d ? d->key_name : NULL, "open envelope", r);
	}
	envelope_clear(&env);
	/* Adopt the secure buffer rather than copy it: one plaintext copy,
	 * and half the secure heap for large values. Past ptl it holds only
	 * padding, so cap = ptl wipes everything secret at release. */
	secmem_free(f->buf, f->cap);
	f->buf = pt;
	f->len = f->cap = ptl;
	return 0;
}

static int
load_sealed(struct fh *f)
{
	char *text = NULL;
	size_t tl = 0;
	int r;
	if ((r = fields_store_get(store_of(f->name), f->name, &text, &tl)) != 0)
		return r == HSMFS_ERR_NOTFOUND ? -ENOENT : fail(f->name, NULL, "read", r);
	if ((r = fh_reserve(f, tl)) == 0 && tl > 0) {
		memcpy(f->buf, text, tl);
		f->len = tl;
	}
	free(text);
	return r;
}

/* The envelope line for a plaintext buffer: sealed with the newest
 * descriptor. */
static int
text_plain_locked(struct fh *f, const char *name, char **text, size_t *tl)
{
	uint8_t *bin = NULL;
	size_t bl = 0;
	int r;

	if ((r = envelope_seal(newest, newest_cert,
	    f->buf ? f->buf : (const uint8_t *)"", f->len, &bin, &bl)) != 0)
		return fail(name, newest->key_name, "seal", r);
	*text = envelope_to_text(bin, bl, tl);
	free(bin);
	return *text ? 0 : -ENOMEM;
}

/* The envelope line for an import: it must parse, name a configured key
 * version and, since every configured key is open, authenticate (opened
 * and wiped). Stored canonical (the input may end in CRLF). */
static int
text_sealed_locked(struct fh *f, const char *name, char **text, size_t *tl)
{
	struct envelope env;
	const struct engine_descriptor *d = NULL;
	hsm_key *k;
	uint8_t *pt = NULL;
	size_t ptl = 0;
	int r;

	if ((r = envelope_parse_text((const char *)f->buf, f->len, &env)) != 0)
		return fail(name, NULL, "import", r);
	if ((r = envelope_find_key(hsmfs_ctx->engine, hsmfs_ctx->keys, &env.h,
	    &d, &k)) != 0 || (r = envelope_open(&env, k, &pt, &ptl)) != 0) {
		envelope_clear(&env);
		return fail(name, d ? d->key_name : NULL, "import", r);
	}
	envelope_free_plain(pt, ptl);
	*text = envelope_to_text(env.bin, env.bin_len, tl);
	envelope_clear(&env);
	return *text ? 0 : -ENOMEM;
}

/* The writer's current name, or 0 when it is an orphan. */
static int
writer_name(struct fh *f, char name[256])
{
	int alive;
	pthread_mutex_lock(&writers_lock);
	memcpy(name, f->name, sizeof(f->name));
	alive = !f->orphan;
	pthread_mutex_unlock(&writers_lock);
	return alive;
}

/* Seal or check, then put the text under the writer's name, holding
 * that name's lock. The name is read again under the lock: a mv or rm of
 * the open file (which take the same lock) either happened before, and
 * we follow it, or waits until the value is in place. */
static int
commit_locked(struct fh *f)
{
	char name[256], again[256], *text = NULL;
	struct fields_lock *lk;
	size_t tl = 0;
	int r;

	if (!f->writable || !f->dirty)
		return 0;
	if (!writer_name(f, name))
		goto orphan;
	r = f->kind == K_FIELD ? text_plain_locked(f, name, &text, &tl) :
	    text_sealed_locked(f, name, &text, &tl);
	if (r != 0)
		return r;
	for (;;) {
		if ((r = fields_store_lock(store_, name, NULL, &lk)) != 0) {
			free(text);
			return fail(name, NULL, "lock", r);
		}
		if (!writer_name(f, again)) {
			fields_store_unlock(store_, lk);
			free(text);
			goto orphan;
		}
		if (strcmp(again, name) == 0)
			break;
		fields_store_unlock(store_, lk);
		memcpy(name, again, sizeof(name));
	}
	r = fields_store_put(store_of(name), name, text, tl, 0);
	fields_store_unlock(store_, lk);
	free(text);
	if (r != 0)
		return fail(name, NULL, "store", r);
	f->dirty = 0;
	f->created = 0;
	return 0;
orphan:
	f->dirty = 0;
	return 0;
}

/* ---- folder operations ---- */

/* The newest EncryptedFields version of e and its open key in kr. */
struct fields_keys {
	const struct engine_descriptor *newest;
	hsm_key *key;
	X509 *cert;
};

static int
fields_keys_of(const struct engine *e, struct keyring *kr,
    struct fields_keys *out)
{
	struct keyring_signer s;
	int r;

	for (size_t i = 0; i < e->ndescs; i++)
		if (strcmp(e->descs[i].name, ENGINE_ENCRYPTED_FIELDS) == 0 &&
		    (r = envelope_descriptor_check(&e->descs[i])) != 0)
			return r;
	if ((out->newest = engine_newest(e, ENGINE_ENCRYPTED_FIELDS)) == NULL) {
		err_set("no EncryptedFields descriptor in %s", e->path);
		return HSMFS_ERR_UNSUPPORTED;
	}
	/* Seal only with a version every node can open. */
	if ((r = fs_cluster_newest(e, ENGINE_ENCRYPTED_FIELDS, "fields",
	    &out->newest)) != 0)
		return r;
	if (keyring_signer_of(kr, out->newest, &s) != 0)
		return HSMFS_ERR_CONFIG;
	out->key = s.key;
	out->cert = s.cert;
	return 0;
}

static int
fields_start(void)
{
	const struct store_conf sc = hsmfs_ctx->sconf;
	struct fields_keys fk;
	int fd, r;

	if ((r = fields_store_open(&sc, &store_)) != 0)
		return r;
	fields_store_recover(store_, 0);   /* no other writer while mounted */
	if ((fd = fields_store_node_dir(&sc)) < 0)
		return fd;
	r = temp_area_open(&temps, fd, -1, -1);
	close(fd);
	if (r != 0 || (r = fields_store_open_dir(temps.dirfd, &tstore)) != 0)
		return r;
	if ((r = fields_keys_of(hsmfs_ctx->engine, hsmfs_ctx->keys, &fk)) != 0)
		return r;
	newest = fk.newest;
	newest_key = fk.key;
	newest_cert = fk.cert;
	log_info("fields: new values use EncryptedFields version %d (key %s)",
	    newest->version, newest->key_name);
	return 0;
}

/* Reload: new values use the new newest version; reads find any
 * configured version per envelope (hsmfs_ctx, swapped by fs/main.c). */
static int
fields_reload_prepare(const struct engine *e, struct keyring *kr, void **next)
{
	struct fields_keys *fk = malloc(sizeof(*fk));
	int r;

	if (fk == NULL)
		return HSMFS_ERR_NOMEM;
	if ((r = fields_keys_of(e, kr, fk)) != 0) {
		free(fk);
		return r;
	}
	*next = fk;
	return 0;
}

static void
fields_reload_finish(void *next, int commit)
{
	struct fields_keys *fk = next;

	if (fk != NULL && commit) {
		if (fk->newest->version != newest->version ||
		    strcmp(fk->newest->key_name, newest->key_name) != 0)
			log_info("fields: new values now use EncryptedFields version "
			    "%d (key %s)", fk->newest->version, fk->newest->key_name);
		newest = fk->newest;
		newest_key = fk->key;
		newest_cert = fk->cert;
	}
	free(fk);
}

static void
fields_stop(void)
{
	fields_store_close(tstore);
	fields_store_close(store_);
	tstore = store_ = NULL;
	temp_area_close(&temps);
}

static void
fields_status(FILE *out)
{
	if (newest)
		fprintf(out, "fields.version: %d\nfields.key: %s\n", newest->version,
		    newest->key_name);
}

static void
fields_metrics(struct metrics *m)
{
	if (newest)
		metrics_add(m, METRIC_GAUGE, "hsmfs_descriptor_version",
		    "Descriptor version used for new work, by descriptor and key",
		    newest->version, "descriptor", "EncryptedFields",
		    "key", newest->key_name, (char *)NULL);
}

/* Plaintext size from the envelope header: no HSM. A damaged value
 * shows 0 and fails at open, where it is logged. */
static off_t
plain_size(const char *head, size_t n)
{
	struct envelope_header h;

	if (n == ENVELOPE_TEXT_HEADER_LEN &&
	    envelope_peek_text_header(head, n, &h) == 0 &&
	    h.plain_len <= ENVELOPE_MAX_PLAINTEXT)
		return (off_t)h.plain_len;
	return 0;
}

static int
fields_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	char head[ENVELOPE_TEXT_HEADER_LEN];
	enum kind kind;
	const char *name;
	struct fields_meta m;
	struct fh *f = fh_of(fi);
	off_t sz;
	int r;

	if ((r = parse_path(path, &kind, &name)) != 0)
		return r;
	if (kind == K_ROOT || kind == K_SEALED_DIR) {
		fs_stat_dir(st);
		return 0;
	}
	if (store_ == NULL)
		return -ENOENT;
	if (f != NULL && f->writable) {
		fs_stat_file(st, 0600, (off_t)f->len, time(NULL));
		return 0;
	}
	sz = writer_size(name, kind, 0);
	r = fields_store_stat(store_of(name), name, &m,
	    sz < 0 && kind == K_FIELD ? head : NULL, sizeof(head));
	if (r == HSMFS_ERR_NOTFOUND) {
		if ((sz = writer_size(name, kind, 1)) < 0)
			return -ENOENT;
		fs_stat_file(st, 0600, sz, time(NULL));
		return 0;
	}
	if (r != 0)
		return -hsmfs_err_errno(r);
	if (sz < 0)
		sz = kind == K_SEALED ? (off_t)m.size : plain_size(head, m.head_len);
	fs_stat_file(st, 0600, sz, m.mtime);
	return 0;
}

struct fill_arg {
	void *buf;
	fuse_fill_dir_t fill;
};

static int
fill_one(void *arg, const char *name)
{
	struct fill_arg *fa = arg;
	fa->fill(fa->buf, name, NULL, 0, 0);
	return 0;
}

static int
fields_readdir(const char *path, void *buf, fuse_fill_dir_t fill)
{
	struct fill_arg fa = { buf, fill };
	enum kind kind, want;
	const char *name;
	int r;

	if ((r = parse_path(path, &kind, &name)) != 0)
		return r;
	if (kind != K_ROOT && kind != K_SEALED_DIR)
		return -ENOTDIR;
	want = kind == K_ROOT ? K_FIELD : K_SEALED;
	fill(buf, ".", NULL, 0, 0);
	fill(buf, "..", NULL, 0, 0);
	/* .sealed is reachable by name but not listed (like a .snapshot
	 * directory): find, backups and scripts iterating over the fields
	 * see each field once, as plaintext. */
	if (store_ == NULL)
		return 0;
	temp_area_sweep(&temps);
	if ((r = fields_store_list(store_, fill_one, &fa)) != 0)
		return fail("", NULL, "list", r);
	/* Created but not yet closed: visible like a new regular file. */
	pthread_mutex_lock(&writers_lock);
	for (struct fh *f = writers; f; f = f->next)
		if (f->kind == want && f->created && util_name_valid(f->name) &&
		    !stored(f->name))
			fill(buf, f->name, NULL, 0, 0);
	pthread_mutex_unlock(&writers_lock);
	return 0;
}

static int
fh_new(enum kind kind, const char *name, struct fuse_file_info *fi,
    struct fh **out)
{
	struct fh *f = calloc(1, sizeof(*f));
	if (f == NULL)
		return -ENOMEM;
	pthread_mutex_init(&f->lock, NULL);
	f->kind = kind;
	snprintf(f->name, sizeof(f->name), "%s", name);
	f->writable = (fi->flags & O_ACCMODE) != O_RDONLY;
	f->append = (fi->flags & O_APPEND) != 0;
	*out = f;
	return 0;
}

static int
refuse_write(const char *name)
{
	log_err("%s/%s: write refused: EncryptedFields is not configured "
	    "(add the descriptor and its key to the config)", FOLDER, name);
	return -EOPNOTSUPP;
}

static int
fields_open(const char *path, struct fuse_file_info *fi)
{
	enum kind kind;
	const char *name;
	struct fh *f = NULL;
	int r;

	if ((r = parse_path(path, &kind, &name)) != 0)
		return r;
	if (kind == K_ROOT || kind == K_SEALED_DIR)
		return -EISDIR;
	if (store_ == NULL)
		return -ENOENT;
	if ((fi->flags & O_ACCMODE) != O_RDONLY && newest == NULL)
		return refuse_write(name);
	if ((r = fh_new(kind, name, fi, &f)) != 0)
		return r;
	if (f->writable && (fi->flags & O_TRUNC || !stored(name))) {
		/* Truncation is a change even if nothing is written. A
		 * name missing from the store here was created (the kernel
		 * strips O_CREAT from open) or its create failed at close
		 * while the kernel still caches the entry: start empty. */
		f->dirty = 1;
		f->created = !stored(name);
	} else {
		r = kind == K_FIELD ? load_plain(f) : load_sealed(f);
		if (r != 0) {
			fh_free(f);
			return r;
		}
	}
	fi->direct_io = 1;
	fi->keep_cache = 0;
	fi->fh = (uint64_t)(uintptr_t)f;
	if (f->writable)
		writer_add(f);
	return 0;
}

static int
fields_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	enum kind kind;
	const char *name;
	struct fh *f = NULL;
	int r;

	if ((r = parse_path(path, &kind, &name)) != 0)
		return r;
	if (kind == K_ROOT || kind == K_SEALED_DIR)
		return -EEXIST;
	if (newest == NULL || store_ == NULL)
		return refuse_write(name);
	if (temp_name(name))
		temp_area_sweep(&temps);
	if ((r = fh_new(kind, name, fi, &f)) != 0)
		return r;
	f->writable = 1;
	f->dirty = 1;
	f->created = !stored(name);
	fi->direct_io = 1;
	fi->keep_cache = 0;
	fi->fh = (uint64_t)(uintptr_t)f;
	writer_add(f);
	return 0;
}

static int
fields_read(const char *path, char *buf, size_t size, off_t off,
    struct fuse_file_info *fi)
{
	struct fh *f = fh_of(fi);
	size_t n = 0;
	if (f == NULL)
		return -EBADF;
	pthread_mutex_lock(&f->lock);
	if (off >= 0 && (size_t)off < f->len) {
		n = f->len - (size_t)off;
		if (n > size)
			n = size;
		memcpy(buf, f->buf + off, n);
	}
	pthread_mutex_unlock(&f->lock);
	return (int)n;
}

static int
fields_write(const char *path, const char *buf, size_t size, off_t off,
    struct fuse_file_info *fi)
{
	struct fh *f = fh_of(fi);
	size_t end;
	int r;

	if (f == NULL || !f->writable)
		return -EBADF;
	if (off < 0)
		return -EINVAL;
	if (size == 0)
		return 0;
	pthread_mutex_lock(&f->lock);
	if (f->append)
		off = (off_t)f->len;
	end = (size_t)off + size;
	if (end > view_max(f->kind) || end < size) {
		pthread_mutex_unlock(&f->lock);
		log_err("%s/%s: value larger than %zu bytes refused", FOLDER,
		    f->name, view_max(f->kind));
		return -EFBIG;
	}
	if ((r = fh_reserve(f, end)) != 0) {
		pthread_mutex_unlock(&f->lock);
		return r;
	}
	if ((size_t)off > f->len)
		memset(f->buf + f->len, 0, (size_t)off - f->len);
	memcpy(f->buf + off, buf, size);
	if (end > f->len)
		__atomic_store_n(&f->len, end, __ATOMIC_RELAXED);
	f->dirty = 1;
	pthread_mutex_unlock(&f->lock);
	return (int)size;
}

static int
fields_flush(const char *path, struct fuse_file_info *fi)
{
	struct fh *f = fh_of(fi);
	int r;
	if (f == NULL)
		return 0;
	pthread_mutex_lock(&f->lock);
	r = commit_locked(f);
	pthread_mutex_unlock(&f->lock);
	return r;
}

static int
fields_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	return fields_flush(path, fi);
}

static int
fields_release(const char *path, struct fuse_file_info *fi)
{
	struct fh *f = fh_of(fi);
	if (f == NULL)
		return 0;
	/* A value still dirty here failed at flush (close reported it):
	 * dropped, and wiped with the buffer. */
	if (f->writable)
		writer_remove(f);
	fh_free(f);
	fi->fh = 0;
	return 0;
}

static int
resize_locked(struct fh *f, off_t size)
{
	int r;
	if (size < 0)
		return -EINVAL;
	if ((size_t)size > view_max(f->kind))
		return -EFBIG;
	if ((r = fh_reserve(f, (size_t)size)) != 0)
		return r;
	if ((size_t)size < f->len)
		OPENSSL_cleanse(f->buf + size, f->len - (size_t)size);
	else if ((size_t)size > f->len)
		memset(f->buf + f->len, 0, (size_t)size - f->len);
	__atomic_store_n(&f->len, (size_t)size, __ATOMIC_RELAXED);
	f->dirty = 1;
	return 0;
}

static int
fields_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	enum kind kind;
	const char *name;
	struct fh *f = fh_of(fi);
	struct fuse_file_info tmp;
	int r;

	if ((r = parse_path(path, &kind, &name)) != 0)
		return r;
	if (kind == K_ROOT || kind == K_SEALED_DIR)
		return -EISDIR;
	if (newest == NULL)
		return refuse_write(name);
	if (f != NULL && f->writable) {
		pthread_mutex_lock(&f->lock);
		r = resize_locked(f, size);
		pthread_mutex_unlock(&f->lock);
		return r;
	}
	/* truncate(2) by name: load, resize, commit now. */
	memset(&tmp, 0, sizeof(tmp));
	tmp.flags = size == 0 ? O_WRONLY | O_TRUNC : O_RDWR;
	if ((r = fields_open(path, &tmp)) != 0)
		return r;
	f = fh_of(&tmp);
	pthread_mutex_lock(&f->lock);
	if ((r = resize_locked(f, size)) == 0)
		r = commit_locked(f);
	pthread_mutex_unlock(&f->lock);
	fields_release(path, &tmp);
	return r;
}

/* A store's answer to rm/mv: a missing name or an existing target is
 * the caller's business (no log line), anything else is logged. */
static int
name_result(const char *name, const char *what, int r)
{
	if (r == 0 || r == -EEXIST)
		return r;
	if (r == HSMFS_ERR_NOTFOUND || r == HSMFS_ERR_INVALID)
		return -hsmfs_err_errno(r);
	return fail(name, NULL, what, r);
}

static int
fields_unlink(const char *path)
{
	struct fields_lock *lk;
	enum kind kind;
	const char *name;
	int r;

	if ((r = parse_path(path, &kind, &name)) != 0)
		return r;
	if (kind == K_ROOT || kind == K_SEALED_DIR)
		return -EPERM;
	if (store_ == NULL)
		return -ENOENT;
	if ((r = fields_store_lock(store_, name, NULL, &lk)) != 0)
		return fail(name, NULL, "lock", r);
	if ((r = fields_store_remove(store_of(name), name)) == 0)
		writers_renamed(name, NULL, 0);
	fields_store_unlock(store_, lk);
	return name_result(name, "unlink", r);
}

/* mv .NAME NAME: the temporary's text becomes NAME's value in the
 * store; the node-local temporary then goes. Under both names' locks. */
static int
publish(const char *tmp, const char *name, unsigned flags)
{
	char *text = NULL;
	size_t tl = 0;
	int r;

	if ((r = fields_store_get(tstore, tmp, &text, &tl)) != 0)
		return r;
	if (tl > 0 && text[tl - 1] == '\n')
		tl--;
	r = fields_store_put(store_, name, text, tl, flags);
	free(text);
	if (r == 0 && (r = fields_store_remove(tstore, tmp)) != 0) {
		/* Published; the leftover is swept like any old temporary. */
		fs_log_fail(FOLDER, tmp, NULL, "remove published temporary", r);
		r = 0;
	}
	return r;
}

static int
fields_rename(const char *from, const char *to, unsigned int flags)
{
	struct fields_lock *lk;
	enum kind kf, kt;
	const char *nf, *nt;
	unsigned sf = (flags & RENAME_NOREPLACE ? FIELDS_NOREPLACE : 0) |
	    (flags & RENAME_EXCHANGE ? FIELDS_EXCHANGE : 0);
	int r;

	if ((r = parse_path(from, &kf, &nf)) != 0 ||
	    (r = parse_path(to, &kt, &nt)) != 0)
		return r;
	if (kf == K_ROOT || kf == K_SEALED_DIR || kt == K_ROOT ||
	    kt == K_SEALED_DIR)
		return -EPERM;
	if (store_ == NULL)
		return -ENOENT;
	/* A temporary is published onto a valid name; a field never
	 * becomes a temporary (it would vanish). */
	if ((temp_name(nt) && !temp_name(nf)) ||
	    ((flags & RENAME_EXCHANGE) && temp_name(nf) != temp_name(nt)))
		return -EINVAL;
	/* Both views name the same stored value: mv works within and
	 * across them. */
	if ((r = fields_store_lock(store_, nf, nt, &lk)) != 0)
		return fail(nf, NULL, "lock", r);
	if (temp_name(nf) && !temp_name(nt))
		r = publish(nf, nt, sf);
	else
		r = fields_store_rename(store_of(nf), nf, nt, sf);
	if (r == 0)
		writers_renamed(nf, nt, flags & RENAME_EXCHANGE);
	fields_store_unlock(store_, lk);
	return name_result(nt, "rename", r);
}

static int
fields_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	/* Fields are always 0600. A mode change is accepted and ignored, so
	 * that writers preserving the source's mode (rsync, mv, cp -p,
	 * install -m) work; the views' directories keep theirs. */
	enum kind kind;
	const char *name;
	int r = parse_path(path, &kind, &name);
	if (r != 0)
		return r;
	return kind == K_FIELD || kind == K_SEALED ? 0 : -EPERM;
}

const struct folder_ops fields_folder = {
	.name = FOLDER,
	.start = fields_start,
	.stop = fields_stop,
	.reload_prepare = fields_reload_prepare,
	.reload_finish = fields_reload_finish,
	.status = fields_status,
	.metrics = fields_metrics,
	.getattr = fields_getattr,
	.readdir = fields_readdir,
	.open = fields_open,
	.create = fields_create,
	.read = fields_read,
	.write = fields_write,
	.flush = fields_flush,
	.fsync = fields_fsync,
	.release = fields_release,
	.truncate = fields_truncate,
	.unlink = fields_unlink,
	.rename = fields_rename,
	.chmod = fields_chmod,
};
