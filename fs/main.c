/* hsmfs daemon: options, start-up checks, mount, and the dispatch of FUSE
 * calls to the folder that owns the path's first component.
 *
 * Start-up order matters: every check runs before mounting, and the key
 * check runs in a short-lived child process, because a PKCS#11 module
 * must not be initialised before libfuse daemonizes (fork) — the daemon
 * opens its keys in the FUSE init callback, after the fork. */
#include "fs/fs.h"
#include "crypto/pin.h"

#include <fuse_lowlevel.h>
#include "store/dirio.h"
#include "common/err.h"
#include "common/log.h"
#include "store/storelock.h"
#include "common/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

struct hsmfs *hsmfs_ctx;
static struct hsmfs the_fs;

static const struct folder_ops *const folders[] = {
	&signout_folder,
	&verifyin_folder,
	&fields_folder,
	&history_folder,
	&mail_folder,
};
#define NFOLDERS (sizeof(folders) / sizeof(folders[0]))
static int folder_ok[NFOLDERS];    /* start() succeeded */
static int folder_err[NFOLDERS];   /* start()'s error when not ok */
static char folder_why[NFOLDERS][256];   /* start()'s detail when not ok */
static int lock_fd = -1;           /* STORE/lock, held for the daemon's life */
static char mnt_abs[PATH_MAX];     /* the mount point, absolute */

/* ---- configuration lock and reload (SIGHUP) ----
 * Operations hold conf_lock for reading; reload_thread builds the new
 * engine and keyring outside it and takes it for writing only to swap.
 * SIGHUP is blocked in every thread from main() on and taken by the
 * reload thread with sigtimedwait: no handler ever interrupts another
 * thread (an SA_RESTART handler on the main thread could restart its
 * wait in libfuse's loop after a SIGTERM, and the unmount was lost). */
static pthread_rwlock_t conf_lock = PTHREAD_RWLOCK_INITIALIZER;
/* The reload gate (see op_enter). */
#define RELOAD_GATE_MS 200
static atomic_int reload_waiting;
static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static pthread_t reload_tid;
static int reload_running;
static volatile sig_atomic_t reload_quit;
static pthread_mutex_t reload_mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned long reload_attempts, conf_generation = 1;
static int reload_busy;   /* a reload has started reading the files */
static char reload_result[600] = "none";   /* "ok" or "failed: ..." */
static time_t reload_time;

static int pem_certs_ok(const char *path);

void fs_conf_rdlock(void) { pthread_rwlock_rdlock(&conf_lock); }
void fs_conf_unlock(void) { pthread_rwlock_unlock(&conf_lock); }

/* sd_notify(3) when run by systemd (NOTIFY_SOCKET set); a no-op else. */
static void
notify(const char *fmt, ...)
{
#ifdef HAVE_SYSTEMD
	char buf[800];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	sd_notify(0, buf);
#else
	(void)fmt;
#endif
}

