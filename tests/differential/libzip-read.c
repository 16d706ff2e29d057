/* One of the independent readers of the differential harness: what libzip
 * sees in a zip (entry names in its index order, the bytes zip_fread gives
 * for each), opened with or without ZIP_CHECKCONS.
 *
 * Usage: libzip-read [--checkcons] ZIP...   (or "-" alone: paths on stdin)
 * For each zip, on stdout:
 *   file <path>
 *   open ok | open error <libzip message>
 *   entry <name in hex> <size> <sha256 hex> | entry <name in hex> error <msg>
 *   end
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zip.h>
#include <openssl/evp.h>

static void
put_hex(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		printf("%02x", p[i]);
}

static void
clean(char *s)
{
	for (; *s; s++)
		if (*s == '\n' || *s == '\r')
			*s = ' ';
}

static void
dump(const char *path, int flags)
{
	int ze = 0;
	zip_t *za;
	zip_int64_t n;
	static unsigned char buf[65536];

	printf("file %s\n", path);
	if ((za = zip_open(path, ZIP_RDONLY | flags, &ze)) == NULL) {
		zip_error_t er;
		char msg[300];
		zip_error_init_with_code(&er, ze);
		snprintf(msg, sizeof(msg), "%s", zip_error_strerror(&er));
		zip_error_fini(&er);
		clean(msg);
		printf("open error %s\nend\n", msg);
		return;
	}
	printf("open ok\n");
	n = zip_get_num_entries(za, 0);
	for (zip_int64_t i = 0; i < n; i++) {
		const char *nm = zip_get_name(za, (zip_uint64_t)i, ZIP_FL_ENC_RAW);
		zip_file_t *f;
		EVP_MD_CTX *ctx;
		unsigned char d[EVP_MAX_MD_SIZE];
		unsigned dl = 0;
		unsigned long long total = 0;
		zip_int64_t got;
		char msg[300];

		printf("entry ");
		if (nm == NULL) {
			printf("- error no name\n");
			continue;
		}
		put_hex((const unsigned char *)nm, strlen(nm));
		if ((f = zip_fopen_index(za, (zip_uint64_t)i, 0)) == NULL) {
			snprintf(msg, sizeof(msg), "%s", zip_strerror(za));
			clean(msg);
			printf(" error %s\n", msg);
			continue;
		}
		ctx = EVP_MD_CTX_new();
		EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
		while ((got = zip_fread(f, buf, sizeof(buf))) > 0) {
			EVP_DigestUpdate(ctx, buf, (size_t)got);
			total += (unsigned long long)got;
		}
		if (got < 0) {
			snprintf(msg, sizeof(msg), "%s", zip_file_strerror(f));
			clean(msg);
			printf(" error %s\n", msg);
		} else {
			EVP_DigestFinal_ex(ctx, d, &dl);
			printf(" %llu ", total);
			put_hex(d, dl);
			printf("\n");
		}
		EVP_MD_CTX_free(ctx);
		zip_fclose(f);
	}
	zip_discard(za);
	printf("end\n");
}

int
main(int argc, char **argv)
{
	int i = 1, flags = 0;

	if (argc > 1 && strcmp(argv[1], "--checkcons") == 0) {
		flags = ZIP_CHECKCONS;
		i = 2;
	}
	if (i >= argc) {
		fprintf(stderr, "usage: libzip-read [--checkcons] ZIP... | -\n");
		return 2;
	}
	if (argc == i + 1 && strcmp(argv[i], "-") == 0) {
		char line[4096];
		while (fgets(line, sizeof(line), stdin) != NULL) {
			line[strcspn(line, "\n")] = '\0';
			if (line[0])
				dump(line, flags);
		}
	} else {
		for (; i < argc; i++)
			dump(argv[i], flags);
	}
	return fflush(stdout) == 0 ? 0 : 1;
}
