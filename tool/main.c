/* hsmfs-tool: administration around the mount. One subcommand per file;
 * this table is the only place that lists them. */
#include "tool/tool.h"
#include "common/err.h"
#include "common/log.h"
#include "crypto/engine.h"
#include "common/util.h"

#include <stdlib.h>
#include <sys/prctl.h>
#include <string.h>
#include <unistd.h>

static const struct tool_cmd cmds[] = {
	{"check", cmd_check, "-o config=FILE",
	    "check every descriptor's key and run a sign/verify and encrypt/decrypt round trip", 1},
	{"scramble-pin", cmd_scramble_pin, "",
	    "read a PIN on stdin, print the pin.encrypted value", 1},
	{"keygen", cmd_keygen,
	    "-o config=FILE --key NAME [--bits 2048|3072|4096] [--subject DN] "
	    "[--csr OUT.pem] [--self-signed]",
	    "generate an RSA key pair on the token under the key's alias", 1},
	{"import-cert", cmd_import_cert, "-o config=FILE --key NAME CERT.pem",
	    "store a CA-issued certificate on the token next to its key", 1},
	{"verify-zip", cmd_verify_zip, "[-o config=FILE] [--truststore PEM] ZIP...",
	    "verify a JAR-signed zip", 1},
	{"verify-history", cmd_verify_history,
	    "-o config=FILE[,shared=URI[,shared_password=FILE]] [STORE] OBJECT [--expect CHECKPOINT]",
	    "verify an object's history offline", 1},
	{"open-field", cmd_open_field, "-o config=FILE",
	    "read an NX02 envelope on stdin, print the plaintext", 1},
	{"seal-field", cmd_seal_field, "-o config=FILE",
	    "read a plaintext on stdin, print an NX02 envelope", 1},
	{"rekey-fields", cmd_rekey_fields, "-o config=FILE[,shared=URI[,shared_password=FILE]] [STORE]",
	    "rewrap every field to the newest EncryptedFields version", 1},
	{"db-init", cmd_db_init, "[--check] -o config=FILE,shared=URL[,shared_password=FILE][,daemon_role=NAME][,origin=NAME]",
	    "create or migrate the shared store's schema, record the configuration", 1},
	{"migrate-store", cmd_migrate_store, "-o config=FILE,shared=URL[,shared_password=FILE] STORE",
	    "move a local store's fields, histories and queued mail into the shared store", 1},
	{"status", cmd_status, "MOUNTPOINT [--format=text|prometheus|json]",
	    "show a mount's status (text), or its metrics (prometheus, json)", 0},
	{"reload", cmd_reload, "MOUNTPOINT",
	    "reload the mount's configuration (SIGHUP) and report the outcome", 0},
};
#define NCMDS (sizeof(cmds) / sizeof(cmds[0]))

void
tool_usage(FILE *f, const char *name)
{
	for (size_t i = 0; i < NCMDS; i++)
		if (strcmp(cmds[i].name, name) == 0)
			fprintf(f, "usage: hsmfs-tool %s %s\n  %s\n", name,
			    cmds[i].usage, cmds[i].help);
}

int
tool_progress_enabled(void)
{
	return isatty(STDERR_FILENO);
}

int
tool_common_opt(int argc, char **argv, int *i, struct tool_opts *o)
{
	char *a = argv[*i], *val;
	char *tok, *save;

	if (strcmp(a, "-o") == 0) {
		if (*i + 1 >= argc) {
			fprintf(stderr, "hsmfs-tool %s: -o needs a value\n", argv[0]);
			return -1;
		}
		val = argv[++*i];
	} else if (strncmp(a, "-o", 2) == 0) {
		val = a + 2;
	} else if (strcmp(a, "--truststore") == 0) {
		if (*i + 1 >= argc) {
			fprintf(stderr, "hsmfs-tool %s: --truststore needs a file\n",
			    argv[0]);
			return -1;
		}
		o->truststore = argv[++*i];
		return 1;
	} else {
		return 0;
	}
	/* Split in place, like getsubopt(3): argv is ours and lives as long
	 * as the command, so the values need no copies. */
	for (tok = strtok_r(val, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (strncmp(tok, "config=", 7) == 0)
			o->config = tok + 7;
		else if (strncmp(tok, "truststore=", 11) == 0)
			o->truststore = tok + 11;
		else if (strncmp(tok, "shared=", 7) == 0)
			o->shared = tok + 7;
		else if (strncmp(tok, "shared_password=", 16) == 0)
			o->shared_password = tok + 16;
		else if (strncmp(tok, "classpath=", 10) == 0) {
			/* Process-wide: every engine_load() of the command. */
			if (engine_set_classpath(tok + 10) != 0) {
				fprintf(stderr, "hsmfs-tool %s: %s\n", argv[0],
				    err_detail());
				return -1;
			}
		}
		else {
			fprintf(stderr, "hsmfs-tool %s: unknown option -o %s\n",
			    argv[0], tok);
			return -1;
		}
	}
	return 1;
}

static void
usage_all(FILE *f)
{
	fprintf(f, "usage: hsmfs-tool COMMAND [ARGS]   (hsmfs-tool COMMAND --help)\n\n");
	for (size_t i = 0; i < NCMDS; i++)
		fprintf(f, "  %-15s %s\n", cmds[i].name, cmds[i].help);
	fprintf(f, "\nexit status: 0 success, 1 failed check or verification, "
	    "2 usage or environment error\n");
}

int
main(int argc, char **argv)
{
	/* Before any configuration is read: PINs (pin, pin-value in a
	 * pkcs11: URI, pin.file) must not reach a core dump. */
	prctl(PR_SET_DUMPABLE, 0);
	log_init("hsmfs-tool", 0, LOG_WARNING);
	if (argc < 2) {
		usage_all(stderr);
		return TOOL_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		usage_all(stdout);
		return TOOL_OK;
	}
	if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0 ||
	    strcmp(argv[1], "version") == 0) {
		printf("hsmfs-tool %s\n", HSMFS_VERSION);
		return TOOL_OK;
	}
	for (size_t i = 0; i < NCMDS; i++) {
		if (strcmp(cmds[i].name, argv[1]) != 0)
			continue;
		for (int j = 2; j < argc; j++) {
			if (strcmp(argv[j], "--help") == 0 || strcmp(argv[j], "-h") == 0) {
				tool_usage(stdout, cmds[i].name);
				return TOOL_OK;
			}
		}
		/* Before the config is read: pin.encrypted is unscrambled
		 * while parsing it. */
		if (cmds[i].secrets)
			secmem_harden(4 << 20);
		return cmds[i].fn(argc - 1, argv + 1);
	}
	fprintf(stderr, "hsmfs-tool: unknown command '%s'\n\n", argv[1]);
	usage_all(stderr);
	return TOOL_USAGE;
}
