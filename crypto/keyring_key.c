/* One key alone, for hsmfs-tool (check, verify-zip, keygen,
 * import-cert): the single key-open sequence (PIN, spec, open, wipe),
 * key generation and certificate import, and check's round trips. */
#include "crypto/keyring_int.h"
#include "crypto/pin.h"
#include "common/err.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

void
keyring_key_spec(const struct engine_key *k, const char *pin,
    struct hsm_key_spec *spec)
{
	memset(spec, 0, sizeof(*spec));
	spec->backend = k->type == ENGINE_KEY_HSM ? HSM_BACKEND_PKCS11 :
	    HSM_BACKEND_P12;
	spec->name = k->name;
	spec->location = k->location;
	spec->alias = k->alias;
	spec->has_slot = k->has_slot;
	spec->slot = k->slot;
	spec->token_label = k->token_label;
	spec->pin = pin;
	spec->no_raw_rsa = k->no_raw_rsa;
	spec->require_cert = 1;
	spec->pool_size = 0;
}

/* PIN -> spec -> open or generate -> wipe the PIN. */
static int
with_pin(const struct engine_key *k, int need_cert, int bits, hsm_key **out)
{
	struct hsm_key_spec spec;
	char *pin = NULL;
	int r;

	*out = NULL;
	if ((r = pin_of_key(k, &pin)) != 0) {
		err_prefix("key %s: ", k->name);
		return r;
	}
	keyring_key_spec(k, pin, &spec);
	spec.require_cert = need_cert;
	r = bits > 0 ? hsm_keygen(&spec, bits, out) : hsm_key_open(&spec, out);
	pin_free(pin);
	return r;
}

int
keyring_open_key(const struct engine_key *k, int need_cert, hsm_key **out)
{
	return with_pin(k, need_cert != 0, 0, out);
}

int
keyring_generate(const struct engine_key *k, int bits, hsm_key **out)
{
	if (bits <= 0) {
		err_set("key %s: no key size", k->name);
		return HSMFS_ERR_INVALID;
	}
	return with_pin(k, 0, bits, out);
}

int
keyring_store_cert(hsm_key *k, X509 *cert)
{
	return hsm_key_store_cert(k, cert);
}

void
keyring_close_key(hsm_key *k)
{
	hsm_key_free(k);
}

int
keyring_probe_sign(hsm_key *k, const EVP_MD *md, char *why, size_t whylen)
{
	uint8_t msg[64], sig[1024];
	size_t siglen = sizeof(sig);
	EVP_MD_CTX *ctx = NULL;
	int r;

	RAND_bytes(msg, sizeof(msg));
	err_clear();
	if ((r = hsm_key_sign(k, md, msg, sizeof(msg), sig, &siglen)) != 0) {
		snprintf(why, whylen, "sign: %s", err_detail());
		return r;
	}
	if ((ctx = EVP_MD_CTX_new()) == NULL ||
	    EVP_DigestVerifyInit(ctx, NULL, md, NULL, hsm_key_pubkey(k)) != 1 ||
	    EVP_DigestVerify(ctx, sig, siglen, msg, sizeof(msg)) != 1) {
		ERR_clear_error();
		snprintf(why, whylen, "signature does not verify with the certificate");
		r = HSMFS_ERR_BADMSG;
	}
	EVP_MD_CTX_free(ctx);
	return r;
}

int
keyring_probe_unwrap(hsm_key *k, const EVP_MD *md, char *why, size_t whylen)
{
	uint8_t secret[32], ct[1024], pt[1024];
	size_t ctlen = sizeof(ct), ptlen = sizeof(pt);
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(hsm_key_pubkey(k), NULL);
	int r = HSMFS_ERR_CRYPTO;

	RAND_bytes(secret, sizeof(secret));
	if (ctx == NULL || EVP_PKEY_encrypt_init(ctx) <= 0 ||
	    EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
	    EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) <= 0 ||
	    EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) <= 0 ||
	    EVP_PKEY_encrypt(ctx, ct, &ctlen, secret, sizeof(secret)) <= 0) {
		ERR_clear_error();
		snprintf(why, whylen, "OAEP encryption with the certificate failed");
		goto out;
	}
	err_clear();
	if ((r = hsm_key_oaep_decrypt(k, md, ct, ctlen, pt, &ptlen)) != 0) {
		snprintf(why, whylen, "unwrap: %s", err_detail());
		goto out;
	}
	if (ptlen != sizeof(secret) || CRYPTO_memcmp(pt, secret, ptlen) != 0) {
		snprintf(why, whylen, "unwrapped value differs");
		r = HSMFS_ERR_BADMSG;
		goto out;
	}
	r = 0;
out:
	OPENSSL_cleanse(pt, sizeof(pt));
	OPENSSL_cleanse(secret, sizeof(secret));
	EVP_PKEY_CTX_free(ctx);
	return r;
}
