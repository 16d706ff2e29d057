/* Private to the PKCS#11 backend: loaded modules, tokens (login, session
 * pool, recovery) shared by every key on them (hsm/p11_module.c), and the
 * per-key state (hsm/p11.c). */
#ifndef HSMFS_HSM_P11_INT_H
#define HSMFS_HSM_P11_INT_H

#include "hsm/hsm_int.h"
#include <p11-kit/pkcs11.h>
#include <openssl/err.h>

/* SoftHSM shares our libcrypto and leaves entries on the OpenSSL error
 * queue; every PKCS#11 call goes through this so that they never leak
 * into our own error reports. */
#define P11_CALL(expr) ({ CK_RV p11_rv_; ERR_set_mark(); p11_rv_ = (expr); \
	ERR_pop_to_mark(); p11_rv_; })

/* One dlopen'ed module, initialised once and finalised only to reconnect
 * (recovery of its only token, see p11_recover). Lives until exit. */
struct p11_module {
	char *path;                 /* what dlopen succeeded with */
	void *dl;
	CK_FUNCTION_LIST_PTR f;
	struct p11_module *next;
	int ntokens;                /* tokens open on it, under the global lock */
	/* Under the lock of the module's only token (recovery): */
	unsigned long reinits;      /* C_Finalize + C_Initialize done */
	double last_reinit_ms;      /* monotonic time of the last one */
};

struct p11_key;

/* A token with the login of the process on it. Shared by all keys on the
 * token (refs); freed with the last key. Everything below `lock` is
 * guarded by it. The anchor session is never used for operations: it only
 * keeps the login alive (closing the last session logs everyone out). */
struct p11_token {
	struct p11_module *mod;
	char label[33], serial[17];  /* trimmed, to find the token again */
	struct p11_token *next;      /* registry list, under the global lock */
	int refs;                    /* under the global lock */

	pthread_mutex_t lock;
	pthread_cond_t cond;
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE anchor;
	int has_anchor;
	int login_required;
	/* The user PIN, in secure memory, kept only so that recovery after a
	 * device error or token re-insertion can log in again (the login is
	 * lost with the sessions). Wiped and freed with the token. */
	char *pin;
	size_t pin_len;
	CK_SESSION_HANDLE *idle;     /* open, logged-in, unused sessions */
	unsigned nidle, in_use, size;
	unsigned generation;         /* bumped by each recovery */
	int recovering;
	int dead;                    /* recovery failed: next op tries again */
	unsigned long logins;        /* C_Login calls made (for .status) */
	struct p11_key *keys;        /* keys to look up again after recovery */
	/* For monitoring (p11_token_state, p11_pool_stats), which must never
	 * wait for `lock`: recovery holds it across module calls that take
	 * as long as a remote HSM is down. Written under mon_lock only
	 * (with `lock` held or not); mon_lock is never held across a call. */
	pthread_mutex_t mon_lock;
	CK_SLOT_ID mon_slot;         /* t->slot as of the last publish */
	int mon_ours;                /* anchor open, no recovery running or failed */
	int mon_present;             /* the last C_GetSlotInfo answer */
	int mon_asking;              /* a reader is in C_GetSlotInfo now */
	int mon_hold;                /* module being re-initialised: no asking */
	unsigned mon_in_use;         /* in_use when last seen */
};

/* Per-key state (hsm_key->priv). Handles are rewritten by recovery, under
 * the token lock. */
struct p11_key {
	hsm_key *k;
	struct p11_token *tok;
	char *alias;
	CK_BYTE id[64];
	CK_ULONG id_len;
	CK_OBJECT_HANDLE priv;
	CK_OBJECT_HANDLE cert;       /* CK_INVALID_HANDLE when none */
	int oaep_native_broken;      /* token refused native OAEP once */
	int no_raw_rsa;
	struct p11_key *next;        /* token's key list */
};

/* A session checked out of a token's pool. */
struct p11_sess {
	CK_SESSION_HANDLE h;
	unsigned generation;
	CK_OBJECT_HANDLE priv;       /* the key's handle at checkout */
};

/* Registry and error names (p11_module.c). */
const char *p11_ckr_name(CK_RV rv);
/* err_set("key NAME: FN failed: CKR_X (0x..)") and the matching code. */
int p11_fail(const char *key, const char *fn, CK_RV rv);
int p11_module_get(const char *name, const char *location,
    struct p11_module **out);
/* Find (or create and log in to) the token a spec designates. Takes the
 * global registry lock for the whole call. */
int p11_token_get(const struct hsm_key_spec *spec, struct p11_module *mod,
    struct p11_token **out);
void p11_token_put(struct p11_token *t);
/* Attach a key to its token's list (objects are looked up again after a
 * recovery) and detach it. */
void p11_token_add_key(struct p11_token *t, struct p11_key *pk);
void p11_token_del_key(struct p11_token *t, struct p11_key *pk);
int p11_checkout(struct p11_key *pk, struct p11_sess *s);
/* bad: the session failed and must not be reused. */
void p11_checkin(struct p11_key *pk, struct p11_sess *s, int bad);
/* Recover a token after a device/login error seen on generation gen:
 * one thread reopens, logs in and looks the objects up again; the others
 * wait for it. Returns 0 when the caller may retry. */
int p11_recover(struct p11_key *pk, unsigned gen);
void p11_pool_stats(struct p11_token *t, unsigned *in_use, unsigned *size);
/* available (not dead), logins and module re-initialisations, for .status */
void p11_token_health(struct p11_token *t, int *available,
    unsigned long *logins, unsigned long *reinits);
/* Token state for monitoring, never waiting for the token lock (a
 * recovery may hold it for as long as the HSM does not answer): present
 * is the slot's CKF_TOKEN_PRESENT, asked by one reader at a time (the
 * others get the last answer); logged in: present, and the daemon's
 * login stands as far as it knows (anchor open, no recovery running or
 * failed). !ask: the last answer only, no module call. The pool figures
 * are the last seen when the lock is busy. */
void p11_token_state(struct p11_token *t, int ask, int *present, int *logged_in);

/* Object lookup (p11.c), also used by recovery with the token lock held. */
int p11_key_lookup_locked(struct p11_key *pk, CK_SESSION_HANDLE s);

/* True for CKR codes that mean "the device or the login is gone". */
int p11_rv_is_device(CK_RV rv);
int p11_rv_is_session(CK_RV rv);

#endif
