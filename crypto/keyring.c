/* Open keys of an engine once each; PINs are resolved, used for the one
 * login and wiped before returning. A reload (keyring_reopen) shares the
 * open keys whose location is unchanged with the previous keyring, so
 * their sessions and logins survive; each open key counts the keyrings
 * holding it and is closed when the last one is freed. */
#include "crypto/keyring.h"
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
	engine_key_spec(a, NULL, &x);
	engine_key_spec(b, NULL, &y);
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
		struct hsm_key_spec spec;
		char *pin = NULL;
		if (!key_used(e, ek))
			continue;
		for (size_t j = 0; old != NULL && j < old->n; j++)
			if (same_key(old->ekeys[j], ek)) {
				/* Logged in already, but a changed PIN source is
				 * read now: a reload that says ok must not leave a
				 * config that fails at the next start. */
				if (!same_pin_source(old->ekeys[j], ek)) {
					if ((r = engine_key_pin(ek, &pin)) != 0) {
						err_prefix("key %s: ", ek->name);
						goto fail;
					}
					engine_pin_free(pin);
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
			if ((r = engine_key_pin(ek, &pin)) != 0) {
				err_prefix("key %s: ", ek->name);
				free(s);
				goto fail;
			}
			engine_key_spec(ek, pin, &spec);
			spec.require_cert = 1;
			r = hsm_key_open(&spec, &s->key);
			engine_pin_free(pin);
			if (r != 0) {
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

hsm_key *
keyring_key_by_name(struct keyring *kr, const char *key_name)
{
	for (size_t i = 0; kr && i < kr->n; i++)
		if (strcmp(kr->ekeys[i]->name, key_name) == 0)
			return kr->keys[i]->key;
	return NULL;
}

hsm_key *
keyring_key(struct keyring *kr, const struct engine_descriptor *d)
{
	return d ? keyring_key_by_name(kr, d->key_name) : NULL;
}

size_t keyring_count(const struct keyring *kr) { return kr ? kr->n : 0; }
hsm_key *keyring_at(struct keyring *kr, size_t i) { return kr->keys[i]->key; }

int
keyring_shared(const struct keyring *kr, size_t i)
{
	return atomic_load(&kr->keys[i]->refs) > 1;
}
