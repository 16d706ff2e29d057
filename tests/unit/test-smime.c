/* Unit tests for crypto/smime.c: the message checks (named cases), the
 * MIME preparation, and S/MIME signatures verified by OpenSSL's own CMS
 * code, with a software key opened through the PKCS#12 backend. */
#include "crypto/smime.h"
#include "hsm/hsm.h"
#include "common/err.h"
#include "hsm/hsm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/pkcs12.h>
#include <openssl/x509v3.h>

static int failures, checks;

#define CHECK(cond, ...) do {                                   \
	checks++;                                               \
	if (!(cond)) {                                          \
		failures++;                                     \
		fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
		fprintf(stderr, __VA_ARGS__);                   \
		fprintf(stderr, " [%s]\n", err_detail());       \
	}                                                       \
} while (0)

static X509 *the_cert;

/* A throwaway RSA key and self-signed certificate with an e-mail SAN,
 * written as a PKCS#12 file and opened like a configured P12 key. */
static hsm_key *
make_key(char *path, size_t size)
{
	EVP_PKEY *pk = EVP_RSA_gen(2048);
	X509 *x = X509_new();
	X509_NAME *nm;
	X509V3_CTX ctx;
	X509_EXTENSION *ext;
	PKCS12 *p12;
	FILE *f;
	int fd;
	hsm_key *k = NULL;
	struct hsm_key_spec spec = { 0 };

	if (pk == NULL || x == NULL)
		return NULL;
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 42);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 3600L * 24);
	X509_set_pubkey(x, pk);
	nm = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC,
	    (const unsigned char *)"hsmfs mail test", -1, -1, 0);
	X509_set_issuer_name(x, nm);
	X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_subject_alt_name,
	    "email:sender@example.org");
	X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_ext_key_usage, "emailProtection");
	X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	if (!X509_sign(x, pk, EVP_sha256()))
		return NULL;
	p12 = PKCS12_create("pw", "mail", pk, x, NULL, 0, 0, 0, 0, 0);
	snprintf(path, size, "/tmp/test-smime-XXXXXX");
	if ((fd = mkstemp(path)) < 0 || (f = fdopen(fd, "wb")) == NULL)
		return NULL;
	i2d_PKCS12_fp(f, p12);
	fclose(f);
	PKCS12_free(p12);
	spec.backend = HSM_BACKEND_P12;
	spec.name = "mailTest";
	spec.location = path;
	spec.pin = "pw";
	spec.require_cert = 1;
	if (hsm_key_open(&spec, &k) != 0)
		k = NULL;
	the_cert = x;
	EVP_PKEY_free(pk);
	return k;
}

static int
check_str(const char *m, struct smime_msg *out)
{
	err_clear();
	return smime_check(m, strlen(m), out);
}

static void
test_check_valid(void)
{
	struct smime_msg m;
	const char *msg =
	    "From: \"Sender, The\" <sender@example.org>\r\n"
	    "To: Alice <alice@example.org>, bob@example.org (Bob)\r\n"
	    "Cc: team: carol@example.org, \"dave x\"@example.org;,\r\n"
	    "  Eve <@relay.example:eve@example.org>\r\n"
	    "Bcc: hidden@example.org, ALICE@example.org\r\n"
	    "Subject: hello\r\n"
	    "\r\n"
	    "body\r\n";
	int r = check_str(msg, &m);
	CHECK(r == 0, "valid message rejected: %d", r);
	if (r != 0)
		return;
	CHECK(strcmp(m.from, "sender@example.org") == 0, "from=%s", m.from);
	CHECK(m.nrcpts == 6, "nrcpts=%zu", m.nrcpts);
	if (m.nrcpts == 6) {
		CHECK(strcmp(m.rcpts[0], "alice@example.org") == 0, "%s", m.rcpts[0]);
		CHECK(strcmp(m.rcpts[1], "bob@example.org") == 0, "%s", m.rcpts[1]);
		CHECK(strcmp(m.rcpts[2], "carol@example.org") == 0, "%s", m.rcpts[2]);
		CHECK(strcmp(m.rcpts[3], "\"dave x\"@example.org") == 0, "%s",
		    m.rcpts[3]);
		CHECK(strcmp(m.rcpts[4], "eve@example.org") == 0, "%s", m.rcpts[4]);
		CHECK(strcmp(m.rcpts[5], "hidden@example.org") == 0, "%s", m.rcpts[5]);
	}
	CHECK(m.nbcc == 1, "nbcc=%zu (duplicate Bcc of a To must not count)", m.nbcc);
	CHECK(m.msgid == NULL && !m.has_date, "no Date/Message-ID expected");
	smime_msg_clear(&m);

	/* LF line endings, Bcc only, undisclosed group. */
	r = check_str("From: a@b.example\nTo: undisclosed-recipients:;\n"
	    "Bcc: c@d.example\nMessage-ID:  <x@y>\nDate: Mon, 1 Jan 2024 00:00:00 "
	    "+0000\n\nhi\n", &m);
	CHECK(r == 0 && m.nrcpts == 1 && m.nbcc == 1, "bcc-only message: %d", r);
	CHECK(r == 0 && m.msgid && strcmp(m.msgid, "<x@y>") == 0, "msgid");
	CHECK(r == 0 && m.has_date, "date");
	smime_msg_clear(&m);

	/* Empty body after the blank line is a message. */
	r = check_str("From: a@b.example\nTo: c@d.example\n\n", &m);
	CHECK(r == 0, "empty body rejected");
	smime_msg_clear(&m);
}

