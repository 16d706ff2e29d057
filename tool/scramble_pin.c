/* hsmfs-tool scramble-pin: placeholder until its issue lands. */
#include "tool/tool.h"

int
cmd_scramble_pin(int argc, char **argv)
{
	fprintf(stderr, "hsmfs-tool scramble-pin: not implemented in this build\n");
	return TOOL_USAGE;
}
