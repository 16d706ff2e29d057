/* hsmfs-tool open-field -o config=FILE: an NX02 envelope on stdin, its
 * plaintext on stdout (unwrapped in the HSM, authenticated first). */
#include "tool/tool.h"
#include "tool/fieldtool.h"
#include "crypto/envelope.h"
#include "common/err.h"
#include "common/util.h"

#include <stdlib.h>
#include <unistd.h>

int
cmd_open_field(int argc, char **argv)
{
	struct fieldtool t;
	struct envelope env;
	const struct engine_descriptor *d;
	const char *config;
	char *pos[1];
	uint8_t *in = NULL, *pt = NULL;
	size_t inl = 0, incap = 0, ptl = 0;
	hsm_key *k;
	int npos, rc, r;

	if ((rc = fieldtool_args("open-field", argc, argv, &config, pos, 0,
	    &npos)) != TOOL_OK)
		return rc;
	if ((rc = fieldtool_read_stdin("open-field", 4 << 20, &in, &inl,
	    &incap)) != TOOL_OK)
		return rc;
	if ((rc = fieldtool_open("open-field", config, &t)) != TOOL_OK) {
		secmem_free(in, incap);
		return rc;
	}
	/* Input is an envelope (not secret), but read into secure memory
	 * by the shared reader anyway. */
	if ((r = envelope_parse_text((const char *)in, inl, &env)) != 0 ||
	    (r = envelope_find_key(t.engine, t.keys, &env.h, &d, &k)) != 0 ||
	    (r = envelope_open(&env, k, &pt, &ptl)) != 0) {
		fprintf(stderr, "hsmfs-tool open-field: %s (%s)\n", err_detail(),
		    hsmfs_strerror(r));
		rc = r == HSMFS_ERR_BADMSG || r == HSMFS_ERR_INVALID ? TOOL_FAIL :
		    TOOL_USAGE;
		goto out;
	}
	if (util_write_all(STDOUT_FILENO, pt, ptl) != 0) {
		fprintf(stderr, "hsmfs-tool open-field: stdout: %s\n", err_detail());
		rc = TOOL_USAGE;
		goto out;
	}
	rc = TOOL_OK;
out:
	envelope_free_plain(pt, ptl);
	envelope_clear(&env);
	secmem_free(in, incap);
	fieldtool_close(&t);
	return rc;
}
