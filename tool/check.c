/* hsmfs-tool check: the mount's start-up checks plus, per descriptor, a
 * sign/verify round trip and (for EncryptedFields) an OAEP encrypt with
 * the certificate and unwrap through the HSM. Prints a table. */
#include "tool/tool.h"
#include "crypto/engine.h"
#include "crypto/keyring.h"
#include "common/err.h"
#include "common/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

struct opened {
	const struct engine_key *ek;
	hsm_key *key;
	int r;
	char detail[512];
};

/* Two keys on one token share its login: after a wrong PIN, never try
 * the same token again (tokens lock after a few failures). */
static int
same_token(const struct engine_key *a, const struct engine_key *b)
{
	if (a->type != ENGINE_KEY_HSM || b->type != ENGINE_KEY_HSM)
		return 0;
	if (strcmp(a->location, b->location) != 0)
		return 0;
	if (a->has_slot && b->has_slot)
		return a->slot == b->slot;
	if (a->token_label && b->token_label)
		return strcmp(a->token_label, b->token_label) == 0;
	return a->has_slot == b->has_slot && !a->token_label && !b->token_label;
}

static int
open_one(struct opened *o, struct opened *all, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (&all[i] == o || all[i].ek == NULL)
			continue;
		if ((all[i].r == HSMFS_ERR_PIN_INCORRECT ||
		    all[i].r == HSMFS_ERR_PIN_LOCKED) && same_token(all[i].ek, o->ek)) {
			snprintf(o->detail, sizeof(o->detail),
			    "not tried: PIN failed for the same token (key %s)",
			    all[i].ek->name);
			return o->r = all[i].r;
		}
	}
	err_clear();
	o->r = keyring_open_key(o->ek, 1, &o->key);
	if (o->r != 0)
		snprintf(o->detail, sizeof(o->detail), "%s", err_detail());
	return o->r;
}

int
cmd_check(int argc, char **argv)
{
	struct tool_opts o = {0};
	struct engine *e = NULL;
	struct opened *keys = NULL;
	int failures = 0, rc = TOOL_USAGE;

	for (int i = 1; i < argc; i++) {
		int c = tool_common_opt(argc, argv, &i, &o);
		if (c < 0)
			return TOOL_USAGE;
		if (c == 0) {
			fprintf(stderr, "hsmfs-tool check: unexpected argument '%s'\n",
			    argv[i]);
			tool_usage(stderr, "check");
			return TOOL_USAGE;
		}
	}
	if (o.config == NULL) {
		tool_usage(stderr, "check");
		return TOOL_USAGE;
	}
	/* A config that cannot be read is an environment error (2); one
	 * that reads but does not check is a failed check (1). */
	if (access(o.config, R_OK) != 0) {
		fprintf(stderr, "hsmfs-tool check: %s: cannot read the "
		    "configuration: %s\n", o.config, strerror(errno));
		return TOOL_USAGE;
	}
	if (engine_load(o.config, &e) != 0) {
		fprintf(stderr, "hsmfs-tool check: %s\n", err_detail());
		return TOOL_FAIL;
	}
	if ((keys = calloc(e->nkeys ? e->nkeys : 1, sizeof(*keys))) == NULL)
		goto out;
	for (size_t i = 0; i < e->nkeys; i++)
		keys[i].ek = &e->keys[i];
	for (size_t i = 0; i < e->nkeys; i++) {
		int used = 0;
		for (size_t d = 0; d < e->ndescs; d++)
			used |= e->descs[d].key == &e->keys[i];
		if (used)
			open_one(&keys[i], keys, e->nkeys);
	}

	printf("%-20s %-3s %-34s %-8s %-5s %-5s %-7s\n", "DESCRIPTOR", "VER",
	    "KEY", "BACKEND", "LOAD", "SIGN", "DECRYPT");
	for (size_t d = 0; d < e->ndescs; d++) {
		const struct engine_descriptor *ds = &e->descs[d];
		struct opened *ok = &keys[ds->key - e->keys];
		const char *load = "FAIL", *sign = "-", *dec = "-";
		char why[600] = "";
		if (ok->r == 0 && ok->key) {
			const EVP_MD *md = ds->md ? ds->md : EVP_sha256();
			load = "ok";
			sign = keyring_probe_sign(ok->key, md, why, sizeof(why)) == 0 ?
			    "ok" : "FAIL";
			if (ds->oaep_md) {
				char why2[600] = "";
				dec = keyring_probe_unwrap(ok->key, ds->oaep_md, why2,
				    sizeof(why2)) == 0 ? "ok" : "FAIL";
				if (*why2)
					snprintf(why + strlen(why), sizeof(why) - strlen(why),
					    "%s%s", *why ? "; " : "", why2);
			}
		} else {
			snprintf(why, sizeof(why), "%s", ok->detail);
		}
		printf("%-20s %-3d %-34s %-8s %-5s %-5s %-7s\n", ds->name, ds->version,
		    ds->key_name, ds->key->type == ENGINE_KEY_HSM ? "pkcs11" : "pkcs12",
		    load, sign, dec);
		if (*why) {
			printf("  %s v%d key %s: %s\n", ds->name, ds->version,
			    ds->key_name, why);
			failures++;
		}
	}
	if (e->ndescs == 0)
		printf("(no descriptors configured)\n");
	/* The Identity Manager's other descriptors: listed, keys not opened. */
	for (size_t d = 0; d < e->nunserved; d++) {
		const struct engine_unserved *u = &e->unserved[d];
		printf("%-20s %-3s %-34s %-8s not served by hsmfs (key not opened)\n",
		    u->name, u->version ? u->version : "-",
		    u->key_name ? u->key_name : "-",
		    u->key ? engine_key_type_label(u->key) : "-");
	}
	printf("%s\n", failures ? "check FAILED" : "check passed");
	rc = failures ? TOOL_FAIL : TOOL_OK;
out:
	for (size_t i = 0; keys && i < e->nkeys; i++)
		keyring_close_key(keys[i].key);
	free(keys);
	engine_free(e);
	return rc;
}
