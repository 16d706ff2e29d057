/* RFC 7512 pkcs11: URI parsing (see p11uri.h). */
#include "crypto/p11uri.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

static int __attribute__((format(printf, 3, 4)))
fail(char *why, size_t whylen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, whylen, fmt, ap);
	va_end(ap);
	return -1;
}

static int
hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Percent-decode s[0..n) into a new string; NULL on a bad escape or an
 * encoded NUL (*bad = 1) or no memory (*bad = 0). */
char *
p11uri_pct_decode(const char *s, size_t n, int *bad)
{
	char *out = malloc(n + 1), *o = out;

	*bad = 0;
	if (out == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] != '%') {
			*o++ = s[i];
			continue;
		}
		if (i + 2 >= n || hexval((unsigned char)s[i + 1]) < 0 ||
		    hexval((unsigned char)s[i + 2]) < 0 ||
		    (hexval((unsigned char)s[i + 1]) | hexval((unsigned char)s[i + 2])) == 0) {
			free(out);
			*bad = 1;
			return NULL;
		}
		*o++ = (char)(hexval((unsigned char)s[i + 1]) * 16 +
		    hexval((unsigned char)s[i + 2]));
		i += 2;
	}
	*o = '\0';
	return out;
}

void
p11uri_clear(struct p11uri *u)
{
	free(u->token);
	free(u->object);
	free(u->module_path);
	free(u->module_name);
	free(u->pin_source);
	if (u->pin_value != NULL)
		OPENSSL_clear_free(u->pin_value, strlen(u->pin_value));
	memset(u, 0, sizeof(*u));
}

/* A path attribute (sep ';'). Returns 0 or fail() when it is done with
 * v (freed), 1 with *slot set (NULL: not a path attribute) when the
 * caller stores v. */
static int
path_attribute(struct p11uri *u, const char *key, char *v, char ***slot,
    char *why, size_t whylen)
{
	if (strcmp(key, "token") == 0)
		*slot = &u->token;
	else if (strcmp(key, "object") == 0)
		*slot = &u->object;
	else if (strcmp(key, "type") == 0) {
		int ok = strcmp(v, "private") == 0;
		free(v);
		if (!ok)
			return fail(why, whylen, "pkcs11: URI type= must be "
			    "\"private\" (hsmfs finds the certificate by the "
			    "same label)");
		return 0;
	} else if (strcmp(key, "slot-id") == 0) {
		char *end;
		errno = 0;
		u->slot = strtoul(v, &end, 10);
		if (!isdigit((unsigned char)v[0]) || *end != '\0' ||
		    errno != 0) {
			free(v);
			return fail(why, whylen, "pkcs11: URI slot-id= must be "
			    "a decimal slot ID");
		}
		if (u->has_slot++) {
			free(v);
			return fail(why, whylen, "pkcs11: URI has slot-id= "
			    "twice; keep one");
		}
		free(v);
		return 0;
	}
	return 1;
}

/* A query attribute (sep '&'); returns as path_attribute. */
static int
query_attribute(struct p11uri *u, const char *key, char *v, char ***slot,
    char *why, size_t whylen)
{
	if (strcmp(key, "module-path") == 0) {
		if (v[0] != '/') {
			free(v);
			return fail(why, whylen, "pkcs11: URI module-path= "
			    "must be an absolute path (or use module-name=)");
		}
		*slot = &u->module_path;
	} else if (strcmp(key, "module-name") == 0) {
		if (strchr(v, '/') != NULL) {
			free(v);
			return fail(why, whylen, "pkcs11: URI module-name= is "
			    "a name, not a path; use module-path= for a path");
		}
		*slot = &u->module_name;
	} else if (strcmp(key, "pin-source") == 0) {
		/* RFC 7512: a URI; file: is the one hsmfs reads. */
		if (strncmp(v, "file:", 5) == 0) {
			const char *p = v + 5;
			if (strncmp(p, "//", 2) == 0) {
				p += 2;
				if (strncmp(p, "localhost/", 10) == 0)
					p += 9;
				else if (*p != '/') {
					free(v);
					return fail(why, whylen, "pkcs11: URI pin-source= "
					    "names a remote host; give a local file");
				}
			}
			memmove(v, p, strlen(p) + 1);
		} else if (strchr(v, ':') != NULL && v[0] != '/') {
			free(v);
			return fail(why, whylen, "pkcs11: URI pin-source= must be "
			    "a file: URI or a file path");
		}
		if (v[0] == '\0') {
			free(v);
			return fail(why, whylen, "pkcs11: URI pin-source= is "
			    "empty");
		}
		*slot = &u->pin_source;
	} else if (strcmp(key, "pin-value") == 0) {
		*slot = &u->pin_value;
	}
	return 1;
}