struct bad_case {
	const char *name;
	const char *msg;
	size_t len;            /* 0: strlen */
	const char *reason;    /* substring of err_detail() */
};

static void
test_check_invalid(void)
{
	static const char garbage[] = "\x7f" "ELF\x02\x01\x01\0\0\0\0\0\0\0\0\0"
	    "\x03\0>\0\x01\0\0\0\x10\x10\0\0\0\0\0\0\n\n\x89PNG";
	char *longhdr = malloc(1100), *big = NULL;
	struct smime_msg m;
	struct bad_case cases[] = {
		{ "empty", "", 0, "empty" },
		{ "no-from", "To: a@b.example\n\nx\n", 0, "no From" },
		{ "two-from-addrs", "From: a@b.example, c@d.example\nTo: e@f.example"
		    "\n\nx\n", 0, "exactly one" },
		{ "two-from-fields", "From: a@b.example\nFrom: c@d.example\nTo: "
		    "e@f.example\n\nx\n", 0, "appears 2 times" },
		{ "no-rcpt", "From: a@b.example\nSubject: x\n\nbody\n", 0,
		    "no recipient" },
		{ "empty-group-only", "From: a@b.example\nTo: list:;\n\nx\n", 0,
		    "no recipient" },
		{ "no-blank-line", "From: a@b.example\nTo: c@d.example\nSubject: x\n",
		    0, "no blank line" },
		{ "body-without-blank", "From: a@b.example\nTo: c@d.example\nHello "
		    "there\n", 0, "not a header field" },
		{ "binary", garbage, sizeof(garbage) - 1, "" },
		{ "non-ascii-header", "From: a@b.example\nTo: c@d.example\nSubject: "
		    "caf\xc3\xa9\n\nx\n", 0, "non-ASCII" },
		{ "bad-address", "From: a@b.example\nTo: not an address\n\nx\n", 0,
		    "is not an address" },
		{ "smtp-injection", "From: a@b.example\nTo: <c@d.example> SIZE=1>\n\nx\n",
		    0, "" },
		{ "angle-injection", "From: a@b.example\nTo: <c@d.example>x>@e\n\nx\n",
		    0, "" },
		{ "unterminated-quote", "From: a@b.example\nTo: \"x <c@d.example>\n\n"
		    "x\n", 0, "unterminated" },
		{ "continuation-first", " From: a@b.example\nTo: c@d.example\n\nx\n",
		    0, "white space" },
		{ "bad-message-id", "From: a@b.example\nTo: c@d.example\nMessage-ID: "
		    "nope\n\nx\n", 0, "Message-ID" },
		{ "long-header", NULL, 0, "998" },
		{ "too-big", NULL, 0, "larger than" },
	};

	memcpy(longhdr, "From: a@b.example\nTo: c@d.example\nX-Long: ", 42);
	memset(longhdr + 42, 'x', 1000);
	memcpy(longhdr + 1042, "\n\nbody\n", 8);
	cases[16].msg = longhdr;
	big = malloc(SMIME_MAX_MSG + 2);
	memset(big, 'a', SMIME_MAX_MSG + 1);
	big[SMIME_MAX_MSG + 1] = '\0';
	cases[17].msg = big;
	cases[17].len = SMIME_MAX_MSG + 1;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t len = cases[i].len ? cases[i].len : strlen(cases[i].msg);
		int r;
		err_clear();
		r = smime_check(cases[i].msg, len, &m);
		CHECK(r == HSMFS_ERR_INVALID, "case %s: expected EINVAL, got %d",
		    cases[i].name, r);
		CHECK(strstr(err_detail(), cases[i].reason) != NULL &&
		    err_detail()[0] != '\0', "case %s: reason", cases[i].name);
		if (r == 0)
			smime_msg_clear(&m);
	}
	free(longhdr);
	free(big);
}

