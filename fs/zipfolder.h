/* What /sign-out and /verify-in share: a flat folder of zips in
 * STORE/<folder>, writers' temporaries (dot names) in its temp area, the
 * names being written in a spool list, and, for /sign-out, a directory of
 * per-name records (a refused zip leaves only its record). */
#ifndef HSMFS_FS_ZIPFOLDER_H
#define HSMFS_FS_ZIPFOLDER_H

#include <fuse.h>
#include <sys/stat.h>

#include "fs/zipfh.h"
#include "fs/temp.h"

struct zipfolder {
	int dirfd;                  /* the stored zips */
	int recdir;                 /* names listed even without a zip, or -1 */
	struct temp_area *temps;
	struct spool_list *spools;
};

/* Where the file of a name lives: a temporary's in the temp area. */
int zipfolder_dir_of(const struct zipfolder *z, const char *name);
/* getattr of an item: stored, being written, or only a record. */
int zipfolder_getattr(const struct zipfolder *z, const char *path,
    struct stat *st);
/* readdir of the folder (path ""): stored names, then recorded ones. */
int zipfolder_readdir(const struct zipfolder *z, const char *path, void *buf,
    fuse_fill_dir_t fill);
/* -EINVAL unless from may be renamed onto to: a temporary is published
 * onto a valid name; an item never becomes a temporary (it would vanish);
 * no RENAME_EXCHANGE (the records follow one way only). */
int zipfolder_rename_ok(const char *from, const char *to, unsigned int flags);
/* create's check of the name: -EINVAL, or 0 (temp area swept for a
 * temporary). */
int zipfolder_create_ok(const struct zipfolder *z, const char *path);
/* listxattr: the one name xname when path exists in fd, else nothing. */
int zipfolder_listxattr(const char *path, int fd, const char *xname,
    char *list, size_t size);

#endif
