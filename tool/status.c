/* hsmfs-tool status: placeholder until its issue lands. */
#include "tool/tool.h"

int
cmd_status(int argc, char **argv)
{
	fprintf(stderr, "hsmfs-tool status: not implemented in this build\n");
	return TOOL_USAGE;
}
