/* hsmfs-tool keygen: generate an RSA key pair on the token under a key's
 * alias (sensitive, never extractable), then optionally write a CSR and/or
 * store a self-signed certificate, both signed inside the HSM through the
 * EVP bridge. */
#include "tool/tool.h"
#include "tool/keyspec.h"
#include "common/err.h"

#include <stdlib.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#define KEYGEN_DAYS 825

/* One RDN "type=value" into name; value may contain \-escapes. */
static int
add_rdn(X509_NAME *name, const char *rdn, size_t len)
{
	char *buf = strndup(rdn, len), *eq, *v, *w;
	int ok = 0;

	if (buf == NULL || (eq = strchr(buf, '=')) == NULL || eq == buf)
		goto out;
	*eq = '\0';
	for (v = w = eq + 1; *v; v++) {
		if (*v == '\\' && v[1])
			v++;
		*w++ = *v;
	}
	*w = '\0';
	ok = X509_NAME_add_entry_by_txt(name, buf, MBSTRING_UTF8,
	    (const unsigned char *)(eq + 1), -1, -1, 0) == 1;
out:
	free(buf);
	return ok;
}

/* "/CN=x/O=y" (OpenSSL style, in order) or "CN=x,O=y" (RFC 2253, most
 * significant RDN last). */
static X509_NAME *
parse_dn(const char *dn)
{
	X509_NAME *name = X509_NAME_new();
	const char *p, *start;
	int slash = dn[0] == '/';
	char sep = slash ? '/' : ',';
	const char *parts[64];
	size_t lens[64], n = 0;

	if (name == NULL)
		return NULL;
	start = slash ? dn + 1 : dn;
	for (p = start;; p++) {
		if (*p == '\\' && p[1]) {
			p++;
			continue;
		}
		if (*p == sep || *p == '\0') {
			while (*start == ' ')
				start++;
			if (p > start) {
				if (n == 64)
					goto fail;
				parts[n] = start;
				lens[n++] = (size_t)(p - start);
			}
			if (*p == '\0')
				break;
			start = p + 1;
		}
	}
	if (n == 0)
		goto fail;
	for (size_t i = 0; i < n; i++) {
		size_t j = slash ? i : n - 1 - i;
		if (!add_rdn(name, parts[j], lens[j]))
			goto fail;
	}
	return name;
fail:
	X509_NAME_free(name);
	return NULL;
}

static int
add_ext(X509 *cert, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ex;
	int ok;

	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, cert, cert, NULL, NULL, 0);
	if ((ex = X509V3_EXT_conf_nid(NULL, &ctx, nid, value)) == NULL)
		return 0;
	ok = X509_add_ext(cert, ex, -1) == 1;
	X509_EXTENSION_free(ex);
	return ok;
}

static X509 *
self_signed(hsm_key *k, X509_NAME *name)
{
	X509 *cert = X509_new();
	unsigned char sn[16];
	BIGNUM *bn = NULL;
	ASN1_INTEGER *serial = NULL;
	int ok = 0;

	if (cert == NULL || RAND_bytes(sn, sizeof(sn)) != 1)
		goto out;
	sn[0] &= 0x7f;   /* positive */
	sn[0] |= 0x40;   /* and full length */
	if ((bn = BN_bin2bn(sn, sizeof(sn), NULL)) == NULL ||
	    (serial = BN_to_ASN1_INTEGER(bn, NULL)) == NULL)
		goto out;
	ok = X509_set_version(cert, 2) == 1 &&
	    X509_set_serialNumber(cert, serial) == 1 &&
	    X509_gmtime_adj(X509_getm_notBefore(cert), 0) != NULL &&
	    X509_gmtime_adj(X509_getm_notAfter(cert),
	        (long)KEYGEN_DAYS * 24 * 3600) != NULL &&
	    X509_set_subject_name(cert, name) == 1 &&
	    X509_set_issuer_name(cert, name) == 1 &&
	    X509_set_pubkey(cert, keyring_key_pubkey(k)) == 1 &&
	    add_ext(cert, NID_basic_constraints, "critical,CA:FALSE") &&
	    add_ext(cert, NID_key_usage,
	        "critical,digitalSignature,keyEncipherment") &&
	    add_ext(cert, NID_subject_key_identifier, "hash") &&
	    X509_sign(cert, keyring_key_pkey(k), EVP_sha256()) > 0 &&
	    X509_verify(cert, keyring_key_pubkey(k)) == 1;
out:
	BN_free(bn);
	ASN1_INTEGER_free(serial);
	if (!ok) {
		X509_free(cert);
		cert = NULL;
	}
	return cert;
}

