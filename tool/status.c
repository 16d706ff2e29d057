/* hsmfs-tool status MOUNTPOINT [--format=text|prometheus|json]: the
 * mount's MOUNTPOINT/.status pretty-printed (text), MOUNTPOINT/.metrics
 * as it is (prometheus, for node_exporter's textfile collector) or as
 * JSON. Exit 1 when a folder is disabled, a key's last operation
 * failed or the last reload was refused, so it can serve as a health check. */
#include "tool/tool.h"
#include "common/err.h"
#include "common/util.h"

#include <stdlib.h>
#include <string.h>

enum fmt { FMT_TEXT, FMT_PROMETHEUS, FMT_JSON };

/* Print .status grouped; returns 1 when unhealthy. */
static int
status_print(char *text, int print)
{
	char section[256] = "", *line, *save;
	int unhealthy = 0;

	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *colon = strstr(line, ": ");
		char *key = line, *val, *last;
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
			snprintf(sect, sizeof(sect), "%.*s", (int)(last - key), key);
			if (strcmp(sect, section) != 0) {
				snprintf(section, sizeof(section), "%s", sect);
				if (print)
					printf("\n%s\n", section);
			}
			if (print)
				printf("  %-22s %s\n", last + 1, val);
			if (strcmp(last + 1, "last_result") == 0 &&
			    strcmp(val, "success") != 0 && strcmp(val, "none") != 0)
				unhealthy = 1;
			if (strcmp(last + 1, "state") == 0 &&
			    strcmp(val, "unavailable") == 0)
				unhealthy = 1;
			continue;
		}
		if (section[0]) {
			section[0] = '\0';
			if (print)
				printf("\n");
		}
		if (print)
			printf("%-24s %s\n", key, val);
		if (strncmp(key, "folder.", 7) == 0 && strncmp(val, "failed", 6) == 0)
			unhealthy = 1;
		/* The last reload was refused: an old configuration serves. */
		if (strcmp(key, "config.reload") == 0 && strncmp(val, "failed", 6) == 0)
			unhealthy = 1;
	}
	return unhealthy;
}

static void
json_string(const char *s, size_t n)
{
	putchar('"');
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

/* Unescape a Prometheus label value (p: after the opening quote) in
 * place, whatever its length: it starts at p, *n bytes. Returns the
 * position after the closing quote, or NULL. */
static char *
label_value(char *p, size_t *n)
{
	char *start = p, *w = p;
	for (; *p && *p != '"'; p++) {
		char c = *p;
		if (c == '\\' && p[1]) {
			p++;
			c = *p == 'n' ? '\n' : *p;
		}
		*w++ = c;
	}
	*n = (size_t)(w - start);
	return *p == '"' ? p + 1 : NULL;
}

/* .metrics as JSON: {"families": [{"name", "type", "help", "samples":
 * [{"name", "labels": {...}, "value"}]}]}. Values are numbers; the
 * text's NaN and +-Inf, which JSON lacks, become strings. */
static int
metrics_json(char *text)
{
	char *line, *save, *fam_help = NULL;
	int nfam = 0, nsamp = 0;

	printf("{\"families\": [");
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (strncmp(line, "# HELP ", 7) == 0) {
			fam_help = line + 7;
			continue;
		}
		if (strncmp(line, "# TYPE ", 7) == 0) {
			char *name = line + 7, *type = strchr(name, ' ');
			const char *help = "";
			if (type == NULL)
				return -1;
			*type++ = '\0';
			if (fam_help && strncmp(fam_help, name, strlen(name)) == 0 &&
			    fam_help[strlen(name)] == ' ')
				help = fam_help + strlen(name) + 1;
			printf("%s\n  {\"name\": ", nfam++ ? "]}," : "");
			json_string(name, strlen(name));
			printf(", \"type\": ");
			json_string(type, strlen(type));
			printf(", \"help\": ");
			/* HELP escapes only \\ and \n: unescape them. */
			putchar('"');
			for (const char *h = help; *h; h++) {
				if (*h == '\\' && h[1] == 'n') {
					fputs("\\n", stdout);
					h++;
				} else if (*h == '\\' && h[1] == '\\') {
					fputs("\\\\", stdout);
					h++;
				} else if (*h == '"') {
					fputs("\\\"", stdout);
				} else {
					putchar(*h);
				}
			}
			printf("\", \"samples\": [");
			nsamp = 0;
			fam_help = NULL;
			continue;
		}
		if (line[0] == '#' || line[0] == '\0')
			continue;
		{
			char *p = line, *val;
			size_t nlen = strcspn(p, "{ ");
			int nl = 0;
			if (nfam == 0)
				return -1;
			printf("%s\n    {\"name\": ", nsamp++ ? "," : "");
			json_string(p, nlen);
			printf(", \"labels\": {");
			p += nlen;
			if (*p == '{') {
				p++;
				while (*p && *p != '}') {
					char *v;
					size_t klen = strcspn(p, "="), vlen;
					if (p[klen] != '=' || p[klen + 1] != '"')
						return -1;
					printf("%s", nl++ ? ", " : "");
					json_string(p, klen);
					printf(": ");
					v = p + klen + 2;
					if ((p = label_value(v, &vlen)) == NULL)
						return -1;
					json_string(v, vlen);
					if (*p == ',')
						p++;
				}
				if (*p != '}')
					return -1;
				p++;
			}
			val = p + strspn(p, " ");
			printf("}, \"value\": ");
			if (strcmp(val, "NaN") == 0 || strcmp(val, "+Inf") == 0 ||
			    strcmp(val, "-Inf") == 0)
				json_string(val, strlen(val));
			else
				printf("%s", val);
			printf("}");
		}
	}
	printf("%s\n]}\n", nfam ? "]}" : "");
	return 0;
}

