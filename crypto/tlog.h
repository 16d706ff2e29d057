/* History records and checkpoints (contract §5): the record leaf encoding, the
 * on-disk frame around each leaf, RFC 6962 Merkle hashing with O(log n)
 * right-edge state, and C2SP tlog-checkpoint / signed-note checkpoints.
 * Pure format code: no FUSE, no store layout (fs/history.c owns that). */
#ifndef HSMFS_CRYPTO_TLOG_H
#define HSMFS_CRYPTO_TLOG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <openssl/evp.h>

#include <stddef.h>
#include <stdint.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#ifndef HSMFS_HSM_KEY_T
#define HSMFS_HSM_KEY_T
typedef struct hsm_key hsm_key;   /* opaque (hsm/hsm.h) */
#endif

#define TLOG_HASH_LEN 32

/* ---- RFC 6962 hashing ---- */

/* SHA-256(0x00 || leaf). */
void tlog_leaf_hash(const uint8_t *leaf, size_t len, uint8_t out[TLOG_HASH_LEN]);
/* SHA-256(0x01 || left || right). */
void tlog_node_hash(const uint8_t l[TLOG_HASH_LEN], const uint8_t r[TLOG_HASH_LEN],
    uint8_t out[TLOG_HASH_LEN]);

/* The right edge of a tree: one complete subtree root per set bit of
 * size, largest first. Appends and roots are O(log n). Plain value: copy
 * it to keep a tentative state. */
struct tlog_tree {
	uint64_t size;
	unsigned n;                          /* popcount(size) */
	uint8_t edge[64][TLOG_HASH_LEN];
};
void tlog_tree_init(struct tlog_tree *t);
void tlog_tree_append(struct tlog_tree *t, const uint8_t leaf_hash[TLOG_HASH_LEN]);
/* MTH of the tree (SHA-256 of nothing for size 0). */
void tlog_tree_root(const struct tlog_tree *t, uint8_t root[TLOG_HASH_LEN]);

/* ---- record leaves ----
 * leaf = version (1 byte, 1) || seq (u64 BE) || time (u64 BE, microseconds
 * since the Unix epoch, UTC) || writer uid (u32 BE) || payload. */
#define TLOG_LEAF_VERSION 1
#define TLOG_LEAF_HDR 21

struct tlog_record {
	uint64_t seq;
	uint64_t time_us;
	uint32_t uid;
};
void tlog_leaf_header(const struct tlog_record *rec, uint8_t out[TLOG_LEAF_HDR]);
/* Strict: version 1, length >= header. */
int tlog_leaf_parse(const uint8_t *leaf, size_t len, struct tlog_record *out);

/* ---- frames ----
 * frame = "HSR1" || leaf length (u32 BE) || index (u64 BE) || leaf ||
 * SHA-256(0x00 || leaf). A crash can leave the last frame short or with
 * unwritten (zero) blocks; both show up as a bad frame at the tail. */
#define TLOG_FRAME_MAGIC "HSR1"
#define TLOG_FRAME_HDR 16
#define TLOG_FRAME_OVERHEAD (TLOG_FRAME_HDR + TLOG_HASH_LEN)
#define TLOG_LEAF_MAX (UINT32_C(1) << 31)

void tlog_frame_header(uint64_t index, uint32_t leaf_len, uint8_t out[TLOG_FRAME_HDR]);

/* One frame found by tlog_scan(). */
struct tlog_frame {
	uint64_t index;
	struct tlog_record rec;
	off_t offset;              /* of the frame in the file */
	off_t payload_offset;
	uint64_t payload_len;
	off_t end;                 /* offset just after the frame */
	uint8_t leaf_hash[TLOG_HASH_LEN];
};

/* Read frames from fd starting at offset off with index first_index, call
 * cb for each good frame (cb returns 0 to go on, anything else stops the
 * scan and is returned). Stops at the first bad frame: returns 0 and sets
 * *bad_off to its offset (and *reason) or to the end of file when every
 * frame was good. HSMFS_ERR_IO on read errors. */
typedef int (*tlog_frame_cb)(const struct tlog_frame *f, void *arg);
int tlog_scan(int fd, off_t off, uint64_t first_index, tlog_frame_cb cb,
    void *arg, off_t *bad_off, const char **reason);

/* ---- checkpoints (C2SP tlog-checkpoint in a C2SP signed note) ----
 *   <origin>\n<size>\n<base64 root>\n\n— <origin> <base64(keyid4 || sig)>\n...
 * The signed message is the note text up to and including the newline
 * before the blank line. Signatures: RSASSA-PKCS1-v1_5 with SHA-256. */
#define TLOG_SIG_MAX 16
#define TLOG_ORIGIN_MAX 512

struct tlog_sig {
	uint8_t key_id[4];
	uint8_t *sig;
	size_t sig_len;
};

struct tlog_checkpoint {
	char *origin;
	uint64_t size;
	uint8_t root[TLOG_HASH_LEN];
	char *text;                /* whole note, NUL-terminated */
	size_t text_len;
	size_t body_len;           /* signed part: origin..root line incl. '\n' */
	struct tlog_sig sigs[TLOG_SIG_MAX];
	size_t nsigs;
};

/* Key id of pub under a key name: the first 4 bytes of SHA-256(name ||
 * 0x0A || 0xFF || "PKIX-RSA-PKCS#1v1.5" || DER SubjectPublicKeyInfo). */
int tlog_key_id(const char *name, EVP_PKEY *pub, uint8_t id[4]);

/* Build and sign a checkpoint with each key (one signature line each, in
 * order). *out is NUL-terminated text, caller frees. */
int tlog_checkpoint_sign(const char *origin, uint64_t size,
    const uint8_t root[TLOG_HASH_LEN], hsm_key *const *keys, size_t nkeys,
    char **out, size_t *out_len);

/* Parse the first note in text[0..len) (strictly: three body lines, no
 * extension lines, decimal size without leading zeros, 32-byte root, at
 * least one signature line). *used = bytes consumed, so concatenated notes
 * can be read one after another. HSMFS_ERR_INVALID for malformed text;
 * HSMFS_ERR_NOTFOUND (with *used = 0) when text ends before a complete
 * note (a torn tail). */
int tlog_checkpoint_parse(const char *text, size_t len,
    struct tlog_checkpoint *cp, size_t *used);
void tlog_checkpoint_clear(struct tlog_checkpoint *cp);

/* Verify cp's signatures against candidate public keys: keys are matched
 * by key id (name = the checkpoint's origin). Succeeds when at least one
 * signature by a candidate verifies and none by a candidate fails; *which
 * (optional) is the index of the first key that verified. Signatures
 * by unknown key ids are ignored (signed-note rules). HSMFS_ERR_BADMSG
 * with err_set() detail otherwise. */
int tlog_checkpoint_verify(const struct tlog_checkpoint *cp,
    EVP_PKEY *const *keys, size_t nkeys, int *which);

#endif
