/* The dispatch of FUSE calls to the folder that owns the path's first
 * component: routing, open-file refs, the generated .status and .metrics,
 * the op_* wrappers (the only place fs/ replies -errno), the l_* wrappers
 * that hold the configuration lock, and init/destroy (folder start-up
 * and its unwinding). */
#include "fs/daemon.h"
#include "crypto/pin.h"

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "store/storelock.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define STATUS_NAME ".status"
#define METRICS_NAME ".metrics"
/* start() was called (it may have failed half way): stop() at destroy */
static int folder_started[NFOLDERS];
/* open_ref.folder of the two generated files */
#define REF_STATUS (-1)
#define REF_METRICS (-3)

/* ---- helpers for folders ---- */

void
fs_stat_dir(struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_mode = S_IFDIR | 0755;
	st->st_nlink = 2;
	st->st_uid = the_fs.uid;
	st->st_gid = the_fs.gid;
	st->st_mtime = st->st_ctime = st->st_atime = the_fs.started;
}

void
fs_stat_file(struct stat *st, mode_t mode, off_t size, time_t mtime)
{
	memset(st, 0, sizeof(*st));
	st->st_mode = S_IFREG | (mode & 07777);
	st->st_nlink = 1;
	st->st_uid = the_fs.uid;
	st->st_gid = the_fs.gid;
	st->st_size = size;
	st->st_blocks = (size + 511) / 512;
	st->st_mtime = st->st_ctime = st->st_atime = mtime;
}

int
fs_xattr_reply(const char *val, size_t len, char *buf, size_t size)
{
	if (size == 0)
		return (int)len;
	if (size < len)
		return -ERANGE;
	memcpy(buf, val, len);
	return (int)len;
}

void
fs_log_fail(const char *folder, const char *object, const char *key,
    const char *what, int r)
{
	metrics_count_error(folder, r);
	log_err("%s/%s: %s%s%s%s: %s (%s)", folder, object ? object : "",
	    key ? "key " : "", key ? key : "", key ? ": " : "", what,
	    err_detail(), hsmfs_strerror(r));
}

/* ---- routing ---- */

/* Split "/top/rest" into the folder and "rest" ("" for the folder).
 * Returns -1 for "/", -2 for an unknown top-level name. */
static int
route(const char *path, const char **rest)
{
	const char *p = path + 1, *slash;
	size_t n;
	if (*p == '\0')
		return -1;
	slash = strchr(p, '/');
	n = slash ? (size_t)(slash - p) : strlen(p);
	for (size_t i = 0; i < NFOLDERS; i++) {
		if (strlen(folders[i]->name) == n &&
		    memcmp(folders[i]->name, p, n) == 0) {
			*rest = slash ? slash + 1 : "";
			return (int)i;
		}
	}
	return -2;
}

#define ROUTE(path, rest, f)                                   \
	const char *rest;                                      \
	int f##_i = route(path, &rest);                        \
	const struct folder_ops *f = f##_i >= 0 ? folders[f##_i] : NULL

/* ---- .status ---- */

