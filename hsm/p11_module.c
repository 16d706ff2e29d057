/* PKCS#11 plumbing shared by every key: the process-wide registry of
 * loaded modules (dlopen + one C_Initialize each) and of tokens (slot
 * choice, the one login per token, the bounded session pool, recovery
 * after device errors), and the CKR_* names used in every message. */
#include "hsm/p11_int.h"
#include "hsm/p11_kit.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Guards both lists and every token's refs. Lock order: p11_lock, then a
 * token's lock. Operations only take the token lock. */
static pthread_mutex_t p11_lock = PTHREAD_MUTEX_INITIALIZER;
static struct p11_module *p11_modules;
static struct p11_token *p11_tokens;

#define P11_POOL_DEFAULT 8

static const struct {
	CK_RV rv;
	const char *name;
} ckr_names[] = {
#define N(x) { x, #x }
	N(CKR_OK), N(CKR_CANCEL), N(CKR_HOST_MEMORY), N(CKR_SLOT_ID_INVALID),
	N(CKR_GENERAL_ERROR), N(CKR_FUNCTION_FAILED), N(CKR_ARGUMENTS_BAD),
	N(CKR_NO_EVENT), N(CKR_NEED_TO_CREATE_THREADS), N(CKR_CANT_LOCK),
	N(CKR_ATTRIBUTE_READ_ONLY), N(CKR_ATTRIBUTE_SENSITIVE),
	N(CKR_ATTRIBUTE_TYPE_INVALID), N(CKR_ATTRIBUTE_VALUE_INVALID),
	N(CKR_DATA_INVALID), N(CKR_DATA_LEN_RANGE), N(CKR_DEVICE_ERROR),
	N(CKR_DEVICE_MEMORY), N(CKR_DEVICE_REMOVED), N(CKR_ENCRYPTED_DATA_INVALID),
	N(CKR_ENCRYPTED_DATA_LEN_RANGE), N(CKR_FUNCTION_CANCELED),
	N(CKR_FUNCTION_NOT_PARALLEL), N(CKR_FUNCTION_NOT_SUPPORTED),
	N(CKR_KEY_HANDLE_INVALID), N(CKR_KEY_SIZE_RANGE), N(CKR_KEY_TYPE_INCONSISTENT),
	N(CKR_KEY_NOT_NEEDED), N(CKR_KEY_CHANGED), N(CKR_KEY_NEEDED),
	N(CKR_KEY_INDIGESTIBLE), N(CKR_KEY_FUNCTION_NOT_PERMITTED),
	N(CKR_KEY_NOT_WRAPPABLE), N(CKR_KEY_UNEXTRACTABLE), N(CKR_MECHANISM_INVALID),
	N(CKR_MECHANISM_PARAM_INVALID), N(CKR_OBJECT_HANDLE_INVALID),
	N(CKR_OPERATION_ACTIVE), N(CKR_OPERATION_NOT_INITIALIZED),
	N(CKR_PIN_INCORRECT), N(CKR_PIN_INVALID), N(CKR_PIN_LEN_RANGE),
	N(CKR_PIN_EXPIRED), N(CKR_PIN_LOCKED), N(CKR_SESSION_CLOSED),
	N(CKR_SESSION_COUNT), N(CKR_SESSION_HANDLE_INVALID),
	N(CKR_SESSION_PARALLEL_NOT_SUPPORTED), N(CKR_SESSION_READ_ONLY),
	N(CKR_SESSION_EXISTS), N(CKR_SESSION_READ_ONLY_EXISTS),
	N(CKR_SESSION_READ_WRITE_SO_EXISTS), N(CKR_SIGNATURE_INVALID),
	N(CKR_SIGNATURE_LEN_RANGE), N(CKR_TEMPLATE_INCOMPLETE),
	N(CKR_TEMPLATE_INCONSISTENT), N(CKR_TOKEN_NOT_PRESENT),
	N(CKR_TOKEN_NOT_RECOGNIZED), N(CKR_TOKEN_WRITE_PROTECTED),
	N(CKR_USER_ALREADY_LOGGED_IN), N(CKR_USER_NOT_LOGGED_IN),
	N(CKR_USER_PIN_NOT_INITIALIZED), N(CKR_USER_TYPE_INVALID),
	N(CKR_USER_ANOTHER_ALREADY_LOGGED_IN), N(CKR_USER_TOO_MANY_TYPES),
	N(CKR_DOMAIN_PARAMS_INVALID), N(CKR_BUFFER_TOO_SMALL),
	N(CKR_SAVED_STATE_INVALID), N(CKR_INFORMATION_SENSITIVE),
	N(CKR_STATE_UNSAVEABLE), N(CKR_CRYPTOKI_NOT_INITIALIZED),
	N(CKR_CRYPTOKI_ALREADY_INITIALIZED), N(CKR_MUTEX_BAD),
	N(CKR_MUTEX_NOT_LOCKED), N(CKR_FUNCTION_REJECTED),
#undef N
};

