/* hsmfs-tool seal-field -o config=FILE: a plaintext on stdin, its NX02
 * envelope (one line) on stdout, sealed with the newest EncryptedFields
 * version; the same envelope the mount stores, e.g. for a database. */
#include "tool/tool.h"
#include "tool/fieldtool.h"
#include "crypto/envelope.h"
#include "common/err.h"
#include "common/util.h"

#include <stdlib.h>
#include <unistd.h>
#include <string.h>
#include <openssl/x509.h>

int
cmd_seal_field(int argc, char **argv)
{
	struct fieldtool t;
	const char *config;
	char *pos[1], *text = NULL;
	uint8_t *pt = NULL, *bin = NULL;
	size_t ptl = 0, ptcap = 0, bl = 0, tl = 0;
	struct keyring_signer s;
	int npos, rc, r;

	if ((rc = fieldtool_args("seal-field", argc, argv, &config, pos, 0,
	    &npos)) != TOOL_OK)
		return rc;
	if ((rc = fieldtool_open("seal-field", config, &t)) != TOOL_OK)
		return rc;
	if ((rc = fieldtool_read_stdin("seal-field", ENVELOPE_MAX_PLAINTEXT, &pt,
	    &ptl, &ptcap)) != TOOL_OK)
		goto out;
	if (keyring_signer_of(t.keys, t.newest, &s) != 0) {
		fprintf(stderr, "hsmfs-tool seal-field: key %s is not open\n",
		    t.newest->key_name);
		rc = TOOL_USAGE;
		goto out;
	}
	if ((r = envelope_seal(t.newest, s.cert, pt,
	    ptl, &bin, &bl)) != 0 || (text = envelope_to_text(bin, bl, &tl)) == NULL) {
		fprintf(stderr, "hsmfs-tool seal-field: %s\n", err_detail());
		rc = TOOL_USAGE;
		goto out;
	}
	text[tl] = '\n';   /* replaces the NUL: one line */
	if (util_write_all(STDOUT_FILENO, text, tl + 1) != 0) {
		fprintf(stderr, "hsmfs-tool seal-field: stdout: %s\n", err_detail());
		rc = TOOL_USAGE;
		goto out;
	}
	rc = TOOL_OK;
out:
	free(text);
	free(bin);
	secmem_free(pt, ptcap);
	fieldtool_close(&t);
	return rc;
}
