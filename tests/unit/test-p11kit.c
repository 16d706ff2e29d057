/* Unit tests of hsm/p11_kit.c: p11-kit module registry lookup as p11-kit
 * itself reads it (earlier directory overrides key by key, "key : value"
 * spacing, comments, enable-in/disable-in, remote modules, names p11-kit
 * would not register). */
#include "hsm/p11_kit.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *cur_case = "setup";
static int failures;
static char sys_dir[PATH_MAX + 16], pkg_dir[PATH_MAX + 16];
static char out[4096], tried[4096], why[1024];

#define CHECK(c) do { \
	if (!(c)) { \
		fprintf(stderr, "FAIL [%s] %s:%d: %s\n    out=%s why=%s tried=%s\n", \
		    cur_case, __FILE__, __LINE__, #c, out, why, tried); \
		failures++; \
	} \
} while (0)

static void
put(const char *dir, const char *name, const char *text)
{
	char path[PATH_MAX + 128];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s.module", dir, name);
	if (text == NULL) {
		unlink(path);
		return;
	}
	if ((f = fopen(path, "w")) == NULL || fputs(text, f) < 0 ||
	    fclose(f) != 0) {
		fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
		exit(2);
	}
}

static int
look(const char *prog, const char *name)
{
	const char *dirs[] = {sys_dir, pkg_dir};

	out[0] = tried[0] = why[0] = '\0';
	return p11kit_lookup_in(dirs, 2, prog, name, out, sizeof(out), tried,
	    sizeof(tried), why, sizeof(why));
}

int
main(void)
{
	char tmpl[PATH_MAX], cmd[PATH_MAX + 16];
	const char *t = getenv("TMPDIR");

	snprintf(tmpl, sizeof(tmpl), "%s/hsmfs-test-p11kit.XXXXXX",
	    t && *t ? t : "/tmp");
	if (mkdtemp(tmpl) == NULL) {
		perror("mkdtemp");
		return 2;
	}
	snprintf(sys_dir, sizeof(sys_dir), "%s/etc", tmpl);
	snprintf(pkg_dir, sizeof(pkg_dir), "%s/share", tmpl);
	mkdir(sys_dir, 0700);
	mkdir(pkg_dir, 0700);

	cur_case = "package";
	put(pkg_dir, "hsm", "# vendor module\nmodule: /opt/hsm/libhsm.so\n"
	    "critical: yes\n");
	CHECK(look("hsmfs", "hsm") == 1 && strcmp(out, "/opt/hsm/libhsm.so") == 0);
	CHECK(strstr(tried, "/etc/hsm.module") && strstr(tried, "/share/hsm.module"));

	cur_case = "not-registered";
	CHECK(look("hsmfs", "other") == 0);

	/* p11-kit merges an /etc file over the package's key by key: one
	 * holding only an option keeps the package's module: line. */
	cur_case = "override-without-module";
	put(sys_dir, "hsm", "trust-policy: no\n");
	CHECK(look("hsmfs", "hsm") == 1 && strcmp(out, "/opt/hsm/libhsm.so") == 0);
	cur_case = "override-module";
	put(sys_dir, "hsm", "module :   /usr/local/lib/hsm.so  \n");
	CHECK(look("hsmfs", "hsm") == 1 && strcmp(out, "/usr/local/lib/hsm.so") == 0);
	cur_case = "commented-module";
	put(sys_dir, "hsm", "#module: /nope.so\n");
	CHECK(look("hsmfs", "hsm") == 1 && strcmp(out, "/opt/hsm/libhsm.so") == 0);

	/* enable-in / disable-in name the programs, as p11-kit honours them. */
	cur_case = "disable-in";
	put(sys_dir, "hsm", "disable-in: firefox, hsmfs\n");
	CHECK(look("hsmfs", "hsm") == -2 && strstr(why, "disable-in") &&
	    strstr(why, "hsmfs"));
	CHECK(look("hsmfs-tool", "hsm") == 1);
	cur_case = "enable-in";
	put(sys_dir, "hsm", "enable-in: p11-kit-proxy hsmfs-tool\n");
	CHECK(look("hsmfs", "hsm") == -2 && strstr(why, "enable-in"));
	CHECK(look("hsmfs-tool", "hsm") == 1);
	put(sys_dir, "hsm", NULL);

	cur_case = "no-module-anywhere";
	put(pkg_dir, "remote1", "remote: |ssh host p11-kit remote /x.so\n");
	CHECK(look("hsmfs", "remote1") == -1 && strstr(why, "remote"));
	put(pkg_dir, "empty", "critical: yes\n");
	CHECK(look("hsmfs", "empty") == -1 && strstr(why, "no \"module:\""));

	cur_case = "relative-module";
	put(pkg_dir, "rel", "module: librel.so\n");
	CHECK(look("hsmfs", "rel") == 1 && out[0] == '/' &&
	    strstr(out, "/librel.so") != NULL);

	/* Names p11-kit never registers are not looked up at all. */
	cur_case = "odd-names";
	CHECK(look("hsmfs", "../share/hsm") == 0 && tried[0] == '\0');
	CHECK(look("hsmfs", ".hidden") == 0 && tried[0] == '\0');
	CHECK(look("hsmfs", "a b") == 0 && tried[0] == '\0');
	CHECK(look("hsmfs", "") == 0 && tried[0] == '\0');

	if (failures == 0) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpl);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", tmpl);
		printf("test-p11kit: all cases passed\n");
		return 0;
	}
	fprintf(stderr, "test-p11kit: %d failure(s); files kept in %s\n",
	    failures, tmpl);
	return 1;
}