static int
all_crlf(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r'))
			return 0;
		if (s[i] == '\r' && (i + 1 >= n || s[i + 1] != '\n'))
			return 0;
	}
	return 1;
}

static void
test_prepare(void)
{
	char *o = NULL, *in = NULL;
	size_t ol, il;
	int r;
	const char *m1 =
	    "From: sender@example.org\nTo: a@b.example\nBcc: secret@b.example\n"
	    "Resent-Bcc: secret2@b.example\n"
	    "Subject: caf\n"
	    "MIME-Version: 1.0\n\n"
	    "Gr\xc3\xbc\xc3\x9f" "e = 100%\nline two with trailing space \n";
	r = smime_prepare(m1, strlen(m1), 1700000000, "<id1@example.org>", &o, &ol,
	    &in, &il);
	CHECK(r == 0, "prepare utf-8");
	if (r == 0) {
		CHECK(strstr(o, "Bcc") == NULL && strstr(o, "secret") == NULL,
		    "Bcc left in outer headers:\n%s", o);
		CHECK(strstr(o, "MIME-Version") == NULL, "MIME-Version must be left to "
		    "the multipart/signed wrapper");
		CHECK(strstr(o, "Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n") != NULL,
		    "Date: %s", o);
		CHECK(strstr(o, "Message-ID: <id1@example.org>\r\n") != NULL, "msgid");
		CHECK(all_crlf(o, ol) && all_crlf(in, il), "CRLF");
		CHECK(strncmp(in, "Content-Type: text/plain; charset=utf-8\r\n"
		    "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
		    "Gr=C3=BC=C3=9Fe =3D 100%\r\nline two with trailing space=20\r\n",
		    il) == 0 && il == strlen(in), "qp body:\n%s", in);
	}
	free(o);
	free(in);
	o = in = NULL;

	/* Existing Date/Message-ID kept; 7-bit body passes unchanged (CRLF). */
	const char *m2 = "From: a@b.example\nTo: c@d.example\nDate: Mon, 1 Jan 2024 "
	    "00:00:00 +0000\nMessage-ID: <keep@b.example>\nContent-Type: text/plain;"
	    "\n charset=us-ascii\n\nhello\n.\nend";
	r = smime_prepare(m2, strlen(m2), 1700000000, "<new@x.example>", &o, &ol,
	    &in, &il);
	CHECK(r == 0, "prepare 7bit");
	if (r == 0) {
		CHECK(strstr(o, "new@x") == NULL && strstr(o, "<keep@b.example>"),
		    "existing Message-ID replaced");
		CHECK(strstr(o, "Date: Mon, 1 Jan 2024") && !strstr(o, "2023"), "date");
		CHECK(strcmp(in, "Content-Type: text/plain;\r\n charset=us-ascii\r\n"
		    "\r\nhello\r\n.\r\nend") == 0, "7bit inner:\n%s", in);
	}
	free(o);
	free(in);
	o = in = NULL;

	/* Binary (not UTF-8) without Content-Type: base64 octet-stream. */
	const char m3[] = "From: a@b.example\nTo: c@d.example\n\n\xff\x00\x01\n\r";
	r = smime_prepare(m3, sizeof(m3) - 1, 0, "<n@x.example>", &o, &ol, &in, &il);
	CHECK(r == 0, "prepare binary");
	if (r == 0)
		CHECK(strcmp(in, "Content-Type: application/octet-stream\r\n"
		    "Content-Transfer-Encoding: base64\r\n\r\n/wABCg0=\r\n") == 0,
		    "base64 inner:\n%s", in);
	free(o);
	free(in);
	o = in = NULL;

	/* Long line in a 7-bit text body: QP with soft breaks <= 76. */
	char *m4 = malloc(3000);
	strcpy(m4, "From: a@b.example\nTo: c@d.example\n\n");
	memset(m4 + strlen(m4), 'y', 1500);
	m4[35 + 1500] = '\0';
	r = smime_prepare(m4, strlen(m4), 0, "<n@x.example>", &o, &ol, &in, &il);
	CHECK(r == 0 && strstr(in, "quoted-printable") != NULL, "long line QP");
	if (r == 0) {
		size_t col = 0, maxcol = 0, ys = 0;
		const char *b = strstr(in, "\r\n\r\n");
		for (size_t i = 0; i < il; i++) {
			if (in[i] == '\n')
				col = 0;
			else if (in[i] != '\r' && ++col > maxcol)
				maxcol = col;
		}
		for (; b && *b; b++)
			ys += *b == 'y';
		CHECK(maxcol <= 76 && ys == 1500, "maxcol=%zu ys=%zu", maxcol, ys);
	}
	free(m4);
	free(o);
	free(in);
	o = in = NULL;

	/* multipart with 8-bit content cannot be encoded as a whole. */
	const char *m5 = "From: a@b.example\nTo: c@d.example\nContent-Type: "
	    "multipart/mixed; boundary=x\n\n--x\n\n\xc3\xa9\n--x--\n";
	err_clear();
	r = smime_prepare(m5, strlen(m5), 0, "<n@x.example>", &o, &ol, &in, &il);
	CHECK(r == HSMFS_ERR_INVALID && strstr(err_detail(), "multipart"),
	    "multipart 8bit: %d", r);
	/* base64-declared body with raw 8-bit bytes is a lie. */
	const char *m6 = "From: a@b.example\nTo: c@d.example\nContent-Transfer-"
	    "Encoding: base64\n\n\xc3\xa9\n";
	err_clear();
	r = smime_prepare(m6, strlen(m6), 0, "<n@x.example>", &o, &ol, &in, &il);
	CHECK(r == HSMFS_ERR_INVALID && strstr(err_detail(), "base64"), "b64 lie");
}

