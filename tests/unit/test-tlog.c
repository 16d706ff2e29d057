/* Unit tests for crypto/tlog.c: RFC 6962 reference roots, the right-edge
 * tree against a naive recursive MTH, frames (good, tampered, torn) and
 * checkpoints signed through the hsm_key interface (PKCS#12 backend with
 * a software key made here), including forgeries and torn notes. */
#include "crypto/tlog.h"
#include "hsm/hsm.h"
#include "common/err.h"
#include "common/util.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

static int failures;
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK(%s) failed (%s)\n", \
	__FILE__, __LINE__, #c, err_detail()); failures++; } } while (0)

static void
unhex(const char *h, uint8_t *out, size_t *n)
{
	size_t l = strlen(h) / 2;
	for (size_t i = 0; i < l; i++)
		sscanf(h + 2 * i, "%2hhx", &out[i]);
	*n = l;
}

/* MTH straight from RFC 6962 section 2.1, for cross-checking. */
static void
naive_mth(uint8_t (*leaves)[TLOG_HASH_LEN], size_t n, uint8_t out[TLOG_HASH_LEN])
{
	size_t k = 1;
	uint8_t l[TLOG_HASH_LEN], r[TLOG_HASH_LEN];
	if (n == 1) {
		memcpy(out, leaves[0], TLOG_HASH_LEN);
		return;
	}
	while (k * 2 < n)
		k *= 2;
	naive_mth(leaves, k, l);
	naive_mth(leaves + k, n - k, r);
	tlog_node_hash(l, r, out);
}

static void
test_rfc6962_vectors(void)
{
	static const char *data[] = { "", "00", "10", "2021", "3031", "40414243",
		"5051525354555657", "606162636465666768696a6b6c6d6e6f" };
	static const char *roots[] = {
		"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		"6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
		"fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
		"aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
		"d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
		"4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
		"76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
		"ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
		"5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
	};
	struct tlog_tree t;
	uint8_t root[TLOG_HASH_LEN], leaf[16], lh[TLOG_HASH_LEN];
	char hex[65];
	size_t n;

	tlog_tree_init(&t);
	tlog_tree_root(&t, root);
	util_hex(root, TLOG_HASH_LEN, hex);
	CHECK(strcmp(hex, roots[0]) == 0);
	for (int i = 0; i < 8; i++) {
		unhex(data[i], leaf, &n);
		tlog_leaf_hash(leaf, n, lh);
		tlog_tree_append(&t, lh);
		tlog_tree_root(&t, root);
		util_hex(root, TLOG_HASH_LEN, hex);
		CHECK(strcmp(hex, roots[i + 1]) == 0);
	}
}

static void
test_tree_vs_naive(void)
{
	static uint8_t leaves[300][TLOG_HASH_LEN];
	struct tlog_tree t;
	uint8_t a[TLOG_HASH_LEN], b[TLOG_HASH_LEN];
	tlog_tree_init(&t);
	for (size_t i = 0; i < 300; i++) {
		uint8_t d[2] = { (uint8_t)i, (uint8_t)(i >> 8) };
		tlog_leaf_hash(d, 2, leaves[i]);
		tlog_tree_append(&t, leaves[i]);
		tlog_tree_root(&t, a);
		naive_mth(leaves, i + 1, b);
		CHECK(memcmp(a, b, TLOG_HASH_LEN) == 0);
		CHECK(t.size == i + 1);
	}
}

/* ---- frames ---- */

struct collect {
	size_t n;
	struct tlog_frame f[16];
};

static int
collect_cb(const struct tlog_frame *f, void *arg)
{
	struct collect *c = arg;
	if (c->n < 16)
		c->f[c->n] = *f;
	c->n++;
	return 0;
}

