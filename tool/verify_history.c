/* hsmfs-tool verify-history: placeholder until its issue lands. */
#include "tool/tool.h"

int
cmd_verify_history(int argc, char **argv)
{
	fprintf(stderr, "hsmfs-tool verify-history: not implemented in this build\n");
	return TOOL_USAGE;
}
