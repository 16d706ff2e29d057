/* Shared by the field subcommands (open-field, seal-field, rekey-fields):
 * load the config, open its keys, read stdin into secure memory. */
#ifndef HSMFS_TOOL_FIELDTOOL_H
#define HSMFS_TOOL_FIELDTOOL_H

#include <stddef.h>
#include <stdint.h>
#include "crypto/engine.h"
#include "crypto/keyring.h"

struct fieldtool {
	struct engine *engine;
	struct keyring *keys;
	const struct engine_descriptor *newest;   /* EncryptedFields, newest */
};

/* Parse "-o config=FILE" (and nothing else but extra positional
 * arguments, returned in pos[0..*npos)). Returns TOOL_OK or TOOL_USAGE. */
int fieldtool_args(const char *cmd, int argc, char **argv, const char **config,
    char **pos, int maxpos, int *npos);
/* No core dumps, secure heap, config, keys, newest descriptor checked.
 * Prints one line and returns TOOL_USAGE on failure. */
int fieldtool_open(const char *cmd, const char *config, struct fieldtool *t);
void fieldtool_close(struct fieldtool *t);
/* shared= and shared_password= of the last fieldtool_args (NULL: none). */
void fieldtool_shared(const char **uri, const char **password);
/* A list of names collected from a store listing (a listing callback may
 * not change what it lists): names_add keeps a copy (HSMFS_ERR_NOMEM also
 * remembered in err, so a void callback can ignore it). */
struct names {
	char **v;
	size_t n, cap;
	int err;
};
int names_add(void *arg, const char *name);
void names_free(struct names *ns);
/* All of stdin (at most max bytes) into secure memory; *cap is the
 * allocation size for secmem_free. */
int fieldtool_read_stdin(const char *cmd, size_t max, uint8_t **buf,
    size_t *len, size_t *cap);

#endif
