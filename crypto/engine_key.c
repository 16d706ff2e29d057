/* Keys of engineSignEncrypt.xml (split out of engine.c): the <key>
 * parser for served, unserved and orphan keys, locationValue resolution
 * (classpath:, file:, relative paths), pkcs11: URIs, and -o classpath=. */
#include "crypto/engine.h"
#include "crypto/engine_int.h"
#include "crypto/p11uri.h"
#include "crypto/pin.h"
#include "common/err.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

/* ---- keys ---- */

/* -o classpath=: absolute directories separated by ':'; NULL means the
 * configuration file's directory. */
static char *classpath_dirs;

static const char *
errno_or_notdir(const char *path)
{
	struct stat st;

	return stat(path, &st) != 0 ? strerror(errno) : "not a directory";
}

int
engine_set_classpath(const char *dirs)
{
	char *copy = NULL, *out = NULL, *save = NULL, *tok;
	size_t n = 0, cap;
	int r = HSMFS_ERR_CONFIG;

	if (dirs == NULL) {
		free(classpath_dirs);
		classpath_dirs = NULL;
		return 0;
	}
	cap = strlen(dirs) + 1;
	if ((copy = strdup(dirs)) == NULL)
		return HSMFS_ERR_NOMEM;
	if (dirs[0] == '\0' || dirs[0] == ':' || strstr(dirs, "::") ||
	    dirs[strlen(dirs) - 1] == ':') {
		err_set("classpath=%s: an empty directory in the list; give "
		    "DIR[:DIR...]", dirs);
		goto out;
	}
	for (tok = strtok_r(copy, ":", &save); tok; tok = strtok_r(NULL, ":", &save)) {
		/* Absolute, but symlinks kept: WEB-INF/classes under a
		 * "current -> release-N" link must follow the link when the
		 * configuration is read again after an upgrade, as Java does. */
		char *abs = NULL, cwd[PATH_MAX];
		struct stat st;
		char *grown;
		if (tok[0] == '/')
			abs = strdup(tok);
		else if (getcwd(cwd, sizeof(cwd)) == NULL) {
			err_set("classpath=%s: %s: cannot make it absolute: %s", dirs,
			    tok, strerror(errno));
			goto out;
		} else if (asprintf(&abs, "%s/%s", cwd, tok) < 0)
			abs = NULL;
		if (abs == NULL) {
			r = HSMFS_ERR_NOMEM;
			goto out;
		}
		if (stat(abs, &st) != 0 || !S_ISDIR(st.st_mode)) {
			const char *why = errno_or_notdir(abs);
			err_set("classpath=%s: %s: %s", dirs, tok, why);
			free(abs);
			goto out;
		}
		cap += strlen(abs) + 1;
		if ((grown = realloc(out, cap)) == NULL) {
			free(abs);
			r = HSMFS_ERR_NOMEM;
			goto out;
		}
		out = grown;
		n += (size_t)sprintf(out + n, "%s%s", n ? ":" : "", abs);
		free(abs);
	}
	free(classpath_dirs);
	classpath_dirs = out;
	out = NULL;
	r = 0;
out:
	free(out);
	free(copy);
	return r;
}

/* A key is served when a served descriptor names it. */
static int
key_is_served(const struct engine *e, const char *name)
{
	for (size_t i = 0; i < e->ndescs; i++)
		if (e->descs[i].key_name && strcmp(e->descs[i].key_name, name) == 0)
			return 1;
	return 0;
}

/* locationValue as a file path: "classpath:NAME" looked up in the class
 * path, "file:" URLs decoded, relative P12 paths against the config's
 * directory. Returns 0 with *out malloc'd, 1 with a reason in why
 * (without the key name), or HSMFS_ERR_NOMEM. */