static void
write_frame(int fd, uint64_t index, const char *payload)
{
	struct tlog_record rec = { index, 1700000000000000ULL + index, 1000 };
	uint8_t hdr[TLOG_FRAME_HDR], lh[TLOG_LEAF_HDR], hash[TLOG_HASH_LEN];
	size_t pl = strlen(payload);
	uint8_t *leaf = malloc(TLOG_LEAF_HDR + pl);
	tlog_leaf_header(&rec, lh);
	memcpy(leaf, lh, TLOG_LEAF_HDR);
	memcpy(leaf + TLOG_LEAF_HDR, payload, pl);
	tlog_leaf_hash(leaf, TLOG_LEAF_HDR + pl, hash);
	tlog_frame_header(index, (uint32_t)(TLOG_LEAF_HDR + pl), hdr);
	CHECK(write(fd, hdr, sizeof(hdr)) == sizeof(hdr));
	CHECK(write(fd, leaf, TLOG_LEAF_HDR + pl) == (ssize_t)(TLOG_LEAF_HDR + pl));
	CHECK(write(fd, hash, sizeof(hash)) == sizeof(hash));
	free(leaf);
}

static int
tmpfile_fd(char *path)
{
	strcpy(path, "/tmp/test-tlog.XXXXXX");
	return mkstemp(path);
}

static void
test_frames(void)
{
	char path[64];
	int fd = tmpfile_fd(path);
	struct collect c = { 0 };
	off_t bad, end;
	const char *why;
	uint8_t byte;

	write_frame(fd, 0, "alpha\n");
	write_frame(fd, 1, "beta\n");
	write_frame(fd, 2, "");
	end = lseek(fd, 0, SEEK_END);
	CHECK(tlog_scan(fd, 0, 0, collect_cb, &c, &bad, &why) == 0);
	CHECK(c.n == 3 && why == NULL && bad == end);
	CHECK(c.f[1].payload_len == 5 && c.f[1].rec.uid == 1000);
	CHECK(c.f[2].payload_len == 0 && c.f[2].end == end);
	CHECK(pread(fd, &byte, 1, c.f[1].payload_offset) == 1 && byte == 'b');

	/* Resume from the middle with the right index. */
	c.n = 0;
	CHECK(tlog_scan(fd, c.f[0].end, 1, collect_cb, &c, &bad, &why) == 0);
	CHECK(c.n == 2 && why == NULL);
	/* ...and with the wrong one. */
	c.n = 0;
	CHECK(tlog_scan(fd, c.f[0].end, 5, collect_cb, &c, &bad, &why) == 0);
	CHECK(c.n == 0 && why != NULL && bad == c.f[0].end);

	/* A payload byte flipped: that frame is bad, earlier ones good. */
	struct collect g = { 0 };
	CHECK(tlog_scan(fd, 0, 0, collect_cb, &g, &bad, &why) == 0);
	byte = 'B';
	CHECK(pwrite(fd, &byte, 1, g.f[1].payload_offset) == 1);
	c.n = 0;
	CHECK(tlog_scan(fd, 0, 0, collect_cb, &c, &bad, &why) == 0);
	CHECK(c.n == 1 && why && strstr(why, "hash") && bad == g.f[1].offset);
	byte = 'b';
	CHECK(pwrite(fd, &byte, 1, g.f[1].payload_offset) == 1);

	/* A torn tail: every prefix of the last frame is recognised. */
	for (off_t cut = g.f[2].offset + 1; cut < end; cut++) {
		CHECK(ftruncate(fd, cut) == 0);
		c.n = 0;
		CHECK(tlog_scan(fd, 0, 0, collect_cb, &c, &bad, &why) == 0);
		CHECK(c.n == 2 && why != NULL && bad == g.f[2].offset);
	}
	/* Zero-filled tail (unwritten blocks after a crash). */
	CHECK(ftruncate(fd, end + 100) == 0);
	c.n = 0;
	CHECK(tlog_scan(fd, 0, 0, collect_cb, &c, &bad, &why) == 0);
	CHECK(c.n == 2 && why != NULL && bad == g.f[2].offset);
	close(fd);
	unlink(path);
}

/* ---- checkpoints ---- */

static char *
make_p12(const char *dir, const char *name, EVP_PKEY **pub)
{
	EVP_PKEY *pk = EVP_RSA_gen(2048);
	X509 *x = X509_new();
	PKCS12 *p12;
	char *path;
	FILE *f;
	X509_NAME *nm;

	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 3600);
	X509_set_pubkey(x, pk);
	nm = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC,
	    (const unsigned char *)name, -1, -1, 0);
	X509_set_issuer_name(x, nm);
	X509_sign(x, pk, EVP_sha256());
	p12 = PKCS12_create("pw", name, pk, x, NULL, 0, 0, 0, 0, 0);
	if (asprintf(&path, "%s/%s.p12", dir, name) < 0)
		abort();
	f = fopen(path, "wb");
	i2d_PKCS12_fp(f, p12);
	fclose(f);
	PKCS12_free(p12);
	X509_free(x);
	*pub = pk;
	return path;
}

