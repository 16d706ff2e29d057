/* A fault-injecting PKCS#11 module for tests only: it loads the real module
 * (env HSMFS_SHIM_MODULE, default SoftHSM2), forwards every call through a
 * copy of its function list, and injects the faults a control file asks for.
 *
 * Control file (env HSMFS_SHIM_CONTROL), re-read whenever it changes, so a
 * test can switch faults while the daemon runs (write it atomically:
 * temp + rename). One directive per line, '#' comments:
 *   fail FUNC[,FUNC...] CKR_NAME|0xHEX [count=N] [prob=P] [after=N]
 *       count=N: the next N matching calls fail, then the rule is spent;
 *       prob=P: each matching call fails with probability P;
 *       after=N: let N matching calls through first; none: fail every call.
 *   delay FUNC[,FUNC...] ms=N            add latency before forwarding
 *   removed                              token absent: C_GetSlotList(TRUE)
 *       lists no slot, C_GetSlotInfo clears CKF_TOKEN_PRESENT, token/session
 *       calls fail with CKR_TOKEN_NOT_PRESENT / CKR_DEVICE_REMOVED. On
 *       removal every real session is closed (the login is lost with them),
 *       as a real token pulled from its reader does.
 *   closeall                             one shot per control-file version:
 *       close every real session (handles go stale, login lost), like an
 *       HSM restart behind the application's back.
 *   swap_slots                           C_GetSlotList lists its first two
 *       slots the other way round (a token found again under another slot
 *       ID behind a p11-kit server, which numbers the slots it exports in
 *       this order; SoftHSM's uninitialised slot stays last, where p11-kit
 *       expects it).
 * FUNC is a PKCS#11 function name ("C_Sign") or "*" for every function.
 * The older control directory of tests/test_hsm.py (env P11SHIM_CTL, real
 * module in P11SHIM_REAL) works too, checked on every call: files
 * "flags" (hex, OR-ed into CK_TOKEN_INFO.flags: PIN locked/final try),
 * "fail_ops" (C_SignInit/C_DecryptInit fail with CKR_DEVICE_ERROR),
 * "removed" (as above) and "logins" (a line appended per C_Login call).
 * Counters (calls and injected faults per function) go to env
 * HSMFS_SHIM_STATS ("%p" is replaced by the pid) as "KEY VALUE" lines,
 * updated in place on every call (a shared mapping, see below). */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define SHIM_EXPORT __attribute__((visibility("default")))
#define SHIM_MAX_RULES 32
#define SHIM_MAX_SLOTS 64

enum shim_fn {
#define SHIM_FN(name) FN_##name,
#include "p11shim_fns.h"
#undef SHIM_FN
	FN_COUNT
};

static const char *const shim_fn_names[FN_COUNT] = {
#define SHIM_FN(name) #name,
#include "p11shim_fns.h"
#undef SHIM_FN
};

