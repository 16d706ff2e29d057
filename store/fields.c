/* The fields area's calls (store/fields.h), dispatched to the backend
 * fields_store_open chose (store/fields_dir.c today). */
#include "store/fields.h"

void
fields_store_close(struct fields_store *fs)
{
	if (fs != NULL)
		fs->ops->close(fs);
}

int
fields_store_get(struct fields_store *fs, const char *name, char **text,
    size_t *len)
{
	return fs->ops->get(fs, name, text, len);
}

int
fields_store_stat(struct fields_store *fs, const char *name,
    struct fields_meta *m, char *head, size_t headlen)
{
	return fs->ops->stat(fs, name, m, head, headlen);
}

int
fields_store_lock(struct fields_store *fs, const char *a, const char *b,
    struct fields_lock **out)
{
	return fs->ops->lock(fs, a, b, out);
}

void
fields_store_unlock(struct fields_store *fs, struct fields_lock *lk)
{
	fs->ops->unlock(fs, lk);
}

int
fields_store_put(struct fields_store *fs, const char *name, const char *text,
    size_t len, unsigned flags)
{
	return fs->ops->put(fs, name, text, len, flags);
}

int
fields_store_remove(struct fields_store *fs, const char *name)
{
	return fs->ops->remove(fs, name);
}

int
fields_store_rename(struct fields_store *fs, const char *from, const char *to,
    unsigned flags)
{
	return fs->ops->rename(fs, from, to, flags);
}

int
fields_store_cas(struct fields_store *fs, const char *name, const char *old,
    size_t oldlen, const char *text, size_t len)
{
	return fs->ops->cas(fs, name, old, oldlen, text, len);
}

int
fields_store_list(struct fields_store *fs, fields_name_cb cb, void *arg)
{
	return fs->ops->list(fs, cb, arg);
}

int
fields_store_maint_lock(struct fields_store *fs)
{
	return fs->ops->maint_lock(fs);
}

void
fields_store_recover(struct fields_store *fs, long min_age)
{
	fs->ops->recover(fs, min_age);
}
