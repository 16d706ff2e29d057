/* PIN sources of engineSignEncrypt.xml keys (pin, pin.encrypted,
 * pin.file, pin.env) and the pin.encrypted scramble. Split out of
 * engine.c; PINs only ever live in OpenSSL's secure heap. */
#include "crypto/pin.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

/* ---- PINs ---- */

static char *
secure_strndup(const char *s, size_t n)
{
	char *c = secmem_alloc(n + 1);
	if (c != NULL) {
		memcpy(c, s, n);
		c[n] = '\0';
	}
	return c;
}

/* pin.file: the whole file, one trailing LF or CRLF stripped. Read
 * straight into secure memory (no stdio buffers): not util_read_file,
 * which reads into plain malloc memory (tool/fieldtool.c's stdin reader
 * differs from it for the same reason). */
static int
pin_from_file(const struct engine_key *k, char **pin)
{
	const size_t cap = ENGINE_MAX_PIN + 3;
	char *buf = NULL;
	size_t n = 0;
	struct stat st;
	int fd = -1, r = HSMFS_ERR_CONFIG;

	if ((fd = open(k->pin_file, O_RDONLY | O_CLOEXEC | O_NOCTTY)) < 0) {
		err_set("pin.file %s (line %d): cannot open: %s; create it or fix "
		    "pin.file", k->pin_file, k->line, strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 077))
		log_warn("pin.file %s of key %s: accessible by group or others "
		    "(mode %04o); run chmod 600 %s", k->pin_file, k->name,
		    (unsigned)(st.st_mode & 07777), k->pin_file);
	if ((buf = secmem_alloc(cap + 1)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	for (;;) {
		ssize_t got = read(fd, buf + n, cap - n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			err_set("pin.file %s: read: %s", k->pin_file, strerror(errno));
			goto out;
		}
		if (got == 0)
			break;
		n += (size_t)got;
		if (n == cap) {
			err_set("pin.file %s: longer than %d bytes; it must hold only "
			    "the PIN", k->pin_file, ENGINE_MAX_PIN);
			goto out;
		}
	}
	if (n > 0 && buf[n - 1] == '\n') {
		n--;
		if (n > 0 && buf[n - 1] == '\r')
			n--;
	}
	if (n == 0) {
		err_set("pin.file %s is empty; write the PIN into it", k->pin_file);
		goto out;
	}
	if (memchr(buf, '\0', n) || memchr(buf, '\n', n) || memchr(buf, '\r', n)) {
		err_set("pin.file %s holds more than one line or a NUL byte; it "
		    "must hold only the PIN", k->pin_file);
		goto out;
	}
	if (n > ENGINE_MAX_PIN) {
		err_set("pin.file %s: longer than %d bytes; it must hold only the "
		    "PIN", k->pin_file, ENGINE_MAX_PIN);
		goto out;
	}
	if ((*pin = secure_strndup(buf, n)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	r = 0;
out:
	secmem_free(buf, cap + 1);
	if (fd >= 0)
		close(fd);
	return r;
}

int
pin_of_key(const struct engine_key *k, char **pin)
{
	const char *v;

	if (k->pin != NULL) {
		if ((*pin = secure_strndup(k->pin, strlen(k->pin))) == NULL)
			return HSMFS_ERR_NOMEM;
		return 0;
	}
	if (k->pin_encrypted != NULL)
		return pin_unscramble(k->pin_encrypted, pin);
	if (k->pin_file != NULL)
		return pin_from_file(k, pin);
	if (k->pin_env != NULL) {
		if ((v = getenv(k->pin_env)) == NULL || v[0] == '\0') {
			err_set("pin.env: environment variable %s (line %d) is not "
			    "set or empty; export it before starting", k->pin_env,
			    k->line);
			return HSMFS_ERR_CONFIG;
		}
		if (strlen(v) > ENGINE_MAX_PIN) {
			err_set("pin.env: environment variable %s is longer than %d "
			    "bytes", k->pin_env, ENGINE_MAX_PIN);
			return HSMFS_ERR_CONFIG;
		}
		if ((*pin = secure_strndup(v, strlen(v))) == NULL)
			return HSMFS_ERR_NOMEM;
		return 0;
	}
	err_set("no PIN source (line %d); add pin, pin.encrypted, pin.file or "
	    "pin.env", k->line);
	return HSMFS_ERR_CONFIG;
}

void
pin_free(char *pin)
{
	if (pin != NULL)
		secmem_free(pin, strlen(pin) + 1);
}

/*
 * pin.encrypted, format "S1:" base64(salt || body):
 *   salt  8 random bytes
 *   body  (pin || check) XOR keystream, check = SHA-256(CHECK || salt ||
 *         pin)[0..3], keystream block i = SHA-256(KEY || salt || be32(i)).
 * The constants are public, so anyone with this source recovers the PIN:
 * it only keeps the PIN from being read over a shoulder or grepped. The
 * check value catches edited or truncated values before a login attempt
 * (a wrong PIN would count against the token's retry limit).
 */
#define SCRAMBLE_PREFIX "S1:"
#define SCRAMBLE_SALT 8
#define SCRAMBLE_CHECK 4
static const char scramble_key[] = "hsmfs pin.encrypted v1 keystream";
static const char scramble_chk[] = "hsmfs pin.encrypted v1 check";

static int
scramble_xor(const uint8_t *salt, uint8_t *data, size_t len)
{
	uint8_t block[32];
	int r = HSMFS_ERR_CRYPTO;

	for (uint32_t i = 0; (size_t)i * 32 < len; i++) {
		uint8_t ctr[4] = {(uint8_t)(i >> 24), (uint8_t)(i >> 16),
			(uint8_t)(i >> 8), (uint8_t)i};
		EVP_MD_CTX *c = EVP_MD_CTX_new();
		int ok = c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) &&
		    EVP_DigestUpdate(c, scramble_key, sizeof(scramble_key) - 1) &&
		    EVP_DigestUpdate(c, salt, SCRAMBLE_SALT) &&
		    EVP_DigestUpdate(c, ctr, sizeof(ctr)) &&
		    EVP_DigestFinal_ex(c, block, NULL);
		EVP_MD_CTX_free(c);
		if (!ok)
			goto out;
		for (size_t j = 0; j < 32 && (size_t)i * 32 + j < len; j++)
			data[(size_t)i * 32 + j] ^= block[j];
	}
	r = 0;
out:
	OPENSSL_cleanse(block, sizeof(block));
	return r;
}

static int
scramble_check(const uint8_t *salt, const char *pin, size_t len,
    uint8_t out[SCRAMBLE_CHECK])
{
	uint8_t h[32];
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	int ok = c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) &&
	    EVP_DigestUpdate(c, scramble_chk, sizeof(scramble_chk) - 1) &&
	    EVP_DigestUpdate(c, salt, SCRAMBLE_SALT) &&
	    EVP_DigestUpdate(c, pin, len) && EVP_DigestFinal_ex(c, h, NULL);

	EVP_MD_CTX_free(c);
	memcpy(out, h, SCRAMBLE_CHECK);
	OPENSSL_cleanse(h, sizeof(h));
	return ok ? 0 : HSMFS_ERR_CRYPTO;
}

char *
pin_scramble(const char *pin)
{
	size_t n = pin ? strlen(pin) : 0, total = SCRAMBLE_SALT + n + SCRAMBLE_CHECK;
	uint8_t *raw = NULL;
	char *b64 = NULL, *res = NULL;

	if (n == 0 || n > ENGINE_MAX_PIN)
		return NULL;
	if ((raw = secmem_alloc(total)) == NULL)
		goto out;
	if (RAND_bytes(raw, SCRAMBLE_SALT) != 1)
		goto out;
	memcpy(raw + SCRAMBLE_SALT, pin, n);
	if (scramble_check(raw, pin, n, raw + SCRAMBLE_SALT + n) != 0 ||
	    scramble_xor(raw, raw + SCRAMBLE_SALT, n + SCRAMBLE_CHECK) != 0)
		goto out;
	if ((b64 = util_b64_encode(raw, total)) == NULL)
		goto out;
	if (asprintf(&res, SCRAMBLE_PREFIX "%s", b64) < 0)
		res = NULL;
out:
	secmem_free(raw, total);
	free(b64);
	return res;
}

int
pin_unscramble(const char *scrambled, char **pin)
{
	uint8_t *raw = NULL, chk[SCRAMBLE_CHECK];
	size_t rawlen = 0, n;
	const char *b64;
	int r = HSMFS_ERR_CONFIG;

	if (scrambled == NULL || strncmp(scrambled, SCRAMBLE_PREFIX,
	    strlen(SCRAMBLE_PREFIX)) != 0) {
		err_set("pin.encrypted is not a value made by hsmfs-tool "
		    "scramble-pin (it starts with \"" SCRAMBLE_PREFIX "\"); run "
		    "it again");
		return HSMFS_ERR_CONFIG;
	}
	b64 = scrambled + strlen(SCRAMBLE_PREFIX);
	if (util_b64_decode(b64, strlen(b64), &raw, &rawlen) != 0) {
		raw = NULL;
		err_set("pin.encrypted: damaged value (not base64 after \""
		    SCRAMBLE_PREFIX "\"); run hsmfs-tool scramble-pin again");
		goto out;
	}
	if (rawlen < SCRAMBLE_SALT + 1 + SCRAMBLE_CHECK ||
	    rawlen > SCRAMBLE_SALT + ENGINE_MAX_PIN + SCRAMBLE_CHECK) {
		err_set("pin.encrypted: damaged value (wrong length); run "
		    "hsmfs-tool scramble-pin again");
		goto out;
	}
	n = rawlen - SCRAMBLE_SALT - SCRAMBLE_CHECK;
	if ((r = scramble_xor(raw, raw + SCRAMBLE_SALT, n + SCRAMBLE_CHECK)) != 0) {
		err_set_ossl("pin.encrypted: SHA-256 failed");
		goto out;
	}
	r = HSMFS_ERR_CONFIG;
	if (scramble_check(raw, (const char *)raw + SCRAMBLE_SALT, n, chk) != 0) {
		r = HSMFS_ERR_CRYPTO;
		err_set_ossl("pin.encrypted: SHA-256 failed");
		goto out;
	}
	if (CRYPTO_memcmp(chk, raw + SCRAMBLE_SALT + n, SCRAMBLE_CHECK) != 0 ||
	    memchr(raw + SCRAMBLE_SALT, '\0', n) != NULL) {
		err_set("pin.encrypted: damaged value (check value does not match: "
		    "edited or truncated); run hsmfs-tool scramble-pin again");
		goto out;
	}
	if ((*pin = secure_strndup((const char *)raw + SCRAMBLE_SALT, n)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	r = 0;
out:
	if (raw != NULL) {
		OPENSSL_cleanse(raw, rawlen);
		free(raw);
	}
	OPENSSL_cleanse(chk, sizeof(chk));
	return r;
}

void
pin_scrub_env(const struct engine *e)
{
	extern char **environ;

	for (size_t i = 0; e != NULL && i < e->nkeys; i++) {
		const char *var = e->keys[i].pin_env;
		size_t n;
		if (var == NULL)
			continue;
		n = strlen(var);
		/* The initial environment lives in the stack block that
		 * /proc/PID/environ shows; unsetenv alone leaves it there. */
		for (char **ep = environ; ep != NULL && *ep != NULL; ep++)
			if (strncmp(*ep, var, n) == 0 && (*ep)[n] == '=')
				OPENSSL_cleanse(*ep + n + 1, strlen(*ep + n + 1));
		unsetenv(var);
	}
}