static const struct {
	const char *name;
	CK_RV rv;
} shim_ckrs[] = {
	{ "CKR_OK", CKR_OK },
	{ "CKR_GENERAL_ERROR", CKR_GENERAL_ERROR },
	{ "CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED },
	{ "CKR_DEVICE_ERROR", CKR_DEVICE_ERROR },
	{ "CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY },
	{ "CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED },
	{ "CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID },
	{ "CKR_SESSION_CLOSED", CKR_SESSION_CLOSED },
	{ "CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT },
	{ "CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN },
	{ "CKR_PIN_INCORRECT", CKR_PIN_INCORRECT },
	{ "CKR_PIN_LOCKED", CKR_PIN_LOCKED },
	{ "CKR_HOST_MEMORY", CKR_HOST_MEMORY },
	{ "CKR_FUNCTION_CANCELED", CKR_FUNCTION_CANCELED },
	{ "CKR_OPERATION_ACTIVE", CKR_OPERATION_ACTIVE },
	{ "CKR_KEY_HANDLE_INVALID", CKR_KEY_HANDLE_INVALID },
	{ "CKR_OBJECT_HANDLE_INVALID", CKR_OBJECT_HANDLE_INVALID },
	{ "CKR_SESSION_COUNT", CKR_SESSION_COUNT },
};

enum shim_kind { RULE_FAIL = 1, RULE_DELAY };

struct shim_rule {
	enum shim_kind kind;
	uint8_t fns[FN_COUNT];     /* 1: the rule applies to this function */
	CK_RV rv;
	long count;                /* -1: unlimited */
	long after;                /* matching calls to let through first */
	double prob;               /* <0: always */
	long ms;
};

/* Everything below is guarded by shim_lock; the real module is called
 * without it (it has its own locking, and delays must not serialise). */
static pthread_mutex_t shim_lock = PTHREAD_MUTEX_INITIALIZER;
static CK_FUNCTION_LIST *real;
static CK_FUNCTION_LIST shim_list;
static void *real_handle;
static const char *ctl_path;
static char stats_path[4096];
static struct timespec ctl_mtime;
static ino_t ctl_ino;
static off_t ctl_size;
static int ctl_seen;            /* a control file version has been parsed */
static struct shim_rule rules[SHIM_MAX_RULES];
static size_t nrules;
static int removed;
static int swap_slots;
static unsigned long calls[FN_COUNT];
static unsigned long injected[FN_COUNT];
static unsigned long injected_total, delayed_total, removals, closealls;
static unsigned int rng_state = 0x2545f491;

static double
shim_rand_locked(void)
{
	return (double)rand_r(&rng_state) / ((double)RAND_MAX + 1.0);
}

static int
shim_fn_lookup(const char *name)
{
	for (int i = 0; i < FN_COUNT; i++)
		if (strcmp(shim_fn_names[i], name) == 0)
			return i;
	return -1;
}

static int
shim_ckr_lookup(const char *name, CK_RV *rv)
{
	char *end;

	for (size_t i = 0; i < sizeof(shim_ckrs) / sizeof(shim_ckrs[0]); i++)
		if (strcmp(shim_ckrs[i].name, name) == 0) {
			*rv = shim_ckrs[i].rv;
			return 0;
		}
	errno = 0;
	*rv = strtoul(name, &end, 0);
	return (errno == 0 && *end == '\0' && end != name) ? 0 : -1;
}

static const char *
shim_ckr_name(CK_RV rv)
{
	for (size_t i = 0; i < sizeof(shim_ckrs) / sizeof(shim_ckrs[0]); i++)
		if (shim_ckrs[i].rv == rv)
			return shim_ckrs[i].name;
	return "CKR_other";
}

/* Close every real session on every slot: a pulled token or a restarted
 * HSM takes sessions and login state with it. */
static void
shim_close_all_real(void)
{
	CK_SLOT_ID slots[SHIM_MAX_SLOTS];
	CK_ULONG n = SHIM_MAX_SLOTS;

	if (real == NULL || real->C_GetSlotList(CK_FALSE, slots, &n) != CKR_OK)
		return;
	for (CK_ULONG i = 0; i < n; i++)
		real->C_CloseAllSessions(slots[i]);
}

static int
shim_parse_fns(char *list, uint8_t *fns)
{
	char *save = NULL;

	memset(fns, 0, FN_COUNT);
	for (char *f = strtok_r(list, ",", &save); f; f = strtok_r(NULL, ",", &save)) {
		if (strcmp(f, "*") == 0) {
			memset(fns, 1, FN_COUNT);
			continue;
		}
		int i = shim_fn_lookup(f);
		if (i < 0) {
			fprintf(stderr, "p11shim: unknown function %s\n", f);
			return -1;
		}
		fns[i] = 1;
	}
	return 0;
}

/* Parse one control-file version into rules; returns the one-shot
 * actions it asks for (bit 1: closeall) and the removed state. */
static void
shim_parse_locked(FILE *f, int *want_removed, int *want_closeall)
{
	char line[512];

	nrules = 0;
	swap_slots = 0;
	*want_removed = 0;
	*want_closeall = 0;
	while (fgets(line, sizeof(line), f) != NULL) {
		char *save = NULL, *w, *fnlist;
		struct shim_rule r;

		line[strcspn(line, "#\r\n")] = '\0';
		if ((w = strtok_r(line, " \t", &save)) == NULL)
			continue;
		if (strcmp(w, "removed") == 0) {
			*want_removed = 1;
			continue;
		}
		if (strcmp(w, "closeall") == 0) {
			*want_closeall = 1;
			continue;
		}
		if (strcmp(w, "swap_slots") == 0) {
			swap_slots = 1;
			continue;
		}
		memset(&r, 0, sizeof(r));
		r.count = -1;
		r.prob = -1.0;
		if (strcmp(w, "fail") == 0)
			r.kind = RULE_FAIL;
		else if (strcmp(w, "delay") == 0)
			r.kind = RULE_DELAY;
		else {
			fprintf(stderr, "p11shim: unknown directive %s\n", w);
			continue;
		}
		if ((fnlist = strtok_r(NULL, " \t", &save)) == NULL ||
		    shim_parse_fns(fnlist, r.fns) != 0)
			continue;
		if (r.kind == RULE_FAIL) {
			char *ckr = strtok_r(NULL, " \t", &save);
			if (ckr == NULL || shim_ckr_lookup(ckr, &r.rv) != 0) {
				fprintf(stderr, "p11shim: bad CKR %s\n", ckr ? ckr : "(none)");
				continue;
			}
		}
		while ((w = strtok_r(NULL, " \t", &save)) != NULL) {
			if (strncmp(w, "count=", 6) == 0)
				r.count = strtol(w + 6, NULL, 10);
			else if (strncmp(w, "after=", 6) == 0)
				r.after = strtol(w + 6, NULL, 10);
			else if (strncmp(w, "prob=", 5) == 0)
				r.prob = strtod(w + 5, NULL);
			else if (strncmp(w, "ms=", 3) == 0)
				r.ms = strtol(w + 3, NULL, 10);
			else if (strncmp(w, "seed=", 5) == 0)
				rng_state = (unsigned int)strtoul(w + 5, NULL, 10);
			else
				fprintf(stderr, "p11shim: unknown option %s\n", w);
		}
		if (nrules < SHIM_MAX_RULES)
			rules[nrules++] = r;
	}
}

/* Re-read the control file when its identity (inode, size, mtime)
 * changed; a missing file means no faults. */
static void
shim_reload_locked(void)
{
	struct stat st;
	int want_removed = 0, want_closeall = 0;
	FILE *f;

	if (ctl_path == NULL)
		return;
	if (stat(ctl_path, &st) != 0) {
		if (ctl_seen) {
			nrules = 0;
			removed = 0;
			swap_slots = 0;
			ctl_seen = 0;
		}
		return;
	}
	if (ctl_seen && st.st_ino == ctl_ino && st.st_size == ctl_size &&
	    st.st_mtim.tv_sec == ctl_mtime.tv_sec &&
	    st.st_mtim.tv_nsec == ctl_mtime.tv_nsec)
		return;
	if ((f = fopen(ctl_path, "r")) == NULL)
		return;
	shim_parse_locked(f, &want_removed, &want_closeall);
	fclose(f);
	ctl_seen = 1;
	ctl_ino = st.st_ino;
	ctl_size = st.st_size;
	ctl_mtime = st.st_mtim;
	if (want_removed && !removed) {
		removals++;
		shim_close_all_real();
	}
	removed = want_removed;
	if (want_closeall) {
		closealls++;
		shim_close_all_real();
	}
}

/* The stats file is a shared mapping of fixed 64-byte lines "NAME VALUE\n"
 * (value zero-padded), updated in place: figures stay exact even when
 * the process ends with _exit() or SIGKILL, at the cost of no syscall. */
#define STAT_LINE 64
enum { ST_PID, ST_INJECTED, ST_DELAYED, ST_REMOVALS, ST_CLOSEALL, ST_FIXED };
static char *stats_map;
static size_t stats_len;

static void
shim_stat_line_locked(size_t idx, const char *name, unsigned long v)
{
	char line[STAT_LINE + 1];

	if (stats_map == NULL)
		return;
	snprintf(line, sizeof(line), "%-42.42s %020lu\n", name, v);
	memcpy(stats_map + idx * STAT_LINE, line, STAT_LINE);
}

static void
shim_stats_open_locked(void)
{
	char name[64];
	int fd;

	stats_len = (size_t)(ST_FIXED + 2 * FN_COUNT) * STAT_LINE;
	if ((fd = open(stats_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0)
		return;
	if (ftruncate(fd, (off_t)stats_len) == 0) {
		stats_map = mmap(NULL, stats_len, PROT_READ | PROT_WRITE, MAP_SHARED,
		    fd, 0);
		if (stats_map == MAP_FAILED)
			stats_map = NULL;
	}
	close(fd);
	shim_stat_line_locked(ST_PID, "pid", (unsigned long)getpid());
	shim_stat_line_locked(ST_INJECTED, "injected", 0);
	shim_stat_line_locked(ST_DELAYED, "delayed", 0);
	shim_stat_line_locked(ST_REMOVALS, "removals", 0);
	shim_stat_line_locked(ST_CLOSEALL, "closeall", 0);
	for (int i = 0; i < FN_COUNT; i++) {
		snprintf(name, sizeof(name), "calls.%s", shim_fn_names[i]);
		shim_stat_line_locked(ST_FIXED + 2 * (size_t)i, name, 0);
		snprintf(name, sizeof(name), "injected.%s", shim_fn_names[i]);
		shim_stat_line_locked(ST_FIXED + 2 * (size_t)i + 1, name, 0);
	}
}

static void
shim_write_stats_locked(enum shim_fn fn)
{
	char name[64];

	if (stats_map == NULL)
		return;
	shim_stat_line_locked(ST_INJECTED, "injected", injected_total);
	shim_stat_line_locked(ST_DELAYED, "delayed", delayed_total);
	shim_stat_line_locked(ST_REMOVALS, "removals", removals);
	shim_stat_line_locked(ST_CLOSEALL, "closeall", closealls);
	snprintf(name, sizeof(name), "calls.%s", shim_fn_names[fn]);
	shim_stat_line_locked(ST_FIXED + 2 * (size_t)fn, name, calls[fn]);
	snprintf(name, sizeof(name), "injected.%s", shim_fn_names[fn]);
	shim_stat_line_locked(ST_FIXED + 2 * (size_t)fn + 1, name, injected[fn]);
}

/* Before forwarding fn: count it, apply the control file. Returns the
 * CKR to inject or CKR_OK to forward; *delay_ms gets the latency. */
static CK_RV
shim_pre(enum shim_fn fn, long *delay_ms)
{
	CK_RV rv = CKR_OK;

	*delay_ms = 0;
	pthread_mutex_lock(&shim_lock);
	shim_reload_locked();
	calls[fn]++;
	for (size_t i = 0; i < nrules && rv == CKR_OK; i++) {
		struct shim_rule *r = &rules[i];

		if (!r->fns[fn])
			continue;
		if (r->kind == RULE_DELAY) {
			*delay_ms += r->ms;
			continue;
		}
		if (r->count == 0)
			continue;
		if (r->after > 0) {
			r->after--;
			continue;
		}
		if (r->prob >= 0.0 && shim_rand_locked() >= r->prob)
			continue;
		if (r->count > 0)
			r->count--;
		rv = r->rv;
	}
	if (rv != CKR_OK) {
		injected[fn]++;
		injected_total++;
	}
	if (*delay_ms > 0)
		delayed_total++;
	shim_write_stats_locked(fn);
	pthread_mutex_unlock(&shim_lock);
	if (rv != CKR_OK)
		fprintf(stderr, "p11shim: %s -> %s (injected)\n", shim_fn_names[fn],
		    shim_ckr_name(rv));
	if (*delay_ms > 0) {
		struct timespec ts = { *delay_ms / 1000, (*delay_ms % 1000) * 1000000L };
		while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
			;
	}
	return rv;
}

/* ---- the control directory of tests/test_hsm.py (P11SHIM_CTL) ---- */
static const char *legacy_dir;

static int
legacy_exists(const char *name)
{
	char path[4096];

	if (legacy_dir == NULL)
		return 0;
	snprintf(path, sizeof(path), "%s/%s", legacy_dir, name);
	return access(path, F_OK) == 0;
}

static CK_FLAGS
legacy_flags(void)
{
	char path[4096];
	unsigned long v = 0;
	FILE *f;

	if (legacy_dir == NULL)
		return 0;
	snprintf(path, sizeof(path), "%s/flags", legacy_dir);
	if ((f = fopen(path, "r")) != NULL) {
		if (fscanf(f, "%lx", &v) != 1)
			v = 0;
		fclose(f);
	}
	return v;
}

static void
legacy_note_login(void)
{
	char path[4096];
	FILE *f;

	if (legacy_dir == NULL)
		return;
	snprintf(path, sizeof(path), "%s/logins", legacy_dir);
	if ((f = fopen(path, "a")) != NULL) {
		fputs("login\n", f);
		fclose(f);
	}
}

static int
shim_removed(void)
{
	int r;

	pthread_mutex_lock(&shim_lock);
	r = removed;
	pthread_mutex_unlock(&shim_lock);
	return r || legacy_exists("removed");
}

/* Calls that reach a token: what they return while it is removed. Slot
 * and module level calls keep working (the reader is still there). */
static CK_RV
shim_removed_rv(enum shim_fn fn)
{
	switch (fn) {
	case FN_C_Initialize:
	case FN_C_Finalize:
	case FN_C_GetInfo:
	case FN_C_GetFunctionList:
	case FN_C_GetSlotList:
	case FN_C_GetSlotInfo:
	case FN_C_WaitForSlotEvent:
		return CKR_OK;
	case FN_C_GetTokenInfo:
	case FN_C_OpenSession:
	case FN_C_GetMechanismList:
	case FN_C_GetMechanismInfo:
	case FN_C_InitToken:
		return CKR_TOKEN_NOT_PRESENT;
	case FN_C_CloseSession:
	case FN_C_CloseAllSessions:
		return CKR_OK;
	default:
		return CKR_DEVICE_REMOVED;
	}
}

/* Forwarders: one per function, same signature as the real one. */
#define SHIM_FWD_X(name, params, args, on_inject)                      \
	static CK_RV shim_##name params                                    \
	{                                                                  \
		long ms;                                                   \
		CK_RV rv = shim_pre(FN_##name, &ms);                       \
		if (rv != CKR_OK) {                                        \
			on_inject;                                         \
			return rv;                                         \
		}                                                          \
		if (shim_removed() && (rv = shim_removed_rv(FN_##name)) != CKR_OK) \
			return rv;                                         \
		return real->name args;                                    \
	}
#define SHIM_FWD(name, params, args) SHIM_FWD_X(name, params, args, (void)0)

/* A failing single-part C_Sign/C_Decrypt/... still ends the operation on
 * a real token (PKCS#11 2.40, 5.2): let the real module run it into a
 * scratch buffer, so the session is reusable, then report the fault. */
#define SHIM_TERM_OUT(name, sess, in, inlen)                               \
	do {                                                               \
		unsigned char scratch[16384];                              \
		CK_ULONG sl = sizeof(scratch);                             \
		if (!shim_removed())                                       \
			real->name(sess, in, inlen, scratch, &sl);         \
		explicit_bzero(scratch, sizeof(scratch));                  \
	} while (0)
#define SHIM_TERM_FINAL(name, sess)                                        \
	do {                                                               \
		unsigned char scratch[16384];                              \
		CK_ULONG sl = sizeof(scratch);                             \
		if (!shim_removed())                                       \
			real->name(sess, scratch, &sl);                    \
		explicit_bzero(scratch, sizeof(scratch));                  \
	} while (0)

SHIM_FWD(C_Initialize, (void *a), (a))
SHIM_FWD(C_GetInfo, (CK_INFO_PTR a), (a))
SHIM_FWD(C_WaitForSlotEvent, (CK_FLAGS a, CK_SLOT_ID_PTR b, void *c), (a, b, c))
SHIM_FWD(C_GetMechanismList, (CK_SLOT_ID a, CK_MECHANISM_TYPE_PTR b, CK_ULONG_PTR c), (a, b, c))
SHIM_FWD(C_GetMechanismInfo, (CK_SLOT_ID a, CK_MECHANISM_TYPE b, CK_MECHANISM_INFO_PTR c), (a, b, c))
SHIM_FWD(C_InitToken, (CK_SLOT_ID a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d), (a, b, c, d))
SHIM_FWD(C_InitPIN, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c), (a, b, c))
SHIM_FWD(C_SetPIN, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d, CK_ULONG e), (a, b, c, d, e))
SHIM_FWD(C_OpenSession, (CK_SLOT_ID a, CK_FLAGS b, void *c, CK_NOTIFY d, CK_SESSION_HANDLE_PTR e), (a, b, c, d, e))
SHIM_FWD(C_CloseSession, (CK_SESSION_HANDLE a), (a))
SHIM_FWD(C_CloseAllSessions, (CK_SLOT_ID a), (a))
SHIM_FWD(C_GetSessionInfo, (CK_SESSION_HANDLE a, CK_SESSION_INFO_PTR b), (a, b))
SHIM_FWD(C_GetOperationState, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))
SHIM_FWD(C_SetOperationState, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE d, CK_OBJECT_HANDLE e), (a, b, c, d, e))
SHIM_FWD(C_Logout, (CK_SESSION_HANDLE a), (a))
SHIM_FWD(C_CreateObject, (CK_SESSION_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE_PTR d), (a, b, c, d))
SHIM_FWD(C_CopyObject, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_OBJECT_HANDLE_PTR e), (a, b, c, d, e))
SHIM_FWD(C_DestroyObject, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b), (a, b))
SHIM_FWD(C_GetObjectSize, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ULONG_PTR c), (a, b, c))
SHIM_FWD(C_GetAttributeValue, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d), (a, b, c, d))
SHIM_FWD(C_SetAttributeValue, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d), (a, b, c, d))
SHIM_FWD(C_FindObjectsInit, (CK_SESSION_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c), (a, b, c))
SHIM_FWD(C_FindObjects, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE_PTR b, CK_ULONG c, CK_ULONG_PTR d), (a, b, c, d))
SHIM_FWD(C_FindObjectsFinal, (CK_SESSION_HANDLE a), (a))
SHIM_FWD(C_EncryptInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))
SHIM_FWD_X(C_Encrypt, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e),
    SHIM_TERM_OUT(C_Encrypt, a, b, c))
