/* /mail: the FUSE side of the S/MIME mail queue (docs/mail.md): writers
 * (a message is checked, signed and queued at its close), the views of
 * the queue, sent/ and failed/, and their operations. The queue is the
 * store's (store/mailq.h); the sender thread, start and status are
 * fs/mail_sender.c, SMTP is fs/smtp.c. Locking: fs/mail_int.h. */
#include "fs/mail_int.h"
#include "crypto/smime.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/x509v3.h>

#define MAIL_XATTR "user.hsmfs.mail"

enum mfh_kind { FH_WRITER = 1, FH_FILE };

/* An open file: a writer, or a snapshot of a stored view. */
struct mfh {
	enum mfh_kind kind;
	struct mailq_reader *rd;
	size_t len;
	struct writer *w;
};

/* The writer that owns a name: once its message is queued (or a
 * temporary's staged) the name belongs to the queue (or the temp area),
 * even while the writer's release is still on its way. */
static struct writer *
w_find_locked(const char *name)
{
	for (struct writer *w = mail.writers; w; w = w->next)
		if (strcmp(w->name, name) == 0 && !w->committed && !w->staged)
			return w;
	return NULL;
}

/* ---- queue admission (FUSE flush) ---- */

/* Check, sign and durably queue one written message. */
static int
mail_commit(struct writer *w)
{
	struct smime_msg m = { 0 };
	struct mailq_hdr h = { 0 };
	uint8_t *sig = NULL;
	size_t siglen = 0;
	int r;

	err_clear();
	if ((r = smime_check(w->buf, w->len, &m)) != 0)
		goto out;
	/* Receivers compare From with the certificate; sign anyway (the
	 * relay may rewrite), but say why clients will flag it. */
	if (X509_check_email(keyring_key_cert(mail.key), m.from, 0, 0) != 1)
		log_warn("mail/%s: From %s is not an address of key %s's "
		    "certificate; receivers will flag the signature", w->name,
		    m.from, mail.key_name);
	h.queued = h.date = (long long)time(NULL);
	if (m.msgid)
		snprintf(h.msgid, sizeof(h.msgid), "%s", m.msgid);
	else if ((r = smime_msgid_new(m.from, h.msgid, sizeof(h.msgid))) != 0)
		goto out;
	/* MIME problems (an 8-bit multipart) are the writer's to fix; a
	 * failing HSM does not lose the message: it is queued unsigned and
	 * the sender signs it when the token is back. */
	if ((r = smime_sign(mail.key, mail.md, w->buf, w->len, (time_t)h.date,
	    h.msgid, &sig, &siglen)) != 0) {
		if (r == HSMFS_ERR_INVALID)
			goto out;
		fs_log_fail("mail", w->name, mail.key_name,
		    "signing failed, queued unsigned; the sender will retry", r);
		free(sig);
		sig = NULL;
		siglen = 0;
	}
	h.msglen = w->len;
	h.siglen = siglen;
	/* Checked and signed; a temporary is queued when renamed into place. */
	if (temp_name(w->name)) {
		r = mailq_stage(mail.q, w->name, &h, w->buf, sig);
		goto out;
	}
	/* The first attempt waits a moment: tools set the mode or times
	 * of the name right after close (install -m, rsync, mv), and a sent
	 * message leaves the name at once. Durable before close() returns. */
	if ((r = mailq_enqueue(mail.q, w->name, &h, w->buf, sig,
	    MAIL_FIRST_DELAY)) == 0) {
		mail_wake();
		log_debug("mail/%s: queued for %zu recipient(s), Message-ID %s",
		    w->name, m.nrcpts, h.msgid);
	}
out:
	free(sig);
	smime_msg_clear(&m);
	return r;
}

/* ---- path views ---- */

enum view {
	V_NONE, V_ROOT, V_SENTDIR, V_FAILDIR,
	V_WRITER, V_QUEUED, V_SENT, V_FAILED, V_FAILED_ERR,
	V_STAGED,             /* a closed temporary (.NAME) */
};

