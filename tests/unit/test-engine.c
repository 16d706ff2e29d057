/* Unit tests of crypto/engine.c: engineSignEncrypt.xml parsing, every
 * validation error (code, FILE:LINE:, attribute named), spelling
 * normalisation, entity/DTD refusal, PIN sources and the scramble. */
#include "crypto/engine.h"
#include "crypto/keyring_int.h"
#include "crypto/pin.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *cur_case = "setup";
static int failures;
static char tmpdir[PATH_MAX];

#define CHECK(c) do { \
	if (!(c)) { \
		fprintf(stderr, "FAIL [%s] %s:%d: %s\n", cur_case, __FILE__, \
		    __LINE__, #c); \
		failures++; \
	} \
} while (0)

#define CHECK_DETAIL(c) do { \
	if (!(c)) { \
		fprintf(stderr, "FAIL [%s] %s:%d: %s\n    detail: %s\n", \
		    cur_case, __FILE__, __LINE__, #c, err_detail()); \
		failures++; \
	} \
} while (0)

/* ---- helpers ---- */

static void
write_file(const char *path, const char *data, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
	size_t n = strlen(data);
	if (fd < 0 || write(fd, data, n) != (ssize_t)n) {
		fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
		exit(2);
	}
	fchmod(fd, mode);
	close(fd);
}

/* Writes xml to TMP/<case>.xml (mode 0600) and returns the path. */
static const char *
cfg_path(const char *xml)
{
	static char path[PATH_MAX + 256];
	char name[128];
	size_t j = 0;
	for (const char *c = cur_case; *c && j < sizeof(name) - 1; c++)
		name[j++] = (*c == '/' || *c == ' ') ? '_' : *c;
	name[j] = '\0';
	snprintf(path, sizeof(path), "%s/%s.xml", tmpdir, name);
	write_file(path, xml, 0600);
	return path;
}

/* Line (1-based) of the first occurrence of needle in text, 0 if none. */
static int
line_of(const char *text, const char *needle)
{
	const char *at = strstr(text, needle);
	int line = 1;
	if (at == NULL)
		return 0;
	for (const char *c = text; c < at; c++)
		if (*c == '\n')
			line++;
	return line;
}

/* stderr redirected to a file while a warning is expected. */
static int saved_stderr = -1;
static char capture_path[PATH_MAX + 32];

