/* History formats: record leaves, frames, RFC 6962 tree hashing and
 * signed-note checkpoints. Everything here is deterministic and strict so
 * that an independent verifier (examples/verify-history.py, docs/history.md)
 * reproduces the same bytes. */
#include "crypto/tlog.h"
#include "hsm/hsm.h"
#include "common/err.h"
#include "common/util.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/x509.h>

/* U+2014 EM DASH, the signed-note signature line marker. */
#define EM_DASH "\xe2\x80\x94"
#define SIG_PREFIX EM_DASH " "
#define KEYID_ALG "PKIX-RSA-PKCS#1v1.5"

static void
put_be(uint8_t *p, uint64_t v, int n)
{
	for (int i = n - 1; i >= 0; i--) {
		p[i] = (uint8_t)v;
		v >>= 8;
	}
}

static uint64_t
get_be(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

/* ---- hashing ---- */

/* SHA-256 streams through a per-thread context fetched once: the tree
 * code hashes millions of 65-byte nodes and EVP_MD_CTX_new each time
 * would dominate. OpenSSL failures here are allocation failures at
 * start, so abort() is the honest answer (a wrong hash is worse).
 * The context is per thread, freed when the thread exits. */
typedef EVP_MD_CTX sha_ctx;

static pthread_key_t sha_key;
static pthread_once_t sha_once = PTHREAD_ONCE_INIT;

static void
sha_key_free(void *c)
{
	EVP_MD_CTX_free(c);
}

static void
sha_key_init(void)
{
	if (pthread_key_create(&sha_key, sha_key_free) != 0)
		abort();
}

static sha_ctx *
sha_begin(void)
{
	EVP_MD_CTX *c;
	pthread_once(&sha_once, sha_key_init);
	if ((c = pthread_getspecific(sha_key)) == NULL) {
		/* Freed by the key's destructor when the thread exits. */
		if ((c = EVP_MD_CTX_new()) == NULL ||
		    pthread_setspecific(sha_key, c) != 0)
			abort();
	}
	if (EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1)
		abort();
	return c;
}

static void
sha_update(sha_ctx *c, const void *p, size_t n)
{
	if (EVP_DigestUpdate(c, p, n) != 1)
		abort();
}

static void
sha_final(sha_ctx *c, uint8_t out[TLOG_HASH_LEN])
{
	if (EVP_DigestFinal_ex(c, out, NULL) != 1)
		abort();
}

void
tlog_leaf_hash(const uint8_t *leaf, size_t len, uint8_t out[TLOG_HASH_LEN])
{
	static const uint8_t zero = 0;
	sha_ctx *c = sha_begin();
	sha_update(c, &zero, 1);
	sha_update(c, leaf, len);
	sha_final(c, out);
}

void
tlog_node_hash(const uint8_t l[TLOG_HASH_LEN], const uint8_t r[TLOG_HASH_LEN],
    uint8_t out[TLOG_HASH_LEN])
{
	static const uint8_t one = 1;
	sha_ctx *c = sha_begin();
	sha_update(c, &one, 1);
	sha_update(c, l, TLOG_HASH_LEN);
	sha_update(c, r, TLOG_HASH_LEN);
	sha_final(c, out);
}

void
tlog_tree_init(struct tlog_tree *t)
{
	memset(t, 0, sizeof(*t));
}

void
tlog_tree_append(struct tlog_tree *t, const uint8_t leaf_hash[TLOG_HASH_LEN])
{
	uint8_t h[TLOG_HASH_LEN];
	memcpy(h, leaf_hash, TLOG_HASH_LEN);
	/* Each trailing one bit of size is a complete subtree of the same
	 * height as the one being carried: merge them, as in binary addition. */
	for (uint64_t s = t->size; s & 1; s >>= 1) {
		t->n--;
		tlog_node_hash(t->edge[t->n], h, h);
	}
	memcpy(t->edge[t->n++], h, TLOG_HASH_LEN);
	t->size++;
}

void
tlog_tree_root(const struct tlog_tree *t, uint8_t root[TLOG_HASH_LEN])
{
	uint8_t h[TLOG_HASH_LEN];
	if (t->n == 0) {
		sha_final(sha_begin(), root);
		return;
	}
	/* RFC 6962 splits at the largest power of two below n, so the root
	 * folds the edge from the right: MTH = H(e0, H(e1, ... e_{k-1})). */
	memcpy(h, t->edge[t->n - 1], TLOG_HASH_LEN);
	for (unsigned i = t->n - 1; i-- > 0;)
		tlog_node_hash(t->edge[i], h, h);
	memcpy(root, h, TLOG_HASH_LEN);
}

/* ---- leaves and frames ---- */

void
tlog_leaf_header(const struct tlog_record *rec, uint8_t out[TLOG_LEAF_HDR])
{
	out[0] = TLOG_LEAF_VERSION;
	put_be(out + 1, rec->seq, 8);
	put_be(out + 9, rec->time_us, 8);
	put_be(out + 17, rec->uid, 4);
}

int
tlog_leaf_parse(const uint8_t *leaf, size_t len, struct tlog_record *out)
{
	if (len < TLOG_LEAF_HDR || leaf[0] != TLOG_LEAF_VERSION) {
		err_set("record leaf: bad version or length");
		return HSMFS_ERR_INVALID;
	}
	out->seq = get_be(leaf + 1, 8);
	out->time_us = get_be(leaf + 9, 8);
	out->uid = (uint32_t)get_be(leaf + 17, 4);
	return 0;
}

void
tlog_frame_header(uint64_t index, uint32_t leaf_len, uint8_t out[TLOG_FRAME_HDR])
{
	memcpy(out, TLOG_FRAME_MAGIC, 4);
	put_be(out + 4, leaf_len, 4);
	put_be(out + 8, index, 8);
}

/* Buffered sequential reader over pread, so frames may be any size. */
struct reader {
	int fd;
	off_t pos;                 /* file offset of buf[0] */
	size_t have, at;
	uint8_t buf[65536];
};

/* Copy n bytes (or fewer at EOF) into dst (NULL: feed sha only). */
static int
rd_get(struct reader *r, uint8_t *dst, size_t n, sha_ctx *sha, size_t *got)
{
	*got = 0;
	while (n > 0) {
		if (r->at == r->have) {
			ssize_t k;
			r->pos += (off_t)r->have;
			r->have = r->at = 0;
			do
				k = pread(r->fd, r->buf, sizeof(r->buf), r->pos);
			while (k < 0 && errno == EINTR);
			if (k < 0) {
				err_set("read history: %s", strerror(errno));
				return HSMFS_ERR_IO;
			}
			if (k == 0)
				return 0;
			r->have = (size_t)k;
		}
		size_t take = r->have - r->at;
		if (take > n)
			take = n;
		if (dst) {
			memcpy(dst, r->buf + r->at, take);
			dst += take;
		}
		if (sha)
			sha_update(sha, r->buf + r->at, take);
		r->at += take;
		n -= take;
		*got += take;
	}
	return 0;
}

static off_t
rd_tell(const struct reader *r)
{
	return r->pos + (off_t)r->at;
}

int
tlog_scan(int fd, off_t off, uint64_t first_index, tlog_frame_cb cb,
    void *arg, off_t *bad_off, const char **reason)
{
	struct reader *r = calloc(1, sizeof(*r));
	uint64_t index = first_index;
	off_t start = off;
	int rc = 0;

	if (r == NULL)
		return HSMFS_ERR_NOMEM;
	r->fd = fd;
	r->pos = off;
	*reason = NULL;
	for (;;) {
		uint8_t hdr[TLOG_FRAME_HDR], lhdr[TLOG_LEAF_HDR];
		uint8_t hash[TLOG_HASH_LEN], want[TLOG_HASH_LEN];
		struct tlog_frame f;
		sha_ctx *sha;
		uint32_t leaf_len;
		size_t got;
		static const uint8_t zero = 0;

		memset(&f, 0, sizeof(f));
		f.offset = start = rd_tell(r);
		if ((rc = rd_get(r, hdr, sizeof(hdr), NULL, &got)) != 0)
			goto out;
		if (got == 0)
			break;                      /* clean end */
		if (got < sizeof(hdr)) {
			*reason = "truncated frame header";
			break;
		}
		if (memcmp(hdr, TLOG_FRAME_MAGIC, 4) != 0) {
			*reason = "bad frame magic";
			break;
		}
		leaf_len = (uint32_t)get_be(hdr + 4, 4);
		f.index = get_be(hdr + 8, 8);
		if (leaf_len < TLOG_LEAF_HDR || leaf_len > TLOG_LEAF_MAX) {
			*reason = "bad record length";
			break;
		}
		if (f.index != index) {
			*reason = "record out of order";
			break;
		}
		sha = sha_begin();
		sha_update(sha, &zero, 1);
		if ((rc = rd_get(r, lhdr, sizeof(lhdr), sha, &got)) != 0)
			goto out;
		if (got < sizeof(lhdr)) {
			*reason = "truncated record";
			break;
		}
		if (tlog_leaf_parse(lhdr, sizeof(lhdr), &f.rec) != 0) {
			*reason = "bad record version";
			break;
		}
		if (f.rec.seq != index) {
			*reason = "record sequence number does not match its position";
			break;
		}
		f.payload_offset = rd_tell(r);
		f.payload_len = leaf_len - TLOG_LEAF_HDR;
		if ((rc = rd_get(r, NULL, f.payload_len, sha, &got)) != 0)
			goto out;
		if (got < f.payload_len) {
			*reason = "truncated record";
			break;
		}
		sha_final(sha, want);
		if ((rc = rd_get(r, hash, sizeof(hash), NULL, &got)) != 0)
			goto out;
		if (got < sizeof(hash)) {
			*reason = "truncated record hash";
			break;
		}
		if (memcmp(hash, want, TLOG_HASH_LEN) != 0) {
			*reason = "record hash mismatch";
			break;
		}
		memcpy(f.leaf_hash, want, TLOG_HASH_LEN);
		f.end = rd_tell(r);
		if (cb && (rc = cb(&f, arg)) != 0)
			goto out;
		index++;
	}
	/* The bad frame (or EOF) starts where the last good one ended. */
	*bad_off = start;
	rc = 0;
out:
	free(r);
	return rc;
}

/* ---- checkpoints ---- */

static void
key_id_der(const char *name, const unsigned char *der, size_t len,
    uint8_t id[4])
{
	uint8_t md[TLOG_HASH_LEN];
	static const uint8_t sep[2] = { 0x0a, 0xff };
	sha_ctx *c = sha_begin();
	sha_update(c, name, strlen(name));
	sha_update(c, sep, sizeof(sep));
	sha_update(c, KEYID_ALG, strlen(KEYID_ALG));
	sha_update(c, der, len);
	sha_final(c, md);
	memcpy(id, md, 4);
}

int
tlog_key_id(const char *name, EVP_PKEY *pub, uint8_t id[4])
{
	unsigned char *der = NULL;
	int len = i2d_PUBKEY(pub, &der);
	if (len <= 0) {
		err_set_ossl("key id: cannot encode the public key");
		return HSMFS_ERR_CRYPTO;
	}
	key_id_der(name, der, (size_t)len, id);
	OPENSSL_free(der);
	return 0;
}

static int
origin_valid(const char *s, size_t n)
{
	/* Non-empty printable ASCII without spaces keeps the key name rule
	 * of signed notes (no spaces, no '+') and the line structure. */
	if (n == 0 || n > TLOG_ORIGIN_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (s[i] <= 0x20 || s[i] >= 0x7f || s[i] == '+')
			return 0;
	return 1;
}

int
tlog_checkpoint_sign(const char *origin, uint64_t size,
    const uint8_t root[TLOG_HASH_LEN], hsm_key *const *keys, size_t nkeys,
    char **out, size_t *out_len)
{
	char *text = NULL, *b64root = NULL, *b64sig = NULL;
	size_t tlen = 0, body_len;
	uint8_t *blob = NULL;
	FILE *f = NULL;
	int r = HSMFS_ERR_NOMEM;

	if (!origin_valid(origin, strlen(origin)) || nkeys == 0) {
		err_set("checkpoint: bad origin or no key");
		return HSMFS_ERR_INVALID;
	}
	if ((b64root = util_b64_encode(root, TLOG_HASH_LEN)) == NULL)
		goto out;
	if ((f = open_memstream(&text, &tlen)) == NULL)
		goto out;
	fprintf(f, "%s\n%" PRIu64 "\n%s\n", origin, size, b64root);
	fflush(f);
	body_len = tlen;
	for (size_t i = 0; i < nkeys; i++) {
		size_t siglen = (size_t)hsm_key_bits(keys[i]) / 8 + 16;
		if ((blob = calloc(1, 4 + siglen)) == NULL)
			goto out;
		/* The key's SPKI is encoded once per key, not per checkpoint. */
		const unsigned char *spki;
		size_t spki_len;
		if ((spki = hsm_key_spki(keys[i], &spki_len)) == NULL) {
			r = HSMFS_ERR_CRYPTO;
			goto out;
		}
		key_id_der(origin, spki, spki_len, blob);
		/* text stays valid until the next write to the stream. */
		if ((r = hsm_key_sign(keys[i], EVP_sha256(), text, body_len,
		    blob + 4, &siglen)) != 0)
			goto out;
		r = HSMFS_ERR_NOMEM;
		if ((b64sig = util_b64_encode(blob, 4 + siglen)) == NULL)
			goto out;
		if (i == 0)
			fputc('\n', f);
		fprintf(f, SIG_PREFIX "%s %s\n", origin, b64sig);
		fflush(f);
		free(b64sig);
		b64sig = NULL;
		free(blob);
		blob = NULL;
	}
	if (fclose(f) != 0) {
		f = NULL;
		goto out;
	}
	f = NULL;
	*out = text;
	if (out_len)
		*out_len = tlen;
	text = NULL;
	r = 0;
out:
	if (f)
		fclose(f);
	free(text);
	free(b64root);
	free(b64sig);
	free(blob);
	return r;
}

void
tlog_checkpoint_clear(struct tlog_checkpoint *cp)
{
	free(cp->origin);
	free(cp->text);
	for (size_t i = 0; i < cp->nsigs; i++)
		free(cp->sigs[i].sig);
	memset(cp, 0, sizeof(*cp));
}

/* Next line of text[*pos..len) without its '\n'; 0 when no full line. */
static int
next_line(const char *text, size_t len, size_t *pos, const char **line,
    size_t *n)
{
	const char *nl;
	if (*pos >= len)
		return 0;
	nl = memchr(text + *pos, '\n', len - *pos);
	if (nl == NULL)
		return 0;
	*line = text + *pos;
	*n = (size_t)(nl - *line);
	*pos = (size_t)(nl - text) + 1;
	return 1;
}

/* The signature lines of a checkpoint from *posp: as many as start with
 * the em dash; those under the origin's name (o, on) go into c->sigs.
 * *posp moves past them. 0 or an hsmfs_err with err_set(). */
static int
parse_sigs(const char *text, size_t len, size_t *posp, const char *o,
    size_t on, struct tlog_checkpoint *c)
{
	size_t pos = *posp, ln, rawlen = 0;
	const char *line;
	uint8_t *raw = NULL;
	int r = HSMFS_ERR_INVALID;

	for (;;) {
		size_t save = pos, plen = strlen(SIG_PREFIX);
		const char *sp;
		if (pos + plen <= len && memcmp(text + pos, SIG_PREFIX, plen) != 0)
			break;
		if (pos >= len)
			break;
		if (!next_line(text, len, &pos, &line, &ln)) {
			/* A signature line cut short: a torn tail. */
			r = HSMFS_ERR_NOTFOUND;
			err_set("checkpoint: incomplete signature line");
			goto fail;
		}
		if (ln < plen || memcmp(line, SIG_PREFIX, plen) != 0) {
			pos = save;
			break;
		}
		line += plen;
		ln -= plen;
		sp = memchr(line, ' ', ln);
		if (sp == NULL || !origin_valid(line, (size_t)(sp - line))) {
			err_set("checkpoint: bad signature line");
			goto fail;
		}
		if (c->nsigs == TLOG_SIG_MAX) {
			err_set("checkpoint: too many signatures");
			goto fail;
		}
		if ((size_t)(sp - line) != on || memcmp(line, o, on) != 0) {
			/* Signed by a key of another name: not ours to check. */
			continue;
		}
		if (util_b64_decode(sp + 1, ln - (size_t)(sp + 1 - line), &raw,
		    &rawlen) != 0 || rawlen < 5) {
			err_set("checkpoint: bad signature encoding");
			goto fail;
		}
		memcpy(c->sigs[c->nsigs].key_id, raw, 4);
		c->sigs[c->nsigs].sig_len = rawlen - 4;
		if ((c->sigs[c->nsigs].sig = malloc(rawlen - 4)) == NULL) {
			r = HSMFS_ERR_NOMEM;
			goto fail;
		}
		memcpy(c->sigs[c->nsigs].sig, raw + 4, rawlen - 4);
		c->nsigs++;
		free(raw);
		raw = NULL;
	}
	*posp = pos;
	return 0;
fail:
	free(raw);
	return r;
}

int
tlog_checkpoint_parse(const char *text, size_t len,
    struct tlog_checkpoint *cp, size_t *used)
{
	const char *l[3], *line;
	size_t n[3], pos = 0, ln, body_len;
	uint8_t *raw = NULL;
	size_t rawlen = 0;
	struct tlog_checkpoint c;
	int r = HSMFS_ERR_INVALID;

	memset(&c, 0, sizeof(c));
	*used = 0;
	for (int i = 0; i < 3; i++)
		if (!next_line(text, len, &pos, &l[i], &n[i])) {
			r = HSMFS_ERR_NOTFOUND;
			err_set("checkpoint: incomplete");
			goto out;
		}
	body_len = pos;
	if (!origin_valid(l[0], n[0])) {
		err_set("checkpoint: bad origin line");
		goto out;
	}
	if (n[1] == 0 || n[1] > 20 || (n[1] > 1 && l[1][0] == '0')) {
		err_set("checkpoint: bad tree size");
		goto out;
	}
	for (size_t i = 0; i < n[1]; i++) {
		uint64_t d;
		if (l[1][i] < '0' || l[1][i] > '9') {
			err_set("checkpoint: bad tree size");
			goto out;
		}
		d = (uint64_t)(l[1][i] - '0');
		if (c.size > (UINT64_MAX - d) / 10) {
			err_set("checkpoint: tree size overflows");
			goto out;
		}
		c.size = c.size * 10 + d;
	}
	if (util_b64_decode(l[2], n[2], &raw, &rawlen) != 0 ||
	    rawlen != TLOG_HASH_LEN) {
		err_set("checkpoint: root hash is not 32 bytes of base64");
		goto out;
	}
	memcpy(c.root, raw, TLOG_HASH_LEN);
	free(raw);
	raw = NULL;
	if (!next_line(text, len, &pos, &line, &ln)) {
		r = HSMFS_ERR_NOTFOUND;
		err_set("checkpoint: incomplete");
		goto out;
	}
	if (ln != 0) {
		err_set("checkpoint: extension lines are not accepted");
		goto out;
	}
	if ((r = parse_sigs(text, len, &pos, l[0], n[0], &c)) != 0)
		goto out;
	if (c.nsigs == 0) {
		if (pos >= len) {
			r = HSMFS_ERR_NOTFOUND;
			err_set("checkpoint: no signature yet");
		} else {
			r = HSMFS_ERR_INVALID;
			err_set("checkpoint: no signature by the origin's key");
		}
		goto out;
	}
	r = HSMFS_ERR_NOMEM;
	if ((c.origin = strndup(l[0], n[0])) == NULL ||
	    (c.text = strndup(text, pos)) == NULL)
		goto out;
	c.text_len = pos;
	c.body_len = body_len;
	*cp = c;
	memset(&c, 0, sizeof(c));
	*used = pos;
	r = 0;
out:
	free(raw);
	tlog_checkpoint_clear(&c);
	return r;
}

int
tlog_checkpoint_verify(const struct tlog_checkpoint *cp,
    EVP_PKEY *const *keys, size_t nkeys, int *which)
{
	int good = -1, r = HSMFS_ERR_BADMSG;

	for (size_t k = 0; k < nkeys; k++) {
		uint8_t id[4];
		if ((r = tlog_key_id(cp->origin, keys[k], id)) != 0)
			return r;
		for (size_t s = 0; s < cp->nsigs; s++) {
			EVP_MD_CTX *md;
			int ok;
			if (memcmp(cp->sigs[s].key_id, id, 4) != 0)
				continue;
			if ((md = EVP_MD_CTX_new()) == NULL)
				return HSMFS_ERR_NOMEM;
			ok = EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL,
			    keys[k]) == 1 &&
			    EVP_DigestVerify(md, cp->sigs[s].sig, cp->sigs[s].sig_len,
			    (const uint8_t *)cp->text, cp->body_len) == 1;
			EVP_MD_CTX_free(md);
			if (!ok) {
				ERR_clear_error();
				err_set("checkpoint %s size %" PRIu64 ": signature "
				    "by key id %02x%02x%02x%02x does not verify",
				    cp->origin, cp->size, id[0], id[1], id[2], id[3]);
				return HSMFS_ERR_BADMSG;
			}
			if (good < 0)
				good = (int)k;
		}
	}
	if (good < 0) {
		err_set("checkpoint %s size %" PRIu64 ": no signature by a "
		    "configured ObjectHistorySigner key", cp->origin, cp->size);
		return HSMFS_ERR_BADMSG;
	}
	if (which)
		*which = good;
	return 0;
}