#define STATUS_NAME ".status"
#define METRICS_NAME ".metrics"
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
	pthread_mutex_lock(&reload_mu);
	fprintf(f, "config.file: %s\n", the_fs.opt.config);
	fprintf(f, "config.generation: %lu\n", conf_generation);
	fprintf(f, "config.reloads: %lu\n", reload_attempts);
	fprintf(f, "config.reload: %s\n", reload_result);
	fprintf(f, "config.reload_time: %lld\n", (long long)reload_time);
	fprintf(f, "config.reloading: %s\n", reload_busy ? "yes" : "no");
	pthread_mutex_unlock(&reload_mu);
	for (size_t i = 0; the_fs.keys && i < keyring_count(the_fs.keys); i++) {
		struct keyring_status s;
		const char *nm;
		keyring_status(the_fs.keys, i, ask, &s);
		nm = s.name;
		fprintf(f, "key.%s.backend: %s\n", nm, s.backend);
		fprintf(f, "key.%s.token: %s\n", nm, s.where);
		fprintf(f, "key.%s.ops: %lu\n", nm, s.ops);
		fprintf(f, "key.%s.errors: %lu\n", nm, s.errors);
		fprintf(f, "key.%s.mean_ms: %.3f\n", nm, s.ops ? s.total_ms / s.ops : 0.0);
		fprintf(f, "key.%s.last_result: %s\n", nm,
		    s.ops ? hsmfs_strerror(s.last_result) : "none");
		fprintf(f, "key.%s.last_time: %lld\n", nm, s.last_time);
		fprintf(f, "key.%s.pool: %u/%u\n", nm, s.pool_in_use, s.pool_size);
		if (s.pkcs11) {
			fprintf(f, "key.%s.state: %s\n", nm,
			    s.available ? "available" : "unavailable");
			fprintf(f, "key.%s.logins: %lu\n", nm, s.logins);
			fprintf(f, "key.%s.reconnects: %lu\n", nm, s.reinits);
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

/* SIGHUP: re-read and check the XML and the truststore, open the keys
 * that are new (keys that stay are shared, sessions kept), let every
 * running folder check and derive its state, then swap under the write
 * lock. Any failure keeps the old configuration serving. */
static void
reload_gate_open(void)
{
	pthread_mutex_lock(&gate_mu);
	atomic_store(&reload_waiting, 0);
	pthread_cond_broadcast(&gate_cv);
	pthread_mutex_unlock(&gate_mu);
}

static int
reload_config(void)
{
	struct engine *ne = NULL, *oe;
	struct keyring *nk = NULL, *ok;
	void *next[NFOLDERS] = { 0 };
	size_t prepared = 0;
	int r;

	err_clear();
	if ((r = engine_load(the_fs.opt.config, &ne)) != 0)
		goto fail;
	if (the_fs.opt.truststore && pem_certs_ok(the_fs.opt.truststore) != 0) {
		err_prefix("truststore ");
		r = HSMFS_ERR_CONFIG;
		goto fail;
	}
	/* Only this thread changes the_fs.keys: no lock needed to read it. */
	r = keyring_reopen(the_fs.keys, ne, &nk);
	pin_scrub_env(ne);
	if (r != 0)
		goto fail;
	atomic_store(&reload_waiting, 1);
	pthread_rwlock_wrlock(&conf_lock);
	reload_gate_open();
	for (; prepared < NFOLDERS; prepared++) {
		const struct folder_ops *f = folders[prepared];
		if (!folder_ok[prepared] || f->reload_prepare == NULL)
			continue;
		err_clear();
		if ((r = f->reload_prepare(ne, nk, &next[prepared])) != 0) {
			err_prefix("%s: ", f->name);
			break;
		}
	}
	for (size_t i = 0; i < prepared; i++)
		if (folder_ok[i] && folders[i]->reload_finish)
			folders[i]->reload_finish(next[i], r == 0);
	if (r != 0) {
		pthread_rwlock_unlock(&conf_lock);
		goto fail;
	}
	oe = the_fs.engine;
	ok = the_fs.keys;
	the_fs.engine = ne;
	the_fs.keys = nk;
	pthread_rwlock_unlock(&conf_lock);
	/* No operation or folder uses the old ones any more: keys the new
	 * keyring does not share close now. */
	keyring_free(ok);
	engine_free(oe);
	return 0;
fail:
	keyring_free(nk);
	engine_free(ne);
	return r;
}

static void
reload_once(void)
{
	struct timespec mono;
	char why[512];
	int r;

	clock_gettime(CLOCK_MONOTONIC, &mono);
	notify("RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading %s",
	    (unsigned long long)mono.tv_sec * 1000000ULL +
	    (unsigned long long)mono.tv_nsec / 1000, the_fs.opt.config);
	r = reload_config();
	snprintf(why, sizeof(why), "%s (%s)", err_detail(), hsmfs_strerror(r));
	pthread_mutex_lock(&reload_mu);
	reload_busy = 0;
	reload_attempts++;
	reload_time = time(NULL);
	if (r == 0) {
		conf_generation++;
		snprintf(reload_result, sizeof(reload_result), "ok");
	} else {
		snprintf(reload_result, sizeof(reload_result), "failed: %s", why);
	}
	pthread_mutex_unlock(&reload_mu);
	if (r == 0) {
		log_info("reloaded %s: %zu key(s) open, new work uses it",
		    the_fs.opt.config, keyring_count(the_fs.keys));
		notify("READY=1\nSTATUS=serving %s on %s (config reloaded)",
		    the_fs.store, mnt_abs);
	} else {
		log_err("reload of %s failed, the previous configuration keeps "
		    "serving: %s", the_fs.opt.config, why);
		notify("READY=1\nSTATUS=serving %s on %s; config reload failed: %s",
		    the_fs.store, mnt_abs, why);
	}
}

/* Waits for SIGHUP (blocked, taken here with sigtimedwait); with a
 * systemd watchdog, also pings it at half its interval. op_destroy wakes
 * it with a SIGHUP of its own after setting reload_quit. */
static void *
reload_main(void *arg)
{
	uint64_t wd_usec = 0;
	sigset_t hup;
	const struct timespec zero = { 0, 0 };

	sigemptyset(&hup);
	sigaddset(&hup, SIGHUP);
#ifdef HAVE_SYSTEMD
	if (sd_watchdog_enabled(0, &wd_usec) <= 0)
		wd_usec = 0;
#endif
	while (!reload_quit) {
		int r;
		if (wd_usec) {
			struct timespec ts;
			ts.tv_sec = (time_t)(wd_usec / 2 / 1000000);
			ts.tv_nsec = (long)(wd_usec / 2 % 1000000) * 1000;
			r = sigtimedwait(&hup, NULL, &ts);
		} else {
			r = sigwaitinfo(&hup, NULL);
		}
		if (reload_quit)
			break;
		if (r < 0) {
			if (errno == EAGAIN)
				notify("WATCHDOG=1");
			continue;
		}
		/* HUPs that came in meanwhile are all served by this one
		 * reload (it reads the files after them). */
		pthread_mutex_lock(&reload_mu);
		reload_busy = 1;
		pthread_mutex_unlock(&reload_mu);
		while (sigtimedwait(&hup, NULL, &zero) > 0)
			;
		if (reload_quit)
			break;
		reload_once();
	}
	return NULL;
}

/* Never runs: SIGHUP stays blocked and the reload thread takes it. It
 * replaces libfuse's handler, which would unmount. */
static void
on_sighup(int sig)
{
	(void)sig;
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
	for (size_t i = 0; i < NFOLDERS; i++) {
		if (folders[i]->start == NULL) {
			folder_err[i] = HSMFS_ERR_UNSUPPORTED;
			continue;
		}
		err_clear();
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
	if ((r = pthread_create(&reload_tid, NULL, reload_main, NULL)) == 0)
		reload_running = 1;
	else
		log_err("cannot start the reload thread: %s; SIGHUP is ignored",
		    strerror(r));
	pthread_sigmask(SIG_SETMASK, &oldsigs, NULL);
	log_info("mounted store %s", the_fs.store);
	notify("READY=1\nSTATUS=serving %s on %s", the_fs.store, mnt_abs);
	return &the_fs;
}

static void
op_destroy(void *data)
{
	notify("STOPPING=1\nSTATUS=unmounting %s", mnt_abs);
	if (reload_running) {
		reload_quit = 1;
		pthread_kill(reload_tid, SIGHUP);
		pthread_join(reload_tid, NULL);
		reload_running = 0;
	}
	for (size_t i = NFOLDERS; i-- > 0;)
		if (folder_ok[i] && folders[i]->stop)
			folders[i]->stop();
	keyring_free(the_fs.keys);
	the_fs.keys = NULL;
	log_info("unmounted store %s", the_fs.store);
}

/* The lock prefers readers (a committing thread nests its read lock in a
 * flush's), so a steady stream of operations could keep a reload waiting
 * for ever. While a reload waits, a new operation first waits for it at
 * this gate, for at most RELOAD_GATE_MS: long enough for operations in
 * flight to drain, bounded so that an operation that in-flight work
 * depends on can never be held back indefinitely. */
static void
op_enter(void)
{
	if (atomic_load(&reload_waiting)) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += RELOAD_GATE_MS * 1000000L;
		ts.tv_sec += ts.tv_nsec / 1000000000L;
		ts.tv_nsec %= 1000000000L;
		pthread_mutex_lock(&gate_mu);
		while (atomic_load(&reload_waiting) &&
		    pthread_cond_timedwait(&gate_cv, &gate_mu, &ts) == 0)
			;
		pthread_mutex_unlock(&gate_mu);
	}
	pthread_rwlock_rdlock(&conf_lock);
}

/* Every operation that reaches a folder holds the configuration lock
 * for reading (see fs_conf_rdlock): it finishes on the configuration it
 * started with, and a reload waits for it. */
#define LOCKED(call) do {                         \
	int r_;                                   \
	op_enter();                               \
	r_ = (call);                              \
	pthread_rwlock_unlock(&conf_lock);        \
	return r_;                                \
} while (0)

static int
l_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	LOCKED(op_getattr(path, st, fi));
}

