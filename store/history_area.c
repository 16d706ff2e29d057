/* The history area of the store, directory backend (store/history.h):
 * STORE/history with its store id, objects directory, checkpoint index,
 * and the anchor file. Moved here from fs/history_start.c and
 * fs/history_commit.c; the daemon holds one struct hstore. */
#include "store/history.h"
#include "store/history_dir.h"
#include "store/history_pg.h"
#include "store/dirio.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/rand.h>


static int
sys_fail(const char *what, int e)
{
	err_set("%s: %s", what, strerror(e));
	return hsmfs_errno_err(e);
}

/* STORE/history/store-id, created (random) for a new store. */
static int
read_store_id(struct hstore *hs)
{
	char *s = NULL;
	int r = hstore_read_id(hs->dirfd, &s);
	if (r == HSMFS_ERR_NOTFOUND) {
		/* A new store: a random id keeps origins of different stores
		 * apart (one anchor file may serve several). */
		uint8_t rnd[8];
		char buf[18];
		if (faccessat(hs->dirfd, HSTORE_CHECKPOINTS, F_OK, 0) == 0) {
			/* A fresh id would orphan every checkpoint, and recovery
			 * would then cut every object: refuse instead. */
			err_set("history/%s is missing but the store has "
			    "checkpoints: restore it from a backup", HSTORE_ID);
			return HSMFS_ERR_BADMSG;
		}
		if (RAND_bytes(rnd, sizeof(rnd)) != 1)
			return HSMFS_ERR_CRYPTO;
		util_hex(rnd, sizeof(rnd), buf);
		buf[16] = '\n';
		buf[17] = '\0';
		if ((r = store_write_atomic(hs->dirfd, HSTORE_ID, buf, 17)) != 0)
			return r;
		memcpy(hs->store_id, buf, 16);
		hs->store_id[16] = '\0';
		return 0;
	}
	if (r != 0) {
		err_prefix("history/");
		return r;
	}
	memcpy(hs->store_id, s, 17);
	free(s);
	return 0;
}

/* Does the objects directory hold any entry? */
static int
any_entry(int dirfd, const char *name, void *arg)
{
	(void)dirfd;
	(void)arg;
	return name[0] != '.';
}

static int
objects_exist(struct hstore *hs)
{
	return util_foreach_dir(hs->objfd, any_entry, NULL) == 1;
}

