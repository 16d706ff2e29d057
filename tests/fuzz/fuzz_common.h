/* Shared by the libFuzzer targets: parsers that take a path get the input
 * through one private temporary file per process (0600, so that config
 * permission warnings stay quiet). */
#ifndef HSMFS_FUZZ_COMMON_H
#define HSMFS_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"

static char fuzz_path[64] __attribute__((unused));

static inline void
fuzz_init(const char *suffix)
{
	int fd;

	/* Parsers log what they reject; libFuzzer's output is what matters. */
	log_init("fuzz", 0, getenv("FUZZ_VERBOSE") ? LOG_DEBUG : -1);
	snprintf(fuzz_path, sizeof(fuzz_path), "/tmp/hsmfs-fuzz-XXXXXX%s", suffix);
	if ((fd = mkstemps(fuzz_path, (int)strlen(suffix))) < 0) {
		perror("mkstemps");
		abort();
	}
	fchmod(fd, 0600);
	close(fd);
}

static inline void
fuzz_write(const uint8_t *data, size_t len)
{
	FILE *f = fopen(fuzz_path, "wb");

	if (f == NULL || (len && fwrite(data, 1, len, f) != len) || fclose(f) != 0) {
		perror(fuzz_path);
		abort();
	}
}

#endif
