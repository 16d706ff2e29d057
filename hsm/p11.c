/* PKCS#11 backend: placeholder until the PKCS#11 work lands. */
#include "hsm/hsm_int.h"
#include "common/err.h"

int
hsm_p11_open(const struct hsm_key_spec *spec, hsm_key **out)
{
	err_set("key %s: PKCS#11 backend not built yet", spec->name);
	return HSMFS_ERR_UNSUPPORTED;
}

int
hsm_p11_keygen(const struct hsm_key_spec *spec, int bits, hsm_key **out)
{
	err_set("key %s: PKCS#11 backend not built yet", spec->name);
	return HSMFS_ERR_UNSUPPORTED;
}