static char *
status_text(size_t *len, int ask)
{
	char *buf = NULL;
	size_t n = 0;
	FILE *f = open_memstream(&buf, &n);
	if (f == NULL)
		return NULL;
	fprintf(f, "version: %s\n", HSMFS_VERSION);
	fprintf(f, "uptime: %lld\n", (long long)(time(NULL) - the_fs.started));
	fprintf(f, "store: %s\n", the_fs.store);
	fprintf(f, "pid: %ld\n", (long)getpid());
	reload_status(f);
	for (size_t i = 0; the_fs.keys && i < keyring_count(the_fs.keys); i++) {
		struct keyring_status s;
		const char *nm;
		keyring_status(the_fs.keys, i, ask, &s);
		nm = s.name;
		fprintf(f, "key.%s.backend: %s\n", nm, s.backend);
		fprintf(f, "key.%s.token: %s\n", nm, s.where);
		fprintf(f, "key.%s.ops: %lu\n", nm, s.st.ops);
		fprintf(f, "key.%s.errors: %lu\n", nm, s.st.errors);
		fprintf(f, "key.%s.mean_ms: %.3f\n", nm,
		    s.st.ops ? s.st.total_ms / s.st.ops : 0.0);
		fprintf(f, "key.%s.last_result: %s\n", nm,
		    s.st.ops ? hsmfs_strerror(s.st.last_result) : "none");
		fprintf(f, "key.%s.last_time: %lld\n", nm, s.st.last_time);
		fprintf(f, "key.%s.pool: %u/%u\n", nm, s.st.pool_in_use, s.st.pool_size);
		if (s.pkcs11) {
			fprintf(f, "key.%s.state: %s\n", nm,
			    s.st.available ? "available" : "unavailable");
			fprintf(f, "key.%s.logins: %lu\n", nm, s.st.logins);
			fprintf(f, "key.%s.reconnects: %lu\n", nm, s.st.reinits);
		}
		metrics_status_key(f, &s);
	}
	/* Descriptors of the Identity Manager's file that hsmfs leaves alone. */
	for (size_t i = 0; the_fs.engine && i < the_fs.engine->nunserved; i++) {
		const struct engine_unserved *u = &the_fs.engine->unserved[i];
		fprintf(f, "descriptor.%s.%s: not served by hsmfs (key %s)\n",
		    u->name, u->version ? u->version : "-",
		    u->key_name ? u->key_name : "none");
	}
	fprintf(f, "secmem.fallbacks: %lu\n", secmem_fallbacks());
	metrics_status_database(f, ask);
	for (size_t i = 0; i < NFOLDERS; i++) {
		fprintf(f, "folder.%s: %s%s%s\n", folders[i]->name,
		    folder_ok[i] ? "ready" :
		    folder_err[i] == HSMFS_ERR_UNSUPPORTED ? "not configured" :
		    "failed", folder_ok[i] || !folder_why[i][0] ? "" : ": ",
		    folder_ok[i] ? "" : folder_why[i]);
		if (folder_ok[i] && folders[i]->status)
			folders[i]->status(f);
	}
	metrics_status_tail(f);
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	*len = n;
	return buf;
}

static char *
metrics_text(size_t *len, int ask)
{
	struct fs_folder_state st[NFOLDERS];
	for (size_t i = 0; i < NFOLDERS; i++) {
		st[i].name = folders[i]->name;
		st[i].state = folder_ok[i] ? "ready" :
		    folder_err[i] == HSMFS_ERR_UNSUPPORTED ? "not_configured" : "failed";
		st[i].reason = folder_ok[i] ? "" : folder_why[i];
		st[i].metrics = folders[i]->metrics;
	}
	return metrics_render(st, NFOLDERS, ask, len);
}

/* REF_STATUS or REF_METRICS for the path of a generated file, else 0. */
static int
generated_of(const char *path)
{
	if (strcmp(path, "/" STATUS_NAME) == 0)
		return REF_STATUS;
	if (strcmp(path, "/" METRICS_NAME) == 0)
		return REF_METRICS;
	return 0;
}

static char *
generated_text(int which, size_t *len, int ask)
{
	return which == REF_METRICS ? metrics_text(len, ask) :
	    status_text(len, ask);
}

/* ---- open files ----
 * fs/main.c owns fi->fh: it points at an open_ref that remembers the
 * folder, the folder's own fh and the name at open. With hard_remove,
 * libfuse passes a NULL path for a file unlinked while open; the ref
 * still routes such calls (with the name it had at open). Folders see
 * their own fh in a copy of fi and never a NULL path. */
struct open_ref {
	int folder;            /* index, or REF_STATUS, REF_METRICS */
	uint64_t fh;           /* the folder's fh */
	char *status;          /* /.status or /.metrics text rendered at open */
	size_t status_len;
	char rest[];           /* path relative to the folder, at open */
};

static struct open_ref *
ref_of(struct fuse_file_info *fi)
{
	return fi ? (struct open_ref *)(uintptr_t)fi->fh : NULL;
}

static struct open_ref *
ref_new(int folder, const char *rest)
{
	size_t n = strlen(rest) + 1;
	struct open_ref *r = calloc(1, sizeof(*r) + n);
	if (r != NULL) {
		r->folder = folder;
		memcpy(r->rest, rest, n);
	}
	return r;
}

