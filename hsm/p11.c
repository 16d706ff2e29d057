/* PKCS#11 backend: one private key (and its certificate) on a token.
 * Owns object lookup, the key's operations (sign, OAEP unwrap with the
 * raw-RSA fallback, raw private ops for the EVP bridge), certificate
 * storage and key generation. Modules, tokens, login, the session pool and
 * recovery are in hsm/p11_module.c. */
#include "hsm/p11_int.h"
#include "common/err.h"
#include "common/log.h"

#include <stdlib.h>
#include <string.h>
#include <openssl/core_names.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

/* ---- object lookup ---- */

static CK_RV
find_objects(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl,
    CK_ULONG n, CK_OBJECT_HANDLE *out, CK_ULONG max, CK_ULONG *count)
{
	CK_RV rv, rv2;
	*count = 0;
	if ((rv = P11_CALL(f->C_FindObjectsInit(s, tmpl, n))) != CKR_OK)
		return rv;
	rv = P11_CALL(f->C_FindObjects(s, out, max, count));
	rv2 = P11_CALL(f->C_FindObjectsFinal(s));
	return rv != CKR_OK ? rv : rv2;
}

/* First object of a class by label, else by CKA_ID; *n (optional) says
 * how many matched, up to 2, to catch ambiguous labels. */
static CK_RV
find_one_n(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
    const char *label, const CK_BYTE *id, CK_ULONG idlen, CK_OBJECT_HANDLE *h,
    CK_ULONG *n)
{
	CK_ATTRIBUTE t[2] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_LABEL, NULL, 0 },
	};
	CK_OBJECT_HANDLE found[2];
	CK_ULONG cnt = 0;
	CK_RV rv = CKR_OK;

	*h = CK_INVALID_HANDLE;
	if (label != NULL) {
		t[1].pValue = (void *)label;
		t[1].ulValueLen = strlen(label);
		if ((rv = find_objects(f, s, t, 2, found, 2, &cnt)) != CKR_OK)
			return rv;
	}
	if (cnt == 0 && id != NULL && idlen > 0) {
		t[1].type = CKA_ID;
		t[1].pValue = (void *)id;
		t[1].ulValueLen = idlen;
		if ((rv = find_objects(f, s, t, 2, found, 2, &cnt)) != CKR_OK)
			return rv;
	}
	if (cnt > 0)
		*h = found[0];
	if (n != NULL)
		*n = cnt;
	return rv;
}

static CK_RV
find_one(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
    const char *label, const CK_BYTE *id, CK_ULONG idlen, CK_OBJECT_HANDLE *h)
{
	return find_one_n(f, s, cls, label, id, idlen, h, NULL);
}

/* Attribute value in a fresh buffer (freed by the caller). */
static CK_RV
get_attr(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
    CK_ATTRIBUTE_TYPE type, CK_BYTE **out, CK_ULONG *len)
{
	CK_ATTRIBUTE a = { type, NULL, 0 };
	CK_RV rv;

	*out = NULL;
	if ((rv = P11_CALL(f->C_GetAttributeValue(s, o, &a, 1))) != CKR_OK)
		return rv;
	if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION)
		return CKR_ATTRIBUTE_TYPE_INVALID;
	if ((a.pValue = malloc(a.ulValueLen + 1)) == NULL)
		return CKR_HOST_MEMORY;
	if ((rv = P11_CALL(f->C_GetAttributeValue(s, o, &a, 1))) != CKR_OK) {
		free(a.pValue);
		return rv;
	}
	*out = a.pValue;
	*len = a.ulValueLen;
	return CKR_OK;
}

int
p11_key_lookup_locked(struct p11_key *pk, CK_SESSION_HANDLE s)
{
	CK_FUNCTION_LIST_PTR f = pk->tok->mod->f;
	const char *name = pk->k->name;
	CK_BYTE *id = NULL;
	CK_ULONG idlen = 0, n = 0;
	CK_RV rv;

	/* Label first; an alias that is really a CKA_ID (as bytes) second. */
	rv = find_one_n(f, s, CKO_PRIVATE_KEY, pk->alias, (const CK_BYTE *)pk->alias,
	    strlen(pk->alias), &pk->priv, &n);
	if (rv != CKR_OK)
		return p11_fail(name, "C_FindObjects", rv);
	if (n > 1) {
		pk->priv = CK_INVALID_HANDLE;
		err_set("key %s: several private keys labelled \"%s\" on token "
		    "\"%s\"; give each key its own label", name, pk->alias,
		    pk->tok->label);
		return HSMFS_ERR_CONFIG;
	}
	if (pk->priv == CK_INVALID_HANDLE) {
		err_set("key %s: no private key with label (or ID) \"%s\" on token "
		    "\"%s\" (module %s)", name, pk->alias, pk->tok->label,
		    pk->tok->mod->path);
		return HSMFS_ERR_NOTFOUND;
	}
	pk->id_len = 0;
	if (get_attr(f, s, pk->priv, CKA_ID, &id, &idlen) == CKR_OK &&
	    idlen <= sizeof(pk->id)) {
		memcpy(pk->id, id, idlen);
		pk->id_len = idlen;
	}
	free(id);
	rv = find_one(f, s, CKO_CERTIFICATE, pk->alias, pk->id, pk->id_len,
	    &pk->cert);
	if (rv != CKR_OK)
		return p11_fail(name, "C_FindObjects", rv);
	return 0;
}

