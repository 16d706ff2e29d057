/* JAR signing (contract §3): META-INF/MANIFEST.MF, <SIGNER>.SF and a detached
 * CMS <SIGNER>.RSA made the way jarsigner does. Signed zips copy the
 * entries' bytes raw (our writer, in place when the filesystem can insert
 * a range; libzip's when zip64 structures are needed). */
#include "crypto/jar.h"
#include "crypto/jar_int.h"
#include "crypto/engine.h"
#include "common/err.h"
#include "common/util.h"
#include "hsm/hsm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zip.h>
#include <zlib.h>
#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

/* Signing: one digest per covered entry, into digests[i * mdlen]. */
struct sign_dig {
	const struct zarc *z;
	const uint8_t *role;
	const EVP_MD *md;
	size_t mdlen;
	uint8_t *digests;
};

static int
sign_dig_one(void *ctx, size_t i)
{
	struct sign_dig *c = ctx;
	const struct zent *e = &c->z->e[i];
	uint8_t d[1][EVP_MAX_MD_SIZE];
	int r;
	if (c->role[i] != ROLE_ENTRY)
		return 0;
	if ((r = zent_digest(c->z, e, &c->md, 1, d)) != 0)
		return r;
	memcpy(c->digests + i * c->mdlen, d[0], c->mdlen);
	return 0;
}

/* Copy [off, off+len) of the input to the output's position, in the
 * kernel when it can (copy_file_range), else through a buffer. */
static int
copy_range(int in, uint64_t off, int out, uint64_t len)
{
	static const size_t bufsz = 1 << 20;
	uint8_t *buf = NULL;
	loff_t o = (loff_t)off;
	int r = 0;
	while (len > 0) {
		ssize_t n = copy_file_range(in, &o, out, NULL,
		    len > (1u << 30) ? (1u << 30) : (size_t)len, 0);
		if (n > 0) {
			len -= (uint64_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 0 || errno == EXDEV || errno == ENOSYS || errno == EINVAL ||
		    errno == EOPNOTSUPP)
			break;
		err_set("copy: %s", strerror(errno));
		return hsmfs_errno_err(errno);
	}
	if (len > 0 && (buf = malloc(bufsz)) == NULL)
		return HSMFS_ERR_NOMEM;
	while (len > 0 && r == 0) {
		ssize_t n = pread(in, buf, len > bufsz ? bufsz : (size_t)len, (off_t)o);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			err_set("read: %s", n < 0 ? strerror(errno) : "short file");
			r = HSMFS_ERR_IO;
			break;
		}
		r = util_write_all(out, buf, (size_t)n);
		o += n;
		len -= (uint64_t)n;
	}
	free(buf);
	return r;
}

static int
deflate_buf(struct new_entry *ne)
{
	z_stream zs;
	size_t cap;
	int zr;
	memset(&zs, 0, sizeof(zs));
	if (deflateInit2(&zs, Z_BEST_COMPRESSION, Z_DEFLATED, -MAX_WBITS, 8,
	    Z_DEFAULT_STRATEGY) != Z_OK)
		return HSMFS_ERR_NOMEM;
	cap = deflateBound(&zs, (uLong)ne->len);
	if ((ne->comp = malloc(cap)) == NULL) {
		deflateEnd(&zs);
		return HSMFS_ERR_NOMEM;
	}
	zs.next_in = (Bytef *)(uintptr_t)ne->data;
	zs.avail_in = (uInt)ne->len;
	zs.next_out = ne->comp;
	zs.avail_out = (uInt)cap;
	zr = deflate(&zs, Z_FINISH);
	ne->clen = zs.total_out;
	deflateEnd(&zs);
	if (zr != Z_STREAM_END)
		return HSMFS_ERR_CRYPTO;
	ne->crc = (uint32_t)crc32(crc32(0L, Z_NULL, 0), ne->data, (uInt)ne->len);
	return 0;
}

/* The central directory records of the three new entries, at fd's
 * position; *off grows by what was written. */
static int
write_new_central(int fd, const struct new_entry *ne, uint16_t dtime,
    uint16_t ddate, uint64_t *off)
{
	uint8_t h[ZHDR_CENTRAL];
	int r;
	for (int k = 0; k < 3; k++) {
		size_t nl = strlen(ne[k].name);
		zhdr_central(h, &ne[k], dtime, ddate);
		if ((r = util_write_all(fd, h, ZHDR_CENTRAL)) != 0 ||
		    (r = util_write_all(fd, ne[k].name, nl)) != 0)
			return r;
		*off += ZHDR_CENTRAL + nl;
	}
	return 0;
}

