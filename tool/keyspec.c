/* Config + key name -> engine key for hsmfs-tool keygen/import-cert. */
#include "tool/keyspec.h"
#include "tool/tool.h"
#include "common/err.h"

#include <string.h>

int
tool_key_load(const char *cmd, const char *config, const char *name,
    int need_hsm, struct tool_key *tk)
{
	int r;

	memset(tk, 0, sizeof(*tk));
	if ((r = engine_load(config, &tk->engine)) != 0) {
		fprintf(stderr, "hsmfs-tool %s: %s\n", cmd, err_detail());
		return TOOL_USAGE;
	}
	if ((tk->ek = engine_key_by_name(tk->engine, name)) == NULL) {
		fprintf(stderr, "hsmfs-tool %s: %s: no key named \"%s\" in <keys>\n",
		    cmd, config, name);
		return TOOL_USAGE;
	}
	if (tk->ek->problem != NULL) {
		fprintf(stderr, "hsmfs-tool %s: %s: key \"%s\" cannot be used: %s\n",
		    cmd, config, name, tk->ek->problem);
		return TOOL_USAGE;
	}
	if (need_hsm && tk->ek->type != ENGINE_KEY_HSM) {
		fprintf(stderr, "hsmfs-tool %s: %s: key \"%s\" is not an HSM key "
		    "(type P12); this command works on PKCS#11 tokens only\n",
		    cmd, config, name);
		return TOOL_USAGE;
	}
	return TOOL_OK;
}

void
tool_key_release(struct tool_key *tk)
{
	if (tk->engine)
		engine_free(tk->engine);
	memset(tk, 0, sizeof(*tk));
}
