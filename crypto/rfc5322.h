/* Internal to crypto/ (smime.c): RFC 5322 header fields and addresses
 * (rfc5322.c). */
#ifndef HSMFS_CRYPTO_RFC5322_H
#define HSMFS_CRYPTO_RFC5322_H

#include <stddef.h>
#include <time.h>

struct hdr {
	const char *name;   /* points into the message */
	size_t nlen;
	const char *raw;    /* whole field, folded lines, original EOLs */
	size_t rlen;
};

struct parsed {
	struct hdr *h;
	size_t nh;
	const char *body;
	size_t blen;
};

struct addrs {
	char **v;
	size_t n, cap;
};

int rfc5322_hdr_is(const struct hdr *h, const char *name);
char *rfc5322_hdr_value(const struct hdr *h);
int rfc5322_parse_headers(const char *m, size_t len, struct parsed *ps);
int rfc5322_dot_atom_ok(const char *s, size_t n);
void rfc5322_addrs_free(struct addrs *a);
int rfc5322_address_list(const char *v, const char *field, struct addrs *out);
void rfc5322_date(time_t t, char *buf, size_t size);

#endif