/* Classify a path; *name gets the message name. Lock held. */
static enum view
classify_locked(const char *path, char *name, size_t size)
{
	if (*path == '\0')
		return V_ROOT;
	if (strcmp(path, "sent") == 0)
		return V_SENTDIR;
	if (strcmp(path, "failed") == 0)
		return V_FAILDIR;
	if (!mail.started)
		return V_NONE;
	if (strncmp(path, "sent/", 5) == 0) {
		if (!util_name_valid(path + 5))
			return V_NONE;
		snprintf(name, size, "%s", path + 5);
		return mailq_exists(mail.q, MAILQ_SENT, name) ? V_SENT : V_NONE;
	}
	if (strncmp(path, "failed/", 7) == 0) {
		const char *n = path + 7;
		size_t l = strlen(n);
		if (!util_name_valid(n))
			return V_NONE;
		snprintf(name, size, "%s", n);
		if (mailq_exists(mail.q, MAILQ_FAILED, name))
			return V_FAILED;
		if (l > 6 && strcmp(n + l - 6, ".error") == 0) {
			snprintf(name, size, "%.*s", (int)(l - 6), n);
			if (util_name_valid(name) &&
			    mailq_exists(mail.q, MAILQ_FAILED, name))
				return V_FAILED_ERR;
		}
		return V_NONE;
	}
	if (strchr(path, '/') != NULL || !temp_name_ok(path))
		return V_NONE;
	snprintf(name, size, "%s", path);
	if (w_find_locked(name))
		return V_WRITER;
	if (temp_name(name))
		return mailq_exists(mail.q, MAILQ_STAGED, name) ? V_STAGED : V_NONE;
	if (mailq_find(mail.q, name, NULL))
		return V_QUEUED;
	return V_NONE;
}

/* Open a snapshot of what a view shows: the message as written (queued,
 * failed, staged), the signed form (sent) or the reason (failed/NAME.error). */
static int
view_open(enum view v, const char *name, struct mailq_reader **rd,
    size_t *len, long long *mtime)
{
	enum mailq_box box = v == V_QUEUED ? MAILQ_QUEUED : v == V_SENT ?
	    MAILQ_SENT : v == V_STAGED ? MAILQ_STAGED : MAILQ_FAILED;
	enum mailq_part part = v == V_SENT ? MAILQ_PART_SIGNED :
	    v == V_FAILED_ERR ? MAILQ_PART_REASON : MAILQ_PART_MSG;
	int r = mailq_reader_open(mail.q, box, name, part, rd, len, mtime);
	return r == 0 ? 0 : -hsmfs_err_errno(r);
}

/* Every mail view (queued, sent, failed and its .error) is the mount
 * owner's alone: with allow_other the others must not read messages, Bcc
 * lines (queued and failed keep them) or a relay's reply naming a
 * recipient. A message being written is 0600. */
#define MAIL_VIEW_MODE 0400

static int
mail_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	char name[256];
	enum view v;
	struct writer *w;
	struct mailq_item it;
	struct mailq_reader *rd;
	long long mtime;
	size_t len;
	int r;

	pthread_mutex_lock(&mail.lock);
	v = classify_locked(path, name, sizeof(name));
	switch (v) {
	case V_ROOT: case V_SENTDIR: case V_FAILDIR:
		fs_stat_dir(st);
		pthread_mutex_unlock(&mail.lock);
		return 0;
	case V_WRITER:
		w = w_find_locked(name);
		fs_stat_file(st, 0600, (off_t)w->len, time(NULL));
		pthread_mutex_unlock(&mail.lock);
		return 0;
	case V_QUEUED:
		if (!mailq_find(mail.q, name, &it)) {
			pthread_mutex_unlock(&mail.lock);
			return -ENOENT;
		}
		fs_stat_file(st, MAIL_VIEW_MODE, (off_t)it.msglen,
		    (time_t)it.st.queued);
		pthread_mutex_unlock(&mail.lock);
		return 0;
	case V_NONE:
		pthread_mutex_unlock(&mail.lock);
		return -ENOENT;
	default:
		break;
	}
	pthread_mutex_unlock(&mail.lock);
	if ((r = view_open(v, name, &rd, &len, &mtime)) != 0)
		return r;
	mailq_reader_close(rd);
	fs_stat_file(st, v == V_STAGED ? 0600 : MAIL_VIEW_MODE, (off_t)len,
	    (time_t)mtime);
	return 0;
}

