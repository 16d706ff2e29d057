/* Reader for bench/fields.sh: open, read and close the fields of a
 * directory in turn for a number of seconds; prints reads per second.
 * In C so that the client's own cost stays small beside the daemon's. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double
now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int
main(int argc, char **argv)
{
	char names[64][300], buf[4096];
	int n = 0;
	long reads = 0;
	double t0, end;
	DIR *d;
	struct dirent *de;

	if (argc != 3 || (d = opendir(argv[1])) == NULL)
		return 2;
	while ((de = readdir(d)) != NULL && n < 64)
		if (de->d_name[0] != '.')
			snprintf(names[n++], sizeof(names[0]), "%s/%s", argv[1], de->d_name);
	closedir(d);
	if (n == 0)
		return 2;
	t0 = now();
	end = t0 + atof(argv[2]);
	while (now() < end) {
		int fd = open(names[reads % n], O_RDONLY);
		ssize_t got;
		if (fd < 0 || (got = read(fd, buf, sizeof(buf))) <= 0 ||
		    strncmp(buf, "secret-value-", 13) != 0) {
			perror(names[reads % n]);
			return 1;
		}
		close(fd);
		reads++;
	}
	printf("%.1f\n", reads / (now() - t0));
	return 0;
}
