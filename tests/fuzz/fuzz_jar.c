/* libFuzzer target: the zip verifier (crypto/jar_verify.c) on a zip as copied
 * into MNT/verify-in, and the signer-name normaliser. No trusted signer is
 * configured: everything up to the trust decision is exercised. */
#include "fuzz_common.h"
#include "crypto/jar.h"
#include "common/err.h"

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	fuzz_init(".zip");
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	struct jar_trust t = { NULL, 0, NULL };
	struct jar_verdict v;
	char name[9], *s;

	fuzz_write(data, len);
	memset(&v, 0, sizeof(v));
	if (jar_verify(fuzz_path, &t, &v) == 0 && v.valid)
		abort();        /* nothing is trusted: nothing may verify */
	if ((s = strndup((const char *)data, len < 64 ? len : 64)) != NULL) {
		jar_signer_name(s, name);
		free(s);
	}
	err_clear();
	return 0;
}
