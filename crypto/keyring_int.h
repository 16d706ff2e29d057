/* crypto/-internal side of the keyring (includes hsm/hsm.h): only
 * crypto/ sources and unit tests may include it. */
#ifndef HSMFS_CRYPTO_KEYRING_INT_H
#define HSMFS_CRYPTO_KEYRING_INT_H

#include "crypto/keyring.h"
#include "hsm/hsm.h"

/* Fill an hsm_key_spec for k (pointers borrow from k and pin);
 * require_cert = 1. */
void keyring_key_spec(const struct engine_key *k, const char *pin,
    struct hsm_key_spec *spec);

#endif
