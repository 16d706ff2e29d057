/* JAR verification (contract §3): the META-INF roles of the entries, each
 * signer's CMS block over its .SF (trust, key usage, EKU, expiry), the .SF
 * against the manifest, and every entry against its manifest digests. */
#include "crypto/jar.h"
#include "crypto/jar_int.h"
#include "common/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

/* What each entry is for the signature (JAR specification, made strict):
 * the manifest; per signer exactly one X.SF with exactly one block
 * (X.RSA, X.DSA or X.EC), names compared without case as Java does; the
 * signer being replaced at signing (own: its base name, or NULL);
 * directories; everything else, SIG-* and any other file under META-INF/
 * included, is an ordinary entry the manifest must cover. */
static const char *const block_exts[] = {".RSA", ".DSA", ".EC"};

static int
cmp_case(const void *a, const void *b)
{
	const struct zent *x = *(struct zent *const *)a, *y = *(struct zent *const *)b;
	return strcasecmp(x->name, y->name);
}

/* Extension of a direct child of META-INF/: 1 .SF, 2 block, 3 manifest,
 * 0 other (or not a direct child). */
static int
meta_kind(const char *name, size_t *baselen)
{
	const char *b, *dot;
	if (strncasecmp(name, "META-INF/", 9) != 0)
		return 0;
	b = name + 9;
	if (*b == '\0' || strchr(b, '/') != NULL)
		return 0;
	if (strcasecmp(b, "MANIFEST.MF") == 0)
		return 3;
	if ((dot = strrchr(b, '.')) == NULL || dot == b)
		return 0;
	*baselen = (size_t)(dot - b);
	if (strcasecmp(dot, ".SF") == 0)
		return 1;
	for (size_t k = 0; k < 3; k++)
		if (strcasecmp(dot, block_exts[k]) == 0)
			return 2;
	return 0;
}

int
jar_meta_roles(const struct zarc *z, const char *own, uint8_t *role, int *block)
{
	struct zent **v = NULL, key, *kp = &key, **hit;
	size_t nv = 0;
	char nm[300];
	int r = 0;

	if ((v = calloc(z->n ? z->n : 1, sizeof(*v))) == NULL)
		return HSMFS_ERR_NOMEM;
	for (size_t i = 0; i < z->n; i++) {
		const struct zent *e = &z->e[i];
		size_t bl = 0;
		block[i] = -1;
		role[i] = zent_is_dir(e) ? ROLE_DIR : ROLE_ENTRY;
		if (strncasecmp(e->name, "META-INF/", 9) == 0 &&
		    strchr(e->name + 9, '/') == NULL)
			v[nv++] = &z->e[i];
		if (meta_kind(e->name, &bl) == 3)
			role[i] = ROLE_MANIFEST;
	}
	qsort(v, nv, sizeof(*v), cmp_case);
	for (size_t i = 1; i < nv; i++)
		if (strcasecmp(v[i - 1]->name, v[i]->name) == 0) {
			r = jar_bad("two entries whose names differ only in case: %s",
			    v[i]->name);
			goto out;
		}
	for (size_t i = 0; i < z->n; i++) {
		const char *name = z->e[i].name;
		size_t bl = 0;
		int kind = meta_kind(name, &bl), nb = 0;
		if (kind != 1 && kind != 2)
			continue;
		if (own && bl == strlen(own) && strncasecmp(name + 9, own, bl) == 0) {
			role[i] = ROLE_OWN;
			continue;
		}
		if (kind != 1)
			continue;
		role[i] = ROLE_SF;
		for (size_t k = 0; k < 3; k++) {
			snprintf(nm, sizeof(nm), "%.*s%s", (int)(9 + bl), name,
			    block_exts[k]);
			key.name = nm;
			if ((hit = bsearch(&kp, v, nv, sizeof(*v), cmp_case)) != NULL) {
				block[i] = (int)(*hit - z->e);
				role[block[i]] = ROLE_BLOCK;
				nb++;
			}
		}
		if (nb != 1) {
			r = nb ? jar_bad("%s has %d signature blocks (exactly one of "
			    ".RSA/.DSA/.EC allowed)", name, nb) :
			    jar_bad("%s has no signature block (.RSA/.DSA/.EC)", name);
			goto out;
		}
	}
	for (size_t i = 0; i < z->n; i++) {
		size_t bl = 0;
		if (role[i] == ROLE_ENTRY && meta_kind(z->e[i].name, &bl) == 2) {
			r = jar_bad("signature block %s without its .SF file", z->e[i].name);
			goto out;
		}
	}
out:
	free(v);
	return r;
}

