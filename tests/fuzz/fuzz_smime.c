/* libFuzzer target: the mail checker and MIME preparation (crypto/smime.c)
 * on a message as written to MNT/mail/NAME, and the CRLF canonicaliser.
 * Signing needs a key and parses nothing new, so it is left out. */
#include "fuzz_common.h"
#include "crypto/smime.h"
#include "common/err.h"

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	log_init("fuzz", 0, getenv("FUZZ_VERBOSE") ? LOG_DEBUG : -1);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	struct smime_msg m;
	char *outer = NULL, *inner = NULL;
	size_t outer_len = 0, inner_len = 0, crlf_len = 0;
	uint8_t *crlf = NULL;
	char msgid[256];

	memset(&m, 0, sizeof(m));
	if (smime_check(data, len, &m) == 0) {
		if (smime_msgid_new(m.from, msgid, sizeof(msgid)) != 0)
			snprintf(msgid, sizeof(msgid), "<fuzz@example.org>");
		if (smime_prepare(data, len, 1700000000, msgid, &outer, &outer_len,
		    &inner, &inner_len) == 0) {
			/* Bcc never reaches the wire. */
			for (size_t i = 0; i + 4 <= outer_len; i++)
				if ((i == 0 || outer[i - 1] == '\n') &&
				    strncasecmp(outer + i, "bcc:", 4) == 0)
					abort();
			free(outer);
			free(inner);
		}
		smime_msg_clear(&m);
	}
	if (smime_crlf(data, len, &crlf, &crlf_len) == 0) {
		/* No bare LF or CR survives. */
		for (size_t i = 0; i < crlf_len; i++)
			if ((crlf[i] == '\n' && (i == 0 || crlf[i - 1] != '\r')) ||
			    (crlf[i] == '\r' && (i + 1 == crlf_len || crlf[i + 1] != '\n')))
				abort();
		free(crlf);
	}
	err_clear();
	return 0;
}