struct fill {
	void *buf;
	fuse_fill_dir_t fill;
	int with_error;       /* failed/: NAME.error beside NAME */
};

static void
fill_cb(void *arg, const char *name)
{
	struct fill *f = arg;
	char en[300];
	f->fill(f->buf, name, NULL, 0, 0);
	if (f->with_error) {
		snprintf(en, sizeof(en), "%s.error", name);
		if (util_name_valid(en))
			f->fill(f->buf, en, NULL, 0, 0);
	}
}

static int
mail_readdir(const char *path, void *buf, fuse_fill_dir_t fill)
{
	if (*path != '\0' && strcmp(path, "sent") != 0 && strcmp(path, "failed") != 0)
		return -ENOTDIR;
	fill(buf, ".", NULL, 0, 0);
	fill(buf, "..", NULL, 0, 0);
	if (*path == '\0') {
		fill(buf, "sent", NULL, 0, 0);
		fill(buf, "failed", NULL, 0, 0);
		struct fill f = { buf, fill, 0 };
		pthread_mutex_lock(&mail.lock);
		if (mail.started)
			mailq_list(mail.q, MAILQ_QUEUED, fill_cb, &f);
		for (struct writer *w = mail.writers; w; w = w->next)
			if (!w->committed && !w->staged && util_name_valid(w->name) &&
			    !(mail.started && mailq_find(mail.q, w->name, NULL)))
				fill(buf, w->name, NULL, 0, 0);
		pthread_mutex_unlock(&mail.lock);
		temp_area_sweep(&mail.temps);
	} else if (mail.started) {
		struct fill f = { buf, fill, *path == 'f' };
		mailq_list(mail.q, *path == 's' ? MAILQ_SENT : MAILQ_FAILED, fill_cb,
		    &f);
	}
	return 0;
}

static int mail_create(const char *path, mode_t mode,
    struct fuse_file_info *fi);

static int
mail_open(const char *path, struct fuse_file_info *fi)
{
	char name[256];
	struct mfh *h;
	struct mailq_reader *rd;
	enum view v;
	size_t len = 0;
	int r;

	pthread_mutex_lock(&mail.lock);
	v = classify_locked(path, name, sizeof(name));
	pthread_mutex_unlock(&mail.lock);
	switch (v) {
	case V_ROOT: case V_SENTDIR: case V_FAILDIR:
		return -EISDIR;
	case V_NONE:
		return -ENOENT;
	case V_WRITER:
		return -EBUSY;      /* one writer per message */
	default:
		break;
	}
	/* A temporary is rewritten whole (Files.write, createTempFile then
	 * a copy): a new writer replaces it at close. */
	if (v == V_STAGED && (fi->flags & O_ACCMODE) != O_RDONLY &&
	    (fi->flags & O_TRUNC))
		return mail_create(path, 0600, fi);
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))
		return -EACCES;     /* queued, sent and failed mail is read-only */
	/* The entry may move (queue -> sent) between the lookup and here:
	 * the open fd keeps its bytes; a vanished one is ENOENT. */
	if ((r = view_open(v, name, &rd, &len, NULL)) != 0)
		return r;
	if ((h = calloc(1, sizeof(*h))) == NULL) {
		mailq_reader_close(rd);
		return -ENOMEM;
	}
	h->kind = FH_FILE;
	h->rd = rd;
	h->len = len;
	fi->fh = (uint64_t)(uintptr_t)h;
	fi->direct_io = 1;
	return 0;
}

