/* libFuzzer target: the differential rule of tests/differential/ in
 * process. Whenever hsmfs finds a zip valid (signers: the committed
 * certificates tests/data/jar/fixture-signer.pem and
 * tests/differential/differential-signer.pem), libzip, opened with and
 * without ZIP_CHECKCONS, must list exactly hsmfs's entries (same names,
 * same order) and give exactly the bytes hsmfs read for each (compared by
 * size and SHA-256; a directory holds none). A disagreement aborts.
 * White-box: it uses crypto/zip_int.h (the reader's internal API), so
 * that hsmfs's view is the verifier's own parse (zarc_open) and inflate (zent_digest). Seeds: the
 * signed fixtures and mutants of them (tests/differential/mutate.py). */
#include "fuzz_common.h"
#include "crypto/jar.h"
#include "crypto/zip_int.h"
#include "common/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

static const char fixture_signer_pem[] =
	"-----BEGIN CERTIFICATE-----\n"
	"MIIDHDCCAgSgAwIBAgIIeGaFP94fSxIwDQYJKoZIhvcNAQELBQAwNTEUMBIGA1UE\n"
	"ChMLaHNtZnMgdGVzdHMxHTAbBgNVBAMTFGhzbWZzIGZpeHR1cmUgc2lnbmVyMCAX\n"
	"DTI2MTEyNzA0NTA0NloYDzIxMjYxMTAzMDQ1MDQ2WjA1MRQwEgYDVQQKEwtoc21m\n"
	"cyB0ZXN0czEdMBsGA1UEAxMUaHNtZnMgZml4dHVyZSBzaWduZXIwggEiMA0GCSqG\n"
	"SIb3DQEBAQUAA4IBDwAwggEKAoIBAQCoBXXG7OXiQA0LIPCs5iVNlEFxR50HdptJ\n"
	"V8Ft6Iz/q0yCTnrBBwIei1HU/8hbFFYI+s6rJOicLezmtMtxDcWTs9VpaQKcCTZg\n"
	"aBc/HUIhI7rF1TtSHIjrIqA1lzX+MrurNUReWlTw2BF39mr2gUxAoIxAnPVbmPAh\n"
	"WXshcMQAcw3me4gZSX5px38x7HV8IPIX13W6muqDJu2AkSDfMakZlLbGCnFYtWTZ\n"
	"dYhRAF7fOhHQnB6JHcr6uzQrCxgWjX3ZzsahUypdy9nPIPxXeC4MQPb257w7SQ+F\n"
	"YMS4JcAQwmVCQN8zAUYj9w4TST7friQPaukjMfQem1Qgs215/R0JAgMBAAGjLjAs\n"
	"MB0GA1UdDgQWBBQ907yCrS94yciF7RGfR/nO0mrgRTALBgNVHQ8EBAMCB4AwDQYJ\n"
	"KoZIhvcNAQELBQADggEBAGqExLLXebFeoDI7gn+j9847tK/Y3t+8rShYISRfEY1m\n"
	"K19klUpT+t4pMOarcG9ks9onjqmxsGGq+u8PNn3n9hfVyYQQb6V79dlX5PogPEo+\n"
	"dy6KR3NR4g7WbH4+85qcp3HWkmi5rcjY3n1Alil/npg9EXYExXI98J7bx5mxKNne\n"
	"zIR+ggGtDDzvkKGriudjzNljL1Zl/pOBVzd/jNNcKwRkS/6ALVT9pATr32nqgblb\n"
	"UwBmSl3JI0SwOzMgtlOUC9nMR3KY+MdWXTG2oP17bJ8zri1RiyoGxxXG/YfflqMR\n"
	"YYVKAa92kbJM092QzWnsWLPXH7yZZ6h4CWZ9lnXcNqM=\n"
	"-----END CERTIFICATE-----\n"
	;

