/* /sign-out: zips copied in are JAR-signed with the newest ConfigZipSigner
 * key when the writer closes (flush), and stored durably. Owns
 * STORE/sign-out/ (signed zips by name), .spool/ (incoming bytes per open,
 * signer output before its rename), .sign/ (user.hsmfs.sign records) and
 * .temp/ (signed zips of writers' temporaries until their rename). */
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
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/err.h>

#define SIGN_XATTR "user.hsmfs.sign"
#define REC_MAX 1024

static struct {
	int dirfd, spooldir, recdir;
	const struct engine_descriptor *desc;
	hsm_key *key;                /* NULL: writes refused (EOPNOTSUPP) */
	STACK_OF(X509) *chain;       /* issuers embedded in signatures */
	char dn[512];
	struct spool_list spools;
	struct temp_area temps;
	pthread_mutex_t stats_lock;
	unsigned long nsigned, nfailed;
} so = {
	.dirfd = -1, .spooldir = -1, .recdir = -1,
	.temps = TEMP_AREA_INIT,
	.spools = {PTHREAD_MUTEX_INITIALIZER, NULL},
	.stats_lock = PTHREAD_MUTEX_INITIALIZER,
};

static void
dn_of(X509 *x, char *out, size_t len)
{
	BIO *b = BIO_new(BIO_s_mem());
	int n = 0;
	out[0] = '\0';
	if (b == NULL)
		return;
	X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253);
	n = BIO_read(b, out, (int)len - 1);
	out[n > 0 ? n : 0] = '\0';
	BIO_free(b);
}

/* What sign-out derives from a configuration: the newest ConfigZipSigner,
 * its key, its subject and the issuers to embed. */
struct so_keys {
	const struct engine_descriptor *desc;
	hsm_key *key;
	STACK_OF(X509) *chain;
	char dn[512];
};

static int
so_keys_of(const struct engine *e, struct keyring *kr, struct so_keys *k)
{
	struct keyring_signer s;
	int r;

	memset(k, 0, sizeof(*k));
	k->desc = engine_newest(e, ENGINE_CONFIG_ZIP_SIGNER);
	if (k->desc == NULL) {
		err_set("no ConfigZipSigner descriptor in %s", e->path);
		return HSMFS_ERR_UNSUPPORTED;
	}
	if ((r = jar_descriptor_check(k->desc)) != 0)
		return r;
	if ((r = keyring_signer_of(kr, k->desc, &s)) != 0)
		return r;
	k->key = s.key;
	dn_of(s.cert, k->dn, sizeof(k->dn));
	if (hsmfs_ctx->opt.truststore) {
		X509_STORE *st = NULL;
		if ((r = jar_trust_load_pem(hsmfs_ctx->opt.truststore, &st)) != 0)
			return r;
		r = jar_chain_from_store(s.cert, st, &k->chain);
		X509_STORE_free(st);
		if (r != 0)
			return r;
	}
	return 0;
}

static void
so_adopt(struct so_keys *k)
{
	const struct engine_key *ek = k->desc->key;

	sk_X509_pop_free(so.chain, X509_free);
	so.desc = k->desc;
	so.key = k->key;
	so.chain = k->chain;
	memcpy(so.dn, k->dn, sizeof(so.dn));
	log_info("sign-out: signing with ConfigZipSigner version %d, key %s (%s), "
	    "%d issuer certificate(s) embedded", so.desc->version,
	    ek && ek->alias ? ek->alias : so.desc->key_name, so.dn,
	    so.chain ? sk_X509_num(so.chain) : 0);
}

static int
so_start(void)
{
	struct so_keys k;
	int r;

	if ((so.dirfd = store_dir(hsmfs_ctx->store_fd, "sign-out")) < 0)
		return so.dirfd;
	if ((so.spooldir = store_dir(so.dirfd, ".spool")) < 0)
		return so.spooldir;
	if ((so.recdir = store_dir(so.dirfd, ".sign")) < 0)
		return so.recdir;
	/* Leftovers of a crash: never signed, never acknowledged. */
	store_cleanup_tmp(so.spooldir);
	store_cleanup_tmp(so.recdir);
	store_cleanup_tmp(so.dirfd);
	if ((r = temp_area_open(&so.temps, so.dirfd, so.recdir, -1)) != 0)
		return r;
	if ((r = so_keys_of(hsmfs_ctx->engine, hsmfs_ctx->keys, &k)) != 0) {
		sk_X509_pop_free(k.chain, X509_free);
		return r;
	}
	so_adopt(&k);
	return 0;
}