static int
l_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
    struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	LOCKED(op_readdir(path, buf, fill, off, fi, flags));
}

static int
l_open(const char *path, struct fuse_file_info *fi)
{
	LOCKED(op_open(path, fi));
}

static int
l_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	LOCKED(op_create(path, mode, fi));
}

static int
l_read(const char *path, char *buf, size_t size, off_t off,
    struct fuse_file_info *fi)
{
	LOCKED(op_read(path, buf, size, off, fi));
}

static int
l_write(const char *path, const char *buf, size_t size, off_t off,
    struct fuse_file_info *fi)
{
	LOCKED(op_write(path, buf, size, off, fi));
}

static int
l_flush(const char *path, struct fuse_file_info *fi)
{
	LOCKED(op_flush(path, fi));
}

static int
l_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	LOCKED(op_fsync(path, datasync, fi));
}

static int
l_release(const char *path, struct fuse_file_info *fi)
{
	LOCKED(op_release(path, fi));
}

static int
l_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	LOCKED(op_truncate(path, size, fi));
}

static int
l_unlink(const char *path)
{
	LOCKED(op_unlink(path));
}

static int
l_rename(const char *from, const char *to, unsigned int flags)
{
	LOCKED(op_rename(from, to, flags));
}

static int
l_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	LOCKED(op_chmod(path, mode, fi));
}

static int
l_utimens(const char *path, const struct timespec tv[2],
    struct fuse_file_info *fi)
{
	LOCKED(op_utimens(path, tv, fi));
}

static int
l_getxattr(const char *path, const char *name, char *value, size_t size)
{
	LOCKED(op_getxattr(path, name, value, size));
}

static int
l_setxattr(const char *path, const char *name, const char *value,
    size_t size, int flags)
{
	LOCKED(op_setxattr(path, name, value, size, flags));
}

static int
l_listxattr(const char *path, char *list, size_t size)
{
	LOCKED(op_listxattr(path, list, size));
}

static int
l_removexattr(const char *path, const char *name)
{
	LOCKED(op_removexattr(path, name));
}