/* Resolve (path, fi) to a folder, the relative path, and the folder's view
 * of fi (copy with its own fh). Returns the folder or NULL. */
static const struct folder_ops *
resolve(const char *path, struct fuse_file_info *fi, const char **rest,
    struct fuse_file_info *copy, struct fuse_file_info **ffi)
{
	struct open_ref *ref = ref_of(fi);
	int i = -2;

	*ffi = NULL;
	if (path != NULL)
		i = route(path, rest);
	else if (ref != NULL && ref->folder >= 0) {
		i = ref->folder;
		*rest = ref->rest;
	}
	if (i < 0)
		return NULL;
	if (ref != NULL) {
		*copy = *fi;
		copy->fh = ref->fh;
		*ffi = copy;
	}
	return folders[i];
}

/* After a folder call, keep a fh it may have changed. */
static void
ref_sync(struct fuse_file_info *fi, struct fuse_file_info *ffi)
{
	struct open_ref *ref = ref_of(fi);
	if (ref != NULL && ffi != NULL)
		ref->fh = ffi->fh;
}

static int
is_status(const char *path, struct fuse_file_info *fi)
{
	struct open_ref *ref = ref_of(fi);
	if (path == NULL)
		return ref != NULL &&
		    (ref->folder == REF_STATUS || ref->folder == REF_METRICS);
	return generated_of(path) != 0;
}

/* ---- FUSE operations ---- */

static int
op_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	struct fuse_file_info copy, *ffi;
	const struct folder_ops *f;
	const char *rest = "";
	int r;

	if (path != NULL && strcmp(path, "/") == 0) {
		fs_stat_dir(st);
		st->st_nlink = 2 + NFOLDERS;
		return 0;
	}
	if (is_status(path, fi)) {
		size_t n = 0;
		/* Sizes only, never asking a module: a lookup holds the
		 * kernel's lock of the root directory. */
		char *s = generated_text(path ? generated_of(path) : ref_of(fi)->folder,
		    &n, 0);
		free(s);
		fs_stat_file(st, 0444, (off_t)n, time(NULL));
		return 0;
	}
	if ((f = resolve(path, fi, &rest, &copy, &ffi)) == NULL)
		return -ENOENT;
	if (f->getattr) {
		r = f->getattr(rest, st, ffi);
		if (r != -ENOSYS)
			return r;
	}
	if (*rest == '\0') {
		fs_stat_dir(st);
		return 0;
	}
	return -ENOENT;
}

static int
op_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
    struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	const char *rest;
	int i;

	if (strcmp(path, "/") == 0) {
		fill(buf, ".", NULL, 0, 0);
		fill(buf, "..", NULL, 0, 0);
		fill(buf, STATUS_NAME, NULL, 0, 0);
		fill(buf, METRICS_NAME, NULL, 0, 0);
		for (size_t j = 0; j < NFOLDERS; j++)
			fill(buf, folders[j]->name, NULL, 0, 0);
		return 0;
	}
	if ((i = route(path, &rest)) < 0)
		return -ENOENT;
	if (folders[i]->readdir)
		return folders[i]->readdir(rest, buf, fill);
	if (*rest != '\0')
		return -ENOENT;
	fill(buf, ".", NULL, 0, 0);
	fill(buf, "..", NULL, 0, 0);
	return 0;
}

/* open and create: the folder fills fi (fh, direct_io...), then its fh
 * moves into a ref. */
static int
wrap_open(int i, const char *rest, struct fuse_file_info *fi, int r)
{
	struct open_ref *ref;
	if (r != 0)
		return r;
	if ((ref = ref_new(i, rest)) == NULL) {
		if (folders[i]->release)
			folders[i]->release(rest, fi);
		return -ENOMEM;
	}
	ref->fh = fi->fh;
	fi->fh = (uint64_t)(uintptr_t)ref;
	return 0;
}

