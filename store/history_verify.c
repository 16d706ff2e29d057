/* hstore_verify_object: the verification policy of one history object
 * (store/history.h), over the directory backend. The daemon judges
 * frames with the same hstore_check_object; this adds what an offline
 * verifier gathers first (index, anchor, expected checkpoint). */
#include "store/history.h"
#include "store/history_pg.h"
#include "common/err.h"
#include "common/util.h"

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct vstate {
	struct hstore_verify *v;
	struct hstore_check c;
	struct tlog_checkpoint newest;      /* from the store index */
	int have_newest;
	uint64_t anchor_size;
	uint8_t anchor_root[TLOG_HASH_LEN];
	int in_anchor;
	char prefix[TLOG_ORIGIN_MAX];
	int dirfd;
	int objfd;                          /* shared store: fetched frames */
};

static int
newest_cb(const char *object, const struct tlog_checkpoint *cp, void *arg)
{
	struct vstate *s = arg;
	size_t used;
	if (strcmp(object, s->v->object) != 0)
		return 0;
	if (s->have_newest && cp->size < s->newest.size) {
		err_set("the checkpoint index goes backwards for %s", object);
		return HSMFS_ERR_BADMSG;
	}
	tlog_checkpoint_clear(&s->newest);
	s->have_newest = 0;
	if (tlog_checkpoint_parse(cp->text, cp->text_len, &s->newest, &used) != 0)
		return HSMFS_ERR_INVALID;
	s->have_newest = 1;
	return 0;
}

static int
anchor_cb(const char *object, const struct tlog_checkpoint *cp, void *arg)
{
	struct vstate *s = arg;
	if (strcmp(object, s->v->object) != 0 || cp->size < s->anchor_size)
		return 0;
	s->anchor_size = cp->size;
	memcpy(s->anchor_root, cp->root, TLOG_HASH_LEN);
	s->in_anchor = 1;
	return 0;
}

static int
count_cb(const struct tlog_frame *f, void *arg)
{
	return 0;
}

static int
invalid(struct hstore_verify *v, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(v->reason, sizeof(v->reason), fmt, ap);
	va_end(ap);
	return HSMFS_ERR_BADMSG;
}

static int
sys_fail(const char *what, int e)
{
	err_set("%s: %s", what, strerror(e));
	return hsmfs_errno_err(e);
}

/* Store id and the newest checkpoint of the object from the index. */
static int
read_index(struct vstate *s)
{
	char *sid = NULL;
	off_t good;
	int fd, r;

	if ((r = hstore_read_id(s->dirfd, &sid)) != 0) {
		err_prefix(HSTORE_DIR "/" HSTORE_ID ": ");
		return r;
	}
	hstore_origin_prefix(sid, s->prefix, sizeof(s->prefix));
	free(sid);
	if ((fd = openat(s->dirfd, HSTORE_CHECKPOINTS, O_RDONLY | O_CLOEXEC)) < 0)
		return sys_fail(HSTORE_DIR "/" HSTORE_CHECKPOINTS, errno);
	r = hstore_read_notes(fd, s->prefix, newest_cb, s, &good);
	close(fd);
	if (r != 0)
		return invalid(s->v, "checkpoint index: %s", err_detail());
	return 0;
}

/* The anchor's newest checkpoint of the object, a known size and root. */
static int
read_anchor(struct vstate *s)
{
	off_t good;
	int fd, r;

	if (s->v->anchor == NULL)
		return 0;
	if ((fd = open(s->v->anchor, O_RDONLY | O_CLOEXEC)) < 0)
		return sys_fail(s->v->anchor, errno);
	r = hstore_read_notes(fd, s->prefix, anchor_cb, s, &good);
	close(fd);
	if (r != 0)
		return invalid(s->v, "anchor: %s", err_detail());
	if (s->in_anchor) {
		s->c.known[s->c.nknown].size = s->anchor_size;
		memcpy(s->c.known[s->c.nknown].root, s->anchor_root, TLOG_HASH_LEN);
		s->c.known[s->c.nknown++].what = "anchor";
	}
	return 0;
}

/* An auditor's expected checkpoint: signed by an accepted key, for this
 * store's object; a known size and root. */
static int
read_expect(struct vstate *s)
{
	struct hstore_verify *v = s->v;
	struct tlog_checkpoint exp;
	char *text = NULL;
	size_t len, used, pl = strlen(s->prefix);
	int r;

	if (v->expect == NULL)
		return 0;
	if ((r = util_read_file(v->expect, 1 << 16, &text, &len)) != 0)
		return r;
	memset(&exp, 0, sizeof(exp));
	if (tlog_checkpoint_parse(text, len, &exp, &used) != 0)
		r = invalid(v, "expected checkpoint %s: %s", v->expect, err_detail());
	else if (strncmp(exp.origin, s->prefix, pl) != 0 ||
	    strcmp(exp.origin + pl, v->object) != 0)
		r = invalid(v, "expected checkpoint is for %s, not this store's "
		    "object", exp.origin);
	else if (tlog_checkpoint_verify(&exp, v->keys, v->nkeys, NULL) != 0)
		r = invalid(v, "expected checkpoint: %s", err_detail());
	if (r == 0) {
		s->c.known[s->c.nknown].size = exp.size;
		memcpy(s->c.known[s->c.nknown].root, exp.root, TLOG_HASH_LEN);
		s->c.known[s->c.nknown++].what = "expected";
	}
	tlog_checkpoint_clear(&exp);
	free(text);
	return r;
}

