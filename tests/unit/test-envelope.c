/* Unit tests of the NX02 envelope (crypto/envelope.c) with software keys
 * made here and opened through the PKCS#12 backend, i.e. the same hsm_key
 * interface the daemon uses with a token. Covers round trips, the
 * authenticity proof (every byte position changed, check recomputed like a
 * forger would: never a plaintext), truncation/extension, rewrap. */
#include "crypto/envelope.h"
#include "hsm/hsm.h"
#include "common/err.h"
#include "common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/pkcs12.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

static int failures, checks;

#define CHECK(cond, ...) do {                                          \
	checks++;                                                       \
	if (!(cond)) {                                                  \
		failures++;                                             \
		fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);    \
		fprintf(stderr, __VA_ARGS__);                           \
		fprintf(stderr, " [%s]\n", err_detail());               \
	}                                                               \
} while (0)

static char tmpdir[] = "/tmp/test-envelope.XXXXXX";

/* A 2048-bit RSA key with a self-signed certificate in a .p12 file,
 * opened through hsm_key_open like a configured P12 key. */
static hsm_key *
make_key(const char *name, int bits)
{
	EVP_PKEY *pk = EVP_RSA_gen((unsigned)bits);
	X509 *x = X509_new();
	X509_NAME *nm;
	PKCS12 *p12;
	char path[256];
	FILE *f;
	hsm_key *k = NULL;
	struct hsm_key_spec spec = {0};

	if (pk == NULL || x == NULL)
		abort();
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 3600);
	X509_set_pubkey(x, pk);
	nm = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC,
	    (const unsigned char *)name, -1, -1, 0);
	X509_set_issuer_name(x, nm);
	if (X509_sign(x, pk, EVP_sha256()) <= 0)
		abort();
	p12 = PKCS12_create("pw", name, pk, x, NULL, 0, 0, 0, 0, 0);
	snprintf(path, sizeof(path), "%s/%s.p12", tmpdir, name);
	if (p12 == NULL || (f = fopen(path, "wb")) == NULL)
		abort();
	i2d_PKCS12_fp(f, p12);
	fclose(f);
	spec.backend = HSM_BACKEND_P12;
	spec.name = name;
	spec.location = path;
	spec.pin = "pw";
	spec.require_cert = 1;
	if (hsm_key_open(&spec, &k) != 0) {
		fprintf(stderr, "cannot open %s: %s\n", path, err_detail());
		abort();
	}
	PKCS12_free(p12);
	X509_free(x);
	EVP_PKEY_free(pk);
	unlink(path);
	return k;
}

static struct engine_descriptor
desc(int version, int size, const EVP_MD *md, const char *key_name)
{
	struct engine_descriptor d;
	memset(&d, 0, sizeof(d));
	d.name = (char *)"EncryptedFields";
	d.version = version;
	d.alg = ENGINE_ALG_AES_CBC_PKCS7;
	d.algorithm = (char *)"AES/CBC/PKCS7Padding";
	d.size = size;
	d.result = (char *)"NX02";
	d.key_name = (char *)key_name;
	d.oaep_md = md;
	return d;
}

static X509 *
cert_pub(hsm_key *k)
{
	return hsm_key_cert(k);
}

/* Seal, go through the text form, parse, open: the same bytes back. */
static void
round_trip(hsm_key *k, const struct engine_descriptor *d, const uint8_t *pt,
    size_t len, const char *what)
{
	uint8_t *bin = NULL, *out = NULL;
	size_t bl = 0, ol = 0, tl = 0;
	char *text;
	struct envelope env;
	struct envelope_header h;
	int r;

	r = envelope_seal(d, cert_pub(k), pt, len, &bin, &bl);
	CHECK(r == 0, "%s: seal %d", what, r);
	if (r != 0)
		return;
	text = envelope_to_text(bin, bl, &tl);
	CHECK(text && strncmp(text, "NX02:", 5) == 0 && strlen(text) == tl &&
	    strchr(text, '\n') == NULL, "%s: text form", what);
	r = envelope_peek_text_header(text, tl, &h);
	CHECK(r == 0 && h.plain_len == len && h.version == (uint32_t)d->version,
	    "%s: header peek", what);
	r = envelope_parse_text(text, tl, &env);
	CHECK(r == 0, "%s: parse %d", what, r);
	if (r == 0) {
		r = envelope_open(&env, k, &out, &ol);
		CHECK(r == 0 && ol == len && (len == 0 || memcmp(out, pt, len) == 0),
		    "%s: open %d, %zu bytes", what, r, ol);
		if (r == 0)
			envelope_free_plain(out, ol);
		CHECK(env.ct_len % 16 == 0 && env.ct_len > len,
		    "%s: ciphertext length", what);
		CHECK(memmem(env.bin, env.bin_len, pt, len) == NULL || len < 4,
		    "%s: plaintext visible in the envelope", what);
		envelope_clear(&env);
	}
	free(text);
	free(bin);
}

