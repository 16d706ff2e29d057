/* hsmfs-tool rekey-fields: placeholder until its issue lands. */
#include "tool/tool.h"

int
cmd_rekey_fields(int argc, char **argv)
{
	fprintf(stderr, "hsmfs-tool rekey-fields: not implemented in this build\n");
	return TOOL_USAGE;
}
