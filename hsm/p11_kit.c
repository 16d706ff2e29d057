/* p11-kit module registry lookup (see p11_kit.h). The directories are
 * p11-kit's, from its pkg-config file at build time: the administrator's
 * /etc/pkcs11/modules first, then the packages' (Debian's softhsm2 puts
 * softhsm2.module there). No per-user registry: a daemon's module must
 * not depend on whose home it starts from. */
#include "hsm/p11_kit.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#ifndef P11KIT_SYSTEM_MODULES
#define P11KIT_SYSTEM_MODULES "/etc/pkcs11/modules"
#endif
#ifndef P11KIT_PACKAGE_MODULES
#define P11KIT_PACKAGE_MODULES "/usr/share/p11-kit/modules"
#endif
#ifndef P11KIT_MODULE_PATH
#define P11KIT_MODULE_PATH "/usr/lib/x86_64-linux-gnu/pkcs11"
#endif

static void
add_tried(char *tried, size_t tsize, const char *path)
{
	size_t used = strlen(tried);
	if (used + 4 < tsize)
		snprintf(tried + used, tsize - used, "%s%s", used ? ", " : "", path);
}

int
p11kit_lookup(const char *name, char *out, size_t outlen, char *tried,
    size_t triedlen, char *why, size_t whylen)
{
	static const char *const dirs[] = {
		"/etc/pkcs11/modules", P11KIT_SYSTEM_MODULES, P11KIT_PACKAGE_MODULES,
	};
	char path[4096], line[4096];

	if (name[0] == '\0' || name[0] == '.' || strchr(name, '/') != NULL)
		return 0;
	for (size_t d = 0; d < sizeof(dirs) / sizeof(dirs[0]); d++) {
		FILE *f;
		int found = 0;
		if (d > 0 && (strcmp(dirs[d], dirs[0]) == 0 ||
		    (d > 1 && strcmp(dirs[d], dirs[1]) == 0)))
			continue;
		snprintf(path, sizeof(path), "%s/%s.module", dirs[d], name);
		add_tried(tried, triedlen, path);
		if ((f = fopen(path, "re")) == NULL) {
			if (errno == ENOENT || errno == ENOTDIR)
				continue;
			snprintf(why, whylen, "%s: %s", path, strerror(errno));
			return -1;
		}
		while (fgets(line, sizeof(line), f) != NULL) {
			char *v = line, *e;
			while (isspace((unsigned char)*v))
				v++;
			if (strncmp(v, "module:", 7) != 0)
				continue;
			v += 7;
			while (isspace((unsigned char)*v))
				v++;
			e = v + strlen(v);
			while (e > v && isspace((unsigned char)e[-1]))
				*--e = '\0';
			if (*v == '\0')
				break;
			/* Relative names live in p11-kit's module directory. */
			if (v[0] == '/')
				snprintf(out, outlen, "%s", v);
			else
				snprintf(out, outlen, "%s/%s", P11KIT_MODULE_PATH, v);
			found = 1;
			break;
		}
		fclose(f);
		if (found)
			return 1;
		snprintf(why, whylen, "%s has no \"module:\" line", path);
		return -1;
	}
	return 0;
}
