/* Set-up shared by the field subcommands: the config and its keys, with
 * the same protections as the daemon for plaintext (no core dumps,
 * secure heap, stdout written with write(2)). */
#include "tool/fieldtool.h"
#include "tool/tool.h"
#include "crypto/envelope.h"
#include "common/err.h"
#include "common/util.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

static const char *shared_uri, *shared_pw;

void
fieldtool_shared(const char **uri, const char **password)
{
	*uri = shared_uri;
	*password = shared_pw;
}

int
fieldtool_args(const char *cmd, int argc, char **argv, const char **config,
    char **pos, int maxpos, int *npos)
{
	struct tool_opts o = {0};
	*npos = 0;
	for (int i = 1; i < argc; i++) {
		int r = tool_common_opt(argc, argv, &i, &o);
		if (r < 0)
			return TOOL_USAGE;
		if (r > 0)
			continue;
		if (argv[i][0] == '-' || *npos >= maxpos) {
			fprintf(stderr, "hsmfs-tool %s: unexpected argument %s\n", cmd,
			    argv[i]);
			tool_usage(stderr, cmd);
			return TOOL_USAGE;
		}
		pos[(*npos)++] = argv[i];
	}
	if (o.config == NULL) {
		fprintf(stderr, "hsmfs-tool %s: missing -o config=FILE\n", cmd);
		tool_usage(stderr, cmd);
		return TOOL_USAGE;
	}
	*config = o.config;
	shared_uri = o.shared;
	shared_pw = o.shared_password;
	return TOOL_OK;
}

int
fieldtool_open(const char *cmd, const char *config, struct fieldtool *t)
{
	int r;

	memset(t, 0, sizeof(*t));
	if ((r = engine_load(config, &t->engine)) != 0) {
		fprintf(stderr, "hsmfs-tool %s: %s\n", cmd, err_detail());
		return TOOL_USAGE;
	}
	if ((t->newest = engine_newest(t->engine, ENGINE_ENCRYPTED_FIELDS)) == NULL) {
		fprintf(stderr, "hsmfs-tool %s: %s: no EncryptedFields descriptor "
		    "configured\n", cmd, config);
		goto fail;
	}
	for (size_t i = 0; i < t->engine->ndescs; i++)
		if (strcmp(t->engine->descs[i].name, ENGINE_ENCRYPTED_FIELDS) == 0 &&
		    envelope_descriptor_check(&t->engine->descs[i]) != 0) {
			fprintf(stderr, "hsmfs-tool %s: %s: %s\n", cmd, config,
			    err_detail());
			goto fail;
		}
	if ((r = keyring_open(t->engine, &t->keys)) != 0) {
		fprintf(stderr, "hsmfs-tool %s: %s: %s (%s)\n", cmd, config,
		    err_detail(), hsmfs_strerror(r));
		goto fail;
	}
	return TOOL_OK;
fail:
	fieldtool_close(t);
	return TOOL_USAGE;
}

void
fieldtool_close(struct fieldtool *t)
{
	keyring_free(t->keys);
	engine_free(t->engine);
	memset(t, 0, sizeof(*t));
}

/* Not util_read_file: the plaintext read here goes into the secure heap
 * (secmem_alloc/secmem_realloc, wiped on free), and util_read_file uses
 * plain malloc. crypto/pin.c reads pin.file the same way for the same
 * reason. */
int
fieldtool_read_stdin(const char *cmd, size_t max, uint8_t **buf, size_t *len,
    size_t *cap)
{
	size_t n = 0, c = 4096;
	uint8_t *b = secmem_alloc(c);
	if (b == NULL)
		return TOOL_USAGE;
	for (;;) {
		ssize_t got;
		if (n == c) {
			uint8_t *nb;
			if (c > max) {
				fprintf(stderr, "hsmfs-tool %s: input larger than %zu "
				    "bytes\n", cmd, max);
				secmem_free(b, c);
				return TOOL_USAGE;
			}
			if ((nb = secmem_realloc(b, c, c * 2)) == NULL) {
				secmem_free(b, c);
				return TOOL_USAGE;
			}
			b = nb;
			c *= 2;
		}
		got = read(STDIN_FILENO, b + n, c - n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			fprintf(stderr, "hsmfs-tool %s: reading stdin: %s\n", cmd,
			    strerror(errno));
			secmem_free(b, c);
			return TOOL_USAGE;
		}
		if (got == 0)
			break;
		n += (size_t)got;
	}
	if (n > max) {
		fprintf(stderr, "hsmfs-tool %s: input larger than %zu bytes\n", cmd,
		    max);
		secmem_free(b, c);
		return TOOL_USAGE;
	}
	*buf = b;
	*len = n;
	*cap = c;
	return TOOL_OK;
}

int
names_add(void *arg, const char *name)
{
	struct names *ns = arg;

	if (ns->err)
		return ns->err;
	if (ns->n == ns->cap) {
		size_t cap = ns->cap ? ns->cap * 2 : 64;
		char **nv = realloc(ns->v, cap * sizeof(*nv));
		if (nv == NULL)
			return ns->err = HSMFS_ERR_NOMEM;
		ns->v = nv;
		ns->cap = cap;
	}
	if ((ns->v[ns->n] = strdup(name)) == NULL)
		return ns->err = HSMFS_ERR_NOMEM;
	ns->n++;
	return 0;
}

void
names_free(struct names *ns)
{
	for (size_t i = 0; i < ns->n; i++)
		free(ns->v[i]);
	free(ns->v);
	memset(ns, 0, sizeof(*ns));
}