static int
resolve_location(const struct parse *p, const char *v, int p12, char **out,
    char *why, size_t whylen)
{
	char *path = NULL;
	int bad;

	*out = NULL;
	if (strncmp(v, "classpath:", 10) == 0) {
		const char *name = v + 10, *dirs = classpath_dirs ? classpath_dirs :
		    p->dir;
		size_t tl = 0;
		while (*name == '/')
			name++;
		if (!p12) {
			snprintf(why, whylen, "a PKCS#11 module is a native library, "
			    "not a class-path resource; give its path or name");
			return 1;
		}
		if (*name == '\0') {
			snprintf(why, whylen, "no file name after \"classpath:\"");
			return 1;
		}
		/* Java's class loader finds no resource outside its
		 * directories; neither does hsmfs. */
		for (const char *c = name; *c; c = strchr(c, '/') ?
		    strchr(c, '/') + 1 : c + strlen(c))
			if (strncmp(c, "..", 2) == 0 && (c[2] == '/' || c[2] == '\0')) {
				snprintf(why, whylen, "a \"..\" would leave the class "
				    "path (the Identity Manager would not find it "
				    "either); give the file as a path or file: URL");
				return 1;
			}
		tl = (size_t)snprintf(why, whylen, "not found; tried ");
		for (const char *d = dirs; *d; ) {
			const char *c = strchr(d, ':');
			size_t dl = c ? (size_t)(c - d) : strlen(d);
			struct stat st;
			if (asprintf(&path, "%.*s/%s", (int)dl, d, name) < 0)
				return HSMFS_ERR_NOMEM;
			if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
				*out = path;
				return 0;
			}
			if (tl < whylen)
				tl += (size_t)snprintf(why + tl, whylen - tl, "%s%s",
				    d == dirs ? "" : ", ", path);
			free(path);
			path = NULL;
			d += dl + (c ? 1 : 0);
		}
		if (tl < whylen)
			snprintf(why + tl, whylen - tl, " (%s; set -o classpath="
			    "DIR[:DIR...] to look elsewhere)", classpath_dirs ?
			    "-o classpath=" : "the configuration file's directory");
		return 1;
	}
	if (strncmp(v, "file:", 5) == 0) {
		const char *s = v + 5;
		if (strncmp(s, "//", 2) == 0) {
			s += 2;
			if (strncmp(s, "localhost/", 10) == 0)
				s += 9;
			else if (*s != '/') {
				snprintf(why, whylen, "a file: URL naming a remote host; "
				    "give a local file");
				return 1;
			}
		}
		if ((path = p11uri_pct_decode(s, strlen(s), &bad)) == NULL) {
			if (!bad)
				return HSMFS_ERR_NOMEM;
			snprintf(why, whylen, "bad %%-escape in the file: URL");
			return 1;
		}
		if (path[0] == '\0') {
			free(path);
			snprintf(why, whylen, "no file name in the file: URL");
			return 1;
		}
		/* RFC 8089: a file: URL holds an absolute path. "file:x.so"
		 * would otherwise become a bare name searched elsewhere. */
		if (path[0] != '/') {
			free(path);
			snprintf(why, whylen, "a file: URL holds an absolute path "
			    "(file:/dir/name); give a path without file: for a "
			    "relative one");
			return 1;
		}
	} else if ((path = strdup(v)) == NULL)
		return HSMFS_ERR_NOMEM;
	if (path[0] != '/' && strchr(path, '/') != NULL && !p12) {
		/* dlopen would resolve it against whatever cwd hsmfs has. */
		free(path);
		snprintf(why, whylen, "a relative path; give the PKCS#11 module "
		    "as an absolute path or a bare name");
		return 1;
	}
	if (path[0] != '/' && p12) {
		/* Like pin.file: relative to the config, as hsmfs runs in /. */
		char *abs;
		int n = asprintf(&abs, "%s/%s", p->dir, path);
		free(path);
		if (n < 0)
			return HSMFS_ERR_NOMEM;
		path = abs;
	}
	*out = path;
	return 0;
}

static int
key_type(const char *v, enum engine_key_type *type)
{
	if (strcasecmp(v, "HSM") == 0)
		*type = ENGINE_KEY_HSM;
	else if (strcasecmp(v, "P12") == 0 || strcasecmp(v, "PKCS12") == 0)
		*type = ENGINE_KEY_P12;
	else {
		*type = ENGINE_KEY_OTHER;
		return -1;
	}
	return 0;
}

