/* NX02 envelopes (format: docs/fields.md): sealing with OpenSSL and a
 * certificate's public key, strict parsing, opening through the hsm layer,
 * and rewrapping for key rotation. Owns every plaintext and key buffer it
 * makes: secure memory, wiped on every path. */
#include "crypto/envelope.h"
#include "hsm/hsm.h"
#include "common/err.h"
#include "common/util.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#define MAGIC "NX02"
#define MAC_LEN 32
#define CHECK_LEN 32
#define MIN_WRAPPED 64      /* 512-bit RSA: far below anything accepted */
#define MAX_WRAPPED 2048    /* 16384-bit RSA */
#define AES_BLOCK 16

/* The one message for every authentication failure: nothing may tell a
 * padding failure from a MAC failure or a wrong unwrap. */
#define BADMSG_TEXT "envelope failed authentication (tampered, damaged, or " \
	"sealed for another key)"

/* Algorithms fetched once: an implicit fetch per call (EVP_sha256(),
 * EVP_MAC_fetch) costs name lookups under global locks on every open. */
static struct {
	EVP_MAC *hmac;
	EVP_MD *sha256;
	EVP_CIPHER *aes[3];   /* 128, 192, 256 CBC */
	int ok;
} algs;
static pthread_once_t algs_once = PTHREAD_ONCE_INIT;

static void
algs_fetch(void)
{
	algs.hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	algs.sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	algs.aes[0] = EVP_CIPHER_fetch(NULL, "AES-128-CBC", NULL);
	algs.aes[1] = EVP_CIPHER_fetch(NULL, "AES-192-CBC", NULL);
	algs.aes[2] = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
	algs.ok = algs.hmac && algs.sha256 && algs.aes[0] && algs.aes[1] &&
	    algs.aes[2];
}

static int
algs_ready(void)
{
	pthread_once(&algs_once, algs_fetch);
	if (!algs.ok)
		err_set_ossl("OpenSSL lacks HMAC, SHA-256 or AES-CBC");
	return algs.ok ? 0 : HSMFS_ERR_CRYPTO;
}

static void
put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static uint32_t
get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	    (uint32_t)p[2] << 8 | p[3];
}

static const EVP_MD *
oaep_md(int id)
{
	switch (id) {
	case ENVELOPE_OAEP_SHA1: return EVP_sha1();
	case ENVELOPE_OAEP_SHA256: return EVP_sha256();
	case ENVELOPE_OAEP_SHA384: return EVP_sha384();
	case ENVELOPE_OAEP_SHA512: return EVP_sha512();
	}
	return NULL;
}

static int
oaep_id(const EVP_MD *md)
{
	switch (md ? EVP_MD_get_type(md) : 0) {
	case NID_sha1: return ENVELOPE_OAEP_SHA1;
	case NID_sha256: return ENVELOPE_OAEP_SHA256;
	case NID_sha384: return ENVELOPE_OAEP_SHA384;
	case NID_sha512: return ENVELOPE_OAEP_SHA512;
	}
	return 0;
}

static const EVP_CIPHER *
aes_cbc(int len)
{
	switch (len) {
	case 16: return algs.aes[0];
	case 24: return algs.aes[1];
	case 32: return algs.aes[2];
	}
	return NULL;
}

static size_t
ct_len_for(uint64_t plain_len)
{
	return (size_t)(plain_len / AES_BLOCK + 1) * AES_BLOCK;
}

int
envelope_descriptor_check(const struct engine_descriptor *d)
{
	if (d->result == NULL || strcmp(d->result, ENVELOPE_FORMAT) != 0) {
		err_set("%s version %d (line %d): result=\"%s\" is not implemented; "
		    "use result=\"" ENVELOPE_FORMAT "\"", d->name, d->version,
		    d->line, d->result ? d->result : "");
		return HSMFS_ERR_CONFIG;
	}
	if (d->alg != ENGINE_ALG_AES_CBC_PKCS7 ||
	    (d->size != 128 && d->size != 192 && d->size != 256)) {
		err_set("%s version %d (line %d): algorithm must be "
		    "AES/CBC/PKCS7Padding with size 128, 192 or 256", d->name,
		    d->version, d->line);
		return HSMFS_ERR_CONFIG;
	}
	if (oaep_id(d->oaep_md) == 0) {
		err_set("%s version %d (line %d): asymCipher must be "
		    "RSA/ECB/OAEPWith<SHA-1|SHA-256|SHA-384|SHA-512>AndMGF1Padding",
		    d->name, d->version, d->line);
		return HSMFS_ERR_CONFIG;
	}
	if (d->version < 1) {
		err_set("%s (line %d): version must be a positive number", d->name,
		    d->line);
		return HSMFS_ERR_CONFIG;
	}
	return 0;
}