static const struct fuse_operations hsmfs_ops = {
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

/* ---- options ---- */

enum { KEY_HELP, KEY_VERSION, KEY_RO, KEY_FG };

struct cli {
	char *store;
	char *mountpoint;
	char *log_level;
	int nonopt;
	int help;
	int nonempty;          /* -o nonempty: mount over a non-empty directory */
};
static struct cli cli;

#define OPT(t, p) { t, offsetof(struct hsmfs_opts, p), 1 }
static const struct fuse_opt opt_spec[] = {
	OPT("config=%s", config),
	OPT("truststore=%s", truststore),
	OPT("smtp=%s", smtp),
	OPT("smtp_ca=%s", smtp_ca),
	OPT("smtp_auth=%s", smtp_auth),
	OPT("history_anchor=%s", history_anchor),
	OPT("classpath=%s", classpath),
	OPT("mail_retry=%ld", mail_retry),
	OPT("mail_max_age=%ld", mail_max_age),
	OPT("temp_max_age=%ld", temp_max_age),
	FUSE_OPT_KEY("-h", KEY_HELP),
	FUSE_OPT_KEY("--help", KEY_HELP),
	FUSE_OPT_KEY("-V", KEY_VERSION),
	FUSE_OPT_KEY("--version", KEY_VERSION),
	FUSE_OPT_KEY("ro", KEY_RO),
	FUSE_OPT_KEY("-f", KEY_FG),
	FUSE_OPT_KEY("-d", KEY_FG),
	FUSE_OPT_KEY("debug", KEY_FG),
	FUSE_OPT_END
};

static int
opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	switch (key) {
	case FUSE_OPT_KEY_NONOPT:
		if (cli.nonopt++ == 0) {
			cli.store = strdup(arg);
			return 0;
		}
		if (cli.nonopt == 2)
			cli.mountpoint = strdup(arg);
		return 1;
	case FUSE_OPT_KEY_OPT:
		if (strncmp(arg, "log_level=", 10) == 0) {
			cli.log_level = strdup(arg + 10);
			return 0;
		}
		/* libfuse 3 dropped nonempty: the check is ours now. */
		if (strcmp(arg, "nonempty") == 0) {
			cli.nonempty = 1;
			return 0;
		}
		return 1;
	case KEY_HELP:
		cli.help = 1;
		return 0;
	case KEY_VERSION:
		printf("hsmfs %s\n", HSMFS_VERSION);
		exit(0);
	case KEY_RO:
		the_fs.opt.read_only = 1;
		return 1;
	case KEY_FG:
		the_fs.opt.foreground = 1;
		return 1;
	}
	return 1;
}

static void
usage(const char *prog)
{
	printf("usage: %s STORE MOUNTPOINT -o config=FILE[,truststore=PEM]"
	    "[,smtp=URL]\n"
	    "       [,mail_retry=S][,mail_max_age=S][,history_anchor=FILE]"
	    "[,log_level=LEVEL][,FUSE options]\n\n"
	    "hsmfs options:\n"
	    "    -o config=FILE          engineSignEncrypt.xml (required)\n"
	    "    -o truststore=PEM       trusted CA certificates for verification\n"
	    "    -o smtp=URL             mail relay (smtp://host:port, smtps://...)\n"
	    "    -o smtp_ca=PEM          CA certificates for the relay's TLS (system store)\n"
	    "    -o smtp_auth=FILE       SMTP AUTH user and password (two lines; TLS only)\n"
	    "    -o mail_retry=S         first retry backoff in seconds (300)\n"
	    "    -o mail_max_age=S       give up on a message after S seconds (432000)\n"
	    "    -o history_anchor=FILE  copy of history checkpoints on another volume\n"
	    "    -o classpath=DIR[:DIR]  where locationValue=\"classpath:NAME\" is looked\n"
	    "                            up (default: the config file's directory)\n"
	    "    -o temp_max_age=S       remove writers' temporaries (.NAME) not renamed\n"
	    "                            into place after S seconds (3600)\n"
	    "    -o log_level=LEVEL      error, warning, info (default), debug\n"
	    "    -o nonempty             allow a mount point that is not empty\n"
	    "    -V, --version           print the version\n\n"
	    "FUSE options (see mount.fuse3(8) for all):\n"
	    "    -f                      foreground, log to stderr (else syslog)\n"
	    "    -d                      foreground with FUSE debug output\n"
	    "    -s                      one thread\n"
	    "    -o max_threads=N        worker threads (default 64)\n"
	    "    -o max_idle_threads=N   idle workers kept (default: all)\n"
	    "    -o allow_other          let other users in (root, or\n"
	    "                            user_allow_other in /etc/fuse.conf)\n"
	    "    -o uid=N,gid=N          owner shown for every file (default: "
	    "the daemon's)\n"
	    "    -o ro                   read-only mount\n"
	    "    -o auto_unmount         unmount when the daemon dies\n"
	    "    -o clone_fd             one /dev/fuse descriptor per thread\n",
	    prog);
}

/* ---- start-up checks (SPEC §1) ---- */

/* Whether path a is b or below it (both absolute, canonical). */
static int
path_within(const char *a, const char *b)
{
	size_t n = strlen(b);
	while (n > 1 && b[n - 1] == '/')
		n--;
	if (n == 1 && b[0] == '/')
		return 1;
	return strncmp(a, b, n) == 0 && (a[n] == '\0' || a[n] == '/');
}