static hsm_key *
open_key(const char *path, const char *name)
{
	struct hsm_key_spec spec = { .backend = HSM_BACKEND_P12, .name = name,
		.location = path, .pin = "pw", .require_cert = 1 };
	hsm_key *k = NULL;
	CHECK(hsm_key_open(&spec, &k) == 0);
	return k;
}

static void
test_checkpoints(void)
{
	char dir[] = "/tmp/test-tlog-dir.XXXXXX";
	EVP_PKEY *pub1, *pub2, *keys[2];
	hsm_key *k1, *k2, *both[2];
	char *p1, *p2, *text = NULL, *text2 = NULL, *cat;
	size_t len, len2, used;
	uint8_t root[TLOG_HASH_LEN];
	struct tlog_checkpoint cp;
	const char *origin = "hsmfs/0123abcd/history/user-42";
	int which;

	CHECK(mkdtemp(dir) != NULL);
	p1 = make_p12(dir, "v1", &pub1);
	p2 = make_p12(dir, "v2", &pub2);
	k1 = open_key(p1, "v1");
	k2 = open_key(p2, "v2");
	memset(root, 0xab, sizeof(root));

	CHECK(tlog_checkpoint_sign(origin, 17, root, &k1, 1, &text, &len) == 0);
	CHECK(strncmp(text, "hsmfs/0123abcd/history/user-42\n17\n", 34) == 0);
	CHECK(strstr(text, "\n\n\xe2\x80\x94 hsmfs/0123abcd/history/user-42 ") != NULL);
	CHECK(text[len - 1] == '\n');
	memset(&cp, 0, sizeof(cp));
	CHECK(tlog_checkpoint_parse(text, len, &cp, &used) == 0);
	CHECK(used == len && cp.size == 17 && cp.nsigs == 1);
	CHECK(memcmp(cp.root, root, 32) == 0 && strcmp(cp.origin, origin) == 0);
	keys[0] = pub2;
	keys[1] = pub1;
	CHECK(tlog_checkpoint_verify(&cp, keys, 2, &which) == 0 && which == 1);
	/* Only v2 configured: v1's signature is unknown, so nothing verifies. */
	CHECK(tlog_checkpoint_verify(&cp, keys, 1, NULL) == HSMFS_ERR_BADMSG);
	tlog_checkpoint_clear(&cp);

	/* Deterministic: the same tree signs to the same text. */
	CHECK(tlog_checkpoint_sign(origin, 17, root, &k1, 1, &text2, &len2) == 0);
	CHECK(len2 == len && memcmp(text, text2, len) == 0);
	free(text2);

	/* Tampering: size, root, origin, signature byte. */
	static const char *edits[][2] = {
		{ "\n17\n", "\n18\n" },
		{ "history/user-42\n", "history/user-43\n" },
	};
	for (size_t i = 0; i < 2; i++) {
		char *t = strdup(text), *at = strstr(t, edits[i][0]);
		memcpy(at, edits[i][1], strlen(edits[i][1]));
		memset(&cp, 0, sizeof(cp));
		int pr = tlog_checkpoint_parse(t, len, &cp, &used);
		/* A changed origin no longer matches the signature line's name. */
		CHECK(pr != 0 || tlog_checkpoint_verify(&cp, keys, 2, NULL) ==
		    HSMFS_ERR_BADMSG);
		tlog_checkpoint_clear(&cp);
		free(t);
	}
	{
		char *t = strdup(text);
		char *sig = strstr(t, "user-42 ") + 8 + 10;   /* inside the base64 */
		*sig = *sig == 'A' ? 'B' : 'A';
		memset(&cp, 0, sizeof(cp));
		CHECK(tlog_checkpoint_parse(t, len, &cp, &used) == 0);
		CHECK(tlog_checkpoint_verify(&cp, keys, 2, NULL) == HSMFS_ERR_BADMSG);
		tlog_checkpoint_clear(&cp);
		/* Root line changed (still valid base64 of 32 bytes). */
		free(t);
		t = strdup(text);
		char *rl = strchr(strchr(t, '\n') + 1, '\n') + 1;
		rl[0] = rl[0] == 'q' ? 'r' : 'q';
		memset(&cp, 0, sizeof(cp));
		CHECK(tlog_checkpoint_parse(t, len, &cp, &used) == 0);
		CHECK(tlog_checkpoint_verify(&cp, keys, 2, NULL) == HSMFS_ERR_BADMSG);
		tlog_checkpoint_clear(&cp);
		free(t);
	}
	/* Strict parsing. */
	static const char *bad[] = {
		"o\n017\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n\n\xe2\x80\x94 o AAAAAAA=\n",
		"o\n17\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\next\n\n\xe2\x80\x94 o AAAAAAA=\n",
		"o\n17\nq6urq6ur\n\n\xe2\x80\x94 o AAAAAAA=\n",
		"o o\n17\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n\n\xe2\x80\x94 o AAAAAAA=\n",
		"o\n1x\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n\n\xe2\x80\x94 o AAAAAAA=\n",
		"o\n17\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n\nx\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&cp, 0, sizeof(cp));
		CHECK(tlog_checkpoint_parse(bad[i], strlen(bad[i]), &cp, &used) ==
		    HSMFS_ERR_INVALID);
	}
	/* Torn notes: every strict prefix is "incomplete", never accepted. */
	for (size_t cut = 0; cut < len; cut++) {
		memset(&cp, 0, sizeof(cp));
		int pr = tlog_checkpoint_parse(text, cut, &cp, &used);
		CHECK(pr == HSMFS_ERR_NOTFOUND);
		if (pr == 0)
			tlog_checkpoint_clear(&cp);
	}

	/* Rotation: two keys co-sign; each alone verifies. Concatenated notes
	 * parse one after another. */
	both[0] = k2;
	both[1] = k1;
	CHECK(tlog_checkpoint_sign(origin, 18, root, both, 2, &text2, &len2) == 0);
	CHECK(asprintf(&cat, "%s%s", text, text2) > 0);
	memset(&cp, 0, sizeof(cp));
	CHECK(tlog_checkpoint_parse(cat, len + len2, &cp, &used) == 0 &&
	    used == len && cp.size == 17);
	tlog_checkpoint_clear(&cp);
	memset(&cp, 0, sizeof(cp));
	CHECK(tlog_checkpoint_parse(cat + len, len2, &cp, &used) == 0 &&
	    used == len2 && cp.size == 18 && cp.nsigs == 2);
	CHECK(tlog_checkpoint_verify(&cp, keys, 1, &which) == 0 && which == 0);
	CHECK(tlog_checkpoint_verify(&cp, keys + 1, 1, &which) == 0);
	tlog_checkpoint_clear(&cp);
	free(cat);
	free(text2);
	free(text);

	/* Key id is the Sigstore/C2SP one: recompute independently. */
	{
		uint8_t id[4], md[32];
		unsigned char *der = NULL;
		int dl = i2d_PUBKEY(pub1, &der);
		size_t ol = strlen(origin), al = strlen("PKIX-RSA-PKCS#1v1.5");
		uint8_t *buf = malloc(ol + 2 + al + (size_t)dl);
		memcpy(buf, origin, ol);
		buf[ol] = 0x0a;
		buf[ol + 1] = 0xff;
		memcpy(buf + ol + 2, "PKIX-RSA-PKCS#1v1.5", al);
		memcpy(buf + ol + 2 + al, der, (size_t)dl);
		EVP_Digest(buf, ol + 2 + al + (size_t)dl, md, NULL, EVP_sha256(), NULL);
		CHECK(tlog_key_id(origin, pub1, id) == 0 && memcmp(id, md, 4) == 0);
		free(buf);
		OPENSSL_free(der);
	}

	hsm_key_free(k1);
	hsm_key_free(k2);
	EVP_PKEY_free(pub1);
	EVP_PKEY_free(pub2);
	unlink(p1);
	unlink(p2);
	free(p1);
	free(p2);
	rmdir(dir);
}