/* A key no served descriptor names: parsed for listings, never opened,
 * so a missing file or module behind it cannot stop the mount. No PIN
 * is kept; other attributes are accepted as the Identity Manager may
 * use them. */
static int
parse_key_unserved(const struct parse *p, xmlNodePtr t, struct engine_key *k)
{
	char why[64], *v = NULL;
	int r;

	(void)key_type(k->type_name, &k->type);
	if ((r = attr_get(t, "alias", &k->alias)) != 0 ||
	    (r = attr_get(t, "locationValue", &v)) != 0)
		return r;
	if (v == NULL || k->type == ENGINE_KEY_OTHER)
		k->location = v;
	else {
		r = resolve_location(p, v, k->type == ENGINE_KEY_P12, &k->location,
		    why, sizeof(why));
		if (r == HSMFS_ERR_NOMEM) {
			free(v);
			return r;
		}
		if (r != 0)
			k->location = v;   /* unresolved, shown as written */
		else
			free(v);
	}
	return 0;
}

/* uri="pkcs11:..." on an HSM key: each part it gives replaces one
 * attribute, which must then be absent. */
static int
uri_conflict(const struct parse *p, xmlNodePtr t, const char *what,
    const char *attr, const char *part)
{
	if (xmlHasNsProp(t, (const xmlChar *)attr, NULL) == NULL)
		return 0;
	return cfg_err(p, attr_line(p, t, attr), "%s: both %s and uri's %s "
	    "name the same thing; keep one", what, attr, part);
}

/* Where the key lives: locationValue or the uri's module, resolved. */
static int
key_location(const struct parse *p, xmlNodePtr t, struct engine_key *k,
    const char *what, struct p11uri *u)
{
	char why[1024];
	char *v = NULL;
	int r;

	if (u->module_path || u->module_name) {
		if ((r = uri_conflict(p, t, what, "locationValue", u->module_path ?
		    "module-path" : "module-name")) != 0)
			goto out;
		v = strdup(u->module_path ? u->module_path : u->module_name);
		if (v == NULL) {
			r = HSMFS_ERR_NOMEM;
			goto out;
		}
	} else if (k->has_uri) {
		if ((r = attr_get(t, "locationValue", &v)) != 0)
			goto out;
		if (v == NULL || v[0] == '\0') {
			r = cfg_err(p, attr_line(p, t, "uri"), "%s: no PKCS#11 "
			    "module; add locationValue or module-name=/module-path= "
			    "to the uri", what);
			goto out;
		}
	} else if ((r = attr_required(p, t, "locationValue", what, &v)) != 0)
		goto out;
	r = resolve_location(p, v, k->type == ENGINE_KEY_P12, &k->location, why,
	    sizeof(why));
	if (r == 1)
		r = cfg_err(p, attr_line(p, t, u->module_path || u->module_name ?
		    "uri" : "locationValue"), "%s: locationValue=\"%s\": %s", what,
		    v, why);
	free(v);
	v = NULL;
	if (r != 0)
		goto out;
	r = 0;
out:
	free(v);
	return r;
}

/* The label: alias or the uri's object=. */
static int
key_alias(const struct parse *p, xmlNodePtr t, struct engine_key *k,
    const char *what, struct p11uri *u)
{
	int r;

	if (u->object != NULL) {
		if ((r = uri_conflict(p, t, what, "alias", "object=")) != 0)
			goto out;
		k->alias = u->object;
		u->object = NULL;
	} else if ((r = attr_get(t, "alias", &k->alias)) != 0)
		goto out;
	if (k->type == ENGINE_KEY_HSM && k->alias == NULL) {
		r = cfg_err(p, node_line(p, t), "%s: missing attribute 'alias' "
		    "(the CKA_LABEL of the private key and certificate) or object= "
		    "in uri; add it", what);
		goto out;
	}
	if (k->alias != NULL && k->alias[0] == '\0') {
		r = cfg_err(p, attr_line(p, t, "alias"), "%s: attribute 'alias' "
		    "is empty; give the label or remove it", what);
		goto out;
	}
	r = 0;
out:
	return r;
}