static int
op_open(const char *path, struct fuse_file_info *fi)
{
	const char *rest;
	int i;

	if ((i = generated_of(path)) != 0) {
		struct open_ref *ref;
		if ((fi->flags & O_ACCMODE) != O_RDONLY)
			return -EACCES;
		if ((ref = ref_new(i, "")) == NULL)
			return -ENOMEM;
		if ((ref->status = generated_text(i, &ref->status_len, 1)) == NULL) {
			free(ref);
			return -ENOMEM;
		}
		fi->fh = (uint64_t)(uintptr_t)ref;
		fi->direct_io = 1;
		return 0;
	}
	if ((i = route(path, &rest)) < 0)
		return -ENOENT;
	if (folders[i]->open == NULL)
		return *rest ? -ENOENT : -EISDIR;
	return wrap_open(i, rest, fi, folders[i]->open(rest, fi));
}

static int
op_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	const char *rest;
	int i = route(path, &rest);
	const struct folder_ops *f;

	if (i < 0)
		return -EACCES;
	f = folders[i];
	if (*rest == '\0')
		return -EISDIR;
	if (f->create == NULL || !folder_ok[i]) {
		log_err("%s/%s: write refused: folder %s", f->name, rest,
		    folder_err[i] == HSMFS_ERR_UNSUPPORTED ?
		    "not configured (no descriptor for it in the config)" :
		    "not available (see the start-up messages)");
		return -EOPNOTSUPP;
	}
	return wrap_open(i, rest, fi, f->create(rest, mode, fi));
}

static int
op_read(const char *path, char *buf, size_t size, off_t off,
    struct fuse_file_info *fi)
{
	struct fuse_file_info copy, *ffi;
	const struct folder_ops *f;
	const char *rest;
	int r;

	if (is_status(path, fi)) {
		struct open_ref *s = ref_of(fi);
		if ((size_t)off >= s->status_len)
			return 0;
		if (size > s->status_len - (size_t)off)
			size = s->status_len - (size_t)off;
		memcpy(buf, s->status + off, size);
		return (int)size;
	}
	if ((f = resolve(path, fi, &rest, &copy, &ffi)) == NULL || f->read == NULL)
		return -EIO;
	r = f->read(rest, buf, size, off, ffi);
	ref_sync(fi, ffi);
	return r;
}

static int
op_write(const char *path, const char *buf, size_t size, off_t off,
    struct fuse_file_info *fi)
{
	struct fuse_file_info copy, *ffi;
	const struct folder_ops *f;
	const char *rest;
	int r;

	if ((f = resolve(path, fi, &rest, &copy, &ffi)) == NULL || f->write == NULL)
		return -EBADF;
	r = f->write(rest, buf, size, off, ffi);
	ref_sync(fi, ffi);
	return r;
}

static int
op_flush(const char *path, struct fuse_file_info *fi)
{
	struct fuse_file_info copy, *ffi;
	const struct folder_ops *f;
	const char *rest;
	int r;

	if (is_status(path, fi))
		return 0;
	if ((f = resolve(path, fi, &rest, &copy, &ffi)) == NULL || f->flush == NULL)
		return 0;
	r = f->flush(rest, ffi);
	ref_sync(fi, ffi);
	return r;
}

static int
op_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	struct fuse_file_info copy, *ffi;
	const struct folder_ops *f;
	const char *rest;
	int r;

	if (is_status(path, fi))
		return 0;
	if ((f = resolve(path, fi, &rest, &copy, &ffi)) == NULL || f->fsync == NULL)
		return 0;
	r = f->fsync(rest, datasync, ffi);
	ref_sync(fi, ffi);
	return r;
}

static int
op_release(const char *path, struct fuse_file_info *fi)
{
	struct fuse_file_info copy, *ffi;
	struct open_ref *ref = ref_of(fi);
	const struct folder_ops *f;
	const char *rest;

	if (ref == NULL)
		return 0;
	if (ref->folder >= 0 &&
	    (f = resolve(path, fi, &rest, &copy, &ffi)) != NULL && f->release)
		f->release(rest, ffi);
	free(ref->status);
	free(ref);
	fi->fh = 0;
	return 0;
}

