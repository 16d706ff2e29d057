/* SIGHUP reload of the hsmfs daemon and the configuration lock every
 * operation holds for reading (fs/daemon.h). */
#include "fs/daemon.h"
#include "crypto/pin.h"

#include "common/err.h"
#include "common/log.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

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


void fs_conf_rdlock(void) { pthread_rwlock_rdlock(&conf_lock); }
void fs_conf_unlock(void) { pthread_rwlock_unlock(&conf_lock); }

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
	int r, recorded = 0;

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
	/* Shared store: what the mount does (fs/checks.c shared_config, JOIN):
	 * a configuration the cluster would refuse at mount is refused here,
	 * an accepted one is recorded (this node's row; the cluster's during
	 * a rolling rotation) before the folders prepare, since /fields reads
	 * the nodes' rows to pick the version it seals with. */
	if (the_fs.sconf.pg != NULL) {
		err_clear();
		if ((r = shared_config(the_fs.sconf.pg, ne, nk, PG_CLUSTER_JOIN,
		    NULL, 0)) != 0) {
			err_prefix("shared store: ");
			goto fail;
		}
		recorded = 1;
	}
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
		if (recorded)
			log_warn("shared store: the database keeps this node's new "
			    "configuration recorded although the reload failed; "
			    "fix %s and reload again", the_fs.opt.config);
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
void
on_sighup(int sig)
{
	(void)sig;
}
/* The lock prefers readers (a committing thread nests its read lock in a
 * flush's), so a steady stream of operations could keep a reload waiting
 * for ever. While a reload waits, a new operation first waits for it at
 * this gate, for at most RELOAD_GATE_MS: long enough for operations in
 * flight to drain, bounded so that an operation that in-flight work
 * depends on can never be held back indefinitely. */
void
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


void
reload_status(FILE *f)
{
	pthread_mutex_lock(&reload_mu);
	fprintf(f, "config.file: %s\n", the_fs.opt.config);
	fprintf(f, "config.generation: %lu\n", conf_generation);
	fprintf(f, "config.reloads: %lu\n", reload_attempts);
	fprintf(f, "config.reload: %s\n", reload_result);
	fprintf(f, "config.reload_time: %lld\n", (long long)reload_time);
	fprintf(f, "config.reloading: %s\n", reload_busy ? "yes" : "no");
	pthread_mutex_unlock(&reload_mu);
}

void
reload_start(void)
{
	int r;
	if ((r = pthread_create(&reload_tid, NULL, reload_main, NULL)) == 0)
		reload_running = 1;
	else
		log_err("cannot start the reload thread: %s; SIGHUP is ignored",
		    strerror(r));
}

void
reload_stop(void)
{
	if (reload_running) {
		reload_quit = 1;
		pthread_kill(reload_tid, SIGHUP);
		pthread_join(reload_tid, NULL);
		reload_running = 0;
	}
}
