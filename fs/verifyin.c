/* /verify-in: signed zips are stored exactly as copied and verified when
 * opened for reading (EBADMSG when invalid). Owns STORE/verify-in/ (the
 * zips by name), .spool/ (bytes of open writers), .meta/ (content hash per
 * name), .verdict/ (verdicts by content hash, trust configuration and
 * verifier format) and .temp/ (writers' temporaries until their rename). */
#include "fs/fs.h"
#include "fs/zipfh.h"
#include "store/dirio.h"
#include "fs/temp.h"
#include "fs/zipfolder.h"
#include "crypto/jar.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/err.h>

#define VERIFY_XATTR "user.hsmfs.verify"
#define VERDICT_MAX 1024
/* Part of every verdict cache key: bump it whenever jar_verify (crypto/
 * jar_verify.c) accepts or refuses anything differently, so that no verdict
 * reached under older rules is ever reused. 1 was the key without it
 * (content hash + trust only); 2: the strict reader of issue 12; 3: external
 * attributes (symlink, setuid, DOS directory bit on a file), names going
 * through a file, descriptors on stored entries and after a needless
 * zip64 local header refused. */
#define VERIFY_FORMAT "hsmfs jar_verify format 3"

static struct {
	int dirfd, spooldir, metadir, verdir;
	X509 **certs;                /* ConfigZipSigner certificates, all versions */
	size_t ncerts;
	X509_STORE *store;           /* -o truststore */
	uint8_t trust_fp[32];        /* hash of the trust configuration */
	int ready;                   /* something to verify against */
	struct spool_list spools;
	struct temp_area temps;
	pthread_mutex_t stats_lock;
	unsigned long nvalid, ninvalid, ncached;
} vi = {
	.dirfd = -1, .spooldir = -1, .metadir = -1, .verdir = -1,
	.temps = TEMP_AREA_INIT,
	.spools = {PTHREAD_MUTEX_INITIALIZER, NULL},
	.stats_lock = PTHREAD_MUTEX_INITIALIZER,
};

/* What verify-in derives from a configuration (all in vi, swapped by a
 * reload under the configuration write lock). */
struct vi_trust {
	X509 **certs;
	size_t ncerts;
	X509_STORE *store;
	uint8_t trust_fp[32];
};

/* Verdicts are cached per (content, trust configuration, VERIFY_FORMAT):
 * a new truststore, a changed or added ConfigZipSigner certificate or new
 * verification rules never reuse an old answer. */
static int
trust_fingerprint(struct vi_trust *t)
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	char *ts = NULL;
	size_t tl = 0;
	int r = HSMFS_ERR_NOMEM;
	if (c == NULL || EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1)
		goto out;
	for (size_t i = 0; i < t->ncerts; i++) {
		unsigned char *der = NULL;
		int n = i2d_X509(t->certs[i], &der);
		if (n <= 0)
			goto out;
		EVP_DigestUpdate(c, der, (size_t)n);
		OPENSSL_free(der);
	}
	if (hsmfs_ctx->opt.truststore) {
		if ((r = util_read_file(hsmfs_ctx->opt.truststore, 16 << 20, &ts, &tl)) != 0)
			goto out;
		EVP_DigestUpdate(c, "truststore", 10);
		EVP_DigestUpdate(c, ts, tl);
	}
	EVP_DigestFinal_ex(c, t->trust_fp, NULL);
	r = 0;
out:
	free(ts);
	EVP_MD_CTX_free(c);
	return r;
}

static void
trust_clear(struct vi_trust *t)
{
	X509_STORE_free(t->store);
	free(t->certs);
	memset(t, 0, sizeof(*t));
}

static int
trust_of(const struct engine *e, struct keyring *kr, struct vi_trust *t)
{
	int r;

	memset(t, 0, sizeof(*t));
	if ((t->certs = calloc(e->ndescs ? e->ndescs : 1, sizeof(*t->certs))) == NULL)
		return HSMFS_ERR_NOMEM;
	for (size_t i = 0; i < e->ndescs; i++) {
		struct keyring_signer s;
		if (strcmp(e->descs[i].name, ENGINE_CONFIG_ZIP_SIGNER) != 0)
			continue;
		if (keyring_signer_of(kr, &e->descs[i], &s) == 0)
			t->certs[t->ncerts++] = s.cert;
	}
	if ((hsmfs_ctx->opt.truststore &&
	    (r = jar_trust_load_pem(hsmfs_ctx->opt.truststore, &t->store)) != 0) ||
	    (r = trust_fingerprint(t)) != 0) {
		trust_clear(t);
		return r;
	}
	if (t->ncerts == 0 && t->store == NULL) {
		err_set("no ConfigZipSigner certificate and no truststore: "
		    "nothing to verify zips against");
		trust_clear(t);
		return HSMFS_ERR_UNSUPPORTED;
	}
	return 0;
}