/* Reload: the next zip is signed with the new newest version. */
static int
so_reload_prepare(const struct engine *e, struct keyring *kr, void **next)
{
	struct so_keys *k = malloc(sizeof(*k));
	int r;

	if (k == NULL)
		return HSMFS_ERR_NOMEM;
	if ((r = so_keys_of(e, kr, k)) != 0) {
		sk_X509_pop_free(k->chain, X509_free);
		free(k);
		return r;
	}
	*next = k;
	return 0;
}

static void
so_reload_finish(void *next, int commit)
{
	struct so_keys *k = next;

	if (k == NULL)
		return;
	if (commit)
		so_adopt(k);
	else
		sk_X509_pop_free(k->chain, X509_free);
	free(k);
}

/* Safe after any failure of so_start, and twice. */
static void
so_stop(void)
{
	sk_X509_pop_free(so.chain, X509_free);
	so.chain = NULL;
	so.key = NULL;
	temp_area_close(&so.temps);
	util_close_fd(&so.spooldir);
	util_close_fd(&so.recdir);
	util_close_fd(&so.dirfd);
}

static void
so_status(FILE *out)
{
	pthread_mutex_lock(&so.stats_lock);
	fprintf(out, "sign-out.signed: %lu\n", so.nsigned);
	fprintf(out, "sign-out.refused: %lu\n", so.nfailed);
	pthread_mutex_unlock(&so.stats_lock);
	if (so.desc)
		fprintf(out, "sign-out.key: %s (version %d)\n", so.desc->key_name,
		    so.desc->version);
}

static void
so_metrics(struct metrics *m)
{
	pthread_mutex_lock(&so.stats_lock);
	metrics_add(m, METRIC_COUNTER, "hsmfs_signout_signed_total",
	    "Zips signed in /sign-out", (double)so.nsigned, (char *)NULL);
	metrics_add(m, METRIC_COUNTER, "hsmfs_signout_refused_total",
	    "Zips refused or failed in /sign-out", (double)so.nfailed, (char *)NULL);
	pthread_mutex_unlock(&so.stats_lock);
	if (so.desc)
		metrics_add(m, METRIC_GAUGE, "hsmfs_descriptor_version",
		    "Descriptor version used for new work, by descriptor and key",
		    so.desc->version, "descriptor", "ConfigZipSigner",
		    "key", so.desc->key_name, (char *)NULL);
}

/* The parts shared with /verify-in (fs/zipfolder.c). */
static struct zipfolder
so_zip(void)
{
	struct zipfolder z = { so.dirfd, so.recdir, &so.temps, &so.spools };
	return z;
}

static int
dir_of(const char *name)
{
	struct zipfolder z = so_zip();
	return zipfolder_dir_of(&z, name);
}

static int
rec_exists(const char *name)
{
	return faccessat(so.recdir, name, F_OK, 0) == 0;
}

static void
rec_write(const char *name, const char *text)
{
	if (store_write_atomic(so.recdir, name, text, strlen(text)) != 0)
		log_err("sign-out/%s: cannot record the result: %s", name,
		    err_detail());
}

static int
so_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	struct zipfolder z = so_zip();
	(void)fi;
	return zipfolder_getattr(&z, path, st);
}

static int
so_readdir(const char *path, void *buf, fuse_fill_dir_t fill)
{
	struct zipfolder z = so_zip();
	return zipfolder_readdir(&z, path, buf, fill);
}

static int
open_writer(const char *path, struct fuse_file_info *fi, int trunc)
{
	struct spool_fh *h;
	int r;
	if (so.key == NULL) {
		log_err("sign-out/%s: write refused: no usable ConfigZipSigner key",
		    path);
		return -EOPNOTSUPP;
	}
	if ((r = spool_fh_writer(&so.spools, so.spooldir, dir_of(path), path,
	    trunc, &h)) != 0)
		return r;
	fi->fh = (uint64_t)(uintptr_t)h;
	fi->direct_io = 1;
	return 0;
}

static int
so_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	struct zipfolder z = so_zip();
	int r;
	(void)mode;
	if ((r = zipfolder_create_ok(&z, path)) != 0)
		return r;
	return open_writer(path, fi, 1);
}

