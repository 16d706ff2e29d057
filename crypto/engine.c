/* engineSignEncrypt.xml parser: placeholder until the engine work lands. */
#include "crypto/engine.h"
#include "common/err.h"

int engine_load(const char *path, struct engine **out)
{ err_set("%s: engine parser not built yet", path); return HSMFS_ERR_CONFIG; }
void engine_free(struct engine *e) { (void)e; }
const struct engine_descriptor *engine_newest(const struct engine *e, const char *n) { return NULL; }
const struct engine_descriptor *engine_version(const struct engine *e, const char *n, int v) { return NULL; }
const struct engine_key *engine_key_by_name(const struct engine *e, const char *n) { return NULL; }
int engine_key_pin(const struct engine_key *k, char **pin) { return HSMFS_ERR_CONFIG; }
void engine_pin_free(char *pin) { (void)pin; }
char *engine_pin_scramble(const char *pin) { return NULL; }
int engine_pin_unscramble(const char *s, char **pin) { return HSMFS_ERR_CONFIG; }
void engine_key_spec(const struct engine_key *k, const char *pin, struct hsm_key_spec *spec) { }