static int
check_store(void)
{
	char path[PATH_MAX], holder[PATH_MAX + 64];
	struct stat st;
	int fd, made = 1;

	if (mkdir(cli.store, 0700) < 0 && (made = 0, errno != EEXIST)) {
		fprintf(stderr, "hsmfs: store %s: cannot create: %s\n", cli.store,
		    strerror(errno));
		return -1;
	}
	if (realpath(cli.store, path) == NULL || stat(path, &st) < 0 ||
	    !S_ISDIR(st.st_mode)) {
		fprintf(stderr, "hsmfs: store %s: not a directory\n", cli.store);
		return -1;
	}
	/* Neither inside the other: a mount point in the store makes the
	 * daemon's own scans of the store walk into its mount, and a store
	 * under the mount point is hidden by it (and makes the mount point
	 * non-empty at the next start). */
	if (path_within(path, mnt_abs) || path_within(mnt_abs, path)) {
		fprintf(stderr, "hsmfs: store %s and mount point %s overlap; put "
		    "the mount point outside the store and the store outside the "
		    "mount point\n", path, mnt_abs);
		if (made)
			rmdir(path);
		return -1;
	}
	if (st.st_mode & 077)
		fprintf(stderr, "hsmfs: warning: store %s is accessible by group "
		    "or others (mode %03o); use chmod 700\n", path, st.st_mode & 0777);
	the_fs.store = strdup(path);
	if ((fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		fprintf(stderr, "hsmfs: store %s: %s\n", path, strerror(errno));
		return -1;
	}
	/* One daemon per store, locked before anything in it is touched. */
	switch (storelock_take(fd, &lock_fd, holder, sizeof(holder))) {
	case 0:
		storelock_set_owner(lock_fd, "hsmfs", mnt_abs);
		break;
	case 1:
		fprintf(stderr, "hsmfs: store %s is in use by PID %s; one daemon "
		    "per store: %s\n", path, holder, strstr(holder, " hsmfs ") ?
		    "unmount it first" : "wait for it to finish");
		close(fd);
		return -1;
	default:
		fprintf(stderr, "hsmfs: store %s: cannot lock: %s\n", path,
		    err_detail());
		close(fd);
		return -1;
	}
	if (!the_fs.opt.read_only) {
		struct store_tmp t;
		if (store_tmp_create(fd, &t) != 0) {
			fprintf(stderr, "hsmfs: store %s is not writable: %s\n", path,
			    err_detail());
			close(fd);
			return -1;
		}
		store_tmp_abort(&t);
	}
	the_fs.store_fd = fd;
	return 0;
}

/* The file system type and source mounted exactly at path (absolute), from
 * /proc/self/mountinfo; 0 when path is not a mount point. */
static int
mounted_at(const char *path, char *type, size_t tlen, char *src, size_t slen)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL, mp[PATH_MAX], ty[256], so[PATH_MAX];
	size_t cap = 0;
	int found = 0;

	if (f == NULL)
		return 0;
	while (getline(&line, &cap, f) > 0) {
		char *sep = strstr(line, " - ");
		/* 5th field is the mount point (octal escapes for blanks). */
		if (sep == NULL || sscanf(line, "%*s %*s %*s %*s %4095s", mp) != 1 ||
		    sscanf(sep + 3, "%255s %4095s", ty, so) != 2)
			continue;
		for (char *r = mp, *w = mp;; r++, w++) {
			if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] && r[3]) {
				*w = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
				r += 3;
			} else if ((*w = *r) == '\0')
				break;
		}
		if (strcmp(mp, path) == 0) {
			/* The last mount stacked on path is the visible one. */
			snprintf(type, tlen, "%s", ty);
			snprintf(src, slen, "%s", so);
			found = 1;
		}
	}
	free(line);
	fclose(f);
	return found;
}

/* SPEC §1: the mount point must be an empty directory (unless
 * -o nonempty) and not a live hsmfs mount; a dead mount of a crashed
 * daemon (ENOTCONN) is explained rather than reported as a bare errno. */
static int
check_mountpoint(void)
{
	const char *mp = cli.mountpoint;
	char type[256], src[PATH_MAX], cwd[PATH_MAX];
	struct statfs sfs;
	struct dirent *de;
	struct stat st;
	DIR *d;
	int e = 0;

	/* statfs, unlike stat, is never answered from the kernel's cache. */
	if (statfs(mp, &sfs) < 0 && errno == ENOTCONN)
		e = ENOTCONN;
	else if (stat(mp, &st) < 0)
		e = errno;
	if (e == ENOTCONN) {
		fprintf(stderr, "hsmfs: mount point %s: a dead mount left by an hsmfs "
		    "that stopped without unmounting (Transport endpoint is not "
		    "connected); clear it with 'fusermount3 -uz %s' and start "
		    "again\n", mp, mp);
		return -1;
	}
	if (realpath(mp, mnt_abs) == NULL) {
		if (mp[0] == '/' || getcwd(cwd, sizeof(cwd)) == NULL)
			snprintf(mnt_abs, sizeof(mnt_abs), "%s", mp);
		else if (snprintf(mnt_abs, sizeof(mnt_abs), "%s/%s", cwd, mp) >=
		    (int)sizeof(mnt_abs))
			snprintf(mnt_abs, sizeof(mnt_abs), "%s", mp);
	}
	if (mounted_at(mnt_abs, type, sizeof(type), src, sizeof(src)) &&
	    strcmp(type, "fuse.hsmfs") == 0) {
		fprintf(stderr, "hsmfs: mount point %s is already an hsmfs mount "
		    "(%s); unmount it first (fusermount3 -u %s)\n", mp, src, mp);
		return -1;
	}
	if (e != 0) {
		fprintf(stderr, "hsmfs: mount point %s: %s\n", mp, strerror(e));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		fprintf(stderr, "hsmfs: mount point %s is not a directory\n", mp);
		return -1;
	}
	if (cli.nonempty)
		return 0;
	if ((d = opendir(mp)) == NULL) {
		fprintf(stderr, "hsmfs: mount point %s: %s\n", mp, strerror(errno));
		return -1;
	}
	while ((de = readdir(d)) != NULL)
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
			e = 1;
			break;
		}
	closedir(d);
	if (e) {
		fprintf(stderr, "hsmfs: mount point %s is not empty; its files would "
		    "be hidden: use an empty directory, or -o nonempty to mount over "
		    "them\n", mp);
		return -1;
	}
	return 0;
}