static void
test_round_trips(hsm_key *k)
{
	const EVP_MD *mds[] = {EVP_sha1(), EVP_sha256(), EVP_sha384(), EVP_sha512()};
	int sizes[] = {128, 192, 256};
	size_t big = 100 * 1024;
	uint8_t *bin = malloc(big);
	const char *utf8 = "p\xc3\xa4ssw\xc3\xb6rd \xe2\x82\xac";

	RAND_bytes(bin, (int)big);
	bin[0] = 0;
	bin[17] = 0;
	for (size_t i = 0; i < 4; i++)
		for (size_t j = 0; j < 3; j++) {
			struct engine_descriptor d = desc(1, sizes[j], mds[i], "k1");
			round_trip(k, &d, (const uint8_t *)"", 0, "empty");
			round_trip(k, &d, (const uint8_t *)"x", 1, "one byte");
			round_trip(k, &d, bin, 15, "15 bytes");
			round_trip(k, &d, bin, 16, "16 bytes (full padding block)");
		}
	{
		struct engine_descriptor d = desc(3, 256, EVP_sha384(), "k1");
		round_trip(k, &d, bin, big, "100 KiB binary");
		round_trip(k, &d, (const uint8_t *)utf8, strlen(utf8), "UTF-8");
		round_trip(k, &d, (const uint8_t *)"a\0b\0", 4, "NUL bytes");
	}
	{
		struct engine_descriptor d = desc(1, 256, EVP_sha256(), "k1");
		uint8_t *o = NULL;
		size_t ol = 0;
		CHECK(envelope_seal(&d, cert_pub(k), bin, ENVELOPE_MAX_PLAINTEXT + 1,
		    &o, &ol) == HSMFS_ERR_TOOBIG, "over the size limit");
	}
	free(bin);
}

/* Two seals of the same value differ (fresh key and IV each time). */
static void
test_fresh(hsm_key *k)
{
	struct engine_descriptor d = desc(1, 256, EVP_sha256(), "k1");
	uint8_t *a = NULL, *b = NULL;
	size_t al = 0, bl = 0;
	envelope_seal(&d, cert_pub(k), (const uint8_t *)"same", 4, &a, &al);
	envelope_seal(&d, cert_pub(k), (const uint8_t *)"same", 4, &b, &bl);
	CHECK(a && b && al == bl && memcmp(a + 50, b + 50, 16) != 0 &&
	    memcmp(a + 68, b + 68, al - 68) != 0, "fresh IV and key per seal");
	free(a);
	free(b);
}

static void
recompute_check(uint8_t *b, size_t n)
{
	EVP_Digest(b, n - 32, b + n - 32, NULL, EVP_sha256(), NULL);
}

/* The authenticity proof. Plain damage of any byte: the check fails
 * (EBADMSG). A forger who also recomputes the unkeyed check: parse may
 * refuse the structure (EINVAL) but if it parses, open fails EBADMSG. */
static void
test_flips(hsm_key *k)
{
	struct engine_descriptor d = desc(1, 256, EVP_sha384(), "k1");
	const uint8_t msg[] = "flip me, binary \x00\x01\xff";
	uint8_t *bin = NULL;
	size_t bl = 0;
	int plain_bad = 0, forged_bad = 0, forged_structure = 0, leaked = 0;
	int masks[] = {0x01, 0x80, 0xff};

	if (envelope_seal(&d, cert_pub(k), msg, sizeof(msg), &bin, &bl) != 0) {
		CHECK(0, "seal for flips");
		return;
	}
	for (size_t i = 0; i < bl; i++) {
		for (size_t m = 0; m < 3; m++) {
			uint8_t *c = malloc(bl), *pt = NULL;
			size_t ptl = 0;
			struct envelope env;
			int r;

			memcpy(c, bin, bl);
			c[i] ^= (uint8_t)masks[m];
			r = envelope_parse(c, bl, &env);   /* takes c */
			if (r == HSMFS_ERR_BADMSG)
				plain_bad++;
			else
				CHECK(0, "byte %zu ^%02x: parse gave %d, not EBADMSG",
				    i, masks[m], r);
			if (r == 0)
				envelope_clear(&env);
			if (i >= bl - 32)
				continue;   /* the check itself: nothing to forge */
			c = malloc(bl);
			memcpy(c, bin, bl);
			c[i] ^= (uint8_t)masks[m];
			recompute_check(c, bl);
			r = envelope_parse(c, bl, &env);
			if (r == HSMFS_ERR_INVALID) {
				forged_structure++;
				continue;
			}
			CHECK(r == 0, "forged byte %zu: parse %d", i, r);
			if (r != 0)
				continue;
			r = envelope_open(&env, k, &pt, &ptl);
			if (r == HSMFS_ERR_BADMSG)
				forged_bad++;
			else {
				leaked++;
				CHECK(0, "forged byte %zu ^%02x: open gave %d", i,
				    masks[m], r);
			}
			if (r == 0)
				envelope_free_plain(pt, ptl);
			envelope_clear(&env);
		}
	}
	printf("flips: %zu bytes x 3 masks: %d EBADMSG by check; forged: %d "
	    "EBADMSG by MAC/unwrap, %d refused structure, %d opened\n", bl,
	    plain_bad, forged_bad, forged_structure, leaked);
	CHECK(plain_bad == (int)bl * 3, "every damaged byte detected");
	CHECK(leaked == 0, "no forged envelope opened");
	CHECK(forged_bad > (int)(bl - 68 - 64) * 3, "MAC covers body");
	free(bin);
}