/* HSM keys: slot, token label (or the uri's), rawRsaFallback. */
static int
key_token(const struct parse *p, xmlNodePtr t, struct engine_key *k,
    const char *what, struct p11uri *u)
{
	char *v = NULL;
	int r;

	if (k->type == ENGINE_KEY_HSM) {
		if ((r = attr_get(t, "slot", &v)) != 0)
			goto out;
		if (v != NULL) {
			if (u->has_slot) {
				r = uri_conflict(p, t, what, "slot", "slot-id=");
				goto out;
			}
			if (parse_ulong(v, 1, &k->slot) != 0) {
				r = cfg_err(p, attr_line(p, t, "slot"), "slot=\"%s\" of "
				    "%s: use a slot ID as listed by pkcs11-tool -L "
				    "(decimal or 0x hex)", v, what);
				goto out;
			}
			k->has_slot = 1;
			free(v);
			v = NULL;
		} else if (u->has_slot) {
			k->has_slot = 1;
			k->slot = u->slot;
		}
		if (u->token != NULL) {
			if ((r = uri_conflict(p, t, what, "tokenLabel", "token=")) != 0)
				goto out;
			k->token_label = u->token;
			u->token = NULL;
		} else if ((r = attr_get(t, "tokenLabel", &k->token_label)) != 0)
			goto out;
		if (k->token_label != NULL && k->token_label[0] == '\0') {
			r = cfg_err(p, attr_line(p, t, "tokenLabel"), "%s: "
			    "attribute 'tokenLabel' is empty; give the label or "
			    "remove it", what);
			goto out;
		}
		if ((r = attr_get(t, "rawRsaFallback", &v)) != 0)
			goto out;
		if (v != NULL) {
			if (strcasecmp(v, "false") == 0)
				k->no_raw_rsa = 1;
			else if (strcasecmp(v, "true") != 0) {
				r = cfg_err(p, attr_line(p, t, "rawRsaFallback"),
				    "rawRsaFallback=\"%s\" of %s: use true or false",
				    v, what);
				goto out;
			}
			free(v);
			v = NULL;
		}
	}
	r = 0;
out:
	free(v);
	return r;
}

/* Exactly one PIN source; a plain or scrambled PIN checked now. */
static int
key_pin(const struct parse *p, xmlNodePtr t, struct engine_key *k,
    const char *what, struct p11uri *u)
{
	static const char *const pin_attrs[] = {"pin", "pin.encrypted",
		"pin.file", "pin.env", NULL};
	const char *first = NULL;
	int npin = 0, uri_pin = 0;
	int r;

	/* Exactly one PIN source. */
	for (size_t i = 0; pin_attrs[i]; i++) {
		if (xmlHasNsProp(t, (const xmlChar *)pin_attrs[i], NULL) == NULL)
			continue;
		if (npin++ > 0) {
			r = cfg_err(p, attr_line(p, t, pin_attrs[i]), "%s has "
			    "both '%s' and '%s'; keep exactly one PIN source",
			    what, first, pin_attrs[i]);
			goto out;
		}
		first = pin_attrs[i];
	}
	if (u->pin_source || u->pin_value) {
		if (npin > 0) {
			r = cfg_err(p, attr_line(p, t, first), "%s has both '%s' and "
			    "uri's %s; keep exactly one PIN source", what, first,
			    u->pin_source ? "pin-source=" : "pin-value=");
			goto out;
		}
		npin = 1;
	}
	if (npin == 0) {
		r = cfg_err(p, node_line(p, t), "%s has no PIN source; add "
		    "one of pin, pin.encrypted (hsmfs-tool scramble-pin), "
		    "pin.file or pin.env", what);
		goto out;
	}
	if (u->pin_value != NULL) {
		uri_pin = 1;
		k->pin = u->pin_value;
		u->pin_value = NULL;
	} else if ((r = attr_get(t, "pin", &k->pin)) != 0)
		goto out;
	if ((r = attr_get(t, "pin.encrypted", &k->pin_encrypted)) != 0)
		goto out;
	if (k->pin != NULL && k->pin[0] == '\0' && k->type == ENGINE_KEY_HSM) {
		r = cfg_err(p, attr_line(p, t, uri_pin ? "uri" : "pin"), "%s: "
		    "%s is empty; give the token's user PIN", what, uri_pin ?
		    "uri's pin-value=" : "attribute 'pin'");
		goto out;
	}
	if (k->pin_encrypted != NULL) {
		char *pin = NULL;
		if (pin_unscramble(k->pin_encrypted, &pin) != 0) {
			r = cfg_err(p, attr_line(p, t, "pin.encrypted"), "%s: "
			    "%s", what, err_detail());
			goto out;
		}
		pin_free(pin);
	}
	r = 0;
out:
	return r;
}

