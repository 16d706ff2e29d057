/* Unit tests for crypto/jar_sign.c and crypto/jar_verify.c with a
 * software (PKCS#12) key issued by a throwaway CA made with the openssl
 * CLI: sign, verify, and named tamper and hostile-zip cases. Set TEST_JAR_KEEP=1 to keep the temp dir. */
#include "crypto/jar.h"
#include "hsm/hsm.h"
#include "common/err.h"
#include "hsm/hsm.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zip.h>
#include <openssl/pem.h>

static char dir[256];
static int failures, ran;
static hsm_key *key;
static X509_STORE *store;
static X509 *ca_cert;

#define CHECK(c, ...) do { if (!(c)) { failures++; \
	fprintf(stderr, "FAIL %s:%d: ", __func__, __LINE__); \
	fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)

static void
sh(const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	if (system(cmd) != 0) {
		fprintf(stderr, "command failed: %s\n", cmd);
		exit(1);
	}
}

static const char *
P(const char *name)
{
	static char buf[8][512];
	static int i;
	i = (i + 1) % 8;
	snprintf(buf[i], sizeof(buf[i]), "%s/%s", dir, name);
	return buf[i];
}

/* A zip with a stored and a deflated entry, a nested folder, an empty
 * file, a long name and a UTF-8 name. */
static void
make_zip(const char *path)
{
	int ze;
	zip_t *z = zip_open(path, ZIP_CREATE | ZIP_TRUNCATE, &ze);
	static char big[200000];
	static const char *longname = "config/a-very-long-directory-name-that-goes-on/"
	    "and-on-and-on-beyond-seventy-two-bytes/settings.properties";
	zip_int64_t i;
	for (size_t k = 0; k < sizeof(big); k++)
		big[k] = (char)('a' + (k * 7 + k / 13) % 26);
	if (z == NULL)
		exit(1);
	zip_dir_add(z, "config/", ZIP_FL_ENC_UTF_8);
	i = zip_file_add(z, "config/stored.txt",
	    zip_source_buffer(z, "stored content\n", 15, 0), ZIP_FL_ENC_UTF_8);
	zip_set_file_compression(z, (zip_uint64_t)i, ZIP_CM_STORE, 0);
	i = zip_file_add(z, "config/deflated.txt",
	    zip_source_buffer(z, big, sizeof(big), 0), ZIP_FL_ENC_UTF_8);
	zip_set_file_compression(z, (zip_uint64_t)i, ZIP_CM_DEFLATE, 9);
	zip_file_add(z, "empty", zip_source_buffer(z, "", 0, 0), ZIP_FL_ENC_UTF_8);
	zip_file_add(z, longname, zip_source_buffer(z, "x=1\n", 4, 0),
	    ZIP_FL_ENC_UTF_8);
	zip_file_add(z, "r\xc3\xa9glages/\xe6\x97\xa5\xe6\x9c\xac-\xc3\xa9\xc3\xa9"
	    "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
	    "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
	    "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9.txt",
	    zip_source_buffer(z, "utf8\n", 5, 0), ZIP_FL_ENC_UTF_8);
	if (zip_close(z) < 0)
		exit(1);
}

static int
verify(const char *path, int with_cert, int with_store, struct jar_verdict *v)
{
	X509 *certs[1] = {hsm_key_cert(key)};
	struct jar_trust t = {certs, with_cert ? 1 : 0, with_store ? store : NULL};
	return jar_verify(path, &t, v);
}

static void
expect_invalid(const char *path, const char *why, const char *fn)
{
	struct jar_verdict v;
	int r = verify(path, 1, 1, &v);
	ran++;
	if (r != HSMFS_ERR_BADMSG || v.valid || strstr(v.reason, why) == NULL) {
		failures++;
		fprintf(stderr, "FAIL %s: %s: want invalid '%s', got r=%d reason='%s'\n",
		    fn, path, why, r, v.reason);
	} else {
		printf("ok %s: %s\n", fn, v.reason);
	}
}

static void
sign(const char *in, const char *out, const EVP_MD *md)
{
	struct jar_sign_opts o = {key, md, "configZipSignerCertificateV1", NULL, NULL};
	int r;
	if (jar_chain_from_store(hsm_key_cert(key), store, &o.chain) != 0 ||
	    sk_X509_num(o.chain) != 1)
		exit(1);
	r = jar_sign(in, out, &o);
	sk_X509_pop_free(o.chain, X509_free);
	if (r != 0) {
		fprintf(stderr, "jar_sign %s: %s\n", in, err_detail());
		exit(1);
	}
}

