/* libFuzzer target: NX02 envelopes (crypto/envelope.c) as they arrive in
 * MNT/fields/.sealed/NAME or on hsmfs-tool open-field's stdin: text and
 * binary parsing and the header peeks stat() relies on. */
#include "fuzz_common.h"
#include "crypto/envelope.h"
#include "common/err.h"
#include "common/util.h"

#include <openssl/sha.h>

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	log_init("fuzz", 0, getenv("FUZZ_VERBOSE") ? LOG_DEBUG : -1);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	struct envelope env;
	struct envelope_header h;
	uint8_t *bin = NULL, *copy;
	size_t bin_len = 0;
	char *text;

	/* Text form, then the binary it decodes to. */
	if (envelope_from_text((const char *)data, len, &bin, &bin_len) == 0) {
		char *again = envelope_to_text(bin, bin_len, NULL);
		memset(&env, 0, sizeof(env));
		if (envelope_parse(bin, bin_len, &env) == 0)
			envelope_clear(&env);
		free(again);
	}
	memset(&env, 0, sizeof(env));
	if (envelope_parse_text((const char *)data, len, &env) == 0)
		envelope_clear(&env);
	/* Raw bytes as a binary envelope (parse takes ownership). */
	if ((copy = malloc(len ? len : 1)) != NULL) {
		memcpy(copy, data, len);
		memset(&env, 0, sizeof(env));
		if (envelope_parse(copy, len, &env) == 0)
			envelope_clear(&env);
	}
	/* Most mutations fail the trailing SHA-256 check at once; recompute
	 * it so the structural checks behind it get fuzzed too, in binary
	 * and in text form. */
	if (len >= SHA256_DIGEST_LENGTH && (copy = malloc(len)) != NULL) {
		memcpy(copy, data, len);
		SHA256(copy, len - SHA256_DIGEST_LENGTH, copy + len - SHA256_DIGEST_LENGTH);
		if ((text = util_b64_encode(copy, len)) != NULL) {
			size_t tl = strlen(text) + 6;
			char *t2 = malloc(tl);
			if (t2 != NULL) {
				snprintf(t2, tl, "NX02:%s", text);
				memset(&env, 0, sizeof(env));
				if (envelope_parse_text(t2, strlen(t2), &env) == 0)
					envelope_clear(&env);
				free(t2);
			}
			free(text);
		}
		memset(&env, 0, sizeof(env));
		if (envelope_parse(copy, len, &env) == 0)
			envelope_clear(&env);
	}
	envelope_peek_header(data, len, &h);
	envelope_peek_text_header((const char *)data, len, &h);
	if ((text = envelope_to_text(data, len, NULL)) != NULL)
		free(text);
	err_clear();
	return 0;
}