static void
capture_begin(void)
{
	int fd;
	snprintf(capture_path, sizeof(capture_path), "%s/stderr.txt", tmpdir);
	fflush(stderr);
	saved_stderr = dup(2);
	fd = open(capture_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	dup2(fd, 2);
	close(fd);
}

static char *
capture_end(void)
{
	static char buf[16384];
	ssize_t n;
	int fd;
	fflush(stderr);
	dup2(saved_stderr, 2);
	close(saved_stderr);
	fd = open(capture_path, O_RDONLY);
	n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
	buf[n > 0 ? n : 0] = '\0';
	if (fd >= 0)
		close(fd);
	return buf;
}

/* Loads xml, expects HSMFS_ERR_CONFIG with "PATH:LINE:" where LINE is
 * the line of needle, and word in the detail. */
static void
expect_err(const char *name, const char *xml, const char *needle,
    const char *word)
{
	struct engine *e = NULL;
	const char *path;
	char prefix[PATH_MAX + 128];
	int r, line;

	cur_case = name;
	path = cfg_path(xml);
	line = line_of(xml, needle);
	CHECK(line > 0);
	err_clear();
	r = engine_load(path, &e);
	CHECK_DETAIL(r == HSMFS_ERR_CONFIG);
	CHECK(e == NULL);
	snprintf(prefix, sizeof(prefix), "%s:%d: ", path, line);
	CHECK_DETAIL(strncmp(err_detail(), prefix, strlen(prefix)) == 0);
	CHECK_DETAIL(strstr(err_detail(), word) != NULL);
	if (r == 0)
		engine_free(e);
}

static struct engine *
load_ok(const char *xml)
{
	struct engine *e = NULL;
	int r = engine_load(cfg_path(xml), &e);
	CHECK_DETAIL(r == 0);
	return r == 0 ? e : NULL;
}

/* ---- building blocks ---- */

#define HEAD "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
#define DESC_FIELDS(v, key, cipher) \
	"<descriptor name=\"EncryptedFields\" version=\"" v "\">\n" \
	"  <type algorithm=\"AES/CBC/PKCS7Padding\" size=\"256\" result=\"NX02\"\n" \
	"        key=\"" key "\" asymCipher=\"" cipher "\"/>\n" \
	"</descriptor>\n"
#define DESC_ZIP(key) \
	"<descriptor name=\"ConfigZipSigner\" version=\"1\">\n" \
	"  <type algorithm=\"SHA-256\" key=\"" key "\"/>\n" \
	"</descriptor>\n"
#define KEY_P12(name) \
	"<key name=\"" name "\">\n" \
	"  <type name=\"P12\" locationValue=\"/nonexistent/" name ".p12\" pin=\"p12-Secret-77\"/>\n" \
	"</key>\n"
#define DOC(descs, keys) HEAD "<engineSignEncrypt>\n<descriptors>\n" descs \
	"</descriptors>\n<keys>\n" keys "</keys>\n</engineSignEncrypt>\n"
#define OAEP384 "RSA/ECB/OAEPWithSHA-384AndMGF1Padding"

/* ---- cases ---- */

static void
case_spec_example(void)
{
	char xml[8192], *scr, *pin = NULL;
	struct engine *e;
	const struct engine_descriptor *d;
	const struct engine_key *k;
	struct hsm_key_spec spec;

	cur_case = "spec-example";
	scr = pin_scramble("1234");
	CHECK(scr != NULL);
	snprintf(xml, sizeof(xml),
	    "<engineSignEncrypt>\n"
	    "  <descriptors>\n"
	    "    <descriptor name=\"EncryptedFields\" version=\"1\">\n"
	    "      <type algorithm=\"AES/CBC/PKCS7Padding\" size=\"256\" result=\"NX02\"\n"
	    "            key=\"encryptedFieldsCertificateV1\"\n"
	    "            asymCipher=\"RSA/ECB/OAEPWithSHA-384AndMGF1Padding\"/>\n"
	    "    </descriptor>\n"
	    "    <descriptor name=\"ConfigZipSigner\" version=\"1\">\n"
	    "      <type algorithm=\"SHA-256\" key=\"configZipSignerCertificateV1\"/>\n"
	    "    </descriptor>\n"
	    "    <descriptor name=\"ObjectHistorySigner\" version=\"1\">\n"
	    "      <type algorithm=\"SHA-512\" key=\"objectHistorySignerCertificateV1\"/>\n"
	    "    </descriptor>\n"
	    "    <descriptor name=\"SignEmailDescriptor\" version=\"1\">\n"
	    "      <type algorithm=\"SHA256withRSA\" key=\"signEmailCertificateV1\"/>\n"
	    "    </descriptor>\n"
	    "  </descriptors>\n"
	    "  <!-- comments are fine -->\n"
	    "  <keys>\n"
	    "    <key name=\"encryptedFieldsCertificateV1\">\n"
	    "      <type name=\"HSM\" locationValue=\"/usr/lib/softhsm/libsofthsm2\"\n"
	    "            pin.encrypted=\"%s\" alias=\"encryptedFieldsCertificateV1\" slot=\"0\"/>\n"
	    "    </key>\n"
	    "    <key name=\"configZipSignerCertificateV1\">\n"
	    "      <type name=\"HSM\" locationValue=\"libsofthsm2.so\" pin=\"5678\"\n"
	    "            alias=\"zip\" tokenLabel=\"hsmfs\" slot=\"0x1A\" rawRsaFallback=\"false\"/>\n"
	    "    </key>\n"
	    "    <key name=\"objectHistorySignerCertificateV1\">\n"
	    "      <type name=\"P12\" locationValue=\"history.p12\" pin=\"\"/>\n"
	    "    </key>\n"
	    "    <key name=\"signEmailCertificateV1\">\n"
	    "      <type name=\"PKCS12\" locationValue=\"/etc/mail.p12\" alias=\"mail\"\n"
	    "            pin.env=\"HSMFS_TEST_MAIL_PIN\"/>\n"
	    "    </key>\n"
	    "  </keys>\n"
	    "</engineSignEncrypt>\n", scr ? scr : "");
	free(scr);
	if ((e = load_ok(xml)) == NULL)
		return;
	CHECK(e->ndescs == 4);
	CHECK(e->nkeys == 4);

	d = engine_newest(e, ENGINE_ENCRYPTED_FIELDS);
	CHECK(d != NULL);
	if (d) {
		CHECK(d->version == 1);
		CHECK(d->line == 3);
		CHECK(d->alg == ENGINE_ALG_AES_CBC_PKCS7);
		CHECK(d->size == 256);
		CHECK(strcmp(d->result, "NX02") == 0);
		CHECK(strcmp(d->algorithm, "AES/CBC/PKCS7Padding") == 0);
		CHECK(strcmp(d->asym_cipher, OAEP384) == 0);
		CHECK(d->oaep_md == EVP_sha384());
		CHECK(d->key == engine_key_by_name(e, "encryptedFieldsCertificateV1"));
	}
	CHECK(engine_version(e, ENGINE_ENCRYPTED_FIELDS, 1) == d);
	CHECK(engine_version(e, ENGINE_ENCRYPTED_FIELDS, 2) == NULL);

	d = engine_newest(e, ENGINE_CONFIG_ZIP_SIGNER);
	CHECK(d && d->alg == ENGINE_ALG_DIGEST && d->md == EVP_sha256());
	CHECK(d && strcmp(d->key->name, "configZipSignerCertificateV1") == 0);
	d = engine_newest(e, ENGINE_OBJECT_HISTORY_SIGNER);
	CHECK(d && d->alg == ENGINE_ALG_DIGEST && d->md == EVP_sha512());
	d = engine_newest(e, ENGINE_SIGN_EMAIL);
	CHECK(d && d->alg == ENGINE_ALG_RSA_SIGN && d->md == EVP_sha256());
	CHECK(d && strcmp(d->algorithm, "SHA256withRSA") == 0);
	CHECK(engine_newest(e, "NoSuchDescriptor") == NULL);
	CHECK(engine_key_by_name(e, "nope") == NULL);

	k = engine_key_by_name(e, "encryptedFieldsCertificateV1");
	CHECK(k && k->type == ENGINE_KEY_HSM && k->has_slot && k->slot == 0);
	CHECK(k && k->line == 20 && !k->no_raw_rsa && k->pin_encrypted != NULL);
	if (k && pin_of_key(k, &pin) == 0) {
		CHECK(strcmp(pin, "1234") == 0);
		keyring_key_spec(k, pin, &spec);
		CHECK(spec.backend == HSM_BACKEND_PKCS11);
		CHECK(strcmp(spec.location, "/usr/lib/softhsm/libsofthsm2") == 0);
		CHECK(strcmp(spec.alias, "encryptedFieldsCertificateV1") == 0);
		CHECK(spec.has_slot == 1 && spec.slot == 0);
		CHECK(spec.pin == pin && spec.require_cert == 1 && spec.pool_size == 0);
		CHECK(spec.token_label == NULL && spec.no_raw_rsa == 0);
		pin_free(pin);
	} else
		CHECK_DETAIL(!"pin of encryptedFieldsCertificateV1");

	k = engine_key_by_name(e, "configZipSignerCertificateV1");
	CHECK(k && k->has_slot && k->slot == 26 && k->no_raw_rsa == 1);
	CHECK(k && strcmp(k->token_label, "hsmfs") == 0);
	if (k && pin_of_key(k, &pin) == 0) {
		CHECK(strcmp(pin, "5678") == 0);
		keyring_key_spec(k, pin, &spec);
		CHECK(spec.no_raw_rsa == 1 && strcmp(spec.token_label, "hsmfs") == 0);
		CHECK(spec.slot == 26);
		pin_free(pin);
	} else
		CHECK_DETAIL(!"pin of configZipSignerCertificateV1");

	k = engine_key_by_name(e, "objectHistorySignerCertificateV1");
	CHECK(k && k->type == ENGINE_KEY_P12 && k->alias == NULL && !k->has_slot);
	{
		/* A relative P12 file is relative to the config's directory. */
		char want[PATH_MAX + 32];
		snprintf(want, sizeof(want), "%s/history.p12", tmpdir);
		CHECK(k && strcmp(k->location, want) == 0);
	}
	if (k && pin_of_key(k, &pin) == 0) {
		CHECK(pin[0] == '\0');   /* empty P12 password is legitimate */
		keyring_key_spec(k, pin, &spec);
		CHECK(spec.backend == HSM_BACKEND_P12 && spec.alias == NULL);
		pin_free(pin);
	} else
		CHECK_DETAIL(!"pin of objectHistorySignerCertificateV1");

	k = engine_key_by_name(e, "signEmailCertificateV1");
	CHECK(k && k->type == ENGINE_KEY_P12 && strcmp(k->alias, "mail") == 0);
	CHECK(k && k->pin_env && strcmp(k->pin_env, "HSMFS_TEST_MAIL_PIN") == 0);
	engine_free(e);
}

static void
case_two_versions(void)
{
	struct engine *e;
	const struct engine_descriptor *d;

	cur_case = "two-versions";
	/* v2 first: "newest" is by number, not by position. */
	e = load_ok(DOC(DESC_FIELDS("2", "k2", OAEP384)
	    DESC_FIELDS("1", "k1", "RSA/ECB/OAEPWithSHA-1AndMGF1Padding")
	    DESC_FIELDS("10", "k1", "RSA/ECB/OAEPWithSHA-512AndMGF1Padding"),
	    KEY_P12("k1") KEY_P12("k2")));
	if (e == NULL)
		return;
	CHECK(e->ndescs == 3);
	d = engine_newest(e, ENGINE_ENCRYPTED_FIELDS);
	CHECK(d && d->version == 10 && d->oaep_md == EVP_sha512());
	d = engine_version(e, ENGINE_ENCRYPTED_FIELDS, 2);
	CHECK(d && strcmp(d->key->name, "k2") == 0 && d->oaep_md == EVP_sha384());
	d = engine_version(e, ENGINE_ENCRYPTED_FIELDS, 1);
	CHECK(d && strcmp(d->key->name, "k1") == 0 && d->oaep_md == EVP_sha1());
	CHECK(engine_version(e, ENGINE_ENCRYPTED_FIELDS, 3) == NULL);
	CHECK(engine_newest(e, ENGINE_CONFIG_ZIP_SIGNER) == NULL);
	CHECK(engine_newest(e, ENGINE_SIGN_EMAIL) == NULL);
	engine_free(e);
}

static void
check_normalised(const char *name, const char *cipher, const char *canon,
    int warns)
{
	char xml[4096];
	struct engine *e;
	const char *path, *err;
	char where[PATH_MAX + 64];

	cur_case = name;
	snprintf(xml, sizeof(xml), HEAD "<engineSignEncrypt>\n<descriptors>\n"
	    "<descriptor name=\"EncryptedFields\" version=\"1\">\n"
	    "  <type algorithm=\"AES/CBC/PKCS7Padding\" size=\"128\" key=\"k1\"\n"
	    "        asymCipher=\"%s\"/>\n"
	    "</descriptor>\n</descriptors>\n<keys>\n" KEY_P12("k1")
	    "</keys>\n</engineSignEncrypt>\n", cipher);
	path = cfg_path(xml);
	capture_begin();
	e = NULL;
	int r = engine_load(path, &e);
	err = capture_end();
	CHECK_DETAIL(r == 0);
	if (r != 0)
		return;
	CHECK(strcmp(e->descs[0].asym_cipher, canon) == 0);
	CHECK(strcmp(e->descs[0].result, "NX02") == 0);  /* default */
	CHECK(e->descs[0].size == 128);
	snprintf(where, sizeof(where), "%s:6: asymCipher=", path);
	if (warns)
		CHECK(strstr(err, where) != NULL && strstr(err, canon) != NULL);
	else
		CHECK(err[0] == '\0');
	engine_free(e);
}

static void
case_normalisation(void)
{
	struct engine *e;
	const char *err;

	check_normalised("oaep-none-undashed", "RSA/None/OAEPWithSHA384AndMGF1Padding",
	    OAEP384, 1);
	check_normalised("oaep-ecb-undashed", "RSA/ECB/OAEPWithSHA384AndMGF1Padding",
	    OAEP384, 1);
	check_normalised("oaep-none-dashed", "RSA/NONE/OAEPWithSHA-256AndMGF1Padding",
	    "RSA/ECB/OAEPWithSHA-256AndMGF1Padding", 1);
	check_normalised("oaep-sha1", "RSA/ECB/OAEPWithSHA1AndMGF1Padding",
	    "RSA/ECB/OAEPWithSHA-1AndMGF1Padding", 1);
	check_normalised("oaep-canonical", OAEP384, OAEP384, 0);

	cur_case = "algorithm-spellings";
	capture_begin();
	e = load_ok(HEAD "<engineSignEncrypt>\n<descriptors>\n"
	    "<descriptor name=\"EncryptedFields\" version=\"1\">\n"
	    "  <type algorithm=\"AES/CBC/PKCS5Padding\" size=\"192\" key=\"k1\" "
	    "asymCipher=\"" OAEP384 "\"/>\n</descriptor>\n"
	    "<descriptor name=\"ConfigZipSigner\" version=\"1\">\n"
	    "  <type algorithm=\"SHA384\" key=\"k1\"/>\n</descriptor>\n"
	    "<descriptor name=\"SignEmailDescriptor\" version=\"1\">\n"
	    "  <type algorithm=\"sha512withrsa\" key=\"k1\"/>\n</descriptor>\n"
	    "</descriptors>\n<keys>\n" KEY_P12("k1") "</keys>\n</engineSignEncrypt>\n");
	err = capture_end();
	if (e == NULL)
		return;
	CHECK(strcmp(e->descs[0].algorithm, "AES/CBC/PKCS7Padding") == 0);
	CHECK(e->descs[0].size == 192);
	CHECK(strcmp(e->descs[1].algorithm, "SHA-384") == 0);
	CHECK(e->descs[1].md == EVP_sha384());
	CHECK(strcmp(e->descs[2].algorithm, "SHA512withRSA") == 0);
	CHECK(e->descs[2].md == EVP_sha512());
	CHECK(strstr(err, ":5: algorithm=\"AES/CBC/PKCS5Padding\"") != NULL);
	CHECK(strstr(err, ":8: algorithm=\"SHA384\"") != NULL);
	CHECK(strstr(err, ":11: algorithm=\"sha512withrsa\"") != NULL);
	engine_free(e);
}

static void
case_mode_warning(void)
{
	const char *xml = DOC(DESC_ZIP("k1"), KEY_P12("k1"));
	struct engine *e = NULL;
	const char *path, *err;
	int r;

	cur_case = "mode-warning";
	path = cfg_path(xml);
	chmod(path, 0644);
	capture_begin();
	r = engine_load(path, &e);
	err = capture_end();
	CHECK_DETAIL(r == 0);
	CHECK(strstr(err, path) != NULL && strstr(err, "chmod 600") != NULL);
	CHECK(strstr(err, "Secret-77") == NULL);     /* never the PIN */
	engine_free(e);

	cur_case = "mode-no-warning";
	path = cfg_path(xml);      /* 0600 */
	capture_begin();
	e = NULL;
	r = engine_load(path, &e);
	err = capture_end();
	CHECK_DETAIL(r == 0);
	CHECK(err[0] == '\0');
	engine_free(e);
}

static void
case_errors(void)
{
	expect_err("malformed-mismatch", DOC(
	    "<descriptor name=\"ConfigZipSigner\" version=\"1\">\n"
	    "  <type algorithm=\"SHA-256\" key=\"k1\"/>\n"
	    "</descriptr>\n", KEY_P12("k1")), "</descriptr>", "malformed XML");
	expect_err("malformed-truncated", HEAD "<engineSignEncrypt>\n"
	    "<descriptors>\n<descriptor name=\"ConfigZipSigner\" version=\"1\"",
	    "version=\"1\"", "malformed XML");
	expect_err("malformed-empty", "", "", "malformed XML");
	expect_err("malformed-undeclared-entity", DOC(DESC_ZIP("k1"),
	    "<key name=\"k1\">\n"
	    "  <type name=\"P12\" locationValue=\"/x.p12\" pin=\"&x;\"/>\n"
	    "</key>\n"), "&x;", "malformed XML");
	expect_err("wrong-root", HEAD "<engine>\n</engine>\n", "<engine>",
	    "engineSignEncrypt");
	expect_err("unknown-root-attribute", HEAD
	    "<engineSignEncrypt version=\"2\">\n</engineSignEncrypt>\n",
	    "version=\"2\"", "'version'");
	expect_err("unknown-element", DOC(DESC_ZIP("k1") "<signer name=\"x\"/>\n",
	    KEY_P12("k1")), "<signer", "<signer>");
	expect_err("unknown-top-element", HEAD "<engineSignEncrypt>\n"
	    "<descriptors/>\n<truststore/>\n</engineSignEncrypt>\n",
	    "<truststore/>", "<truststore>");
	expect_err("second-descriptors", HEAD "<engineSignEncrypt>\n"
	    "<descriptors/>\n<keys/>\n<descriptors/><!--2-->\n</engineSignEncrypt>\n",
	    "<!--2-->", "<descriptors>");
	expect_err("stray-text", DOC(DESC_ZIP("k1") "hello\n", KEY_P12("k1")),
	    "hello", "unexpected text");
	expect_err("unknown-descriptor-attribute", DOC(
	    "<descriptor name=\"ConfigZipSigner\" version=\"1\" owner=\"me\">\n"
	    "  <type algorithm=\"SHA-256\" key=\"k1\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "owner=", "'owner'");
	expect_err("unknown-type-attribute", DOC(
	    "<descriptor name=\"ConfigZipSigner\" version=\"1\">\n"
	    "  <type algorithm=\"SHA-256\" key=\"k1\" colour=\"red\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "colour=", "'colour'");
	expect_err("size-on-signer", DOC(
	    "<descriptor name=\"ObjectHistorySigner\" version=\"1\">\n"
	    "  <type algorithm=\"SHA-256\" key=\"k1\"\n"
	    "        size=\"256\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "size=", "'size'");
	/* The attribute's own line inside a multi-line tag. */
	expect_err("p12-with-tokenLabel", DOC(DESC_ZIP("k1"),
	    "<key name=\"k1\">\n"
	    "  <type name=\"P12\" locationValue=\"/x.p12\"\n"
	    "        pin=\"pw\"\n"
	    "        tokenLabel=\"t\"/>\n"
	    "</key>\n"), "tokenLabel=", "'tokenLabel'");
	expect_err("namespaced-attribute", DOC(
	    "<descriptor xmlns:x=\"urn:x\" name=\"ConfigZipSigner\" version=\"1\">\n"
	    "  <type algorithm=\"SHA-256\" key=\"k1\" x:key=\"k2\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "x:key", "x:key");

	expect_err("missing-version", DOC(
	    "<descriptor name=\"ConfigZipSigner\">\n"
	    "  <type algorithm=\"SHA-256\" key=\"k1\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "ConfigZipSigner", "'version'");
	expect_err("version-zero", DOC(
	    "<descriptor name=\"ConfigZipSigner\" version=\"0\">\n"
	    "  <type algorithm=\"SHA-256\" key=\"k1\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "version=\"0\"", "version=");
	expect_err("version-negative", DOC(
	    "<descriptor name=\"ConfigZipSigner\" version=\"-1\">\n"
	    "  <type algorithm=\"SHA-256\" key=\"k1\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "version=\"-1\"", "version=");
	expect_err("version-junk", DOC(
	    "<descriptor name=\"ConfigZipSigner\" version=\"1a\">\n"
	    "  <type algorithm=\"SHA-256\" key=\"k1\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "version=\"1a\"", "version=");
	expect_err("no-type", DOC(
	    "<descriptor name=\"ConfigZipSigner\" version=\"1\">\n"
	    "</descriptor>\n", KEY_P12("k1")), "<descriptor name", "<type>");
	expect_err("two-types", DOC(
	    "<descriptor name=\"ConfigZipSigner\" version=\"1\">\n"
	    "  <type algorithm=\"SHA-256\" key=\"k1\"/>\n"
	    "  <type algorithm=\"SHA-512\" key=\"k1\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "SHA-512", "<type>");

	expect_err("bad-algorithm", DOC(
	    "<descriptor name=\"EncryptedFields\" version=\"1\">\n"
	    "  <type algorithm=\"DES/CBC/PKCS5Padding\" size=\"256\" key=\"k1\"\n"
	    "        asymCipher=\"" OAEP384 "\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "DES/", "algorithm=");
	expect_err("algorithm-misfit-zip", DOC(
	    "<descriptor name=\"ConfigZipSigner\" version=\"1\">\n"
	    "  <type algorithm=\"SHA256withRSA\" key=\"k1\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "SHA256withRSA", "algorithm=");
	expect_err("algorithm-misfit-mail", DOC(
	    "<descriptor name=\"SignEmailDescriptor\" version=\"1\">\n"
	    "  <type algorithm=\"SHA-256\" key=\"k1\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "SHA-256", "algorithm=");
	expect_err("algorithm-sha1-signer", DOC(
	    "<descriptor name=\"ObjectHistorySigner\" version=\"1\">\n"
	    "  <type algorithm=\"SHA-1\" key=\"k1\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "SHA-1", "algorithm=");
	expect_err("algorithm-oaep-as-aes", DOC(
	    "<descriptor name=\"EncryptedFields\" version=\"1\">\n"
	    "  <type algorithm=\"" OAEP384 "\" size=\"256\" key=\"k1\"\n"
	    "        asymCipher=\"" OAEP384 "\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "algorithm=", "algorithm=");
	expect_err("bad-size", DOC(
	    "<descriptor name=\"EncryptedFields\" version=\"1\">\n"
	    "  <type algorithm=\"AES/CBC/PKCS7Padding\" key=\"k1\"\n"
	    "        size=\"100\" asymCipher=\"" OAEP384 "\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "size=", "size=");
	expect_err("missing-size", DOC(
	    "<descriptor name=\"EncryptedFields\" version=\"1\">\n"
	    "  <type algorithm=\"AES/CBC/PKCS7Padding\" key=\"k1\" asymCipher=\"" OAEP384 "\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "<type", "'size'");
	expect_err("bad-result", DOC(
	    "<descriptor name=\"EncryptedFields\" version=\"1\">\n"
	    "  <type algorithm=\"AES/CBC/PKCS7Padding\" size=\"256\" key=\"k1\"\n"
	    "        asymCipher=\"" OAEP384 "\"\n"
	    "        result=\"NX01\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "result=", "result=");
	expect_err("bad-oaep-hash", DOC(
	    "<descriptor name=\"EncryptedFields\" version=\"1\">\n"
	    "  <type algorithm=\"AES/CBC/PKCS7Padding\" size=\"256\" key=\"k1\"\n"
	    "        asymCipher=\"RSA/ECB/OAEPWithMD5AndMGF1Padding\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "asymCipher=", "asymCipher=");
	expect_err("bad-oaep-mode", DOC(
	    "<descriptor name=\"EncryptedFields\" version=\"1\">\n"
	    "  <type algorithm=\"AES/CBC/PKCS7Padding\" size=\"256\" key=\"k1\"\n"
	    "        asymCipher=\"RSA/CBC/OAEPWithSHA-256AndMGF1Padding\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "asymCipher=", "asymCipher=");
	expect_err("oaep-trailing-junk", DOC(
	    "<descriptor name=\"EncryptedFields\" version=\"1\">\n"
	    "  <type algorithm=\"AES/CBC/PKCS7Padding\" size=\"256\" key=\"k1\"\n"
	    "        asymCipher=\"RSA/ECB/OAEPWithSHA-256AndMGF1PaddingX\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "asymCipher=", "asymCipher=");
	expect_err("pkcs1-not-oaep", DOC(
	    "<descriptor name=\"EncryptedFields\" version=\"1\">\n"
	    "  <type algorithm=\"AES/CBC/PKCS7Padding\" size=\"256\" key=\"k1\"\n"
	    "        asymCipher=\"RSA/ECB/PKCS1Padding\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "asymCipher=", "asymCipher=");

	expect_err("duplicate-name-version", DOC(DESC_ZIP("k1")
	    "<descriptor name=\"ConfigZipSigner\" version=\"1\"><!--dup-->\n"
	    "  <type algorithm=\"SHA-512\" key=\"k1\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "<!--dup-->", "version");
	expect_err("missing-key", DOC(
	    "<descriptor name=\"ConfigZipSigner\" version=\"1\">\n"
	    "  <type algorithm=\"SHA-256\"\n"
	    "        key=\"nope\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "key=\"nope\"", "key=\"nope\"");
	expect_err("missing-key-no-keys-section", HEAD "<engineSignEncrypt>\n"
	    "<descriptors>\n" DESC_ZIP("k1") "</descriptors>\n</engineSignEncrypt>\n",
	    "key=\"k1\"", "key=\"k1\"");
	expect_err("duplicate-key", DOC(DESC_ZIP("k1"), KEY_P12("k1")
	    "<key name=\"k1\"><!--dup-->\n"
	    "  <type name=\"P12\" locationValue=\"/y.p12\" pin=\"pw\"/>\n"
	    "</key>\n"), "<!--dup-->", "name=\"k1\"");
	expect_err("unknown-key-type", DOC(DESC_ZIP("k1"),
	    "<key name=\"k1\">\n"
	    "  <type name=\"JKS\" locationValue=\"/x.jks\" pin=\"pw\"/>\n"
	    "</key>\n"), "JKS", "name=\"JKS\"");
	expect_err("missing-location", DOC(DESC_ZIP("k1"),
	    "<key name=\"k1\">\n"
	    "  <type name=\"P12\" pin=\"pw\"/>\n"
	    "</key>\n"), "<type name=", "'locationValue'");
	expect_err("hsm-relative-module", DOC(DESC_ZIP("k1"),
	    "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" alias=\"a\" pin=\"1\"\n"
	    "        locationValue=\"lib/libsofthsm2.so\"/>\n"
	    "</key>\n"), "locationValue=", "locationValue=");
	expect_err("namespaced-root", HEAD
	    "<engineSignEncrypt xmlns=\"urn:x\">\n</engineSignEncrypt>\n",
	    "<engineSignEncrypt", "xmlns");
	expect_err("hsm-missing-alias", DOC(DESC_ZIP("k1"),
	    "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" locationValue=\"libsofthsm2\" pin=\"1234\"/>\n"
	    "</key>\n"), "<type name=", "'alias'");
	expect_err("hsm-empty-pin", DOC(DESC_ZIP("k1"),
	    "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" locationValue=\"libsofthsm2\" alias=\"a\"\n"
	    "        pin=\"\"/>\n"
	    "</key>\n"), "pin=", "'pin'");
	expect_err("no-pin-source", DOC(DESC_ZIP("k1"),
	    "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" locationValue=\"libsofthsm2\" alias=\"a\"/>\n"
	    "</key>\n"), "<type name=", "pin.file");
	expect_err("two-pin-sources", DOC(DESC_ZIP("k1"),
	    "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" locationValue=\"libsofthsm2\" alias=\"a\" pin=\"1\"\n"
	    "        pin.env=\"HSMFS_PIN\"/>\n"
	    "</key>\n"), "pin.env=", "'pin.env'");
	expect_err("bad-pin-encrypted", DOC(DESC_ZIP("k1"),
	    "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" locationValue=\"libsofthsm2\" alias=\"a\"\n"
	    "        pin.encrypted=\"S1:AAAAAAAAAAAAAAAAAAAA\"/>\n"
	    "</key>\n"), "pin.encrypted=", "pin.encrypted");
	expect_err("bad-slot-word", DOC(DESC_ZIP("k1"),
	    "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" locationValue=\"libsofthsm2\" alias=\"a\" pin=\"1\"\n"
	    "        slot=\"first\"/>\n"
	    "</key>\n"), "slot=", "slot=");
	expect_err("bad-slot-negative", DOC(DESC_ZIP("k1"),
	    "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" locationValue=\"libsofthsm2\" alias=\"a\" pin=\"1\" slot=\"-1\"/>\n"
	    "</key>\n"), "slot=", "slot=");
	expect_err("bad-slot-overflow", DOC(DESC_ZIP("k1"),
	    "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" locationValue=\"libsofthsm2\" alias=\"a\" pin=\"1\"\n"
	    "        slot=\"99999999999999999999999\"/>\n"
	    "</key>\n"), "slot=", "slot=");
	expect_err("bad-slot-bare-0x", DOC(DESC_ZIP("k1"),
	    "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" locationValue=\"libsofthsm2\" alias=\"a\" pin=\"1\" slot=\"0x\"/>\n"
	    "</key>\n"), "slot=", "slot=");
	expect_err("bad-rawRsaFallback", DOC(DESC_ZIP("k1"),
	    "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" locationValue=\"libsofthsm2\" alias=\"a\" pin=\"1\"\n"
	    "        rawRsaFallback=\"maybe\"/>\n"
	    "</key>\n"), "rawRsaFallback=", "rawRsaFallback=");

	{
		struct engine *e = NULL;
		char path[PATH_MAX + 32];
		cur_case = "missing-file";
		snprintf(path, sizeof(path), "%s/absent.xml", tmpdir);
		CHECK(engine_load(path, &e) == HSMFS_ERR_CONFIG && e == NULL);
		CHECK_DETAIL(strstr(err_detail(), path) != NULL);
	}
}

/* ---- entities and DTDs: nothing may be read or fetched ---- */

static void
expect_no_fetch(const char *name, const char *tmpl, const char *secret,
    int lsock)
{
	char xml[4096];
	struct sockaddr_in sa;
	socklen_t sl = sizeof(sa);
	char buf[4096];
	int in, wd, port, c;

	getsockname(lsock, (struct sockaddr *)&sa, &sl);
	port = ntohs(sa.sin_port);
	/* tmpl holds %s (the secret file) and %d (the port), in that order. */
	snprintf(xml, sizeof(xml), tmpl, secret, port);
	in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	CHECK(in >= 0);
	wd = inotify_add_watch(in, secret, IN_OPEN | IN_ACCESS);
	CHECK(wd >= 0);
	expect_err(name, xml, "<!DOCTYPE", "DOCTYPE");
	CHECK(strstr(err_detail(), "top-secret") == NULL);
	/* No open of the local file... */
	CHECK(read(in, buf, sizeof(buf)) < 0 && errno == EAGAIN);
	/* ...and no connection to the local "server". */
	c = accept(lsock, NULL, NULL);
	CHECK(c < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
	if (c >= 0)
		close(c);
	/* The detectors themselves work. */
	{
		int fd = open(secret, O_RDONLY);
		close(fd);
		CHECK(read(in, buf, sizeof(buf)) > 0);
		int s = socket(AF_INET, SOCK_STREAM, 0);
		CHECK(connect(s, (struct sockaddr *)&sa, sizeof(sa)) == 0);
		c = accept(lsock, NULL, NULL);
		CHECK(c >= 0);
		if (c >= 0)
			close(c);
		close(s);
	}
	close(in);
}

static void
case_entities(void)
{
	char secret[PATH_MAX + 32];
	struct sockaddr_in sa;
	int lsock;

	snprintf(secret, sizeof(secret), "%s/secret.txt", tmpdir);
	write_file(secret, "top-secret\n", 0600);
	lsock = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cur_case = "entities-setup";
	CHECK(lsock >= 0 && bind(lsock, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	    listen(lsock, 8) == 0);

#define ENT_BODY "<engineSignEncrypt>\n<descriptors>\n" DESC_ZIP("k1") \
	"</descriptors>\n<keys>\n<key name=\"k1\">\n" \
	"  <type name=\"P12\" locationValue=\"/x.p12\" pin=\"&x;\"/>\n" \
	"</key>\n</keys>\n</engineSignEncrypt>\n"
	expect_no_fetch("xxe-local-file", HEAD
	    "<!DOCTYPE engineSignEncrypt [\n"
	    "  <!ENTITY x SYSTEM \"file://%s\"><!-- %d -->\n"
	    "]>\n" ENT_BODY, secret, lsock);
	expect_no_fetch("xxe-network", HEAD "<!-- %s -->\n"
	    "<!DOCTYPE engineSignEncrypt [\n"
	    "  <!ENTITY x SYSTEM \"http://127.0.0.1:%d/x\">\n"
	    "]>\n" ENT_BODY, secret, lsock);
	expect_no_fetch("xxe-parameter-entity", HEAD
	    "<!DOCTYPE engineSignEncrypt [\n"
	    "  <!ENTITY %% p SYSTEM \"%s\"> %%p;\n"
	    "  <!ENTITY %% q SYSTEM \"http://127.0.0.1:%d/q.dtd\"> %%q;\n"
	    "]>\n" ENT_BODY, secret, lsock);
	expect_no_fetch("external-dtd-file", HEAD
	    "<!DOCTYPE engineSignEncrypt SYSTEM \"%s\"><!-- %d -->\n" ENT_BODY,
	    secret, lsock);
	expect_no_fetch("external-dtd-network", HEAD "<!-- %s -->\n"
	    "<!DOCTYPE engineSignEncrypt SYSTEM \"http://127.0.0.1:%d/e.dtd\">\n"
	    ENT_BODY, secret, lsock);
	expect_no_fetch("billion-laughs", HEAD "<!-- %s %d -->\n"
	    "<!DOCTYPE engineSignEncrypt [\n"
	    "  <!ENTITY a \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\">\n"
	    "  <!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">\n"
	    "  <!ENTITY x \"&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;\">\n"
	    "]>\n" ENT_BODY, secret, lsock);
	close(lsock);
}

/* ---- PINs ---- */

static void
case_scramble(void)
{
	char *a, *b, *pin = NULL, big[300];
	int r;

	cur_case = "scramble-roundtrip";
	a = pin_scramble("123456");
	b = pin_scramble("123456");
	CHECK(a && b);
	if (!a || !b)
		return;
	CHECK(strncmp(a, "S1:", 3) == 0);
	CHECK(strstr(a, "123456") == NULL);
	CHECK(strcmp(a, b) != 0);      /* random salt */
	r = pin_unscramble(a, &pin);
	CHECK_DETAIL(r == 0);
	if (r == 0) {
		CHECK(strcmp(pin, "123456") == 0);
		pin_free(pin);
	}
	r = pin_unscramble(b, &pin);
	CHECK(r == 0 && strcmp(pin, "123456") == 0);
	if (r == 0)
		pin_free(pin);

	cur_case = "scramble-known-answer";
	/* Made by an independent implementation of the format documented in
	 * docs/engine.md (Python hashlib, salt 01..08, 36-byte PIN: two
	 * keystream blocks). */
	r = pin_unscramble("S1:AQIDBAUGBwhneA+r9dHBcBk8BA/vDBG3EmmhUZ4r"
	    "exO39r7TmWVMD5cEmp/vK6YV", &pin);
	CHECK_DETAIL(r == 0);
	if (r == 0) {
		CHECK(strcmp(pin, "0123456789abcdef0123456789abcdef-kat") == 0);
		pin_free(pin);
	}

	cur_case = "scramble-lengths";
	/* Across keystream block boundaries (32 bytes) and the limit. */
	for (size_t n = 1; n <= 256; n += (n < 40 ? 1 : 37)) {
		memset(big, 'a' + (int)(n % 26), n);
		big[n] = '\0';
		big[0] = '!';
		char *s = pin_scramble(big);
		CHECK(s != NULL);
		if (s == NULL)
			continue;
		r = pin_unscramble(s, &pin);
		CHECK(r == 0 && strcmp(pin, big) == 0);
		if (r == 0)
			pin_free(pin);
		free(s);
	}
	memset(big, 'x', 257);
	big[257] = '\0';
	CHECK(pin_scramble(big) == NULL);
	CHECK(pin_scramble("") == NULL);

	cur_case = "scramble-tampered";
	for (size_t i = 3; a[i]; i++) {
		char saved = a[i];
		if (a[i] == '=')
			continue;
		a[i] = a[i] == 'A' ? 'B' : 'A';
		pin = NULL;
		r = pin_unscramble(a, &pin);
		CHECK(r == HSMFS_ERR_CONFIG && pin == NULL);
		if (r == 0)
			pin_free(pin);
		a[i] = saved;
	}
	CHECK_DETAIL(strstr(err_detail(), "scramble-pin") != NULL);

	cur_case = "scramble-malformed";
	{
		static const char *const bad[] = {"", "123456", "S1:", "S2:AAAA",
			"S1:!!!!", "S1:AAA", "S1:AAAAAAAAAAAAAAAA",
			"S1:AAAAAAAAAAAAAAAAAAAAAAAA====", " S1:AAAA", NULL};
		for (size_t i = 0; bad[i]; i++) {
			pin = NULL;
			r = pin_unscramble(bad[i], &pin);
			CHECK(r == HSMFS_ERR_CONFIG && pin == NULL);
			CHECK(err_detail()[0] != '\0');
		}
		/* A truncated (but still valid base64) value. */
		size_t n = strlen(b);
		b[n - 4] = '\0';
		r = pin_unscramble(b, &pin);
		CHECK(r == HSMFS_ERR_CONFIG);
	}
	free(a);
	free(b);
}

static struct engine *
load_pin_key(const char *type_attrs)
{
	char xml[2048];
	snprintf(xml, sizeof(xml), DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"P12\" locationValue=\"/x.p12\" %s/>\n</key>\n"),
	    type_attrs);
	return load_ok(xml);
}

static void
expect_pin(struct engine *e, const char *want)
{
	char *pin = NULL;
	int r;
	if (e == NULL)
		return;
	r = pin_of_key(engine_key_by_name(e, "k1"), &pin);
	CHECK_DETAIL(r == 0);
	if (r == 0) {
		CHECK(strcmp(pin, want) == 0);
		pin_free(pin);
	}
}

static void
expect_pin_err(struct engine *e, const char *word, const char *secret)
{
	char *pin = NULL;
	int r;
	if (e == NULL)
		return;
	r = pin_of_key(engine_key_by_name(e, "k1"), &pin);
	CHECK_DETAIL(r == HSMFS_ERR_CONFIG && pin == NULL);
	CHECK_DETAIL(strstr(err_detail(), word) != NULL);
	if (secret)
		CHECK_DETAIL(strstr(err_detail(), secret) == NULL);
	if (r == 0)
		pin_free(pin);
}

static void
case_pin_sources(void)
{
	char path[PATH_MAX + 64], attrs[PATH_MAX + 128], cwd[PATH_MAX];
	struct engine *e;

	cur_case = "pin-file-newline";
	snprintf(path, sizeof(path), "%s/pin1", tmpdir);
	write_file(path, "4321\n", 0600);
	snprintf(attrs, sizeof(attrs), "pin.file=\"%s\"", path);
	e = load_pin_key(attrs);
	expect_pin(e, "4321");
	engine_free(e);

	cur_case = "pin-file-crlf-and-spaces";
	write_file(path, " 43 21\r\n", 0600);
	e = load_pin_key(attrs);
	expect_pin(e, " 43 21");
	engine_free(e);

	cur_case = "pin-file-no-newline";
	write_file(path, "4321", 0600);
	e = load_pin_key(attrs);
	expect_pin(e, "4321");
	engine_free(e);

	cur_case = "pin-file-relative";
	/* Resolved against the config's directory, not the cwd. */
	snprintf(path, sizeof(path), "%s/pin-rel", tmpdir);
	write_file(path, "rel-pin\n", 0600);
	CHECK(getcwd(cwd, sizeof(cwd)) != NULL);
	CHECK(chdir("/") == 0);
	e = load_pin_key("pin.file=\"pin-rel\"");
	expect_pin(e, "rel-pin");
	engine_free(e);
	CHECK(chdir(cwd) == 0);

	cur_case = "pin-file-credentials-directory";
	/* systemd's LoadCredential=: a relative name found in
	 * $CREDENTIALS_DIRECTORY wins; one not there is the config's. */
	snprintf(path, sizeof(path), "%s/creds", tmpdir);
	CHECK(mkdir(path, 0700) == 0);
	CHECK(setenv("CREDENTIALS_DIRECTORY", path, 1) == 0);
	snprintf(path, sizeof(path), "%s/creds/pin-rel", tmpdir);
	write_file(path, "cred-pin\n", 0600);
	e = load_pin_key("pin.file=\"pin-rel\"");
	expect_pin(e, "cred-pin");
	engine_free(e);
	CHECK(unlink(path) == 0);
	e = load_pin_key("pin.file=\"pin-rel\"");
	expect_pin(e, "rel-pin");
	engine_free(e);
	CHECK(unsetenv("CREDENTIALS_DIRECTORY") == 0);

	cur_case = "pin-file-empty";
	snprintf(path, sizeof(path), "%s/pin-empty", tmpdir);
	write_file(path, "\n", 0600);
	snprintf(attrs, sizeof(attrs), "pin.file=\"%s\"", path);
	e = load_pin_key(attrs);
	expect_pin_err(e, "pin-empty", NULL);
	engine_free(e);

	cur_case = "pin-file-two-lines";
	write_file(path, "secret-one\nsecret-two\n", 0600);
	e = load_pin_key(attrs);
	expect_pin_err(e, "pin-empty", "secret-");
	engine_free(e);

	cur_case = "pin-file-missing";
	snprintf(attrs, sizeof(attrs), "pin.file=\"%s/no-such-pin\"", tmpdir);
	e = load_pin_key(attrs);
	expect_pin_err(e, "no-such-pin", NULL);
	engine_free(e);

	cur_case = "pin-env";
	setenv("HSMFS_TEST_PIN", "env-pin", 1);
	e = load_pin_key("pin.env=\"HSMFS_TEST_PIN\"");
	expect_pin(e, "env-pin");
	cur_case = "pin-env-empty";
	setenv("HSMFS_TEST_PIN", "", 1);
	expect_pin_err(e, "HSMFS_TEST_PIN", NULL);
	cur_case = "pin-env-unset";
	unsetenv("HSMFS_TEST_PIN");
	expect_pin_err(e, "HSMFS_TEST_PIN", NULL);
	engine_free(e);

	cur_case = "pin-encrypted";
	{
		char *s = pin_scramble("p&<\"w");
		snprintf(attrs, sizeof(attrs), "pin.encrypted=\"%s\"", s ? s : "");
		free(s);
		e = load_pin_key(attrs);
		expect_pin(e, "p&<\"w");
		engine_free(e);
	}

	cur_case = "pin-plain-escaped";
	e = load_pin_key("pin=\"a&amp;b&#x41;\"");
	expect_pin(e, "a&bA");
	engine_free(e);
}

/* ---- the Identity Manager's own file (issue 18) ---- */

#define CRLF_BOM_DOC \
	"\xEF\xBB\xBF<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n" \
	"<!-- engineSignEncrypt.xml of the Identity Manager -->\r\n" \
	"<engineSignEncrypt>\r\n" \
	"  <descriptors>\r\n" \
	"    <descriptor name=\"ConfigZipSigner\" version=\"1\">\r\n" \
	"      <type algorithm=\"SHA-256\" key=\"zip\"/>\r\n" \
	"    </descriptor>\r\n" \
	"    <descriptor name=\"ConfigZipEncrypter\" version=\"1\" owner=\"idm\">\r\n" \
	"      <type algorithm=\"AES/CBC/PKCS7Padding\" size=\"256\" key=\"cze\"\r\n" \
	"            asymCipher=\"RSA/None/OAEPWithSHA384AndMGF1Padding\"/>\r\n" \
	"    </descriptor>\r\n" \
	"    <descriptor name=\"SelfServiceJWTSigner\" version=\"2\">\r\n" \
	"      <type algorithm=\"SHA256withRSA\" key=\"jwt\" kid=\"x\"/>\r\n" \
	"    </descriptor>\r\n" \
	"    <descriptor name=\"att_android\">\r\n" \
	"      <type/>\r\n" \
	"    </descriptor>\r\n" \
	"  </descriptors>\r\n" \
	"  <keys>\r\n" \
	"    <key name=\"zip\">\r\n" \
	"      <type name=\"pkcs12\" locationValue=\"classpath:zip.p12\" pin=\"pw\"/>\r\n" \
	"    </key>\r\n" \
	"    <key name=\"cze\">\r\n" \
	"      <type name=\"hsm\" locationValue=\"/no/such/module.so\" alias=\"cze\"\r\n" \
	"            pin.encrypted=\"vendor-format-not-S1\" slot=\"first\" x=\"y\"/>\r\n" \
	"    </key>\r\n" \
	"    <key name=\"jwt\">\r\n" \
	"      <type name=\"pkcs12\" locationValue=\"classpath:missing.p12\" pin=\"pw\"/>\r\n" \
	"    </key>\r\n" \
	"    <key name=\"vault\">\r\n" \
	"      <type name=\"AzureKeyVault\" url=\"https://x\"/>\r\n" \
	"    </key>\r\n" \
	"  </keys>\r\n" \
	"</engineSignEncrypt>\r\n"

static void
case_unserved(void)
{
	struct engine *e;
	char p12[PATH_MAX + 32];
	const char *path;

	cur_case = "vendor-file";
	snprintf(p12, sizeof(p12), "%s/zip.p12", tmpdir);
	write_file(p12, "not parsed here", 0600);
	CHECK(engine_set_classpath(NULL) == 0);
	path = cfg_path(CRLF_BOM_DOC);
	e = NULL;
	err_clear();
	CHECK_DETAIL(engine_load(path, &e) == 0);
	if (e != NULL) {
		CHECK(e->ndescs == 1 && e->nunserved == 3);
		CHECK(strcmp(e->descs[0].key->location, p12) == 0);
		CHECK(e->descs[0].key->type == ENGINE_KEY_P12 &&
		    e->descs[0].key->served);
		CHECK(strcmp(e->unserved[0].name, "ConfigZipEncrypter") == 0);
		CHECK(strcmp(e->unserved[0].version, "1") == 0);
		CHECK(e->unserved[0].line == 8);
		CHECK(e->unserved[0].key != NULL && !e->unserved[0].key->served);
		CHECK(e->unserved[0].key->type == ENGINE_KEY_HSM);
		CHECK(e->unserved[0].key->pin_encrypted == NULL);
		CHECK(strcmp(e->unserved[1].key_name, "jwt") == 0);
		/* Unresolved: kept as written, never an error. */
		CHECK(strcmp(e->unserved[1].key->location,
		    "classpath:missing.p12") == 0);
		CHECK(e->unserved[2].version == NULL && e->unserved[2].key == NULL);
		CHECK(strcmp(engine_key_type_label(engine_key_by_name(e,
		    "vault")), "AzureKeyVault") == 0);
		CHECK(engine_newest(e, "SelfServiceJWTSigner") == NULL);
		engine_free(e);
	}

	/* A syntax error inside an unserved descriptor keeps its line. */
	expect_err("unserved-malformed", DOC(DESC_ZIP("k1")
	    "<descriptor name=\"SelfServiceJWTSigner\" version=\"1\">\n"
	    "  <type algorithm=\"SHA256withRSA\" key=jwt/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "key=jwt", "malformed XML");
	expect_err("unserved-missing-key", DOC(DESC_ZIP("k1")
	    "<descriptor name=\"hermodDeviceEnc\" version=\"1\">\n"
	    "  <type key=\"nope\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "hermodDeviceEnc", "key=\"nope\"");
	expect_err("unserved-stray-text", DOC(DESC_ZIP("k1")
	    "<descriptor name=\"idopteAuthentication\" version=\"1\">\n"
	    "  oops <type key=\"k1\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "oops", "unexpected text");
	expect_err("unserved-no-name", DOC(DESC_ZIP("k1")
	    "<descriptor version=\"1\">\n"
	    "  <type key=\"k1\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "<descriptor version", "'name'");
	/* A near miss of a served name is a typo, not a vendor descriptor. */
	expect_err("near-miss", DOC(
	    "<descriptor name=\"EncryptedField\" version=\"1\">\n"
	    "  <type algorithm=\"SHA-256\" key=\"k1\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "EncryptedField\"", "EncryptedFields");
	expect_err("case-miss", DOC(
	    "<descriptor name=\"configZipSigner\" version=\"1\">\n"
	    "  <type algorithm=\"SHA-256\" key=\"k1\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "configZipSigner", "ConfigZipSigner");
	/* A served key keeps the strict checks, whatever else names it. */
	expect_err("served-key-strict", DOC(DESC_ZIP("k1")
	    "<descriptor name=\"att_ios\" version=\"1\"><type key=\"k1\"/></descriptor>\n",
	    "<key name=\"k1\">\n"
	    "  <type name=\"p12\" locationValue=\"/x.p12\" pin=\"pw\"\n"
	    "        colour=\"red\"/>\n"
	    "</key>\n"), "colour", "'colour'");
	/* A key no descriptor names: strict when it can be (keygen prepares
	 * such keys), else kept unusable with the reason. */
	cur_case = "orphan-keys";
	e = load_ok(DOC(DESC_ZIP("k1"), KEY_P12("k1")
	    "<key name=\"next\">\n"
	    "  <type name=\"HSM\" locationValue=\"/m.so\" alias=\"n\" pin=\"12\"/>\n"
	    "</key>\n"
	    "<key name=\"old\">\n"
	    "  <type name=\"HSM\" locationValue=\"/m.so\" alias=\"o\" pin=\"12\"\n"
	    "        slot=\"first\"/>\n"
	    "</key>\n"));
	if (e != NULL) {
		const struct engine_key *k = engine_key_by_name(e, "next");
		CHECK(k && k->problem == NULL && strcmp(k->pin, "12") == 0);
		k = engine_key_by_name(e, "old");
		CHECK(k && k->problem && strstr(k->problem, "slot=") != NULL);
		CHECK(k && k->pin == NULL && !k->has_slot);
		k = engine_key_by_name(e, "k1");
		CHECK(k && k->problem == NULL && k->served);
		engine_free(e);
	}
	/* Character references can put a newline into an unserved name or
	 * version: escaped, so check and .status lines stay one line. */
	cur_case = "unserved-controls";
	e = load_ok(DOC(DESC_ZIP("k1")
	    "<descriptor name=\"x&#10;folder.sign-out: ready\" version=\"1&#13;\">\n"
	    "  <type key=\"k1\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")));
	CHECK(e != NULL && e->nunserved == 1);
	CHECK(e != NULL && strcmp(e->unserved[0].name,
	    "x\\x0afolder.sign-out: ready") == 0);
	CHECK(e != NULL && strcmp(e->unserved[0].version, "1\\x0d") == 0);
	engine_free(e);
	/* UTF-16 (with its byte order mark) as Windows editors save it. */
	cur_case = "utf16";
	{
		static const char doc[] = DOC(DESC_ZIP("k1")
		    "<descriptor name=\"att_ios\" version=\"1\"><type key=\"k1\"/></descriptor>\n",
		    KEY_P12("k1"));
		char path16[PATH_MAX + 32];
		unsigned char *w = malloc(2 * sizeof(doc) + 2);
		size_t n = 0;
		FILE *f;
		snprintf(path16, sizeof(path16), "%s/utf16.xml", tmpdir);
		w[n++] = 0xff;
		w[n++] = 0xfe;
		for (size_t i = 0; i + 1 < sizeof(doc); i++) {
			w[n++] = (unsigned char)doc[i];
			w[n++] = 0;
		}
		f = fopen(path16, "w");
		CHECK(f != NULL && fwrite(w, 1, n, f) == n && fclose(f) == 0);
		chmod(path16, 0600);
		free(w);
		e = NULL;
		CHECK_DETAIL(engine_load(path16, &e) == 0);
		CHECK(e != NULL && e->ndescs == 1 && e->nunserved == 1 &&
		    strcmp(e->unserved[0].name, "att_ios") == 0);
		engine_free(e);
	}
	/* A BOM in the middle (two files pasted together) is named. */
	expect_err("bom-inside", DOC(DESC_ZIP("k1"), "\xef\xbb\xbf" KEY_P12("k1")),
	    "<key name", "byte order mark");
	/* Case-insensitive types; an unknown type only on a served key. */
	cur_case = "type-case";
	e = load_ok(DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"Pkcs12\" locationValue=\"/x.p12\" pin=\"pw\"/>\n"
	    "</key>\n"));
	CHECK(e != NULL && e->keys[0].type == ENGINE_KEY_P12);
	engine_free(e);
}

static void
case_init_vector(void)
{
	struct engine *e;

	/* Older version: accepted (its envelopes carry their IV). */
	cur_case = "iv-old-version";
	e = load_ok(DOC(
	    "<descriptor name=\"EncryptedFields\" version=\"1\">\n"
	    "  <type algorithm=\"AES/CBC/PKCS7Padding\" size=\"256\" key=\"k1\"\n"
	    "        initVector=\"AAECAwQFBgcICQoLDA0ODw==\" asymCipher=\"" OAEP384 "\"/>\n"
	    "</descriptor>\n"
	    DESC_FIELDS("2", "k1", OAEP384), KEY_P12("k1")));
	CHECK_DETAIL(e != NULL && e->descs[0].iv_line == 6);
	engine_free(e);
	/* Newest version: would encrypt new data with a fixed IV. */
	expect_err("iv-newest", DOC(DESC_FIELDS("1", "k1", OAEP384)
	    "<descriptor name=\"EncryptedFields\" version=\"2\">\n"
	    "  <type algorithm=\"AES/CBC/PKCS7Padding\" size=\"256\" key=\"k1\"\n"
	    "        initVector=\"AAECAwQFBgcICQoLDA0ODw==\" asymCipher=\"" OAEP384 "\"/>\n"
	    "</descriptor>\n", KEY_P12("k1")), "initVector", "fixed IV");
}

static void
case_classpath(void)
{
	char d1[PATH_MAX + 16], d2[PATH_MAX + 16], list[2 * PATH_MAX + 64];
	char p12[PATH_MAX + 32], xml[2 * PATH_MAX + 1024];
	struct engine *e;

	cur_case = "classpath";
	snprintf(d1, sizeof(d1), "%s/cp1", tmpdir);
	snprintf(d2, sizeof(d2), "%s/cp2", tmpdir);
	mkdir(d1, 0700);
	mkdir(d2, 0700);
	snprintf(p12, sizeof(p12), "%s/sign_new.p12", d2);
	write_file(p12, "x", 0600);
	snprintf(list, sizeof(list), "%s:%s", d1, d2);
	CHECK_DETAIL(engine_set_classpath(list) == 0);
	snprintf(xml, sizeof(xml), DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"PKCS12\" locationValue=\"classpath:/sign_new.p12\" pin=\"pw\"/>\n"
	    "</key>\n"));
	e = load_ok(xml);
	CHECK(e != NULL && strcmp(e->keys[0].location, p12) == 0);
	engine_free(e);
	/* Not found: one line naming every place tried. */
	expect_err("classpath-missing", DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"P12\" locationValue=\"classpath:nope.p12\" pin=\"pw\"/>\n"
	    "</key>\n"), "classpath:nope", "cp2/nope.p12");
	CHECK(strstr(err_detail(), "cp1/nope.p12") != NULL);
	/* Nothing outside the class path, as Java's class loader. */
	expect_err("classpath-dotdot", DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"P12\" locationValue=\"classpath:../cp2/sign_new.p12\" pin=\"pw\"/>\n"
	    "</key>\n"), "classpath:../", "leave the class path");
	expect_err("classpath-dotdot-inner", DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"P12\" locationValue=\"classpath:a/../../cp2/sign_new.p12\" pin=\"pw\"/>\n"
	    "</key>\n"), "classpath:a/", "leave the class path");
	cur_case = "classpath-dots-in-name";
	snprintf(xml, sizeof(xml), "%s/..x.p12", d1);
	write_file(xml, "x", 0600);
	e = load_ok(DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"P12\" locationValue=\"classpath:..x.p12\" pin=\"pw\"/>\n"
	    "</key>\n"));
	CHECK(e != NULL && strstr(e->keys[0].location, "/cp1/..x.p12") != NULL);
	engine_free(e);
	expect_err("classpath-module", DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" locationValue=\"classpath:x.so\" alias=\"a\" pin=\"1\"/>\n"
	    "</key>\n"), "classpath:x.so", "native library");
	/* A symlinked class directory is kept as a link: after an upgrade
	 * flips it, a new load finds the new release's files. */
	cur_case = "classpath-symlink";
	{
		char link[PATH_MAX + 32];
		snprintf(link, sizeof(link), "%s/current", tmpdir);
		CHECK(symlink(d1, link) == 0);
		CHECK_DETAIL(engine_set_classpath(link) == 0);
		CHECK(unlink(link) == 0 && symlink(d2, link) == 0);
		e = load_ok(DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
		    "  <type name=\"P12\" locationValue=\"classpath:sign_new.p12\" pin=\"pw\"/>\n"
		    "</key>\n"));
		CHECK(e != NULL && strstr(e->keys[0].location, "/current/sign_new.p12"));
		engine_free(e);
		CHECK(engine_set_classpath(d2) == 0);
		CHECK(engine_set_classpath("cp-relative-missing") == HSMFS_ERR_CONFIG);
		CHECK_DETAIL(strstr(err_detail(), "No such file") != NULL);
		CHECK(engine_set_classpath(p12) == HSMFS_ERR_CONFIG);
		CHECK_DETAIL(strstr(err_detail(), "not a directory") != NULL);
	}
	cur_case = "classpath-bad-dir";
	CHECK(engine_set_classpath("/no/such/dir") == HSMFS_ERR_CONFIG);
	CHECK_DETAIL(strstr(err_detail(), "/no/such/dir") != NULL);
	CHECK(engine_set_classpath("") == HSMFS_ERR_CONFIG);
	CHECK(engine_set_classpath(NULL) == 0);
	/* file: URLs. */
	cur_case = "file-url";
	snprintf(xml, sizeof(xml), DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"P12\" locationValue=\"file://%s\" pin=\"pw\"/>\n"
	    "</key>\n"), p12);
	e = load_ok(xml);
	CHECK(e != NULL && strcmp(e->keys[0].location, p12) == 0);
	engine_free(e);
	expect_err("file-url-relative", DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" locationValue=\"file:libsofthsm2.so\" alias=\"a\" pin=\"1\"/>\n"
	    "</key>\n"), "file:libsofthsm2", "absolute path");
	expect_err("file-url-remote", DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"P12\" locationValue=\"file://host/x.p12\" pin=\"pw\"/>\n"
	    "</key>\n"), "file://host", "remote host");
}

static void
case_uri(void)
{
	struct engine *e;
	const struct engine_key *k;

	cur_case = "uri";
	e = load_ok(DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" uri=\"pkcs11:token=my%20token;object=zip;"
	    "type=private;slot-id=7?module-name=softhsm2&amp;pin-source=file:pin.txt\"/>\n"
	    "</key>\n"));
	k = e ? &e->keys[0] : NULL;
	CHECK(k != NULL && k->has_uri);
	CHECK(k != NULL && strcmp(k->token_label, "my token") == 0);
	CHECK(k != NULL && strcmp(k->alias, "zip") == 0);
	CHECK(k != NULL && k->has_slot && k->slot == 7);
	CHECK(k != NULL && strcmp(k->location, "softhsm2") == 0);
	CHECK(k != NULL && strstr(k->pin_file, "/pin.txt") != NULL &&
	    k->pin_file[0] == '/');
	engine_free(e);
	cur_case = "uri-pin-value";
	e = load_ok(DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" locationValue=\"/m.so\"\n"
	    "        uri=\"pkcs11:object=zip?pin-value=12%3B4\"/>\n"
	    "</key>\n"));
	CHECK(e != NULL && strcmp(e->keys[0].pin, "12;4") == 0);
	CHECK(e != NULL && strcmp(e->keys[0].location, "/m.so") == 0);
	engine_free(e);
	expect_err("uri-and-alias", DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" uri=\"pkcs11:object=zip?module-path=/m.so\"\n"
	    "        alias=\"zip\" pin=\"1\"/>\n"
	    "</key>\n"), "alias=", "keep one");
	expect_err("uri-unsupported", DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" pin=\"1\" locationValue=\"/m.so\"\n"
	    "        uri=\"pkcs11:serial=1234;object=zip\"/>\n"
	    "</key>\n"), "uri=", "'serial'");
	expect_err("uri-type-cert", DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" pin=\"1\" locationValue=\"/m.so\"\n"
	    "        uri=\"pkcs11:object=zip;type=cert\"/>\n"
	    "</key>\n"), "uri=", "private");
	expect_err("uri-no-object", DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" pin=\"1\" locationValue=\"/m.so\"\n"
	    "        uri=\"pkcs11:token=t\"/>\n"
	    "</key>\n"), "uri=", "object=");
	expect_err("uri-bad-escape", DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" pin=\"1\" locationValue=\"/m.so\"\n"
	    "        uri=\"pkcs11:object=a%zz\"/>\n"
	    "</key>\n"), "uri=", "escape");
	expect_err("uri-two-pins", DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" locationValue=\"/m.so\" pin=\"1\"\n"
	    "        uri=\"pkcs11:object=a?pin-value=2\"/>\n"
	    "</key>\n"), "pin=", "PIN source");
	/* A query attribute without '=' may be a mistyped pin-value: the
	 * message must not carry it. */
	expect_err("uri-query-no-eq", DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" locationValue=\"/m.so\"\n"
	    "        uri=\"pkcs11:object=a?pin-valueS3CR3T\"/>\n"
	    "</key>\n"), "uri=", "without '='");
	CHECK(strstr(err_detail(), "S3CR3T") == NULL);
	expect_err("uri-name-case", DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" locationValue=\"/m.so\" pin=\"1\"\n"
	    "        uri=\"pkcs11:Object=a\"/>\n"
	    "</key>\n"), "uri=", "write object=");
	expect_err("uri-no-module", DOC(DESC_ZIP("k1"), "<key name=\"k1\">\n"
	    "  <type name=\"HSM\" pin=\"1\"\n"
	    "        uri=\"pkcs11:object=a\"/>\n"
	    "</key>\n"), "uri=", "module-name");
}

int
main(void)
{
	char tmpl[PATH_MAX];
	const char *t = getenv("TMPDIR");

	log_init("test-engine", 0, LOG_WARNING);
	/* PINs then come from the locked secure heap, as in hsmfs. */
	secmem_init(65536);
	snprintf(tmpl, sizeof(tmpl), "%s/hsmfs-test-engine.XXXXXX",
	    t && *t ? t : "/tmp");
	if (mkdtemp(tmpl) == NULL) {
		perror("mkdtemp");
		return 2;
	}
	snprintf(tmpdir, sizeof(tmpdir), "%s", tmpl);

	case_spec_example();
	case_two_versions();
	case_normalisation();
	case_mode_warning();
	case_errors();
	case_entities();
	case_scramble();
	case_pin_sources();
	case_unserved();
	case_init_vector();
	case_classpath();
	case_uri();

	if (failures == 0) {
		char cmd[PATH_MAX + 16];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", tmpdir);
		printf("test-engine: all cases passed\n");
		return 0;
	}
	fprintf(stderr, "test-engine: %d failure(s); files kept in %s\n",
	    failures, tmpdir);
	return 1;
}
