/* hsmfs-tool scramble-pin: one PIN line on stdin (asked without echo on a
 * terminal), the pin.encrypted value on stdout. Reads with read(2) into
 * secure memory so the PIN never sits in a stdio buffer. */
#include "tool/tool.h"
#include "crypto/pin.h"
#include "common/util.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#define PIN_MAX 256

/* One line from fd into buf (NUL-terminated, LF or CRLF stripped).
 * Returns its length, -1 on read error, -2 when longer than PIN_MAX. */
static ssize_t
read_line(int fd, char *buf)
{
	size_t n = 0;
	int toolong = 0;

	for (;;) {
		char c;
		ssize_t got = read(fd, &c, 1);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return -1;
		if (got == 0 || c == '\n')
			break;
		if (n < PIN_MAX)
			buf[n++] = c;
		else
			toolong = 1;
		c = 0;
	}
	if (n > 0 && buf[n - 1] == '\r')
		n--;
	buf[n] = '\0';
	return toolong ? -2 : (ssize_t)n;
}

/* Terminal state to put back if a signal arrives while echo is off. */
static struct termios saved_tty;
static volatile sig_atomic_t tty_quiet;

static void
restore_tty_and_die(int sig)
{
	if (tty_quiet)
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_tty);
	signal(sig, SIG_DFL);
	raise(sig);
}

/* Prompt on stderr and read with echo off when stdin is a terminal. Echo
 * goes off before the prompt appears, so nothing typed after the prompt
 * is ever echoed. */
static ssize_t
ask(const char *prompt, char *buf)
{
	static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP};
	struct sigaction sa, old_sa[5];
	struct termios quiet;
	ssize_t n;
	int tty = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &saved_tty) == 0;

	if (tty) {
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = restore_tty_and_die;
		sigemptyset(&sa.sa_mask);
		for (size_t i = 0; i < 5; i++)
			sigaction(sigs[i], &sa, &old_sa[i]);
		quiet = saved_tty;
		quiet.c_lflag &= ~(tcflag_t)ECHO;
		quiet.c_lflag |= ECHONL;
		tty_quiet = 1;
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
		fprintf(stderr, "%s", prompt);
		fflush(stderr);
	}
	n = read_line(STDIN_FILENO, buf);
	if (tty) {
		tcsetattr(STDIN_FILENO, TCSANOW, &saved_tty);
		tty_quiet = 0;
		for (size_t i = 0; i < 5; i++)
			sigaction(sigs[i], &old_sa[i], NULL);
	}
	return n;
}

int
cmd_scramble_pin(int argc, char **argv)
{
	char *pin = NULL, *again = NULL, *out = NULL;
	ssize_t n;
	int r = TOOL_USAGE;

	if (argc > 1) {
		fprintf(stderr, "hsmfs-tool scramble-pin: unexpected argument "
		    "'%s'; the PIN is read from stdin\n", argv[1]);
		tool_usage(stderr, "scramble-pin");
		return TOOL_USAGE;
	}
	if ((pin = secmem_alloc(PIN_MAX + 1)) == NULL ||
	    (again = secmem_alloc(PIN_MAX + 1)) == NULL) {
		fprintf(stderr, "hsmfs-tool scramble-pin: out of memory\n");
		goto out;
	}
	n = ask("PIN: ", pin);
	if (n == -1) {
		fprintf(stderr, "hsmfs-tool scramble-pin: reading stdin: %s\n",
		    strerror(errno));
		goto out;
	}
	if (n == -2) {
		fprintf(stderr, "hsmfs-tool scramble-pin: PIN longer than %d "
		    "bytes\n", PIN_MAX);
		goto out;
	}
	if (n == 0) {
		fprintf(stderr, "hsmfs-tool scramble-pin: empty PIN; type the "
		    "PIN (one line on stdin)\n");
		goto out;
	}
	/* A typo typed blind would lock the token later: ask twice. */
	if (isatty(STDIN_FILENO)) {
		if (ask("PIN again: ", again) < 0 || strcmp(pin, again) != 0) {
			fprintf(stderr, "hsmfs-tool scramble-pin: the PINs do not "
			    "match\n");
			goto out;
		}
	}
	if ((out = pin_scramble(pin)) == NULL) {
		fprintf(stderr, "hsmfs-tool scramble-pin: scrambling failed\n");
		r = TOOL_FAIL;
		goto out;
	}
	printf("%s\n", out);
	if (fflush(stdout) != 0) {
		fprintf(stderr, "hsmfs-tool scramble-pin: writing stdout: %s\n",
		    strerror(errno));
		r = TOOL_FAIL;
		goto out;
	}
	r = TOOL_OK;
out:
	secmem_free(pin, PIN_MAX + 1);
	secmem_free(again, PIN_MAX + 1);
	free(out);
	return r;
}
