/* Private to the hsmfs executable: the state fs/main.c (options, run),
 * fs/checks.c (start-up checks), fs/ops.c (routing, op wrappers, init and
 * destroy) and fs/reload.c (SIGHUP reload, configuration lock) share.
 * Folders never include it: they see fs/fs.h only. */
#ifndef HSMFS_FS_DAEMON_H
#define HSMFS_FS_DAEMON_H

#include "fs/fs.h"
#include "store/pg_cluster.h"

#include <limits.h>
#include <stdio.h>

/* ---- fs/main.c ---- */
extern struct hsmfs the_fs;
#define NFOLDERS 5
extern const struct folder_ops *const folders[NFOLDERS];
extern int folder_ok[NFOLDERS];    /* start() succeeded */
extern int folder_err[NFOLDERS];   /* start()'s error when not ok */
extern char folder_why[NFOLDERS][256];   /* start()'s detail when not ok */
extern int lock_fd;                /* STORE/lock, held for the daemon's life */
extern char mnt_abs[PATH_MAX];     /* the mount point, absolute */

/* Command-line arguments that are not hsmfs_opts. */
struct cli {
	char *store;
	char *mountpoint;
	char *log_level;
	int nonopt;
	int help;
	int nonempty;          /* -o nonempty: mount over a non-empty directory */
};
extern struct cli cli;

/* sd_notify(3) when run by systemd (NOTIFY_SOCKET set); a no-op else. */
void notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- fs/checks.c: start-up checks, each prints its own error ---- */
int check_mountpoint(void);
int check_store(void);
int check_truststore(void);
int check_smtp(void);
int check_keys(void);
int absolutize(char **opt, const char *what, int must_exist);
/* A PEM file of at least one certificate; -1 with err_detail() if not. */
int pem_certs_ok(const char *path);
/* shared=: the database pool, schema and configuration check (fs/checks.c). */
#define SHARED_POOL 8
int shared_join(struct keyring *kr, enum pg_cluster_mode mode, struct pg **out,
    char *origin, size_t origin_size);
int shared_config(struct pg *p, const struct engine *e, struct keyring *kr,
    enum pg_cluster_mode mode, char *origin, size_t origin_size);
const char *node_name(void);

/* ---- fs/ops.c ---- */
extern const struct fuse_operations hsmfs_ops;

/* ---- fs/reload.c ---- */
/* Before an operation reaches a folder: the reload gate, then the
 * configuration lock for reading (fs_conf_unlock() after). */
void op_enter(void);
void reload_start(void);
void reload_stop(void);
/* The config.* lines of .status. */
void reload_status(FILE *f);
void on_sighup(int sig);

#endif
