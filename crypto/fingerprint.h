/* The configuration fingerprint of a node (contract §9, docs/scale.md): every
 * node on one database must run the same engineSignEncrypt.xml. The
 * fingerprint is text, one line per descriptor version, sorted:
 *
 *   EncryptedFields v1 algorithm=AES/CBC/PKCS7Padding size=256 result=NX02
 *       asym=RSA/ECB/OAEPWithSHA-384AndMGF1Padding key=NAME cert=SHA256HEX
 *   SomeUnservedDescriptor v3 unserved key=NAME
 *
 * (one line each; cert= is the SHA-256 of the certificate's DER, spki= of
 * the public key when a key has no certificate, - when the key is not
 * open). Never a PIN, a PIN source or a key location: two nodes may reach
 * the same key through different modules or slots. Its SHA-256 (hex) is
 * the short form shown in .status and db-init's output. */
#ifndef HSMFS_CRYPTO_FINGERPRINT_H
#define HSMFS_CRYPTO_FINGERPRINT_H

struct engine;
struct keyring;

/* The lines of e with the certificates of kr's keys (kr may be NULL: every
 * cert=-). *out is malloc'd, LF-terminated lines. */
int fingerprint_lines(const struct engine *e, struct keyring *kr, char **out);
/* The lines of a configuration file: engine_load, keyring_open (PINs
 * resolved, used, wiped), fingerprint_lines. The one call of tools that
 * only need the fingerprint (db-init). err_detail() on failure. */
int fingerprint_config_file(const char *config, char **out);
/* SHA-256 hex of the lines into hex[65]. */
void fingerprint_hash(const char *lines, char hex[65]);

/* Compare a node's lines with the cluster's. Rule (docs/scale.md,
 * "Same configuration everywhere"):
 *  - every descriptor version of the cluster must be on the node with an
 *    identical line;
 *  - the node may have extra versions of a descriptor the cluster has, if
 *    each is newer than the cluster's newest version of that descriptor
 *    (rolling rotation: a new version is added on every node, then used);
 *    the cluster then records the node's lines (the union);
 *  - anything else is refused.
 * Returns 0 identical, 1 accepted as a rolling rotation (record the
 * node's lines), HSMFS_ERR_CONFIG refused with err_detail() naming the
 * first difference (descriptor, version, attribute, both values). */
int fingerprint_compare(const char *cluster, const char *node);

#endif