/* RSA public key from modulus and exponent bytes. */
static EVP_PKEY *
pub_from_ne(const CK_BYTE *n, CK_ULONG nlen, const CK_BYTE *e, CK_ULONG elen)
{
	OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
	OSSL_PARAM *params = NULL;
	EVP_PKEY_CTX *ctx = NULL;
	EVP_PKEY *pkey = NULL;
	BIGNUM *bn = BN_bin2bn(n, (int)nlen, NULL), *be = BN_bin2bn(e, (int)elen, NULL);

	if (bld == NULL || bn == NULL || be == NULL ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) ||
	    (params = OSSL_PARAM_BLD_to_param(bld)) == NULL ||
	    (ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL)) == NULL ||
	    EVP_PKEY_fromdata_init(ctx) <= 0 ||
	    EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
		pkey = NULL;
	EVP_PKEY_CTX_free(ctx);
	OSSL_PARAM_free(params);
	OSSL_PARAM_BLD_free(bld);
	BN_free(bn);
	BN_free(be);
	return pkey;
}

/* Public key from an object's CKA_MODULUS/CKA_PUBLIC_EXPONENT, NULL when
 * the object does not expose them. */
static EVP_PKEY *
pub_from_object(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o)
{
	CK_BYTE *n = NULL, *e = NULL;
	CK_ULONG nlen = 0, elen = 0;
	EVP_PKEY *pkey = NULL;

	if (o != CK_INVALID_HANDLE &&
	    get_attr(f, s, o, CKA_MODULUS, &n, &nlen) == CKR_OK &&
	    get_attr(f, s, o, CKA_PUBLIC_EXPONENT, &e, &elen) == CKR_OK)
		pkey = pub_from_ne(n, nlen, e, elen);
	free(n);
	free(e);
	return pkey;
}

/* ---- operations: one session from the pool per call, retried once ---- */

struct p11_op {
	CK_MECHANISM mech;
	int decrypt;
	const uint8_t *in;
	size_t inlen;
	uint8_t *out;
	CK_ULONG outlen;           /* in: capacity, out: length */
	const char *fn;            /* failing function, for messages */
	char why[512];             /* why recovery failed, if it did */
};

/* err_set for a failed operation, with the recovery failure if any. */
static int
op_fail(hsm_key *k, const struct p11_op *op, CK_RV rv)
{
	int r = p11_fail(k->name, op->fn, rv);
	if (op->why[0])
		err_set("key %s: %s failed: %s (0x%lx); recovery failed: %s",
		    k->name, op->fn, p11_ckr_name(rv), (unsigned long)rv, op->why);
	return r;
}

static CK_RV
op_once(struct p11_key *pk, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key,
    struct p11_op *op)
{
	CK_FUNCTION_LIST_PTR f = pk->tok->mod->f;
	CK_ULONG cap = op->outlen;
	CK_RV rv;

	if (op->decrypt) {
		op->fn = "C_DecryptInit";
		if ((rv = P11_CALL(f->C_DecryptInit(s, &op->mech, key))) != CKR_OK)
			return rv;
		op->fn = "C_Decrypt";
		rv = P11_CALL(f->C_Decrypt(s, (CK_BYTE_PTR)op->in,
		    (CK_ULONG)op->inlen, op->out, &cap));
	} else {
		op->fn = "C_SignInit";
		if ((rv = P11_CALL(f->C_SignInit(s, &op->mech, key))) != CKR_OK)
			return rv;
		op->fn = "C_Sign";
		rv = P11_CALL(f->C_Sign(s, (CK_BYTE_PTR)op->in, (CK_ULONG)op->inlen,
		    op->out, &cap));
	}
	if (rv == CKR_OK)
		op->outlen = cap;
	return rv;
}

/* Run op with the recovery rules: a dead session is reopened and the
 * operation retried once; a device/login failure recovers the token
 * (one thread does, the others wait) and retries once. */
