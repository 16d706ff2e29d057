/* JAR signatures over zip files (contract §3): META-INF/MANIFEST.MF, <SIGNER>.SF
 * and a detached CMS <SIGNER>.RSA, made and checked the way jarsigner does,
 * but stricter on input (contract §8). Everything streams: memory does not grow
 * with the size of the entries, only (a little) with their number. */
#ifndef HSMFS_CRYPTO_JAR_H
#define HSMFS_CRYPTO_JAR_H

#include <stddef.h>
#include <stdint.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

/* The key type of hsm/hsm.h, declared here so that users of this header
 * do not see the hsm layer (the same typedef may appear in several
 * crypto headers: C11 allows the repetition). */
#ifndef HSMFS_HSM_KEY_T
#define HSMFS_HSM_KEY_T
typedef struct hsm_key hsm_key;
#endif
struct engine_descriptor;

/* Limits against hostile zips. */
#define JAR_MAX_ENTRIES 200000
/* Entries larger than JAR_RATIO_MIN_SIZE may not inflate more than
 * JAR_MAX_RATIO times their compressed size (deflate's own ceiling is
 * about 1032, so honest text stays far below; zeros-bombs do not). */
#define JAR_MAX_RATIO 200
#define JAR_RATIO_MIN_SIZE (1u << 20)
/* Work budget over the whole zip, small entries included: the sum of the
 * entries' inflated sizes plus JAR_ENTRY_COST per entry may not exceed
 * JAR_BUDGET_RATIO times the file size plus JAR_BUDGET_SLACK. */
#define JAR_BUDGET_RATIO 200
#define JAR_BUDGET_SLACK (1u << 20)
#define JAR_ENTRY_COST 4096

struct jar_sign_opts {
	hsm_key *key;            /* private key + certificate (embedded) */
	const EVP_MD *md;        /* SHA-256/384/512: manifest, .SF and CMS digest */
	const char *signer;      /* base for the signer file name (key alias);
	                            normalised to <= 8 chars of A-Z0-9_- */
	const char *created_by;  /* Created-By value (NULL: "hsmfs <version>") */
	STACK_OF(X509) *chain;   /* issuer certificates to embed (may be NULL):
	                            jarsigner -keystore matches signers by them */
};

/* Sign the zip at in_path and write the signed zip to out_path (created or
 * replaced by libzip through a temporary file; the caller fsyncs and
 * renames it into place). The input is checked with the same strictness as
 * jar_verify's structure checks; unsafe or non-zip input gives
 * HSMFS_ERR_INVALID with err_detail() saying why. */
int jar_sign(const char *in_path, const char *out_path,
    const struct jar_sign_opts *o);
/* Same, but when in_place is given the input file may be signed where it
 * is (no entry copied: see write_in_place in jar_sign.c); *in_place says
 * whether that happened (the signed zip is then at in_path, out_path is
 * untouched). After a failure the input may be unusable. */
int jar_sign_ex(const char *in_path, const char *out_path,
    const struct jar_sign_opts *o, int *in_place);

/* Is d a ConfigZipSigner descriptor this code can sign zips with (its
 * digest SHA-256, SHA-384 or SHA-512)? Returns 0, or HSMFS_ERR_CONFIG
 * with err_set() naming the version and algorithm. */
int jar_descriptor_check(const struct engine_descriptor *d);

/* Who may sign: certificates configured as ConfigZipSigner (any version),
 * accepted as they are (validity and key usage still checked), and/or a
 * store of trusted CAs (-o truststore=) that other signers must chain to. */
struct jar_trust {
	X509 *const *certs;
	size_t ncerts;
	X509_STORE *store;       /* may be NULL */
};

struct jar_verdict {
	int valid;
	char signer[512];        /* subject DN, RFC 2253, when valid */
	char reason[512];        /* when invalid */
	time_t not_after;        /* earliest notAfter of every signer's chain, up to
	                            its trusted root (cache lifetime) */
};

/* Verify the zip at path. Returns 0 with v->valid = 1, or
 * HSMFS_ERR_BADMSG with v->reason (also in err_detail()) when the zip is
 * invalid or unverifiable, or another negative code for local failures
 * (I/O, memory) that say nothing about the zip. */
int jar_verify(const char *path, const struct jar_trust *t,
    struct jar_verdict *v);

/* Normalise a name as jarsigner does for the signature file base:
 * uppercase, at most 8 chars, others mapped to '_'. out: 9 bytes. */
void jar_signer_name(const char *alias, char out[9]);

/* The issuers of leaf up to a root of store, for jar_sign_opts.chain
 * (empty when leaf does not chain to the store). Caller frees with
 * sk_X509_pop_free(..., X509_free). */
int jar_chain_from_store(X509 *leaf, X509_STORE *store, STACK_OF(X509) **out);

/* Load every PEM certificate of a file into a new X509_STORE. */
int jar_trust_load_pem(const char *path, X509_STORE **out);

#endif
