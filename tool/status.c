/* hsmfs-tool status MOUNTPOINT: pretty-print MOUNTPOINT/.status (the
 * daemon's own key: value lines). Exit 1 when a folder is disabled, a
 * key's last operation failed or the last reload was refused, so it can
 * serve as a health check. */
#include "tool/tool.h"
#include "common/err.h"
#include "common/util.h"

#include <stdlib.h>
#include <string.h>

int
cmd_status(int argc, char **argv)
{
	char path[4096], *text = NULL, *line, *save;
	char section[256] = "";
	int unhealthy = 0;
	size_t len;

	if (argc != 2 || argv[1][0] == '-') {
		tool_usage(stderr, "status");
		return TOOL_USAGE;
	}
	snprintf(path, sizeof(path), "%s/.status", argv[1]);
	if (util_read_file(path, 1 << 20, &text, &len) != 0) {
		fprintf(stderr, "hsmfs-tool status: %s: not an hsmfs mount (%s)\n",
		    argv[1], err_detail());
		return TOOL_USAGE;
	}
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *colon = strstr(line, ": ");
		char *key = line, *val, *dot, *last;
		if (colon == NULL)
			continue;
		*colon = '\0';
		val = colon + 2;
		/* "key.NAME.field" and "folder.NAME..." group under NAME. */
		if ((strncmp(key, "key.", 4) == 0 || strncmp(key, "mail.", 5) == 0 ||
		    strncmp(key, "history.", 8) == 0 || strncmp(key, "fields.", 7) == 0 ||
		    strncmp(key, "zip.", 4) == 0) &&
		    (last = strrchr(key, '.')) != NULL && last != strchr(key, '.')) {
			char sect[256];
			dot = strchr(key, '.');
			snprintf(sect, sizeof(sect), "%.*s", (int)(last - key), key);
			if (strcmp(sect, section) != 0) {
				snprintf(section, sizeof(section), "%s", sect);
				printf("\n%s\n", section);
			}
			printf("  %-22s %s\n", last + 1, val);
			if (strcmp(last + 1, "last_result") == 0 &&
			    strcmp(val, "success") != 0 && strcmp(val, "none") != 0)
				unhealthy = 1;
			(void)dot;
			continue;
		}
		if (section[0]) {
			section[0] = '\0';
			printf("\n");
		}
		printf("%-24s %s\n", key, val);
		if (strncmp(key, "folder.", 7) == 0 && strcmp(val, "failed") == 0)
			unhealthy = 1;
		/* The last reload was refused: an old configuration serves. */
		if (strcmp(key, "config.reload") == 0 && strncmp(val, "failed", 6) == 0)
			unhealthy = 1;
	}
	free(text);
	return unhealthy ? TOOL_FAIL : TOOL_OK;
}