static CK_RV
p11_run(struct p11_key *pk, struct p11_op *op)
{
	struct p11_sess s;
	CK_ULONG cap = op->outlen;
	int reopened = 0, recovered = 0;
	CK_RV rv;

	for (;;) {
		op->outlen = cap;
		rv = (CK_RV)p11_checkout(pk, &s);
		if (rv == CKR_OK && s.priv == CK_INVALID_HANDLE) {
			/* A recovery did not find this key again: fail it
			 * alone, without disturbing the token's other keys. */
			p11_checkin(pk, &s, 0);
			op->fn = "C_FindObjects (key not found after recovery)";
			return CKR_KEY_HANDLE_INVALID;
		}
		if (rv == CKR_OK) {
			rv = op_once(pk, s.h, s.priv, op);
			/* Any failure may leave an operation half-active on the
			 * session: never hand it out again. */
			p11_checkin(pk, &s, rv != CKR_OK);
		} else {
			op->fn = "C_OpenSession";
		}
		if (p11_rv_is_session(rv) && !reopened) {
			reopened = 1;
			continue;
		}
		if ((p11_rv_is_device(rv) || p11_rv_is_session(rv)) && !recovered) {
			recovered = 1;
			if (p11_recover(pk, s.generation) == 0)
				continue;
			{
				/* Drop the repeated "key NAME: " prefix. */
				const char *d = err_detail();
				size_t nl = strlen(pk->k->name);
				if (strncmp(d, "key ", 4) == 0 &&
				    strncmp(d + 4, pk->k->name, nl) == 0 &&
				    strncmp(d + 4 + nl, ": ", 2) == 0)
					d += 6 + nl;
				snprintf(op->why, sizeof(op->why), "%s", d);
			}
		}
		return rv;
	}
}

static int
md_sign_mech(const EVP_MD *md, CK_MECHANISM_TYPE *m, CK_MECHANISM_TYPE *h,
    CK_RSA_PKCS_MGF_TYPE *mgf)
{
	switch (EVP_MD_get_type(md)) {
	case NID_sha1:
		*m = CKM_SHA1_RSA_PKCS; *h = CKM_SHA_1; *mgf = CKG_MGF1_SHA1;
		return 0;
	case NID_sha256:
		*m = CKM_SHA256_RSA_PKCS; *h = CKM_SHA256; *mgf = CKG_MGF1_SHA256;
		return 0;
	case NID_sha384:
		*m = CKM_SHA384_RSA_PKCS; *h = CKM_SHA384; *mgf = CKG_MGF1_SHA384;
		return 0;
	case NID_sha512:
		*m = CKM_SHA512_RSA_PKCS; *h = CKM_SHA512; *mgf = CKG_MGF1_SHA512;
		return 0;
	}
	return -1;
}

static int
p11_sign(hsm_key *k, const EVP_MD *md, const void *data, size_t len,
    uint8_t *sig, size_t *siglen)
{
	struct p11_key *pk = k->priv;
	struct p11_op op = { .in = data, .inlen = len, .out = sig,
	    .outlen = (CK_ULONG)(k->bits + 7) / 8 };
	CK_MECHANISM_TYPE h;
	CK_RSA_PKCS_MGF_TYPE mgf;
	CK_RV rv;

	if (md_sign_mech(md, &op.mech.mechanism, &h, &mgf) != 0) {
		err_set("key %s: digest %s not supported", k->name,
		    EVP_MD_get0_name(md));
		return HSMFS_ERR_INVALID;
	}
	if ((rv = p11_run(pk, &op)) != CKR_OK)
		return op_fail(k, &op, rv);
	*siglen = op.outlen;
	return 0;
}

/* DER DigestInfo prefixes (RFC 8017 section 9.2, note 1). */
static const uint8_t di_sha1[] = { 0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b,
	0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14 };
static const uint8_t di_sha256[] = { 0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60,
	0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20 };
static const uint8_t di_sha384[] = { 0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60,
	0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30 };
static const uint8_t di_sha512[] = { 0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60,
	0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40 };

static int
p11_sign_digest(hsm_key *k, const EVP_MD *md, const uint8_t *dgst, size_t dlen,
    uint8_t *sig, size_t *siglen)
{
	struct p11_key *pk = k->priv;
	uint8_t di[sizeof(di_sha512) + EVP_MAX_MD_SIZE];
	const uint8_t *pre;
	size_t plen;
	struct p11_op op = { .mech = { CKM_RSA_PKCS, NULL, 0 }, .in = di,
	    .out = sig, .outlen = (CK_ULONG)(k->bits + 7) / 8 };
	CK_RV rv;

	switch (EVP_MD_get_type(md)) {
	case NID_sha1: pre = di_sha1; plen = sizeof(di_sha1); break;
	case NID_sha256: pre = di_sha256; plen = sizeof(di_sha256); break;
	case NID_sha384: pre = di_sha384; plen = sizeof(di_sha384); break;
	case NID_sha512: pre = di_sha512; plen = sizeof(di_sha512); break;
	default:
		err_set("key %s: digest %s not supported", k->name,
		    EVP_MD_get0_name(md));
		return HSMFS_ERR_INVALID;
	}
	if (dlen != pre[plen - 1]) {
		err_set("key %s: digest length %zu does not match %s", k->name,
		    dlen, EVP_MD_get0_name(md));
		return HSMFS_ERR_INVALID;
	}
	memcpy(di, pre, plen);
	memcpy(di + plen, dgst, dlen);
	op.inlen = plen + dlen;
	if ((rv = p11_run(pk, &op)) != CKR_OK)
		return op_fail(k, &op, rv);
	*siglen = op.outlen;
	return 0;
}

