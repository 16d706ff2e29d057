/* RFC 7512 pkcs11: URIs naming a private key, as p11-kit, OpenSSL's
 * pkcs11 provider, GnuTLS and systemd-cryptenroll write them:
 *   pkcs11:token=idm;object=zipSigner;type=private?module-name=softhsm2&pin-source=file:/run/pin
 * Only what hsmfs can honour is accepted; anything else is refused with
 * a message naming the attribute, never ignored (an ignored selector
 * would widen the match). */
#ifndef HSMFS_CRYPTO_P11URI_H
#define HSMFS_CRYPTO_P11URI_H

#include <stddef.h>

struct p11uri {
	char *token;         /* token=       (CKA_LABEL of the token) */
	char *object;        /* object=      (CKA_LABEL of key and certificate) */
	int has_slot;
	unsigned long slot;  /* slot-id= */
	char *module_path;   /* ?module-path= (absolute) */
	char *module_name;   /* ?module-name= (p11-kit name or library name) */
	char *pin_source;    /* ?pin-source= as a file path (file: URI decoded) */
	char *pin_value;     /* ?pin-value= (wiped on clear) */
};

/* Parse uri into out (percent-decoded, every field malloc'd or NULL).
 * On error returns -1 with a one-line reason in why and out cleared. */
int p11uri_parse(const char *uri, struct p11uri *out, char *why, size_t whylen);
void p11uri_clear(struct p11uri *u);

/* Percent-decode s[0..n) into a malloc'd string. NULL with *bad = 1 for
 * a bad escape or an encoded NUL, *bad = 0 when out of memory. */
char *p11uri_pct_decode(const char *s, size_t n, int *bad);

#endif
