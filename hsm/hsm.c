/* hsm_key front: dispatch to the backend, latency/error statistics. */
#include "hsm/hsm_int.h"
#include "common/err.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/err.h>
#include <openssl/x509.h>

double
hsm_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

hsm_key *
hsm_key_alloc(const struct hsm_backend_ops *ops, enum hsm_backend b,
    const char *name, const char *where)
{
	hsm_key *k = calloc(1, sizeof(*k));
	if (k == NULL)
		return NULL;
	k->ops = ops;
	k->backend = b;
	k->name = strdup(name ? name : "(unnamed)");
	k->where = strdup(where ? where : "");
	pthread_mutex_init(&k->stats_lock, NULL);
	if (k->name == NULL || k->where == NULL) {
		free(k->name);
		free(k->where);
		free(k);
		return NULL;
	}
	return k;
}

int
hsm_cert_matches(X509 *cert, EVP_PKEY *pub)
{
	EVP_PKEY *cpub = X509_get0_pubkey(cert);
	if (cpub == NULL)
		return 0;
	return EVP_PKEY_eq(cpub, pub) == 1;
}

int
hsm_key_open(const struct hsm_key_spec *spec, hsm_key **out)
{
	switch (spec->backend) {
	case HSM_BACKEND_PKCS11:
		return hsm_p11_open(spec, out);
	case HSM_BACKEND_P12:
		return hsm_p12_open(spec, out);
	}
	err_set("key %s: unknown backend", spec->name);
	return HSMFS_ERR_CONFIG;
}

int
hsm_keygen(const struct hsm_key_spec *spec, int bits, hsm_key **out)
{
	if (spec->backend != HSM_BACKEND_PKCS11) {
		err_set("key %s: keygen needs a PKCS#11 (HSM) key", spec->name);
		return HSMFS_ERR_UNSUPPORTED;
	}
	return hsm_p11_keygen(spec, bits, out);
}

void
hsm_key_free(hsm_key *k)
{
	if (k == NULL)
		return;
	/* The bridge EVP_PKEY may still be referenced by OpenSSL objects the
	 * caller holds; the backend state must outlive them, so callers free
	 * keys only at shutdown. */
	EVP_PKEY_free(k->pkey);
	EVP_PKEY_free(k->pub);
	OPENSSL_free(k->spki);
	X509_free(k->cert);
	if (k->ops && k->ops->free)
		k->ops->free(k);
	pthread_mutex_destroy(&k->stats_lock);
	free(k->name);
	free(k->where);
	free(k);
}

const char *hsm_key_name(const hsm_key *k) { return k->name; }
enum hsm_backend hsm_key_backend(const hsm_key *k) { return k->backend; }
X509 *hsm_key_cert(const hsm_key *k) { return k->cert; }
EVP_PKEY *hsm_key_pubkey(const hsm_key *k) { return k->pub; }
EVP_PKEY *hsm_key_pkey(hsm_key *k) { return k->pkey; }
int hsm_key_bits(const hsm_key *k) { return k->bits; }
const char *hsm_key_where(const hsm_key *k) { return k->where; }

const unsigned char *
hsm_key_spki(hsm_key *k, size_t *len)
{
	const unsigned char *der;
	pthread_mutex_lock(&k->stats_lock);
	if (k->spki == NULL && k->pub != NULL) {
		unsigned char *p = NULL;
		int n = i2d_PUBKEY(k->pub, &p);
		if (n > 0) {
			k->spki = p;
			k->spki_len = n;
		}
	}
	der = k->spki;
	*len = (size_t)k->spki_len;
	pthread_mutex_unlock(&k->stats_lock);
	if (der == NULL)
		err_set_ossl("key %s: cannot encode the public key", k->name);
	return der;
}

/* 0.5 ms (a local token) to 10 s (a network HSM timing out). */
const double hsm_latency_bounds_ms[HSM_LATENCY_BUCKETS - 1] = {
	0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000,
};

void
hsm_account(hsm_key *k, double t0, int r)
{
	double dt = hsm_now_ms() - t0;
	size_t b = 0;
	while (b < HSM_LATENCY_BUCKETS - 1 && dt > hsm_latency_bounds_ms[b])
		b++;
	pthread_mutex_lock(&k->stats_lock);
	k->stats.ops++;
	k->stats.latency[b]++;
	if (r != 0) {
		k->stats.errors++;
		k->stats.errors_by[HSMFS_IS_ERR(r) ? -r - 1000 : 0]++;
	}
	k->stats.total_ms += dt;
	k->stats.last_result = r;
	k->stats.last_time = (long long)time(NULL);
	pthread_mutex_unlock(&k->stats_lock);
}

int
hsm_key_sign(hsm_key *k, const EVP_MD *md, const void *data, size_t len,
    uint8_t *sig, size_t *siglen)
{
	double t0 = hsm_now_ms();
	int r = k->ops->sign(k, md, data, len, sig, siglen);
	hsm_account(k, t0, r);
	return r;
}

int
hsm_key_sign_digest(hsm_key *k, const EVP_MD *md, const uint8_t *dgst,
    size_t dlen, uint8_t *sig, size_t *siglen)
{
	double t0 = hsm_now_ms();
	int r;
	if (dlen != (size_t)EVP_MD_get_size(md)) {
		err_set("key %s: digest length %zu does not match %s", k->name,
		    dlen, EVP_MD_get0_name(md));
		return HSMFS_ERR_INVALID;
	}
	r = k->ops->sign_digest(k, md, dgst, dlen, sig, siglen);
	hsm_account(k, t0, r);
	return r;
}

int
hsm_key_oaep_decrypt(hsm_key *k, const EVP_MD *md, const uint8_t *in,
    size_t inlen, uint8_t *out, size_t *outlen)
{
	double t0 = hsm_now_ms();
	int r = k->ops->oaep_decrypt(k, md, in, inlen, out, outlen);
	/* A bad ciphertext is the input's fault, not the token's. */
	hsm_account(k, t0, r == HSMFS_ERR_BADMSG ? 0 : r);
	return r;
}

int
hsm_key_store_cert(hsm_key *k, X509 *cert)
{
	int r;
	if (!hsm_cert_matches(cert, k->pub)) {
		err_set("key %s: certificate does not match the key", k->name);
		return HSMFS_ERR_INVALID;
	}
	if (k->ops->store_cert == NULL) {
		err_set("key %s: this backend cannot store certificates", k->name);
		return HSMFS_ERR_UNSUPPORTED;
	}
	if ((r = k->ops->store_cert(k, cert)) != 0)
		return r;
	X509_free(k->cert);
	X509_up_ref(cert);
	k->cert = cert;
	return 0;
}

void
hsm_key_get_stats(hsm_key *k, struct key_stats *out)
{
	pthread_mutex_lock(&k->stats_lock);
	*out = k->stats;
	pthread_mutex_unlock(&k->stats_lock);
	out->pool_in_use = out->pool_size = 0;
	if (k->ops->pool)
		k->ops->pool(k, &out->pool_in_use, &out->pool_size);
	out->available = 1;
	out->logins = out->reinits = 0;
	if (k->ops->health)
		k->ops->health(k, out);
}

void
hsm_key_token_state(hsm_key *k, int ask, int *present, int *logged_in)
{
	*present = *logged_in = 1;
	if (k->ops->token_state)
		k->ops->token_state(k, ask, present, logged_in);
}
