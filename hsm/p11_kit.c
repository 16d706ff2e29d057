/* p11-kit module registry lookup (see p11_kit.h). The directories are
 * p11-kit's, from its pkg-config file at build time: the administrator's
 * /etc/pkcs11/modules first, then the packages' (Debian's softhsm2 puts
 * softhsm2.module there). No per-user registry: a daemon's module must
 * not depend on whose home it starts from. As in p11-kit, a file of the
 * same name in an earlier directory overrides the later one key by key
 * (an /etc file holding only "disable-in:" still takes its module: from
 * the package's), and enable-in/disable-in name the programs allowed. */
#include "hsm/p11_kit.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
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

extern char *program_invocation_short_name;

static void
add_tried(char *tried, size_t tsize, const char *path)
{
	size_t used = strlen(tried);
	if (used + 4 < tsize)
		snprintf(tried + used, tsize - used, "%s%s", used ? ", " : "", path);
}

/* The names p11-kit gives registry files (calc_name_from_filename). */
static int
registry_name(const char *name)
{
	if (!isalnum((unsigned char)name[0]))
		return 0;
	for (const char *c = name; *c; c++)
		if (!isalnum((unsigned char)*c) && *c != '_' && *c != '-' &&
		    *c != '.')
			return 0;
	return 1;
}

/* word in a list separated by commas and/or blanks (p11-kit's
 * is_string_in_list). */
static int
in_list(const char *list, const char *word)
{
	size_t wl = strlen(word);

	for (const char *s = list; *s; ) {
		size_t n;
		while (*s == ',' || isspace((unsigned char)*s))
			s++;
		n = strcspn(s, ", \t");
		if (n == wl && n > 0 && strncmp(s, word, n) == 0)
			return 1;
		s += n;
	}
	return 0;
}

enum { K_MODULE, K_ENABLE, K_DISABLE, K_REMOTE, K_N };

int
p11kit_lookup_in(const char *const *dirs, size_t ndirs, const char *progname,
    const char *name, char *out, size_t outlen, char *tried, size_t triedlen,
    char *why, size_t whylen)
{
	static const char *const keys[K_N] = {"module", "enable-in",
		"disable-in", "remote"};
	char *val[K_N] = {NULL};
	char path[4096], line[4096], first[4096] = "";
	int found = 0, r = -1;

	if (!registry_name(name))
		return 0;
	for (size_t d = 0; d < ndirs; d++) {
		FILE *f;
		int dup = 0;
		for (size_t e = 0; e < d; e++)
			dup |= strcmp(dirs[d], dirs[e]) == 0;
		if (dup)
			continue;
		snprintf(path, sizeof(path), "%s/%s.module", dirs[d], name);
		add_tried(tried, triedlen, path);
		if ((f = fopen(path, "re")) == NULL) {
			if (errno == ENOENT || errno == ENOTDIR)
				continue;
			snprintf(why, whylen, "%s: %s", path, strerror(errno));
			goto out;
		}
		if (!found++)
			snprintf(first, sizeof(first), "%s", path);
		while (fgets(line, sizeof(line), f) != NULL) {
			char *k = line, *v, *e;
			while (isspace((unsigned char)*k))
				k++;
			if (*k == '#' || (v = strchr(k, ':')) == NULL)
				continue;
			for (e = v; e > k && isspace((unsigned char)e[-1]); e--)
				;
			*e = '\0';
			for (v++; isspace((unsigned char)*v); v++)
				;
			for (e = v + strlen(v); e > v && isspace((unsigned char)e[-1]); )
				*--e = '\0';
			for (size_t i = 0; i < K_N; i++)
				if (strcmp(k, keys[i]) == 0 && val[i] == NULL &&
				    (val[i] = strdup(v)) == NULL) {
					fclose(f);
					snprintf(why, whylen, "out of memory");
					goto out;
				}
		}
		fclose(f);
	}
	if (!found) {
		r = 0;
		goto out;
	}
	if (val[K_MODULE] == NULL || val[K_MODULE][0] == '\0') {
		snprintf(why, whylen, "%s has no \"module:\" line%s", first,
		    val[K_REMOTE] ? " (a p11-kit remote module; hsmfs loads "
		    "libraries only)" : "");
		goto out;
	}
	if (val[K_ENABLE] != NULL && !in_list(val[K_ENABLE], progname)) {
		snprintf(why, whylen, "%s: enable-in: %s does not name %s, so "
		    "p11-kit keeps the module out of it", first, val[K_ENABLE],
		    progname);
		r = -2;
		goto out;
	}
	if (val[K_ENABLE] == NULL && val[K_DISABLE] != NULL &&
	    in_list(val[K_DISABLE], progname)) {
		snprintf(why, whylen, "%s: disable-in: %s names %s, so p11-kit "
		    "keeps the module out of it", first, val[K_DISABLE], progname);
		r = -2;
		goto out;
	}
	/* Relative names live in p11-kit's module directory. */
	if (val[K_MODULE][0] == '/')
		snprintf(out, outlen, "%s", val[K_MODULE]);
	else
		snprintf(out, outlen, "%s/%s", P11KIT_MODULE_PATH, val[K_MODULE]);
	r = 1;
out:
	for (size_t i = 0; i < K_N; i++)
		free(val[i]);
	return r;
}

int
p11kit_lookup(const char *name, char *out, size_t outlen, char *tried,
    size_t triedlen, char *why, size_t whylen)
{
	static const char *const dirs[] = {
		"/etc/pkcs11/modules", P11KIT_SYSTEM_MODULES, P11KIT_PACKAGE_MODULES,
	};

	return p11kit_lookup_in(dirs, sizeof(dirs) / sizeof(dirs[0]),
	    program_invocation_short_name, name, out, outlen, tried, triedlen,
	    why, whylen);
}