int
envelope_key_id(X509 *cert, uint8_t id[ENVELOPE_KEY_ID_LEN])
{
	unsigned char *der = NULL;
	X509_PUBKEY *xp = cert ? X509_get_X509_PUBKEY(cert) : NULL;
	int len, r;

	if ((r = algs_ready()) != 0)
		return r;
	r = HSMFS_ERR_CRYPTO;
	/* The certificate's own SPKI (a plain ASN.1 re-encoding, cheap
	 * enough for every open), not an EVP_PKEY export. */
	if (xp == NULL || (len = i2d_X509_PUBKEY(xp, &der)) <= 0) {
		err_set_ossl("cannot encode the certificate's public key");
		goto out;
	}
	if (EVP_Digest(der, (size_t)len, id, NULL, algs.sha256, NULL) != 1) {
		err_set_ossl("SHA-256 failed");
		goto out;
	}
	r = 0;
out:
	OPENSSL_free(der);
	return r;
}

static int
hmac(const uint8_t *key, const uint8_t *data, size_t len, uint8_t out[MAC_LEN])
{
	EVP_MAC_CTX *ctx = NULL;
	OSSL_PARAM params[2];
	size_t n = 0;
	int r = HSMFS_ERR_CRYPTO;

	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
	    (char *)"SHA256", 0);
	params[1] = OSSL_PARAM_construct_end();
	if ((ctx = EVP_MAC_CTX_new(algs.hmac)) == NULL ||
	    EVP_MAC_init(ctx, key, ENVELOPE_MAC_KEY_LEN, params) != 1 ||
	    EVP_MAC_update(ctx, data, len) != 1 ||
	    EVP_MAC_final(ctx, out, &n, MAC_LEN) != 1 || n != MAC_LEN) {
		err_set_ossl("HMAC-SHA-256 failed");
		goto out;
	}
	r = 0;
out:
	EVP_MAC_CTX_free(ctx);   /* cleanses the key schedule */
	return r;
}

static int
sha256(const uint8_t *data, size_t len, uint8_t out[CHECK_LEN])
{
	if (EVP_Digest(data, len, out, NULL, algs.sha256, NULL) != 1) {
		err_set_ossl("SHA-256 failed");
		return HSMFS_ERR_CRYPTO;
	}
	return 0;
}

static int
oaep_wrap(EVP_PKEY *pub, const EVP_MD *md, const uint8_t *keys, size_t klen,
    uint8_t *out, size_t *outlen)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pub, NULL);
	int r = HSMFS_ERR_CRYPTO;

	if (ctx == NULL || EVP_PKEY_encrypt_init(ctx) <= 0 ||
	    EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
	    EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) <= 0 ||
	    EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) <= 0 ||
	    EVP_PKEY_encrypt(ctx, out, outlen, keys, klen) <= 0) {
		err_set_ossl("RSA-OAEP wrap with %s failed (key too small for "
		    "the hash?)", EVP_MD_get0_name(md));
		goto out;
	}
	r = 0;
out:
	EVP_PKEY_CTX_free(ctx);
	return r;
}

