/* hsmfs-tool open-field: placeholder until its issue lands. */
#include "tool/tool.h"

int
cmd_open_field(int argc, char **argv)
{
	fprintf(stderr, "hsmfs-tool open-field: not implemented in this build\n");
	return TOOL_USAGE;
}