static void
test_sign_verify(void)
{
	struct jar_verdict v;
	int r;
	make_zip(P("in.zip"));
	sign(P("in.zip"), P("signed.zip"), EVP_sha256());
	r = verify(P("signed.zip"), 1, 0, &v);
	CHECK(r == 0 && v.valid, "configured cert: %s", v.reason);
	CHECK(strstr(v.signer, "CN=zip signer") != NULL, "signer %s", v.signer);
	r = verify(P("signed.zip"), 0, 1, &v);
	CHECK(r == 0 && v.valid, "truststore: %s", v.reason);
	r = verify(P("signed.zip"), 0, 0, &v);
	CHECK(r == HSMFS_ERR_BADMSG && strstr(v.reason, "no truststore"),
	    "no trust: %s", v.reason);
	/* Entries are copied raw: byte-identical contents, order kept. */
	sh("cd %s && rm -rf x1 x2 && mkdir x1 x2 && cd x1 && unzip -qq ../in.zip && "
	    "cd ../x2 && unzip -qq ../signed.zip && rm -rf META-INF && cd .. && "
	    "diff -r x1 x2", dir);
	sh("cd %s && unzip -Z1 signed.zip | head -3 | tr '\\n' ' ' | "
	    "grep -qx 'META-INF/MANIFEST.MF META-INF/CONFIGZI.SF META-INF/CONFIGZI.RSA '",
	    dir);
	/* Signed twice: our own signature is replaced, not duplicated. */
	sign(P("signed.zip"), P("resigned.zip"), EVP_sha384());
	r = verify(P("resigned.zip"), 1, 0, &v);
	CHECK(r == 0 && v.valid, "re-signed: %s", v.reason);
	sh("unzip -p %s META-INF/MANIFEST.MF | grep -q SHA-384-Digest", P("resigned.zip"));
	sh("test $(unzip -Z1 %s | grep -c CONFIGZI) = 2", P("resigned.zip"));
	/* In place (the spool path of /sign-out): no entry copied where the
	 * filesystem can insert a range; a plain copy elsewhere. */
	{
		struct jar_sign_opts o = {key, EVP_sha256(), "configZipSignerCertificateV1",
		    NULL, NULL};
		int in_place = -1;
		sh("cp %s %s && rm -f %s", P("in.zip"), P("inplace.zip"), P("inplace-out.zip"));
		CHECK(jar_sign_ex(P("inplace.zip"), P("inplace-out.zip"), &o, &in_place) == 0,
		    "%s", err_detail());
		printf("ok in place: %s\n", in_place == 1 ? "yes (range inserted)" :
		    "no (copied)");
		r = verify(in_place == 1 ? P("inplace.zip") : P("inplace-out.zip"), 1, 0, &v);
		CHECK(r == 0 && v.valid, "in place: %s", v.reason);
		CHECK(in_place != 1 || access(P("inplace-out.zip"), F_OK) != 0,
		    "in place also wrote the copy");
		if (in_place == 1)
			sh("cd %s && rm -rf x3 && mkdir x3 && cd x3 && unzip -qq ../inplace.zip && "
			    "rm -rf META-INF && cd .. && diff -r x1 x3 && "
			    "unzip -Z1 inplace.zip | head -3 | tr '\\n' ' ' | grep -qx "
			    "'META-INF/MANIFEST.MF META-INF/CONFIGZI.SF META-INF/CONFIGZI.RSA '", dir);
	}
	/* Another signer's signature survives ours (same digest). */
	{
		struct jar_sign_opts o = {key, EVP_sha256(), "other", NULL, NULL};
		CHECK(jar_sign(P("in.zip"), P("other.zip"), &o) == 0, "%s", err_detail());
		sign(P("other.zip"), P("two.zip"), EVP_sha256());
		r = verify(P("two.zip"), 1, 0, &v);
		CHECK(r == 0 && v.valid, "two signers: %s", v.reason);
		sh("test $(unzip -Z1 %s | grep -c -e OTHER -e CONFIGZI) = 4", P("two.zip"));
	}
	ran++;
}

/* Rewrite one entry of a signed zip through libzip (keeps the rest). */
static void
replace_entry(const char *path, const char *name, const char *data)
{
	int ze;
	zip_t *z = zip_open(path, 0, &ze);
	zip_int64_t i = zip_name_locate(z, name, 0);
	zip_source_t *s = zip_source_buffer(z, data, strlen(data), 0);
	if (i < 0 ? zip_file_add(z, name, s, 0) < 0 :
	    zip_file_replace(z, (zip_uint64_t)i, s, 0) < 0)
		exit(1);
	if (zip_close(z) < 0)
		exit(1);
}