static void
test_msgid(void)
{
	char a[128], b[128];
	CHECK(smime_msgid_new("x@mail.example.org", a, sizeof(a)) == 0 &&
	    smime_msgid_new("x@mail.example.org", b, sizeof(b)) == 0, "msgid_new");
	CHECK(strcmp(a, b) != 0, "two Message-IDs are equal");
	CHECK(a[0] == '<' && strstr(a, "@mail.example.org>") != NULL, "%s", a);
	CHECK(smime_msgid_new("x@[10.0.0.1]", a, sizeof(a)) == 0 &&
	    strstr(a, "@hsmfs.invalid>"), "%s", a);
}

/* Verify out with OpenSSL as a receiver would; return the content. */
static char *
verify(const uint8_t *out, size_t outlen, size_t *clen)
{
	BIO *in = BIO_new_mem_buf(out, (int)outlen), *dcont = NULL;
	BIO *res = BIO_new(BIO_s_mem());
	X509_STORE *st = X509_STORE_new();
	CMS_ContentInfo *cms;
	char *data, *copy = NULL;
	long n;
	X509_STORE_add_cert(st, the_cert);
	cms = SMIME_read_CMS(in, &dcont);
	if (cms == NULL) {
		ERR_print_errors_fp(stderr);
		goto out;
	}
	{
		STACK_OF(X509) *certs = CMS_get1_certs(cms);
		CHECK(certs && sk_X509_num(certs) == 1 &&
		    X509_cmp(sk_X509_value(certs, 0), the_cert) == 0,
		    "signer certificate not included");
		sk_X509_pop_free(certs, X509_free);
	}
	if (CMS_verify(cms, NULL, st, dcont, res, CMS_BINARY) != 1) {
		ERR_clear_error();
		goto out;
	}
	n = BIO_get_mem_data(res, &data);
	copy = malloc((size_t)n + 1);
	memcpy(copy, data, (size_t)n);
	copy[n] = '\0';
	*clen = (size_t)n;
out:
	CMS_ContentInfo_free(cms);
	BIO_free(dcont);
	BIO_free(in);
	BIO_free(res);
	X509_STORE_free(st);
	return copy;
}