/* The daemon runs with "/" as its working directory (libfuse's
 * daemonize), so every path option becomes absolute before mounting. */
static int
absolutize(char **opt, const char *what, int must_exist)
{
	char buf[PATH_MAX], *dir, *base, *copy, *abs;
	if (*opt == NULL)
		return 0;
	if (must_exist) {
		if (realpath(*opt, buf) == NULL) {
			fprintf(stderr, "hsmfs: %s=%s: %s\n", what, *opt, strerror(errno));
			return -1;
		}
		abs = strdup(buf);
	} else {
		/* The file may not exist yet; its directory must, writable. */
		if ((copy = strdup(*opt)) == NULL)
			return -1;
		dir = dirname(copy);
		if (realpath(dir, buf) == NULL || access(buf, W_OK) != 0) {
			fprintf(stderr, "hsmfs: %s=%s: directory %s: %s\n", what, *opt,
			    dir, strerror(errno));
			free(copy);
			return -1;
		}
		free(copy);
		if ((copy = strdup(*opt)) == NULL)
			return -1;
		base = basename(copy);
		if (asprintf(&abs, "%s/%s", buf, base) < 0)
			abs = NULL;
		free(copy);
	}
	if (abs == NULL)
		return -1;
	free(*opt);
	*opt = abs;
	return 0;
}

/* A PEM file of at least one certificate (truststore=, smtp_ca=);
 * -1 with err_detail() naming the file when not. */
static int
pem_certs_ok(const char *path)
{
	FILE *f;
	X509 *x;
	int n = 0;
	if ((f = fopen(path, "re")) == NULL) {
		err_set("%s: %s", path, strerror(errno));
		return -1;
	}
	while ((x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) {
		n++;
		X509_free(x);
	}
	fclose(f);
	ERR_clear_error();
	if (n == 0) {
		err_set("%s: no PEM certificate found", path);
		return -1;
	}
	return 0;
}

static int
check_pem_certs(const char *what, const char *path)
{
	if (pem_certs_ok(path) == 0)
		return 0;
	fprintf(stderr, "hsmfs: %s %s\n", what, err_detail());
	return -1;
}

static int
check_truststore(void)
{
	if (the_fs.opt.truststore == NULL)
		return 0;
	return check_pem_certs("truststore", the_fs.opt.truststore);
}

/* smtp=URL: smtp://, smtps:// or smtp+starttls://, a host (name, IPv4 or
 * [IPv6]), an optional port 1-65535, nothing after but an optional "/".
 * smtp_auth needs TLS and a user line and a password line; smtp_ca PEM
 * certificates. The mail folder parses the same URL after mounting; this
 * makes its mistakes start-up errors instead of "folder.mail: failed". */
static int
check_smtp(void)
{
	static const char *const schemes[] = { "smtp://", "smtps://",
	    "smtp+starttls://" };
	const char *url = the_fs.opt.smtp, *p = NULL, *host, *end;
	char *txt = NULL;
	size_t len = 0, hl;
	int tls = 0, ok;

	if (url == NULL) {
		if (the_fs.opt.smtp_auth || the_fs.opt.smtp_ca) {
			fprintf(stderr, "hsmfs: smtp_%s= without smtp=URL: name the relay "
			    "too\n", the_fs.opt.smtp_auth ? "auth" : "ca");
			return -1;
		}
		return 0;
	}
	for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++)
		if (strncmp(url, schemes[i], strlen(schemes[i])) == 0) {
			p = url + strlen(schemes[i]);
			tls = i > 0;
		}
	if (p == NULL) {
		fprintf(stderr, "hsmfs: smtp=%s: unsupported scheme; use "
		    "smtp://HOST[:PORT], smtp+starttls://HOST[:PORT] or "
		    "smtps://HOST[:PORT]\n", url);
		return -1;
	}
	host = p;
	if (*p == '[') {
		end = strchr(p, ']');
		ok = end != NULL && end > p + 1 &&
		    strspn(p + 1, "0123456789abcdefABCDEF:.") == (size_t)(end - p - 1);
		p = end ? end + 1 : p;
	} else {
		hl = strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
		    "0123456789.-");
		ok = hl > 0 && p[0] != '-' && p[0] != '.';
		p += hl;
	}
	if (!ok) {
		fprintf(stderr, "hsmfs: smtp=%s: no valid host name after the "
		    "scheme\n", url);
		return -1;
	}
	if (*p == ':') {
		char *e2;
		long port;
		errno = 0;
		port = strtol(p + 1, &e2, 10);
		if (e2 == p + 1 || errno != 0 || port < 1 || port > 65535) {
			fprintf(stderr, "hsmfs: smtp=%s: port must be a number from 1 to "
			    "65535\n", url);
			return -1;
		}
		p = e2;
	}
	if (strcmp(p, "") != 0 && strcmp(p, "/") != 0) {
		fprintf(stderr, "hsmfs: smtp=%s: unexpected \"%s\" after the host%s\n",
		    url, p, p > host ? " and port" : "");
		return -1;
	}
	if (the_fs.opt.smtp_ca && check_pem_certs("smtp_ca", the_fs.opt.smtp_ca) != 0)
		return -1;
	if (the_fs.opt.smtp_auth == NULL)
		return 0;
	if (!tls) {
		fprintf(stderr, "hsmfs: smtp_auth=%s needs TLS: use smtp+starttls:// "
		    "or smtps://\n", the_fs.opt.smtp_auth);
		return -1;
	}
	if (util_read_file(the_fs.opt.smtp_auth, 4096, &txt, &len) != 0) {
		fprintf(stderr, "hsmfs: smtp_auth=%s: %s\n", the_fs.opt.smtp_auth,
		    err_detail());
		return -1;
	}
	{
		char *nl = memchr(txt, '\n', len);
		ok = nl != NULL && nl != txt &&
		    memchr(txt, '\r', (size_t)(nl - txt)) == NULL &&
		    nl + 1 < txt + len && nl[1] != '\n' && nl[1] != '\r';
	}
	OPENSSL_cleanse(txt, len);
	free(txt);
	if (!ok) {
		fprintf(stderr, "hsmfs: smtp_auth=%s: expected a user name line and a "
		    "password line\n", the_fs.opt.smtp_auth);
		return -1;
	}
	return 0;
}

