/* Moving a local store's histories into the shared store (hsmfs-tool
 * migrate-store, docs/scale.md "Moving a local store into the
 * database"). One object at a time: verified in STORE first
 * (hstore_verify_object), then its signed records copied into
 * hsmfs_history_records with the same leaves and frame offsets, the
 * object row (size, bytes, frontier) and a NEW checkpoint of the same
 * size and root whose origin names the cluster, all in one transaction;
 * after the COMMIT the object is checked again from the database. The
 * frames after the signed size (never acknowledged) are not moved.
 * Idempotent: an object already in the database with a checkpoint of
 * the same size and root is left alone ("already there"); any other
 * object of that name is a conflict, left untouched. */
#ifndef HSMFS_STORE_HISTORY_IMPORT_H
#define HSMFS_STORE_HISTORY_IMPORT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <openssl/evp.h>

#include "crypto/tlog.h"
#include "store/history.h"
#include "store/store.h"

/* Every object of the local store (STORE/history/objects), by name; a
 * store without history has none. cb returning non-zero stops (returned). */
int hstore_import_list(int storefd, hstore_name_cb cb, void *arg);

enum hstore_import_outcome {
	HSTORE_IMPORT_MOVED,       /* copied and committed */
	HSTORE_IMPORT_THERE,       /* in the database already, same size and root */
	HSTORE_IMPORT_CONFLICT,    /* another history of that name in the database */
	HSTORE_IMPORT_INVALID,     /* does not verify in STORE: not moved */
	HSTORE_IMPORT_FAILED,      /* an error (reason), nothing committed or
	                              the COMMIT's outcome unknown (rerun) */
};

struct hstore_import_conf {
	int storefd;               /* STORE (the directory backend) */
	struct pg *pg;             /* the shared store */
	const char *shared;        /* its URI (store_conf.shared) */
	const char *prefix;        /* hstore_pg_origin_prefix() */
	hsm_key *signer;           /* newest ObjectHistorySigner version */
	EVP_PKEY *const *keys;     /* every accepted ObjectHistorySigner key */
	size_t nkeys;
};

struct hstore_import {
	/* in */
	const char *object;
	/* out */
	enum hstore_import_outcome outcome;
	uint64_t records;                  /* the local signed size */
	uint8_t root[TLOG_HASH_LEN];       /* its root */
	off_t bytes;                       /* the frames' length */
	uint64_t db_records;               /* CONFLICT: the database's size */
	/* After a MOVED or THERE: the object read back from the database
	 * (leaves, offsets, frontier, checkpoint: hstore_import_check_db),
	 * and hstore_verify_object on the shared store: 0, or its code
	 * (HSMFS_ERR_UNSUPPORTED while the shared history backend is
	 * missing: never a success). */
	int db_check;
	int backend_verify;
	char reason[400];
};

/* One object. Returns 0 with im->outcome set (reason filled unless
 * MOVED or THERE), or a negative code for an error that stops the run
 * (the database unreachable, out of memory). */
int hstore_import_object(const struct hstore_import_conf *ic,
    struct hstore_import *im);

/* The object as the database has it, checked against size and root:
 * records 0..size-1 consecutive, each at the offset where the previous
 * frame ended, their leaves hashing to root; the object row's frontier
 * and bytes (when its size is still size); the checkpoint of that size
 * in hsmfs_checkpoints naming prefix+object, of that size and root,
 * signed by one of keys. 0, HSMFS_ERR_BADMSG with reason, or another
 * code (database). */
int hstore_import_check_db(struct pg *pg, const char *prefix,
    const char *object, uint64_t size, const uint8_t root[TLOG_HASH_LEN],
    EVP_PKEY *const *keys, size_t nkeys, char *reason, size_t reasonlen);

#endif