static void
test_truncate_extend(hsm_key *k)
{
	struct engine_descriptor d = desc(2, 128, EVP_sha256(), "k1");
	uint8_t *bin = NULL;
	size_t bl = 0, tl = 0;
	char *text;
	int bad = 0;

	envelope_seal(&d, cert_pub(k), (const uint8_t *)"truncate", 8, &bin, &bl);
	for (size_t n = 0; n < bl; n++) {
		uint8_t *c = malloc(n ? n : 1);
		struct envelope env;
		memcpy(c, bin, n);
		if (envelope_parse(c, n, &env) == 0) {
			bad++;
			envelope_clear(&env);
		}
	}
	CHECK(bad == 0, "%d truncations accepted", bad);
	for (size_t extra = 1; extra <= 64; extra++) {
		uint8_t *c = malloc(bl + extra);
		struct envelope env;
		memcpy(c, bin, bl);
		memset(c + bl, (int)extra, extra);
		if (extra == 32)   /* a forger appending a matching check */
			EVP_Digest(c, bl, c + bl, NULL, EVP_sha256(), NULL);
		if (envelope_parse(c, bl + extra, &env) == 0) {
			bad++;
			envelope_clear(&env);
		}
	}
	CHECK(bad == 0, "%d extensions accepted", bad);
	text = envelope_to_text(bin, bl, &tl);
	for (size_t n = 0; n < tl; n++) {
		struct envelope env;
		if (envelope_parse_text(text, n, &env) == 0) {
			bad++;
			envelope_clear(&env);
		}
	}
	CHECK(bad == 0, "%d text truncations accepted", bad);
	{
		const char *suffix[] = {"\n", "\r\n"};
		const char *bad_suffix[] = {"\n\n", " ", "A", "==", "\nNX02:", "\t"};
		for (size_t i = 0; i < 2; i++) {
			char *t = malloc(tl + 8);
			struct envelope env;
			if (t == NULL)
				abort();
			snprintf(t, tl + 8, "%s%s", text, suffix[i]);
			CHECK(envelope_parse_text(t, strlen(t), &env) == 0,
			    "line ending %zu accepted", i);
			envelope_clear(&env);
			free(t);
		}
		for (size_t i = 0; i < 6; i++) {
			char *t = malloc(tl + 8);
			struct envelope env;
			if (t == NULL)
				abort();
			snprintf(t, tl + 8, "%s%s", text, bad_suffix[i]);
			CHECK(envelope_parse_text(t, strlen(t), &env) != 0,
			    "suffix %zu rejected", i);
			free(t);
		}
	}
	{
		const char *garbage[] = {"", "NX02:", "NX01:AAAA", "hello world",
		    "NX02:!!!!", "NX02:AAAA", "nx02:AAAA"};
		for (size_t i = 0; i < 7; i++) {
			struct envelope env;
			CHECK(envelope_parse_text(garbage[i], strlen(garbage[i]), &env) ==
			    HSMFS_ERR_INVALID, "garbage %zu -> EINVAL", i);
		}
	}
	free(text);
	free(bin);
}

static void
test_wrong_key(hsm_key *k1, hsm_key *k2)
{
	struct engine_descriptor d = desc(1, 256, EVP_sha256(), "k1");
	uint8_t *bin = NULL, *pt = NULL;
	size_t bl = 0, ptl = 0;
	struct envelope env;
	envelope_seal(&d, cert_pub(k1), (const uint8_t *)"secret", 6, &bin, &bl);
	CHECK(envelope_parse(bin, bl, &env) == 0, "parse");
	CHECK(envelope_open(&env, k2, &pt, &ptl) == HSMFS_ERR_BADMSG,
	    "another key's envelope is EBADMSG");
	CHECK(strstr(err_detail(), "authentication") != NULL, "one message");
	envelope_clear(&env);
}