SHIM_FWD(C_EncryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
SHIM_FWD_X(C_EncryptFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c),
    SHIM_TERM_FINAL(C_EncryptFinal, a))
SHIM_FWD_X(C_Decrypt, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e),
    SHIM_TERM_OUT(C_Decrypt, a, b, c))
SHIM_FWD(C_DecryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
SHIM_FWD_X(C_DecryptFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c),
    SHIM_TERM_FINAL(C_DecryptFinal, a))
SHIM_FWD(C_DigestInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b), (a, b))
SHIM_FWD_X(C_Digest, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e),
    SHIM_TERM_OUT(C_Digest, a, b, c))
SHIM_FWD(C_DigestUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
SHIM_FWD(C_DigestKey, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b), (a, b))
SHIM_FWD_X(C_DigestFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c),
    SHIM_TERM_FINAL(C_DigestFinal, a))
SHIM_FWD_X(C_Sign, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e),
    SHIM_TERM_OUT(C_Sign, a, b, c))
SHIM_FWD(C_SignUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
SHIM_FWD_X(C_SignFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c),
    SHIM_TERM_FINAL(C_SignFinal, a))
SHIM_FWD(C_SignRecoverInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))
SHIM_FWD_X(C_SignRecover, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e),
    SHIM_TERM_OUT(C_SignRecover, a, b, c))
