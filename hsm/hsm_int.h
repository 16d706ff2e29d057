/* Private to hsm/: the backend vtable behind hsm_key. */
#ifndef HSMFS_HSM_INT_H
#define HSMFS_HSM_INT_H

#include "hsm/hsm.h"
#include <pthread.h>

struct hsm_backend_ops {
	int (*sign)(hsm_key *k, const EVP_MD *md, const void *data, size_t len,
	    uint8_t *sig, size_t *siglen);
	int (*sign_digest)(hsm_key *k, const EVP_MD *md, const uint8_t *dgst,
	    size_t dlen, uint8_t *sig, size_t *siglen);
	int (*oaep_decrypt)(hsm_key *k, const EVP_MD *md, const uint8_t *in,
	    size_t inlen, uint8_t *out, size_t *outlen);
	int (*store_cert)(hsm_key *k, X509 *cert);
	void (*pool)(hsm_key *k, unsigned *in_use, unsigned *size);
	/* Optional: token health for .status (key_stats.available...). */
	void (*health)(hsm_key *k, struct key_stats *st);
	void (*token_state)(hsm_key *k, int ask, int *present, int *logged_in);
	void (*free)(hsm_key *k);
};

struct hsm_key {
	const struct hsm_backend_ops *ops;
	enum hsm_backend backend;
	char *name;
	char *where;
	X509 *cert;            /* owned, may be NULL */
	EVP_PKEY *pub;         /* owned */
	EVP_PKEY *pkey;        /* owned: private ops reach the backend */
	int bits;
	unsigned char *spki;   /* DER SubjectPublicKeyInfo of pub, made once */
	int spki_len;
	void *priv;            /* backend state */

	pthread_mutex_t stats_lock;
	struct key_stats stats;
};

/* Statistics: every private-key operation, including those OpenSSL makes
 * through the EVP bridge, is counted once (hsm.c). */
double hsm_now_ms(void);
void hsm_account(hsm_key *k, double t0_ms, int r);

/* Common constructor/destructor parts (hsm.c). */
hsm_key *hsm_key_alloc(const struct hsm_backend_ops *ops, enum hsm_backend b,
    const char *name, const char *where);
/* Check that cert's public key equals pub (modulus and exponent). */
int hsm_cert_matches(X509 *cert, EVP_PKEY *pub);

/* Backends. */
int hsm_p12_open(const struct hsm_key_spec *spec, hsm_key **out);
int hsm_p11_open(const struct hsm_key_spec *spec, hsm_key **out);
int hsm_p11_keygen(const struct hsm_key_spec *spec, int bits, hsm_key **out);

/* EVP bridge for token keys (hsm/evp.c): an EVP_PKEY holding pub's RSA
 * public part whose private operations call back into k. */
EVP_PKEY *hsm_evp_bridge(hsm_key *k, EVP_PKEY *pub);

/* Raw private-key operations of a PKCS#11 key, for the EVP bridge and the
 * OAEP fallback (hsm/p11.c). Outputs of the raw (X.509) kinds are
 * left-padded to the modulus length; out holds bits/8 bytes. */
enum hsm_raw_op {
	HSM_RAW_SIGN_PKCS1 = 1,    /* CKM_RSA_PKCS sign (input: DigestInfo) */
	HSM_RAW_SIGN_X509,         /* CKM_RSA_X_509 sign */
	HSM_RAW_DECRYPT_PKCS1,     /* CKM_RSA_PKCS decrypt */
	HSM_RAW_DECRYPT_X509,      /* CKM_RSA_X_509 decrypt */
};
int hsm_p11_raw_priv(hsm_key *k, enum hsm_raw_op kind, const uint8_t *in,
    size_t inlen, uint8_t *out, size_t *outlen);
/* OpenSSL's constant-time OAEP decoding (md for OAEP and MGF1, empty
 * label) of a raw RSA result of exactly the modulus length (hsm/evp.c).
 * HSMFS_ERR_BADMSG when the padding is wrong. */
int hsm_oaep_decode(hsm_key *k, const EVP_MD *md, const uint8_t *raw,
    size_t rawlen, uint8_t *out, size_t outcap, size_t *outlen);

#endif