static void
test_rewrap(hsm_key *k1, hsm_key *k2)
{
	struct engine_descriptor d1 = desc(1, 256, EVP_sha256(), "k1");
	struct engine_descriptor d2 = desc(2, 256, EVP_sha384(), "k2");
	struct engine_descriptor d3 = desc(3, 128, EVP_sha512(), "k1");
	const uint8_t msg[] = "rotate me";
	uint8_t *bin = NULL, *nb = NULL, *nb3 = NULL, *pt = NULL, id2[32];
	size_t bl = 0, nl = 0, nl3 = 0, ptl = 0;
	struct envelope e1, e2, e3;

	envelope_seal(&d1, cert_pub(k1), msg, sizeof(msg), &bin, &bl);
	CHECK(envelope_parse(bin, bl, &e1) == 0, "parse v1");
	CHECK(envelope_rewrap(&e1, k1, &d2, cert_pub(k2), &nb, &nl) == 0,
	    "rewrap to v2");
	CHECK(envelope_parse(nb, nl, &e2) == 0, "parse v2");
	envelope_key_id(cert_pub(k2), id2);
	CHECK(e2.h.version == 2 && envelope_is_current(&e2.h, &d2, id2) &&
	    !envelope_is_current(&e1.h, &d2, id2), "v2 header");
	CHECK(e2.ct_len == e1.ct_len && memcmp(e2.ct, e1.ct, e1.ct_len) == 0,
	    "ciphertext kept when only the wrap changes");
	CHECK(envelope_open(&e2, k2, &pt, &ptl) == 0 && ptl == sizeof(msg) &&
	    memcmp(pt, msg, ptl) == 0, "v2 opens with k2");
	envelope_free_plain(pt, ptl);
	CHECK(envelope_open(&e2, k1, &pt, &ptl) == HSMFS_ERR_BADMSG,
	    "v2 does not open with k1");
	/* AES size changes: re-encrypted. */
	CHECK(envelope_rewrap(&e2, k2, &d3, cert_pub(k1), &nb3, &nl3) == 0,
	    "rewrap to AES-128");
	CHECK(envelope_parse(nb3, nl3, &e3) == 0 && e3.h.aes_len == 16 &&
	    e3.h.version == 3 && memcmp(e3.h.iv, e2.h.iv, 16) != 0,
	    "re-encrypted with a fresh key and IV");
	CHECK(envelope_open(&e3, k1, &pt, &ptl) == 0 && ptl == sizeof(msg) &&
	    memcmp(pt, msg, ptl) == 0, "v3 opens");
	envelope_free_plain(pt, ptl);
	/* A tampered (forged-check) envelope is not laundered by rewrap. */
	{
		uint8_t *c = malloc(bl), *o = NULL;
		size_t ol = 0;
		struct envelope ef;
		memcpy(c, e1.bin, bl);
		c[bl - 70] ^= 1;   /* ciphertext */
		recompute_check(c, bl);
		CHECK(envelope_parse(c, bl, &ef) == 0, "forged parses");
		CHECK(envelope_rewrap(&ef, k1, &d2, cert_pub(k2), &o, &ol) ==
		    HSMFS_ERR_BADMSG, "forged not rewrapped");
		envelope_clear(&ef);
	}
	envelope_clear(&e1);
	envelope_clear(&e2);
	envelope_clear(&e3);
}

static void
test_descriptor_check(void)
{
	struct engine_descriptor d = desc(1, 256, EVP_sha256(), "k1");
	CHECK(envelope_descriptor_check(&d) == 0, "good descriptor");
	d.result = (char *)"NX01";
	CHECK(envelope_descriptor_check(&d) == HSMFS_ERR_CONFIG &&
	    strstr(err_detail(), "result") != NULL, "unknown result refused");
	d = desc(1, 512, EVP_sha256(), "k1");
	CHECK(envelope_descriptor_check(&d) == HSMFS_ERR_CONFIG, "size 512 refused");
	d = desc(1, 256, EVP_md5(), "k1");
	CHECK(envelope_descriptor_check(&d) == HSMFS_ERR_CONFIG, "MD5 OAEP refused");
}

int
main(void)
{
	hsm_key *k1, *k2;

	if (mkdtemp(tmpdir) == NULL)
		return 99;
	k1 = make_key("k1", 2048);
	k2 = make_key("k2", 3072);
	rmdir(tmpdir);
	test_descriptor_check();
	test_round_trips(k1);
	test_fresh(k1);
	test_flips(k1);
	test_truncate_extend(k1);
	test_wrong_key(k1, k2);
	test_rewrap(k1, k2);
	hsm_key_free(k1);
	hsm_key_free(k2);
	printf("%d checks, %d failures\n", checks, failures);
	return failures ? 1 : 0;
}
