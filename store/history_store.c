/* Verification of the /history store, shared by the daemon and the
 * offline tool so that both judge a history by exactly the same rules. */
#include "store/history.h"
#include "common/err.h"
#include "store/dirio.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int
hstore_read_id(int dirfd, char **out)
{
	char *s = NULL;
	size_t n;
	int r;
	if (faccessat(dirfd, HSTORE_ID, F_OK, 0) < 0 && errno == ENOENT) {
		err_set("%s: missing", HSTORE_ID);
		return HSMFS_ERR_NOTFOUND;
	}
	if ((r = store_read_file(dirfd, HSTORE_ID, 64, &s, &n)) != 0)
		return r;
	if (n != 17 || s[16] != '\n' || strspn(s, "0123456789abcdef") != 16) {
		free(s);
		err_set("%s: malformed (16 hex digits expected)", HSTORE_ID);
		return HSMFS_ERR_INVALID;
	}
	s[16] = '\0';
	*out = s;
	return 0;
}

int
hstore_origin_prefix(const char *store_id, char *out, size_t outlen)
{
	int n = snprintf(out, outlen, "hsmfs/%s/history/", store_id);
	return n > 0 && (size_t)n < outlen ? 0 : HSMFS_ERR_INVALID;
}

int
hstore_pg_origin_prefix(const char *cluster_origin, char *out, size_t len)
{
	int n = snprintf(out, len, "%s/history/", cluster_origin);
	if (n <= 0 || (size_t)n >= len) {
		err_set("cluster origin too long");
		return HSMFS_ERR_INVALID;
	}
	return 0;
}

int
hstore_read_notes(int fd, const char *prefix, hstore_note_cb cb, void *arg,
    off_t *good_len)
{
	struct stat st;
	char *buf = NULL;
	size_t len, pos = 0, plen = strlen(prefix);
	int r;

	*good_len = 0;
	if (fstat(fd, &st) < 0) {
		err_set("checkpoints: %s", strerror(errno));
		return HSMFS_ERR_IO;
	}
	len = (size_t)st.st_size;
	if ((buf = malloc(len + 1)) == NULL)
		return HSMFS_ERR_NOMEM;
	for (size_t got = 0; got < len;) {
		ssize_t n = pread(fd, buf + got, len - got, (off_t)got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			err_set("checkpoints: read: %s", n < 0 ? strerror(errno) :
			    "file shrank");
			r = HSMFS_ERR_IO;
			goto out;
		}
		got += (size_t)n;
	}
	while (pos < len) {
		struct tlog_checkpoint cp;
		size_t used;
		memset(&cp, 0, sizeof(cp));
		r = tlog_checkpoint_parse(buf + pos, len - pos, &cp, &used);
		if (r == HSMFS_ERR_NOTFOUND)
			break;                   /* torn tail */
		if (r != 0) {
			err_prefix("at byte %zu: ", pos);
			goto out;
		}
		if (strncmp(cp.origin, prefix, plen) == 0 && cp.origin[plen] != '\0' &&
		    cb != NULL)
			r = cb(cp.origin + plen, &cp, arg);
		tlog_checkpoint_clear(&cp);
		if (r != 0)
			goto out;
		pos += used;
	}
	*good_len = (off_t)pos;
	r = 0;
out:
	free(buf);
	return r;
}

struct check_walk {
	struct hstore_check *c;
	struct tlog_tree tree;
	uint64_t limit;
	int mismatch;
};

static int
check_frame(const struct tlog_frame *f, void *arg)
{
	struct check_walk *w = arg;
	struct hstore_check *c = w->c;
	uint8_t root[TLOG_HASH_LEN];
	int r;

	if (w->tree.size >= w->limit) {
		/* Unsigned frames are counted, not fed to the caller. */
		c->good++;
		return 0;
	}
	tlog_tree_append(&w->tree, f->leaf_hash);
	c->good++;
	c->signed_end = f->end;
	for (size_t i = 0; i < c->nknown; i++) {
		if (c->known[i].size != w->tree.size)
			continue;
		tlog_tree_root(&w->tree, root);
		if (memcmp(root, c->known[i].root, TLOG_HASH_LEN) != 0) {
			snprintf(c->reason, sizeof(c->reason), "records 0..%" PRIu64
			    " do not match the %s checkpoint of that size (forked or "
			    "rewritten history)", w->tree.size - 1, c->known[i].what);
			w->mismatch = 1;
			return 1;
		}
	}
	if (c->cb && (r = c->cb(f, c->arg)) != 0)
		return r;
	return 0;
}

int
hstore_check_object(int fd, struct hstore_check *c)
{
	struct check_walk w;
	uint8_t root[TLOG_HASH_LEN];
	uint64_t want = c->cp ? c->cp->size : 0;
	int r;

	memset(&w, 0, sizeof(w));
	w.c = c;
	w.limit = want;
	tlog_tree_init(&w.tree);
	if (c->from != NULL)
		w.tree = *c->from;
	c->good = c->from ? c->from->size : 0;
	c->signed_end = c->from ? c->from_off : 0;
	c->torn = NULL;
	c->which_key = -1;
	c->reason[0] = '\0';

	if (c->cp != NULL) {
		if (tlog_checkpoint_verify(c->cp, c->keys, c->nkeys,
		    &c->which_key) != 0) {
			snprintf(c->reason, sizeof(c->reason), "%s", err_detail());
			goto bad;
		}
	}
	for (size_t i = 0; i < c->nknown; i++) {
		if (c->known[i].size > want) {
			snprintf(c->reason, sizeof(c->reason), "rolled back: the %s "
			    "checkpoint has %" PRIu64 " records, the signed history "
			    "only %" PRIu64, c->known[i].what, c->known[i].size, want);
			goto bad;
		}
	}
	if (c->from != NULL && want < c->from->size) {
		snprintf(c->reason, sizeof(c->reason), "rolled back: the signed "
		    "history has %" PRIu64 " records, %" PRIu64 " were verified "
		    "before", want, c->from->size);
		goto bad;
	}
	r = tlog_scan(fd, c->from ? c->from_off : 0, c->from ? c->from->size : 0,
	    check_frame, &w, &c->bad_off, &c->torn);
	if (w.mismatch)
		goto bad;
	if (r != 0)
		return r;
	if (w.tree.size < want) {
		snprintf(c->reason, sizeof(c->reason), "history has %" PRIu64
		    " intact records, its signed checkpoint %" PRIu64 "%s%s%s",
		    w.tree.size, want, c->torn ? " (record " : "",
		    c->torn ? c->torn : "", c->torn ? ")" : "");
		goto bad;
	}
	if (c->cp != NULL) {
		tlog_tree_root(&w.tree, root);
		if (memcmp(root, c->cp->root, TLOG_HASH_LEN) != 0) {
			snprintf(c->reason, sizeof(c->reason), "records do not hash "
			    "to the signed root of size %" PRIu64, want);
			goto bad;
		}
	}
	return 0;
bad:
	err_set("%s", c->reason);
	return HSMFS_ERR_BADMSG;
}
