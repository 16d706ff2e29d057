/* The open keys of an engine, and the ONLY key API above hsm/: fs/ and
 * tool/ get signers, verifiers and unwrap keys here, never an hsm_key
 * from anywhere else, and never a PIN. A key is opened once (PIN
 * resolved, used for the one login and wiped) and shared by every
 * descriptor version naming it. The key handle is opaque: hand it to
 * crypto/ (jar, envelope, tlog, smime) or to the keyring_key_* calls. */
#ifndef HSMFS_CRYPTO_KEYRING_H
#define HSMFS_CRYPTO_KEYRING_H

#include "common/keystats.h"
#include <stddef.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "crypto/engine.h"

#ifndef HSMFS_HSM_KEY_T
#define HSMFS_HSM_KEY_T
typedef struct hsm_key hsm_key;   /* opaque (hsm/hsm.h) */
#endif

struct keyring;

/* ---- the keyring of a configuration ---- */

/* Open every key named by a descriptor. On the first failure returns its
 * code with err_detail() naming the key; never retries a wrong PIN. */
int keyring_open(const struct engine *e, struct keyring **out);
/* keyring_open for a reloaded engine: keys of old whose name and place
 * (module/file, slot, token, alias) are unchanged are shared, not
 * reopened (their sessions and logins are kept); others are opened.
 * old stays valid and unchanged. */
int keyring_reopen(const struct keyring *old, const struct engine *e,
    struct keyring **out);
/* Another reference to kr (for a holder that outlives a reload);
 * keyring_free drops one, and closes keys no other keyring shares. */
struct keyring *keyring_hold(struct keyring *kr);
void keyring_free(struct keyring *kr);

/* A descriptor version with its open key: everything needed to sign
 * with it (or to seal to it). Borrowed from the keyring. */
struct keyring_signer {
	const struct engine_descriptor *desc;
	hsm_key *key;          /* opaque; its operations run in the HSM */
	X509 *cert;            /* the key's certificate, never NULL */
	EVP_PKEY *pubkey;      /* the certificate's public key */
	const char *name;      /* the key's name in the config */
};

/* The newest version of descriptor (ENGINE_* name). No such descriptor:
 * HSMFS_ERR_UNSUPPORTED ("no NAME descriptor in FILE"); its key not open:
 * HSMFS_ERR_NOTFOUND ("NAME version N: key K is not open"). */
int keyring_signer(struct keyring *kr, const char *descriptor,
    struct keyring_signer *out);
/* The same for one given version d of the keyring's engine. */
int keyring_signer_of(struct keyring *kr, const struct engine_descriptor *d,
    struct keyring_signer *out);
/* Every configured version of descriptor whose key is open, the newest
 * first, each key once: the certificates and public keys a signature
 * may verify against. *out is malloc'ed (free() it; the entries are
 * borrowed), *n may be 0. Returns 0 or HSMFS_ERR_NOMEM. */
int keyring_verifiers(struct keyring *kr, const char *descriptor,
    struct keyring_signer **out, size_t *n);
/* The key that unwraps what was sealed for version d (NULL when its key
 * is not open); its certificate identifies it (envelope key id). */
hsm_key *keyring_unwrapper(struct keyring *kr,
    const struct engine_descriptor *d);

/* ---- an opaque key handle ---- */

const char *keyring_key_name(const hsm_key *k);
/* Borrowed; NULL only for a key opened without certificate. */
X509 *keyring_key_cert(const hsm_key *k);
EVP_PKEY *keyring_key_pubkey(const hsm_key *k);
/* EVP_PKEY whose private operations run in the HSM (for OpenSSL's
 * X509/CSR signing); borrowed. */
EVP_PKEY *keyring_key_pkey(hsm_key *k);
/* Token label (PKCS#11) or file name (P12), for messages. */
const char *keyring_key_where(const hsm_key *k);

/* ---- status and metrics ---- */

#define KEYRING_LATENCY_BUCKETS KEY_LATENCY_BUCKETS
#define KEYRING_ERR_KINDS KEY_ERR_KINDS
/* Upper bounds (ms, inclusive) of st.latency[]; the last bucket is open. */
extern const double *const keyring_latency_bounds_ms;

struct keyring_status {
	const char *name;
	const char *backend;       /* "pkcs11" or "pkcs12" */
	int pkcs11;
	const char *where;         /* token label or file */
	X509 *cert;                /* borrowed */
	int present, logged_in;    /* token state */
	struct key_stats st;       /* operations, pool, latency, errors */
};

/* Number of open keys, and the state and counters of key i. ask: ask
 * the module for the token state (may wait while a remote HSM is down);
 * 0 gives the last answer without waiting (for getattr). */
size_t keyring_count(const struct keyring *kr);
void keyring_status(struct keyring *kr, size_t i, int ask,
    struct keyring_status *out);
/* True when key i is also held by another keyring (kept over a reload). */
int keyring_shared(const struct keyring *kr, size_t i);

/* ---- one key alone (hsmfs-tool) ---- */

/* The one key-open sequence: resolve the PIN, open the key (with
 * need_cert its certificate must be there), wipe the PIN. Errors name
 * the key. Close with keyring_close_key(). */
int keyring_open_key(const struct engine_key *k, int need_cert,
    hsm_key **out);
/* Generate an RSA pair on k's token under its alias (PKCS#11 only;
 * fails if a private key with the alias exists); opened as by
 * keyring_open_key without certificate. */
int keyring_generate(const struct engine_key *k, int bits, hsm_key **out);
/* Store cert on the token for k after checking it matches the key
 * (HSMFS_ERR_INVALID when not); replaces an older one. */
int keyring_store_cert(hsm_key *k, X509 *cert);
void keyring_close_key(hsm_key *k);
/* Round trips for hsmfs-tool check: sign a random message in the HSM
 * and verify it with the certificate; OAEP-encrypt a random secret with
 * the certificate and unwrap it in the HSM. 0 or an hsmfs_err with why
 * (one line) filled. */
int keyring_probe_sign(hsm_key *k, const EVP_MD *md, char *why,
    size_t whylen);
int keyring_probe_unwrap(hsm_key *k, const EVP_MD *md, char *why,
    size_t whylen);

#endif
