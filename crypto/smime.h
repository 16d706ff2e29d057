/* S/MIME signed mail (RFC 8551): checking an RFC 5322 message as a user
 * wrote it, preparing it for the wire (Bcc removed, Date and Message-ID
 * added, 8-bit bodies transfer-encoded, CRLF) and signing it as a
 * detached multipart/signed entity with an hsm_key. No I/O, no FUSE. */
#ifndef HSMFS_CRYPTO_SMIME_H
#define HSMFS_CRYPTO_SMIME_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <openssl/evp.h>
/* The key type of hsm/hsm.h (see crypto/jar.h). */
#ifndef HSMFS_HSM_KEY_TYPEDEF
#define HSMFS_HSM_KEY_TYPEDEF
typedef struct hsm_key hsm_key;
#endif

/* Limits (RFC 5322 2.1.1 for lines; the rest keeps a hostile writer from
 * making the daemon allocate without bound). */
#define SMIME_MAX_LINE 998           /* characters, without CRLF */
#define SMIME_MAX_HEADER (256 << 10) /* bytes of header section */
#define SMIME_MAX_RCPTS 1000
#define SMIME_MAX_MSG (32 << 20)     /* bytes of a whole message */

/* What delivery needs from a checked message. Strings are addr-specs as
 * they go into MAIL FROM / RCPT TO (no angle brackets). */
struct smime_msg {
	char *from;
	char **rcpts;       /* To, Cc, Bcc in that order, duplicates removed */
	size_t nrcpts;
	size_t nbcc;        /* how many of rcpts came only from Bcc */
	char *msgid;        /* the message's own Message-ID value, or NULL */
	int has_date;
};

/* Check a message (LF or CRLF line endings): header fields, a blank
 * line, a body; one From with one mailbox; at least one address in
 * To/Cc/Bcc; no header line over 998 characters; headers 7-bit ASCII.
 * Returns 0 and fills *out (free with smime_msg_clear), or
 * HSMFS_ERR_INVALID with err_detail() saying what is wrong and where. */
int smime_check(const void *msg, size_t len, struct smime_msg *out);
void smime_msg_clear(struct smime_msg *m);

/* A fresh Message-ID value "<random hex@domain of from>" into buf. */
int smime_msgid_new(const char *from, char *buf, size_t size);

/* The unsigned wire parts of a checked message: the outer header block
 * (every field but Bcc, MIME-Version and Content-*, plus Date and
 * Message-ID when missing; CRLF; no terminating blank line) and the inner
 * MIME entity (the Content-* fields, a blank line, the body, transfer-
 * encoded when not 7-bit; CRLF). Caller frees both. */
int smime_prepare(const void *msg, size_t len, time_t date, const char *msgid,
    char **outer, size_t *outer_len, char **inner, size_t *inner_len);

/* Prepare and sign: the outer headers followed by a multipart/signed
 * body (protocol="application/pkcs7-signature", micalg from md, detached
 * CMS SignedData with the signer certificate), every line ending in
 * CRLF. The private operation runs wherever k lives (HSM for PKCS#11).
 * date is used for a missing Date field; msgid (a "<...>" value) for a
 * missing Message-ID. *out is malloc'd. */
int smime_sign(hsm_key *k, const EVP_MD *md, const void *msg, size_t len,
    time_t date, const char *msgid, uint8_t **out, size_t *outlen);

/* Replace every bare LF by CRLF and every bare CR by CRLF (whole
 * message canonical form). *out is malloc'd. */
int smime_crlf(const void *in, size_t len, uint8_t **out, size_t *outlen);

#endif