/* One "name=value" of the path (sep ';') or the query (sep '&'). */
static int
attribute(struct p11uri *u, const char *a, size_t n, int query, char *why,
    size_t whylen)
{
	const char *eq = memchr(a, '=', n);
	size_t kl;
	char key[32], *v;
	char **slot = NULL;
	int bad, r;

	/* The query may hold pin-value: never echo it into a log line. */
	if (eq == NULL && query)
		return fail(why, whylen, "pkcs11: URI has a query attribute "
		    "without '=' (not shown: it may hold a PIN); write name=value");
	if (eq == NULL)
		return fail(why, whylen, "pkcs11: URI attribute \"%.*s\" has no "
		    "'='; write name=value", (int)(n > 64 ? 64 : n), a);
	kl = (size_t)(eq - a);
	if (kl == 0 || kl >= sizeof(key))
		return fail(why, whylen, "pkcs11: URI has an attribute with %s "
		    "name", kl ? "an overlong" : "an empty");
	memcpy(key, a, kl);
	key[kl] = '\0';
	if ((v = p11uri_pct_decode(eq + 1, n - kl - 1, &bad)) == NULL)
		return bad ? fail(why, whylen, "pkcs11: URI attribute %s: bad "
		    "%%-escape (or an encoded NUL) in its value", key) :
		    fail(why, whylen, "out of memory");

	r = query ? query_attribute(u, key, v, &slot, why, whylen) :
	    path_attribute(u, key, v, &slot, why, whylen);
	if (r != 1)
		return r;
	if (slot == NULL) {
		static const char *const known[] = {"token", "object", "type",
			"slot-id", "module-path", "module-name", "pin-source",
			"pin-value", NULL};
		for (size_t i = 0; known[i]; i++)
			if (strcasecmp(key, known[i]) == 0) {
				OPENSSL_clear_free(v, strlen(v));
				return fail(why, whylen, "pkcs11: URI attribute '%s': "
				    "attribute names are lower case (p11-kit and OpenSSL "
				    "read them so); write %s=", key, known[i]);
			}
		r = fail(why, whylen, "pkcs11: URI %s attribute '%s' is not "
		    "supported by hsmfs (it selects the token by token= or "
		    "slot-id=, the key by object=, the module by module-path= or "
		    "module-name=, the PIN by pin-source= or pin-value=); remove "
		    "it", query ? "query" : "path", key);
		OPENSSL_clear_free(v, strlen(v));
		return r;
	}
	if (*slot != NULL) {
		OPENSSL_clear_free(v, strlen(v));
		return fail(why, whylen, "pkcs11: URI has %s= twice; keep one",
		    key);
	}
	if (v[0] == '\0' && slot != &u->pin_value) {
		free(v);
		return fail(why, whylen, "pkcs11: URI %s= is empty; give a value "
		    "or remove it", key);
	}
	*slot = v;
	return 0;
}

int
p11uri_parse(const char *uri, struct p11uri *out, char *why, size_t whylen)
{
	const char *s, *q, *end;

	memset(out, 0, sizeof(*out));
	if (strncasecmp(uri, "pkcs11:", 7) != 0)
		return fail(why, whylen, "not a pkcs11: URI (RFC 7512); write "
		    "pkcs11:token=...;object=...");
	s = uri + 7;
	q = strchr(s, '?');
	end = q ? q : s + strlen(s);
	if (strchr(uri, '#') != NULL)
		return fail(why, whylen, "pkcs11: URI may not hold a '#' "
		    "fragment");
	while (s < end) {
		const char *sep = memchr(s, ';', (size_t)(end - s));
		size_t n = sep ? (size_t)(sep - s) : (size_t)(end - s);
		if (n > 0 && attribute(out, s, n, 0, why, whylen) != 0)
			goto bad;
		s += n + (sep ? 1 : 0);
	}
	if (q != NULL) {
		s = q + 1;
		end = s + strlen(s);
		while (s < end) {
			const char *sep = memchr(s, '&', (size_t)(end - s));
			size_t n = sep ? (size_t)(sep - s) : (size_t)(end - s);
			if (n > 0 && attribute(out, s, n, 1, why, whylen) != 0)
				goto bad;
			s += n + (sep ? 1 : 0);
		}
	}
	if (out->module_path != NULL && out->module_name != NULL) {
		fail(why, whylen, "pkcs11: URI has both module-path= and "
		    "module-name=; keep one");
		goto bad;
	}
	if (out->pin_source != NULL && out->pin_value != NULL) {
		fail(why, whylen, "pkcs11: URI has both pin-source= and "
		    "pin-value=; keep one");
		goto bad;
	}
	if (out->object == NULL) {
		fail(why, whylen, "pkcs11: URI has no object= (the label of the "
		    "private key and its certificate); add it");
		goto bad;
	}
	return 0;
bad:
	p11uri_clear(out);
	return -1;
}
