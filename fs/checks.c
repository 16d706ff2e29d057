/* Start-up checks of the hsmfs daemon (docs/contract.md §1), run before mounting:
 * store, mount point, path options, truststore, SMTP options and keys.
 * Each prints one line to stderr and returns -1 on failure. */
#include "fs/smtp.h"
#include "fs/daemon.h"

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "store/dirio.h"
#include "store/storelock.h"
#include "store/pg.h"
#include "store/pg_cluster.h"
#include "crypto/fingerprint.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>

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

int
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
	the_fs.sconf.dirfd = fd;
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

/* util_foreach_dir callback: stop at the first entry. */
static int
any_entry(int dirfd, const char *name, void *arg)
{
	(void)dirfd;
	(void)name;
	(void)arg;
	return 1;
}

/* contract §1: the mount point must be an empty directory (unless
 * -o nonempty) and not a live hsmfs mount; a dead mount of a crashed
 * daemon (ENOTCONN) is explained rather than reported as a bare errno. */
int
check_mountpoint(void)
{
	const char *mp = cli.mountpoint;
	char type[256], src[PATH_MAX], cwd[PATH_MAX];
	struct statfs sfs;
	struct stat st;
	int e = 0, fd;

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
	if ((fd = open(mp, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		fprintf(stderr, "hsmfs: mount point %s: %s\n", mp, strerror(errno));
		return -1;
	}
	e = util_foreach_dir(fd, any_entry, NULL);
	close(fd);
	if (e < 0) {
		fprintf(stderr, "hsmfs: mount point %s: %s\n", mp, err_detail());
		return -1;
	}
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
int
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
int
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

int
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
int
check_smtp(void)
{
	const char *url = the_fs.opt.smtp;
	struct smtp_relay rl;

	if (url == NULL) {
		if (the_fs.opt.smtp_auth || the_fs.opt.smtp_ca) {
			fprintf(stderr, "hsmfs: smtp_%s= without smtp=URL: name the relay "
			    "too\n", the_fs.opt.smtp_auth ? "auth" : "ca");
			return -1;
		}
		return 0;
	}
	/* The parse the mail sender uses: scheme, host, port, AUTH file. */
	if (smtp_relay_init(&rl, url, NULL, the_fs.opt.smtp_auth) != 0) {
		fprintf(stderr, "hsmfs: %s\n", err_detail());
		return -1;
	}
	smtp_relay_clear(&rl);
	if (the_fs.opt.smtp_ca && check_pem_certs("smtp_ca", the_fs.opt.smtp_ca) != 0)
		return -1;
	return 0;
}

/* Open every key in a child process and report the first failure through
 * a pipe, so the parent never initialises a PKCS#11 module before the
 * fork of daemonize. A wrong PIN is tried exactly once here. */
int
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
		/* The shared store's checks need the keys' certificates. */
		if (the_fs.opt.shared != NULL &&
		    shared_join(kr, PG_CLUSTER_CHECK, NULL, NULL, 0) != 0) {
			snprintf(msg, sizeof(msg), "%s", err_detail());
			keyring_free(kr);
			if (write(pfd[1], msg, strlen(msg)) < 0)
				_exit(2);
			_exit(3);
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
	if (WIFEXITED(status) && WEXITSTATUS(status) == 3) {
		fprintf(stderr, "hsmfs: shared store: %s\n", msg);
		return -1;
	}
	fprintf(stderr, "hsmfs: %s: %s\n", the_fs.opt.config,
	    got > 0 ? msg : "key check failed (the check process died)");
	return -1;
}


/* One transaction on pool p: compare the configuration (e, kr) with the
 * cluster's (CHECK), or also record it (JOIN: a rolling rotation's union
 * in hsmfs_cluster, this node's row in hsmfs_nodes). At mount (below) and
 * at a reload (fs/reload.c). origin (may be NULL) gets the cluster's
 * name. err_detail() names the failure or the difference. */
int
shared_config(struct pg *p, const struct engine *e, struct keyring *kr,
    enum pg_cluster_mode mode, char *origin, size_t origin_size)
{
	struct pg_cluster_info info;
	struct pg_conn *c = NULL;
	char *lines = NULL;
	int r;

	if ((r = fingerprint_lines(e, kr, &lines)) != 0 ||
	    (r = pg_acquire(p, &c)) != 0)
		goto out;
	if ((r = pg_schema_check(c)) != 0 || (r = pg_begin(c)) != 0)
		goto out;
	if ((r = pg_cluster_config(c, mode, mode == PG_CLUSTER_CHECK ? NULL :
	    node_name(), lines, NULL, &info)) != 0) {
		pg_rollback(c);
		goto out;
	}
	if (mode == PG_CLUSTER_CHECK)
		pg_rollback(c);
	else if ((r = pg_commit(c, NULL)) != 0)
		goto out;
	if (origin)
		snprintf(origin, origin_size, "%s", info.origin);
	if (mode != PG_CLUSTER_CHECK && info.outcome == PG_CLUSTER_ROTATION)
		log_info("shared store: configuration %.16s recorded (rolling "
		    "rotation: newer versions added)", info.fingerprint);
out:
	free(lines);
	if (c)
		pg_release(p, c);
	return r;
}

/* The shared store at start: open a pool, check the schema, compare this
 * node's configuration fingerprint with the cluster's (mode CHECK before
 * mounting; JOIN in FUSE init: record a rolling rotation, register the
 * node) in one transaction. *out (NULL: closed again) keeps the pool;
 * origin gets the cluster's name. err_detail() names the failure. */
int
shared_join(struct keyring *kr, enum pg_cluster_mode mode, struct pg **out,
    char *origin, size_t origin_size)
{
	struct pg_conf pc = {0};
	struct pg *p = NULL;
	int r;

	if (out)
		*out = NULL;
	pc.uri = the_fs.opt.shared;
	pc.password_file = the_fs.opt.shared_password;
	pc.node = the_fs.opt.node;
	pc.pool_size = SHARED_POOL;
	if ((r = pg_open(&pc, &p)) == 0)
		r = shared_config(p, the_fs.engine, kr, mode, origin, origin_size);
	if (r == 0 && out)
		*out = p;
	else
		pg_close(p);
	return r;
}

/* -o node=NAME, else the host name (as pg_open names the connection). */
const char *
node_name(void)
{
	static char host[64];

	if (the_fs.opt.node)
		return the_fs.opt.node;
	if (host[0] == '\0' && gethostname(host, sizeof(host) - 1) != 0)
		snprintf(host, sizeof(host), "unknown");
	return host;
}

int
fs_cluster_newest(const struct engine *e, const char *desc,
    const char *folder, const struct engine_descriptor **d)
{
	const struct engine_descriptor *best = NULL;
	int cv, r;

	if ((r = pg_cluster_version(&hsmfs_ctx->sconf, desc, &cv)) != 0 ||
	    cv <= 0 || (*d)->version <= cv)
		return r;
	for (size_t i = 0; i < e->ndescs; i++)
		if (strcmp(e->descs[i].name, desc) == 0 &&
		    e->descs[i].version <= cv &&
		    (best == NULL || e->descs[i].version > best->version))
			best = &e->descs[i];
	if (best != NULL) {
		log_info("%s: %s version %d is not on every node of the cluster "
		    "yet; new work uses version %d", folder, desc, (*d)->version,
		    best->version);
		*d = best;
	}
	return 0;
}