static void
trust_adopt(struct vi_trust *t)
{
	struct vi_trust old = { vi.certs, vi.ncerts, vi.store, {0} };
	trust_clear(&old);
	vi.certs = t->certs;
	vi.ncerts = t->ncerts;
	vi.store = t->store;
	memcpy(vi.trust_fp, t->trust_fp, sizeof(vi.trust_fp));
	vi.ready = 1;
	log_info("verify-in: trusting %zu ConfigZipSigner certificate(s)%s", vi.ncerts,
	    vi.store ? " and the truststore" : "");
}

static int
vi_start(void)
{
	struct vi_trust t;
	int r;

	if ((vi.dirfd = store_dir(hsmfs_ctx->store_fd, "verify-in")) < 0)
		return vi.dirfd;
	if ((vi.spooldir = store_dir(vi.dirfd, ".spool")) < 0)
		return vi.spooldir;
	if ((vi.metadir = store_dir(vi.dirfd, ".meta")) < 0)
		return vi.metadir;
	if ((vi.verdir = store_dir(vi.dirfd, ".verdict")) < 0)
		return vi.verdir;
	store_cleanup_tmp(vi.spooldir);
	store_cleanup_tmp(vi.metadir);
	store_cleanup_tmp(vi.verdir);
	store_cleanup_tmp(vi.dirfd);
	if ((r = temp_area_open(&vi.temps, vi.dirfd, vi.metadir, -1)) != 0)
		return r;
	if ((r = trust_of(hsmfs_ctx->engine, hsmfs_ctx->keys, &t)) != 0)
		return r;
	trust_adopt(&t);
	return 0;
}

/* Reload: new ConfigZipSigner versions and a changed truststore take
 * effect for the next verification (the cache key changes with them). */
static int
vi_reload_prepare(const struct engine *e, struct keyring *kr, void **next)
{
	struct vi_trust *t = malloc(sizeof(*t));
	int r;

	if (t == NULL)
		return HSMFS_ERR_NOMEM;
	if ((r = trust_of(e, kr, t)) != 0) {
		free(t);
		return r;
	}
	*next = t;
	return 0;
}

static void
vi_reload_finish(void *next, int commit)
{
	struct vi_trust *t = next;

	if (t == NULL)
		return;
	if (commit)
		trust_adopt(t);
	else
		trust_clear(t);
	free(t);
}

/* Safe after any failure of vi_start, and twice. */
static void
vi_stop(void)
{
	struct vi_trust old = { vi.certs, vi.ncerts, vi.store, {0} };
	vi.ready = 0;
	trust_clear(&old);
	vi.certs = NULL;
	vi.ncerts = 0;
	vi.store = NULL;
	temp_area_close(&vi.temps);
	util_close_fd(&vi.verdir);
	util_close_fd(&vi.metadir);
	util_close_fd(&vi.spooldir);
	util_close_fd(&vi.dirfd);
}

/* Where the file of a name lives: a temporary's in the temp area. */
/* The parts shared with /sign-out (fs/zipfolder.c); no records here. */
static struct zipfolder
vi_zip(void)
{
	struct zipfolder z = { vi.dirfd, -1, &vi.temps, &vi.spools };
	return z;
}

static int
dir_of(const char *name)
{
	struct zipfolder z = vi_zip();
	return zipfolder_dir_of(&z, name);
}

static void
vi_status(FILE *out)
{
	pthread_mutex_lock(&vi.stats_lock);
	fprintf(out, "verify-in.valid: %lu\n", vi.nvalid);
	fprintf(out, "verify-in.invalid: %lu\n", vi.ninvalid);
	fprintf(out, "verify-in.cached: %lu\n", vi.ncached);
	pthread_mutex_unlock(&vi.stats_lock);
}

