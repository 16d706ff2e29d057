/* hsmfs-tool seal-field: placeholder until its issue lands. */
#include "tool/tool.h"

int
cmd_seal_field(int argc, char **argv)
{
	fprintf(stderr, "hsmfs-tool seal-field: not implemented in this build\n");
	return TOOL_USAGE;
}
