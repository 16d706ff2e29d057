/* hsmfs-tool check: placeholder until its issue lands. */
#include "tool/tool.h"

int
cmd_check(int argc, char **argv)
{
	fprintf(stderr, "hsmfs-tool check: not implemented in this build\n");
	return TOOL_USAGE;
}
