/* The fields area of the store: secret fields by name, each holding one
 * NX02 envelope line. Used by /fields (fs/fields.c) and hsmfs-tool
 * rekey-fields, which may run at the same time on the same store.
 *
 * Every call is complete and durable when it returns 0; no caller
 * assumes files, renames or fsync (the directory backend,
 * store/fields_dir.c, keeps STORE/fields/NAME; a shared backend keeps
 * rows). Calls return 0 or a negative HSMFS_ERR_* (or -errno where a
 * rename's POSIX outcome matters: -EEXIST), with err_set() detail.
 * Names are valid field names or writers' temporaries (".NAME"). */
#ifndef HSMFS_STORE_FIELDS_H
#define HSMFS_STORE_FIELDS_H

#include <stddef.h>
#include <time.h>

struct store_conf;
struct fields_store;
struct fields_lock;

/* A stored envelope line is at most this long, with room to spare. */
#define FIELDS_TEXT_MAX ((size_t)2 << 20)

/* The fields of the store conf names: rows of the shared store when
 * c->pg != NULL (store/fields_pg.c, table hsmfs_fields), else
 * STORE/fields/ (store/fields_dir.c). */
int fields_store_open(const struct store_conf *c, struct fields_store **out);
/* The PostgreSQL backend itself (fields_store_open picks it). */
int fields_store_open_pg(const struct store_conf *c, struct fields_store **out);
/* A node-local directory store over dirfd (kept open by the caller):
 * writers' temporaries (fs/temp.c's area), whatever the shared store. */
int fields_store_open_dir(int dirfd, struct fields_store **out);
/* STORE/fields (created): the node-local directory of this area in every
 * mode, which holds the temporaries' area. An fd the caller closes. */
int fields_store_node_dir(const struct store_conf *c);
void fields_store_close(struct fields_store *fs);

struct fields_meta {
	size_t size;     /* bytes get() returns */
	time_t mtime;    /* last put/rename onto the name */
	size_t head_len; /* bytes copied to head (<= its size) */
};

/* The stored text of name: the envelope line and "\n" (NUL-terminated,
 * caller frees). HSMFS_ERR_NOTFOUND if there is none. */
int fields_store_get(struct fields_store *fs, const char *name, char **text,
    size_t *len);
/* Metadata of name and, if head != NULL, the first up to headlen bytes
 * of its text (a stat, a peek at the envelope header). */
int fields_store_stat(struct fields_store *fs, const char *name,
    struct fields_meta *m, char *head, size_t headlen);

/* Per-name exclusive locks, across every process and node using the
 * store: put/remove/rename of a name are ordered by them (the caller
 * holds the lock of every name it changes); cas() takes the lock
 * itself. b may be NULL; two names are taken in a fixed order. */
int fields_store_lock(struct fields_store *fs, const char *a, const char *b,
    struct fields_lock **out);
void fields_store_unlock(struct fields_store *fs, struct fields_lock *lk);

#define FIELDS_NOREPLACE 1u  /* put, rename: -EEXIST if the target exists */
#define FIELDS_EXCHANGE 2u   /* rename: swap two existing names */

/* Set name to text + "\n" (text: one envelope line, no newline). */
int fields_store_put(struct fields_store *fs, const char *name,
    const char *text, size_t len, unsigned flags);
int fields_store_remove(struct fields_store *fs, const char *name);
/* from's text under to (replacing it, unless a flag says otherwise). */
int fields_store_rename(struct fields_store *fs, const char *from,
    const char *to, unsigned flags);
/* Replace name with text + "\n" only if it still holds old (as get
 * returned it). 0: replaced; 1: name holds something else now;
 * HSMFS_ERR_NOTFOUND: gone. Readers are never locked out. */
int fields_store_cas(struct fields_store *fs, const char *name,
    const char *old, size_t oldlen, const char *text, size_t len);

/* Every field name (temporaries and internals excluded), in no order;
 * a callback returning non-zero stops the walk and is returned. */
typedef int (*fields_name_cb)(void *arg, const char *name);
int fields_store_list(struct fields_store *fs, fields_name_cb cb, void *arg);

/* The maintenance lock (one rekey-fields at a time), held until close.
 * 0: held; 1: another holder has it. */
int fields_store_maint_lock(struct fields_store *fs);
/* Remove what interrupted puts left, if older than min_age seconds
 * (0: all, only when no other writer can be running). */
void fields_store_recover(struct fields_store *fs, long min_age);

/* For backends only: a store is a struct that starts with its ops. */
struct fields_store_ops {
	void (*close)(struct fields_store *);
	int (*get)(struct fields_store *, const char *, char **, size_t *);
	int (*stat)(struct fields_store *, const char *, struct fields_meta *,
	    char *, size_t);
	int (*lock)(struct fields_store *, const char *, const char *,
	    struct fields_lock **);
	void (*unlock)(struct fields_store *, struct fields_lock *);
	int (*put)(struct fields_store *, const char *, const char *, size_t,
	    unsigned);
	int (*remove)(struct fields_store *, const char *);
	int (*rename)(struct fields_store *, const char *, const char *,
	    unsigned);
	int (*cas)(struct fields_store *, const char *, const char *, size_t,
	    const char *, size_t);
	int (*list)(struct fields_store *, fields_name_cb, void *);
	int (*maint_lock)(struct fields_store *);
	void (*recover)(struct fields_store *, long);
};
struct fields_store {
	const struct fields_store_ops *ops;
};

#endif
