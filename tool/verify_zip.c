/* hsmfs-tool verify-zip: verify a JAR-signed zip offline, with the same
 * rules as MNT/verify-in (crypto/jar_verify.c). Trusted signers: the certificates
 * of every configured ConfigZipSigner version (-o config=) and/or CAs of
 * a PEM truststore (--truststore or -o truststore=). */
#include "tool/tool.h"
#include "crypto/engine.h"
#include "crypto/keyring.h"
#include "crypto/jar.h"
#include "common/err.h"

#include <stdlib.h>
#include <string.h>

/* Open the key of every ConfigZipSigner version and keep its certificate. */
static int
load_config_certs(const char *config, X509 ***certs, size_t *n)
{
	struct engine *e = NULL;
	int r;

	*certs = NULL;
	*n = 0;
	if ((r = engine_load(config, &e)) != 0) {
		fprintf(stderr, "hsmfs-tool verify-zip: %s\n", err_detail());
		return r;
	}
	for (size_t i = 0; i < e->ndescs; i++) {
		const struct engine_descriptor *d = &e->descs[i];
		hsm_key *k = NULL;
		X509 **nc;
		if (strcmp(d->name, ENGINE_CONFIG_ZIP_SIGNER) != 0 || d->key == NULL)
			continue;
		if ((r = keyring_open_key(d->key, 1, &k)) != 0)
			goto fail;
		if ((nc = realloc(*certs, (*n + 1) * sizeof(*nc))) == NULL) {
			keyring_close_key(k);
			r = HSMFS_ERR_NOMEM;
			goto fail;
		}
		*certs = nc;
		(*certs)[(*n)++] = X509_dup(keyring_key_cert(k));
		keyring_close_key(k);
	}
	engine_free(e);
	return 0;
fail:
	fprintf(stderr, "hsmfs-tool verify-zip: %s: %s\n", config, err_detail());
	engine_free(e);
	return r;
}

int
cmd_verify_zip(int argc, char **argv)
{
	struct tool_opts o = {0};
	struct jar_trust t = {0};
	struct jar_verdict v;
	X509 **certs = NULL;
	X509_STORE *store = NULL;
	const char **zips = calloc((size_t)argc, sizeof(*zips));
	size_t ncerts = 0, nzips = 0, ninvalid = 0, nerr = 0;
	int rc = TOOL_USAGE, r;

	if (zips == NULL)
		return TOOL_USAGE;
	for (int i = 1; i < argc; i++) {
		int c;
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			tool_usage(stdout, "verify-zip");
			rc = TOOL_OK;
			goto out;
		}
		if ((c = tool_common_opt(argc, argv, &i, &o)) < 0)
			goto out;
		if (c > 0)
			continue;
		if (argv[i][0] == '-') {
			tool_usage(stderr, "verify-zip");
			goto out;
		}
		zips[nzips++] = argv[i];
	}
	if (nzips == 0 || (o.config == NULL && o.truststore == NULL)) {
		if (nzips != 0)
			fprintf(stderr, "hsmfs-tool verify-zip: give -o config=FILE "
			    "and/or --truststore PEM: nothing would be trusted\n");
		tool_usage(stderr, "verify-zip");
		goto out;
	}
	if (o.config && load_config_certs(o.config, &certs, &ncerts) != 0)
		goto out;
	if (o.truststore && jar_trust_load_pem(o.truststore, &store) != 0) {
		fprintf(stderr, "hsmfs-tool verify-zip: %s\n", err_detail());
		goto out;
	}
	t.certs = certs;
	t.ncerts = ncerts;
	t.store = store;
	/* One ZIP: the verdict alone (as user.hsmfs.verify). Several: one
	 * "ZIP: verdict" line each, in order. */
	for (size_t k = 0; k < nzips; k++) {
		const char *zip = zips[k];
		const char *pre = nzips > 1 ? zip : "", *sep = nzips > 1 ? ": " : "";
		r = jar_verify(zip, &t, &v);
		if (r == 0) {
			printf("%s%svalid signer=%s\n", pre, sep, v.signer);
		} else if (r == HSMFS_ERR_BADMSG) {
			printf("%s%sinvalid: %s\n", pre, sep, v.reason);
			ninvalid++;
		} else {
			fprintf(stderr, "hsmfs-tool verify-zip: %s: %s (%s)\n", zip,
			    err_detail(), hsmfs_strerror(r));
			nerr++;
		}
	}
	fflush(stdout);
	rc = nerr ? TOOL_USAGE : ninvalid ? TOOL_FAIL : TOOL_OK;
out:
	for (size_t i = 0; i < ncerts; i++)
		X509_free(certs[i]);
	free(certs);
	X509_STORE_free(store);
	free(zips);
	return rc;
}