int
hsm_p11_raw_priv(hsm_key *k, enum hsm_raw_op kind, const uint8_t *in,
    size_t inlen, uint8_t *out, size_t *outlen)
{
	struct p11_key *pk = k->priv;
	size_t n = (size_t)(k->bits + 7) / 8;
	struct p11_op op = { .in = in, .inlen = inlen, .out = out,
	    .outlen = (CK_ULONG)n };
	CK_RV rv;

	if (k->backend != HSM_BACKEND_PKCS11 || pk == NULL) {
		err_set("key %s: not a PKCS#11 key", k->name);
		return HSMFS_ERR_INVALID;
	}
	switch (kind) {
	case HSM_RAW_SIGN_PKCS1: op.mech.mechanism = CKM_RSA_PKCS; break;
	case HSM_RAW_SIGN_X509: op.mech.mechanism = CKM_RSA_X_509; break;
	case HSM_RAW_DECRYPT_PKCS1: op.mech.mechanism = CKM_RSA_PKCS; op.decrypt = 1; break;
	case HSM_RAW_DECRYPT_X509: op.mech.mechanism = CKM_RSA_X_509; op.decrypt = 1; break;
	}
	if ((kind == HSM_RAW_SIGN_X509 || kind == HSM_RAW_DECRYPT_X509) &&
	    pk->no_raw_rsa) {
		err_set("key %s: raw RSA is disabled for this key", k->name);
		return HSMFS_ERR_UNSUPPORTED;
	}
	if ((rv = p11_run(pk, &op)) != CKR_OK) {
		int r = op_fail(k, &op, rv);
		if (op.decrypt && (rv == CKR_ENCRYPTED_DATA_INVALID ||
		    rv == CKR_ENCRYPTED_DATA_LEN_RANGE || rv == CKR_DATA_INVALID ||
		    rv == CKR_DATA_LEN_RANGE))
			r = HSMFS_ERR_BADMSG;
		return r;
	}
	/* Tokens may strip leading zero bytes of raw results: the
	 * callers expect exactly the modulus length. */
	if (kind != HSM_RAW_DECRYPT_PKCS1 && op.outlen < n) {
		memmove(out + (n - op.outlen), out, op.outlen);
		memset(out, 0, n - op.outlen);
		op.outlen = (CK_ULONG)n;
	}
	*outlen = op.outlen;
	return 0;
}

static int
is_data_error(CK_RV rv)
{
	return rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_ENCRYPTED_DATA_LEN_RANGE ||
	    rv == CKR_DATA_INVALID || rv == CKR_DATA_LEN_RANGE;
}

/* Some tokens answer a ciphertext whose OAEP padding is wrong with a
 * generic failure instead of CKR_ENCRYPTED_DATA_INVALID: tpm2-pkcs11 gives
 * CKR_GENERAL_ERROR (the TPM's "TPM_RC_FAILURE"). Tell a bad ciphertext
 * from a failing token by decrypting a fresh one of our own with the same
 * mechanism: if that works, the token is fine and the input was bad. Only
 * on that failure path; the answer carries no more than "it failed". */
static int
oaep_token_healthy(hsm_key *k, const struct p11_op *failed)
{
	struct p11_key *pk = k->priv;
	const CK_RSA_PKCS_OAEP_PARAMS *prm = failed->mech.pParameter;
	size_t n = (size_t)(k->bits + 7) / 8, ctlen = n;
	uint8_t secret[32], ct[1024], pt[1024];
	struct p11_op op = { .decrypt = 1, .mech = failed->mech, .in = ct,
	    .out = pt, .outlen = sizeof(pt) };
	EVP_PKEY_CTX *ctx = NULL;
	const EVP_MD *md;
	int ok = 0;

	switch (prm->hashAlg) {
	case CKM_SHA_1: md = EVP_sha1(); break;
	case CKM_SHA256: md = EVP_sha256(); break;
	case CKM_SHA384: md = EVP_sha384(); break;
	case CKM_SHA512: md = EVP_sha512(); break;
	default: return 0;
	}
	if (n > sizeof(ct) || RAND_bytes(secret, sizeof(secret)) != 1 ||
	    (ctx = EVP_PKEY_CTX_new(k->pub, NULL)) == NULL ||
	    EVP_PKEY_encrypt_init(ctx) <= 0 ||
	    EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
	    EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) <= 0 ||
	    EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) <= 0 ||
	    EVP_PKEY_encrypt(ctx, ct, &ctlen, secret, sizeof(secret)) <= 0) {
		ERR_clear_error();
		goto out;
	}
	op.inlen = ctlen;
	ok = p11_run(pk, &op) == CKR_OK && op.outlen == sizeof(secret) &&
	    CRYPTO_memcmp(pt, secret, sizeof(secret)) == 0;