/* pin.file (or the uri's pin-source=) made absolute; pin.env checked. */
static int
key_pin_file(const struct parse *p, xmlNodePtr t, struct engine_key *k,
    const char *what, struct p11uri *u)
{
	char *v = NULL;
	int r;

	if (u->pin_source != NULL) {
		v = u->pin_source;
		u->pin_source = NULL;
	} else if ((r = attr_get(t, "pin.file", &v)) != 0)
		goto out;
	if (v != NULL) {
		if (v[0] == '\0') {
			r = cfg_err(p, attr_line(p, t, "pin.file"), "%s: "
			    "attribute 'pin.file' is empty; give a file name", what);
			goto out;
		}
		/* Relative: a systemd credential (LoadCredential=) when
		 * $CREDENTIALS_DIRECTORY holds it, else relative to the
		 * config, not to whatever cwd hsmfs has. */
		if (v[0] == '/')
			k->pin_file = v;
		else {
			const char *cred = getenv("CREDENTIALS_DIRECTORY");
			int n = -1;
			if (cred != NULL && cred[0] == '/') {
				if ((n = asprintf(&k->pin_file, "%s/%s", cred, v)) >= 0 &&
				    access(k->pin_file, F_OK) != 0) {
					free(k->pin_file);
					n = -1;
				}
			}
			if (n < 0 && asprintf(&k->pin_file, "%s/%s", p->dir, v) < 0)
				k->pin_file = NULL;
			free(v);
			if (k->pin_file == NULL) {
				r = HSMFS_ERR_NOMEM;
				v = NULL;
				goto out;
			}
		}
		v = NULL;
	}
	if ((r = attr_get(t, "pin.env", &k->pin_env)) != 0)
		goto out;
	if (k->pin_env != NULL && (k->pin_env[0] == '\0' ||
	    strchr(k->pin_env, '=') != NULL)) {
		r = cfg_err(p, attr_line(p, t, "pin.env"), "%s: pin.env=\"%s\" "
		    "is not an environment variable name", what, k->pin_env);
		goto out;
	}
	r = 0;
out:
	free(v);
	return r;
}