/* Encrypt pt (AES-CBC, PKCS#7) into ct, which holds ct_len_for(len). */
static int
cbc(int enc, int aes_len, const uint8_t *key, const uint8_t *iv,
    const uint8_t *in, size_t inlen, uint8_t *out, size_t *outlen)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int n1 = 0, n2 = 0, r = HSMFS_ERR_CRYPTO;

	if (ctx == NULL || inlen > INT32_MAX ||
	    EVP_CipherInit_ex(ctx, aes_cbc(aes_len), NULL, key, iv, enc) != 1)
		goto fail;
	if (EVP_CipherUpdate(ctx, out, &n1, in, (int)inlen) != 1)
		goto fail;
	if (EVP_CipherFinal_ex(ctx, out + n1, &n2) != 1) {
		if (!enc) {
			/* Only reachable after a valid MAC: a sealer bug or a
			 * forged MAC key; still one message for all. */
			ERR_clear_error();
			err_set(BADMSG_TEXT);
			r = HSMFS_ERR_BADMSG;
			goto out;
		}
		goto fail;
	}
	*outlen = (size_t)n1 + (size_t)n2;
	r = 0;
	goto out;
fail:
	err_set_ossl("AES-CBC failed");
out:
	EVP_CIPHER_CTX_free(ctx);   /* cleanses the key schedule */
	return r;
}

/* Assemble an envelope from its parts: header fields, wrapped keys and
 * ciphertext, then MAC and check. */
static int
assemble(const struct envelope_header *h, const uint8_t *mac_key,
    const uint8_t *wrapped, const uint8_t *ct, size_t ct_len, uint8_t **bin,
    size_t *bin_len)
{
	size_t n = ENVELOPE_HEADER_LEN + h->wrapped_len + ct_len + MAC_LEN + CHECK_LEN;
	uint8_t *b = malloc(n), *p;
	int r;

	if (b == NULL)
		return HSMFS_ERR_NOMEM;
	memcpy(b, MAGIC, 4);
	put32(b + 4, h->version);
	memcpy(b + 8, h->key_id, ENVELOPE_KEY_ID_LEN);
	b[40] = h->aes_len;
	b[41] = h->oaep;
	put32(b + 42, (uint32_t)(h->plain_len >> 32));
	put32(b + 46, (uint32_t)h->plain_len);
	memcpy(b + 50, h->iv, ENVELOPE_IV_LEN);
	b[66] = (uint8_t)(h->wrapped_len >> 8);
	b[67] = (uint8_t)h->wrapped_len;
	p = b + ENVELOPE_HEADER_LEN;
	memcpy(p, wrapped, h->wrapped_len);
	p += h->wrapped_len;
	memcpy(p, ct, ct_len);
	p += ct_len;
	if ((r = hmac(mac_key, b, (size_t)(p - b), p)) != 0 ||
	    (r = sha256(b, (size_t)(p - b) + MAC_LEN, p + MAC_LEN)) != 0) {
		free(b);
		return r;
	}
	*bin = b;
	*bin_len = n;
	return 0;
}

/* Seal with given AES and MAC keys (keys = aes_key || mac_key) and IV. */
static int
seal_with(const struct engine_descriptor *d, X509 *cert, const uint8_t *keys,
    const uint8_t *iv, const uint8_t *pt, size_t len, uint8_t **bin,
    size_t *bin_len)
{
	struct envelope_header h;
	uint8_t wrapped[MAX_WRAPPED], *ct = NULL;
	size_t wlen = sizeof(wrapped), ctl = 0;
	EVP_PKEY *pub = X509_get0_pubkey(cert);
	int r;

	memset(&h, 0, sizeof(h));
	h.version = (uint32_t)d->version;
	h.aes_len = (uint8_t)(d->size / 8);
	h.oaep = (uint8_t)oaep_id(d->oaep_md);
	h.plain_len = len;
	memcpy(h.iv, iv, ENVELOPE_IV_LEN);
	if ((r = envelope_key_id(cert, h.key_id)) != 0)
		return r;
	if (pub == NULL || EVP_PKEY_get_size(pub) > MAX_WRAPPED) {
		err_set("RSA key larger than %d bits", MAX_WRAPPED * 8);
		return HSMFS_ERR_CONFIG;
	}
	if ((r = oaep_wrap(pub, d->oaep_md, keys, h.aes_len + ENVELOPE_MAC_KEY_LEN,
	    wrapped, &wlen)) != 0)
		return r;
	h.wrapped_len = (uint16_t)wlen;
	if ((ct = malloc(ct_len_for(len))) == NULL)
		return HSMFS_ERR_NOMEM;
	if ((r = cbc(1, h.aes_len, keys, iv, pt, len, ct, &ctl)) != 0)
		goto out;
	r = assemble(&h, keys + h.aes_len, wrapped, ct, ctl, bin, bin_len);
out:
	free(ct);
	return r;
}

