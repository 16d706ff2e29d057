/* hsmfs-tool keygen: placeholder until its issue lands. */
#include "tool/tool.h"

int
cmd_keygen(int argc, char **argv)
{
	fprintf(stderr, "hsmfs-tool keygen: not implemented in this build\n");
	return TOOL_USAGE;
}
