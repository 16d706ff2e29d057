/* The history area of the store: its layout, the verification of an
 * object, and the verification policy of one object as a whole
 * (hstore_verify_object), shared by the daemon (fs/history*.c) and
 * `hsmfs-tool verify-history` (offline). Directory backend:
 *   STORE/history/store-id       16 hex digits, part of every origin
 *   STORE/history/objects/N.log  frames of object N (crypto/tlog.h)
 *   STORE/history/checkpoints    append-only concatenation of every signed
 *                                checkpoint (the store-level index: the
 *                                last note per origin is the newest)
 * An anchor file (-o history_anchor) has the checkpoints' format.
 * Shared store (PostgreSQL, store/history_pg.c): the same frames, one row
 * per record; origins name the cluster ("<cluster origin>/history/");
 * STORE/history keeps only the node's spools and caches. */
#ifndef HSMFS_STORE_HISTORY_H
#define HSMFS_STORE_HISTORY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>

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
/* The origin prefix of every checkpoint of a shared store:
 * "<hsmfs_cluster.origin>/history/" (an object's origin is the prefix and
 * its name), for the PostgreSQL backend and migrate-store. 0, or
 * HSMFS_ERR_INVALID (err_set) when it does not fit in len. */
int hstore_pg_origin_prefix(const char *cluster_origin, char *out,
    size_t len);

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
	/* Optional: resume after records already verified by the caller --
	 * the tree of its first from->size records, whose frames end at
	 * from_off -- in a store whose frames before it cannot have changed
	 * (a shared store's cache only grows). Frames from from_off on are
	 * checked; the signed size must not be below from->size. */
	const struct tlog_tree *from;
	off_t from_off;
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
 * it either); a shared store is read from the database (conf->pg); other
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

/* ---- the area, opened by the daemon ----
 * One handle per mount. Frames reach an object only through a batch
 * (hstore_batch_*): written at hstore_batch_frame, made durable at
 * hstore_batch_prepare (directory: the object's fdatasync; it runs while
 * the checkpoints are signed), and records once hstore_batch_commit has
 * put the batch's checkpoints in the index -- the unit of durability.
 * Until then a crash or hstore_batch_abort cuts them off (recovery at the
 * next open cuts what is after the signed size). A shared backend does a
 * batch as one transaction (prepare a flush or nothing, commit the
 * COMMIT). The caller keeps each object's tree, size and record table.
 * Directory: it is the only writer of the area while the store lock is
 * held. Shared (hstore_is_shared): other nodes append too, so a batch
 * locks its objects before framing (hstore_batch_lock) and learns where its committed frames end; when that is not where the
 * caller's state ends, the caller reloads the object (its newest
 * checkpoint: hstore_obj_newest; its frames: hstore_obj_check) first. */
struct hstore;
struct hstore_obj;      /* one object of the area, open */
struct hstore_batch;    /* frames on their way to the index */

/* Open (creating for a new store) STORE/history, its store id and index,
 * and the anchor (NULL: none; an absolute path); for a shared store
 * (conf->pg), the cluster's origin. *out is NULL on failure, nothing left
 * open. */
int hstore_open(const struct store_conf *conf, const char *anchor,
    struct hstore **out);
void hstore_close(struct hstore *hs);
/* 1: other nodes write the area too (see the batch notes above). */
int hstore_is_shared(const struct hstore *hs);
/* The largest leaf (record header + payload) the area takes: the frame
 * format's limit for a directory; HSTORE_SHARED_LEAF_MAX for a shared
 * store, whose batch waits in memory and whose row is one bytea value
 * written within the statement timeout. */
#define HSTORE_SHARED_LEAF_MAX (UINT64_C(16) << 20)
uint64_t hstore_leaf_max(const struct hstore *hs);
const char *hstore_prefix(const struct hstore *hs);     /* origin prefix */
const char *hstore_anchor(const struct hstore *hs);     /* path or NULL */
/* The index was missing while objects exist (never "nothing signed"). */
int hstore_index_lost(const struct hstore *hs);
off_t hstore_index_size(const struct hstore *hs);
/* Every note of this store in the index (anchor = 0) or the anchor, in
 * order, then a torn tail cut. HSMFS_ERR_BADMSG (err_detail says why)
 * when the text is not notes; HSMFS_ERR_IO when the tail cannot be cut. */
int hstore_load_notes(struct hstore *hs, int anchor, hstore_note_cb cb,
    void *arg);