int
envelope_seal(const struct engine_descriptor *d, X509 *cert,
    const uint8_t *pt, size_t len, uint8_t **bin, size_t *bin_len)
{
	uint8_t *keys = NULL, iv[ENVELOPE_IV_LEN];
	size_t klen = 0;
	int r;

	if ((r = envelope_descriptor_check(d)) != 0 || (r = algs_ready()) != 0)
		return r;
	if (len > ENVELOPE_MAX_PLAINTEXT) {
		err_set("field value larger than %zu bytes", ENVELOPE_MAX_PLAINTEXT);
		return HSMFS_ERR_TOOBIG;
	}
	klen = (size_t)d->size / 8 + ENVELOPE_MAC_KEY_LEN;
	if ((keys = secmem_alloc(klen)) == NULL)
		return HSMFS_ERR_NOMEM;
	if (RAND_priv_bytes(keys, (int)klen) != 1 ||
	    RAND_bytes(iv, sizeof(iv)) != 1) {
		err_set_ossl("random generator failed");
		r = HSMFS_ERR_CRYPTO;
		goto out;
	}
	r = seal_with(d, cert, keys, iv, pt, len, bin, bin_len);
out:
	secmem_free(keys, klen);
	return r;
}

char *
envelope_to_text(const uint8_t *bin, size_t bin_len, size_t *text_len)
{
	char *b64 = util_b64_encode(bin, bin_len), *t;
	size_t n;

	if (b64 == NULL)
		return NULL;
	n = strlen(b64);
	if ((t = malloc(5 + n + 1)) != NULL) {
		memcpy(t, ENVELOPE_TEXT_PREFIX, 5);
		memcpy(t + 5, b64, n + 1);
		if (text_len)
			*text_len = 5 + n;
	}
	free(b64);
	return t;
}

int
envelope_from_text(const char *text, size_t len, uint8_t **bin, size_t *bin_len)
{
	if (len >= 1 && text[len - 1] == '\n')
		len--;
	if (len >= 1 && text[len - 1] == '\r')
		len--;
	if (len < 5 || memcmp(text, ENVELOPE_TEXT_PREFIX, 5) != 0) {
		err_set("not an NX02 envelope (expected one line starting \"NX02:\")");
		return HSMFS_ERR_INVALID;
	}
	if (util_b64_decode(text + 5, len - 5, bin, bin_len) != 0) {
		err_set("NX02 envelope: not valid base64 on one line");
		return HSMFS_ERR_INVALID;
	}
	return 0;
}

int
envelope_peek_header(const uint8_t *b, size_t len, struct envelope_header *h)
{
	if (len < ENVELOPE_HEADER_LEN || memcmp(b, MAGIC, 4) != 0) {
		err_set("not an NX02 envelope");
		return HSMFS_ERR_INVALID;
	}
	h->version = get32(b + 4);
	memcpy(h->key_id, b + 8, ENVELOPE_KEY_ID_LEN);
	h->aes_len = b[40];
	h->oaep = b[41];
	h->plain_len = (uint64_t)get32(b + 42) << 32 | get32(b + 46);
	memcpy(h->iv, b + 50, ENVELOPE_IV_LEN);
	h->wrapped_len = (uint16_t)(b[66] << 8 | b[67]);
	return 0;
}