/* The signed zip without libzip: the three signature entries, then every
 * kept entry's local header, data and descriptor copied byte for byte
 * (copy_file_range), then the central directory records copied byte for
 * byte with only their local header offset changed. Used when no zip64
 * field is needed in the central directory or end record (the libzip
 * writer handles those). */
static int
write_raw(const struct zarc *z, const char *out_path, struct new_entry *ne,
    const uint8_t *keep, time_t now)
{
	uint8_t h[ZHDR_LOCAL > ZHDR_END ? ZHDR_LOCAL : ZHDR_END], *cd = NULL;
	uint16_t dtime, ddate;
	uint64_t off = 0, cd_start, nout = 3;
	int fd = -1, r;
	size_t cdcap = 1 << 16;

	zhdr_dos_time(now, &dtime, &ddate);
	if ((fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0) {
		err_set("%s: %s", out_path, strerror(errno));
		return hsmfs_errno_err(errno);
	}
	for (int k = 0; k < 3; k++) {
		size_t nl = strlen(ne[k].name);
		zhdr_local(h, &ne[k], dtime, ddate, 0);
		ne[k].off = off;
		if ((r = util_write_all(fd, h, ZHDR_LOCAL)) != 0 ||
		    (r = util_write_all(fd, ne[k].name, nl)) != 0 ||
		    (r = util_write_all(fd, ne[k].comp, ne[k].clen)) != 0)
			goto out;
		off += ZHDR_LOCAL + nl + ne[k].clen;
	}
	/* Runs of consecutive kept entries are one copy. */
	for (size_t i = 0; i < z->n;) {
		size_t j = i;
		uint64_t len = 0;
		if (!keep[i]) {
			i++;
			continue;
		}
		while (j < z->n && keep[j] && (j == i || z->e[j].loff == z->e[j - 1].end))
			len += z->e[j].end - z->e[j].loff, j++;
		if ((r = copy_range(z->fd, z->e[i].loff, fd, len)) != 0)
			goto out;
		off += len;
		i = j;
	}
	cd_start = off;
	if ((r = write_new_central(fd, ne, dtime, ddate, &off)) != 0)
		goto out;
	if ((cd = malloc(cdcap)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	{
		uint64_t data_off = 0;
		/* New local offsets follow from the copy order above. */
		for (int k = 0; k < 3; k++)
			data_off += ZHDR_LOCAL + strlen(ne[k].name) + ne[k].clen;
		for (size_t i = 0; i < z->n; i++) {
			const struct zent *e = &z->e[i];
			if (!keep[i])
				continue;
			if (e->cdlen > cdcap) {
				r = jar_bad("central directory record too long");
				goto out;
			}
			if ((r = zarc_read(z, e->cdoff, cd, e->cdlen)) != 0)
				goto out;
			zhdr_set_offset(cd, data_off);
			if ((r = util_write_all(fd, cd, e->cdlen)) != 0)
				goto out;
			data_off += e->end - e->loff;
			off += e->cdlen;
			nout++;
		}
	}
	zhdr_end(h, nout, off - cd_start, cd_start, z->comment_len);
	if ((r = util_write_all(fd, h, ZHDR_END)) != 0)
		goto out;
	if (z->comment_len > 0 &&
	    (r = copy_range(z->fd, z->comment_off, fd, z->comment_len)) != 0)
		goto out;
	if (close(fd) < 0) {
		fd = -1;
		err_set("%s: %s", out_path, strerror(errno));
		r = hsmfs_errno_err(errno);
		goto out;
	}
	fd = -1;
	r = 0;
out:
	if (fd >= 0)
		close(fd);
	free(cd);
	return r;
}

/* Sign in place, without copying any entry: insert a block-aligned gap at
 * the start of the file (FALLOC_FL_INSERT_RANGE moves extents, not bytes),
 * write the three signature entries into it (the last one's local extra
 * field pads to the gap's exact size, as zipalign does), then rewrite the
 * central directory with shifted offsets. Only for files nothing is
 * dropped from, on filesystems that support it (ext4, XFS); *done = 0
 * otherwise, with the file untouched. After the insertion a failure
 * leaves the file unusable (it is the caller's spool, never user data). */
#define INPLACE_MAX_CD (16u << 20)

static int
write_in_place(const struct zarc *z, const char *path, struct new_entry *ne,
    time_t now, int *done)
{
	struct stat st;
	uint8_t h[ZHDR_END], *cd = NULL, *pre = NULL;
	uint16_t dtime, ddate;
	uint64_t cd_size = 0, p = 0, gap, pad, off;
	int fd = -1, r = 0;

	*done = 0;
	for (size_t i = 0; i < z->n; i++)
		cd_size += z->e[i].cdlen;
	for (int k = 0; k < 3; k++)
		p += ZHDR_LOCAL + strlen(ne[k].name) + ne[k].clen;
	if (cd_size > INPLACE_MAX_CD || z->comment_len > 0)
		return 0;
	if ((fd = open(path, O_RDWR | O_CLOEXEC)) < 0 || fstat(fd, &st) < 0 ||
	    st.st_blksize <= 0 || st.st_blksize > 32768) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	gap = (p + 4 + (uint64_t)st.st_blksize - 1) / (uint64_t)st.st_blksize *
	    (uint64_t)st.st_blksize;
	pad = gap - p;                   /* >= 4: room for the field header */
	if ((cd = malloc(cd_size ? cd_size : 1)) == NULL ||
	    (pre = calloc(1, gap)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	if (cd_size > 0 && (r = zarc_read(z, z->cd_off, cd, cd_size)) != 0)
		goto out;
	zhdr_dos_time(now, &dtime, &ddate);
	off = 0;
	for (int k = 0; k < 3; k++) {
		size_t nl = strlen(ne[k].name);
		uint8_t *l = pre + off;
		zhdr_local(l, &ne[k], dtime, ddate, k == 2 ? (uint16_t)pad : 0);
		memcpy(l + ZHDR_LOCAL, ne[k].name, nl);
		ne[k].off = off;
		off += ZHDR_LOCAL + nl;
		if (k == 2) {
			zhdr_pad(pre + off, (uint16_t)pad);
			off += pad;
		}
		memcpy(pre + off, ne[k].comp, ne[k].clen);
		off += ne[k].clen;
	}
	if (fallocate(fd, FALLOC_FL_INSERT_RANGE, 0, (off_t)gap) < 0) {
		r = 0;                       /* unsupported here: copy instead */
		goto out;
	}
	*done = 1;
	if (pwrite(fd, pre, gap, 0) != (ssize_t)gap ||
	    ftruncate(fd, (off_t)(gap + z->cd_off)) < 0 ||
	    lseek(fd, (off_t)(gap + z->cd_off), SEEK_SET) < 0) {
		err_set("%s: %s", path, strerror(errno));
		r = hsmfs_errno_err(errno);
		goto out;
	}
	off = 0;
	if ((r = write_new_central(fd, ne, dtime, ddate, &off)) != 0)
		goto out;
	/* The old records, in their order, each pointing gap bytes further. */
	for (size_t i = 0; i < z->n; i++) {
		uint8_t *rec = cd + (z->e[i].cdoff - z->cd_off);
		zhdr_set_offset(rec, z->e[i].loff + gap);
	}
	if ((r = util_write_all(fd, cd, cd_size)) != 0)
		goto out;
	off += cd_size;
	zhdr_end(h, z->n + 3, off, gap + z->cd_off, 0);
	if ((r = util_write_all(fd, h, ZHDR_END)) != 0)
		goto out;
	r = 0;
out:
	if (fd >= 0 && close(fd) < 0 && r == 0 && *done) {
		err_set("%s: %s", path, strerror(errno));
		r = hsmfs_errno_err(errno);
	}
	free(cd);
	free(pre);
	return r;
}

/* The raw writer needs no zip64 structure anywhere in the output. */
static int
raw_possible(const struct zarc *z, const struct new_entry *ne, const uint8_t *keep)
{
	uint64_t size = ZHDR_END + (uint64_t)z->comment_len, n = 3;
	if (z->zip64)
		return 0;
	for (int k = 0; k < 3; k++)
		size += ZHDR_LOCAL + ZHDR_CENTRAL + 2 * strlen(ne[k].name) + ne[k].clen;
	for (size_t i = 0; i < z->n; i++) {
		if (!keep[i])
			continue;
		if (z->e[i].cd64)
			return 0;
		size += z->e[i].end - z->e[i].loff + z->e[i].cdlen;
		n++;
	}
	return n < 0xffff && size < 0xffffffffu;
}

void
jar_signer_name(const char *alias, char out[9])
{
	size_t i = 0;
	for (; alias && alias[i] && i < 8; i++) {
		char c = alias[i];
		if (c >= 'a' && c <= 'z')
			c = (char)(c - 'a' + 'A');
		if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
		    c == '_'))
			c = '_';
		out[i] = c;
	}
	if (i == 0)
		memcpy(out, "SIGNER", (i = 6));
	out[i] = '\0';
}

static int
zip_fail(zip_t *za, const char *what)
{
	err_set("%s: %s", what, za ? zip_strerror(za) : "libzip failure");
	return HSMFS_ERR_IO;
}

static int
add_buffer(zip_t *out, const char *name, const void *buf, size_t len,
    time_t now)
{
	zip_source_t *src = zip_source_buffer(out, buf, len, 0);
	zip_int64_t idx;
	if (src == NULL)
		return zip_fail(out, name);
	if ((idx = zip_file_add(out, name, src, ZIP_FL_ENC_UTF_8)) < 0) {
		zip_source_free(src);
		return zip_fail(out, name);
	}
	if (zip_set_file_compression(out, (zip_uint64_t)idx, ZIP_CM_DEFLATE, 0) < 0 ||
	    zip_file_set_mtime(out, (zip_uint64_t)idx, now, 0) < 0)
		return zip_fail(out, name);
	return 0;
}

/* Copy entry i of in to out without recompressing: same name, method,
 * time, attributes, comment and extra fields; the compressed bytes are
 * passed through (ZIP_FL_COMPRESSED with a matching method). */
static int
copy_entry(zip_t *out, zip_t *in, const struct zent *e, zip_uint64_t i)
{
	zip_source_t *src = zip_source_zip(out, in, i, ZIP_FL_COMPRESSED, 0, -1);
	zip_int64_t idx;
	zip_uint8_t opsys;
	zip_uint32_t attr, clen;
	const char *comment;
	zip_flags_t where[2] = {ZIP_FL_LOCAL, ZIP_FL_CENTRAL};

	if (src == NULL)
		return zip_fail(out, e->name);
	if ((idx = zip_file_add(out, e->name, src, ZIP_FL_ENC_UTF_8)) < 0) {
		zip_source_free(src);
		return zip_fail(out, e->name);
	}
	if (zip_set_file_compression(out, (zip_uint64_t)idx,
	    e->method == 0 ? ZIP_CM_STORE : ZIP_CM_DEFLATE, 0) < 0 ||
	    zip_file_set_dostime(out, (zip_uint64_t)idx, e->dtime, e->ddate, 0) < 0)
		return zip_fail(out, e->name);
	if (zip_file_get_external_attributes(in, i, 0, &opsys, &attr) == 0 &&
	    zip_file_set_external_attributes(out, (zip_uint64_t)idx, 0, opsys,
	    attr) < 0)
		return zip_fail(out, e->name);
	if ((comment = zip_file_get_comment(in, i, &clen, ZIP_FL_ENC_RAW)) &&
	    clen > 0 && zip_file_set_comment(out, (zip_uint64_t)idx, comment,
	    (zip_uint16_t)clen, 0) < 0)
		return zip_fail(out, e->name);
	for (int w = 0; w < 2; w++) {
		zip_int16_t nx = zip_file_extra_fields_count(in, i, where[w]);
		for (zip_int16_t x = 0; x < nx; x++) {
			zip_uint16_t id, len;
			const zip_uint8_t *d = zip_file_extra_field_get(in, i,
			    (zip_uint16_t)x, &id, &len, where[w]);
			if (d && zip_file_extra_field_set(out, (zip_uint64_t)idx, id,
			    ZIP_EXTRA_FIELD_NEW, d, len, where[w]) < 0)
				return zip_fail(out, e->name);
		}
	}
	return 0;
}

static int
add_chain(CMS_ContentInfo *cms, STACK_OF(X509) *chain, X509 *leaf)
{
	for (int i = 0; chain && i < sk_X509_num(chain); i++) {
		X509 *c = sk_X509_value(chain, i);
		if (X509_cmp(c, leaf) != 0 && CMS_add1_cert(cms, c) != 1)
			return 0;
	}
	return 1;
}

static int
cms_sign_sf(const struct jar_sign_opts *o, const struct sbuf *sf,
    uint8_t **der, size_t *derlen)
{
	X509 *cert = hsm_key_cert(o->key);
	EVP_PKEY *pkey = hsm_key_pkey(o->key);
	BIO *in = NULL;
	CMS_ContentInfo *cms = NULL;
	unsigned flags = CMS_BINARY | CMS_DETACHED | CMS_PARTIAL | CMS_NOATTR |
	    CMS_NOSMIMECAP;
	unsigned char *p = NULL;
	int len, r = HSMFS_ERR_CRYPTO;

	if (cert == NULL || pkey == NULL) {
		err_set("key %s has no certificate", hsm_key_name(o->key));
		return HSMFS_ERR_NOTFOUND;
	}
	/* No signed attributes, as jarsigner: the signature is then exactly
	 * one RSASSA-PKCS1-v1_5 over the .SF bytes, done by the HSM. */
	if ((in = BIO_new_mem_buf(sf->b, (int)sf->n)) == NULL ||
	    (cms = CMS_sign(NULL, NULL, NULL, NULL, flags)) == NULL ||
	    CMS_add1_signer(cms, cert, pkey, o->md, flags) == NULL ||
	    !add_chain(cms, o->chain, cert) ||
	    CMS_final(cms, in, NULL, flags) != 1) {
		err_set_ossl("CMS signature with key %s", hsm_key_name(o->key));
		goto out;
	}
	if ((len = i2d_CMS_ContentInfo(cms, &p)) <= 0) {
		err_set_ossl("CMS encoding");
		goto out;
	}
	*der = p;
	*derlen = (size_t)len;
	r = 0;
out:
	CMS_ContentInfo_free(cms);
	BIO_free(in);
	return r;
}

int
jar_descriptor_check(const struct engine_descriptor *d)
{
	int t = d->md ? EVP_MD_get_type(d->md) : NID_undef;
	if (t != NID_sha256 && t != NID_sha384 && t != NID_sha512) {
		err_set("ConfigZipSigner version %d: algorithm %s cannot sign zips "
		    "(use SHA-256, SHA-384 or SHA-512)", d->version,
		    d->algorithm ? d->algorithm : "?");
		return HSMFS_ERR_CONFIG;
	}
	return 0;
}

int
jar_sign(const char *in_path, const char *out_path, const struct jar_sign_opts *o)
{
	return jar_sign_ex(in_path, out_path, o, NULL);
}

/* One signing, from the input zip to the signed output (jar_sign_ex). */
struct sign_job {
	const struct jar_sign_opts *o;
	const char *alg;         /* Java name of o->md */
	char signer[9], created[64], path_sf[32], path_blk[32], attr[32];
	struct zarc z;
	zip_t *in;               /* libzip's view of the input */
	uint8_t *role;           /* per entry: ROLE_* */
	int *blockof;
	struct mf old;           /* the input's manifest, when have_old */
	int have_old;
	uint8_t *oldmf;
	size_t oldmflen;
	struct sbuf mf, sf;      /* the new manifest and signature file */
	size_t main_len;         /* of the manifest's main section */
	char **sections;         /* per-entry manifest section digests (b64) */
	struct sign_dig dig;
	uint8_t *block;          /* the CMS signature (DER) */
	size_t blocklen;
	uint8_t *keep;           /* per entry: copied to the output */
	struct new_entry ne[3];
	time_t now;
};

static void
sign_job_free(struct sign_job *j)
{
	if (j->in)
		zip_discard(j->in);
	for (size_t i = 0; j->sections && i < j->z.n; i++)
		free(j->sections[i]);
	free(j->sections);
	free(j->dig.digests);
	free(j->keep);
	free(j->role);
	free(j->blockof);
	for (int k = 0; k < 3; k++)
		free(j->ne[k].comp);
	free(j->mf.b);
	free(j->sf.b);
	free(j->oldmf);
	OPENSSL_free(j->block);
	mf_free(&j->old);
	zarc_close(&j->z);
}

/* Open and check the input, find each entry's role, read the manifest
 * being extended. */
static int
sign_read(struct sign_job *j, const char *in_path)
{
	struct zarc *z = &j->z;
	long mf_index = -1;
	int r;

	if ((r = zarc_open(in_path, z)) != 0 ||
	    (r = zarc_libzip_check(in_path, z, &j->in)) != 0)
		return r;
	if ((r = jar_find_manifest(z, &mf_index)) != 0)
		return r;
	if ((j->role = calloc(z->n ? z->n : 1, 1)) == NULL ||
	    (j->blockof = calloc(z->n ? z->n : 1, sizeof(*j->blockof))) == NULL)
		return HSMFS_ERR_NOMEM;
	if ((r = jar_meta_roles(z, j->signer, j->role, j->blockof)) != 0)
		return r;
	/* Other signers' files are kept as they are: they too must inflate
	 * exactly, so that no byte of the output goes unchecked. */
	for (size_t i = 0; i < z->n; i++) {
		uint8_t *b = NULL;
		size_t bl = 0;
		if (j->role[i] != ROLE_SF && j->role[i] != ROLE_BLOCK)
			continue;
		if ((r = zent_slurp(z, &z->e[i], &b, &bl)) != 0)
			return r;
		free(b);
	}
	if (mf_index >= 0) {
		if ((r = zent_slurp(z, &z->e[mf_index], &j->oldmf, &j->oldmflen)) != 0 ||
		    (r = mf_parse((char *)j->oldmf, j->oldmflen, &j->old,
		    "META-INF/MANIFEST.MF")) != 0)
			return r;
		j->have_old = 1;
	}
	return 0;
}

/* The new manifest (entry digests in parallel) and, per entry, the
 * digest of its manifest section for the .SF. */
static int
sign_manifest(struct sign_job *j)
{
	const struct zarc *z = &j->z;
	const struct mf *old = j->have_old ? &j->old : NULL;
	char *b64 = NULL;
	int r;

	if ((r = mf_build_main(&j->mf, old, j->created)) != 0)
		return r;
	j->main_len = j->mf.n;
	if ((j->sections = calloc(z->n ? z->n : 1, sizeof(*j->sections))) == NULL)
		return HSMFS_ERR_NOMEM;
	j->dig.z = z;
	j->dig.role = j->role;
	j->dig.md = j->o->md;
	j->dig.mdlen = (size_t)EVP_MD_get_size(j->o->md);
	if ((j->dig.digests = calloc(z->n ? z->n : 1, j->dig.mdlen)) == NULL)
		return HSMFS_ERR_NOMEM;
	if ((r = zarc_par_for(z->n, zarc_total_csize(z), sign_dig_one, &j->dig)) != 0)
		return r;
	for (size_t i = 0; i < z->n; i++) {
		size_t start = j->mf.n;
		if (j->role[i] != ROLE_ENTRY)
			continue;
		if ((r = jar_b64(j->dig.digests + i * j->dig.mdlen, j->dig.mdlen,
		    &b64)) != 0 ||
		    (r = mf_build_section(&j->mf, old, z->e[i].name, j->attr, b64)) != 0)
			break;
		free(b64);
		b64 = NULL;
		if ((r = jar_digest_b64(j->o->md, j->mf.b + start, j->mf.n - start,
		    &j->sections[i])) != 0)
			break;
	}
	free(b64);
	return r;
}

/* The signed zip through libzip (when zip64 structures are needed):
 * jarsigner's order, manifest, .SF, block, then the kept entries. */
static int
write_libzip(struct sign_job *j, const char *out_path)
{
	zip_t *out;
	int ze = 0, r, clen = 0;
	const char *c;

	if ((out = zip_open(out_path, ZIP_CREATE | ZIP_TRUNCATE, &ze)) == NULL) {
		zip_error_t er;
		zip_error_init_with_code(&er, ze);
		err_set("%s: %s", out_path, zip_error_strerror(&er));
		zip_error_fini(&er);
		return HSMFS_ERR_IO;
	}
	if ((r = add_buffer(out, "META-INF/MANIFEST.MF", j->mf.b, j->mf.n,
	    j->now)) != 0 ||
	    (r = add_buffer(out, j->path_sf, j->sf.b, j->sf.n, j->now)) != 0 ||
	    (r = add_buffer(out, j->path_blk, j->block, j->blocklen, j->now)) != 0)
		goto out;
	for (size_t i = 0; i < j->z.n; i++)
		if (j->keep[i] && (r = copy_entry(out, j->in, &j->z.e[i], i)) != 0)
			goto out;
	c = zip_get_archive_comment(j->in, &clen, ZIP_FL_ENC_RAW);
	if (c && clen > 0 && zip_set_archive_comment(out, c,
	    (zip_uint16_t)clen) < 0) {
		r = zip_fail(out, "archive comment");
		goto out;
	}
	if (zip_close(out) < 0) {
		r = zip_fail(out, out_path);
		goto out;
	}
	return 0;
out:
	zip_discard(out);
	return r;
}

/* Write the signed zip: in place when allowed and possible, else with
 * our raw writer, else with libzip. */
static int
sign_write(struct sign_job *j, const char *in_path, const char *out_path,
    int *in_place)
{
	const struct zarc *z = &j->z;
	int r;

	if ((j->keep = calloc(z->n ? z->n : 1, 1)) == NULL)
		return HSMFS_ERR_NOMEM;
	for (size_t i = 0; i < z->n; i++) {
		/* Our own earlier signature is replaced; other signers stay. */
		if (j->role[i] == ROLE_MANIFEST || j->role[i] == ROLE_OWN)
			continue;
		j->keep[i] = 1;
	}
	j->ne[0].name = "META-INF/MANIFEST.MF";
	j->ne[0].data = (uint8_t *)j->mf.b;
	j->ne[0].len = j->mf.n;
	j->ne[1].name = j->path_sf;
	j->ne[1].data = (uint8_t *)j->sf.b;
	j->ne[1].len = j->sf.n;
	j->ne[2].name = j->path_blk;
	j->ne[2].data = j->block;
	j->ne[2].len = j->blocklen;
	for (int k = 0; k < 3; k++)
		if ((r = deflate_buf(&j->ne[k])) != 0)
			return r;
	if (!raw_possible(z, j->ne, j->keep))
		return write_libzip(j, out_path);
	if (in_place) {
		int all_kept = 1;
		for (size_t i = 0; i < z->n; i++)
			all_kept &= j->keep[i];
		if (all_kept && ((r = write_in_place(z, in_path, j->ne, j->now,
		    in_place)) != 0 || *in_place))
			return r;
	}
	return write_raw(z, out_path, j->ne, j->keep, j->now);
}

int
jar_sign_ex(const char *in_path, const char *out_path,
    const struct jar_sign_opts *o, int *in_place)
{
	struct sign_job j;
	int r;

	if (in_place)
		*in_place = 0;
	memset(&j, 0, sizeof(j));
	j.z.fd = -1;
	j.o = o;
	j.now = time(NULL);
	if ((j.alg = o->md ? md_java_name(o->md) : NULL) == NULL) {
		err_set("JAR digest must be SHA-256, SHA-384 or SHA-512");
		return HSMFS_ERR_CONFIG;
	}
	jar_signer_name(o->signer, j.signer);
	snprintf(j.created, sizeof(j.created), "%s",
	    o->created_by ? o->created_by : "hsmfs " HSMFS_VERSION);
	snprintf(j.path_sf, sizeof(j.path_sf), "META-INF/%s.SF", j.signer);
	snprintf(j.path_blk, sizeof(j.path_blk), "META-INF/%s.RSA", j.signer);
	snprintf(j.attr, sizeof(j.attr), "%s-Digest", j.alg);

	if ((r = sign_read(&j, in_path)) == 0 &&
	    (r = sign_manifest(&j)) == 0 &&
	    (r = mf_build_sf(&j.sf, o->md, j.created, &j.mf, j.main_len, &j.z,
	    j.sections)) == 0 &&
	    (r = cms_sign_sf(o, &j.sf, &j.block, &j.blocklen)) == 0)
		r = sign_write(&j, in_path, out_path, in_place);
	if (r == HSMFS_ERR_BADMSG)
		r = HSMFS_ERR_INVALID;  /* for the signer, bad input is EINVAL */
	sign_job_free(&j);
	return r;
}

int
jar_chain_from_store(X509 *leaf, X509_STORE *store, STACK_OF(X509) **out)
{
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	STACK_OF(X509) *chain = NULL;
	if (ctx == NULL || X509_STORE_CTX_init(ctx, store, leaf, NULL) != 1) {
		X509_STORE_CTX_free(ctx);
		return HSMFS_ERR_NOMEM;
	}
	X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_ANY);
	if (X509_verify_cert(ctx) == 1 && (chain = X509_STORE_CTX_get1_chain(ctx))) {
		X509_free(sk_X509_shift(chain));   /* the leaf itself */
	} else {
		chain = sk_X509_new_null();
	}
	ERR_clear_error();
	X509_STORE_CTX_free(ctx);
	if (chain == NULL)
		return HSMFS_ERR_NOMEM;
	*out = chain;
	return 0;
}
