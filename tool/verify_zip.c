/* hsmfs-tool verify-zip: placeholder until its issue lands. */
#include "tool/tool.h"

int
cmd_verify_zip(int argc, char **argv)
{
	fprintf(stderr, "hsmfs-tool verify-zip: not implemented in this build\n");
	return TOOL_USAGE;
}
