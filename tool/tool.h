/* hsmfs-tool: one subcommand per file, dispatched from tool/main.c.
 * Exit codes (contract §7): 0 success, 1 failed check or verification,
 * 2 usage or environment error. */
#ifndef HSMFS_TOOL_H
#define HSMFS_TOOL_H

#include <stdio.h>

#define TOOL_OK 0
#define TOOL_FAIL 1
#define TOOL_USAGE 2

struct tool_cmd {
	const char *name;
	int (*fn)(int argc, char **argv);   /* argv[0] is the command name */
	const char *usage;                  /* arguments after the name */
	const char *help;                   /* one line */
	int secrets;                        /* reads PINs or plaintext: run
	                                       under secmem_harden() */
};

/* Shared option handling: "-o config=FILE[,truststore=PEM][,classpath=DIRS]"
 * (classpath= is applied at once, engine_set_classpath) and
 * "--help". Returns 1 when the argument was consumed (with *i advanced),
 * 0 when it is not a common option, -1 on a usage error (message printed). */
struct tool_opts {
	const char *config;
	const char *truststore;
	const char *shared;           /* shared=URI (the fields tools) */
	const char *shared_password;  /* shared_password=FILE */
};
int tool_common_opt(int argc, char **argv, int *i, struct tool_opts *o);
/* Print the command's usage and help to f. */
void tool_usage(FILE *f, const char *name);
/* True when stderr is a terminal (progress lines go there). */
int tool_progress_enabled(void);

int cmd_check(int argc, char **argv);
int cmd_scramble_pin(int argc, char **argv);
int cmd_keygen(int argc, char **argv);
int cmd_import_cert(int argc, char **argv);
int cmd_verify_zip(int argc, char **argv);
int cmd_verify_history(int argc, char **argv);
int cmd_open_field(int argc, char **argv);
int cmd_seal_field(int argc, char **argv);
int cmd_rekey_fields(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_reload(int argc, char **argv);
int cmd_db_init(int argc, char **argv);
int cmd_migrate_store(int argc, char **argv);

#endif