static int
so_open(const char *path, struct fuse_file_info *fi)
{
	struct spool_fh *h;
	int fd, r;
	if (*path == '\0')
		return -EISDIR;
	if (!temp_name_ok(path))
		return -ENOENT;
	if ((fi->flags & O_ACCMODE) != O_RDONLY)
		return open_writer(path, fi, (fi->flags & O_TRUNC) != 0);
	if ((fd = openat(dir_of(path), path, O_RDONLY | O_CLOEXEC)) < 0) {
		/* Only a refusal record: there is no signed zip to read. */
		return errno == ENOENT && rec_exists(path) ? -EINVAL : -errno;
	}
	if ((r = spool_fh_reader(fd, &h)) != 0)
		return r;
	fi->fh = (uint64_t)(uintptr_t)h;
	/* The signed size differs from what the writer's kernel cache saw. */
	fi->direct_io = 1;
	return 0;
}

/* An empty file closed (touch, Java's createTempFile) is not an error: it
 * is an empty pending item, listed with size 0 and its state in the
 * attribute; a zip written to it later is signed at that close. A
 * temporary keeps an empty file in the temp area, which rename() refuses
 * to publish. An emptied name loses its signed zip, as a file would. */
static int
pending_empty_locked(struct spool *s)
{
	int r;
	if (temp_name(s->name))
		r = store_write_atomic(so.temps.dirfd, s->name, "", 0);
	else
		r = unlinkat(so.dirfd, s->name, 0) == 0 || errno == ENOENT ? 0 :
		    hsmfs_errno_err(errno);
	if (r != 0) {
		fs_log_fail("sign-out", s->name, NULL, "cannot store", r);
		return -hsmfs_err_errno(r);
	}
	rec_write(s->name, "pending: empty file, nothing signed (write a zip "
	    "to it)");
	return 0;
}

/* Sign the spooled bytes into a temp next to them, make it durable and
 * rename it onto the name. Called with s->lock held. */
static int
sign_commit_locked(struct spool *s)
{
	char in[PATH_MAX], out[PATH_MAX], rec[REC_MAX];
	struct store_tmp t;
	struct jar_sign_opts o = {0};
	const struct engine_key *ek = so.desc->key;
	int r, fd, e, in_place = 0, dst = dir_of(s->name);
	struct stat st;

	if (s->write_err != 0) {
		/* The bytes are not what was written (ENOSPC): nothing to
		 * sign, the old item stays. */
		log_err("sign-out/%s: not signed: a write failed: %s", s->name,
		    strerror(-s->write_err));
		return s->write_err;
	}
	if (fstat(s->fd, &st) == 0 && st.st_size == 0)
		return pending_empty_locked(s);
	if ((r = store_tmp_create(so.spooldir, &t)) != 0)
		return -hsmfs_err_errno(r);
	close(t.fd);
	t.fd = -1;
	snprintf(in, sizeof(in), "%s/sign-out/.spool/%s", hsmfs_ctx->store, s->tmp);
	snprintf(out, sizeof(out), "%s/sign-out/.spool/%s", hsmfs_ctx->store, t.name);
	o.key = so.key;
	o.md = so.desc->md;
	o.signer = ek && ek->alias ? ek->alias : so.desc->key_name;
	o.chain = so.chain;
	err_clear();
	if ((r = jar_sign_ex(in, out, &o, &in_place)) != 0) {
		unlinkat(so.spooldir, t.name, 0);
		snprintf(rec, sizeof(rec), "%s: %s", r == HSMFS_ERR_INVALID ?
		    "invalid" : "failed", err_detail());
		fs_log_fail("sign-out", s->name, so.desc->key_name,
		    r == HSMFS_ERR_INVALID ? "zip refused" : "signing failed", r);
		rec_write(s->name, rec);
		pthread_mutex_lock(&so.stats_lock);
		so.nfailed++;
		pthread_mutex_unlock(&so.stats_lock);
		return -hsmfs_err_errno(r);
	}
	if (in_place) {
		/* The spool itself became the signed zip: no copy of the entries. */
		unlinkat(so.spooldir, t.name, 0);
		if ((r = spool_commit(s, dst, s->name)) != 0) {
			log_err("sign-out/%s: cannot store the signed zip: %s", s->name,
			    strerror(-r));
			return r;
		}
		goto done;
	}
	if ((fd = openat(so.spooldir, t.name, O_RDONLY | O_CLOEXEC)) < 0 ||
	    fsync(fd) < 0) {
		e = errno;
		if (fd >= 0)
			close(fd);
		unlinkat(so.spooldir, t.name, 0);
		log_err("sign-out/%s: cannot make the signed zip durable: %s",
		    s->name, strerror(e));
		return -e;
	}
	close(fd);
	if (renameat(so.spooldir, t.name, dst, s->name) < 0 ||
	    fsync(dst) < 0) {
		e = errno;
		unlinkat(so.spooldir, t.name, 0);
		log_err("sign-out/%s: cannot store the signed zip: %s", s->name,
		    strerror(e));
		return -e;
	}
done:
	snprintf(rec, sizeof(rec), "signed signer=%s", so.dn);
	rec_write(s->name, rec);
	pthread_mutex_lock(&so.stats_lock);
	so.nsigned++;
	pthread_mutex_unlock(&so.stats_lock);
	log_info("sign-out/%s: signed with key %s", s->name, so.desc->key_name);
	return 0;
}