int
envelope_peek_text_header(const char *text, size_t len, struct envelope_header *h)
{
	uint8_t *b = NULL;
	size_t n = 0;
	int r;

	if (len < ENVELOPE_TEXT_HEADER_LEN ||
	    memcmp(text, ENVELOPE_TEXT_PREFIX, 5) != 0) {
		err_set("not an NX02 envelope");
		return HSMFS_ERR_INVALID;
	}
	if (util_b64_decode(text + 5, ENVELOPE_TEXT_HEADER_LEN - 5, &b, &n) != 0) {
		err_set("NX02 envelope: header is not base64");
		return HSMFS_ERR_INVALID;
	}
	r = envelope_peek_header(b, n, h);
	free(b);
	return r;
}

int
envelope_parse(uint8_t *bin, size_t bin_len, struct envelope *env)
{
	uint8_t check[CHECK_LEN];
	struct envelope_header h;
	size_t body, ctl;
	int r;

	memset(env, 0, sizeof(*env));
	if ((r = algs_ready()) != 0)
		goto fail;
	if (bin_len < ENVELOPE_HEADER_LEN + MIN_WRAPPED + AES_BLOCK +
	    ENVELOPE_TRAILER_LEN) {
		err_set("not an NX02 envelope (%zu bytes, too short)", bin_len);
		r = HSMFS_ERR_INVALID;
		goto fail;
	}
	/* The unkeyed check first: it tells damage (a changed, missing or
	 * added byte: EBADMSG) from well-formed envelopes for keys we do not
	 * have (EINVAL), without the HSM. Authenticity is the MAC's job. */
	body = bin_len - CHECK_LEN;
	if ((r = sha256(bin, body, check)) != 0)
		goto fail;
	if (CRYPTO_memcmp(check, bin + body, CHECK_LEN) != 0) {
		err_set(BADMSG_TEXT);
		r = HSMFS_ERR_BADMSG;
		goto fail;
	}
	r = HSMFS_ERR_INVALID;
	if (envelope_peek_header(bin, bin_len, &h) != 0)
		goto fail;
	if (h.version < 1 || h.version > INT32_MAX) {
		err_set("NX02 envelope: descriptor version %u out of range", h.version);
		goto fail;
	}
	if (aes_cbc(h.aes_len) == NULL || oaep_md(h.oaep) == NULL) {
		err_set("NX02 envelope: unknown cipher (key length %u, OAEP hash %u)",
		    h.aes_len, h.oaep);
		goto fail;
	}
	if (h.wrapped_len < MIN_WRAPPED || h.wrapped_len > MAX_WRAPPED) {
		err_set("NX02 envelope: wrapped key length %u out of range",
		    h.wrapped_len);
		goto fail;
	}
	if (h.plain_len > ENVELOPE_MAX_PLAINTEXT) {
		err_set("NX02 envelope: value length %llu over the limit",
		    (unsigned long long)h.plain_len);
		goto fail;
	}
	ctl = ct_len_for(h.plain_len);
	if (bin_len != ENVELOPE_HEADER_LEN + h.wrapped_len + ctl +
	    ENVELOPE_TRAILER_LEN) {
		err_set("NX02 envelope: length %zu does not match its header",
		    bin_len);
		goto fail;
	}
	env->h = h;
	env->bin = bin;
	env->bin_len = bin_len;
	env->wrapped = bin + ENVELOPE_HEADER_LEN;
	env->ct = env->wrapped + h.wrapped_len;
	env->ct_len = ctl;
	env->mac = env->ct + ctl;
	return 0;
fail:
	free(bin);
	memset(env, 0, sizeof(*env));
	return r;
}

int
envelope_parse_text(const char *text, size_t len, struct envelope *env)
{
	uint8_t *bin = NULL;
	size_t n = 0;
	int r;

	memset(env, 0, sizeof(*env));
	if ((r = envelope_from_text(text, len, &bin, &n)) != 0)
		return r;
	return envelope_parse(bin, n, env);
}

void
envelope_clear(struct envelope *env)
{
	free(env->bin);
	memset(env, 0, sizeof(*env));
}

