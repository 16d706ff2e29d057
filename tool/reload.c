/* hsmfs-tool reload MOUNTPOINT: ask the daemon of a mount to reload its
 * configuration (SIGHUP to the PID its .status names) and wait for the
 * outcome it reports there. Exit 0 when the new configuration serves,
 * 1 when the daemon refused it (the old one keeps serving), 2 when the
 * mount cannot be reached. */
#include "tool/tool.h"
#include "common/err.h"
#include "common/util.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RELOAD_WAIT_S 300

/* Value of "key: value" in a .status text (a copy), NULL when absent. */
static char *
status_value(const char *text, const char *key)
{
	size_t kl = strlen(key);
	for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
		if (strncmp(p, key, kl) == 0 && strncmp(p + kl, ": ", 2) == 0) {
			const char *v = p + kl + 2;
			return strndup(v, strcspn(v, "\n"));
		}
	}
	return NULL;
}

static int
read_status(const char *mnt, unsigned long *reloads, long *pid, char **result,
    int *busy)
{
	char path[4096], *text = NULL, *v;
	size_t len;
	int ok = 0;

	snprintf(path, sizeof(path), "%s/.status", mnt);
	if (util_read_file(path, 1 << 20, &text, &len) != 0)
		return -1;
	if ((v = status_value(text, "config.reloads")) != NULL) {
		*reloads = strtoul(v, NULL, 10);
		ok++;
		free(v);
	}
	if ((v = status_value(text, "pid")) != NULL) {
		*pid = strtol(v, NULL, 10);
		ok++;
		free(v);
	}
	if (result)
		*result = status_value(text, "config.reload");
	if (busy && (v = status_value(text, "config.reloading")) != NULL) {
		*busy = strcmp(v, "yes") == 0;
		free(v);
	}
	free(text);
	return ok == 2 ? 0 : -1;
}

int
cmd_reload(int argc, char **argv)
{
	unsigned long before = 0, now = 0;
	long pid = 0, pid2 = 0;
	char *result = NULL;
	struct timespec nap = { 0, 50 * 1000 * 1000 };
	int rc, busy = 0;

	if (argc != 2 || argv[1][0] == '-') {
		tool_usage(stderr, "reload");
		return TOOL_USAGE;
	}
	if (read_status(argv[1], &before, &pid, NULL, &busy) != 0 || pid <= 0) {
		fprintf(stderr, "hsmfs-tool reload: %s: not an hsmfs mount (no pid "
		    "and config.reloads in its .status)\n", argv[1]);
		return TOOL_USAGE;
	}
	/* A reload already reading the files when we looked may have read
	 * them before the edit we are asked to apply: its outcome is not
	 * ours, the next one is. */
	if (kill((pid_t)pid, SIGHUP) != 0) {
		fprintf(stderr, "hsmfs-tool reload: %s: cannot signal hsmfs PID %ld: "
		    "%s\n", argv[1], pid, strerror(errno));
		return TOOL_USAGE;
	}
	for (int i = 0; i < RELOAD_WAIT_S * 20; i++) {
		free(result);
		result = NULL;
		if (read_status(argv[1], &now, &pid2, &result, NULL) == 0 &&
		    now > before + (unsigned long)busy)
			break;
		nanosleep(&nap, NULL);
	}
	if (now <= before + (unsigned long)busy) {
		fprintf(stderr, "hsmfs-tool reload: %s: no answer from PID %ld within "
		    "%d s\n", argv[1], pid, RELOAD_WAIT_S);
		rc = TOOL_USAGE;
	} else if (result && strcmp(result, "ok") == 0) {
		printf("reload: ok\n");
		rc = TOOL_OK;
	} else {
		fprintf(stderr, "hsmfs-tool reload: %s: %s; the previous "
		    "configuration keeps serving\n", argv[1], result ? result : "failed");
		rc = TOOL_FAIL;
	}
	free(result);
	return rc;
}