out:
	OPENSSL_cleanse(pt, sizeof(pt));
	OPENSSL_cleanse(secret, sizeof(secret));
	EVP_PKEY_CTX_free(ctx);
	return ok;
}

static int
p11_oaep_decrypt(hsm_key *k, const EVP_MD *md, const uint8_t *in, size_t inlen,
    uint8_t *out, size_t *outlen)
{
	struct p11_key *pk = k->priv;
	size_t n = (size_t)(k->bits + 7) / 8, rawlen = 0;
	CK_RSA_PKCS_OAEP_PARAMS prm = { .source = CKZ_DATA_SPECIFIED };
	struct p11_op op = { .decrypt = 1, .in = in, .inlen = inlen, .out = out,
	    .outlen = (CK_ULONG)n };
	CK_MECHANISM_TYPE sigm;
	uint8_t *raw = NULL;
	CK_RV rv;
	int r;

	if (md_sign_mech(md, &sigm, &prm.hashAlg, &prm.mgf) != 0) {
		err_set("key %s: OAEP digest %s not supported", k->name,
		    EVP_MD_get0_name(md));
		return HSMFS_ERR_INVALID;
	}
	if (inlen != n) {
		err_set("key %s: OAEP ciphertext is %zu bytes, the key needs %zu",
		    k->name, inlen, n);
		return HSMFS_ERR_BADMSG;
	}
	if (!__atomic_load_n(&pk->oaep_native_broken, __ATOMIC_RELAXED)) {
		op.mech.mechanism = CKM_RSA_PKCS_OAEP;
		op.mech.pParameter = &prm;
		op.mech.ulParameterLen = sizeof(prm);
		rv = p11_run(pk, &op);
		if (rv == CKR_OK) {
			*outlen = op.outlen;
			return 0;
		}
		if (is_data_error(rv) || ((rv == CKR_GENERAL_ERROR ||
		    rv == CKR_FUNCTION_FAILED) && oaep_token_healthy(k, &op))) {
			err_set("key %s: OAEP decryption failed (wrong key or damaged "
			    "data)", k->name);
			return HSMFS_ERR_BADMSG;
		}
		if (rv != CKR_MECHANISM_INVALID && rv != CKR_MECHANISM_PARAM_INVALID &&
		    rv != CKR_ARGUMENTS_BAD)
			return op_fail(k, &op, rv);
		if (pk->no_raw_rsa) {
			err_set("key %s: token \"%s\" refuses OAEP with %s (%s: %s) "
			    "and the raw RSA fallback is disabled", k->name,
			    pk->tok->label, EVP_MD_get0_name(md), op.fn,
			    p11_ckr_name(rv));
			return HSMFS_ERR_UNSUPPORTED;
		}
		if (!__atomic_exchange_n(&pk->oaep_native_broken, 1, __ATOMIC_RELAXED))
			log_warn("key %s: token \"%s\" refuses native OAEP with %s "
			    "(%s: %s); using CKM_RSA_X_509 and OpenSSL's OAEP "
			    "decoding for this key", k->name, pk->tok->label,
			    EVP_MD_get0_name(md), op.fn, p11_ckr_name(rv));
	}
	if (pk->no_raw_rsa) {
		err_set("key %s: the raw RSA fallback is disabled", k->name);
		return HSMFS_ERR_UNSUPPORTED;
	}
	if ((raw = OPENSSL_malloc(n)) == NULL)
		return HSMFS_ERR_NOMEM;
	if ((r = hsm_p11_raw_priv(k, HSM_RAW_DECRYPT_X509, in, inlen, raw,
	    &rawlen)) != 0)
		goto out;
	r = hsm_oaep_decode(k, md, raw, rawlen, out, n, outlen);
out:
	OPENSSL_clear_free(raw, n);
	return r;
}

/* ---- certificate storage ---- */