static int
op_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	struct fuse_file_info copy, *ffi;
	const struct folder_ops *f;
	const char *rest;
	int r;

	if (is_status(path, fi))
		return -EACCES;
	if ((f = resolve(path, fi, &rest, &copy, &ffi)) == NULL)
		return -EPERM;
	if (f->truncate == NULL)
		return *rest ? -EOPNOTSUPP : -EISDIR;
	r = f->truncate(rest, size, ffi);
	ref_sync(fi, ffi);
	return r;
}

static int
op_unlink(const char *path)
{
	const char *rest;
	int i = route(path, &rest);
	if (i < 0 || *rest == '\0' || folders[i]->unlink == NULL)
		return -EPERM;
	return folders[i]->unlink(rest);
}

static int
op_rename(const char *from, const char *to, unsigned int flags)
{
	const char *rf, *rt;
	int fi_ = route(from, &rf), ti = route(to, &rt);
	if (fi_ < 0 || ti < 0 || *rf == '\0' || *rt == '\0')
		return -EPERM;
	if (fi_ != ti)
		return -EXDEV;
	/* RENAME_WHITEOUT would leave a device node in the store. */
	if (flags & ~(unsigned int)(RENAME_NOREPLACE | RENAME_EXCHANGE))
		return -EINVAL;
	if (folders[fi_]->rename == NULL)
		return -EPERM;
	return folders[fi_]->rename(rf, rt, flags);
}

static int
op_mkdir(const char *path, mode_t mode)
{
	return -EPERM;
}

static int
op_rmdir(const char *path)
{
	return -EPERM;
}

static int
op_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	struct fuse_file_info copy, *ffi;
	const struct folder_ops *f;
	const char *rest;

	if (is_status(path, fi) ||
	    (f = resolve(path, fi, &rest, &copy, &ffi)) == NULL)
		return -EPERM;
	if (f->chmod == NULL) {
		/* Modes are the folder's: accepted and ignored on its files so
		 * that install -m, cp -p and rsync -a work. */
		struct stat st;
		int r = *rest && f->getattr ? f->getattr(rest, &st, ffi) : -EPERM;
		return r == 0 && S_ISREG(st.st_mode) ? 0 : r == 0 ? -EPERM : r;
	}
	return f->chmod(rest, mode, ffi);
}

/* Files belong to the mount's owner: chown to that owner (cp -a, rsync -a
 * and mv as root ask for it) is a no-op, anything else EPERM. */
static int
op_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
	struct stat st;
	if ((uid != (uid_t)-1 && uid != the_fs.uid) ||
	    (gid != (gid_t)-1 && gid != the_fs.gid))
		return -EPERM;
	return op_getattr(path, &st, fi);
}

static int
op_utimens(const char *path, const struct timespec tv[2],
    struct fuse_file_info *fi)
{
	struct fuse_file_info copy, *ffi;
	const struct folder_ops *f;
	const char *rest;

	if (is_status(path, fi) ||
	    (f = resolve(path, fi, &rest, &copy, &ffi)) == NULL || f->utimens == NULL)
		return 0;   /* touch on a folder's file: timestamps are derived */
	return f->utimens(rest, tv, ffi);
}

static int
op_getxattr(const char *path, const char *name, char *value, size_t size)
{
	ROUTE(path, rest, f);
	if (f == NULL || f->getxattr == NULL)
		return -ENODATA;
	return f->getxattr(rest, name, value, size);
}

static int
op_setxattr(const char *path, const char *name, const char *value,
    size_t size, int flags)
{
	ROUTE(path, rest, f);
	if (f == NULL || f->setxattr == NULL)
		return -ENOTSUP;
	return f->setxattr(rest, name, value, size, flags);
}

static int
op_listxattr(const char *path, char *list, size_t size)
{
	ROUTE(path, rest, f);
	if (f == NULL || f->listxattr == NULL)
		return 0;
	return f->listxattr(rest, list, size);
}

static int
op_removexattr(const char *path, const char *name)
{
	ROUTE(path, rest, f);
	if (f == NULL || f->removexattr == NULL)
		return -ENOTSUP;
	return f->removexattr(rest, name);
}


