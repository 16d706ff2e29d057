/* libFuzzer target: engineSignEncrypt.xml (crypto/engine.c) read from a
 * file as hsmfs does, plus the pin.encrypted unscrambler. Never opens
 * keys or reads PIN files: only what the parser does with hostile text. */
#include "fuzz_common.h"
#include "crypto/engine.h"
#include "crypto/pin.h"
#include "common/err.h"

static const char *const fuzz_descs[] = {
	ENGINE_ENCRYPTED_FIELDS, ENGINE_CONFIG_ZIP_SIGNER,
	ENGINE_OBJECT_HISTORY_SIGNER, ENGINE_SIGN_EMAIL,
};

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	fuzz_init(".xml");
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	struct engine *e = NULL;
	char *s, *pin = NULL;

	fuzz_write(data, len);
	if (engine_load(fuzz_path, &e) == 0) {
		for (size_t i = 0; i < sizeof(fuzz_descs) / sizeof(fuzz_descs[0]); i++) {
			const struct engine_descriptor *d = engine_newest(e, fuzz_descs[i]);
			if (d != NULL && (d->key == NULL ||
			    engine_key_by_name(e, d->key_name) != d->key ||
			    engine_version(e, d->name, d->version) != d))
				abort();        /* resolution must be consistent */
		}
		for (size_t i = 0; i < e->nunserved; i++) {
			const struct engine_unserved *u = &e->unserved[i];
			if ((u->key_name == NULL) != (u->key == NULL) ||
			    (u->key && engine_key_by_name(e, u->key_name) != u->key))
				abort();        /* unserved references alike */
		}
		for (size_t i = 0; i < e->nkeys; i++)
			if (e->keys[i].pin_encrypted &&
			    pin_unscramble(e->keys[i].pin_encrypted, &pin) == 0)
				pin_free(pin);
		engine_free(e);
	}
	/* The unscrambler on the raw input as a string. */
	if ((s = strndup((const char *)data, len)) != NULL) {
		if (pin_unscramble(s, &pin) == 0)
			pin_free(pin);
		free(s);
	}
	err_clear();
	return 0;
}
