/* hsmfs's own reading of zips, for the differential harness
 * (tests/differential/harness.py): the verdict of jar_verify() and, when
 * hsmfs's zip parser accepts the file, the entries it reads, in
 * central-directory order, with the SHA-256 of the bytes it reads for each
 * (the same streaming inflate the verifier digests entries with).
 *
 * White-box on purpose: it uses crypto/zip_int.h (the reader's internal
 * API), so that the parse shown is the verifier's own and not a
 * re-implementation of it.
 *
 * Usage: hsmfs-zipdump [--trust CERTS.pem] ZIP...   (or "-" alone: one path
 * per line on stdin). For each zip, on stdout:
 *   file <path>
 *   verdict valid <signer> | verdict invalid <reason>
 *   parse ok | parse error <reason>
 *   entry <name in hex> dir                       (a directory: no bytes)
 *   entry <name in hex> <size> <sha256 hex>
 *   entry <name in hex> error <reason>            (hsmfs cannot read it)
 *   end
 */
#include "crypto/jar.h"
#include "crypto/zip_int.h"
#include "common/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

static void
one_line(char *s)
{
	for (; *s; s++)
		if (*s == '\n' || *s == '\r')
			*s = ' ';
}

static void
put_hex(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		printf("%02x", p[i]);
}

static void
dump(const char *path, const struct jar_trust *t)
{
	struct jar_verdict v;
	struct zarc z;
	const EVP_MD *md = EVP_sha256();
	int r;

	printf("file %s\n", path);
	r = jar_verify(path, t, &v);
	if (r == 0 && v.valid) {
		one_line(v.signer);
		printf("verdict valid %s\n", v.signer);
	} else {
		one_line(v.reason);
		printf("verdict invalid %s\n", v.reason[0] ? v.reason : "(no reason)");
	}
	err_clear();
	if ((r = zarc_open(path, &z)) != 0) {
		char buf[512];
		snprintf(buf, sizeof(buf), "%s", err_detail());
		one_line(buf);
		printf("parse error %s\nend\n", buf);
		err_clear();
		return;
	}
	printf("parse ok\n");
	for (size_t i = 0; i < z.n; i++) {
		const struct zent *e = &z.e[i];
		uint8_t d[1][EVP_MAX_MD_SIZE];
		printf("entry ");
		put_hex((const uint8_t *)e->name, e->nlen);
		if (zent_is_dir(e)) {
			/* The verifier reads no bytes of a directory: what it
			 * vouches for is an empty directory. */
			printf(" dir\n");
			continue;
		}
		err_clear();
		if ((r = zent_digest(&z, e, &md, 1, d)) != 0) {
			char buf[512];
			snprintf(buf, sizeof(buf), "%s", err_detail());
			one_line(buf);
			printf(" error %s\n", buf);
			continue;
		}
		printf(" %llu ", (unsigned long long)e->usize);
		put_hex(d[0], 32);
		printf("\n");
	}
	zarc_close(&z);
	err_clear();
	printf("end\n");
}

int
main(int argc, char **argv)
{
	struct jar_trust t = { NULL, 0, NULL };
	int i = 1;

	log_init("hsmfs-zipdump", 0, -1);
	if (argc > 2 && strcmp(argv[1], "--trust") == 0) {
		if (jar_trust_load_pem(argv[2], &t.store) != 0) {
			fprintf(stderr, "hsmfs-zipdump: %s: %s\n", argv[2], err_detail());
			return 2;
		}
		i = 3;
	}
	if (i >= argc) {
		fprintf(stderr, "usage: hsmfs-zipdump [--trust CERTS.pem] ZIP... | -\n");
		return 2;
	}
	if (argc == i + 1 && strcmp(argv[i], "-") == 0) {
		char line[4096];
		while (fgets(line, sizeof(line), stdin) != NULL) {
			line[strcspn(line, "\n")] = '\0';
			if (line[0])
				dump(line, &t);
		}
	} else {
		for (; i < argc; i++)
			dump(argv[i], &t);
	}
	if (t.store)
		X509_STORE_free(t.store);
	return fflush(stdout) == 0 ? 0 : 1;
}