/* The manifest entry, matched case-insensitively as Java does; two
 * spellings of it would let readers disagree on which one counts. */
int
jar_find_manifest(const struct zarc *z, long *idx)
{
	*idx = -1;
	for (size_t i = 0; i < z->n; i++) {
		if (strcasecmp(z->e[i].name, "META-INF/MANIFEST.MF") != 0)
			continue;
		if (*idx >= 0)
			return jar_bad("two manifests (names differing in case)");
		*idx = (long)i;
	}
	return 0;
}

static int
digest_matches(const EVP_MD *md, const void *p, size_t n, const char *b64)
{
	char *mine = NULL;
	int ok;
	if (jar_digest_b64(md, p, n, &mine) != 0)
		return -1;
	ok = strcmp(mine, b64) == 0;
	free(mine);
	return ok;
}

static void
dn_rfc2253(X509_NAME *nm, char *out, size_t len)
{
	BIO *b = BIO_new(BIO_s_mem());
	int n;
	out[0] = '\0';
	if (b == NULL)
		return;
	X509_NAME_print_ex(b, nm, 0, XN_FLAG_RFC2253);
	n = BIO_read(b, out, (int)len - 1);
	out[n > 0 ? n : 0] = '\0';
	BIO_free(b);
}

/* Keep in *na the earlier of itself and x's notAfter. */
static void
min_not_after(X509 *x, time_t *na)
{
	struct tm tm;
	time_t t;
	if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1 &&
	    (t = timegm(&tm)) > 0 && (*na == 0 || t < *na))
		*na = t;
}

/* The signer certificate is trusted; *na gets the earliest notAfter of the
 * certificates that made it so (the whole chain up to the trusted root). */
static int
signer_trusted(X509 *cert, STACK_OF(X509) *chain, const struct jar_trust *t,
    time_t *na)
{
	int direct = 0, r;
	uint32_t ku;
	for (size_t i = 0; t && i < t->ncerts; i++)
		if (t->certs[i] && X509_cmp(cert, t->certs[i]) == 0)
			direct = 1;
	if (direct) {
		if (X509_cmp_current_time(X509_get0_notBefore(cert)) >= 0)
			return jar_bad("signer certificate is not yet valid");
		if (X509_cmp_current_time(X509_get0_notAfter(cert)) <= 0)
			return jar_bad("signer certificate has expired");
		min_not_after(cert, na);
	} else if (t && t->store) {
		X509_STORE_CTX *ctx = X509_STORE_CTX_new();
		if (ctx == NULL)
			return HSMFS_ERR_NOMEM;
		if (X509_STORE_CTX_init(ctx, t->store, cert, chain) != 1) {
			X509_STORE_CTX_free(ctx);
			err_set_ossl("X509_STORE_CTX_init");
			return HSMFS_ERR_CRYPTO;
		}
		X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_ANY);
		r = X509_verify_cert(ctx);
		if (r != 1) {
			int e = X509_STORE_CTX_get_error(ctx);
			X509_STORE_CTX_free(ctx);
			ERR_clear_error();
			return jar_bad("signer certificate not trusted: %s",
			    X509_verify_cert_error_string(e));
		}
		{
			STACK_OF(X509) *vc = X509_STORE_CTX_get0_chain(ctx);
			for (int k = 0; k < sk_X509_num(vc); k++)
				min_not_after(sk_X509_value(vc, k), na);
		}
		X509_STORE_CTX_free(ctx);
	} else {
		return jar_bad("signer certificate is not a configured ConfigZipSigner "
		    "certificate and no truststore is configured");
	}
	ku = X509_get_key_usage(cert);
	if ((X509_get_extension_flags(cert) & EXFLAG_KUSAGE) &&
	    !(ku & KU_DIGITAL_SIGNATURE))
		return jar_bad("signer certificate lacks the digitalSignature key usage");
	/* A certificate for something else (a TLS server, say) from the same
	 * CA does not sign configuration. */
	if ((X509_get_extension_flags(cert) & EXFLAG_XKUSAGE) &&
	    !(X509_get_extended_key_usage(cert) & (XKU_CODE_SIGN | XKU_ANYEKU)))
		return jar_bad("signer certificate's extended key usage does not "
		    "include codeSigning");
	return 0;
}

/* A signer's block over its .SF bytes: a detached CMS SignedData with one
 * signer and a SHA-2 digest, whose signature verifies and whose
 * certificate is trusted (v: its subject, the chain's expiry). */