/* The object's frames against its newest checkpoint and the known ones. */
static int
check_frames(struct vstate *s)
{
	struct hstore_verify *v = s->v;
	char path[300];
	int fd, r;

	snprintf(path, sizeof(path), HSTORE_OBJECTS "/%s" HSTORE_SUFFIX, v->object);
	if (s->objfd >= 0)
		fd = dup(s->objfd);
	else if (s->dirfd >= 0)
		fd = openat(s->dirfd, path, O_RDONLY | O_CLOEXEC);
	else
		fd = -1, errno = ENOENT;
	if (fd < 0) {
		if (s->have_newest || s->c.nknown > 0)
			return invalid(v, "history file is missing");
		err_set("%s: no such object", v->object);
		return HSMFS_ERR_NOTFOUND;
	}
	s->c.cp = s->have_newest ? &s->newest : NULL;
	s->c.keys = v->keys;
	s->c.nkeys = v->nkeys;
	s->c.cb = count_cb;
	s->c.arg = s;
	r = hstore_check_object(fd, &s->c);
	close(fd);
	if (r == HSMFS_ERR_BADMSG)
		return invalid(v, "%s", s->c.reason);
	if (r != 0) {
		err_prefix("%s: ", v->object);
		return r;
	}
	if (!s->have_newest)
		return invalid(v, "no signed checkpoint for this object");
	/* Shared store: the rows were read before the newest checkpoint
	 * (hpg_verify_fetch), which covers every committed row. */
	if (s->objfd >= 0 && s->c.torn)
		return invalid(v, "a row after record %" PRIu64 " in the database "
		    "is not a record of the object (%s)", s->c.good, s->c.torn);
	if (s->objfd >= 0 && s->c.good > s->newest.size)
		return invalid(v, "%" PRIu64 " row(s) in the database after its "
		    "newest checkpoint (size %" PRIu64 "): written outside a commit",
		    s->c.good - s->newest.size, s->newest.size);
	v->records = s->newest.size;
	memcpy(v->root, s->newest.root, TLOG_HASH_LEN);
	v->which_key = s->c.which_key;
	v->unsigned_after = s->c.good > s->newest.size ?
	    s->c.good - s->newest.size : 0;
	v->torn = s->c.torn;
	return 0;
}

/* The same policy over the database: the object's row is its index
 * entry, its rows its frames (fetched into a memory file). */
static int
verify_shared(const struct store_conf *conf, struct vstate *s)
{
	char *newest = NULL;
	size_t nlen = 0, used;
	int r;

	s->dirfd = -1;
	r = hpg_verify_fetch(conf, s->v->object, s->prefix, sizeof(s->prefix),
	    &newest, &nlen, &s->objfd);
	if (r == HSMFS_ERR_NOTFOUND) {
		err_set("%s: no such object", s->v->object);
		return r;
	}
	if (r == HSMFS_ERR_BADMSG) {
		r = invalid(s->v, "%s", err_detail());
	} else if (r == 0 && newest != NULL) {
		if (tlog_checkpoint_parse(newest, nlen, &s->newest, &used) != 0)
			r = invalid(s->v, "newest checkpoint in the database: %s",
			    err_detail());
		else if (strncmp(s->newest.origin, s->prefix, strlen(s->prefix)) ||
		    strcmp(s->newest.origin + strlen(s->prefix), s->v->object))
			r = invalid(s->v, "newest checkpoint in the database names %s",
			    s->newest.origin);
		else
			s->have_newest = 1;
	}
	free(newest);
	if (r == 0 && (r = read_anchor(s)) == 0 && (r = read_expect(s)) == 0)
		r = check_frames(s);
	if (s->objfd >= 0)
		close(s->objfd);
	tlog_checkpoint_clear(&s->newest);
	return r;
}

int
hstore_verify_object(const struct store_conf *conf, struct hstore_verify *v)
{
	struct vstate s;
	int r;

	v->reason[0] = '\0';
	v->which_key = -1;
	v->torn = NULL;
	v->unsigned_after = 0;
	if (!util_name_valid(v->object)) {
		err_set("%s: not a valid object name", v->object);
		return HSMFS_ERR_INVALID;
	}
	memset(&s, 0, sizeof(s));
	s.v = v;
	s.objfd = -1;
	if (conf->shared != NULL)
		return verify_shared(conf, &s);
	s.dirfd = openat(conf->dirfd, HSTORE_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s.dirfd < 0)
		return sys_fail(HSTORE_DIR, errno);
	if ((r = read_index(&s)) == 0 && (r = read_anchor(&s)) == 0 &&
	    (r = read_expect(&s)) == 0)
		r = check_frames(&s);
	close(s.dirfd);
	tlog_checkpoint_clear(&s.newest);
	return r;
}