/* close() waits for this: sign once per content state; a repeated flush
 * (dup'd descriptors) returns the same result without signing again. */
static int
so_flush(const char *path, struct fuse_file_info *fi)
{
	struct spool_fh *h = (struct spool_fh *)(uintptr_t)fi->fh;
	int r;
	if (h == NULL || h->s == NULL)
		return 0;
	pthread_mutex_lock(&h->s->lock);
	if (h->s->dirty) {
		h->s->last_err = sign_commit_locked(h->s);
		h->s->dirty = 0;
	}
	r = h->s->last_err;
	pthread_mutex_unlock(&h->s->lock);
	return r;
}

static int
so_unlink(const char *path)
{
	int a, b;
	if (!temp_name_ok(path))
		return -EINVAL;
	a = unlinkat(dir_of(path), path, 0) == 0 ? 0 : -errno;
	b = unlinkat(so.recdir, path, 0) == 0 ? 0 : -errno;
	if (a == -ENOENT && b == -ENOENT)
		return -ENOENT;
	if (a != 0 && a != -ENOENT)
		return a;
	store_fsync_dir(dir_of(path));
	return 0;
}

static int
so_rename(const char *from, const char *to, unsigned int flags)
{
	struct stat st;
	char *why = NULL;
	int has_file, r, fd = dir_of(from), td = dir_of(to);
	if ((r = zipfolder_rename_ok(from, to, flags)) != 0)
		return r;
	has_file = fstatat(fd, from, &st, AT_SYMLINK_NOFOLLOW) == 0;
	if (temp_name(from) && (!has_file || st.st_size == 0)) {
		/* Refused or empty: nothing signed to publish; the target
		 * stays as it was. */
		if (!rec_exists(from))
			return -ENOENT;
		if (has_file)
			rec_write(from, "invalid: empty file is not a zip; nothing "
			    "signed");
		if (util_read_file_at(so.recdir, from, REC_MAX, &why, NULL) != 0)
			why = NULL;
		log_err("sign-out/%s: not renamed onto %s: %s", from, to,
		    why ? why : "not signed");
		free(why);
		return -EINVAL;
	}
	if (has_file) {
		if (renameat2(fd, from, td, to, flags) < 0)
			return -errno;
	} else if (!rec_exists(from)) {
		return -ENOENT;
	} else {
		unlinkat(so.dirfd, to, 0);
	}
	r = renameat(so.recdir, from, so.recdir, to);
	if (r < 0 && errno == ENOENT)
		unlinkat(so.recdir, to, 0);
	spool_rename(&so.spools, from, to);
	store_fsync_dir(td);
	if (fd != td)
		store_fsync_dir(fd);
	store_fsync_dir(so.recdir);
	return 0;
}

static int
so_getxattr(const char *path, const char *name, char *value, size_t size)
{
	char *text = NULL;
	size_t len = 0;
	int r;
	if (strcmp(name, SIGN_XATTR) != 0 || !temp_name_ok(path))
		return -ENODATA;
	if (util_read_file_at(so.recdir, path, REC_MAX, &text, &len) != 0)
		return -ENODATA;
	r = fs_xattr_reply(text, len, value, size);
	free(text);
	return r;
}

static int
so_listxattr(const char *path, char *list, size_t size)
{
	return zipfolder_listxattr(path, so.recdir, SIGN_XATTR, list, size);
}

const struct folder_ops signout_folder = {
	.name = "sign-out",
	.start = so_start,
	.stop = so_stop,
	.reload_prepare = so_reload_prepare,
	.reload_finish = so_reload_finish,
	.status = so_status,
	.metrics = so_metrics,
	.getattr = so_getattr,
	.readdir = so_readdir,
	.open = so_open,
	.create = so_create,
	.read = spool_op_read,
	.write = spool_op_write,
	.flush = so_flush,
	.fsync = spool_op_fsync,
	.release = spool_op_release,
	.truncate = spool_op_truncate,
	.unlink = so_unlink,
	.rename = so_rename,
	.getxattr = so_getxattr,
	.listxattr = so_listxattr,
};
