/* Shared by the key-management subcommands (keygen, import-cert): load
 * the config and find a usable key by name; the keyring opens it. */
#ifndef HSMFS_TOOL_KEYSPEC_H
#define HSMFS_TOOL_KEYSPEC_H

#include "crypto/engine.h"
#include "crypto/keyring.h"

struct tool_key {
	struct engine *engine;
	const struct engine_key *ek;
};

/* Returns TOOL_OK, or TOOL_USAGE after printing one line naming cmd,
 * the config and the key. need_hsm: refuse P12 keys. */
int tool_key_load(const char *cmd, const char *config, const char *name,
    int need_hsm, struct tool_key *tk);
void tool_key_release(struct tool_key *tk);

#endif