int
envelope_find_key(const struct engine *e, struct keyring *kr,
    const struct envelope_header *h, const struct engine_descriptor **dout,
    hsm_key **kout)
{
	const struct engine_descriptor *d;
	uint8_t id[ENVELOPE_KEY_ID_LEN];
	hsm_key *k;
	int r;

	d = e ? engine_version(e, ENGINE_ENCRYPTED_FIELDS, (int)h->version) : NULL;
	if (d == NULL) {
		err_set("envelope uses EncryptedFields version %u, which is not "
		    "configured", h->version);
		return HSMFS_ERR_INVALID;
	}
	if ((k = keyring_unwrapper(kr, d)) == NULL) {
		err_set("EncryptedFields version %u: key %s is not open",
		    h->version, d->key_name);
		return HSMFS_ERR_INVALID;
	}
	if ((r = envelope_key_id(hsm_key_cert(k), id)) != 0)
		return r;
	if (memcmp(id, h->key_id, sizeof(id)) != 0) {
		char want[2 * ENVELOPE_KEY_ID_LEN + 1];
		util_hex(h->key_id, 8, want);
		err_set("envelope was sealed for key id %s..., but EncryptedFields "
		    "version %u uses key %s (another key)", want, h->version,
		    d->key_name);
		return HSMFS_ERR_INVALID;
	}
	*dout = d;
	*kout = k;
	return 0;
}

/* 0 when the wrapped key has the modulus length and is below the
 * modulus, HSMFS_ERR_BADMSG when not. */
static int
wrap_fits(const struct envelope *env, hsm_key *key)
{
	EVP_PKEY *pub = hsm_key_pubkey(key);
	BIGNUM *n = NULL, *c = NULL;
	int r = HSMFS_ERR_BADMSG;

	if (pub == NULL || (size_t)EVP_PKEY_get_size(pub) != env->h.wrapped_len)
		return HSMFS_ERR_BADMSG;
	if (EVP_PKEY_get_bn_param(pub, OSSL_PKEY_PARAM_RSA_N, &n) != 1 ||
	    (c = BN_bin2bn(env->wrapped, env->h.wrapped_len, NULL)) == NULL) {
		err_set_ossl("cannot read the RSA modulus");
		r = HSMFS_ERR_CRYPTO;
		goto out;
	}
	if (BN_cmp(c, n) < 0)
		r = 0;
out:
	BN_free(n);
	BN_free(c);
	return r;
}

/* Unwrap aes_key || mac_key and verify the MAC. *keys is secure memory
 * of *klen bytes on success. */
static int
unwrap_verify(const struct envelope *env, hsm_key *key, uint8_t **keys,
    size_t *klen)
{
	size_t bufn = (size_t)hsm_key_bits(key) / 8 + 1, n = 0;
	size_t want = (size_t)env->h.aes_len + ENVELOPE_MAC_KEY_LEN;
	uint8_t *buf = NULL, tag[MAC_LEN];
	int r, reject = 0;

	if ((r = algs_ready()) != 0)
		return r;
	if (bufn < env->h.wrapped_len)
		bufn = env->h.wrapped_len;
	/* Public checks first: a wrap that cannot be an RSA ciphertext for
	 * this key (wrong length, not below the modulus) is the input's
	 * fault, and some tokens report it as a device error. */
	if ((r = wrap_fits(env, key)) != 0)
		goto bad_early;
	if ((buf = secmem_alloc(bufn)) == NULL)
		return HSMFS_ERR_NOMEM;
	r = hsm_key_oaep_decrypt(key, oaep_md(env->h.oaep), env->wrapped,
	    env->h.wrapped_len, buf, &n);
	if (r == HSMFS_ERR_BADMSG || (r == 0 && n != want)) {
		/* Implicit rejection: go on with random keys so that a bad
		 * wrap costs the same MAC computation as a bad tag, and no
		 * timing tells an OAEP failure from a MAC failure. */
		if (RAND_bytes(buf, (int)want) != 1)
			OPENSSL_cleanse(buf, want);
		reject = 1;
	} else if (r != 0) {
		goto out;
	}
	if ((r = hmac(buf + env->h.aes_len, env->bin,
	    (size_t)(env->mac - env->bin), tag)) != 0)
		goto out;
	if ((CRYPTO_memcmp(tag, env->mac, MAC_LEN) != 0) | reject) {
		r = HSMFS_ERR_BADMSG;
		goto bad;
	}
	*keys = buf;
	*klen = bufn;
	buf = NULL;
	r = 0;
	goto out;
bad_early:
	if (r != HSMFS_ERR_BADMSG)
		return r;
bad:
	err_set(BADMSG_TEXT);
out:
	OPENSSL_cleanse(tag, sizeof(tag));
	secmem_free(buf, bufn);
	return r;
}