static void *
op_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	sigset_t sigs, oldsigs;
	int r;

	/* The threads started here (history committer and signers, mail
	 * sender, reload thread, any a PKCS#11 module starts) inherit this
	 * mask: SIGTERM, SIGINT and SIGHUP go only to libfuse's threads. A
	 * SIGTERM taken by one of ours would set libfuse's exit flag with no
	 * thread woken to see it (lost under a HUP storm, when the main
	 * thread already has a signal pending). */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGQUIT);
	pthread_sigmask(SIG_BLOCK, &sigs, &oldsigs);

	/* We are past daemonize: logging target, no core dumps of secrets,
	 * locked memory for plaintext, then PKCS#11 and threads. */
	if (!the_fs.opt.foreground)
		log_set_syslog(1);
	secmem_harden(8 << 20);
	/* daemonize forked: the lock (inherited) now names this PID. */
	storelock_set_owner(lock_fd, "hsmfs", mnt_abs);

	cfg->kernel_cache = 0;
	/* No kernel caching of names or attributes: an item changes behind
	 * the writer's back (signing replaces the bytes at close, the
	 * plaintext and .sealed views of a field are one file, rename
	 * publishes a temporary), and a stale st_size misleads mmap readers
	 * and copy tools. Cost measured in docs/writers.md. */
	cfg->attr_timeout = 0;
	cfg->entry_timeout = 0;
	cfg->negative_timeout = 0;
	cfg->hard_remove = 1;
	cfg->use_ino = 0;

	r = keyring_open(the_fs.engine, &the_fs.keys);
	pin_scrub_env(the_fs.engine);
	if (r != 0) {
		log_err("cannot open keys after start: %s (%s); unmounting",
		    err_detail(), hsmfs_strerror(r));
		fuse_exit(fuse_get_context()->fuse);
		pthread_sigmask(SIG_SETMASK, &oldsigs, NULL);
		return &the_fs;
	}
	/* shared=: one pool for every area, checked (schema, configuration)
	 * and the node registered before any folder starts. */
	if (the_fs.opt.shared != NULL &&
	    (r = shared_join(the_fs.keys, PG_CLUSTER_JOIN, &the_fs.sconf.pg,
	    the_fs.cluster_origin, sizeof(the_fs.cluster_origin))) != 0) {
		log_err("shared store: %s; unmounting", err_detail());
		fuse_exit(fuse_get_context()->fuse);
		pthread_sigmask(SIG_SETMASK, &oldsigs, NULL);
		return &the_fs;
	}
	for (size_t i = 0; i < NFOLDERS; i++) {
		if (folders[i]->start == NULL) {
			folder_err[i] = HSMFS_ERR_UNSUPPORTED;
			continue;
		}
		err_clear();
		folder_started[i] = 1;
		if ((r = folders[i]->start()) != 0) {
			folder_err[i] = r;
			snprintf(folder_why[i], sizeof(folder_why[i]), "%s",
			    err_detail());
			if (r == HSMFS_ERR_UNSUPPORTED)
				log_info("%s: not configured, writes are refused: %s",
				    folders[i]->name, err_detail());
			else
				log_err("%s: folder disabled: %s (%s)", folders[i]->name,
				    err_detail(), hsmfs_strerror(r));
			continue;
		}
		folder_ok[i] = 1;
	}
	reload_start();
	pthread_sigmask(SIG_SETMASK, &oldsigs, NULL);
	log_info("mounted store %s", the_fs.store);
	if (the_fs.sconf.pg != NULL) {
		log_info("shared store: node %s of cluster %s", node_name(),
		    the_fs.cluster_origin);
		notify("READY=1\nSTATUS=serving %s on %s, shared database (cluster "
		    "%s, node %s)", the_fs.store, mnt_abs, the_fs.cluster_origin,
		    node_name());
	} else
		notify("READY=1\nSTATUS=serving %s on %s", the_fs.store, mnt_abs);
	return &the_fs;
}

