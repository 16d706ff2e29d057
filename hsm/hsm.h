/* The HSM layer: a private key plus its certificate, whatever holds it.
 * Backends: PKCS#11 (hsm/p11.c, the real thing) and PKCS#12 files
 * (hsm/p12.c, migration and hosts without an HSM). This layer knows
 * nothing about files, XML or formats: callers fill a hsm_key_spec.
 *
 * All functions return 0 or a negative hsmfs_err (common/err.h) and set
 * err_set() detail naming the key, the PKCS#11 function and CKR_* name.
 * Keys are thread-safe: any number of threads may sign/decrypt at once
 * (the PKCS#11 backend checks sessions out of a bounded pool). */
#ifndef HSMFS_HSM_H
#define HSMFS_HSM_H

#include "common/keystats.h"
#include <stddef.h>
#include <stdint.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

enum hsm_backend {
	HSM_BACKEND_PKCS11 = 1,
	HSM_BACKEND_P12 = 2,
};

struct hsm_key_spec {
	enum hsm_backend backend;
	const char *name;          /* config key name, for messages */
	const char *location;      /* PKCS#11 module (path or bare name) or .p12 file */
	const char *alias;         /* CKA_LABEL (PKCS#11) or friendlyName (P12, optional) */
	int has_slot;
	unsigned long slot;        /* slot ID as returned by C_GetSlotList */
	const char *token_label;   /* select token by label (NULL: unused) */
	const char *pin;           /* user PIN / P12 password; caller wipes after open */
	int no_raw_rsa;            /* forbid the CKM_RSA_X_509 OAEP fallback */
	int require_cert;          /* 1: the certificate must exist (normal use);
	                              0: keygen/import-cert may open a key without one */
	unsigned pool_size;        /* PKCS#11 sessions per token (0: default 8) */
};

#ifndef HSMFS_HSM_KEY_T
#define HSMFS_HSM_KEY_T
typedef struct hsm_key hsm_key;   /* also forward-declared by crypto/ headers */
#endif

/* Open (load module, initialise once, find slot, log in once per token,
 * find key and certificate, check they match). */
int hsm_key_open(const struct hsm_key_spec *spec, hsm_key **out);
void hsm_key_free(hsm_key *k);

const char *hsm_key_name(const hsm_key *k);
enum hsm_backend hsm_key_backend(const hsm_key *k);
/* Borrowed; NULL when opened without certificate. */
X509 *hsm_key_cert(const hsm_key *k);
/* Borrowed public key (from the certificate, or the token's public key). */
EVP_PKEY *hsm_key_pubkey(const hsm_key *k);
/* Borrowed EVP_PKEY whose private operations run inside the HSM, for
 * OpenSSL's CMS/S-MIME/X509 code. EVP_PKEY_up_ref it to keep it; never
 * EVP_PKEY_dup it. */
EVP_PKEY *hsm_key_pkey(hsm_key *k);
int hsm_key_bits(const hsm_key *k);
/* DER SubjectPublicKeyInfo of the public key, encoded once and kept with
 * the key (borrowed); NULL with an error set if it cannot be encoded. */
const unsigned char *hsm_key_spki(hsm_key *k, size_t *len);
/* Token label (PKCS#11) or file name (P12), for status output. */
const char *hsm_key_where(const hsm_key *k);

/* RSASSA-PKCS1-v1_5 signature of data hashed with md (SHA-256/384/512):
 * CKM_SHA*_RSA_PKCS on the token. sig must hold hsm_key_bits()/8 bytes. */
int hsm_key_sign(hsm_key *k, const EVP_MD *md, const void *data, size_t len,
    uint8_t *sig, size_t *siglen);
/* Same over a precomputed digest (CKM_RSA_PKCS over the DigestInfo). */
int hsm_key_sign_digest(hsm_key *k, const EVP_MD *md, const uint8_t *dgst,
    size_t dlen, uint8_t *sig, size_t *siglen);
/* RSA-OAEP decryption with md as OAEP and MGF1 hash, empty label. Native
 * CKM_RSA_PKCS_OAEP first; tokens that refuse the parameters (SoftHSM
 * 2.6.1 for all but SHA-1) get CKM_RSA_X_509 plus OpenSSL's constant-time
 * OAEP decoding, unless spec.no_raw_rsa. out must hold bits/8 bytes;
 * wipe it after use. A wrong ciphertext gives HSMFS_ERR_BADMSG. */
int hsm_key_oaep_decrypt(hsm_key *k, const EVP_MD *md, const uint8_t *in,
    size_t inlen, uint8_t *out, size_t *outlen);

/* PKCS#11 key management for hsmfs-tool (P12 keys: HSMFS_ERR_UNSUPPORTED). */
/* Generate an RSA pair on the token (sensitive, not extractable, label =
 * alias, fresh CKA_ID). Fails if a private key with the alias exists. */
int hsm_keygen(const struct hsm_key_spec *spec, int bits, hsm_key **out);
/* Store a certificate on the token under the key's label and CKA_ID,
 * after checking it matches the key; replaces an older one. */
int hsm_key_store_cert(hsm_key *k, X509 *cert);

/* Latency histogram bounds (upper, inclusive, milliseconds) of
 * key_stats.latency[] (common/keystats.h). */
#define HSM_LATENCY_BUCKETS KEY_LATENCY_BUCKETS
extern const double hsm_latency_bounds_ms[HSM_LATENCY_BUCKETS - 1];
#define HSM_ERR_KINDS KEY_ERR_KINDS

void hsm_key_get_stats(hsm_key *k, struct key_stats *out);
/* Token state for monitoring: present in its slot, and logged in (or no
 * login needed). PKCS#12 keys are always both. Never waits for the
 * token's lock; with ask, one caller per token at a time asks the module
 * (which may hang while a remote HSM is down), the others and !ask get
 * the last answer. */
void hsm_key_token_state(hsm_key *k, int ask, int *present, int *logged_in);

#endif