static void
vi_metrics(struct metrics *m)
{
	pthread_mutex_lock(&vi.stats_lock);
	metrics_add(m, METRIC_COUNTER, "hsmfs_verifyin_verified_total",
	    "Zips verified in /verify-in by verdict", (double)vi.nvalid,
	    "result", "valid", (char *)NULL);
	metrics_add(m, METRIC_COUNTER, "hsmfs_verifyin_verified_total", NULL,
	    (double)vi.ninvalid, "result", "invalid", (char *)NULL);
	metrics_add(m, METRIC_COUNTER, "hsmfs_verifyin_cached_total",
	    "Verdicts in /verify-in answered from the cache", (double)vi.ncached,
	    (char *)NULL);
	pthread_mutex_unlock(&vi.stats_lock);
}

/* .meta/<name>: "ino size mtime_s mtime_ns ctime_s ctime_ns sha256hex" of
 * the committed file, so an open can find its content hash without
 * reading it. The ctime is there because the mtime can be put back (touch,
 * rsync --inplace --times) after bytes changed in place; a line of the
 * older 5-field form never matches, the file is then hashed again. */
static void
meta_write(const char *name, int fd, const uint8_t h[32])
{
	struct stat st;
	char hex[65], line[200];
	if (fstat(fd, &st) < 0)
		return;
	util_hex(h, 32, hex);
	snprintf(line, sizeof(line), "%llu %lld %lld %ld %lld %ld %s\n",
	    (unsigned long long)st.st_ino, (long long)st.st_size,
	    (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
	    (long long)st.st_ctim.tv_sec, st.st_ctim.tv_nsec, hex);
	if (store_write_atomic(vi.metadir, name, line, strlen(line)) != 0)
		log_warn("verify-in/%s: cannot record the content hash: %s", name,
		    err_detail());
}

static int
content_hash(const char *name, int fd, uint8_t h[32])
{
	struct stat st;
	char *text = NULL, hex[65];
	unsigned long long ino;
	long long size, sec, csec;
	long nsec, cnsec;
	int ok = 0;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (util_read_file_at(vi.metadir, name, 256, &text, NULL) == 0 &&
	    sscanf(text, "%llu %lld %lld %ld %lld %ld %64s", &ino, &size, &sec,
	    &nsec, &csec, &cnsec, hex) == 7 && strlen(hex) == 64 &&
	    ino == st.st_ino && size == st.st_size && sec == st.st_mtim.tv_sec &&
	    nsec == st.st_mtim.tv_nsec && csec == st.st_ctim.tv_sec &&
	    cnsec == st.st_ctim.tv_nsec) {
		ok = 1;
		for (int i = 0; i < 32; i++) {
			unsigned v;
			if (sscanf(hex + 2 * i, "%2x", &v) != 1) {
				ok = 0;
				break;
			}
			h[i] = (uint8_t)v;
		}
	}
	free(text);
	if (ok)
		return 0;
	/* Unknown, renamed (a rename changes the ctime) or changed behind our
	 * back: hash it (cheaper than verifying) and remember it. */
	if ((ok = spool_hash_fd(fd, h)) == 0) {
		struct stat st2;
		if (fstat(fd, &st2) == 0 && st2.st_size == st.st_size &&
		    st2.st_ctim.tv_sec == st.st_ctim.tv_sec &&
		    st2.st_ctim.tv_nsec == st.st_ctim.tv_nsec)
			meta_write(name, fd, h);
	}
	return ok;
}

/* The verdict for the file open at fd: from the cache, or by verifying
 * exactly that inode (through /proc/self/fd, so a concurrent replace of
 * the name cannot slip other bytes past the check). text gets
 * "valid signer=<DN>" or "invalid: <reason>". Returns 1 valid, 0 invalid,
 * or -errno when it could not be decided. */
static int
verdict(const char *name, int fd, char *text, size_t tlen)
{
	uint8_t h[32], key[32];
	char hex[65], *cached = NULL, path[64], line[VERDICT_MAX + 64];
	struct jar_trust t;
	struct jar_verdict v;
	EVP_MD_CTX *c;
	int r;

	if ((r = content_hash(name, fd, h)) != 0)
		return r;
	if ((c = EVP_MD_CTX_new()) == NULL)
		return -ENOMEM;
	EVP_DigestInit_ex(c, EVP_sha256(), NULL);
	EVP_DigestUpdate(c, h, 32);
	EVP_DigestUpdate(c, vi.trust_fp, 32);
	EVP_DigestUpdate(c, VERIFY_FORMAT, sizeof(VERIFY_FORMAT) - 1);
	EVP_DigestFinal_ex(c, key, NULL);
	EVP_MD_CTX_free(c);
	util_hex(key, 32, hex);

	if (util_read_file_at(vi.verdir, hex, VERDICT_MAX + 64, &cached, NULL) == 0) {
		long long until = 0;
		char *sp = strchr(cached, ' ');
		int valid = sp && strncmp(sp + 1, "valid ", 6) == 0;
		if (sp && sscanf(cached, "%lld", &until) == 1 &&
		    ((until == 0 && !valid) || until > (long long)time(NULL))) {
			snprintf(text, tlen, "%s", sp + 1);
			free(cached);
			pthread_mutex_lock(&vi.stats_lock);
			vi.ncached++;
			pthread_mutex_unlock(&vi.stats_lock);
			return strncmp(text, "valid ", 6) == 0;
		}
		free(cached);
	}
	t.certs = vi.certs;
	t.ncerts = vi.ncerts;
	t.store = vi.store;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	r = jar_verify(path, &t, &v);
	if (r != 0 && r != HSMFS_ERR_BADMSG) {
		fs_log_fail("verify-in", name, NULL, "cannot verify", r);
		return -hsmfs_err_errno(r);
	}
	if (r == 0)
		snprintf(text, tlen, "valid signer=%s", v.signer);
	else
		snprintf(text, tlen, "invalid: %s", v.reason);
	/* A valid verdict expires with the earliest notAfter of the signer's
	 * chain (jar_verify's not_after); one without a known expiry is not
	 * cached at all. Invalid verdicts are kept (0: no expiry). */
	snprintf(line, sizeof(line), "%lld %s", r == 0 ? (long long)v.not_after : 0LL,
	    text);
	if ((r != 0 || v.not_after > 0) &&
	    store_write_atomic(vi.verdir, hex, line, strlen(line)) != 0)
		log_warn("verify-in/%s: cannot cache the verdict: %s", name,
		    err_detail());
	pthread_mutex_lock(&vi.stats_lock);
	if (r == 0)
		vi.nvalid++;
	else
		vi.ninvalid++;
	pthread_mutex_unlock(&vi.stats_lock);
	if (r != 0)
		log_err("verify-in/%s: %s", name, text);
	return r == 0;
}

static int
vi_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	struct zipfolder z = vi_zip();
	(void)fi;
	return zipfolder_getattr(&z, path, st);
}

