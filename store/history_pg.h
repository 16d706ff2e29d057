/* The PostgreSQL backend of the history area (store/history.h), called
 * by the directory backend's public functions when the store is shared
 * (store/history_area.c, store/history_batch.c, store/history_verify.c).
 * Private to store/. */
#ifndef HSMFS_STORE_HISTORY_PG_H
#define HSMFS_STORE_HISTORY_PG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "store/history.h"
#include "store/store.h"

struct hpg;         /* the area: the pool, the cluster's origin prefix */
struct hpg_obj;     /* an object: its name and a node-local cache of its frames */
struct hpg_batch;   /* one transaction */

/* cachedir: where the node-local caches of objects' frames are made
 * (unlinked files). prefix gets "<cluster origin>/history/". */
int hpg_open(const struct store_conf *conf, int cachedir, char *prefix,
    size_t plen, struct hpg **out);
void hpg_close(struct hpg *p);
/* The newest checkpoint of every object (the objects' rows). */
int hpg_load_notes(struct hpg *p, const char *prefix, hstore_note_cb cb,
    void *arg);
int hpg_list_objects(struct hpg *p, hstore_name_cb cb, void *arg);
/* st_size: bytes of the committed frames, st_blocks: records, st_mtim
 * and st_ctim: the row's last change, st_ino: a hash of the name. */
int hpg_object_stat(struct hpg *p, const char *name, struct stat *st);

int hpg_obj_open(struct hpg *p, const char *name, int create,
    struct hpg_obj **out);
void hpg_obj_close(struct hpg_obj *o);
int hpg_obj_stat(struct hpg_obj *o, struct stat *st);
ssize_t hpg_obj_read(struct hpg_obj *o, void *buf, size_t len, off_t off);
int hpg_obj_check(struct hpg_obj *o, struct hstore_check *c);
int hpg_obj_newest(struct hpg_obj *o, char **text, size_t *len);

int hpg_batch_begin(struct hpg *p, struct hpg_batch **out);
int hpg_batch_lock(struct hpg_batch *b, struct hpg_obj *const *obs, size_t n,
    uint64_t *nrec, off_t *bytes);
int hpg_batch_frame(struct hpg_batch *b, struct hpg_obj *o, off_t off,
    const struct iovec *iov, int n);
void hpg_batch_abort(struct hpg_batch *b, struct hpg_obj *o);
int hpg_batch_commit(struct hpg_batch *b, const char *prefix,
    const char *notes, size_t len);
void hpg_batch_end(struct hpg_batch *b);

/* For hstore_verify_object: the origin prefix, the object's newest
 * checkpoint (*newest NULL: none) and its committed frames in *fd (an
 * unlinked file; -1 and HSMFS_ERR_NOTFOUND when there is no such
 * object). */
int hpg_verify_fetch(const struct store_conf *conf, const char *object,
    char *prefix, size_t plen, char **newest, size_t *newest_len, int *fd);

#endif
