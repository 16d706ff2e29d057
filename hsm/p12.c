/* PKCS#12 backend: a private key and certificate from a .p12 file, held in
 * process memory. For migration and hosts without an HSM; same interface
 * as the PKCS#11 backend. */
#include "hsm/hsm_int.h"
#include "common/err.h"

#include <stdio.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/pkcs12.h>
#include <openssl/rsa.h>

static int
p12_sign_digest(hsm_key *k, const EVP_MD *md, const uint8_t *dgst, size_t dlen,
    uint8_t *sig, size_t *siglen)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(k->pkey, NULL);
	size_t n = (size_t)EVP_PKEY_get_size(k->pkey);
	int r = HSMFS_ERR_CRYPTO;

	if (ctx == NULL || EVP_PKEY_sign_init(ctx) <= 0 ||
	    EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0 ||
	    EVP_PKEY_CTX_set_signature_md(ctx, md) <= 0 ||
	    EVP_PKEY_sign(ctx, sig, &n, dgst, dlen) <= 0) {
		err_set_ossl("key %s: signing failed", k->name);
		goto out;
	}
	*siglen = n;
	r = 0;
out:
	EVP_PKEY_CTX_free(ctx);
	return r;
}

static int
p12_sign(hsm_key *k, const EVP_MD *md, const void *data, size_t len,
    uint8_t *sig, size_t *siglen)
{
	uint8_t dgst[EVP_MAX_MD_SIZE];
	unsigned dl;
	if (EVP_Digest(data, len, dgst, &dl, md, NULL) != 1) {
		err_set_ossl("key %s: digest failed", k->name);
		return HSMFS_ERR_CRYPTO;
	}
	return p12_sign_digest(k, md, dgst, dl, sig, siglen);
}

static int
p12_oaep_decrypt(hsm_key *k, const EVP_MD *md, const uint8_t *in, size_t inlen,
    uint8_t *out, size_t *outlen)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(k->pkey, NULL);
	size_t n = (size_t)EVP_PKEY_get_size(k->pkey);
	int r = HSMFS_ERR_CRYPTO;

	if (ctx == NULL || EVP_PKEY_decrypt_init(ctx) <= 0 ||
	    EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
	    EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) <= 0 ||
	    EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) <= 0) {
		err_set_ossl("key %s: OAEP setup failed", k->name);
		goto out;
	}
	if (EVP_PKEY_decrypt(ctx, out, &n, in, inlen) <= 0) {
		ERR_clear_error();
		err_set("key %s: OAEP decryption failed (wrong key or damaged data)",
		    k->name);
		r = HSMFS_ERR_BADMSG;
		goto out;
	}
	*outlen = n;
	r = 0;
out:
	EVP_PKEY_CTX_free(ctx);
	return r;
}

static const struct hsm_backend_ops p12_ops = {
	.sign = p12_sign,
	.sign_digest = p12_sign_digest,
	.oaep_decrypt = p12_oaep_decrypt,
};

/* Friendly name of a certificate, if any, compared with the alias. */
static int
alias_matches(X509 *cert, const char *alias)
{
	int len = 0;
	unsigned char *fn;
	if (alias == NULL || *alias == '\0')
		return 1;
	fn = X509_alias_get0(cert, &len);
	return fn != NULL && (size_t)len == strlen(alias) &&
	    memcmp(fn, alias, (size_t)len) == 0;
}

int
hsm_p12_open(const struct hsm_key_spec *spec, hsm_key **out)
{
	FILE *f = NULL;
	PKCS12 *p12 = NULL;
	EVP_PKEY *pkey = NULL;
	X509 *cert = NULL;
	STACK_OF(X509) *ca = NULL;
	hsm_key *k = NULL;
	int r = HSMFS_ERR_NOTFOUND;

	if ((f = fopen(spec->location, "rb")) == NULL) {
		err_set("key %s: cannot open PKCS#12 file %s: %m", spec->name,
		    spec->location);
		goto out;
	}
	if ((p12 = d2i_PKCS12_fp(f, NULL)) == NULL) {
		err_set_ossl("key %s: %s is not a PKCS#12 file", spec->name,
		    spec->location);
		r = HSMFS_ERR_CONFIG;
		goto out;
	}
	if (!PKCS12_verify_mac(p12, spec->pin ? spec->pin : "", -1)) {
		ERR_clear_error();
		err_set("key %s: PKCS#12 password incorrect for %s", spec->name,
		    spec->location);
		r = HSMFS_ERR_PIN_INCORRECT;
		goto out;
	}
	if (!PKCS12_parse(p12, spec->pin ? spec->pin : "", &pkey, &cert, &ca) ||
	    pkey == NULL) {
		err_set_ossl("key %s: no private key in %s", spec->name,
		    spec->location);
		r = HSMFS_ERR_NOTFOUND;
		goto out;
	}
	if (cert != NULL && !alias_matches(cert, spec->alias)) {
		err_set("key %s: alias \"%s\" not found in %s", spec->name,
		    spec->alias, spec->location);
		r = HSMFS_ERR_NOTFOUND;
		goto out;
	}
	if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA) {
		err_set("key %s: only RSA keys are supported", spec->name);
		r = HSMFS_ERR_CONFIG;
		goto out;
	}
	if (cert == NULL && spec->require_cert) {
		err_set("key %s: no certificate in %s", spec->name, spec->location);
		r = HSMFS_ERR_NOTFOUND;
		goto out;
	}
	if (cert != NULL && !hsm_cert_matches(cert, pkey)) {
		err_set("key %s: certificate in %s does not match its key",
		    spec->name, spec->location);
		r = HSMFS_ERR_CONFIG;
		goto out;
	}
	if ((k = hsm_key_alloc(&p12_ops, HSM_BACKEND_P12, spec->name,
	    spec->location)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	k->cert = cert;
	cert = NULL;
	k->pkey = pkey;
	EVP_PKEY_up_ref(pkey);
	k->pub = pkey;   /* one object serves both roles */
	EVP_PKEY_up_ref(pkey);
	k->bits = EVP_PKEY_get_bits(pkey);
	*out = k;
	k = NULL;
	r = 0;
out:
	if (f)
		fclose(f);
	PKCS12_free(p12);
	EVP_PKEY_free(pkey);
	X509_free(cert);
	sk_X509_pop_free(ca, X509_free);
	hsm_key_free(k);
	return r;
}