/* Open every key in a child process and report the first failure through
 * a pipe, so the parent never initialises a PKCS#11 module before the
 * fork of daemonize. A wrong PIN is tried exactly once here. */
static int
check_keys(void)
{
	int pfd[2], status;
	pid_t pid;
	char msg[1200];
	ssize_t n, got = 0;

	if (pipe(pfd) < 0) {
		perror("hsmfs: pipe");
		return -1;
	}
	fflush(NULL);
	if ((pid = fork()) < 0) {
		perror("hsmfs: fork");
		return -1;
	}
	if (pid == 0) {
		struct keyring *kr = NULL;
		int r;
		close(pfd[0]);
		secmem_harden(1 << 20);     /* it reads every PIN */
		if ((r = keyring_open(the_fs.engine, &kr)) != 0) {
			snprintf(msg, sizeof(msg), "%s (%s)", err_detail(),
			    hsmfs_strerror(r));
			if (write(pfd[1], msg, strlen(msg)) < 0)
				_exit(2);
			_exit(1);
		}
		keyring_free(kr);
		_exit(0);
	}
	close(pfd[1]);
	while (got < (ssize_t)sizeof(msg) - 1 &&
	    (n = read(pfd[0], msg + got, sizeof(msg) - 1 - (size_t)got)) > 0)
		got += n;
	msg[got > 0 ? got : 0] = '\0';
	close(pfd[0]);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	fprintf(stderr, "hsmfs: %s: %s\n", the_fs.opt.config,
	    got > 0 ? msg : "key check failed (the check process died)");
	return -1;
}

/* fuse_main() without its one flaw for us: it reports an unmount by
 * SIGTERM as a failure, and the SPEC wants exit status 0 then. */
static int
run_fuse(struct fuse_args *args)
{
	struct fuse_cmdline_opts o;
	struct fuse_loop_config *lc = NULL;
	struct fuse_session *se;
	struct fuse *fuse;
	int r = 1, res;

	memset(&o, 0, sizeof(o));
	if (fuse_parse_cmdline(args, &o) != 0)
		return 2;
	if (o.mountpoint == NULL) {
		fprintf(stderr, "hsmfs: no mount point\n");
		return 2;
	}
	if ((fuse = fuse_new(args, &hsmfs_ops, sizeof(hsmfs_ops), &the_fs)) == NULL)
		goto out;
	if (fuse_mount(fuse, o.mountpoint) != 0)
		goto out_destroy;
	if (fuse_daemonize(o.foreground) != 0)
		goto out_unmount;
	se = fuse_get_session(fuse);
	if (fuse_set_signal_handlers(se) != 0)
		goto out_unmount;
	/* SIGHUP reloads (libfuse's handler would unmount). It stays
	 * blocked (since main(): a HUP sent while starting becomes a reload
	 * once mounted) and the reload thread takes it. */
	{
		struct sigaction sa;
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = on_sighup;
		sigemptyset(&sa.sa_mask);
		sa.sa_flags = SA_RESTART;
		if (sigaction(SIGHUP, &sa, NULL) != 0) {
			fprintf(stderr, "hsmfs: cannot handle SIGHUP: %s\n",
			    strerror(errno));
			goto out_signals;
		}
	}
	if (o.singlethread) {
		res = fuse_loop(fuse);
	} else {
		if ((lc = fuse_loop_cfg_create()) == NULL)
			goto out_signals;
		fuse_loop_cfg_set_clone_fd(lc, (unsigned)o.clone_fd);
		fuse_loop_cfg_set_max_threads(lc, o.max_threads);
		/* Unset is UINT_MAX, which the setter logs as invalid. */
		if (o.max_idle_threads != UINT_MAX)
			fuse_loop_cfg_set_idle_threads(lc, o.max_idle_threads);
		res = fuse_loop_mt(fuse, lc);
		fuse_loop_cfg_destroy(lc);
	}
	/* The loop returns the signal number after SIGTERM/SIGINT. */
	r = (res == 0 || res == SIGTERM || res == SIGINT) ? 0 : 1;
out_signals:
	fuse_remove_signal_handlers(se);
out_unmount:
	fuse_unmount(fuse);
out_destroy:
	fuse_destroy(fuse);
out:
	free(o.mountpoint);
	return r;
}

