/* Temporaries of writers: the name rule and the temp areas' clean-up
 * (fs/temp.h). The folders own what a temporary holds. */
#include "fs/temp.h"
#include "fs/fs.h"
#include "store/dirio.h"
#include "common/log.h"
#include "common/util.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int
temp_name(const char *name)
{
	if (name == NULL || name[0] != '.' || strcmp(name, ".") == 0 ||
	    strcmp(name, "..") == 0)
		return 0;
	/* The rest is a valid name, or itself starts with a dot ("..x"). */
	return strlen(name) <= 255 &&
	    (util_name_valid(name + 1) ||
	    (name[1] == '.' && util_name_valid(name + 2)));
}

int
temp_name_ok(const char *name)
{
	return util_name_valid(name) || temp_name(name);
}

static long
max_age(void)
{
	long a = hsmfs_ctx ? hsmfs_ctx->opt.temp_max_age : 0;
	return a > 0 ? a : TEMP_MAX_AGE_DEFAULT;
}

/* Unlink the hidden regular files of dirfd modified before `before`
 * (0: all). Directories (.spool, .temp, ...) are left alone. With `tell`,
 * each name removed by age is logged: a dot file copied in on purpose
 * (cp -a or rsync -a of a folder holding .env) is only a temporary, and
 * this line is where its owner finds out. */
struct clean {
	time_t before;
	int tell, n;
};

static int
clean_one(int dirfd, const char *name, void *arg)
{
	struct clean *c = arg;
	struct stat st;
	if (!temp_name(name) ||
	    fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
	    !S_ISREG(st.st_mode) || (c->before && st.st_mtime >= c->before))
		return 0;
	if (unlinkat(dirfd, name, 0) == 0) {
		c->n++;
		if (c->tell && c->before)
			log_info("removed temporary %s: not renamed onto a "
			    "name within %ld s (names starting with a dot are "
			    "writers' temporaries)", name, max_age());
	}
	return 0;
}

static int
clean_dir(int dirfd, time_t before, int tell)
{
	struct clean c = { before, tell, 0 };
	(void)util_foreach_dir(dirfd, clean_one, &c);
	return c.n;
}

int
temp_area_open(struct temp_area *a, int folder_dirfd, int also0, int also1)
{
	int fd = store_dir(folder_dirfd, TEMP_DIR), n;
	if (fd < 0)
		return fd;
	a->dirfd = fd;
	a->also[0] = also0;
	a->also[1] = also1;
	a->last_sweep = time(NULL);
	/* Nobody can rename a temporary of the previous mount into place. */
	n = clean_dir(fd, 0, 0);
	for (int i = 0; i < 2; i++)
		if (a->also[i] >= 0)
			n += clean_dir(a->also[i], 0, 0);
	if (n > 0)
		log_info("removed %d leftover temporary file(s) of writers", n);
	return 0;
}

void
temp_area_close(struct temp_area *a)
{
	if (a->dirfd >= 0)
		close(a->dirfd);
	a->dirfd = -1;
}

void
temp_area_sweep(struct temp_area *a)
{
	time_t now = time(NULL);
	long age = max_age();
	int n;
	if (a->dirfd < 0)
		return;
	pthread_mutex_lock(&a->lock);
	if (now - a->last_sweep < (age < 60 ? age : 60)) {
		pthread_mutex_unlock(&a->lock);
		return;
	}
	a->last_sweep = now;
	pthread_mutex_unlock(&a->lock);
	n = clean_dir(a->dirfd, now - age, 1);
	for (int i = 0; i < 2; i++)
		if (a->also[i] >= 0)
			n += clean_dir(a->also[i], now - age, 0);
	if (n > 0)
		log_info("removed %d temporary file(s) of writers older than %ld s",
		    n, age);
}