static int
mail_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	struct writer *w;
	struct mfh *h;

	if (strchr(path, '/') != NULL)
		return strncmp(path, "sent/", 5) == 0 ||
		    strncmp(path, "failed/", 7) == 0 ? -EACCES : -ENOENT;
	if (!temp_name_ok(path) || strcmp(path, "sent") == 0 ||
	    strcmp(path, "failed") == 0)
		return -EINVAL;
	if (hsmfs_ctx->opt.read_only)
		return -EROFS;
	if (temp_name(path))
		temp_area_sweep(&mail.temps);
	if ((w = calloc(1, sizeof(*w))) == NULL || (h = calloc(1, sizeof(*h))) == NULL) {
		free(w);
		return -ENOMEM;
	}
	snprintf(w->name, sizeof(w->name), "%s", path);
	w->dirty = 1;
	pthread_mutex_lock(&mail.lock);
	if (w_find_locked(path) || mailq_find(mail.q, path, NULL)) {
		pthread_mutex_unlock(&mail.lock);
		free(w);
		free(h);
		return -EEXIST;
	}
	w->next = mail.writers;
	mail.writers = w;
	pthread_mutex_unlock(&mail.lock);
	h->kind = FH_WRITER;
	h->w = w;
	fi->fh = (uint64_t)(uintptr_t)h;
	fi->direct_io = 1;
	return 0;
}


static int
mail_read(const char *path, char *buf, size_t size, off_t off,
    struct fuse_file_info *fi)
{
	struct mfh *h = (struct mfh *)(uintptr_t)fi->fh;
	ssize_t n;
	if (h == NULL || h->kind != FH_FILE)
		return -EBADF;
	if (off < 0 || (size_t)off >= h->len)
		return 0;
	if (size > h->len - (size_t)off)
		size = h->len - (size_t)off;
	n = mailq_reader_pread(h->rd, buf, size, (size_t)off);
	return n < 0 ? -hsmfs_err_errno((int)n) : (int)n;
}

static int
w_reserve(struct writer *w, size_t need)
{
	char *nb;
	size_t cap;
	if (need > SMIME_MAX_MSG)
		return -EFBIG;
	if (need <= w->cap)
		return 0;
	cap = w->cap ? w->cap : 4096;
	while (cap < need)
		cap *= 2;
	if ((nb = realloc(w->buf, cap)) == NULL)
		return -ENOMEM;
	w->buf = nb;
	w->cap = cap;
	return 0;
}

static int
mail_write(const char *path, const char *buf, size_t size, off_t off,
    struct fuse_file_info *fi)
{
	struct mfh *h = (struct mfh *)(uintptr_t)fi->fh;
	struct writer *w;
	int r;
	if (h == NULL || h->kind != FH_WRITER)
		return -EBADF;
	w = h->w;
	if (w->committed)
		return -EBADF;      /* already queued at a previous close */
	if (off < 0)
		return -EINVAL;
	if ((r = w_reserve(w, (size_t)off + size)) != 0)
		return r;
	if ((size_t)off > w->len)
		memset(w->buf + w->len, 0, (size_t)off - w->len);
	memcpy(w->buf + off, buf, size);
	if ((size_t)off + size > w->len)
		w->len = (size_t)off + size;
	w->dirty = 1;
	return (int)size;
}

static int
mail_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	struct mfh *h = fi ? (struct mfh *)(uintptr_t)fi->fh : NULL;
	struct writer *w = NULL;
	int r;
	if (h && h->kind == FH_WRITER) {
		w = h->w;
	} else {
		pthread_mutex_lock(&mail.lock);
		w = strchr(path, '/') ? NULL : w_find_locked(path);
		pthread_mutex_unlock(&mail.lock);
	}
	if (w == NULL)
		return -EACCES;
	if (w->committed)
		return -EBADF;
	if (size < 0)
		return -EINVAL;
	if ((r = w_reserve(w, (size_t)size)) != 0)
		return r;
	if ((size_t)size > w->len)
		memset(w->buf + w->len, 0, (size_t)size - w->len);
	w->len = (size_t)size;
	w->dirty = 1;
	return 0;
}

