/* Open keys of an engine once each; PINs are resolved, used for the one
 * login and wiped before returning. */
#include "crypto/keyring.h"
#include "common/err.h"

#include <stdlib.h>
#include <string.h>

struct keyring {
	const struct engine *engine;
	size_t n;
	const struct engine_key **ekeys;
	hsm_key **keys;
};

static int
key_used(const struct engine *e, const struct engine_key *k)
{
	for (size_t i = 0; i < e->ndescs; i++)
		if (e->descs[i].key == k)
			return 1;
	return 0;
}

int
keyring_open(const struct engine *e, struct keyring **out)
{
	struct keyring *kr = calloc(1, sizeof(*kr));
	int r = HSMFS_ERR_NOMEM;

	if (kr == NULL)
		return r;
	kr->engine = e;
	kr->ekeys = calloc(e->nkeys ? e->nkeys : 1, sizeof(*kr->ekeys));
	kr->keys = calloc(e->nkeys ? e->nkeys : 1, sizeof(*kr->keys));
	if (kr->ekeys == NULL || kr->keys == NULL)
		goto fail;
	for (size_t i = 0; i < e->nkeys; i++) {
		const struct engine_key *ek = &e->keys[i];
		struct hsm_key_spec spec;
		char *pin = NULL;
		if (!key_used(e, ek))
			continue;
		if ((r = engine_key_pin(ek, &pin)) != 0) {
			err_prefix("key %s: ", ek->name);
			goto fail;
		}
		engine_key_spec(ek, pin, &spec);
		spec.require_cert = 1;
		r = hsm_key_open(&spec, &kr->keys[kr->n]);
		engine_pin_free(pin);
		if (r != 0)
			goto fail;
		kr->ekeys[kr->n++] = ek;
	}
	*out = kr;
	return 0;
fail:
	keyring_free(kr);
	return r;
}

void
keyring_free(struct keyring *kr)
{
	if (kr == NULL)
		return;
	for (size_t i = 0; i < kr->n; i++)
		hsm_key_free(kr->keys[i]);
	free(kr->keys);
	free(kr->ekeys);
	free(kr);
}

hsm_key *
keyring_key_by_name(struct keyring *kr, const char *key_name)
{
	for (size_t i = 0; kr && i < kr->n; i++)
		if (strcmp(kr->ekeys[i]->name, key_name) == 0)
			return kr->keys[i];
	return NULL;
}

hsm_key *
keyring_key(struct keyring *kr, const struct engine_descriptor *d)
{
	return d ? keyring_key_by_name(kr, d->key_name) : NULL;
}

size_t keyring_count(const struct keyring *kr) { return kr ? kr->n : 0; }
hsm_key *keyring_at(struct keyring *kr, size_t i) { return kr->keys[i]; }