int
envelope_open(const struct envelope *env, hsm_key *key, uint8_t **pt,
    size_t *pt_len)
{
	uint8_t *keys = NULL, *out = NULL;
	size_t klen = 0, outcap = env->ct_len, n = 0;
	int r;

	if ((r = unwrap_verify(env, key, &keys, &klen)) != 0)
		return r;
	if ((out = secmem_alloc(outcap)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	if ((r = cbc(0, env->h.aes_len, keys, env->h.iv, env->ct, env->ct_len,
	    out, &n)) != 0)
		goto out;
	if (n != env->h.plain_len) {
		err_set(BADMSG_TEXT);
		r = HSMFS_ERR_BADMSG;
		goto out;
	}
	*pt = out;
	*pt_len = n;
	out = NULL;
	r = 0;
out:
	secmem_free(out, outcap);
	secmem_free(keys, klen);
	return r;
}

void
envelope_free_plain(uint8_t *pt, size_t len)
{
	/* secmem_free wipes the whole allocation it knows about; len is the
	 * plaintext length, at most the allocation. */
	secmem_free(pt, len);
}

int
envelope_is_current(const struct envelope_header *h,
    const struct engine_descriptor *d, const uint8_t key_id[ENVELOPE_KEY_ID_LEN])
{
	return h->version == (uint32_t)d->version &&
	    h->aes_len == d->size / 8 && h->oaep == oaep_id(d->oaep_md) &&
	    memcmp(h->key_id, key_id, ENVELOPE_KEY_ID_LEN) == 0;
}

int
envelope_rewrap(const struct envelope *env, hsm_key *key,
    const struct engine_descriptor *d, X509 *cert, uint8_t **bin,
    size_t *bin_len)
{
	EVP_PKEY *pub = X509_get0_pubkey(cert);
	uint8_t *keys = NULL, *pt = NULL;
	size_t klen = 0, ptl = 0;
	int r;

	if ((r = envelope_descriptor_check(d)) != 0)
		return r;
	if (env->h.aes_len != d->size / 8) {
		/* New AES size: the content must be encrypted again. */
		if ((r = envelope_open(env, key, &pt, &ptl)) != 0)
			return r;
		r = envelope_seal(d, cert, pt, ptl, bin, bin_len);
		envelope_free_plain(pt, ptl);
		return r;
	}
	/* Same AES key and IV, so the same ciphertext: only the wrap and
	 * the header change, and the MAC is recomputed over them with the
	 * unchanged MAC key. The old MAC was verified first, so a tampered
	 * envelope is never laundered into a valid one. */
	if ((r = unwrap_verify(env, key, &keys, &klen)) != 0)
		return r;
	{
		struct envelope_header h = env->h;
		uint8_t wrapped[MAX_WRAPPED];
		size_t wlen = sizeof(wrapped);
		h.version = (uint32_t)d->version;
		h.oaep = (uint8_t)oaep_id(d->oaep_md);
		if ((r = envelope_key_id(cert, h.key_id)) != 0)
			goto out;
		if (pub == NULL || EVP_PKEY_get_size(pub) > MAX_WRAPPED) {
			err_set("RSA key larger than %d bits", MAX_WRAPPED * 8);
			r = HSMFS_ERR_CONFIG;
			goto out;
		}
		if ((r = oaep_wrap(pub, d->oaep_md, keys,
		    (size_t)h.aes_len + ENVELOPE_MAC_KEY_LEN, wrapped, &wlen)) != 0)
			goto out;
		h.wrapped_len = (uint16_t)wlen;
		r = assemble(&h, keys + h.aes_len, wrapped, env->ct, env->ct_len,
		    bin, bin_len);
	}
out:
	secmem_free(keys, klen);
	return r;
}
