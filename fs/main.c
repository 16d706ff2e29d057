/* hsmfs daemon: options, usage, main and the FUSE loop. The start-up
 * checks are in fs/checks.c, the dispatch of FUSE calls to the folder
 * that owns the path's first component in fs/ops.c, the SIGHUP reload
 * in fs/reload.c (their shared state: fs/daemon.h).
 *
 * Start-up order matters: every check runs before mounting, and the key
 * check runs in a short-lived child process, because a PKCS#11 module
 * must not be initialised before libfuse daemonizes (fork) — the daemon
 * opens its keys in the FUSE init callback, after the fork. */
#include "fs/daemon.h"

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
struct hsmfs the_fs;

const struct folder_ops *const folders[] = {
	&signout_folder,
	&verifyin_folder,
	&fields_folder,
	&history_folder,
	&mail_folder,
};
_Static_assert(sizeof(folders) / sizeof(folders[0]) == NFOLDERS,
    "fs/daemon.h: NFOLDERS");
int folder_ok[NFOLDERS];
int folder_err[NFOLDERS];
char folder_why[NFOLDERS][256];
int lock_fd = -1;
char mnt_abs[PATH_MAX];

void
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

/* ---- options ---- */

enum { KEY_HELP, KEY_VERSION, KEY_RO, KEY_FG };

struct cli cli;

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
	OPT("mail_lease=%ld", mail_lease),
	OPT("temp_max_age=%ld", temp_max_age),
	OPT("shared=%s", shared),
	OPT("shared_password=%s", shared_password),
	OPT("node=%s", node),
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
	    "    -o mail_lease=S         a claimed message stays this node's S seconds (600)\n"
	    "    -o history_anchor=FILE  copy of history checkpoints on another volume\n"
	    "    -o classpath=DIR[:DIR]  where locationValue=\"classpath:NAME\" is looked\n"
	    "                            up (default: the config file's directory)\n"
	    "    -o temp_max_age=S       remove writers' temporaries (.NAME) not renamed\n"
	    "                            into place after S seconds (3600)\n"
	    "    -o shared=URI           keep /fields in PostgreSQL (a libpq URI,\n"
	    "                            no password in it; docs/scale.md)\n"
	    "    -o shared_password=FILE the database password (mode 0600)\n"
	    "    -o node=NAME            this node's name in the cluster (hostname)\n"
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

/* fuse_main() without its one flaw for us: it reports an unmount by
 * SIGTERM as a failure, and docs/contract.md §1 wants exit status 0 then. */
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
	the_fs.opt.mail_lease = 600;
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
	    the_fs.opt.mail_lease <= 0 || the_fs.opt.temp_max_age <= 0) {
		fprintf(stderr, "hsmfs: mail_retry, mail_max_age, mail_lease and "
		    "temp_max_age must be "
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
	    absolutize(&the_fs.opt.config, "config", 1) != 0 ||
	    absolutize(&the_fs.opt.shared_password, "shared_password", 1) != 0)
		return 1;
	if (the_fs.opt.shared_password && the_fs.opt.shared == NULL) {
		fprintf(stderr, "hsmfs: shared_password= needs shared=URI\n");
		return 2;
	}
	the_fs.sconf.dirfd = -1;
	the_fs.sconf.shared = the_fs.opt.shared;
	the_fs.sconf.shared_password = the_fs.opt.shared_password;
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
