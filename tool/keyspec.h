/* Shared by the key-management subcommands (keygen, import-cert): load
 * the config, find a key by name and fill its hsm_key_spec with the PIN. */
#ifndef HSMFS_TOOL_KEYSPEC_H
#define HSMFS_TOOL_KEYSPEC_H

#include "crypto/engine.h"

struct tool_key {
	struct engine *engine;
	const struct engine_key *ek;
	char *pin;                  /* secure memory, engine_pin_free() */
	struct hsm_key_spec spec;   /* borrows from engine and pin */
};

/* Returns TOOL_OK, or TOOL_USAGE after printing one line naming cmd,
 * the config and the key. need_hsm: refuse P12 keys. */
int tool_key_load(const char *cmd, const char *config, const char *name,
    int need_hsm, struct tool_key *tk);
void tool_key_release(struct tool_key *tk);

#endif