static void
op_destroy(void *data)
{
	notify("STOPPING=1\nSTATUS=unmounting %s", mnt_abs);
	reload_stop();
	/* Every folder whose start() ran, in reverse order, also when it
	 * failed: a folder that failed to start keeps serving what it opened
	 * (reads of its items; only create is refused), and its stop() is
	 * safe after any failure of start() and releases that. */
	for (size_t i = NFOLDERS; i-- > 0;) {
		if (folder_started[i] && folders[i]->stop)
			folders[i]->stop();
		folder_started[i] = 0;
	}
	pg_close(the_fs.sconf.pg);   /* after every folder stopped */
	the_fs.sconf.pg = NULL;
	keyring_free(the_fs.keys);
	the_fs.keys = NULL;
	log_info("unmounted store %s", the_fs.store);
}

/* Every operation that reaches a folder holds the configuration lock
 * for reading (see fs_conf_rdlock): it finishes on the configuration it
 * started with, and a reload waits for it. */
#define LOCKED(call) do {                         \
	int r_;                                   \
	op_enter();                               \
	r_ = (call);                              \
	fs_conf_unlock();                         \
	return r_;                                \
} while (0)

/* The FUSE operations that reach a folder: l_NAME calls op_NAME under
 * the configuration lock. A table (name, parameters, arguments). */
#define LOCKED_OP(name, params, args) \
static int l_##name params { LOCKED(op_##name args); }

LOCKED_OP(getattr,
    (const char *path, struct stat *st, struct fuse_file_info *fi),
    (path, st, fi))
LOCKED_OP(readdir,
    (const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
    struct fuse_file_info *fi, enum fuse_readdir_flags flags),
    (path, buf, fill, off, fi, flags))
LOCKED_OP(open, (const char *path, struct fuse_file_info *fi),
    (path, fi))
LOCKED_OP(create, (const char *path, mode_t mode, struct fuse_file_info *fi),
    (path, mode, fi))
LOCKED_OP(read,
    (const char *path, char *buf, size_t size, off_t off,
    struct fuse_file_info *fi),
    (path, buf, size, off, fi))
LOCKED_OP(write,
    (const char *path, const char *buf, size_t size, off_t off,
    struct fuse_file_info *fi),
    (path, buf, size, off, fi))
LOCKED_OP(flush, (const char *path, struct fuse_file_info *fi),
    (path, fi))
LOCKED_OP(fsync, (const char *path, int datasync, struct fuse_file_info *fi),
    (path, datasync, fi))
LOCKED_OP(release, (const char *path, struct fuse_file_info *fi),
    (path, fi))
LOCKED_OP(truncate, (const char *path, off_t size, struct fuse_file_info *fi),
    (path, size, fi))
LOCKED_OP(unlink, (const char *path),
    (path))
LOCKED_OP(rename, (const char *from, const char *to, unsigned int flags),
    (from, to, flags))
LOCKED_OP(chmod, (const char *path, mode_t mode, struct fuse_file_info *fi),
    (path, mode, fi))
LOCKED_OP(utimens,
    (const char *path, const struct timespec tv[2], struct fuse_file_info *fi),
    (path, tv, fi))
LOCKED_OP(getxattr,
    (const char *path, const char *name, char *value, size_t size),
    (path, name, value, size))
LOCKED_OP(setxattr,
    (const char *path, const char *name, const char *value, size_t size,
    int flags),
    (path, name, value, size, flags))
LOCKED_OP(listxattr, (const char *path, char *list, size_t size),
    (path, list, size))
LOCKED_OP(removexattr, (const char *path, const char *name),
    (path, name))

const struct fuse_operations hsmfs_ops = {
	.init = op_init,
	.destroy = op_destroy,
	.getattr = l_getattr,
	.readdir = l_readdir,
	.open = l_open,
	.create = l_create,
	.read = l_read,
	.write = l_write,
	.flush = l_flush,
	.fsync = l_fsync,
	.release = l_release,
	.truncate = l_truncate,
	.unlink = l_unlink,
	.rename = l_rename,
	.mkdir = op_mkdir,
	.rmdir = op_rmdir,
	.chmod = l_chmod,
	.chown = op_chown,
	.utimens = l_utimens,
	.getxattr = l_getxattr,
	.setxattr = l_setxattr,
	.listxattr = l_listxattr,
	.removexattr = l_removexattr,
};