/* tests/differential/differential-signer.pem (signs base-utf8.zip) */
static const char differential_signer_pem[] =
	"-----BEGIN CERTIFICATE-----\n"
	"MIIDPDCCAiSgAwIBAgIJAOGWrLrCm1EYMA0GCSqGSIb3DQEBCwUAMDoxFDASBgNV\n"
	"BAoTC2hzbWZzIHRlc3RzMSIwIAYDVQQDExloc21mcyBkaWZmZXJlbnRpYWwgc2ln\n"
	"bmVyMCAXDTI2MTIwNTIxNDgxOVoYDzIxMjYxMTExMjE0ODE5WjA6MRQwEgYDVQQK\n"
	"Ewtoc21mcyB0ZXN0czEiMCAGA1UEAxMZaHNtZnMgZGlmZmVyZW50aWFsIHNpZ25l\n"
	"cjCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBAKjCl0WZDdqqUrbFTPMM\n"
	"xI0OvQoZdMyWWmVN+a3HeNyv+BHzxWj0+qB/p/AiTQwPWY3MdlcvjAGNavdoXiXP\n"
	"3dccyGlA6KbEdFDh0d+ayk8BxIiQ8siIH8R0a0Z/y9kJoRObYNPUDMwUsWZhMOvM\n"
	"IJxRt/NvWgVupS4o+qechlc6WNMAgnFTyLWeCXgE/9vAhLlI1bjExAA7tquRJh2J\n"
	"vQIcBdJNbkyRYplQzYj8STLlaf+x9M/31w3wGMC8qf5poYFYQ2eXQ3LZPm+MgPmr\n"
	"2AE45+bIZzfexTXzo8KKP+wb2uvY6biG1lxtTxlMrZ+tWjDrRzIBuLvGz5kjh8Y/\n"
	"MKUCAwEAAaNDMEEwHQYDVR0OBBYEFCQ/8kCwXNLojE/wL8R8COp+k5JUMAsGA1Ud\n"
	"DwQEAwIHgDATBgNVHSUEDDAKBggrBgEFBQcDAzANBgkqhkiG9w0BAQsFAAOCAQEA\n"
	"nHY/OhvLp+bH4EQU7qgGyR37O9lOIcro+64jahrW75iFiadw5IJLJcIl+6WFvf/m\n"
	"6lWAOBGsmfZIVvsZT/sw5JUxY9UpSdWHdb/a2JxE9lV0aqfdQ+gdWosKTjbwjzNG\n"
	"BY0k3iU2y/A2uQwOCFdY8oKRFFWQyz6tmRiK+Zl87H/8KEdZapwjjGNhIM9kJGpM\n"
	"WXXZ7w/hoKNA5S7DvVdLD/U+rZ6OKkOMhqyEkAAycmw68hqaEKr5vPw0/Uopa969\n"
	"YAi4AJ29uuVfwQdwkxf7P2sdNUERFxEKokI09515M3Wiu4euwAm04jeJk/caHIL7\n"
	"sCwLbFmpi2LkUF3GE/XB7g==\n"
	"-----END CERTIFICATE-----\n"
	;

static X509 *signer_certs[2];
static unsigned long nvalid, nrun;

static void
report(void)
{
	fprintf(stderr, "zipdiff: %lu inputs, %lu valid, compared with libzip\n",
	    nrun, nvalid);
}

static X509 *
pem_cert(const char *pem)
{
	BIO *b = BIO_new_mem_buf(pem, -1);
	X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;

	BIO_free(b);
	if (x == NULL)
		abort();
	return x;
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	fuzz_init(".zip");
	signer_certs[0] = pem_cert(fixture_signer_pem);
	signer_certs[1] = pem_cert(differential_signer_pem);
	atexit(report);
	return 0;
}

static void
disagree(const char *what, const char *name)
{
	fprintf(stderr, "zipdiff: hsmfs says valid, libzip disagrees: %s%s%s\n",
	    what, name ? ": " : "", name ? name : "");
	abort();
}

/* libzip's bytes of entry i against hsmfs's (size usize, SHA-256 d). */
static void
compare_entry(zip_t *za, zip_uint64_t i, const struct zent *e, int dir,
    const uint8_t *d)
{
	static uint8_t buf[65536];
	zip_file_t *f = zip_fopen_index(za, i, 0);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	uint8_t got[EVP_MAX_MD_SIZE];
	uint64_t total = 0;
	zip_int64_t n;

	if (f == NULL)
		disagree("libzip cannot open the entry", e->name);
	if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
		abort();
	while ((n = zip_fread(f, buf, sizeof(buf))) > 0) {
		EVP_DigestUpdate(ctx, buf, (size_t)n);
		total += (uint64_t)n;
	}
	if (n < 0)
		disagree("libzip cannot read the entry", e->name);
	zip_fclose(f);
	EVP_DigestFinal_ex(ctx, got, NULL);
	EVP_MD_CTX_free(ctx);
	if (dir ? total != 0 : total != e->usize || memcmp(got, d, 32) != 0)
		disagree(dir ? "a directory holds bytes" : "entry bytes differ", e->name);
}

