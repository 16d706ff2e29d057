/* hsmfs-tool import-cert: store a CA-issued certificate on the token next
 * to its key (same label and CKA_ID), after checking it matches the key. */
#include "tool/tool.h"
#include "tool/keyspec.h"
#include "common/err.h"

#include <string.h>
#include <time.h>
#include <openssl/err.h>
#include <openssl/pem.h>

static X509 *
read_cert(const char *path)
{
	BIO *b = BIO_new_file(path, "rb");
	X509 *c = NULL;

	if (b == NULL)
		return NULL;
	if ((c = PEM_read_bio_X509(b, NULL, NULL, NULL)) == NULL) {
		/* Not PEM: try DER. */
		(void)BIO_reset(b);
		c = d2i_X509_bio(b, NULL);
	}
	BIO_free(b);
	ERR_clear_error();
	return c;
}

int
cmd_import_cert(int argc, char **argv)
{
	struct tool_opts o = { 0 };
	struct tool_key tk = { 0 };
	const char *keyname = NULL, *file = NULL;
	X509 *cert = NULL;
	hsm_key *k = NULL;
	int r = TOOL_USAGE, c, e;

	for (int i = 1; i < argc; i++) {
		if ((c = tool_common_opt(argc, argv, &i, &o)) < 0)
			goto usage;
		if (c > 0)
			continue;
		if (strcmp(argv[i], "--key") == 0 && i + 1 < argc)
			keyname = argv[++i];
		else if (argv[i][0] != '-' && file == NULL)
			file = argv[i];
		else {
			fprintf(stderr, "hsmfs-tool import-cert: unexpected argument %s\n",
			    argv[i]);
			goto usage;
		}
	}
	if (o.config == NULL || keyname == NULL || file == NULL)
		goto usage;
	if ((cert = read_cert(file)) == NULL) {
		fprintf(stderr, "hsmfs-tool import-cert: %s: not a PEM or DER "
		    "certificate\n", file);
		goto out;
	}
	if ((r = tool_key_load("import-cert", o.config, keyname, 1, &tk)) != TOOL_OK)
		goto out;
	if (keyring_open_key(tk.ek, 0, &k) != 0) {
		fprintf(stderr, "hsmfs-tool import-cert: %s\n", err_detail());
		r = TOOL_USAGE;
		goto out;
	}
	if ((e = keyring_store_cert(k, cert)) != 0) {
		fprintf(stderr, "hsmfs-tool import-cert: %s: %s\n", file, err_detail());
		/* A certificate for another key is a failed check. */
		r = e == HSMFS_ERR_INVALID ? TOOL_FAIL : TOOL_USAGE;
		goto out;
	}
	if (X509_cmp_time(X509_get0_notAfter(cert), NULL) < 0)
		fprintf(stderr, "hsmfs-tool import-cert: warning: %s has expired\n",
		    file);
	printf("key %s: certificate from %s stored on token \"%s\" under label "
	    "\"%s\"\n", keyname, file, keyring_key_where(k), tk.ek->alias);
	r = TOOL_OK;
	goto out;
usage:
	tool_usage(stderr, "import-cert");
	r = TOOL_USAGE;
out:
	X509_free(cert);
	keyring_close_key(k);
	tool_key_release(&tk);
	return r;
}
