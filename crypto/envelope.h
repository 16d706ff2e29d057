/* NX02 envelopes: one secret field sealed with a fresh AES key, the key
 * wrapped with RSA-OAEP under a certificate's public key, everything
 * authenticated with HMAC-SHA-256 (encrypt-then-MAC). Byte layout in
 * docs/fields.md. Sealing needs only the public key (OpenSSL); opening
 * unwraps through the hsm layer. */
#ifndef HSMFS_CRYPTO_ENVELOPE_H
#define HSMFS_CRYPTO_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "crypto/engine.h"
#include "crypto/keyring.h"
#include <stddef.h>
#include <stdint.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#ifndef HSMFS_HSM_KEY_T
#define HSMFS_HSM_KEY_T
typedef struct hsm_key hsm_key;   /* opaque (hsm/hsm.h) */
#endif

#define ENVELOPE_FORMAT "NX02"          /* descriptor result= value */
#define ENVELOPE_TEXT_PREFIX "NX02:"
#define ENVELOPE_HEADER_LEN 68          /* fixed part up to the wrapped key */
#define ENVELOPE_TRAILER_LEN 64         /* HMAC tag + SHA-256 check */
#define ENVELOPE_KEY_ID_LEN 32
#define ENVELOPE_IV_LEN 16
#define ENVELOPE_MAC_KEY_LEN 32
/* Fields are secrets (passwords, API keys), not documents. */
#define ENVELOPE_MAX_PLAINTEXT ((size_t)1 << 20)
/* Text form of the header: prefix + base64 of the first 69 bytes covers
 * the whole fixed header (92 characters decode to 69 bytes). */
#define ENVELOPE_TEXT_HEADER_LEN (5 + 92)

enum envelope_oaep {
	ENVELOPE_OAEP_SHA1 = 1,
	ENVELOPE_OAEP_SHA256 = 2,
	ENVELOPE_OAEP_SHA384 = 3,
	ENVELOPE_OAEP_SHA512 = 4,
};

/* The fixed header, as on disk (integers big-endian there). */
struct envelope_header {
	uint32_t version;                       /* EncryptedFields descriptor version */
	uint8_t key_id[ENVELOPE_KEY_ID_LEN];    /* SHA-256 of the wrapping key's SPKI DER */
	uint8_t aes_len;                        /* 16, 24 or 32 */
	uint8_t oaep;                           /* enum envelope_oaep */
	uint64_t plain_len;
	uint8_t iv[ENVELOPE_IV_LEN];
	uint16_t wrapped_len;                   /* RSA modulus bytes */
};

/* A parsed binary envelope. Pointers borrow from bin, which it owns. */
struct envelope {
	struct envelope_header h;
	uint8_t *bin;
	size_t bin_len;
	const uint8_t *wrapped;
	const uint8_t *ct;
	size_t ct_len;
	const uint8_t *mac;     /* covers bin[0 .. mac) */
};

/* Is d an EncryptedFields descriptor this code can seal with (result
 * NX02, AES/CBC/PKCS7Padding 128/192/256, an OAEP hash)? Returns 0 or
 * HSMFS_ERR_CONFIG with err_set() naming the descriptor and attribute. */
int envelope_descriptor_check(const struct engine_descriptor *d);

/* SHA-256 of the certificate's DER SubjectPublicKeyInfo: the key id
 * stored in headers (survives certificate renewal on the same key). */
int envelope_key_id(X509 *cert, uint8_t id[ENVELOPE_KEY_ID_LEN]);

/* Seal len bytes under d (version, AES size, OAEP hash) and the public
 * key of cert (no HSM involved). *bin is a binary envelope (plain heap:
 * it holds no secret); free with free(). */
int envelope_seal(const struct engine_descriptor *d, X509 *cert,
    const uint8_t *pt, size_t len, uint8_t **bin, size_t *bin_len);

/* Binary <-> text ("NX02:" + base64, no newline). envelope_to_text
 * returns a malloc'd NUL-terminated string. envelope_from_text accepts
 * one trailing "\n" or "\r\n" and nothing else around the line; anything
 * that is not NX02 text gives HSMFS_ERR_INVALID. */
char *envelope_to_text(const uint8_t *bin, size_t bin_len, size_t *text_len);
int envelope_from_text(const char *text, size_t len, uint8_t **bin,
    size_t *bin_len);

/* Strict parse of a binary envelope; takes ownership of bin (freed on
 * failure too). Too short to hold an envelope: HSMFS_ERR_INVALID. Any
 * damaged, truncated or extended envelope fails the trailing SHA-256
 * check: HSMFS_ERR_BADMSG. A well-formed check over an inconsistent
 * structure (hand-made garbage): HSMFS_ERR_INVALID. */
int envelope_parse(uint8_t *bin, size_t bin_len, struct envelope *env);
/* Text form straight to a parsed envelope. */
int envelope_parse_text(const char *text, size_t len, struct envelope *env);
void envelope_clear(struct envelope *env);

/* Header of a binary prefix (at least ENVELOPE_HEADER_LEN bytes), or of
 * the start of the text form, without any check beyond the magic: for
 * stat(), which must not touch the HSM. */
int envelope_peek_header(const uint8_t *bin, size_t len,
    struct envelope_header *h);
int envelope_peek_text_header(const char *text, size_t len,
    struct envelope_header *h);

/* The configured EncryptedFields descriptor and open key for an
 * envelope: the version must be configured and its key's id must equal
 * the header's. Otherwise HSMFS_ERR_INVALID naming what is missing. */
int envelope_find_key(const struct engine *e, struct keyring *kr,
    const struct envelope_header *h, const struct engine_descriptor **d,
    hsm_key **key);

/* Unwrap the keys in the HSM, check the MAC in constant time, then
 * decrypt. *pt is secure memory, possibly longer than *pt_len but holding
 * nothing secret past it: release with envelope_free_plain(*pt, *pt_len)
 * (or secmem_free with the same length). Any failure of the unwrap, MAC or padding gives
 * HSMFS_ERR_BADMSG with the same message; HSM faults give their code. */
int envelope_open(const struct envelope *env, hsm_key *key, uint8_t **pt,
    size_t *pt_len);
void envelope_free_plain(uint8_t *pt, size_t len);

/* Move an envelope to descriptor d / certificate cert: unwrap with key,
 * check the MAC, then rewrap the same AES and MAC keys (ciphertext kept)
 * or, when d's AES size differs, decrypt and seal afresh. */
int envelope_rewrap(const struct envelope *env, hsm_key *key,
    const struct engine_descriptor *d, X509 *cert, uint8_t **bin,
    size_t *bin_len);

/* Does the envelope already use descriptor d with key id? */
int envelope_is_current(const struct envelope_header *h,
    const struct engine_descriptor *d, const uint8_t key_id[ENVELOPE_KEY_ID_LEN]);

#endif