static CK_RV
store_cert_locked(struct p11_key *pk, CK_SESSION_HANDLE s, X509 *cert,
    CK_OBJECT_HANDLE *newh)
{
	CK_FUNCTION_LIST_PTR f = pk->tok->mod->f;
	CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
	CK_CERTIFICATE_TYPE ct = CKC_X_509;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	unsigned char *der = NULL, *subj = NULL, *iss = NULL, *ser = NULL;
	int derlen, sublen, isslen, serlen;
	CK_ATTRIBUTE find[2] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_LABEL, pk->alias, strlen(pk->alias) },
	};
	CK_OBJECT_HANDLE old[16];
	CK_ULONG nold = 0;
	CK_RV rv;

	derlen = i2d_X509(cert, &der);
	sublen = i2d_X509_NAME(X509_get_subject_name(cert), &subj);
	isslen = i2d_X509_NAME(X509_get_issuer_name(cert), &iss);
	serlen = i2d_ASN1_INTEGER(X509_get_serialNumber(cert), &ser);
	if (derlen <= 0 || sublen <= 0 || isslen <= 0 || serlen <= 0) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	{
		CK_ATTRIBUTE t[] = {
			{ CKA_CLASS, &cls, sizeof(cls) },
			{ CKA_CERTIFICATE_TYPE, &ct, sizeof(ct) },
			{ CKA_TOKEN, &yes, sizeof(yes) },
			{ CKA_PRIVATE, &no, sizeof(no) },
			{ CKA_LABEL, pk->alias, strlen(pk->alias) },
			{ CKA_ID, pk->id, pk->id_len },
			{ CKA_SUBJECT, subj, (CK_ULONG)sublen },
			{ CKA_ISSUER, iss, (CK_ULONG)isslen },
			{ CKA_SERIAL_NUMBER, ser, (CK_ULONG)serlen },
			{ CKA_VALUE, der, (CK_ULONG)derlen },
		};
		/* Create first, then destroy the old ones: a failure never
		 * leaves the key without any certificate. */
		if ((rv = find_objects(f, s, find, 2, old, 16, &nold)) != CKR_OK)
			goto out;
		if ((rv = P11_CALL(f->C_CreateObject(s, t, sizeof(t) / sizeof(t[0]),
		    newh))) != CKR_OK)
			goto out;
		for (CK_ULONG i = 0; i < nold; i++)
			P11_CALL(f->C_DestroyObject(s, old[i]));
	}
out:
	OPENSSL_free(der);
	OPENSSL_free(subj);
	OPENSSL_free(iss);
	OPENSSL_free(ser);
	return rv;
}

static int
p11_store_cert(hsm_key *k, X509 *cert)
{
	struct p11_key *pk = k->priv;
	struct p11_token *t = pk->tok;
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
	CK_RV rv;

	/* Rare administrative write: done on the anchor session under the
	 * token lock, like the lookups. */
	pthread_mutex_lock(&t->lock);
	rv = t->dead ? CKR_TOKEN_NOT_PRESENT : store_cert_locked(pk, t->anchor, cert, &h);
	if (rv == CKR_OK)
		pk->cert = h;
	pthread_mutex_unlock(&t->lock);
	if (rv != CKR_OK)
		return p11_fail(k->name, "C_CreateObject", rv);
	return 0;
}

static void
p11_pool(hsm_key *k, unsigned *in_use, unsigned *size)
{
	struct p11_key *pk = k->priv;
	p11_pool_stats(pk->tok, in_use, size);
}

static void
p11_health(hsm_key *k, struct key_stats *st)
{
	struct p11_key *pk = k->priv;
	p11_token_health(pk->tok, &st->available, &st->logins, &st->reinits);
}

static void
p11_token_state_of(hsm_key *k, int ask, int *present, int *logged_in)
{
	struct p11_key *pk = k->priv;
	p11_token_state(pk->tok, ask, present, logged_in);
}

static void
p11_free(hsm_key *k)
{
	struct p11_key *pk = k->priv;
	if (pk == NULL)
		return;
	if (pk->tok) {
		p11_token_del_key(pk->tok, pk);
		p11_token_put(pk->tok);
	}
	free(pk->alias);
	free(pk);
	k->priv = NULL;
}

static const struct hsm_backend_ops p11_ops = {
	.sign = p11_sign,
	.sign_digest = p11_sign_digest,
	.oaep_decrypt = p11_oaep_decrypt,
	.store_cert = p11_store_cert,
	.pool = p11_pool,
	.health = p11_health,
	.token_state = p11_token_state_of,
	.free = p11_free,
};

/* ---- open / keygen ---- */

/* Module, token (with login) and an hsm_key shell with its p11_key. */
static int
p11_key_new(const struct hsm_key_spec *spec, hsm_key **out)
{
	struct p11_module *mod;
	struct p11_token *t = NULL;
	struct p11_key *pk = NULL;
	hsm_key *k = NULL;
	int r;

	if (spec->alias == NULL || *spec->alias == '\0') {
		err_set("key %s: no alias (CKA_LABEL) configured", spec->name);
		return HSMFS_ERR_CONFIG;
	}
	if ((r = p11_module_get(spec->name, spec->location, &mod)) != 0)
		return r;
	if ((r = p11_token_get(spec, mod, &t)) != 0)
		return r;
	if ((k = hsm_key_alloc(&p11_ops, HSM_BACKEND_PKCS11, spec->name,
	    t->label)) == NULL || (pk = calloc(1, sizeof(*pk))) == NULL ||
	    (pk->alias = strdup(spec->alias)) == NULL) {
		free(pk);
		hsm_key_free(k);
		p11_token_put(t);
		return HSMFS_ERR_NOMEM;
	}
	pk->k = k;
	pk->tok = t;
	pk->no_raw_rsa = spec->no_raw_rsa;
	pk->priv = pk->cert = CK_INVALID_HANDLE;
	k->priv = pk;
	*out = k;
	return 0;
}

