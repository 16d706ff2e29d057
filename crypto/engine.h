/* engineSignEncrypt.xml: descriptors (what to do, with which algorithm and
 * key) and keys (where the key lives). Parsed with libxml2, no network,
 * no DTD, no entity expansion. PINs: crypto/pin.h; the open keys:
 * crypto/keyring.h (the only key API above hsm/). */
#ifndef HSMFS_CRYPTO_ENGINE_H
#define HSMFS_CRYPTO_ENGINE_H

#include <stddef.h>
#include <openssl/evp.h>

#define ENGINE_ENCRYPTED_FIELDS "EncryptedFields"
#define ENGINE_CONFIG_ZIP_SIGNER "ConfigZipSigner"
#define ENGINE_OBJECT_HISTORY_SIGNER "ObjectHistorySigner"
#define ENGINE_SIGN_EMAIL "SignEmailDescriptor"

#define ENGINE_MAX_PIN 256   /* bytes, any PIN source */

enum engine_key_type {
	ENGINE_KEY_HSM = 1,
	ENGINE_KEY_P12 = 2,
	ENGINE_KEY_OTHER = 3,  /* a type hsmfs does not know (unserved keys only) */
};

struct engine_key {
	char *name;
	int line;
	enum engine_key_type type;
	char *location;       /* locationValue */
	char *alias;
	int has_slot;
	unsigned long slot;
	char *token_label;    /* tokenLabel */
	/* At most one PIN source is set. */
	char *pin;            /* pin (plain) */
	char *pin_encrypted;  /* pin.encrypted (scrambled) */
	char *pin_file;       /* pin.file */
	char *pin_env;        /* pin.env */
	int no_raw_rsa;       /* rawRsaFallback="false" */
	char *type_name;      /* <type name> as written */
	int has_uri;          /* named by uri="pkcs11:..." (RFC 7512) */
	/* Named by a served descriptor: checked strictly and opened. A key
	 * named only by descriptors hsmfs does not serve is parsed but never
	 * opened (no PIN kept, location maybe unresolved); problem says so.
	 * A key named by no descriptor is checked strictly too; if that
	 * fails, problem holds the error and the key is unusable. */
	int served;
	char *problem;        /* NULL: usable by hsmfs-tool keygen etc. */
};

enum engine_alg {
	ENGINE_ALG_AES_CBC_PKCS7 = 1, /* EncryptedFields: algorithm */
	ENGINE_ALG_DIGEST,            /* SHA-256 / SHA-384 / SHA-512 */
	ENGINE_ALG_RSA_SIGN,          /* SHA256withRSA ... */
};

struct engine_descriptor {
	char *name;
	int version;
	int line;
	char *algorithm;      /* normalised Java name */
	enum engine_alg alg;
	int size;             /* AES key bits (EncryptedFields) */
	char *result;         /* envelope format, e.g. "NX02" */
	char *key_name;
	struct engine_key *key;   /* resolved, borrowed from engine */
	char *asym_cipher;    /* normalised, e.g. RSA/ECB/OAEPWithSHA-384AndMGF1Padding */
	const EVP_MD *md;     /* digest of the algorithm (sign/digest descriptors) */
	const EVP_MD *oaep_md;/* OAEP and MGF1 hash (EncryptedFields) */
	int key_line;         /* line of key= */
	int iv_line;          /* > 0: line of an initVector (EncryptedFields) */
};

/* A descriptor hsmfs does not serve (the Identity Manager's own file
 * holds many): listed by check and .status, its key never opened. */
struct engine_unserved {
	char *name;
	char *version;        /* as written; NULL when absent */
	int line;
	char *key_name;       /* key= of its <type>; NULL when absent */
	const struct engine_key *key;  /* resolved; NULL when no key= */
};

struct engine {
	char *path;
	struct engine_descriptor *descs;
	size_t ndescs;
	struct engine_key *keys;
	size_t nkeys;
	struct engine_unserved *unserved;
	size_t nunserved;
};

/* Where locationValue="classpath:NAME" is looked up: a colon-separated
 * list of directories (-o classpath=), NULL for the default, the
 * directory of the configuration file. Relative directories are made
 * absolute now. Applies to every later engine_load() of the process.
 * Returns HSMFS_ERR_CONFIG with err_detail() for an empty or missing
 * directory. */
int engine_set_classpath(const char *dirs);

/* Backend of a key for listings: "pkcs11", "pkcs12", or the type name
 * as written for a type hsmfs does not know. */
const char *engine_key_type_label(const struct engine_key *k);

/* Parse and validate. Descriptors hsmfs serves (the four names above)
 * go to descs, strictly checked; any other descriptor goes to unserved.
 * On failure returns HSMFS_ERR_CONFIG with
 * err_detail() = "FILE:LINE: message naming the attribute". Warnings
 * (normalised spellings, config readable by group/others) are logged. */
int engine_load(const char *path, struct engine **out);
void engine_free(struct engine *e);

/* Highest version of a descriptor, NULL when not configured. */
const struct engine_descriptor *engine_newest(const struct engine *e,
    const char *name);
/* A given version, NULL when not configured. */
const struct engine_descriptor *engine_version(const struct engine *e,
    const char *name, int version);
const struct engine_key *engine_key_by_name(const struct engine *e,
    const char *name);

#endif
