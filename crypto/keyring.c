/* Open keys of an engine once each; PINs are resolved, used for the one
 * login and wiped before returning. A reload (keyring_reopen) shares the
 * open keys whose location is unchanged with the previous keyring, so
 * their sessions and logins survive; each open key counts the keyrings
 * holding it and is closed when the last one is freed. */
#include "crypto/keyring_int.h"
#include "crypto/pin.h"
#include "common/err.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* One open key, shared by the keyrings of successive reloads. */
struct shared_key {
	hsm_key *key;
	atomic_int refs;
};

struct keyring {
	atomic_int refs;          /* keyring_hold / keyring_free */
	const struct engine *engine;
	size_t n;
	const struct engine_key **ekeys;
	struct shared_key **keys;
};

static int
key_used(const struct engine *e, const struct engine_key *k)
{
	for (size_t i = 0; i < e->ndescs; i++)
		if (e->descs[i].key == k)
			return 1;
	return 0;
}

static int
str_eq(const char *a, const char *b)
{
	return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* The same key: same name and the same place (module or file, slot,
 * token, alias, options). The PIN source may differ: the key is already
 * logged in. */
static int
same_key(const struct engine_key *a, const struct engine_key *b)
{
	struct hsm_key_spec x, y;
	keyring_key_spec(a, NULL, &x);
	keyring_key_spec(b, NULL, &y);
	return str_eq(x.name, y.name) && x.backend == y.backend &&
	    str_eq(x.location, y.location) && str_eq(x.alias, y.alias) &&
	    x.has_slot == y.has_slot && (!x.has_slot || x.slot == y.slot) &&
	    str_eq(x.token_label, y.token_label) && x.no_raw_rsa == y.no_raw_rsa &&
	    x.pool_size == y.pool_size;
}

static int
same_pin_source(const struct engine_key *a, const struct engine_key *b)
{
	return str_eq(a->pin, b->pin) && str_eq(a->pin_encrypted,
	    b->pin_encrypted) && str_eq(a->pin_file, b->pin_file) &&
	    str_eq(a->pin_env, b->pin_env);
}

static void
shared_put(struct shared_key *s)
{
	if (s != NULL && atomic_fetch_sub(&s->refs, 1) == 1) {
		hsm_key_free(s->key);
		free(s);
	}
}

int
keyring_reopen(const struct keyring *old, const struct engine *e,
    struct keyring **out)
{
	struct keyring *kr = calloc(1, sizeof(*kr));
	int r = HSMFS_ERR_NOMEM;

	if (kr == NULL)
		return r;
	atomic_init(&kr->refs, 1);
	kr->engine = e;
	kr->ekeys = calloc(e->nkeys ? e->nkeys : 1, sizeof(*kr->ekeys));
	kr->keys = calloc(e->nkeys ? e->nkeys : 1, sizeof(*kr->keys));
	if (kr->ekeys == NULL || kr->keys == NULL)
		goto fail;
	for (size_t i = 0; i < e->nkeys; i++) {
		const struct engine_key *ek = &e->keys[i];
		struct shared_key *s = NULL;
		char *pin = NULL;
		if (!key_used(e, ek))
			continue;
		for (size_t j = 0; old != NULL && j < old->n; j++)
			if (same_key(old->ekeys[j], ek)) {
				/* Logged in already, but a changed PIN source is
				 * read now: a reload that says ok must not leave a
				 * config that fails at the next start. */
				if (!same_pin_source(old->ekeys[j], ek)) {
					if ((r = pin_of_key(ek, &pin)) != 0) {
						err_prefix("key %s: ", ek->name);
						goto fail;
					}
					pin_free(pin);
					pin = NULL;
				}
				s = old->keys[j];
				atomic_fetch_add(&s->refs, 1);
				break;
			}
		if (s == NULL) {
			if ((s = calloc(1, sizeof(*s))) == NULL) {
				r = HSMFS_ERR_NOMEM;
				goto fail;
			}
			atomic_init(&s->refs, 1);
			if ((r = keyring_open_key(ek, 1, &s->key)) != 0) {
				free(s);
				goto fail;
			}
		}
		kr->keys[kr->n] = s;
		kr->ekeys[kr->n++] = ek;
	}
	*out = kr;
	return 0;
fail:
	keyring_free(kr);
	return r;
}

int
keyring_open(const struct engine *e, struct keyring **out)
{
	return keyring_reopen(NULL, e, out);
}

struct keyring *
keyring_hold(struct keyring *kr)
{
	if (kr != NULL)
		atomic_fetch_add(&kr->refs, 1);
	return kr;
}

void
keyring_free(struct keyring *kr)
{
	if (kr == NULL || atomic_fetch_sub(&kr->refs, 1) != 1)
		return;
	for (size_t i = 0; i < kr->n; i++)
		shared_put(kr->keys[i]);
	free(kr->keys);
	free(kr->ekeys);
	free(kr);
}

static hsm_key *
key_by_name(struct keyring *kr, const char *key_name)
{
	for (size_t i = 0; kr && key_name && i < kr->n; i++)
		if (strcmp(kr->ekeys[i]->name, key_name) == 0)
			return kr->keys[i]->key;
	return NULL;
}

hsm_key *
keyring_unwrapper(struct keyring *kr, const struct engine_descriptor *d)
{
	return d ? key_by_name(kr, d->key_name) : NULL;
}

static void
signer_fill(const struct engine_descriptor *d, hsm_key *k,
    struct keyring_signer *out)
{
	out->desc = d;
	out->key = k;
	out->cert = hsm_key_cert(k);
	out->pubkey = hsm_key_pubkey(k);
	out->name = d->key_name;
}

int
keyring_signer_of(struct keyring *kr, const struct engine_descriptor *d,
    struct keyring_signer *out)
{
	hsm_key *k = key_by_name(kr, d->key_name);

	memset(out, 0, sizeof(*out));
	if (k == NULL || hsm_key_cert(k) == NULL) {
		err_set("%s version %d: key %s is not open", d->name, d->version,
		    d->key_name);
		return HSMFS_ERR_NOTFOUND;
	}
	signer_fill(d, k, out);
	return 0;
}

int
keyring_signer(struct keyring *kr, const char *descriptor,
    struct keyring_signer *out)
{
	const struct engine_descriptor *d =
	    kr ? engine_newest(kr->engine, descriptor) : NULL;

	if (d == NULL) {
		memset(out, 0, sizeof(*out));
		err_set("no %s descriptor in %s", descriptor,
		    kr ? kr->engine->path : "the config");
		return HSMFS_ERR_UNSUPPORTED;
	}
	return keyring_signer_of(kr, d, out);
}

int
keyring_verifiers(struct keyring *kr, const char *descriptor,
    struct keyring_signer **out, size_t *n)
{
	const struct engine *e = kr ? kr->engine : NULL;
	const struct engine_descriptor *newest =
	    e ? engine_newest(e, descriptor) : NULL;
	struct keyring_signer *v;
	size_t c = 0;

	*out = NULL;
	*n = 0;
	if (newest == NULL)
		return 0;
	if ((v = calloc(e->ndescs, sizeof(*v))) == NULL)
		return HSMFS_ERR_NOMEM;
	/* The newest first, then the others in document order. */
	for (size_t pass = 0; pass < 2; pass++)
		for (size_t i = 0; i < e->ndescs; i++) {
			const struct engine_descriptor *d = &e->descs[i];
			hsm_key *k;
			int dup = 0;
			if (strcmp(d->name, descriptor) != 0 ||
			    (pass == 0) != (d == newest) ||
			    (k = key_by_name(kr, d->key_name)) == NULL ||
			    hsm_key_cert(k) == NULL)
				continue;
			for (size_t j = 0; j < c; j++)
				dup |= v[j].key == k;
			if (!dup)
				signer_fill(d, k, &v[c++]);
		}
	*out = v;
	*n = c;
	return 0;
}

const char *keyring_key_name(const hsm_key *k) { return hsm_key_name(k); }
X509 *keyring_key_cert(const hsm_key *k) { return hsm_key_cert(k); }
EVP_PKEY *keyring_key_pubkey(const hsm_key *k) { return hsm_key_pubkey(k); }
EVP_PKEY *keyring_key_pkey(hsm_key *k) { return hsm_key_pkey(k); }
const char *keyring_key_where(const hsm_key *k) { return hsm_key_where(k); }

size_t keyring_count(const struct keyring *kr) { return kr ? kr->n : 0; }

const double *const keyring_latency_bounds_ms = hsm_latency_bounds_ms;

void
keyring_status(struct keyring *kr, size_t i, int ask,
    struct keyring_status *out)
{
	hsm_key *k = kr->keys[i]->key;

	memset(out, 0, sizeof(*out));
	hsm_key_get_stats(k, &out->st);
	hsm_key_token_state(k, ask, &out->present, &out->logged_in);
	out->name = hsm_key_name(k);
	out->pkcs11 = hsm_key_backend(k) == HSM_BACKEND_PKCS11;
	out->backend = out->pkcs11 ? "pkcs11" : "pkcs12";
	out->where = hsm_key_where(k);
	out->cert = hsm_key_cert(k);
}

int
keyring_shared(const struct keyring *kr, size_t i)
{
	return atomic_load(&kr->keys[i]->refs) > 1;
}
