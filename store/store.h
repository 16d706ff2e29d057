/* Where the backing store lives, for every area of store/ (fields,
 * history, mail queue). Each area has its own header and an open
 * function taking this: the directory backend under STORE today; a
 * shared backend (PostgreSQL, docs/contract.md §9) takes the same calls
 * and only this structure names it. fs/ and tool/ open areas through
 * here and never assume how an area keeps its state (no rename, fsync
 * or file descriptor of an area's data is visible to them). */
#ifndef HSMFS_STORE_STORE_H
#define HSMFS_STORE_STORE_H

struct pg;

struct store_conf {
	int dirfd;                   /* STORE (O_DIRECTORY), node-local state */
	const char *shared;          /* NULL, or a libpq URI (shared=) */
	const char *shared_password; /* NULL, or a file holding the password */
	struct pg *pg;               /* the shared store's connections
	                                (store/pg.h), opened once by the
	                                daemon or tool from shared=; NULL:
	                                the directory backend */
};

#endif