const char *
p11_ckr_name(CK_RV rv)
{
	for (size_t i = 0; i < sizeof(ckr_names) / sizeof(ckr_names[0]); i++)
		if (ckr_names[i].rv == rv)
			return ckr_names[i].name;
	return rv >= CKR_VENDOR_DEFINED ? "CKR_VENDOR_DEFINED" : "CKR_unknown";
}

int
p11_rv_is_device(CK_RV rv)
{
	return rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT ||
	    rv == CKR_DEVICE_ERROR || rv == CKR_USER_NOT_LOGGED_IN ||
	    rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID ||
	    rv == CKR_TOKEN_NOT_RECOGNIZED;
}

int
p11_rv_is_session(CK_RV rv)
{
	return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED;
}

int
p11_fail(const char *key, const char *fn, CK_RV rv)
{
	err_set("key %s: %s failed: %s (0x%lx)", key, fn, p11_ckr_name(rv),
	    (unsigned long)rv);
	switch (rv) {
	case CKR_HOST_MEMORY:
		return HSMFS_ERR_NOMEM;
	case CKR_PIN_INCORRECT:
		return HSMFS_ERR_PIN_INCORRECT;
	case CKR_PIN_LOCKED:
		return HSMFS_ERR_PIN_LOCKED;
	default:
		return HSMFS_ERR_HSM;
	}
}

/* ---- modules ---- */

static void *
try_dlopen(const char *path, char *tried, size_t tsize)
{
	void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	size_t used = strlen(tried);
	if (dl == NULL && used + 4 < tsize) {
		const char *e = dlerror();
		/* Only the first error line: loader messages repeat the path. */
		/* Truncation of a very long list is fine. */
		int n;
		/* "No such file" is implied by the list; anything else (wrong
		 * architecture, missing dependency) is worth showing. */
		if (e != NULL && strstr(e, "No such file") == NULL)
			n = snprintf(tried + used, tsize - used, "%s%.1024s (%.512s)",
			    used ? ", " : "", path, e);
		else
			n = snprintf(tried + used, tsize - used, "%s%.1024s",
			    used ? ", " : "", path);
		(void)n;
	}
	return dl;
}

/* Resolve a bare name through p11-kit's registry first (NAME.module,
 * e.g. "softhsm2"), then like the dynamic loader (search path for bare
 * names, as given for paths), with ".so" appended when the name lacks
 * it, then the usual Debian module directories for bare names, also
 * with a "lib" prefix (RFC 7512 module-name= omits it). */
static void *
module_dlopen(const char *loc, char *used, size_t usize, char *tried,
    size_t tsize)
{
	static const char *const dirs[] = {
		"", "/usr/lib/softhsm/", "/usr/lib/x86_64-linux-gnu/",
		"/usr/lib/x86_64-linux-gnu/pkcs11/",
	};
	int bare = strchr(loc, '/') == NULL;
	size_t len = strlen(loc);
	int has_so = len > 3 && (strcmp(loc + len - 3, ".so") == 0 ||
	    strstr(loc, ".so.") != NULL);
	int libs = bare && strncmp(loc, "lib", 3) != 0 ? 2 : 1;
	void *dl;

	if (bare && !has_so) {
		char why[512] = "";
		int k = p11kit_lookup(loc, used, usize, tried, tsize, why,
		    sizeof(why));
		if (k > 0 && (dl = try_dlopen(used, tried, tsize)) != NULL) {
			log_info("PKCS#11 module \"%s\" is %s (p11-kit module "
			    "registry)", loc, used);
			return dl;
		}
		if (k < 0) {
			size_t n = strlen(tried);
			if (n + 4 < tsize)
				snprintf(tried + n, tsize - n, " (%s)", why);
		}
		/* The administrator's registry keeps the module out of this
		 * program: not overridden by loading it some other way. */
		if (k == -2)
			return NULL;
	}
	for (int lib = 0; lib < libs; lib++)
		for (size_t d = 0; d < (bare ? 4u : 1u); d++) {
			for (int suffix = 0; suffix < (has_so ? 1 : 2); suffix++) {
				snprintf(used, usize, "%s%s%s%s", dirs[d], lib ? "lib" :
				    "", loc, suffix ? ".so" : "");
				if ((dl = try_dlopen(used, tried, tsize)) != NULL)
					return dl;
			}
		}
	return NULL;
}