static void
check_libzip(const struct zarc *z, int flags, uint8_t (*dig)[EVP_MAX_MD_SIZE])
{
	int ze = 0;
	zip_t *za = zip_open(fuzz_path, ZIP_RDONLY | flags, &ze);

	if (za == NULL)
		disagree(flags ? "libzip (ZIP_CHECKCONS) refuses the zip" :
		    "libzip refuses the zip", NULL);
	if ((uint64_t)zip_get_num_entries(za, 0) != z->n)
		disagree("entry count", NULL);
	for (size_t i = 0; i < z->n; i++) {
		const char *nm = zip_get_name(za, i, ZIP_FL_ENC_RAW);
		if (nm == NULL || strlen(nm) != z->e[i].nlen ||
		    memcmp(nm, z->e[i].name, z->e[i].nlen) != 0)
			disagree("entry name", z->e[i].name);
		compare_entry(za, i, &z->e[i], zent_is_dir(&z->e[i]), dig[i]);
	}
	zip_discard(za);
}

size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);

/* The last valid inputs seen: the corpus fills with invalid zips (each
 * refusal is new coverage), so mutations start from one of these half of
 * the time. */
#define POOL 64
static struct {
	uint8_t *p;
	size_t n;
} pool[POOL];
static size_t npool, pool_next;

static void
pool_add(const uint8_t *data, size_t len)
{
	uint8_t *c = malloc(len ? len : 1);
	if (c == NULL)
		return;
	memcpy(c, data, len);
	free(pool[pool_next].p);
	pool[pool_next].p = c;
	pool[pool_next].n = len;
	pool_next = (pool_next + 1) % POOL;
	if (npool < POOL)
		npool++;
}

/* Most of a signed zip is signed bytes: a random change there only breaks
 * the signature. Three times in four, change in place, without moving
 * anything, the 46 bytes after a random "PK\x01\x02"-style signature (a
 * local header, central record, descriptor, end or zip64 record), where a
 * change can keep the signature valid and still move what readers see:
 * one byte or bit (twice in four), or libFuzzer's mutations of the window.
 * Half of the time the input is first replaced by a valid one of the pool. */
size_t
LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size,
    unsigned int seed)
{
	size_t sig[512], n = 0, at, w, got;
	uint8_t win[46];

	if (npool > 0 && (seed & 0x40)) {
		size_t k = (seed >> 20) % npool;
		if (pool[k].n <= max_size) {
			memcpy(data, pool[k].p, pool[k].n);
			size = pool[k].n;
		}
	}
	for (size_t i = 0; i + 4 <= size && n < 512; i++)
		if (data[i] == 'P' && data[i + 1] == 'K' && data[i + 2] < 9 &&
		    data[i + 3] < 9)
			sig[n++] = i;
	if (n == 0 || seed % 4 == 0)
		return LLVMFuzzerMutate(data, size, max_size);
	at = sig[(seed / 4) % n] + 4;
	w = size - at < sizeof(win) ? size - at : sizeof(win);
	if (w == 0)
		return LLVMFuzzerMutate(data, size, max_size);
	if (seed % 4 != 1) {
		size_t k = at + (seed >> 8) % w;
		if (seed & 0x80)
			data[k] ^= (uint8_t)(1u << ((seed >> 4) & 7));
		else
			data[k] = (uint8_t)(seed >> 16);
		return size;
	}
	memcpy(win, data + at, w);
	got = LLVMFuzzerMutate(win, w, w);
	memcpy(data + at, win, got);
	return size;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	struct jar_trust t = { signer_certs, 2, NULL };
	struct jar_verdict v;
	struct zarc z;
	uint8_t (*dig)[EVP_MAX_MD_SIZE] = NULL;
	const EVP_MD *md = EVP_sha256();

	fuzz_write(data, len);
	nrun++;
	if (jar_verify(fuzz_path, &t, &v) != 0 || !v.valid) {
		err_clear();
		return 0;
	}
	nvalid++;
	pool_add(data, len);
	/* hsmfs's view: its parse and the bytes its inflate gives. */
	if (zarc_open(fuzz_path, &z) != 0)
		disagree("valid, but hsmfs's own parse fails", NULL);
	if ((dig = calloc(z.n ? z.n : 1, sizeof(*dig))) == NULL)
		abort();
	for (size_t i = 0; i < z.n; i++)
		if (!zent_is_dir(&z.e[i]) && zent_digest(&z, &z.e[i], &md, 1, &dig[i]) != 0)
			disagree("valid, but hsmfs cannot read an entry", z.e[i].name);
	check_libzip(&z, 0, dig);
	check_libzip(&z, ZIP_CHECKCONS, dig);
	free(dig);
	zarc_close(&z);
	err_clear();
	return 0;
}