int
cmd_status(int argc, char **argv)
{
	char path[4096], *text = NULL, *metrics = NULL;
	const char *mnt = NULL;
	enum fmt fmt = FMT_TEXT;
	int unhealthy, rc = TOOL_OK;
	size_t len, mlen;

	for (int i = 1; i < argc; i++) {
		const char *f = NULL;
		if (strncmp(argv[i], "--format=", 9) == 0)
			f = argv[i] + 9;
		else if (strcmp(argv[i], "--format") == 0 && i + 1 < argc)
			f = argv[++i];
		else if (argv[i][0] != '-' && mnt == NULL) {
			mnt = argv[i];
			continue;
		} else {
			tool_usage(stderr, "status");
			return TOOL_USAGE;
		}
		if (strcmp(f, "text") == 0)
			fmt = FMT_TEXT;
		else if (strcmp(f, "prometheus") == 0)
			fmt = FMT_PROMETHEUS;
		else if (strcmp(f, "json") == 0)
			fmt = FMT_JSON;
		else {
			fprintf(stderr, "hsmfs-tool status: --format=%s: use text, "
			    "prometheus or json\n", f);
			return TOOL_USAGE;
		}
	}
	if (mnt == NULL) {
		tool_usage(stderr, "status");
		return TOOL_USAGE;
	}
	snprintf(path, sizeof(path), "%s/.status", mnt);
	if (util_read_file(path, 1 << 20, &text, &len) != 0) {
		fprintf(stderr, "hsmfs-tool status: %s: not an hsmfs mount (%s)\n",
		    mnt, err_detail());
		return TOOL_USAGE;
	}
	if (fmt != FMT_TEXT) {
		snprintf(path, sizeof(path), "%s/.metrics", mnt);
		if (util_read_file(path, 16 << 20, &metrics, &mlen) != 0) {
			fprintf(stderr, "hsmfs-tool status: %s: no metrics (%s)\n",
			    mnt, err_detail());
			free(text);
			return TOOL_USAGE;
		}
	}
	unhealthy = status_print(text, fmt == FMT_TEXT);
	if (fmt == FMT_PROMETHEUS) {
		fwrite(metrics, 1, mlen, stdout);
	} else if (fmt == FMT_JSON && metrics_json(metrics) != 0) {
		fflush(stdout);
		fprintf(stderr, "\nhsmfs-tool status: %s/.metrics: malformed line\n",
		    mnt);
		rc = TOOL_USAGE;
	}
	free(text);
	free(metrics);
	if (rc == TOOL_OK && unhealthy)
		rc = TOOL_FAIL;
	return rc;
}