int
p11_module_get(const char *name, const char *location, struct p11_module **out)
{
	char used[4096], tried[4096] = "";
	struct p11_module *m = NULL;
	CK_C_GetFunctionList getfl;
	CK_C_INITIALIZE_ARGS args;
	CK_FUNCTION_LIST_PTR f = NULL;
	void *dl = NULL;
	CK_RV rv;
	int r = HSMFS_ERR_NOTFOUND;

	if (location == NULL || *location == '\0') {
		err_set("key %s: no PKCS#11 module (locationValue) given", name);
		return HSMFS_ERR_CONFIG;
	}
	pthread_mutex_lock(&p11_lock);
	if ((dl = module_dlopen(location, used, sizeof(used), tried,
	    sizeof(tried))) == NULL) {
		err_set("key %s: cannot load PKCS#11 module \"%s\"; tried %s",
		    name, location, tried);
		goto out;
	}
	/* dlopen returns the same handle for the same library, however it
	 * was named: that is our identity for "one module". */
	for (m = p11_modules; m; m = m->next) {
		if (m->dl == dl) {
			dlclose(dl);
			dl = NULL;
			*out = m;
			r = 0;
			goto out;
		}
	}
	if ((getfl = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList")) == NULL) {
		err_set("key %s: %s is not a PKCS#11 module (no C_GetFunctionList)",
		    name, used);
		r = HSMFS_ERR_CONFIG;
		goto out;
	}
	if ((rv = P11_CALL(getfl(&f))) != CKR_OK || f == NULL) {
		r = p11_fail(name, "C_GetFunctionList", rv);
		goto out;
	}
	memset(&args, 0, sizeof(args));
	args.flags = CKF_OS_LOCKING_OK;
	rv = P11_CALL(f->C_Initialize(&args));
	if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		r = p11_fail(name, "C_Initialize", rv);
		err_prefix("module %s: ", used);
		goto out;
	}
	if ((m = calloc(1, sizeof(*m))) == NULL || (m->path = strdup(used)) == NULL) {
		free(m);
		m = NULL;
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	m->dl = dl;
	dl = NULL;
	m->f = f;
	m->next = p11_modules;
	p11_modules = m;
	*out = m;
	r = 0;
out:
	/* A module that was initialised stays loaded: unloading code that
	 * may have started threads is unsafe. */
	if (dl != NULL && r != 0 && f == NULL)
		dlclose(dl);
	pthread_mutex_unlock(&p11_lock);
	return r;
}

/* ---- tokens ---- */

static void
trim_copy(char *dst, const CK_UTF8CHAR *src, size_t n)
{
	memcpy(dst, src, n);
	dst[n] = '\0';
	while (n > 0 && (dst[n - 1] == ' ' || dst[n - 1] == '\0'))
		dst[--n] = '\0';
}

static int
slot_list(const char *name, struct p11_module *mod, CK_SLOT_ID **out,
    CK_ULONG *n)
{
	CK_SLOT_ID *slots = NULL;
	CK_ULONG cnt = 0;
	CK_RV rv;

	if ((rv = P11_CALL(mod->f->C_GetSlotList(CK_TRUE, NULL, &cnt))) != CKR_OK)
		return p11_fail(name, "C_GetSlotList", rv);
	if ((slots = calloc(cnt + 1, sizeof(*slots))) == NULL)
		return HSMFS_ERR_NOMEM;
	if ((rv = P11_CALL(mod->f->C_GetSlotList(CK_TRUE, slots, &cnt))) != CKR_OK) {
		free(slots);
		return p11_fail(name, "C_GetSlotList", rv);
	}
	*out = slots;
	*n = cnt;
	return 0;
}

/* "0x1a2b (label foo), 0x... (label bar)" for messages. */
static void
describe_slots(struct p11_module *mod, CK_SLOT_ID *slots, CK_ULONG n,
    char *buf, size_t size)
{
	CK_TOKEN_INFO ti;
	char label[33];
	size_t used = 0;

	buf[0] = '\0';
	if (n == 0)
		snprintf(buf, size, "none");
	for (CK_ULONG i = 0; i < n && used + 1 < size; i++) {
		int init = 0;
		if (P11_CALL(mod->f->C_GetTokenInfo(slots[i], &ti)) != CKR_OK) {
			strcpy(label, "?");
		} else {
			trim_copy(label, ti.label, sizeof(ti.label));
			init = (ti.flags & CKF_TOKEN_INITIALIZED) != 0;
		}
		used += (size_t)snprintf(buf + used, size - used,
		    "%s%lu (0x%lx, %s\"%s\")", i ? ", " : "",
		    (unsigned long)slots[i], (unsigned long)slots[i],
		    init ? "label " : "not initialised, label ", label);
	}
}

/* Log in on the token's anchor session (t->lock held or t unpublished).
 * The PIN flags are read first: a locked PIN or one attempt left is never
 * tried (a failed try there locks the token for everyone). */
static int
token_login_locked(struct p11_token *t, const char *name, const char *pin)
{
	CK_FUNCTION_LIST_PTR f = t->mod->f;
	CK_TOKEN_INFO ti;
	CK_RV rv;

	if ((rv = P11_CALL(f->C_GetTokenInfo(t->slot, &ti))) != CKR_OK)
		return p11_fail(name, "C_GetTokenInfo", rv);
	t->login_required = (ti.flags & CKF_LOGIN_REQUIRED) != 0;
	if (!t->login_required)
		return 0;
	if (ti.flags & CKF_USER_PIN_LOCKED) {
		err_set("key %s: token \"%s\": PIN locked, unblock with the SO PIN "
		    "(e.g. pkcs11-tool --init-pin --login --login-type so)", name,
		    t->label);
		return HSMFS_ERR_PIN_LOCKED;
	}
	if (ti.flags & CKF_USER_PIN_FINAL_TRY) {
		err_set("key %s: token \"%s\": one PIN attempt left before it "
		    "locks; not trying. Check the PIN and log in once by hand "
		    "(pkcs11-tool --login --test) to reset the counter", name,
		    t->label);
		return HSMFS_ERR_PIN_LOCKED;
	}
	if (pin == NULL) {
		err_set("key %s: token \"%s\" needs a user PIN and none is "
		    "configured", name, t->label);
		return HSMFS_ERR_CONFIG;
	}
	__atomic_add_fetch(&t->logins, 1, __ATOMIC_RELAXED);
	rv = P11_CALL(f->C_Login(t->anchor, CKU_USER, (CK_UTF8CHAR_PTR)pin,
	    (CK_ULONG)strlen(pin)));
	switch (rv) {
	case CKR_OK:
	case CKR_USER_ALREADY_LOGGED_IN:
		return 0;
	case CKR_PIN_INCORRECT:
		err_set("key %s: PIN incorrect for token \"%s\" (module %s); not "
		    "retried, fix the key's PIN before the token locks", name,
		    t->label, t->mod->path);
		return HSMFS_ERR_PIN_INCORRECT;
	case CKR_PIN_LOCKED:
		err_set("key %s: token \"%s\": PIN locked, unblock with the SO PIN",
		    name, t->label);
		return HSMFS_ERR_PIN_LOCKED;
	default:
		return p11_fail(name, "C_Login", rv);
	}
}

static CK_RV
open_session(struct p11_token *t, CK_SESSION_HANDLE *h)
{
	return P11_CALL(t->mod->f->C_OpenSession(t->slot,
	    CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, h));
}

/* Publish the token's state for monitoring (t->lock held, or t not yet
 * published). */
static void
mon_publish_locked(struct p11_token *t)
{
	pthread_mutex_lock(&t->mon_lock);
	t->mon_slot = t->slot;
	t->mon_ours = t->has_anchor && !t->dead && !t->recovering;
	t->mon_in_use = t->in_use;
	pthread_mutex_unlock(&t->mon_lock);
}

static void
token_free(struct p11_token *t)
{
	CK_FUNCTION_LIST_PTR f = t->mod->f;
	for (unsigned i = 0; i < t->nidle; i++)
		P11_CALL(f->C_CloseSession(t->idle[i]));
	/* Closing the anchor (our last session) ends the login. The module
	 * stays initialised: never C_Finalize while the process runs. */
	if (t->has_anchor)
		P11_CALL(f->C_CloseSession(t->anchor));
	if (t->pin)
		secmem_free(t->pin, t->pin_len + 1);
	free(t->idle);
	pthread_mutex_destroy(&t->lock);
	pthread_mutex_destroy(&t->mon_lock);
	pthread_cond_destroy(&t->cond);
	free(t);
}

/* Step 1 of p11_token_get: the slot the spec names (slot=, a unique
 * token label, or the first initialised token). p11_lock held. */
static int
find_slot(const struct hsm_key_spec *spec, struct p11_module *mod,
    CK_SLOT_ID *out)
{
	const char *name = spec->name;
	CK_SLOT_ID *slots = NULL, slot = 0;
	CK_ULONG n = 0, i;
	CK_TOKEN_INFO ti;
	char label[33], list[2048];
	int r, found = 0;

	if ((r = slot_list(name, mod, &slots, &n)) != 0)
		goto out;
	for (i = 0; i < n && !found; i++) {
		if (spec->has_slot) {
			found = slots[i] == spec->slot;
		} else if (spec->token_label && *spec->token_label) {
			if (P11_CALL(mod->f->C_GetTokenInfo(slots[i], &ti)) != CKR_OK)
				continue;
			trim_copy(label, ti.label, sizeof(ti.label));
			found = strcmp(label, spec->token_label) == 0;
		} else {
			/* "First slot with a token": an uninitialised token
			 * (SoftHSM always offers one) holds no keys. */
			found = P11_CALL(mod->f->C_GetTokenInfo(slots[i], &ti)) ==
			    CKR_OK && (ti.flags & CKF_TOKEN_INITIALIZED);
		}
		if (found)
			slot = slots[i];
	}
	/* A label names one token: SoftHSM and most HSMs let two tokens
	 * share one, and the first of them may hold other keys. */
	if (found && !spec->has_slot && spec->token_label &&
	    *spec->token_label) {
		for (; i < n; i++) {
			if (P11_CALL(mod->f->C_GetTokenInfo(slots[i], &ti)) != CKR_OK)
				continue;
			trim_copy(label, ti.label, sizeof(ti.label));
			if (strcmp(label, spec->token_label) != 0)
				continue;
			err_set("key %s: two tokens labelled \"%s\" in module %s "
			    "(slots %lu and %lu); name one by slot= (or slot-id= in "
			    "the uri), or relabel one", name, spec->token_label,
			    mod->path, (unsigned long)slot, (unsigned long)slots[i]);
			r = HSMFS_ERR_NOTFOUND;
			goto out;
		}
	}
	if (!found) {
		describe_slots(mod, slots, n, list, sizeof(list));
		if (spec->has_slot)
			err_set("key %s: slot %lu not found in module %s; slots with "
			    "tokens: %s", name, spec->slot, mod->path, list);
		else if (spec->token_label && *spec->token_label)
			err_set("key %s: no token labelled \"%s\" in module %s; slots "
			    "with tokens: %s", name, spec->token_label, mod->path, list);
		else
			err_set("key %s: no slot with a token present in module %s",
			    name, mod->path);
		r = HSMFS_ERR_NOTFOUND;
		goto out;
	}
	*out = slot;
	r = 0;
out:
	free(slots);
	return r;
}

/* Steps: find the slot, check its token, share an open token or open
 * and log in a new one. */
int
p11_token_get(const struct hsm_key_spec *spec, struct p11_module *mod,
    struct p11_token **out)
{
	const char *name = spec->name;
	CK_SLOT_ID slot = 0;
	CK_TOKEN_INFO ti;
	struct p11_token *t = NULL;
	char label[33];
	CK_RV rv;
	int r, found = 0;

	pthread_mutex_lock(&p11_lock);
	if ((r = find_slot(spec, mod, &slot)) != 0)
		goto out;
	if ((rv = P11_CALL(mod->f->C_GetTokenInfo(slot, &ti))) != CKR_OK) {
		r = p11_fail(name, "C_GetTokenInfo", rv);
		goto out;
	}
	trim_copy(label, ti.label, sizeof(ti.label));
	if (spec->has_slot && spec->token_label && *spec->token_label &&
	    strcmp(label, spec->token_label) != 0) {
		err_set("key %s: slot %lu holds token \"%s\", not \"%s\"", name,
		    (unsigned long)slot, label, spec->token_label);
		r = HSMFS_ERR_NOTFOUND;
		goto out;
	}
	for (t = p11_tokens; t; t = t->next) {
		pthread_mutex_lock(&t->lock);
		found = t->mod == mod && t->slot == slot;
		pthread_mutex_unlock(&t->lock);
		if (found) {
			t->refs++;
			*out = t;
			t = NULL;
			r = 0;
			goto out;
		}
	}
	if ((t = calloc(1, sizeof(*t))) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	pthread_mutex_init(&t->lock, NULL);
	pthread_mutex_init(&t->mon_lock, NULL);
	pthread_cond_init(&t->cond, NULL);
	t->mod = mod;
	t->slot = slot;
	t->refs = 1;
	memcpy(t->label, label, sizeof(label));
	trim_copy(t->serial, ti.serialNumber, sizeof(ti.serialNumber));
	t->size = spec->pool_size ? spec->pool_size : P11_POOL_DEFAULT;
	if ((t->idle = calloc(t->size, sizeof(*t->idle))) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	if ((rv = open_session(t, &t->anchor)) != CKR_OK) {
		r = p11_fail(name, "C_OpenSession", rv);
		goto out;
	}
	t->has_anchor = 1;
	if ((r = token_login_locked(t, name, spec->pin)) != 0)
		goto out;
	if (spec->pin != NULL) {
		t->pin_len = strlen(spec->pin);
		if ((t->pin = secmem_alloc(t->pin_len + 1)) == NULL) {
			r = HSMFS_ERR_NOMEM;
			goto out;
		}
		memcpy(t->pin, spec->pin, t->pin_len + 1);
	}
	t->mon_present = 1;
	mon_publish_locked(t);
	t->next = p11_tokens;
	p11_tokens = t;
	__atomic_add_fetch(&mod->ntokens, 1, __ATOMIC_RELAXED);
	*out = t;
	t = NULL;
	r = 0;
out:
	if (t)
		token_free(t);
	pthread_mutex_unlock(&p11_lock);
	return r;
}

void
p11_token_put(struct p11_token *t)
{
	struct p11_token **pp;
	if (t == NULL)
		return;
	pthread_mutex_lock(&p11_lock);
	if (--t->refs > 0) {
		pthread_mutex_unlock(&p11_lock);
		return;
	}
	for (pp = &p11_tokens; *pp; pp = &(*pp)->next) {
		if (*pp == t) {
			*pp = t->next;
			__atomic_sub_fetch(&t->mod->ntokens, 1, __ATOMIC_RELAXED);
			break;
		}
	}
	pthread_mutex_unlock(&p11_lock);
	token_free(t);
}

void
p11_token_add_key(struct p11_token *t, struct p11_key *pk)
{
	pthread_mutex_lock(&t->lock);
	pk->next = t->keys;
	t->keys = pk;
	pthread_mutex_unlock(&t->lock);
}

void
p11_token_del_key(struct p11_token *t, struct p11_key *pk)
{
	pthread_mutex_lock(&t->lock);
	for (struct p11_key **pp = &t->keys; *pp; pp = &(*pp)->next) {
		if (*pp == pk) {
			*pp = pk->next;
			break;
		}
	}
	pthread_mutex_unlock(&t->lock);
}

/* ---- session pool ---- */

int
p11_checkout(struct p11_key *pk, struct p11_sess *s)
{
	struct p11_token *t = pk->tok;
	CK_RV rv = CKR_OK;

	pthread_mutex_lock(&t->lock);
	while (t->in_use >= t->size || t->recovering)
		pthread_cond_wait(&t->cond, &t->lock);
	s->generation = t->generation;
	s->priv = pk->priv;
	if (t->dead) {
		/* The last recovery failed: report it as gone so that the
		 * caller tries to recover again (the HSM may be back). */
		rv = CKR_TOKEN_NOT_PRESENT;
	} else if (t->nidle > 0) {
		s->h = t->idle[--t->nidle];
	} else {
		rv = open_session(t, &s->h);
	}
	if (rv == CKR_OK)
		t->in_use++;
	pthread_mutex_unlock(&t->lock);
	return (int)rv;
}

void
p11_checkin(struct p11_key *pk, struct p11_sess *s, int bad)
{
	struct p11_token *t = pk->tok;

	pthread_mutex_lock(&t->lock);
	t->in_use--;
	/* A session from before a recovery is dead already (all sessions
	 * were closed); its handle number may even be reused, so it is
	 * dropped, never closed. */
	if (s->generation == t->generation) {
		if (bad || t->nidle >= t->size)
			P11_CALL(t->mod->f->C_CloseSession(s->h));
		else
			t->idle[t->nidle++] = s->h;
	}
	/* Broadcast: both checkouts and a waiting recovery sleep on cond. */
	pthread_cond_broadcast(&t->cond);
	pthread_mutex_unlock(&t->lock);
}

void
p11_pool_stats(struct p11_token *t, unsigned *in_use, unsigned *size)
{
	/* Checkouts hold the lock for moments, a recovery for long. */
	if (pthread_mutex_trylock(&t->lock) == 0) {
		mon_publish_locked(t);
		pthread_mutex_unlock(&t->lock);
	}
	pthread_mutex_lock(&t->mon_lock);
	*in_use = t->mon_in_use;
	pthread_mutex_unlock(&t->mon_lock);
	*size = t->size;
}

/* Without the token lock: a recovery holds it for as long as the module
 * takes to reconnect, and .status must answer meanwhile. */
void
p11_token_health(struct p11_token *t, int *available, unsigned long *logins,
    unsigned long *reinits)
{
	*available = !__atomic_load_n(&t->dead, __ATOMIC_RELAXED);
	*logins = __atomic_load_n(&t->logins, __ATOMIC_RELAXED);
	*reinits = __atomic_load_n(&t->mod->reinits, __ATOMIC_RELAXED);
}

void
p11_token_state(struct p11_token *t, int ask, int *present, int *logged_in)
{
	CK_SLOT_INFO si;
	CK_SLOT_ID slot;

	pthread_mutex_lock(&t->mon_lock);
	ask = ask && !t->mon_asking && !t->mon_hold;
	if (ask)
		t->mon_asking = 1;
	slot = t->mon_slot;
	pthread_mutex_unlock(&t->mon_lock);
	/* Outside every lock: a module that hangs (a remote HSM gone) holds
	 * this one reader; the others answer with the last state. */
	if (ask) {
		int p = P11_CALL(t->mod->f->C_GetSlotInfo(slot, &si)) == CKR_OK &&
		    (si.flags & CKF_TOKEN_PRESENT) != 0;
		pthread_mutex_lock(&t->mon_lock);
		t->mon_present = p;
		t->mon_asking = 0;
		pthread_mutex_unlock(&t->mon_lock);
	}
	pthread_mutex_lock(&t->mon_lock);
	*present = t->mon_present;
	*logged_in = t->mon_present && t->mon_ours;
	pthread_mutex_unlock(&t->mon_lock);
}

/* ---- recovery ---- */

static int
find_token_again_locked(struct p11_token *t, const char *name)
{
	CK_SLOT_ID *slots = NULL;
	CK_ULONG n = 0;
	CK_TOKEN_INFO ti;
	char label[33], serial[17];
	int r;

	if ((r = slot_list(name, t->mod, &slots, &n)) != 0)
		return r;
	r = HSMFS_ERR_HSM;
	for (CK_ULONG i = 0; i < n; i++) {
		if (P11_CALL(t->mod->f->C_GetTokenInfo(slots[i], &ti)) != CKR_OK)
			continue;
		trim_copy(label, ti.label, sizeof(ti.label));
		trim_copy(serial, ti.serialNumber, sizeof(ti.serialNumber));
		if (strcmp(label, t->label) == 0 && strcmp(serial, t->serial) == 0) {
			t->slot = slots[i];
			r = 0;
			break;
		}
	}
	if (r != 0)
		err_set("key %s: token \"%s\" (serial %s) is not present in "
		    "module %s", name, t->label, t->serial, t->mod->path);
	free(slots);
	return r;
}

/* Reopen the anchor, log in and look every key up again (t->lock held,
 * no operation of t in flight). */
static int
recover_steps_locked(struct p11_token *t, const char *name)
{
	CK_RV rv;
	int r;

	if ((r = find_token_again_locked(t, name)) != 0)
		return r;
	if ((rv = open_session(t, &t->anchor)) != CKR_OK)
		return p11_fail(name, "C_OpenSession", rv);
	t->has_anchor = 1;
	if ((r = token_login_locked(t, name, t->pin)) != 0) {
		/* Never try a refused PIN again: each try counts towards the
		 * token's lockout. A restart with the right PIN is needed. */
		if (r == HSMFS_ERR_PIN_INCORRECT && t->pin) {
			secmem_free(t->pin, t->pin_len + 1);
			t->pin = NULL;
		}
		return r;
	}
	/* Object handles are per login/session state on many tokens. */
	for (struct p11_key *q = t->keys; q; q = q->next) {
		r = p11_key_lookup_locked(q, t->anchor);
		if (r == HSMFS_ERR_NOTFOUND || r == HSMFS_ERR_CONFIG) {
			/* That key is gone (or ambiguous) on the token that
			 * came back: it fails, the token's other keys work. */
			log_err("%s", err_detail());
			q->priv = CK_INVALID_HANDLE;
		} else if (r != 0) {
			return r;
		}
	}
	return 0;
}

/* A module is re-initialised at most this often while its token stays
 * away (each try may cost a network HSM client a connect timeout). */
#define P11_REINIT_MIN_MS 250.0

/* Reconnect the module: C_Finalize + C_Initialize. Remote clients
 * (p11-kit's p11-kit-client.so, several network HSMs' libraries) connect
 * only in C_Initialize: once their server went away every later call
 * fails (or sees no slot) until the module is initialised again. A
 * finalize ends every session of the module, so this is done only for a
 * module whose one open token is t, with t->lock held and none of t's
 * operations in flight. Returns 0 when the module was re-initialised. */
static int
module_reinit_locked(struct p11_token *t, const char *name, int quiet)
{
	struct p11_module *m = t->mod;
	CK_C_INITIALIZE_ARGS args;
	double now = hsm_now_ms();
	CK_RV rv;

	if (__atomic_load_n(&m->ntokens, __ATOMIC_RELAXED) != 1)
		return HSMFS_ERR_UNSUPPORTED;
	if (m->last_reinit_ms > 0 && now - m->last_reinit_ms < P11_REINIT_MIN_MS)
		return HSMFS_ERR_HSM;
	m->last_reinit_ms = now;
	__atomic_add_fetch(&m->reinits, 1, __ATOMIC_RELAXED);
	if (!quiet)
		log_warn("key %s: re-initialising module %s (C_Finalize + "
		    "C_Initialize) to reconnect to token \"%s\"", name, m->path,
		    t->label);
	/* A monitoring reader (p11_token_state) calls the module without the
	 * token lock: hold new ones off and let one in a call finish before
	 * the module is finalised under it. */
	pthread_mutex_lock(&t->mon_lock);
	t->mon_hold = 1;
	while (t->mon_asking) {
		pthread_mutex_unlock(&t->mon_lock);
		usleep(1000);
		pthread_mutex_lock(&t->mon_lock);
	}
	pthread_mutex_unlock(&t->mon_lock);
	P11_CALL(m->f->C_Finalize(NULL));
	memset(&args, 0, sizeof(args));
	args.flags = CKF_OS_LOCKING_OK;
	rv = P11_CALL(m->f->C_Initialize(&args));
	pthread_mutex_lock(&t->mon_lock);
	t->mon_hold = 0;
	pthread_mutex_unlock(&t->mon_lock);
	if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED)
		return p11_fail(name, "C_Initialize", rv);
	return 0;
}

int
p11_recover(struct p11_key *pk, unsigned gen)
{
	struct p11_token *t = pk->tok;
	CK_FUNCTION_LIST_PTR f = t->mod->f;
	const char *name = pk->k->name;
	int r, was_dead;

	/* One thread recovers: `recovering` stops new checkouts, and the
	 * token lock is then held for the whole recovery; the others wait,
	 * see the new generation and do not recover a second time. */
	pthread_mutex_lock(&t->lock);
	while (t->recovering)
		pthread_cond_wait(&t->cond, &t->lock);
	if (t->generation != gen) {
		pthread_mutex_unlock(&t->lock);
		return 0;
	}
	t->recovering = 1;
	mon_publish_locked(t);
	/* Let operations in flight finish first: closing a session under a
	 * running C_Decrypt crashes some modules (SoftHSM frees the key). */
	while (t->in_use > 0)
		pthread_cond_wait(&t->cond, &t->lock);
	t->generation++;
	/* Once per outage: while the token stays away every operation tries
	 * again, quietly. */
	was_dead = t->dead;
	if (!was_dead)
		log_warn("key %s: token \"%s\" failed, reopening sessions and "
		    "logging in again", name, t->label);
	/* Drop every session of ours on the slot (the login goes with them);
	 * sessions checked out now fail and are dropped at checkin. */
	P11_CALL(f->C_CloseAllSessions(t->slot));
	t->nidle = 0;
	t->has_anchor = 0;
	__atomic_store_n(&t->dead, 1, __ATOMIC_RELAXED);
	r = recover_steps_locked(t, name);
	/* The token is not back through the module as it is: reconnect the
	 * module and try once more. Never after a refused PIN. */
	if (r != 0 && r != HSMFS_ERR_PIN_INCORRECT && r != HSMFS_ERR_PIN_LOCKED &&
	    r != HSMFS_ERR_CONFIG) {
		char first[512];
		snprintf(first, sizeof(first), "%s", err_detail());
		if (module_reinit_locked(t, name, was_dead) == 0) {
			t->has_anchor = 0;
			r = recover_steps_locked(t, name);
		} else {
			err_set("%s", first);
		}
	}
	if (r == 0) {
		__atomic_store_n(&t->dead, 0, __ATOMIC_RELAXED);
		if (was_dead)
			log_warn("key %s: token \"%s\" is back", name, t->label);
	}
	if (r != 0 && r != HSMFS_ERR_PIN_INCORRECT && r != HSMFS_ERR_PIN_LOCKED)
		r = HSMFS_ERR_HSM;
	t->recovering = 0;
	mon_publish_locked(t);
	pthread_cond_broadcast(&t->cond);
	pthread_mutex_unlock(&t->lock);
	return r;
}