static int
write_csr(hsm_key *k, X509_NAME *name, const char *path)
{
	X509_REQ *req = X509_REQ_new();
	FILE *f = NULL;
	int ok = req != NULL && X509_REQ_set_version(req, 0) == 1 &&
	    X509_REQ_set_subject_name(req, name) == 1 &&
	    X509_REQ_set_pubkey(req, keyring_key_pubkey(k)) == 1 &&
	    X509_REQ_sign(req, keyring_key_pkey(k), EVP_sha256()) > 0 &&
	    X509_REQ_verify(req, keyring_key_pubkey(k)) == 1;

	if (ok) {
		ok = (f = fopen(path, "w")) != NULL &&
		    PEM_write_X509_REQ(f, req) == 1;
		if (f != NULL && fclose(f) != 0)
			ok = 0;
		if (!ok)
			err_set("cannot write %s: %m", path);
	} else {
		err_set_ossl("signing the CSR through the HSM failed");
	}
	X509_REQ_free(req);
	return ok;
}

int
cmd_keygen(int argc, char **argv)
{
	struct tool_opts o = { 0 };
	struct tool_key tk = { 0 };
	const char *keyname = NULL, *subject = NULL, *csr = NULL;
	int bits = 2048, selfsig = 0, r = TOOL_USAGE, c;
	X509_NAME *name = NULL;
	X509 *cert = NULL;
	hsm_key *k = NULL;
	char *dflt = NULL;

	for (int i = 1; i < argc; i++) {
		if ((c = tool_common_opt(argc, argv, &i, &o)) < 0)
			goto usage;
		if (c > 0)
			continue;
		if (strcmp(argv[i], "--key") == 0 && i + 1 < argc)
			keyname = argv[++i];
		else if (strcmp(argv[i], "--bits") == 0 && i + 1 < argc)
			bits = atoi(argv[++i]);
		else if (strcmp(argv[i], "--subject") == 0 && i + 1 < argc)
			subject = argv[++i];
		else if (strcmp(argv[i], "--csr") == 0 && i + 1 < argc)
			csr = argv[++i];
		else if (strcmp(argv[i], "--self-signed") == 0)
			selfsig = 1;
		else {
			fprintf(stderr, "hsmfs-tool keygen: unexpected argument %s\n",
			    argv[i]);
			goto usage;
		}
	}
	if (o.config == NULL || keyname == NULL)
		goto usage;
	if (bits != 2048 && bits != 3072 && bits != 4096) {
		fprintf(stderr, "hsmfs-tool keygen: --bits must be 2048, 3072 or 4096\n");
		goto usage;
	}
	if (subject != NULL && (name = parse_dn(subject)) == NULL) {
		ERR_clear_error();
		fprintf(stderr, "hsmfs-tool keygen: cannot parse --subject \"%s\" "
		    "(use /CN=x/O=y or CN=x,O=y)\n", subject);
		goto usage;
	}
	if ((r = tool_key_load("keygen", o.config, keyname, 1, &tk)) != TOOL_OK)
		goto out;
	r = TOOL_USAGE;
	if (name == NULL) {
		if (asprintf(&dflt, "/CN=%s", tk.ek->alias) < 0 ||
		    (name = parse_dn(dflt)) == NULL) {
			fprintf(stderr, "hsmfs-tool keygen: alias \"%s\" cannot be a "
			    "common name; give --subject\n", tk.ek->alias);
			goto out;
		}
	}
	if (keyring_generate(tk.ek, bits, &k) != 0) {
		fprintf(stderr, "hsmfs-tool keygen: %s\n", err_detail());
		goto out;
	}
	printf("key %s: generated RSA-%d on token \"%s\" under label \"%s\"\n",
	    keyname, bits, keyring_key_where(k), tk.ek->alias);
	if (csr != NULL) {
		if (!write_csr(k, name, csr)) {
			fprintf(stderr, "hsmfs-tool keygen: key %s: %s\n", keyname,
			    err_detail());
			goto out;
		}
		printf("key %s: certificate request written to %s\n", keyname, csr);
	}
	if (selfsig) {
		if ((cert = self_signed(k, name)) == NULL) {
			err_set_ossl("self-signing through the HSM failed");
			fprintf(stderr, "hsmfs-tool keygen: key %s: %s\n", keyname,
			    err_detail());
			goto out;
		}
		if (keyring_store_cert(k, cert) != 0) {
			fprintf(stderr, "hsmfs-tool keygen: %s\n", err_detail());
			goto out;
		}
		printf("key %s: self-signed certificate (%d days) stored on the "
		    "token under label \"%s\"\n", keyname, KEYGEN_DAYS, tk.ek->alias);
	}
	r = TOOL_OK;
	goto out;
usage:
	tool_usage(stderr, "keygen");
	r = TOOL_USAGE;
out:
	free(dflt);
	X509_free(cert);
	X509_NAME_free(name);
	keyring_close_key(k);
	tool_key_release(&tk);
	return r;
}