static void
delete_entry(const char *path, const char *name)
{
	int ze;
	zip_t *z = zip_open(path, 0, &ze);
	zip_int64_t i = zip_name_locate(z, name, 0);
	if (i < 0 || zip_delete(z, (zip_uint64_t)i) < 0 || zip_close(z) < 0)
		exit(1);
}

static void
test_tamper(void)
{
	sh("cp %s %s", P("signed.zip"), P("t1.zip"));
	replace_entry(P("t1.zip"), "config/stored.txt", "evil\n");
	expect_invalid(P("t1.zip"), "modified", __func__);

	sh("cp %s %s", P("signed.zip"), P("t2.zip"));
	replace_entry(P("t2.zip"), "added.txt", "new\n");
	expect_invalid(P("t2.zip"), "not signed", __func__);

	sh("cp %s %s", P("signed.zip"), P("t3.zip"));
	delete_entry(P("t3.zip"), "empty");
	expect_invalid(P("t3.zip"), "listed in the manifest but missing", __func__);

	sh("cp %s %s", P("signed.zip"), P("t4.zip"));
	delete_entry(P("t4.zip"), "META-INF/CONFIGZI.RSA");
	expect_invalid(P("t4.zip"), "no signature block", __func__);

	sh("cp %s %s && cd %s && unzip -p t5.zip META-INF/CONFIGZI.SF | "
	    "sed 's/Created-By: hsmfs/Created-By: evil /' > sf.txt", P("signed.zip"),
	    P("t5.zip"), dir);
	{
		char *buf = NULL;
		size_t n = 0;
		FILE *f = fopen(P("sf.txt"), "rb");
		char tmp[65536];
		n = fread(tmp, 1, sizeof(tmp) - 1, f);
		fclose(f);
		tmp[n] = '\0';
		buf = tmp;
		replace_entry(P("t5.zip"), "META-INF/CONFIGZI.SF", buf);
	}
	expect_invalid(P("t5.zip"), "does not verify", __func__);

	make_zip(P("unsigned.zip"));
	expect_invalid(P("unsigned.zip"), "unsigned", __func__);

	sh("printf 'GARBAGE!' > %s && cat %s >> %s", P("pre.zip"), P("signed.zip"),
	    P("pre.zip"));
	expect_invalid(P("pre.zip"), "", __func__);
	sh("cp %s %s && printf 'TRAILER' >> %s", P("signed.zip"), P("post.zip"),
	    P("post.zip"));
	expect_invalid(P("post.zip"), "garbage appended", __func__);
}