/* ---- committed fixtures (tests/data/history, made by a real mount with a
 * throwaway key whose private half was discarded) ---- */

/* $HSMFS_SRC/tests/data/history/NAME, else relative to this source file
 * as the compiler saw it (meson runs tests from the build directory). */
static void
fixture_path(const char *name, char *path, size_t n)
{
	const char *root = getenv("HSMFS_SRC");
	const char *src = __FILE__, *cut = strstr(src, "unit/test-tlog.c");
	if (root)
		snprintf(path, n, "%s/tests/data/history/%s", root, name);
	else
		snprintf(path, n, "%.*sdata/history/%s", cut ? (int)(cut - src) : 0,
		    src, name);
}

static char *
fixture(const char *name, size_t *len)
{
	char path[1024], *text = NULL;
	fixture_path(name, path, sizeof(path));
	if (util_read_file(path, 1 << 20, &text, len) != 0) {
		fprintf(stderr, "fixture %s: %s\n", path, err_detail());
		failures++;
		return NULL;
	}
	return text;
}

static void
test_fixtures(void)
{
	size_t jl, pl, fl, used;
	char *j = fixture("journal", &jl), *pem = fixture("signer.pem", &pl);
	char *forged = fixture("journal-forged-size", &fl);
	struct collect c = { 0 };
	struct tlog_checkpoint cp;
	struct tlog_tree t;
	uint8_t root[TLOG_HASH_LEN];
	char hex[65], *b64;
	const char *why;
	off_t bad;
	X509 *x = NULL;
	BIO *b;
	int fd;

	if (j == NULL || pem == NULL || forged == NULL)
		goto out;
	b = BIO_new_mem_buf(pem, (int)pl);
	x = PEM_read_bio_X509(b, NULL, NULL, NULL);
	BIO_free(b);
	CHECK(x != NULL);
	if (x == NULL)
		goto out;
	EVP_PKEY *pub = X509_get0_pubkey(x);

	/* The object file: 4 frames whose leaf hashes are the journal's. */
	{
		char path[1024];
		fixture_path("user-42.log", path, sizeof(path));
		fd = open(path, O_RDONLY);
		CHECK(fd >= 0);
		CHECK(tlog_scan(fd, 0, 0, collect_cb, &c, &bad, &why) == 0);
		CHECK(c.n == 4 && why == NULL);
		close(fd);
	}
	tlog_tree_init(&t);
	for (size_t i = 0; i < c.n && i < 16; i++) {
		util_hex(c.f[i].leaf_hash, TLOG_HASH_LEN, hex);
		CHECK(strstr(j, hex) != NULL);
		tlog_tree_append(&t, c.f[i].leaf_hash);
	}
	tlog_tree_root(&t, root);
	b64 = util_b64_encode(root, TLOG_HASH_LEN);
	/* Known answer, also in the committed journal's checkpoint. */
	CHECK(b64 && strcmp(b64, "bYA5eK3ku9MoUtRIXcpGzxllQfzLmK/eoSxRgeEofFc=") == 0);
	free(b64);

	memset(&cp, 0, sizeof(cp));
	CHECK(tlog_checkpoint_parse(strstr(j, "\n\n") + 2,
	    jl - (size_t)(strstr(j, "\n\n") + 2 - j), &cp, &used) == 0);
	CHECK(cp.size == 4 && memcmp(cp.root, root, TLOG_HASH_LEN) == 0);
	CHECK(tlog_checkpoint_verify(&cp, &pub, 1, NULL) == 0);
	tlog_checkpoint_clear(&cp);

	/* Forged: shorter history with a matching root, the old signature. */
	memset(&cp, 0, sizeof(cp));
	CHECK(tlog_checkpoint_parse(strstr(forged, "\n\n") + 2,
	    fl - (size_t)(strstr(forged, "\n\n") + 2 - forged), &cp, &used) == 0);
	CHECK(cp.size == 3);
	CHECK(tlog_checkpoint_verify(&cp, &pub, 1, NULL) == HSMFS_ERR_BADMSG);
	tlog_checkpoint_clear(&cp);
out:
	X509_free(x);
	free(j);
	free(pem);
	free(forged);
}

int
main(void)
{
	test_rfc6962_vectors();
	test_tree_vs_naive();
	test_frames();
	test_checkpoints();
	test_fixtures();
	if (failures) {
		fprintf(stderr, "test-tlog: %d failure(s)\n", failures);
		return 1;
	}
	printf("test-tlog: ok\n");
	return 0;
}