static int
key_strict(const struct parse *p, xmlNodePtr t, struct engine_key *k,
    const char *what)
{
	static const char *const hsm_attrs[] = {"name", "locationValue", "pin",
		"pin.encrypted", "pin.file", "pin.env", "alias", "slot",
		"tokenLabel", "rawRsaFallback", "uri", NULL};
	static const char *const p12_attrs[] = {"name", "locationValue", "pin",
		"pin.encrypted", "pin.file", "pin.env", "alias", NULL};
	char why[1024], *uri = NULL;
	struct p11uri u;
	int r;

	memset(&u, 0, sizeof(u));
	if (key_type(k->type_name, &k->type) != 0)
		return cfg_err(p, attr_line(p, t, "name"), "<type name=\"%s\"> of "
		    "%s: unknown key type; use HSM, P12 or PKCS12 (any case)",
		    k->type_name, what);
	if ((r = check_attrs(p, t, k->type == ENGINE_KEY_HSM ? hsm_attrs :
	    p12_attrs, k->type == ENGINE_KEY_HSM ? " of an HSM key" :
	    " of a P12 key")) != 0)
		return r;

	if (k->type == ENGINE_KEY_HSM) {
		/* May hold pin-value=: wiped, never kept. */
		if ((r = attr_get(t, "uri", &uri)) != 0)
			return r;
		if (uri != NULL && p11uri_parse(uri, &u, why, sizeof(why)) != 0) {
			OPENSSL_clear_free(uri, strlen(uri));
			return cfg_err(p, attr_line(p, t, "uri"), "%s: %s", what, why);
		}
		k->has_uri = uri != NULL;
		if (uri != NULL)
			OPENSSL_clear_free(uri, strlen(uri));
	}
	if ((r = key_location(p, t, k, what, &u)) != 0 ||
	    (r = key_alias(p, t, k, what, &u)) != 0 ||
	    (r = key_token(p, t, k, what, &u)) != 0 ||
	    (r = key_pin(p, t, k, what, &u)) != 0 ||
	    (r = key_pin_file(p, t, k, what, &u)) != 0)
		goto out;
	r = 0;
out:
	p11uri_clear(&u);
	return r;
}

/* Back to what the header set (name, line, type name), after a strict
 * parse of a key no descriptor names failed. */
static void
key_reset(struct engine_key *k)
{
	struct engine_key keep = {.name = k->name, .line = k->line,
		.type_name = k->type_name};

	free(k->location);
	free(k->alias);
	free(k->token_label);
	if (k->pin)
		OPENSSL_clear_free(k->pin, strlen(k->pin));
	if (k->pin_encrypted)
		OPENSSL_clear_free(k->pin_encrypted, strlen(k->pin_encrypted));
	free(k->pin_file);
	free(k->pin_env);
	*k = keep;
}

static int
key_named_by_unserved(const struct engine *e, const char *name)
{
	for (size_t i = 0; i < e->nunserved; i++)
		if (e->unserved[i].key_name &&
		    strcmp(e->unserved[i].key_name, name) == 0)
			return 1;
	return 0;
}

int
engine_parse_key(const struct parse *p, xmlNodePtr n, struct engine_key *k)
{
	static const char *const attrs[] = {"name", NULL};
	char what[300];
	xmlNodePtr t;
	int r;

	k->line = (int)node_line(p, n);
	if ((r = attr_required(p, n, "name", "a key", &k->name)) != 0)
		return r;
	k->served = key_is_served(p->e, k->name);
	if (k->served && (r = check_attrs(p, n, attrs, "")) != 0)
		return r;
	for (const char *c = k->name; *c; c++)
		if (iscntrl((unsigned char)*c))
			return cfg_err(p, attr_line(p, n, "name"), "key name "
			    "contains a control character; rename it");
	snprintf(what, sizeof(what), "key %s", k->name);
	if ((r = only_type_child(p, n, what, &t)) != 0)
		return r;
	if ((r = attr_required(p, t, "name", what, &k->type_name)) != 0)
		return r;
	if (k->served)
		return key_strict(p, t, k, what);
	if (key_named_by_unserved(p->e, k->name)) {
		if ((k->problem = strdup("named only by descriptors hsmfs does "
		    "not serve")) == NULL)
			return HSMFS_ERR_NOMEM;
		return parse_key_unserved(p, t, k);
	}
	/* Named by no descriptor: a key being prepared (hsmfs-tool keygen,
	 * import-cert) gets the full checks; one that fails them is kept
	 * unusable, with the reason, so an orphan of the Identity Manager's
	 * file cannot stop the mount. */
	if ((r = check_attrs(p, n, attrs, "")) == 0 &&
	    (r = key_strict(p, t, k, what)) == 0)
		return 0;
	if (r == HSMFS_ERR_NOMEM)
		return r;
	key_reset(k);
	if ((k->problem = strdup(err_detail())) == NULL)
		return HSMFS_ERR_NOMEM;
	err_clear();
	return parse_key_unserved(p, t, k);
}