/* Objects with a file, by name. cb returning non-zero stops (returned). */
typedef int (*hstore_name_cb)(const char *object, void *arg);
int hstore_list_objects(struct hstore *hs, hstore_name_cb cb, void *arg);
/* The same over a directory store's objects directory (STORE/history/
 * objects, open), without opening the area (migrate-store). */
int hstore_list_dir(int objfd, hstore_name_cb cb, void *arg);

/* An object by name (created, empty, if asked and missing: its entry is
 * durable after the next hstore_objects_sync). HSMFS_ERR_NOTFOUND when
 * missing and not created; *out NULL on failure. */
int hstore_obj_open(struct hstore *hs, const char *name, int create,
    struct hstore_obj **out);
void hstore_obj_close(struct hstore_obj *ob);          /* NULL: nothing */
/* Its state now: size (bytes of frames) and a stamp that changes when
 * anything else changes it (directory: its fstat). */
int hstore_obj_stat(struct hstore_obj *ob, struct stat *st);
/* Up to len bytes of its frames from off (a payload range of a record).
 * Bytes read (0 at the end) or a negative code with err_set(). */
ssize_t hstore_obj_read(struct hstore_obj *ob, void *buf, size_t len,
    off_t off);
/* hstore_check_object over its frames. */
int hstore_obj_check(struct hstore_obj *ob, struct hstore_check *c);
/* Shared store: the newest checkpoint the store holds for ob (*text
 * malloc'd, NUL-terminated; NULL: none). Directory: HSMFS_ERR_UNSUPPORTED
 * (the index is read at open). */
int hstore_obj_newest(struct hstore_obj *ob, char **text, size_t *len);
/* Cut its frames back to len bytes: never acknowledged, or found after
 * the signed size at recovery (durable = 1: made durable before return). */
int hstore_obj_cut(struct hstore_obj *ob, off_t len, int durable);

/* A new batch (directory: a list of the objects it touches). */
int hstore_batch_begin(struct hstore *hs, struct hstore_batch **out);
/* Shared store: lock the batch's objects obs[0..n) until it ends, all
 * in one call (in name order, so two nodes' batches never wait for each
 * other in a cycle; once per batch), and say where each one's committed
 * frames end (nrec[i] records, bytes[i] bytes); its frames of this batch
 * start there. Directory: HSMFS_ERR_UNSUPPORTED. */
int hstore_batch_lock(struct hstore_batch *b, struct hstore_obj *const *obs,
    size_t n, uint64_t *nrec, off_t *bytes);
/* Append part of a frame (iov[0..n), consumed) to ob at off, the end of
 * what was written before (the caller frames: crypto/tlog.h). The first
 * call for ob remembers off as where the batch began for it. */
int hstore_batch_frame(struct hstore_batch *b, struct hstore_obj *ob,
    off_t off, struct iovec *iov, int n);
/* Make ob's frames of this batch durable (ob NULL: every object's). Calls
 * for different objects may run at once, and beside the signing; not
 * beside hstore_batch_frame. */
int hstore_batch_prepare(struct hstore_batch *b, struct hstore_obj *ob);
/* Cut ob's frames of this batch off (ob NULL: every object's): they are
 * never acknowledged. */
void hstore_batch_abort(struct hstore_batch *b, struct hstore_obj *ob);
/* The batch's checkpoints, in order, appended to the index as one durable
 * unit (directory: pwrite + fdatasync; cut back on failure), then to the
 * anchor (a failure there is logged, not returned). On failure the
 * frames are not records: the caller cuts them (hstore_obj_cut) before
 * it answers another batch. */
int hstore_batch_commit(struct hstore_batch *b, const char *notes,
    size_t len);
void hstore_batch_end(struct hstore_batch *b);         /* NULL: nothing */

/* The object's file by name (a replaced file is noticed). */
int hstore_object_stat(struct hstore *hs, const char *name, struct stat *st);
/* New object files' directory entries made durable. */
int hstore_objects_sync(struct hstore *hs);
/* A spool for a large record being written (directory: an unlinked
 * temporary file in the area): appended to, then read back by offset
 * when its frame is written. */
struct hstore_spool;
int hstore_spool_open(struct hstore *hs, struct hstore_spool **out);
int hstore_spool_write(struct hstore_spool *sp, const void *buf, size_t len);
/* Bytes read (0 at the end) or a negative code with err_set(). */
ssize_t hstore_spool_read(struct hstore_spool *sp, void *buf, size_t len,
    off_t off);
void hstore_spool_close(struct hstore_spool *sp);      /* NULL: nothing */
/* Replace the index with notes (the newest checkpoint of every object):
 * a crash leaves the old or the new index. */
int hstore_index_rewrite(struct hstore *hs, const char *notes, size_t len);

#endif