static int
mail_flush(const char *path, struct fuse_file_info *fi)
{
	struct mfh *h = (struct mfh *)(uintptr_t)fi->fh;
	struct writer *w;
	int r;
	if (h == NULL || h->kind != FH_WRITER)
		return 0;
	w = h->w;
	if (!w->dirty || w->committed)
		return w->result;
	if (w->len == 0) {
		/* Created and closed empty (touch, createTempFile, the close
		 * of a shell redirection's first descriptor): nothing to
		 * queue, and writes may follow on another descriptor. A
		 * temporary stays as an empty file, which rename() refuses to
		 * queue; a valid name ends with the writer. */
		if (!temp_name(w->name))
			return 0;
		if ((r = mailq_stage(mail.q, w->name, NULL, NULL, NULL)) == 0) {
			pthread_mutex_lock(&mail.lock);
			w->staged = 1;
			pthread_mutex_unlock(&mail.lock);
		}
		return r == 0 ? 0 : -hsmfs_err_errno(r);
	}
	r = mail_commit(w);
	if (r == 0) {
		pthread_mutex_lock(&mail.lock);
		w->committed = 1;
		w->staged = temp_name(w->name);
		pthread_mutex_unlock(&mail.lock);
		w->dirty = 0;
		w->result = 0;
		return 0;
	}
	fs_log_fail("mail", w->name, r == HSMFS_ERR_INVALID ? NULL : mail.key_name,
	    r == HSMFS_ERR_INVALID ? "message refused, nothing queued" :
	    "cannot queue the message", r);
	w->result = -hsmfs_err_errno(r);
	if (r == HSMFS_ERR_PERM)
		w->result = -EEXIST;
	return w->result;
}

static int
mail_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	return 0;   /* a queued message is already durable; see flush */
}

static int
mail_release(const char *path, struct fuse_file_info *fi)
{
	struct mfh *h = (struct mfh *)(uintptr_t)fi->fh;
	if (h == NULL)
		return 0;
	if (h->kind == FH_WRITER) {
		struct writer *w = h->w, **pp;
		pthread_mutex_lock(&mail.lock);
		for (pp = &mail.writers; *pp; pp = &(*pp)->next) {
			if (*pp == w) {
				*pp = w->next;
				break;
			}
		}
		pthread_mutex_unlock(&mail.lock);
		free(w->buf);
		free(w);
	} else {
		mailq_reader_close(h->rd);
	}
	free(h);
	return 0;
}


static int
mail_unlink(const char *path)
{
	char name[256];
	enum view v;
	int r = 0;

	pthread_mutex_lock(&mail.lock);
	v = classify_locked(path, name, sizeof(name));
	switch (v) {
	case V_SENT: case V_FAILED: case V_STAGED:
		/* a failed message's reason goes with it */
		r = mailq_remove(mail.q, v == V_SENT ? MAILQ_SENT : v == V_FAILED ?
		    MAILQ_FAILED : MAILQ_STAGED, name);
		r = r == 0 ? 0 : -hsmfs_err_errno(r);
		break;
	case V_FAILED_ERR:
		r = -EPERM;     /* remove the message, its reason goes with it */
		break;
	case V_QUEUED: case V_WRITER:
		r = -EBUSY;     /* queued mail is read-only until sent or failed */
		break;
	case V_NONE:
		r = -ENOENT;
		break;
	default:
		r = -EPERM;
		break;
	}
	pthread_mutex_unlock(&mail.lock);
	return r;
}

/* rename(.TMP, NAME): queue the entry its close checked and signed, once.
 * A queued name is not replaced (queued mail is read-only). */
static int
publish_locked(const char *tmp, const char *to, enum view tv)
{
	struct mailq_hdr h;
	int r;

	if (strchr(to, '/') != NULL || !util_name_valid(to))
		return temp_name(to) ? -EINVAL : -EPERM;
	if (tv != V_NONE)
		return -EEXIST;
	r = mailq_publish(mail.q, tmp, to, MAIL_FIRST_DELAY, &h);
	if (r == HSMFS_ERR_INVALID) {
		log_err("mail/%s: not renamed onto %s: empty message, nothing "
		    "queued", tmp, to);
		return -EINVAL;
	}
	if (r != 0)
		return r == HSMFS_ERR_PERM ? -EEXIST : -hsmfs_err_errno(r);
	mail.wakes++;
	pthread_cond_signal(&mail.cond);
	log_debug("mail/%s: queued from %s, Message-ID %s", to, tmp, h.msgid);
	return 0;
}

/* mv failed/NAME NAME: queue it again (same signed bytes and Message-ID),
 * with a fresh schedule and max-age clock. */