static int
vi_readdir(const char *path, void *buf, fuse_fill_dir_t fill)
{
	struct zipfolder z = vi_zip();
	return zipfolder_readdir(&z, path, buf, fill);
}

/* Every open of this folder is direct_io (see vi_open): a writer's bytes
 * never go to the page cache that readers of the name share. */
static int
open_writer(const char *path, struct fuse_file_info *fi, int trunc)
{
	struct spool_fh *h;
	int r;
	if (!vi.ready) {
		log_err("verify-in/%s: write refused: no ConfigZipSigner certificate "
		    "and no truststore configured", path);
		return -EOPNOTSUPP;
	}
	if ((r = spool_fh_writer(&vi.spools, vi.spooldir, dir_of(path), path,
	    trunc, &h)) != 0)
		return r;
	fi->fh = (uint64_t)(uintptr_t)h;
	fi->direct_io = 1;
	fi->keep_cache = 0;
	return 0;
}

static int
vi_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	struct zipfolder z = vi_zip();
	int r;
	(void)mode;
	if ((r = zipfolder_create_ok(&z, path)) != 0)
		return r;
	return open_writer(path, fi, 1);
}

/* Who may read what (docs/zip.md, the table of opens under /verify-in):
 * every open that can read verifies first, and a writer reads back only
 * what it wrote or what was verified.
 *   O_RDONLY                 verify; EBADMSG when invalid.
 *   O_RDWR on a stored zip   verify exactly like O_RDONLY; the handle then
 *                            starts as a copy of the very bytes verified
 *                            (same open file, not the name again).
 *   O_RDWR|O_TRUNC, or a     starts empty: reads return only this
 *   name not stored          handle's own writes (zeros in holes).
 *   O_WRONLY                 no verification and no reads (the kernel
 *                            refuses them); without O_TRUNC it starts as
 *                            a copy of the stored bytes so appends work. */
