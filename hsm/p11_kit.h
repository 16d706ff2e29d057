/* p11-kit's module registry: "NAME.module" files whose "module:" line
 * names the library (p11-kit(8), pkcs11.conf(5)). Read directly, so
 * resolving one name loads no other registered module. */
#ifndef HSMFS_HSM_P11_KIT_H
#define HSMFS_HSM_P11_KIT_H

#include <stddef.h>

/* The library registered as name (a bare name, e.g. "softhsm2"): 1 with
 * the path in out, 0 when no registry file names it, -1 when one does
 * but is unreadable or has no module: line, -2 when its enable-in /
 * disable-in keep this program (program_invocation_short_name) out
 * (reason in why). tried gets the registry files looked at,
 * comma-separated. */
int p11kit_lookup(const char *name, char *out, size_t outlen, char *tried,
    size_t triedlen, char *why, size_t whylen);
/* The same over given directories (earliest wins key by key) and
 * program name; for tests. */
int p11kit_lookup_in(const char *const *dirs, size_t ndirs,
    const char *progname, const char *name, char *out, size_t outlen,
    char *tried, size_t triedlen, char *why, size_t whylen);

#endif