SHIM_FWD(C_VerifyInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))
SHIM_FWD_X(C_Verify, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e), (a, b, c, d, e),
    if (!shim_removed()) real->C_Verify(a, b, c, d, e))
SHIM_FWD(C_VerifyUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
SHIM_FWD_X(C_VerifyFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c),
    if (!shim_removed()) real->C_VerifyFinal(a, b, c))
SHIM_FWD(C_VerifyRecoverInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))
SHIM_FWD_X(C_VerifyRecover, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e),
    SHIM_TERM_OUT(C_VerifyRecover, a, b, c))
SHIM_FWD(C_DigestEncryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
SHIM_FWD(C_DecryptDigestUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
SHIM_FWD(C_SignEncryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
SHIM_FWD(C_DecryptVerifyUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
SHIM_FWD(C_GenerateKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_OBJECT_HANDLE_PTR e), (a, b, c, d, e))
SHIM_FWD(C_GenerateKeyPair, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_ATTRIBUTE_PTR e, CK_ULONG f, CK_OBJECT_HANDLE_PTR g, CK_OBJECT_HANDLE_PTR h), (a, b, c, d, e, f, g, h))
SHIM_FWD(C_WrapKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_OBJECT_HANDLE d, CK_BYTE_PTR e, CK_ULONG_PTR f), (a, b, c, d, e, f))
SHIM_FWD(C_UnwrapKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_BYTE_PTR d, CK_ULONG e, CK_ATTRIBUTE_PTR f, CK_ULONG g, CK_OBJECT_HANDLE_PTR h), (a, b, c, d, e, f, g, h))
SHIM_FWD(C_DeriveKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_ATTRIBUTE_PTR d, CK_ULONG e, CK_OBJECT_HANDLE_PTR f), (a, b, c, d, e, f))
SHIM_FWD(C_SeedRandom, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
SHIM_FWD(C_GenerateRandom, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
SHIM_FWD(C_GetFunctionStatus, (CK_SESSION_HANDLE a), (a))
SHIM_FWD(C_CancelFunction, (CK_SESSION_HANDLE a), (a))

static CK_RV
shim_C_Finalize(void *a)
{
	long ms;
	CK_RV rv = shim_pre(FN_C_Finalize, &ms);

	if (rv != CKR_OK)
		return rv;
	return real->C_Finalize(a);
}

/* Token info with the PIN flags a test asks for. */
static CK_RV
shim_C_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info)
{
	long ms;
	CK_RV rv = shim_pre(FN_C_GetTokenInfo, &ms);

	if (rv != CKR_OK)
		return rv;
	if (shim_removed())
		return CKR_TOKEN_NOT_PRESENT;
	if ((rv = real->C_GetTokenInfo(slot, info)) == CKR_OK)
		info->flags |= legacy_flags();
	return rv;
}

/* Every login attempt is counted, even those that cannot reach a token. */
static CK_RV
shim_C_Login(CK_SESSION_HANDLE h, CK_USER_TYPE type, CK_UTF8CHAR_PTR pin,
    CK_ULONG len)
{
	long ms;
	CK_RV rv;

	legacy_note_login();
	if ((rv = shim_pre(FN_C_Login, &ms)) != CKR_OK)
		return rv;
	if (shim_removed())
		return CKR_DEVICE_REMOVED;
	return real->C_Login(h, type, pin, len);
}

#define SHIM_OP_INIT(name)                                                 \
	static CK_RV shim_##name(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m,    \
	    CK_OBJECT_HANDLE k)                                            \
	{                                                                  \
		long ms;                                                   \
		CK_RV rv = shim_pre(FN_##name, &ms);                       \
		if (rv != CKR_OK)                                          \
			return rv;                                         \
		if (shim_removed())                                        \
			return CKR_DEVICE_REMOVED;                         \
		if (legacy_exists("fail_ops"))                             \
			return CKR_DEVICE_ERROR;                           \
		return real->name(h, m, k);                                \
	}
SHIM_OP_INIT(C_SignInit)
SHIM_OP_INIT(C_DecryptInit)

/* No token in any slot while removed. */
static CK_RV
shim_C_GetSlotList(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count)
{
	long ms;
	CK_RV rv = shim_pre(FN_C_GetSlotList, &ms);

	if (rv != CKR_OK)
		return rv;
	if (present && shim_removed()) {
		if (count == NULL)
			return CKR_ARGUMENTS_BAD;
		*count = 0;
		return CKR_OK;
	}
	rv = real->C_GetSlotList(present, list, count);
	if (rv == CKR_OK && list != NULL && *count >= 2 &&
	    __atomic_load_n(&swap_slots, __ATOMIC_RELAXED)) {
		CK_SLOT_ID t = list[0];
		list[0] = list[1];
		list[1] = t;
	}
	return rv;
}

static CK_RV
shim_C_GetSlotInfo(CK_SLOT_ID slot, CK_SLOT_INFO_PTR info)
{
	long ms;
	CK_RV rv = shim_pre(FN_C_GetSlotInfo, &ms);

	if (rv != CKR_OK)
		return rv;
	rv = real->C_GetSlotInfo(slot, info);
	if (rv == CKR_OK && shim_removed())
		info->flags &= ~CKF_TOKEN_PRESENT;
	return rv;
}

static CK_RV shim_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out);

