/* The daemon's shared state and the folder interface. Each top-level
 * folder of the mount is one struct folder_ops in its own file (fs/<folder>.c);
 * fs/main.c routes every FUSE call by the first path component. */
#ifndef HSMFS_FS_H
#define HSMFS_FS_H

#include <fuse.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>

#include "crypto/engine.h"
#include "crypto/keyring.h"
#include "fs/metrics.h"
#include "store/store.h"

struct hsmfs_opts {
	char *config;
	char *truststore;
	char *smtp;
	char *smtp_ca;        /* CA PEM for the relay's TLS certificate */
	char *smtp_auth;      /* file: user name line, password line */
	char *history_anchor;
	char *classpath;      /* DIR[:DIR...] for locationValue="classpath:" */
	long mail_retry;      /* seconds, default 300 */
	long mail_max_age;    /* seconds, default 5 days */
	long mail_lease;      /* seconds a claimed message stays this node's (600) */
	long temp_max_age;    /* seconds a writer's temporary may wait for its rename */
	char *shared;         /* libpq URI of the shared store (contract §9), or NULL */
	char *shared_password; /* file holding the database password, or NULL */
	char *node;           /* this node's name in the cluster (NULL: hostname) */
	int log_level;
	int foreground;
	int read_only;        /* -o ro */
};

struct hsmfs {
	struct hsmfs_opts opt;
	char *store;          /* absolute path of STORE */
	int store_fd;         /* O_DIRECTORY fd of STORE */
	/* Where every area keeps its state: dirfd = store_fd, and with
	 * shared= the database pool (opened in FUSE init, before any folder
	 * starts; closed at destroy after they stopped). Folders open their
	 * areas from this and never build their own. */
	struct store_conf sconf;
	char cluster_origin[256]; /* the cluster's name when shared */
	struct engine *engine;
	struct keyring *keys; /* opened in init, after daemonizing */
	time_t started;
	uid_t uid;            /* owner of the mount (files report it) */
	gid_t gid;
};

/* The one daemon instance (set up in fs/main.c before any folder runs). */
extern struct hsmfs *hsmfs_ctx;

/* Every path given to a folder is relative to it: "" for the folder
 * itself, "name", ".sealed/name", "sent/name". Return 0 or -errno.
 * fi->fh belongs to the folder (set it in open/create); fs/main.c keeps it
 * in its own per-open record and hands the folder a copy of fi with that
 * fh, and a non-NULL path even for a file unlinked while open (the name it
 * had at open). Missing callbacks: fs/main.c answers ENOENT for lookups, an empty
 * listing for readdir, EOPNOTSUPP for writes, EPERM for changes. */
struct folder_ops {
	const char *name;     /* "sign-out", "fields", ... */
	/* In FUSE init, after daemonizing and opening the keys: recover the
	 * store, start threads. A failure is logged; the folder then refuses
	 * writes with EOPNOTSUPP. */
	int (*start)(void);
	/* At unmount, in reverse order, for every folder whose start() ran,
	 * also when it failed half way: finish or fail in-flight work, join
	 * threads, close what start() opened. Must be safe after any failure
	 * of start() and when called twice. */
	void (*stop)(void);
	/* Lines "key: value\n" for MNT/.status, prefixed by the folder. */
	void (*status)(FILE *out);
	/* Series for MNT/.metrics (fs/metrics.h), when the folder is ready. */
	void (*metrics)(struct metrics *m);

	/* SIGHUP reload (optional), called with every operation drained
	 * (fs/main.c holds the configuration lock for writing): prepare
	 * checks that the folder works with the new engine and keys and
	 * builds what it derives from them into *next (a failure refuses the
	 * whole reload, err_detail() says why); finish then adopts next
	 * (commit = 1, the old state is freed) or frees it (commit = 0).
	 * Without them a folder keeps what it took at start. */
	int (*reload_prepare)(const struct engine *e, struct keyring *kr,
	    void **next);
	void (*reload_finish)(void *next, int commit);

	int (*getattr)(const char *path, struct stat *st, struct fuse_file_info *fi);
	int (*readdir)(const char *path, void *buf, fuse_fill_dir_t fill);
	int (*open)(const char *path, struct fuse_file_info *fi);
	int (*create)(const char *path, mode_t mode, struct fuse_file_info *fi);
	int (*read)(const char *path, char *buf, size_t size, off_t off,
	    struct fuse_file_info *fi);
	int (*write)(const char *path, const char *buf, size_t size, off_t off,
	    struct fuse_file_info *fi);
	int (*flush)(const char *path, struct fuse_file_info *fi);
	int (*fsync)(const char *path, int datasync, struct fuse_file_info *fi);
	int (*release)(const char *path, struct fuse_file_info *fi);
	int (*truncate)(const char *path, off_t size, struct fuse_file_info *fi);
	int (*unlink)(const char *path);
	/* Both paths in this folder; across folders main answers EXDEV. */
	int (*rename)(const char *from, const char *to, unsigned int flags);
	int (*chmod)(const char *path, mode_t mode, struct fuse_file_info *fi);
	int (*utimens)(const char *path, const struct timespec tv[2],
	    struct fuse_file_info *fi);
	int (*getxattr)(const char *path, const char *name, char *value, size_t size);
	int (*setxattr)(const char *path, const char *name, const char *value,
	    size_t size, int flags);
	int (*listxattr)(const char *path, char *list, size_t size);
	int (*removexattr)(const char *path, const char *name);
};

extern const struct folder_ops signout_folder;
extern const struct folder_ops verifyin_folder;
extern const struct folder_ops fields_folder;
extern const struct folder_ops history_folder;
extern const struct folder_ops mail_folder;

/* The configuration lock (fs/main.c): every FUSE operation runs with it
 * held for reading, so hsmfs_ctx->engine and ->keys and what folders
 * derive from them stay put; a reload takes it for writing to swap them.
 * A folder's own thread that uses a key a reload can change holds it
 * around that use. Reader-preferring: nesting within an operation is
 * safe. Take it before any folder lock. */
void fs_conf_rdlock(void);
void fs_conf_unlock(void);

/* Helpers for folders (fs/main.c). */
/* Fill st for a directory / regular file owned by the mount's user. */
void fs_stat_dir(struct stat *st);
void fs_stat_file(struct stat *st, mode_t mode, off_t size, time_t mtime);
/* Copy an attribute value for getxattr semantics (size 0 = query). */
int fs_xattr_reply(const char *val, size_t len, char *buf, size_t size);
/* Log one failure line: "folder/object: key K: what: detail". */
void fs_log_fail(const char *folder, const char *object, const char *key,
    const char *what, int r);
/* The descriptor new work of desc uses (fs/checks.c): e's newest version,
 * or on a shared store the newest one every node of the cluster has (the
 * rolling rotation: a node that has a new version before the others
 * keeps using the previous one, logged once with folder). *d untouched
 * on failure (a code). */
int fs_cluster_newest(const struct engine *e, const char *desc,
    const char *folder, const struct engine_descriptor **d);

#endif
