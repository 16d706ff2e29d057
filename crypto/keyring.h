/* The open keys of an engine: one hsm_key per configured <key>, opened
 * once (PINs resolved, used and wiped) and shared by every descriptor
 * version naming it. fs/ and tool/ reach keys only through here. */
#ifndef HSMFS_CRYPTO_KEYRING_H
#define HSMFS_CRYPTO_KEYRING_H

#include "crypto/engine.h"
#include "hsm/hsm.h"

struct keyring;

/* Open every key named by a descriptor. On the first failure returns its
 * code with err_detail() naming the key; never retries a wrong PIN. */
int keyring_open(const struct engine *e, struct keyring **out);
/* keyring_open for a reloaded engine: keys of old whose name and place
 * (module/file, slot, token, alias) are unchanged are shared, not
 * reopened (their sessions and logins are kept); others are opened.
 * old stays valid and unchanged. */
int keyring_reopen(const struct keyring *old, const struct engine *e,
    struct keyring **out);
/* Another reference to kr (for a holder that outlives a reload);
 * keyring_free drops one, and closes keys no other keyring shares. */
struct keyring *keyring_hold(struct keyring *kr);
void keyring_free(struct keyring *kr);

/* The key of a descriptor (NULL if the descriptor's key is not open). */
hsm_key *keyring_key(struct keyring *kr, const struct engine_descriptor *d);
hsm_key *keyring_key_by_name(struct keyring *kr, const char *key_name);
size_t keyring_count(const struct keyring *kr);
hsm_key *keyring_at(struct keyring *kr, size_t i);
/* True when key i is also held by another keyring (kept over a reload). */
int keyring_shared(const struct keyring *kr, size_t i);

#endif
