/* The EVP bridge: an EVP_PKEY for a token key whose private operations
 * run in the HSM, so that OpenSSL's CMS, S/MIME and X509 code can sign and
 * decrypt with it; plus OpenSSL's OAEP decoding for the raw-RSA fallback.
 *
 * OpenSSL 3.0 way: a custom RSA_METHOD on an RSA holding only n and e.
 * The method is set BEFORE EVP_PKEY_assign_RSA, which makes the key
 * "foreign" so that OpenSSL keeps it on the legacy path that calls the
 * method; the other order exports it to the default provider, which
 * then fails with "missing private key". These are deprecated APIs
 * (compiled with OPENSSL_API_COMPAT=0x10100000L, see hsm/meson.build);
 * OpenSSL 4 removes RSA_METHOD and needs a provider (keymgmt + signature
 * + asym-cipher) instead. Never EVP_PKEY_dup such a key: up_ref it. */
#include "hsm/hsm_int.h"
#include "common/err.h"

#include <pthread.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/rsa.h>

static RSA_METHOD *bridge_meth;
static int bridge_idx = -1;
static pthread_once_t bridge_once = PTHREAD_ONCE_INIT;

static hsm_key *
bridge_key(RSA *rsa)
{
	return RSA_get_ex_data(rsa, bridge_idx);
}

/* A private-key operation on behalf of OpenSSL, counted in the key's
 * statistics like hsm_key_sign() and hsm_key_oaep_decrypt(). */
static int
bridge_raw(hsm_key *k, enum hsm_raw_op op, const unsigned char *in, size_t inlen,
    unsigned char *out, size_t *outlen)
{
	double t0 = hsm_now_ms();
	int r = hsm_p11_raw_priv(k, op, in, inlen, out, outlen);
	hsm_account(k, t0, r);
	return r;
}

/* Private "encrypt" = signature primitive. OpenSSL's RSA_sign hands us
 * the DigestInfo with PKCS#1 padding requested; PSS arrives unpadded. */
static int
bridge_priv_enc(int flen, const unsigned char *from, unsigned char *to,
    RSA *rsa, int padding)
{
	hsm_key *k = bridge_key(rsa);
	size_t outlen = 0;
	enum hsm_raw_op op;

	if (k == NULL)
		return -1;
	switch (padding) {
	case RSA_PKCS1_PADDING: op = HSM_RAW_SIGN_PKCS1; break;
	case RSA_NO_PADDING: op = HSM_RAW_SIGN_X509; break;
	default:
		RSAerr(0, RSA_R_UNKNOWN_PADDING_TYPE);
		return -1;
	}
	if (bridge_raw(k, op, from, (size_t)flen, to, &outlen) != 0) {
		RSAerr(0, ERR_R_INTERNAL_ERROR);
		return -1;
	}
	return (int)outlen;
}

/* Private decrypt. The legacy EVP path asks for RSA_NO_PADDING and does
 * OAEP itself; direct RSA_private_decrypt callers with OAEP get SHA-1
 * OAEP decoded here after a raw decryption (as OpenSSL's own method). */
static int
bridge_priv_dec(int flen, const unsigned char *from, unsigned char *to,
    RSA *rsa, int padding)
{
	hsm_key *k = bridge_key(rsa);
	int n = RSA_size(rsa), r = -1;
	size_t outlen = 0;
	unsigned char *buf = NULL;

	if (k == NULL)
		return -1;
	switch (padding) {
	case RSA_PKCS1_PADDING:
		if (bridge_raw(k, HSM_RAW_DECRYPT_PKCS1, from, (size_t)flen,
		    to, &outlen) == 0)
			r = (int)outlen;
		break;
	case RSA_NO_PADDING:
		if (bridge_raw(k, HSM_RAW_DECRYPT_X509, from, (size_t)flen,
		    to, &outlen) == 0)
			r = (int)outlen;
		break;
	case RSA_PKCS1_OAEP_PADDING:
		if ((buf = OPENSSL_malloc((size_t)n)) == NULL)
			break;
		if (bridge_raw(k, HSM_RAW_DECRYPT_X509, from, (size_t)flen,
		    buf, &outlen) == 0)
			r = RSA_padding_check_PKCS1_OAEP(to, n, buf, n, n, NULL, 0);
		OPENSSL_clear_free(buf, (size_t)n);
		break;
	default:
		RSAerr(0, RSA_R_UNKNOWN_PADDING_TYPE);
		return -1;
	}
	if (r < 0)
		RSAerr(0, RSA_R_PADDING_CHECK_FAILED);
	return r;
}

static void
bridge_init(void)
{
	bridge_idx = RSA_get_ex_new_index(0, "hsmfs hsm_key", NULL, NULL, NULL);
	bridge_meth = RSA_meth_dup(RSA_PKCS1_OpenSSL());
	if (bridge_meth == NULL)
		return;
	/* Never freed: keys built on it may live until exit. */
	RSA_meth_set1_name(bridge_meth, "hsmfs PKCS#11 bridge");
	RSA_meth_set_priv_enc(bridge_meth, bridge_priv_enc);
	RSA_meth_set_priv_dec(bridge_meth, bridge_priv_dec);
}

EVP_PKEY *
hsm_evp_bridge(hsm_key *k, EVP_PKEY *pub)
{
	const RSA *src;
	RSA *rsa = NULL;
	EVP_PKEY *pkey = NULL;
	BIGNUM *n = NULL, *e = NULL;

	pthread_once(&bridge_once, bridge_init);
	if (bridge_meth == NULL || bridge_idx < 0)
		return NULL;
	if ((src = EVP_PKEY_get0_RSA(pub)) == NULL)
		return NULL;
	if ((rsa = RSA_new()) == NULL ||
	    (n = BN_dup(RSA_get0_n(src))) == NULL ||
	    (e = BN_dup(RSA_get0_e(src))) == NULL ||
	    RSA_set0_key(rsa, n, e, NULL) != 1)
		goto fail;
	n = e = NULL;
	/* Order matters: method and ex_data first, then assign. */
	if (RSA_set_method(rsa, bridge_meth) != 1 ||
	    RSA_set_ex_data(rsa, bridge_idx, k) != 1 ||
	    (pkey = EVP_PKEY_new()) == NULL ||
	    EVP_PKEY_assign_RSA(pkey, rsa) != 1)
		goto fail;
	return pkey;
fail:
	BN_free(n);
	BN_free(e);
	EVP_PKEY_free(pkey);
	RSA_free(rsa);
	return NULL;
}

int
hsm_oaep_decode(hsm_key *k, const EVP_MD *md, const uint8_t *raw,
    size_t rawlen, uint8_t *out, size_t outcap, size_t *outlen)
{
	int r;

	if (rawlen == 0 || rawlen > (size_t)1 << 16 || outcap > (size_t)1 << 16)
		return HSMFS_ERR_INVALID;
	/* from = the full modulus-length block, leading zero byte included,
	 * exactly as OpenSSL's own rsa_ossl_private_decrypt calls it. */
	r = RSA_padding_check_PKCS1_OAEP_mgf1(out, (int)outcap, raw, (int)rawlen,
	    (int)rawlen, NULL, 0, md, md);
	if (r < 0) {
		ERR_clear_error();
		err_set("key %s: OAEP decryption failed (wrong key or damaged data)",
		    k->name);
		return HSMFS_ERR_BADMSG;
	}
	*outlen = (size_t)r;
	return 0;
}
