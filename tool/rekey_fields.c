/* hsmfs-tool rekey-fields -o config=FILE STORE: rewrap every field in
 * STORE/fields/ to the newest EncryptedFields version without changing a
 * plaintext. Safe while the store is mounted (each field is read,
 * rewrapped and replaced under the per-name lock the daemon also takes)
 * and resumable (each field is replaced atomically; fields already on the
 * newest version are skipped, so a rerun after a crash finishes the job). */
#include "tool/tool.h"
#include "tool/fieldtool.h"
#include "crypto/envelope.h"
#include "store/fields_dir.h"
#include "store/dirio.h"
#include "common/err.h"
#include "store/storelock.h"
#include "common/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <openssl/x509.h>

struct names {
	char **v;
	size_t n, cap;
};

static void
names_free(struct names *ns)
{
	for (size_t i = 0; i < ns->n; i++)
		free(ns->v[i]);
	free(ns->v);
	memset(ns, 0, sizeof(*ns));
}

static int
list_fields(int dirfd, struct names *ns)
{
	int fd = dup(dirfd);
	struct dirent *de;
	DIR *d;

	if (fd < 0 || (d = fdopendir(fd)) == NULL) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	rewinddir(d);
	while ((de = readdir(d)) != NULL) {
		if (!util_name_valid(de->d_name))
			continue;
		if (ns->n == ns->cap) {
			size_t cap = ns->cap ? ns->cap * 2 : 64;
			char **nv = realloc(ns->v, cap * sizeof(*nv));
			if (nv == NULL)
				break;
			ns->v = nv;
			ns->cap = cap;
		}
		if ((ns->v[ns->n] = strdup(de->d_name)) != NULL)
			ns->n++;
	}
	closedir(d);
	return 0;
}

/* Temp files of a replacement that a crash interrupted are invisible
 * and hold only envelopes; remove those old enough that no live
 * replacement (the daemon's or ours) can still own them. */