static int
vi_open(const char *path, struct fuse_file_info *fi)
{
	struct spool_fh *h;
	char text[VERDICT_MAX];
	int acc = fi->flags & O_ACCMODE, trunc = (fi->flags & O_TRUNC) != 0;
	int fd, r;
	if (*path == '\0')
		return -EISDIR;
	if (!temp_name_ok(path))
		return -ENOENT;
	if (acc == O_WRONLY || (acc == O_RDWR && trunc))
		return open_writer(path, fi, trunc);
	if ((fd = openat(dir_of(path), path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0) {
		/* Only an in-flight name of another writer gets here. */
		if (errno == ENOENT && acc == O_RDWR)
			return open_writer(path, fi, 1);
		return -errno;
	}
	if ((r = verdict(path, fd, text, sizeof(text))) <= 0) {
		close(fd);
		return r == 0 ? -EBADMSG : r;
	}
	if (acc == O_RDWR) {
		r = spool_fh_writer_from(&vi.spools, vi.spooldir, path, fd, &h);
		close(fd);
		if (r != 0)
			return r;
	} else if ((r = spool_fh_reader(fd, &h)) != 0) {
		return r;
	}
	fi->fh = (uint64_t)(uintptr_t)h;
	/* No page cache: it is shared by every handle of the name, so a
	 * writer's pages (O_WRONLY is not verified) or the pages of the zip
	 * this name held before would reach this verified reader. */
	fi->direct_io = 1;
	fi->keep_cache = 0;
	return 0;
}

/* Store the bytes as copied, durably, with their content hash. */
static int
vi_flush(const char *path, struct fuse_file_info *fi)
{
	struct spool_fh *h = (struct spool_fh *)(uintptr_t)fi->fh;
	struct spool *s;
	uint8_t hash[32];
	int r = 0;
	if (h == NULL || (s = h->s) == NULL)
		return 0;
	pthread_mutex_lock(&s->lock);
	if (!s->dirty) {
		r = s->last_err;
		goto out;
	}
	if ((r = s->write_err) != 0)
		;   /* a write failed (ENOSPC): the old item stays */
	else if ((r = spool_sha256(s, hash)) == 0 &&
	    (r = spool_commit(s, dir_of(s->name), s->name)) == 0)
		meta_write(s->name, s->fd, hash);
	if (r != 0)
		log_err("verify-in/%s: cannot store: %s", s->name, strerror(-r));
	s->dirty = 0;
	s->last_err = r;
out:
	pthread_mutex_unlock(&s->lock);
	return r;
}

static int
vi_unlink(const char *path)
{
	if (!temp_name_ok(path))
		return -EINVAL;
	if (unlinkat(dir_of(path), path, 0) < 0)
		return -errno;
	unlinkat(vi.metadir, path, 0);
	store_fsync_dir(dir_of(path));
	return 0;
}

static int
vi_rename(const char *from, const char *to, unsigned int flags)
{
	int r;
	if ((r = zipfolder_rename_ok(from, to, flags)) != 0)
		return r;
	if (renameat2(dir_of(from), from, dir_of(to), to, flags) < 0)
		return -errno;
	if (renameat(vi.metadir, from, vi.metadir, to) < 0)
		unlinkat(vi.metadir, to, 0);
	spool_rename(&vi.spools, from, to);
	store_fsync_dir(dir_of(to));
	if (dir_of(from) != dir_of(to))
		store_fsync_dir(dir_of(from));
	return 0;
}

static int
vi_getxattr(const char *path, const char *name, char *value, size_t size)
{
	char text[VERDICT_MAX];
	int fd, r;
	if (strcmp(name, VERIFY_XATTR) != 0 || !temp_name_ok(path))
		return -ENODATA;
	if ((fd = openat(dir_of(path), path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0)
		return -ENODATA;
	r = verdict(path, fd, text, sizeof(text));
	close(fd);
	if (r < 0)
		return r;
	return fs_xattr_reply(text, strlen(text), value, size);
}

static int
vi_listxattr(const char *path, char *list, size_t size)
{
	return zipfolder_listxattr(path, dir_of(path), VERIFY_XATTR, list, size);
}

const struct folder_ops verifyin_folder = {
	.name = "verify-in",
	.start = vi_start,
	.stop = vi_stop,
	.reload_prepare = vi_reload_prepare,
	.reload_finish = vi_reload_finish,
	.status = vi_status,
	.metrics = vi_metrics,
	.getattr = vi_getattr,
	.readdir = vi_readdir,
	.open = vi_open,
	.create = vi_create,
	.read = spool_op_read,
	.write = spool_op_write,
	.flush = vi_flush,
	.fsync = spool_op_fsync,
	.release = spool_op_release,
	.truncate = spool_op_truncate,
	.unlink = vi_unlink,
	.rename = vi_rename,
	.getxattr = vi_getxattr,
	.listxattr = vi_listxattr,
};
