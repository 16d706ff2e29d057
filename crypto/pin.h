/* PIN sources of engineSignEncrypt.xml keys (pin, pin.encrypted,
 * pin.file, pin.env) and the pin.encrypted scramble. The keyring
 * (crypto/keyring.c) resolves a key's PIN here for the one login and
 * wipes it; nothing above crypto/ needs a PIN apart from
 * hsmfs-tool scramble-pin and the daemon's pin.env scrub. */
#ifndef HSMFS_CRYPTO_PIN_H
#define HSMFS_CRYPTO_PIN_H

#include "crypto/engine.h"

/* The user PIN of a key from whichever source the config names; *pin is
 * in secure memory, NUL-terminated; release with pin_free(). */
int pin_of_key(const struct engine_key *k, char **pin);
void pin_free(char *pin);

/* After the keys are open: wipe the values of every pin.env variable in
 * place (so /proc/PID/environ no longer shows them) and unset them. */
void pin_scrub_env(const struct engine *e);

/* pin.encrypted: a reversible scramble (obfuscation, not encryption). */
char *pin_scramble(const char *pin);
int pin_unscramble(const char *scrambled, char **pin);

#endif