static int
signer_block(const struct zarc *z, int sf_i, int blk_i, const uint8_t *sfb,
    size_t sfl, const uint8_t *blk, size_t blkl, const struct jar_trust *t,
    struct jar_verdict *v)
{
	const unsigned char *p = blk;
	CMS_ContentInfo *cms = NULL;
	BIO *content = NULL;
	STACK_OF(X509) *signers = NULL, *certs = NULL;
	STACK_OF(CMS_SignerInfo) *sis;
	X509_ALGOR *dig = NULL;
	const ASN1_OBJECT *obj;
	X509 *cert;
	int r;

	if ((cms = d2i_CMS_ContentInfo(NULL, &p, (long)blkl)) == NULL ||
	    p != blk + blkl) {
		ERR_clear_error();
		r = jar_bad("%s is not a DER CMS signature", z->e[blk_i].name);
		goto out;
	}
	if (OBJ_obj2nid(CMS_get0_type(cms)) != NID_pkcs7_signed ||
	    CMS_is_detached(cms) != 1) {
		r = jar_bad("%s is not a detached CMS SignedData", z->e[blk_i].name);
		goto out;
	}
	sis = CMS_get0_SignerInfos(cms);
	if (sk_CMS_SignerInfo_num(sis) != 1) {
		r = jar_bad("%s must hold exactly one signer", z->e[blk_i].name);
		goto out;
	}
	CMS_SignerInfo_get0_algs(sk_CMS_SignerInfo_value(sis, 0), NULL, NULL,
	    &dig, NULL);
	X509_ALGOR_get0(&obj, NULL, NULL, dig);
	switch (OBJ_obj2nid(obj)) {
	case NID_sha256: case NID_sha384: case NID_sha512:
		break;
	case NID_sha1:
		r = jar_bad("SHA-1 signature in %s is not accepted", z->e[blk_i].name);
		goto out;
	default:
		r = jar_bad("unsupported digest algorithm in %s", z->e[blk_i].name);
		goto out;
	}
	if ((content = BIO_new_mem_buf(sfb, (int)sfl)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	if (CMS_verify(cms, NULL, NULL, content, NULL,
	    CMS_BINARY | CMS_NO_SIGNER_CERT_VERIFY) != 1) {
		unsigned long e = ERR_peek_last_error();
		char es[200];
		ERR_error_string_n(e, es, sizeof(es));
		ERR_clear_error();
		r = jar_bad("signature in %s does not verify over %s (%s)",
		    z->e[blk_i].name, z->e[sf_i].name,
		    ERR_reason_error_string(e) ? ERR_reason_error_string(e) : es);
		goto out;
	}
	if ((signers = CMS_get0_signers(cms)) == NULL ||
	    sk_X509_num(signers) != 1 || (cert = sk_X509_value(signers, 0)) == NULL) {
		r = jar_bad("signer certificate missing from %s", z->e[blk_i].name);
		goto out;
	}
	certs = CMS_get1_certs(cms);
	if ((r = signer_trusted(cert, certs, t, &v->not_after)) != 0)
		goto out;
	if (v->signer[0] == '\0')
		dn_rfc2253(X509_get_subject_name(cert), v->signer, sizeof(v->signer));
	r = 0;
out:
	sk_X509_pop_free(certs, X509_free);
	sk_X509_free(signers);
	BIO_free(content);
	CMS_ContentInfo_free(cms);
	return r;
}

/* The parsed .SF (sfm) against the manifest (m, raw bytes mfb): the main
 * section's digests and every .SF section against its manifest section,
 * byte for byte. */
static int
sf_matches_manifest(const struct zarc *z, int sf_i, const char *mfb,
    const struct mf *m, const struct mf *sfm)
{
	struct dattr d[3];
	int weak = 0;
	size_t nd;

	/* Main attributes: whole-manifest digest (strong only). */
	nd = section_digests(&sfm->s[0], "-Digest-Manifest", d, &weak);
	if (nd == 0)
		return weak ? jar_bad("SHA-1 digests in %s are not accepted",
		    z->e[sf_i].name) :
		    jar_bad("%s has no manifest digest", z->e[sf_i].name);
	/* A stale whole-manifest digest is tolerated, as in Java (another
	 * signer may have grown the manifest): the main-section and per-entry
	 * section digests below are what bind this signer to the entries. */
	weak = 0;
	nd = section_digests(&sfm->s[0], "-Digest-Manifest-Main-Attributes", d, &weak);
	for (size_t i = 0; i < nd; i++) {
		int ok = digest_matches(d[i].md, mfb, m->s[0].len, d[i].b64);
		if (ok <= 0)
			return ok < 0 ? HSMFS_ERR_CRYPTO :
			    jar_bad("%s: manifest main attributes modified",
			    z->e[sf_i].name);
	}
	/* Every .SF section must match its manifest section byte for byte. */
	for (size_t s = 1; s < sfm->ns; s++) {
		const struct mf_section *ss = &sfm->s[s];
		const struct mf_section *ms = mf_find(m, ss->name);
		weak = 0;
		if (ms == NULL)
			return jar_bad("%s names %s, which is not in the manifest",
			    z->e[sf_i].name, ss->name);
		nd = section_digests(ss, "-Digest", d, &weak);
		if (nd == 0)
			return weak ? jar_bad("SHA-1 digests in %s are not accepted",
			    z->e[sf_i].name) :
			    jar_bad("%s: no digest for %s", z->e[sf_i].name, ss->name);
		for (size_t i = 0; i < nd; i++) {
			int ok = digest_matches(d[i].md, mfb + ms->off, ms->len, d[i].b64);
			if (ok <= 0)
				return ok < 0 ? HSMFS_ERR_CRYPTO :
				    jar_bad("manifest section of %s does not match %s",
				    ss->name, z->e[sf_i].name);
		}
	}
	return 0;
}

/* One signer: CMS over the .SF, then .SF against the manifest. */
static int
verify_signer(const struct zarc *z, int sf_i, int blk_i, const char *mfb,
    const struct mf *m, const struct jar_trust *t, struct jar_verdict *v,
    struct mf *sfm)
{
	uint8_t *sfb = NULL, *blk = NULL;
	size_t sfl = 0, blkl = 0;
	int r;

	if ((r = zent_slurp(z, &z->e[sf_i], &sfb, &sfl)) != 0 ||
	    (r = zent_slurp(z, &z->e[blk_i], &blk, &blkl)) != 0 ||
	    (r = signer_block(z, sf_i, blk_i, sfb, sfl, blk, blkl, t, v)) != 0)
		goto out;
	if ((r = mf_parse((char *)sfb, sfl, sfm, z->e[sf_i].name)) != 0)
		goto out;
	if (sfm->dup != NULL) {
		r = jar_bad("%s has two sections for %s", z->e[sf_i].name, sfm->dup);
		goto out;
	}
	r = sf_matches_manifest(z, sf_i, mfb, m, sfm);
out:
	if (r != 0)
		mf_free(sfm);
	free(sfb);
	free(blk);
	return r;
}

static int
sf_has(const struct mf *sfm, const char *name)
{
	return mf_find(sfm, name) != NULL;
}

/* Verification: entry i against the digests of its manifest section. */
struct verify_dig {
	const struct zarc *z;
	const struct mf_section **ms;   /* per entry, NULL: not covered */
};

static int
verify_dig_one(void *ctx, size_t i)
{
	struct verify_dig *c = ctx;
	const struct zent *e = &c->z->e[i];
	struct dattr d[3];
	const EVP_MD *mds[3] = {NULL, NULL, NULL};
	uint8_t got[3][EVP_MAX_MD_SIZE];
	int weak = 0, r;
	size_t nd;
	if (c->ms[i] == NULL)
		return 0;
	nd = section_digests(c->ms[i], "-Digest", d, &weak);
	for (size_t k = 0; k < nd; k++)
		mds[k] = d[k].md;
	if ((r = zent_digest(c->z, e, mds, nd, got)) != 0)
		return r;
	for (size_t k = 0; k < nd; k++) {
		char *b = NULL;
		if ((r = jar_b64(got[k], (size_t)EVP_MD_get_size(mds[k]), &b)) != 0)
			return r;
		r = strcmp(b, d[k].b64) != 0;
		free(b);
		if (r)
			return jar_bad("entry %s was modified (digest mismatch)", e->name);
	}
	return 0;
}

int
jar_verify(const char *path, const struct jar_trust *t, struct jar_verdict *v)
{
	struct zarc z;
	struct mf m, *sfm = NULL;
	struct verify_dig vd = {0};
	uint8_t *mfb = NULL, *role = NULL;
	int *blockof = NULL;
	size_t mfl = 0, nsig = 0;
	long mf_l = -1;
	int mf_i = -1, r;

	memset(v, 0, sizeof(*v));
	memset(&m, 0, sizeof(m));
	err_clear();
	if ((r = zarc_open(path, &z)) != 0)
		goto out_noz;
	if ((r = zarc_libzip_check(path, &z, NULL)) != 0)
		goto out;
	if ((r = jar_find_manifest(&z, &mf_l)) != 0)
		goto out;
	mf_i = (int)mf_l;
	if (mf_i < 0) {
		r = jar_bad("unsigned zip (no META-INF/MANIFEST.MF)");
		goto out;
	}
	if ((r = zent_slurp(&z, &z.e[mf_i], &mfb, &mfl)) != 0 ||
	    (r = mf_parse((char *)mfb, mfl, &m, "META-INF/MANIFEST.MF")) != 0)
		goto out;
	if (m.dup != NULL) {
		r = jar_bad("manifest has two sections for %s", m.dup);
		goto out;
	}
	if ((sfm = calloc(z.n, sizeof(*sfm))) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	if ((role = calloc(z.n ? z.n : 1, 1)) == NULL ||
	    (blockof = calloc(z.n ? z.n : 1, sizeof(*blockof))) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	if ((r = jar_meta_roles(&z, NULL, role, blockof)) != 0)
		goto out;
	/* Every signer present must verify and be trusted. */
	for (size_t i = 0; i < z.n; i++) {
		if (role[i] != ROLE_SF)
			continue;
		if ((r = verify_signer(&z, (int)i, blockof[i], (char *)mfb, &m, t, v,
		    &sfm[nsig])) != 0)
			goto out;
		nsig++;
	}
	if (nsig == 0) {
		r = jar_bad("unsigned zip (no signature file in META-INF)");
		goto out;
	}
	/* Manifest sections must name existing entries ... */
	for (size_t s = 1; s < m.ns; s++) {
		int k = zarc_find(&z, m.s[s].name);
		if (k < 0) {
			r = jar_bad("entry %s is listed in the manifest but missing",
			    m.s[s].name);
			goto out;
		}
	}
	/* ... and every entry must be in the manifest and in every .SF (cheap
	 * checks first), then match its digests (in parallel). */
	if ((vd.ms = calloc(z.n, sizeof(*vd.ms))) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	for (size_t i = 0; i < z.n; i++) {
		const struct zent *e = &z.e[i];
		struct dattr d[3];
		int weak = 0;
		if (role[i] != ROLE_ENTRY)
			continue;
		if ((vd.ms[i] = mf_find(&m, e->name)) == NULL) {
			r = jar_bad("entry %s is not signed (not in the manifest)", e->name);
			goto out;
		}
		for (size_t k = 0; k < nsig; k++)
			if (!sf_has(&sfm[k], e->name)) {
				r = jar_bad("entry %s is not covered by every signature file",
				    e->name);
				goto out;
			}
		if (section_digests(vd.ms[i], "-Digest", d, &weak) == 0) {
			r = weak ? jar_bad("SHA-1 digests are not accepted (entry %s)",
			    e->name) : jar_bad("entry %s has no digest in the manifest",
			    e->name);
			goto out;
		}
	}
	vd.z = &z;
	if ((r = zarc_par_for(z.n, zarc_total_csize(&z), verify_dig_one, &vd)) != 0)
		goto out;
	v->valid = 1;
	r = 0;
out:
	for (size_t k = 0; sfm && k < nsig; k++)
		mf_free(&sfm[k]);
	free(sfm);
	free(vd.ms);
	free(role);
	free(blockof);
	mf_free(&m);
	free(mfb);
	zarc_close(&z);
out_noz:
	if (r != 0) {
		v->valid = 0;
		v->signer[0] = '\0';
		snprintf(v->reason, sizeof(v->reason), "%s", err_detail());
	}
	return r;
}

int
jar_trust_load_pem(const char *path, X509_STORE **out)
{
	X509_STORE *st = X509_STORE_new();
	BIO *b = NULL;
	X509 *x;
	int n = 0, r = HSMFS_ERR_CONFIG;

	if (st == NULL)
		return HSMFS_ERR_NOMEM;
	if ((b = BIO_new_file(path, "r")) == NULL) {
		err_set_ossl("truststore %s: cannot open", path);
		r = HSMFS_ERR_NOTFOUND;
		goto out;
	}
	while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
		X509_STORE_add_cert(st, x);
		X509_free(x);
		n++;
	}
	ERR_clear_error();
	if (n == 0) {
		err_set("truststore %s: no PEM certificate found", path);
		goto out;
	}
	*out = st;
	st = NULL;
	r = 0;
out:
	BIO_free(b);
	X509_STORE_free(st);
	return r;
}
