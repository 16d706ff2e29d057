/* libFuzzer target: history parsing (crypto/tlog.c): concatenated
 * checkpoint notes, record leaves, and the frame scanner over an object
 * file's bytes (what a torn or tampered STORE/history file contains). */
#include "fuzz_common.h"
#include "crypto/tlog.h"
#include "common/err.h"

#include <sys/mman.h>

static int fuzz_fd = -1;

static int
count_frame(const struct tlog_frame *f, void *arg)
{
	uint64_t *n = arg;

	if (f->end <= f->offset || f->payload_offset < f->offset ||
	    (uint64_t)f->payload_offset + f->payload_len > (uint64_t)f->end)
		abort();        /* frames must lie inside themselves */
	(*n)++;
	return 0;
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	log_init("fuzz", 0, getenv("FUZZ_VERBOSE") ? LOG_DEBUG : -1);
	if ((fuzz_fd = memfd_create("tlog", 0)) < 0)
		abort();
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	struct tlog_checkpoint cp;
	struct tlog_record rec;
	size_t off = 0, used = 0;
	uint64_t nframes = 0;
	off_t bad = 0;
	const char *reason = NULL;

	/* Notes one after another, as in a checkpoint file. */
	while (off < len) {
		memset(&cp, 0, sizeof(cp));
		if (tlog_checkpoint_parse((const char *)data + off, len - off, &cp,
		    &used) != 0)
			break;
		tlog_checkpoint_clear(&cp);
		if (used == 0 || used > len - off)
			abort();
		off += used;
	}
	tlog_leaf_parse(data, len, &rec);
	if (ftruncate(fuzz_fd, 0) != 0 ||
	    (len && pwrite(fuzz_fd, data, len, 0) != (ssize_t)len))
		abort();
	tlog_scan(fuzz_fd, 0, 0, count_frame, &nframes, &bad, &reason);
	err_clear();
	return 0;
}