static int
mail_rename(const char *from, const char *to, unsigned int flags)
{
	char name[256], dummy[256];
	enum view v, tv;
	int r = 0;

	if (flags & RENAME_EXCHANGE)
		return -EINVAL;
	pthread_mutex_lock(&mail.lock);
	v = classify_locked(from, name, sizeof(name));
	tv = classify_locked(to, dummy, sizeof(dummy));
	if (v == V_STAGED) {
		r = publish_locked(name, to, tv);
		goto out;
	}
	if (v != V_FAILED || strcmp(name, to) != 0) {
		r = v == V_NONE ? -ENOENT : -EPERM;
		goto out;
	}
	if (tv != V_NONE) {
		r = -EEXIST;
		goto out;
	}
	if ((r = mailq_requeue(mail.q, name)) != 0) {
		r = r == HSMFS_ERR_PERM ? -EEXIST : -hsmfs_err_errno(r);
		goto out;
	}
	log_info("mail/%s: queued again from failed/", name);
	mail.wakes++;
	pthread_cond_signal(&mail.cond);
out:
	pthread_mutex_unlock(&mail.lock);
	return r;
}

/* Modes are the folder's: a change is accepted and ignored (install -m,
 * rsync, mv set them after close; see MAIL_FIRST_DELAY). */
static int
mail_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	char name[256];
	enum view v;
	int r = -ENOENT;
	pthread_mutex_lock(&mail.lock);
	v = classify_locked(path, name, sizeof(name));
	if (v == V_ROOT || v == V_SENTDIR || v == V_FAILDIR)
		r = -EPERM;
	else if (v != V_NONE)
		r = 0;
	pthread_mutex_unlock(&mail.lock);
	return r;
}

/* user.hsmfs.mail on a queued message: its schedule. */
static int
mail_getxattr(const char *path, const char *xname, char *value, size_t size)
{
	char name[256], buf[1024], tq[32], tn[32];
	struct mailq_item it;
	struct mailq_sched st;
	int n;

	if (strcmp(xname, MAIL_XATTR) != 0)
		return -ENODATA;
	pthread_mutex_lock(&mail.lock);
	if (classify_locked(path, name, sizeof(name)) != V_QUEUED ||
	    !mailq_find(mail.q, name, &it)) {
		pthread_mutex_unlock(&mail.lock);
		return -ENODATA;
	}
	st = it.st;
	n = it.leased;
	pthread_mutex_unlock(&mail.lock);
	util_iso_utc(st.queued, tq, sizeof(tq));
	util_iso_utc(st.next, tn, sizeof(tn));
	n = snprintf(buf, sizeof(buf), "state=%s queued=%s attempts=%u next=%s "
	    "last=%s", n ? "sending" : "queued", tq, st.attempts,
	    mail.relay.url ? tn : "waiting-for-relay", st.last[0] ? st.last : "-");
	return fs_xattr_reply(buf, (size_t)n, value, size);
}

static int
mail_listxattr(const char *path, char *list, size_t size)
{
	char name[256];
	enum view v;
	pthread_mutex_lock(&mail.lock);
	v = classify_locked(path, name, sizeof(name));
	pthread_mutex_unlock(&mail.lock);
	if (v != V_QUEUED)
		return 0;
	return fs_xattr_reply(MAIL_XATTR, sizeof(MAIL_XATTR), list, size);
}

const struct folder_ops mail_folder = {
	.name = "mail",
	.start = mail_start,
	.stop = mail_stop,
	.reload_prepare = mail_reload_prepare,
	.reload_finish = mail_reload_finish,
	.status = mail_status,
	.metrics = mail_metrics,
	.getattr = mail_getattr,
	.readdir = mail_readdir,
	.open = mail_open,
	.create = mail_create,
	.read = mail_read,
	.write = mail_write,
	.flush = mail_flush,
	.fsync = mail_fsync,
	.release = mail_release,
	.truncate = mail_truncate,
	.unlink = mail_unlink,
	.rename = mail_rename,
	.chmod = mail_chmod,
	.getxattr = mail_getxattr,
	.listxattr = mail_listxattr,
};