/* Sign a random value and verify it with the certificate: catches a
 * certificate that belongs to another key when the token does not show
 * the private key's modulus. */
static int
test_signature(hsm_key *k)
{
	uint8_t msg[32], sig[1024];
	size_t siglen = 0;
	EVP_MD_CTX *ctx = NULL;
	int r;

	if (RAND_bytes(msg, sizeof(msg)) != 1)
		return HSMFS_ERR_CRYPTO;
	if ((size_t)(k->bits + 7) / 8 > sizeof(sig))
		return HSMFS_ERR_INVALID;
	if ((r = p11_sign(k, EVP_sha256(), msg, sizeof(msg), sig, &siglen)) != 0)
		return r;
	r = HSMFS_ERR_CONFIG;
	if ((ctx = EVP_MD_CTX_new()) != NULL &&
	    EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, k->pub) == 1 &&
	    EVP_DigestVerify(ctx, sig, siglen, msg, sizeof(msg)) == 1)
		r = 0;
	else {
		ERR_clear_error();
		err_set("key %s: the certificate labelled \"%s\" does not match "
		    "the private key (test signature does not verify)", k->name,
		    ((struct p11_key *)k->priv)->alias);
	}
	EVP_MD_CTX_free(ctx);
	return r;
}

/* Load certificate and public key for an opened key (token lock held). */
static int
load_pub_locked(hsm_key *k, const struct hsm_key_spec *spec, int *need_test)
{
	struct p11_key *pk = k->priv;
	CK_FUNCTION_LIST_PTR f = pk->tok->mod->f;
	CK_SESSION_HANDLE s = pk->tok->anchor;
	CK_OBJECT_HANDLE pubh = CK_INVALID_HANDLE;
	CK_BYTE *der = NULL;
	CK_ULONG derlen = 0;
	const unsigned char *p;
	EVP_PKEY *kpub = NULL;
	CK_KEY_TYPE kt = 0;
	CK_ATTRIBUTE a = { CKA_KEY_TYPE, &kt, sizeof(kt) };
	CK_RV rv;
	int r = HSMFS_ERR_NOTFOUND;

	if (P11_CALL(f->C_GetAttributeValue(s, pk->priv, &a, 1)) == CKR_OK &&
	    kt != CKK_RSA) {
		err_set("key %s: \"%s\" is not an RSA key (only RSA is supported)",
		    k->name, pk->alias);
		return HSMFS_ERR_CONFIG;
	}
	/* The modulus: from the private key object (most tokens show it),
	 * else from the public key object. */
	if ((kpub = pub_from_object(f, s, pk->priv)) == NULL) {
		if (find_one(f, s, CKO_PUBLIC_KEY, pk->alias, pk->id, pk->id_len,
		    &pubh) == CKR_OK)
			kpub = pub_from_object(f, s, pubh);
	}
	if (pk->cert != CK_INVALID_HANDLE) {
		if ((rv = get_attr(f, s, pk->cert, CKA_VALUE, &der, &derlen)) != CKR_OK) {
			r = p11_fail(k->name, "C_GetAttributeValue(certificate)", rv);
			goto out;
		}
		p = der;
		if ((k->cert = d2i_X509(NULL, &p, (long)derlen)) == NULL) {
			err_set_ossl("key %s: certificate \"%s\" on token \"%s\" is "
			    "not valid DER", k->name, pk->alias, pk->tok->label);
			r = HSMFS_ERR_CONFIG;
			goto out;
		}
		if ((k->pub = X509_get_pubkey(k->cert)) == NULL ||
		    EVP_PKEY_get_base_id(k->pub) != EVP_PKEY_RSA) {
			ERR_clear_error();
			err_set("key %s: certificate \"%s\" does not hold an RSA key",
			    k->name, pk->alias);
			r = HSMFS_ERR_CONFIG;
			goto out;
		}
		if (kpub != NULL && !hsm_cert_matches(k->cert, kpub)) {
			err_set("key %s: the certificate labelled \"%s\" on token "
			    "\"%s\" does not match the private key", k->name,
			    pk->alias, pk->tok->label);
			r = HSMFS_ERR_CONFIG;
			goto out;
		}
		*need_test = kpub == NULL;
	} else if (spec->require_cert) {
		err_set("key %s: no certificate with label \"%s\" (or the key's "
		    "CKA_ID) on token \"%s\"; store one with hsmfs-tool import-cert",
		    k->name, pk->alias, pk->tok->label);
		goto out;
	} else if (kpub != NULL) {
		k->pub = kpub;
		kpub = NULL;
	} else {
		err_set("key %s: neither a certificate nor a public key for \"%s\" "
		    "on token \"%s\"", k->name, pk->alias, pk->tok->label);
		goto out;
	}
	k->bits = EVP_PKEY_get_bits(k->pub);
	r = 0;
out:
	free(der);
	EVP_PKEY_free(kpub);
	return r;
}