int
main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	char fsname[PATH_MAX + 16];
	int r;

	/* SIGHUP means reload: blocked in every thread for the daemon's life
	 * (the reload thread takes it with sigtimedwait), so one sent while
	 * starting is held back and becomes a reload once mounted. */
	{
		sigset_t hup;
		sigemptyset(&hup);
		sigaddset(&hup, SIGHUP);
		sigprocmask(SIG_BLOCK, &hup, NULL);
	}
	umask(077);
	/* Again in op_init (after daemonising); here already because the
	 * configuration, with its PINs, is read before that. */
	prctl(PR_SET_DUMPABLE, 0);
	metrics_init();
	the_fs.opt.mail_retry = 300;
	the_fs.opt.mail_max_age = 5L * 24 * 3600;
	the_fs.opt.temp_max_age = 3600;
	the_fs.store_fd = -1;
	the_fs.uid = getuid();
	the_fs.gid = getgid();
	the_fs.started = time(NULL);
	hsmfs_ctx = &the_fs;

	if (fuse_opt_parse(&args, &the_fs.opt, opt_spec, opt_proc) < 0)
		return 2;
	if (cli.help) {
		usage(argv[0]);
		fuse_opt_free_args(&args);
		return 0;
	}
	the_fs.opt.log_level = LOG_INFO;
	if (cli.log_level) {
		if ((the_fs.opt.log_level = log_parse_level(cli.log_level)) < 0) {
			fprintf(stderr, "hsmfs: log_level=%s: use error, warning, info "
			    "or debug\n", cli.log_level);
			return 2;
		}
	}
	log_init("hsmfs", 0, the_fs.opt.log_level);
	if (cli.store == NULL || cli.mountpoint == NULL) {
		fprintf(stderr, "hsmfs: usage: hsmfs STORE MOUNTPOINT -o config=FILE"
		    "[,...] (see --help)\n");
		return 2;
	}
	if (the_fs.opt.config == NULL) {
		fprintf(stderr, "hsmfs: missing -o config=FILE (the "
		    "engineSignEncrypt.xml)\n");
		return 2;
	}
	if (the_fs.opt.mail_retry <= 0 || the_fs.opt.mail_max_age <= 0 ||
	    the_fs.opt.temp_max_age <= 0) {
		fprintf(stderr, "hsmfs: mail_retry, mail_max_age and temp_max_age must be "
		    "positive numbers of seconds\n");
		return 2;
	}
	if (the_fs.opt.classpath != NULL &&
	    engine_set_classpath(the_fs.opt.classpath) != 0) {
		fprintf(stderr, "hsmfs: %s\n", err_detail());
		return 2;
	}
	if ((r = engine_load(the_fs.opt.config, &the_fs.engine)) != 0) {
		fprintf(stderr, "hsmfs: %s\n", err_detail());
		return 1;
	}
	if (absolutize(&the_fs.opt.truststore, "truststore", 1) != 0 ||
	    absolutize(&the_fs.opt.history_anchor, "history_anchor", 0) != 0 ||
	    absolutize(&the_fs.opt.smtp_ca, "smtp_ca", 1) != 0 ||
	    absolutize(&the_fs.opt.smtp_auth, "smtp_auth", 1) != 0 ||
	    absolutize(&the_fs.opt.config, "config", 1) != 0)
		return 1;
	if (check_mountpoint() != 0 || check_store() != 0 ||
	    check_truststore() != 0 || check_smtp() != 0 || check_keys() != 0)
		return 1;

	/* Many concurrent writers feed one history group commit: libfuse's
	 * default of 10 workers would cap a batch at 10. */
	{
		int has = 0;
		for (int i = 0; i < args.argc; i++)
			has |= strstr(args.argv[i], "max_threads=") != NULL;
		if (!has)
			fuse_opt_add_arg(&args, "-omax_threads=64");
	}
	/* default_permissions always: the kernel enforces the modes we show. */
	fuse_opt_add_arg(&args, "-odefault_permissions");
	snprintf(fsname, sizeof(fsname), "-ofsname=hsmfs:%s", the_fs.store);
	/* A comma in the store path would split the option string. */
	if (strchr(the_fs.store, ',') == NULL)
		fuse_opt_insert_arg(&args, 1, fsname);
	fuse_opt_insert_arg(&args, 1, "-osubtype=hsmfs");

	r = run_fuse(&args);
	fuse_opt_free_args(&args);
	engine_free(the_fs.engine);
	return r;
}