static void
cleanup_old_tmp(int dirfd)
{
	int fd = dup(dirfd);
	struct dirent *de;
	struct stat st;
	DIR *d;
	time_t now = time(NULL);

	if (fd < 0 || (d = fdopendir(fd)) == NULL) {
		if (fd >= 0)
			close(fd);
		return;
	}
	rewinddir(d);
	while ((de = readdir(d)) != NULL)
		if (strncmp(de->d_name, ".tmp.", 5) == 0 &&
		    fstatat(dirfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    now - st.st_mtime > 600)
			unlinkat(dirfd, de->d_name, 0);
	closedir(d);
}

enum outcome { DONE_CURRENT, DONE_REWRAPPED, DONE_GONE, DONE_FAILED };

/* One field, under its lock: read, skip if current, rewrap, replace. */
static enum outcome
rekey_one(int dirfd, struct fieldtool *t, const uint8_t *new_id,
    X509 *new_cert, const char *name)
{
	const struct engine_descriptor *d;
	struct envelope env;
	enum outcome o = DONE_FAILED;
	char *text = NULL, *nt = NULL;
	uint8_t *bin = NULL;
	size_t tl = 0, bl = 0, ntl = 0;
	hsm_key *k;
	int h, r;

	memset(&env, 0, sizeof(env));
	if ((h = fieldstore_lock(dirfd, name)) < 0) {
		fprintf(stderr, "hsmfs-tool rekey-fields: %s: %s\n", name, err_detail());
		return DONE_FAILED;
	}
	if ((r = fieldstore_read(dirfd, name, &text, &tl)) != 0) {
		if (r == HSMFS_ERR_NOTFOUND) {
			o = DONE_GONE;   /* removed or renamed meanwhile */
			goto out;
		}
		goto fail;
	}
	if ((r = envelope_parse_text(text, tl, &env)) != 0)
		goto fail;
	if (envelope_is_current(&env.h, t->newest, new_id)) {
		o = DONE_CURRENT;
		goto out;
	}
	if ((r = envelope_find_key(t->engine, t->keys, &env.h, &d, &k)) != 0 ||
	    (r = envelope_rewrap(&env, k, t->newest, new_cert, &bin, &bl)) != 0)
		goto fail;
	if ((nt = envelope_to_text(bin, bl, &ntl)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto fail;
	}
	if ((r = fieldstore_replace_locked(dirfd, name, nt, ntl)) != 0)
		goto fail;
	o = DONE_REWRAPPED;
	goto out;
fail:
	fprintf(stderr, "%shsmfs-tool rekey-fields: field %s: %s (%s)\n",
	    tool_progress_enabled() ? "\n" : "", name, err_detail(),
	    hsmfs_strerror(r));
out:
	fieldstore_unlock(h);
	envelope_clear(&env);
	free(text);
	free(bin);
	free(nt);
	return o;
}

int
cmd_rekey_fields(int argc, char **argv)
{
	struct fieldtool t;
	struct names ns = {0};
	const char *config;
	char *pos[1], path[4096];
	uint8_t new_id[ENVELOPE_KEY_ID_LEN];
	X509 *new_cert;
	unsigned long rewrapped = 0, current = 0, first_current = 0, failed = 0;
	int npos, rc, dirfd = -1, lockfd = -1, storefd = -1, slock = -1;
	int progress = tool_progress_enabled();
	char holder[4200];
	hsm_key *k;

	if ((rc = fieldtool_args("rekey-fields", argc, argv, &config, pos, 1,
	    &npos)) != TOOL_OK)
		return rc;
	if (npos != 1) {
		tool_usage(stderr, "rekey-fields");
		return TOOL_USAGE;
	}
	/* The store lock: held by a daemon, rewrap alongside it (per-name
	 * locks); free, hold it so no daemon starts on the store meanwhile;
	 * held by anything else, refuse. */
	if ((storefd = open(pos[0], O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
		rc = storelock_take(storefd, &slock, holder, sizeof(holder));
		close(storefd);
		if (rc == 0)
			storelock_set_owner(slock, "hsmfs-tool-rekey-fields", NULL);
		else if (rc == 1 && !strstr(holder, " hsmfs ")) {
			fprintf(stderr, "hsmfs-tool rekey-fields: store %s is in use by "
			    "PID %s; wait for it to finish\n", pos[0], holder);
			return TOOL_USAGE;
		} else if (rc < 0) {
			fprintf(stderr, "hsmfs-tool rekey-fields: store %s: cannot lock: "
			    "%s\n", pos[0], err_detail());
			return TOOL_USAGE;
		}
	}
	snprintf(path, sizeof(path), "%s/%s", pos[0], FIELDSTORE_DIR);
	if ((dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		int e = errno;
		fprintf(stderr, "hsmfs-tool rekey-fields: %s: %s\n", path,
		    e == ENOENT ? "no fields in this store" : strerror(e));
		if (slock >= 0)
			close(slock);
		return e == ENOENT ? TOOL_OK : TOOL_USAGE;
	}
	/* One rekey at a time (flock is independent of the per-name OFD
	 * locks on the same file, which the daemon uses). */
	if ((lockfd = openat(dirfd, FIELDSTORE_LOCK, O_RDWR | O_CREAT | O_CLOEXEC,
	    0600)) < 0 || flock(lockfd, LOCK_EX | LOCK_NB) < 0) {
		fprintf(stderr, "hsmfs-tool rekey-fields: %s: %s\n", path,
		    lockfd >= 0 && errno == EWOULDBLOCK ?
		    "another rekey-fields is running" : strerror(errno));
		if (lockfd >= 0)
			close(lockfd);
		if (slock >= 0)
			close(slock);
		close(dirfd);
		return TOOL_USAGE;
	}
	if ((rc = fieldtool_open("rekey-fields", config, &t)) != TOOL_OK)
		goto out_fd;
	if ((k = keyring_key(t.keys, t.newest)) == NULL) {
		fprintf(stderr, "hsmfs-tool rekey-fields: key %s is not open\n",
		    t.newest->key_name);
		rc = TOOL_USAGE;
		goto out;
	}
	new_cert = hsm_key_cert(k);
	if (envelope_key_id(new_cert, new_id) != 0) {
		fprintf(stderr, "hsmfs-tool rekey-fields: %s\n", err_detail());
		rc = TOOL_USAGE;
		goto out;
	}
	cleanup_old_tmp(dirfd);
	/* Passes until one rewraps nothing: a field renamed by the mount
	 * during a pass is picked up by the next one. */
	for (int pass = 0; pass < 4; pass++) {
		unsigned long pass_rewrapped = 0;
		names_free(&ns);
		if (list_fields(dirfd, &ns) != 0) {
			fprintf(stderr, "hsmfs-tool rekey-fields: %s: %s\n", path,
			    strerror(errno));
			rc = TOOL_USAGE;
			goto out;
		}
		current = failed = 0;
		for (size_t i = 0; i < ns.n; i++) {
			switch (rekey_one(dirfd, &t, new_id, new_cert, ns.v[i])) {
			case DONE_CURRENT: current++; break;
			case DONE_REWRAPPED: pass_rewrapped++; break;
			case DONE_GONE: break;
			case DONE_FAILED: failed++; break;
			}
			if (progress)
				fprintf(stderr, "\rrekey-fields: %zu/%zu", i + 1, ns.n);
		}
		if (progress && ns.n)
			fputc('\n', stderr);
		rewrapped += pass_rewrapped;
		if (pass == 0)
			first_current = current;
		/* A failed field would fail again: report it once. */
		if (pass_rewrapped == 0 || failed > 0)
			break;
	}
	printf("rekey-fields: %lu rewrapped to EncryptedFields version %d, "
	    "%lu already current, %lu failed\n", rewrapped, t.newest->version,
	    first_current, failed);
	rc = failed ? TOOL_FAIL : TOOL_OK;
out:
	names_free(&ns);
	fieldtool_close(&t);
out_fd:
	close(lockfd);
	if (slock >= 0)
		close(slock);
	close(dirfd);
	return rc;
}
