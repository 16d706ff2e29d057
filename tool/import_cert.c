/* hsmfs-tool import-cert: placeholder until its issue lands. */
#include "tool/tool.h"

int
cmd_import_cert(int argc, char **argv)
{
	fprintf(stderr, "hsmfs-tool import-cert: not implemented in this build\n");
	return TOOL_USAGE;
}