/* Hostile structures made byte by byte with Python's zipfile. */
static void
test_hostile(void)
{
	struct jar_sign_opts o = {key, EVP_sha256(), "zip", NULL, NULL};
	int r;
	sh("cd %s && /usr/bin/python3 - <<'EOF'\n"
	    "import zipfile, zlib, struct\n"
	    "def mk(name, entries):\n"
	    "    with zipfile.ZipFile(name, 'w') as z:\n"
	    "        for n, d in entries: z.writestr(n, d)\n"
	    "mk('dup.zip', [('a.txt', b'1'), ('b.txt', b'2')])\n"
	    "b = open('dup.zip','rb').read().replace(b'b.txt', b'a.txt')\n"
	    "open('dup.zip','wb').write(b)\n"
	    "mk('trav.zip', [('../evil.txt', b'x')])\n"
	    "mk('abs.zip', [('/etc/evil', b'x')])\n"
	    "mk('bs.zip', [('a\\\\b.txt', b'x')])\n"
	    "mk('lcm.zip', [('a.txt', b'1'), ('b.txt', b'2')])\n"
	    "b = bytearray(open('lcm.zip','rb').read()); i = b.index(b'b.txt'); b[i] = ord('c')\n"
	    "open('lcm.zip','wb').write(bytes(b))\n"
	    "# bomb: 64 MiB of zeros declared as 1000 bytes\n"
	    "zi = zipfile.ZipInfo('bomb.bin'); zi.compress_type = zipfile.ZIP_DEFLATED\n"
	    "data = b'\\0' * (64 << 20)\n"
	    "with zipfile.ZipFile('bomb.zip', 'w') as z: z.writestr(zi, data)\n"
	    "b = bytearray(open('bomb.zip','rb').read())\n"
	    "for sig, off in ((b'PK\\x03\\x04', 22), (b'PK\\x01\\x02', 24)):\n"
	    "    i = b.index(sig); b[i+off:i+off+4] = struct.pack('<I', 1000)\n"
	    "open('bomb.zip','wb').write(bytes(b))\n"
	    "with zipfile.ZipFile('ratio.zip', 'w') as z: z.writestr(zi, data)\n"
	    "mk('crc.zip', [('a.txt', b'hello world')])\n"
	    "b = bytearray(open('crc.zip','rb').read()); i = b.index(b'hello'); b[i] = ord('j')\n"
	    "open('crc.zip','wb').write(bytes(b))\n"
	    "open('notzip.zip','wb').write(b'just some text\\n' * 10)\n"
	    "mk('dirdata.zip', [('dir/', b'hidden bytes')])\n"
	    "EOF", dir);
	expect_invalid(P("dup.zip"), "duplicate entry name", __func__);
	expect_invalid(P("trav.zip"), "'..'", __func__);
	expect_invalid(P("abs.zip"), "absolute", __func__);
	expect_invalid(P("bs.zip"), "backslash", __func__);
	expect_invalid(P("lcm.zip"), "local and central header names differ", __func__);
	expect_invalid(P("ratio.zip"), "compression ratio", __func__);
	expect_invalid(P("notzip.zip"), "not a zip", __func__);
	expect_invalid(P("dirdata.zip"), "directory entry with data", __func__);
	/* Signing refuses the same input with EINVAL and a reason. */
	r = jar_sign(P("bomb.zip"), P("out.zip"), &o);
	CHECK(r == HSMFS_ERR_INVALID && strstr(err_detail(), "beyond its declared size"),
	    "bomb sign: %d %s", r, err_detail());
	r = jar_sign(P("crc.zip"), P("out.zip"), &o);
	CHECK(r == HSMFS_ERR_INVALID && strstr(err_detail(), "CRC"), "crc sign: %d %s",
	    r, err_detail());
	r = jar_sign(P("notzip.zip"), P("out.zip"), &o);
	CHECK(r == HSMFS_ERR_INVALID && strstr(err_detail(), "not a zip"),
	    "notzip sign: %d %s", r, err_detail());
	r = jar_sign(P("trav.zip"), P("out.zip"), &o);
	CHECK(r == HSMFS_ERR_INVALID, "trav sign: %d %s", r, err_detail());
	CHECK(access(P("out.zip"), F_OK) != 0, "output written for bad input");
	ran++;
}

/* 66,000 entries: more than a plain end record can count, so the libzip
 * writer (zip64) is used instead of the raw one; also checks that name
 * lookups do not go quadratic. */
static void
test_many_entries(void)
{
	struct jar_verdict v;
	int r;
	sh("cd %s && /usr/bin/python3 -c \"\n"
	    "import zipfile\n"
	    "with zipfile.ZipFile('many.zip', 'w') as z:\n"
	    "    for i in range(66000): z.writestr('d%%d/f%%d.txt' %% (i %% 100, i), str(i))\n"
	    "\"", dir);
	sign(P("many.zip"), P("many-signed.zip"), EVP_sha256());
	r = verify(P("many-signed.zip"), 1, 0, &v);
	CHECK(r == 0 && v.valid, "many: %s", v.reason);
	sh("/usr/bin/python3 -c \"\n"
	    "import zipfile, sys\n"
	    "z = zipfile.ZipFile(sys.argv[1])\n"
	    "n = z.namelist()\n"
	    "assert len(n) == 66003 and n[0] == 'META-INF/MANIFEST.MF', len(n)\n"
	    "assert z.read('d5/f105.txt') == b'105'\n"
	    "\" %s", P("many-signed.zip"));
	ran++;
}

static hsm_key *
open_p12(const char *name)
{
	struct hsm_key_spec spec = {0};
	hsm_key *k = NULL;
	spec.backend = HSM_BACKEND_P12;
	spec.name = name;
	spec.location = P(name);
	spec.pin = "pw";
	spec.require_cert = 1;
	if (hsm_key_open(&spec, &k) != 0) {
		fprintf(stderr, "open key %s: %s\n", name, err_detail());
		exit(1);
	}
	return k;
}

static time_t
not_after(X509 *x)
{
	struct tm tm;
	if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) != 1)
		exit(1);
	return timegm(&tm);
}

/* Issue 12 class 7 and the verdict's lifetime: a CA-issued certificate
 * whose extendedKeyUsage lacks codeSigning does not sign; the expiry is
 * the earliest notAfter of the chain (a signer outliving its CA expires
 * with the CA). */
