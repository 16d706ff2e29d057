/* The history area of the store: its layout, the verification of an
 * object, and the verification policy of one object as a whole
 * (hstore_verify_object), shared by the daemon (fs/history*.c) and
 * `hsmfs-tool verify-history` (offline). Directory backend:
 *   STORE/history/store-id       16 hex digits, part of every origin
 *   STORE/history/objects/N.log  frames of object N (crypto/tlog.h)
 *   STORE/history/checkpoints    append-only concatenation of every signed
 *                                checkpoint (the store-level index: the
 *                                last note per origin is the newest)
 * An anchor file (-o history_anchor) has the checkpoints' format. */
#ifndef HSMFS_STORE_HISTORY_H
#define HSMFS_STORE_HISTORY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "crypto/tlog.h"
#include "store/store.h"

#define HSTORE_DIR "history"
#define HSTORE_OBJECTS "objects"
#define HSTORE_CHECKPOINTS "checkpoints"
#define HSTORE_ID "store-id"
#define HSTORE_SUFFIX ".log"

/* Read STORE/history/store-id (16 lowercase hex digits and a newline)
 * into *out (malloc'd, 16 chars). HSMFS_ERR_NOTFOUND when missing. */
int hstore_read_id(int dirfd, char **out);

/* "hsmfs/<store id>/history/" */
int hstore_origin_prefix(const char *store_id, char *out, size_t outlen);

/* Read the concatenated notes of fd. For each complete note whose origin
 * starts with prefix, cb gets the object name (origin minus prefix) and
 * the parsed checkpoint (borrowed for the call). *good_len = bytes of
 * complete notes (a torn tail, if any, starts there). Returns 0, or
 * HSMFS_ERR_INVALID with err_set() for text that is not notes. */
typedef int (*hstore_note_cb)(const char *object, const struct tlog_checkpoint *cp,
    void *arg);
int hstore_read_notes(int fd, const char *prefix, hstore_note_cb cb, void *arg,
    off_t *good_len);

/* Checks one object's frames against its newest signed checkpoint and
 * any other checkpoints known for it (index, anchor, an auditor's
 * --expect): each must have size <= the signed size and the root of the
 * tree at its size (a shorter object is a rollback). */
#define HSTORE_MAX_KNOWN 4
struct hstore_check {
	/* in */
	const struct tlog_checkpoint *cp;   /* newest signed; NULL: none */
	EVP_PKEY *const *keys;
	size_t nkeys;
	struct {
		uint64_t size;
		uint8_t root[TLOG_HASH_LEN];
		const char *what;               /* "anchor", "expected checkpoint" */
	} known[HSTORE_MAX_KNOWN];
	size_t nknown;
	tlog_frame_cb cb;                   /* each signed frame, in order */
	void *arg;
	/* out */
	uint64_t good;                      /* good frames in the file */
	off_t signed_end;                   /* end of frame cp->size */
	off_t bad_off;                      /* first bad frame or EOF */
	const char *torn;                   /* why the frame at bad_off is bad */
	int which_key;                      /* key that verified cp */
	char reason[320];                   /* why verification failed */
};

/* 0 when the object verifies; HSMFS_ERR_BADMSG with c->reason otherwise
 * (also copied to err_set()); other codes for I/O errors. Frames after
 * the signed size are reported (good, bad_off) but not judged. */
int hstore_check_object(int fd, struct hstore_check *c);

/* The verification policy of one object, whole (what `hsmfs-tool
 * verify-history` reports): the store id and checkpoint index, the
 * newest checkpoint of the object, the anchor and an auditor's expected
 * checkpoint if given (each a known size and root the object must
 * extend), then every frame against the newest checkpoint.
 * Returns 0: valid, v's out fields filled; HSMFS_ERR_BADMSG: the history
 * does not verify, v->reason says why (the text after "invalid: OBJECT: ");
 * HSMFS_ERR_NOTFOUND with err_set(): no such object (nothing signed for
 * it either); HSMFS_ERR_UNSUPPORTED for a shared store (not yet); other
 * codes with err_set() when the store, anchor or expected file cannot be
 * read. */
struct hstore_verify {
	/* in */
	const char *object;
	EVP_PKEY *const *keys;              /* every accepted signer */
	size_t nkeys;
	const char *anchor;                 /* NULL, or an anchor file */
	const char *expect;                 /* NULL, or a checkpoint note file */
	/* out */
	uint64_t records;                   /* signed size */
	uint8_t root[TLOG_HASH_LEN];        /* signed root */
	int which_key;                      /* index in keys, -1: none */
	uint64_t unsigned_after;            /* complete frames after it */
	const char *torn;                   /* torn data after it (static text) */
	char reason[400];
};
int hstore_verify_object(const struct store_conf *conf, struct hstore_verify *v);

#endif