/* The checkpoint index, created for a new store. */
static int
open_index(struct hstore *hs)
{
	hs->cpfd = openat(hs->dirfd, HSTORE_CHECKPOINTS, O_RDWR | O_CLOEXEC);
	if (hs->cpfd < 0 && errno == ENOENT) {
		/* A store with objects but no index has lost its checkpoints:
		 * never treat that as "nothing was signed". */
		if ((hs->cpfd = openat(hs->dirfd, HSTORE_CHECKPOINTS,
		    O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) >= 0)
			store_fsync_dir(hs->dirfd);
		hs->index_lost = objects_exist(hs);
	}
	if (hs->cpfd < 0)
		return sys_fail("history/" HSTORE_CHECKPOINTS, errno);
	return 0;
}

/* fsync the directory holding path (an absolute path). */
static void
fsync_parent(const char *path)
{
	char *dir = strdup(path), *sl;
	int dfd;

	if (dir && (sl = strrchr(dir, '/')) != NULL) {
		*sl = '\0';
		if ((dfd = open(*dir ? dir : "/", O_RDONLY | O_DIRECTORY |
		    O_CLOEXEC)) >= 0) {
			fsync(dfd);
			close(dfd);
		}
	}
	free(dir);
}

static int
open_anchor(struct hstore *hs, const char *path)
{
	if (path == NULL)
		return 0;
	if (path[0] != '/') {
		/* The daemon runs from "/" after daemonizing. */
		err_set("history_anchor=%s: give an absolute path", path);
		return HSMFS_ERR_CONFIG;
	}
	if ((hs->anchor = strdup(path)) == NULL)
		return HSMFS_ERR_NOMEM;
	hs->anchorfd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (hs->anchorfd < 0) {
		int e = errno;
		err_set("history_anchor %s: %s", path, strerror(e));
		return hsmfs_errno_err(e);
	}
	/* The anchor's own directory entry must survive a crash too. */
	fsync_parent(path);
	return 0;
}

int
hstore_open(const struct store_conf *conf, const char *anchor,
    struct hstore **out)
{
	struct hstore *hs;
	int r;

	*out = NULL;
	if ((hs = calloc(1, sizeof(*hs))) == NULL)
		return HSMFS_ERR_NOMEM;
	hs->dirfd = hs->objfd = hs->cpfd = hs->anchorfd = -1;
	if ((r = store_dir(conf->dirfd, HSTORE_DIR)) < 0)
		goto fail;
	hs->dirfd = r;
	if (conf->shared != NULL) {
		/* Records, checkpoints and the origin are the cluster's; STORE
		 * keeps the node's spools and caches (and the anchor, if any). */
		store_cleanup_tmp(hs->dirfd);
		if ((r = open_anchor(hs, anchor)) != 0 ||
		    (r = hpg_open(conf, hs->dirfd, hs->prefix, sizeof(hs->prefix),
		    &hs->pg)) != 0)
			goto fail;
		*out = hs;
		return 0;
	}
	if ((r = store_dir(hs->dirfd, HSTORE_OBJECTS)) < 0)
		goto fail;
	hs->objfd = r;
	/* New directories must survive a power loss before the first record
	 * is acknowledged in them (once per open, cheap). */
	store_fsync_dir(hs->dirfd);
	store_fsync_dir(conf->dirfd);
	store_cleanup_tmp(hs->dirfd);
	if ((r = read_store_id(hs)) != 0 || (r = open_index(hs)) != 0 ||
	    (r = open_anchor(hs, anchor)) != 0)
		goto fail;
	hstore_origin_prefix(hs->store_id, hs->prefix, sizeof(hs->prefix));
	*out = hs;
	return 0;
fail:
	hstore_close(hs);
	return r;
}

void
hstore_close(struct hstore *hs)
{
	if (hs == NULL)
		return;
	if (hs->dirfd >= 0)
		close(hs->dirfd);
	if (hs->objfd >= 0)
		close(hs->objfd);
	if (hs->cpfd >= 0)
		close(hs->cpfd);
	if (hs->anchorfd >= 0)
		close(hs->anchorfd);
	free(hs->anchor);
	hpg_close(hs->pg);
	free(hs);
}

int
hstore_is_shared(const struct hstore *hs)
{
	return hs->pg != NULL;
}

uint64_t
hstore_leaf_max(const struct hstore *hs)
{
	return hs->pg != NULL ? HSTORE_SHARED_LEAF_MAX : TLOG_LEAF_MAX;
}

const char *
hstore_prefix(const struct hstore *hs)
{
	return hs->prefix;
}

const char *
hstore_anchor(const struct hstore *hs)
{
	return hs->anchor;
}

int
hstore_index_lost(const struct hstore *hs)
{
	return hs->index_lost;
}

off_t
hstore_index_size(const struct hstore *hs)
{
	return hs->cp_len;
}

int
hstore_load_notes(struct hstore *hs, int anchor, hstore_note_cb cb, void *arg)
{
	const char *what = anchor ? "anchor" : "checkpoint index";
	int fd = anchor ? hs->anchorfd : hs->cpfd;
	struct stat st;
	off_t good;
	int r;

	if (!anchor && hs->pg != NULL)
		return hpg_load_notes(hs->pg, hs->prefix, cb, arg);
	if (fd < 0)
		return 0;
	if ((r = hstore_read_notes(fd, hs->prefix, cb, arg, &good)) != 0) {
		err_prefix("%s is unreadable: ", what);
		return HSMFS_ERR_BADMSG;
	}
	if (fstat(fd, &st) == 0 && st.st_size > good) {
		log_warn("history: %s: cutting a torn tail of %lld byte(s)", what,
		    (long long)(st.st_size - good));
		if (ftruncate(fd, good) < 0 || fdatasync(fd) < 0) {
			err_set("%s: cannot cut the torn tail: %s", what, strerror(errno));
			return HSMFS_ERR_IO;
		}
	}
	if (!anchor)
		hs->cp_len = good;
	return 0;
}

struct list_ctx {
	hstore_name_cb cb;
	void *arg;
};

static int
list_one(int dirfd, const char *ent, void *arg)
{
	struct list_ctx *l = arg;
	size_t n = strlen(ent), sl = strlen(HSTORE_SUFFIX);
	char name[256];
	(void)dirfd;
	if (n <= sl || n - sl >= sizeof(name) ||
	    strcmp(ent + n - sl, HSTORE_SUFFIX) != 0)
		return 0;
	memcpy(name, ent, n - sl);
	name[n - sl] = '\0';
	return util_name_valid(name) ? l->cb(name, l->arg) : 0;
}

int
hstore_list_dir(int objfd, hstore_name_cb cb, void *arg)
{
	struct list_ctx l = { cb, arg };
	return util_foreach_dir(objfd, list_one, &l);
}

int
hstore_list_objects(struct hstore *hs, hstore_name_cb cb, void *arg)
{
	if (hs->pg != NULL)
		return hpg_list_objects(hs->pg, cb, arg);
	return hstore_list_dir(hs->objfd, cb, arg);
}

int
hstore_object_stat(struct hstore *hs, const char *name, struct stat *st)
{
	char fn[300];
	if (hs->pg != NULL)
		return hpg_object_stat(hs->pg, name, st);
	snprintf(fn, sizeof(fn), "%s" HSTORE_SUFFIX, name);
	if (fstatat(hs->objfd, fn, st, 0) < 0)
		return sys_fail(fn, errno);
	return 0;
}

int
hstore_objects_sync(struct hstore *hs)
{
	if (hs->pg != NULL)
		return 0;
	return fsync(hs->objfd) < 0 ? sys_fail("history/objects", errno) : 0;
}

int
hstore_index_append(struct hstore *hs, const char *notes, size_t len)
{
	int r;

	if (len == 0)
		return 0;
	r = util_pwrite_all(hs->cpfd, notes, len, hs->cp_len);
	if (r == 0 && fdatasync(hs->cpfd) < 0)
		r = sys_fail("fdatasync checkpoints", errno);
	if (r != 0) {
		int keep = r;
		char why[300];
		snprintf(why, sizeof(why), "%s", err_detail());
		if (ftruncate(hs->cpfd, hs->cp_len) < 0)
			log_err("history: cannot cut the checkpoint index back: %s",
			    strerror(errno));
		err_set("%s", why);
		return keep;
	}
	hs->cp_len += (off_t)len;
	hstore_anchor_append(hs, notes, len);
	return 0;
}

void
hstore_anchor_append(struct hstore *hs, const char *notes, size_t len)
{
	/* The anchor is a second copy on another volume: if it fails the
	 * records are still durable and signed in the store, so they are
	 * acknowledged and the failure is logged. */
	if (hs->anchorfd >= 0 && (util_write_all(hs->anchorfd, notes, len) != 0 ||
	    fdatasync(hs->anchorfd) < 0))
		log_err("history: anchor %s: cannot append checkpoints: %s",
		    hs->anchor, err_detail());
}

int
hstore_index_rewrite(struct hstore *hs, const char *notes, size_t len)
{
	struct store_tmp tmp;
	int r, fd;

	if (hs->pg != NULL)
		return 0;   /* no index: the objects' rows are it */
	if ((r = store_tmp_create(hs->dirfd, &tmp)) != 0)
		return r;
	if ((r = util_write_all(tmp.fd, notes, len)) != 0) {
		store_tmp_abort(&tmp);
		return r;
	}
	if ((r = store_tmp_commit(&tmp, HSTORE_CHECKPOINTS)) != 0)
		return r;
	if ((fd = openat(hs->dirfd, HSTORE_CHECKPOINTS, O_RDWR | O_CLOEXEC)) < 0) {
		/* The new index is in place; without a handle on it no batch
		 * can be acknowledged, so say so loudly. */
		log_err("history: cannot reopen the compacted index: %s",
		    strerror(errno));
		return 0;
	}
	close(hs->cpfd);
	hs->cpfd = fd;
	log_info("history: checkpoint index compacted from %lld to %lld bytes",
	    (long long)hs->cp_len, (long long)len);
	hs->cp_len = (off_t)len;
	return 0;
}