static void
test_sign(hsm_key *k)
{
	const char *msg =
	    "From: Sender <sender@example.org>\nTo: a@b.example\n"
	    "Bcc: hidden@b.example\nSubject: signed\n\n"
	    "Sch\xc3\xb6ne Gr\xc3\xbc\xc3\x9f" "e\nzweite Zeile\n";
	uint8_t *out = NULL;
	size_t outlen = 0, clen = 0;
	char *content, *o = NULL, *in = NULL;
	size_t ol, il;
	int r;

	r = smime_sign(k, EVP_sha256(), msg, strlen(msg), 1700000000,
	    "<sig@example.org>", &out, &outlen);
	CHECK(r == 0, "smime_sign: %d", r);
	if (r != 0)
		return;
	CHECK(all_crlf((char *)out, outlen), "wire form has a bare LF or CR");
	CHECK(memmem(out, outlen, "micalg=\"sha-256\"", 16) != NULL, "micalg");
	CHECK(memmem(out, outlen, "protocol=\"application/pkcs7-signature\"", 38),
	    "protocol");
	CHECK(memmem(out, outlen, "multipart/signed", 16), "multipart/signed");
	CHECK(memmem(out, outlen, "hidden", 6) == NULL, "Bcc address leaked");
	CHECK(memmem(out, outlen, "\r\nMIME-Version: 1.0\r\n", 21) != NULL, "mime");
	for (size_t i = 0; i < outlen; i++)
		if (out[i] >= 0x80) {
			CHECK(0, "8-bit byte at %zu on the wire", i);
			break;
		}
	content = verify(out, outlen, &clen);
	CHECK(content != NULL, "OpenSSL CMS_verify rejected the signature");
	if (content) {
		smime_prepare(msg, strlen(msg), 1700000000, "<sig@example.org>", &o, &ol,
		    &in, &il);
		CHECK(clen == il && memcmp(content, in, il) == 0,
		    "signed content differs from the prepared inner part");
		free(o);
		free(in);
	}
	free(content);

	/* A single changed byte in the signed part must not verify. */
	{
		uint8_t *p = memmem(out, outlen, "zweite", 6);
		CHECK(p != NULL, "QP text should keep plain words");
		if (p) {
			p[0] = 'Z';
			content = verify(out, outlen, &clen);
			CHECK(content == NULL, "tampered message verified");
			free(content);
			ERR_clear_error();
		}
	}
	free(out);

	/* SHA-384 descriptor: micalg follows. */
	r = smime_sign(k, EVP_sha384(), msg, strlen(msg), 0, "<s2@example.org>",
	    &out, &outlen);
	CHECK(r == 0 && memmem(out, outlen, "micalg=\"sha-384\"", 16), "sha384");
	if (r == 0) {
		content = verify(out, outlen, &clen);
		CHECK(content != NULL, "sha-384 signature does not verify");
		free(content);
		free(out);
	}

	/* Invalid messages are refused before any signing. */
	err_clear();
	r = smime_sign(k, EVP_sha256(), "To: x@y.example\n\nx", 18, 0, "<a@b>",
	    &out, &outlen);
	CHECK(r == HSMFS_ERR_INVALID, "sign of invalid message: %d", r);
}

static void
test_crlf(void)
{
	uint8_t *o;
	size_t n;
	CHECK(smime_crlf("a\nb\r\nc\rd", 8, &o, &n) == 0 && n == 10 &&
	    memcmp(o, "a\r\nb\r\nc\r\nd", 10) == 0, "crlf");
	free(o);
}

int
main(void)
{
	char path[64];
	hsm_key *k;

	test_check_valid();
	test_check_invalid();
	test_prepare();
	test_msgid();
	test_crlf();
	k = make_key(path, sizeof(path));
	CHECK(k != NULL, "cannot make the P12 test key");
	if (k) {
		test_sign(k);
		hsm_key_free(k);
		unlink(path);
	}
	X509_free(the_cert);
	printf("%d checks, %d failures\n", checks, failures);
	return failures ? 1 : 0;
}