static int
p11_finish_open(hsm_key *k, const struct hsm_key_spec *spec)
{
	struct p11_key *pk = k->priv;
	struct p11_token *t = pk->tok;
	int r, need_test = 0;

	pthread_mutex_lock(&t->lock);
	r = p11_key_lookup_locked(pk, t->anchor);
	if (r == 0)
		r = load_pub_locked(k, spec, &need_test);
	pthread_mutex_unlock(&t->lock);
	if (r != 0)
		return r;
	p11_token_add_key(t, pk);
	if (need_test && (r = test_signature(k)) != 0)
		return r;
	if ((k->pkey = hsm_evp_bridge(k, k->pub)) == NULL) {
		err_set_ossl("key %s: cannot build the OpenSSL key object", k->name);
		return HSMFS_ERR_CRYPTO;
	}
	return 0;
}

int
hsm_p11_open(const struct hsm_key_spec *spec, hsm_key **out)
{
	hsm_key *k = NULL;
	int r;

	if ((r = p11_key_new(spec, &k)) != 0)
		return r;
	if ((r = p11_finish_open(k, spec)) != 0) {
		hsm_key_free(k);
		return r;
	}
	*out = k;
	return 0;
}

int
hsm_p11_keygen(const struct hsm_key_spec *spec, int bits, hsm_key **out)
{
	struct hsm_key_spec s2 = *spec;
	struct p11_key *pk;
	struct p11_token *t;
	CK_FUNCTION_LIST_PTR f;
	CK_MECHANISM mech = { CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0 };
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ULONG mbits = (CK_ULONG)bits;
	CK_BYTE e[] = { 0x01, 0x00, 0x01 }, id[16];
	CK_OBJECT_HANDLE pubh, privh, h;
	hsm_key *k = NULL;
	CK_RV rv;
	int r;

	if (bits != 2048 && bits != 3072 && bits != 4096) {
		err_set("key %s: RSA key size %d not supported (2048, 3072, 4096)",
		    spec->name, bits);
		return HSMFS_ERR_INVALID;
	}
	if (RAND_bytes(id, sizeof(id)) != 1)
		return HSMFS_ERR_CRYPTO;
	if ((r = p11_key_new(spec, &k)) != 0)
		return r;
	pk = k->priv;
	t = pk->tok;
	f = t->mod->f;
	{
		size_t ll = strlen(pk->alias);
		CK_ATTRIBUTE pubt[] = {
			{ CKA_TOKEN, &yes, sizeof(yes) },
			{ CKA_PRIVATE, &no, sizeof(no) },
			{ CKA_LABEL, pk->alias, ll },
			{ CKA_ID, id, sizeof(id) },
			{ CKA_MODULUS_BITS, &mbits, sizeof(mbits) },
			{ CKA_PUBLIC_EXPONENT, e, sizeof(e) },
			{ CKA_VERIFY, &yes, sizeof(yes) },
			{ CKA_ENCRYPT, &yes, sizeof(yes) },
			{ CKA_WRAP, &yes, sizeof(yes) },
		};
		CK_ATTRIBUTE privt[] = {
			{ CKA_TOKEN, &yes, sizeof(yes) },
			{ CKA_PRIVATE, &yes, sizeof(yes) },
			{ CKA_SENSITIVE, &yes, sizeof(yes) },
			{ CKA_EXTRACTABLE, &no, sizeof(no) },
			{ CKA_LABEL, pk->alias, ll },
			{ CKA_ID, id, sizeof(id) },
			{ CKA_SIGN, &yes, sizeof(yes) },
			{ CKA_DECRYPT, &yes, sizeof(yes) },
			{ CKA_UNWRAP, &yes, sizeof(yes) },
		};
		pthread_mutex_lock(&t->lock);
		/* Refuse to shadow an existing key: lookups go by label. */
		rv = find_one(f, t->anchor, CKO_PRIVATE_KEY, pk->alias, NULL, 0, &h);
		if (rv == CKR_OK && h != CK_INVALID_HANDLE) {
			pthread_mutex_unlock(&t->lock);
			err_set("key %s: a private key labelled \"%s\" already exists "
			    "on token \"%s\"; refusing to generate another", k->name,
			    pk->alias, t->label);
			r = HSMFS_ERR_INVALID;
			goto out;
		}
		if (rv == CKR_OK)
			rv = P11_CALL(f->C_GenerateKeyPair(t->anchor, &mech, pubt,
			    sizeof(pubt) / sizeof(pubt[0]), privt,
			    sizeof(privt) / sizeof(privt[0]), &pubh, &privh));
		pthread_mutex_unlock(&t->lock);
		if (rv != CKR_OK) {
			r = p11_fail(k->name, "C_GenerateKeyPair", rv);
			goto out;
		}
	}
	s2.require_cert = 0;
	r = p11_finish_open(k, &s2);
out:
	if (r != 0) {
		hsm_key_free(k);
		return r;
	}
	*out = k;
	return 0;
}