/* Load the real module once; fill our list with the forwarders. */
static CK_RV
shim_load(void)
{
	CK_C_GetFunctionList get;
	const char *mod = getenv("HSMFS_SHIM_MODULE");
	const char *st = getenv("HSMFS_SHIM_STATS");
	CK_RV rv = CKR_OK;

	pthread_mutex_lock(&shim_lock);
	if (real != NULL)
		goto out;
	if (mod == NULL || *mod == '\0')
		mod = getenv("P11SHIM_REAL");
	if (mod == NULL || *mod == '\0')
		mod = "/usr/lib/softhsm/libsofthsm2.so";
	if ((real_handle = dlopen(mod, RTLD_NOW | RTLD_LOCAL)) == NULL) {
		fprintf(stderr, "p11shim: cannot load %s: %s\n", mod, dlerror());
		rv = CKR_GENERAL_ERROR;
		goto out;
	}
	get = (CK_C_GetFunctionList)dlsym(real_handle, "C_GetFunctionList");
	if (get == NULL || (rv = get(&real)) != CKR_OK || real == NULL) {
		fprintf(stderr, "p11shim: %s has no usable C_GetFunctionList\n", mod);
		dlclose(real_handle);
		real_handle = NULL;
		real = NULL;
		rv = CKR_GENERAL_ERROR;
		goto out;
	}
	ctl_path = getenv("HSMFS_SHIM_CONTROL");
	legacy_dir = getenv("P11SHIM_CTL");
	if (st != NULL) {
		/* "%p" -> pid, so the daemon and a tool keep separate figures. */
		const char *p = strstr(st, "%p");
		if (p != NULL)
			snprintf(stats_path, sizeof(stats_path), "%.*s%d%s",
			    (int)(p - st), st, (int)getpid(), p + 2);
		else
			snprintf(stats_path, sizeof(stats_path), "%s", st);
		shim_stats_open_locked();
	}
	rng_state ^= (unsigned int)getpid();
	shim_list = *real;
#define SHIM_FN(name) shim_list.name = shim_##name;
#include "p11shim_fns.h"
#undef SHIM_FN
out:
	pthread_mutex_unlock(&shim_lock);
	return rv;
}

static CK_RV
shim_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
	CK_RV rv;

	if (out == NULL)
		return CKR_ARGUMENTS_BAD;
	if ((rv = shim_load()) != CKR_OK)
		return rv;
	*out = &shim_list;
	return CKR_OK;
}

SHIM_EXPORT CK_RV
C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
	return shim_C_GetFunctionList(out);
}