static void
test_eku_and_chain_expiry(void)
{
	static const char *const leaves[][2] = {
		{"tls.p12", "extendedKeyUsage=serverAuth"},
		{"code.p12", "extendedKeyUsage=codeSigning"},
		{"any.p12", "extendedKeyUsage=anyExtendedKeyUsage"},
		{"long.p12", "subjectKeyIdentifier=hash"}};
	struct jar_verdict v;
	int r;
	for (size_t i = 0; i < 4; i++) {
		struct jar_sign_opts o = {NULL, EVP_sha256(), "leaf", NULL, NULL};
		struct jar_trust t = {NULL, 0, store};
		char out[64];
		sh("cd %s && openssl req -newkey rsa:2048 -nodes -keyout l.key -out l.csr "
		    "-subj '/CN=leaf %zu' 2>/dev/null && "
		    "printf 'keyUsage=critical,digitalSignature\n%s\n' > lext && "
		    "openssl x509 -req -in l.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
		    "-days %d -extfile lext -out l.pem 2>/dev/null && "
		    "openssl pkcs12 -export -inkey l.key -in l.pem -out %s -passout pass:pw "
		    "-name %s", dir, i, leaves[i][1], i == 3 ? 400 : 20, leaves[i][0],
		    leaves[i][0]);
		o.key = open_p12(leaves[i][0]);
		snprintf(out, sizeof(out), "eku-%zu.zip", i);
		if (jar_sign(P("in.zip"), P(out), &o) != 0) {
			fprintf(stderr, "jar_sign: %s\n", err_detail());
			exit(1);
		}
		r = jar_verify(P(out), &t, &v);
		if (i == 0) {
			CHECK(r == HSMFS_ERR_BADMSG && !v.valid &&
			    strstr(v.reason, "does not include codeSigning") != NULL,
			    "TLS server certificate: r=%d %s", r, v.reason);
		} else {
			time_t leaf = not_after(hsm_key_cert(o.key)), ca = not_after(ca_cert);
			CHECK(r == 0 && v.valid, "%s: %s", leaves[i][0], v.reason);
			CHECK(v.not_after == (leaf < ca ? leaf : ca),
			    "%s: not_after %lld, leaf %lld, CA %lld", leaves[i][0],
			    (long long)v.not_after, (long long)leaf, (long long)ca);
			if (i == 3)
				CHECK(leaf > ca && v.not_after == ca, "long-lived leaf");
		}
		hsm_key_free(o.key);
	}
	ran++;
}

static void
test_signer_name(void)
{
	char n[9];
	jar_signer_name("configZipSignerCertificateV1", n);
	CHECK(strcmp(n, "CONFIGZI") == 0, "%s", n);
	jar_signer_name("a.b", n);
	CHECK(strcmp(n, "A_B") == 0, "%s", n);
	ran++;
}

static void
setup(void)
{
	struct hsm_key_spec spec = {0};
	FILE *f;
	snprintf(dir, sizeof(dir), "/tmp/test-jar.XXXXXX");
	if (mkdtemp(dir) == NULL)
		exit(1);
	sh("cd %s && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem "
	    "-subj '/CN=test CA' -days 30 -addext basicConstraints=critical,CA:TRUE "
	    "-addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null && "
	    "openssl req -newkey rsa:2048 -nodes -keyout s.key -out s.csr "
	    "-subj '/O=hsmfs test/CN=zip signer' 2>/dev/null && "
	    "printf 'keyUsage=critical,digitalSignature\\n' > ext && "
	    "openssl x509 -req -in s.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
	    "-days 30 -extfile ext -out s.pem 2>/dev/null && "
	    "openssl pkcs12 -export -inkey s.key -in s.pem -out s.p12 -passout pass:pw "
	    "-name zip", dir);
	spec.backend = HSM_BACKEND_P12;
	spec.name = "zip";
	spec.location = P("s.p12");
	spec.pin = "pw";
	spec.require_cert = 1;
	if (hsm_key_open(&spec, &key) != 0) {
		fprintf(stderr, "open key: %s\n", err_detail());
		exit(1);
	}
	if (jar_trust_load_pem(P("ca.pem"), &store) != 0)
		exit(1);
	f = fopen(P("ca.pem"), "r");
	ca_cert = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
}

int
main(void)
{
	setup();
	test_signer_name();
	test_sign_verify();
	test_tamper();
	test_hostile();
	test_many_entries();
	test_eku_and_chain_expiry();
	hsm_key_free(key);
	X509_STORE_free(store);
	X509_free(ca_cert);
	if (getenv("TEST_JAR_KEEP"))
		printf("kept %s\n", dir);
	else
		sh("rm -rf %s", dir);
	printf("%d groups, %d failures\n", ran, failures);
	return failures ? 1 : 0;
}
