/* JAR signing and verification of zip files. Owns the zip structure checks
 * (our own parse of the end record, central directory and local headers,
 * plus libzip's ZIP_CHECKCONS), streamed entry digests (zlib inflate with
 * exact size and CRC checks), the manifest/.SF text format and the CMS
 * signature block. Signed zips copy the entries' bytes raw (our writer;
 * libzip's when zip64 structures are needed). */
#include "crypto/jar.h"
#include "common/err.h"
#include "common/util.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zip.h>
#include <zlib.h>
#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#define CHUNK (64 * 1024)
#define MAX_META (16u << 20)    /* manifest / .SF / block size cap */
#define JAR_THREADS 4           /* entry digests in parallel, at most */
#define PAR_MIN_BYTES (8u << 20)
/* Where readers look for the end record: a maximal comment, the record
 * and a zip64 locator before it. */
#define TAIL_WINDOW (65535 + 22 + 20)

/* ---------------------------------------------------------------- */
/* Zip structure                                                     */

struct zent {
	char *name;              /* raw bytes, NUL-terminated (no NUL inside) */
	size_t nlen;
	uint16_t flags, method, dtime, ddate;
	uint32_t crc;
	uint64_t csize, usize;
	uint64_t loff;           /* local header */
	uint64_t doff;           /* compressed data */
	uint64_t end;            /* after data (and data descriptor) */
	uint64_t cdoff;          /* its central directory record ... */
	uint32_t cdlen;          /* ... and that record's length */
	int cd64;                /* the record uses zip64 fields */
};

struct zarc {
	int fd;
	uint64_t size;
	struct zent *e;
	size_t n;
	uint64_t cd_off;
	struct zent **byname;    /* sorted by name, for lookups */
	int zip64;               /* zip64 end record */
	uint64_t z64rec_off;     /* zip64 end record (locator: 56 bytes on) */
	uint64_t eocd_off;       /* end of central directory record */
	uint64_t comment_off;    /* archive comment */
	uint16_t comment_len;
};

/* An entry's part in the signature (meta_roles). */
enum { ROLE_ENTRY, ROLE_DIR, ROLE_MANIFEST, ROLE_SF, ROLE_BLOCK, ROLE_OWN };

static int
bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int
bad(const char *fmt, ...)
{
	char buf[480];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	err_set("%s", buf);
	return HSMFS_ERR_BADMSG;
}

static uint16_t
le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t
le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	    (uint32_t)p[3] << 24;
}

static uint64_t
le64(const uint8_t *p)
{
	return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* pread exactly len bytes; a short file is a format error, not I/O. */
static int
zread(const struct zarc *z, uint64_t off, void *buf, size_t len)
{
	size_t got = 0;
	if (off > z->size || len > z->size - off)
		return bad("truncated zip (structure points past the end of the file)");
	while (got < len) {
		ssize_t n = pread(z->fd, (char *)buf + got, len - got,
		    (off_t)(off + got));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err_set("read: %s", strerror(errno));
			return HSMFS_ERR_IO;
		}
		if (n == 0)
			return bad("truncated zip");
		got += (size_t)n;
	}
	return 0;
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
static int
utf8_valid(const uint8_t *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		uint8_t c = s[i];
		uint32_t cp;
		size_t k;
		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			k = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			k = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			k = 3;
			cp = c & 0x07;
		} else {
			return 0;
		}
		for (size_t j = 1; j <= k; j++) {
			if (i + j >= n || (s[i + j] & 0xc0) != 0x80)
				return 0;
			cp = cp << 6 | (s[i + j] & 0x3f);
		}
		if ((k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
		    cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		i += k + 1;
	}
	return 1;
}

/* Entry names that could escape an extraction directory or confuse
 * readers are refused outright (SPEC §8). */
static int
name_check(const char *name, size_t n)
{
	if (n == 0)
		return bad("empty entry name");
	if (!utf8_valid((const uint8_t *)name, n))
		return bad("entry name is not valid UTF-8");
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)name[i];
		if (c < 0x20 || c == 0x7f)
			return bad("entry name contains a control character");
		if (c == '\\')
			return bad("entry name contains a backslash: %s", name);
	}
	if (name[0] == '/')
		return bad("absolute entry name: %s", name);
	if (n >= 2 && name[1] == ':' &&
	    ((name[0] >= 'A' && name[0] <= 'Z') || (name[0] >= 'a' && name[0] <= 'z')))
		return bad("entry name with a drive letter: %s", name);
	for (const char *p = name; p < name + n;) {
		const char *s = memchr(p, '/', (size_t)(name + n - p));
		size_t cl = s ? (size_t)(s - p) : (size_t)(name + n - p);
		if ((cl == 2 && p[0] == '.' && p[1] == '.'))
			return bad("entry name with a '..' component: %s", name);
		if (cl == 0 || (cl == 1 && p[0] == '.'))
			return bad("entry name with an empty or '.' component: %s", name);
		if (s == NULL)
			break;
		p = s + 1;
		if (p == name + n)
			break;  /* trailing '/': a directory */
	}
	return 0;
}

static void
zarc_close(struct zarc *z)
{
	if (z->e) {
		for (size_t i = 0; i < z->n; i++)
			free(z->e[i].name);
		free(z->e);
	}
	free(z->byname);
	if (z->fd >= 0)
		close(z->fd);
	memset(z, 0, sizeof(*z));
	z->fd = -1;
}

/* Zip64 extended information (0x0001): only the fields whose 32-bit
 * counterpart is 0xffffffff are present, in this order. */
static int
zip64_extra(const uint8_t *x, size_t xlen, uint64_t *usize, uint64_t *csize,
    uint64_t *loff, int local)
{
	size_t i = 0;
	while (i + 4 <= xlen) {
		uint16_t id = le16(x + i), len = le16(x + i + 2);
		const uint8_t *d = x + i + 4;
		size_t p = 0;
		if (i + 4 + len > xlen)
			return bad("malformed extra field");
		if (id == 0x0001) {
			if (*usize == 0xffffffffu || (local && p + 16 <= len)) {
				if (p + 8 > len)
					return bad("malformed zip64 extra field");
				*usize = le64(d + p);
				p += 8;
			}
			if (*csize == 0xffffffffu || (local && p + 8 <= len)) {
				if (p + 8 > len)
					return bad("malformed zip64 extra field");
				*csize = le64(d + p);
				p += 8;
			}
			if (loff && *loff == 0xffffffffu) {
				if (p + 8 > len)
					return bad("malformed zip64 extra field");
				*loff = le64(d + p);
				p += 8;
			}
			/* Central: exactly the fields whose 32-bit value is the
			 * marker (readers differ on what else they would take). */
			if (!local && p != len)
				return bad("zip64 extra field with fields the header "
				    "does not need");
			return 1;
		}
		i += 4 + (size_t)len;
	}
	if (i != xlen)
		return bad("malformed extra field");
	return 0;
}

static int
cmp_name(const void *a, const void *b)
{
	const struct zent *x = *(struct zent *const *)a, *y = *(struct zent *const *)b;
	size_t n = x->nlen < y->nlen ? x->nlen : y->nlen;
	int c = memcmp(x->name, y->name, n);
	return c ? c : (x->nlen < y->nlen ? -1 : x->nlen > y->nlen);
}

/* Extra fields (SPEC §8): well-formed records that tile the field exactly,
 * each id at most once, no record that changes an entry's name for some
 * readers only (Unicode path 0x7075 must repeat the name; Unicode comment
 * 0x6375 refused) and no zip structure signature anywhere inside (a
 * second directory or end record hidden in an extra field). */
static int
extra_check(const uint8_t *x, size_t xlen, const struct zent *e, const char *where)
{
	uint16_t seen[64];
	size_t ns = 0, i = 0;
	for (size_t k = 0; k + 4 <= xlen; k++)
		if (x[k] == 'P' && x[k + 1] == 'K' && x[k + 2] >= 1 && x[k + 2] <= 8 &&
		    x[k + 3] >= 1 && x[k + 3] <= 8)
			return bad("zip structure signature inside the %s extra field "
			    "of %s", where, e->name);
	while (i + 4 <= xlen) {
		uint16_t id = le16(x + i), len = le16(x + i + 2);
		if (i + 4 + len > xlen)
			break;
		for (size_t k = 0; k < ns; k++)
			if (seen[k] == id)
				return bad("extra field 0x%04x twice in the %s header of %s",
				    id, where, e->name);
		if (ns == 64)
			return bad("too many extra fields in %s", e->name);
		seen[ns++] = id;
		if (id == 0x6375)
			return bad("Unicode comment extra field refused: %s", e->name);
		if (id == 0x7075 && (len < 5 || x[i + 4] != 1 ||
		    (size_t)len - 5 != e->nlen ||
		    memcmp(x + i + 9, e->name, e->nlen) != 0))
			return bad("Unicode path extra field naming another name: %s",
			    e->name);
		i += 4 + (size_t)len;
	}
	if (i != xlen)
		return bad("malformed extra field in the %s header of %s", where,
		    e->name);
	return 0;
}

/* Find the end record. It must be the last 22 bytes of the file: archive
 * comments are refused (jarsigner and IdM exports write none, and a
 * comment is where a second directory hides). A zip64 end record and
 * locator must be there exactly when a classic field holds its 0xffff /
 * 0xffffffff marker, directly before the end record, and every classic
 * field must be either that marker or equal to the zip64 value. */
static int
zarc_find_end(struct zarc *z, uint64_t *cd_off, uint64_t *cd_size,
    uint64_t *count, uint64_t *cd_end_expect)
{
	uint8_t *tail = NULL;
	size_t tl;
	int r, seen = 0;
	int64_t pos = -1;

	if (z->size < 22)
		return bad("not a zip file (too short)");
	tl = z->size < TAIL_WINDOW ? (size_t)z->size : TAIL_WINDOW;
	if ((tail = malloc(tl)) == NULL)
		return HSMFS_ERR_NOMEM;
	if ((r = zread(z, z->size - tl, tail, tl)) != 0)
		goto out;
	for (size_t i = tl - 22 + 1; i-- > 0;) {
		if (le32(tail + i) != 0x06054b50)
			continue;
		seen = 1;
		if (i + 22 + le16(tail + i + 20) == tl) {
			pos = (int64_t)(z->size - tl + i);
			break;
		}
	}
	if (pos < 0) {
		r = seen ? bad("data after the end of the zip (garbage appended)") :
		    bad("not a zip file (no end of central directory)");
		goto out;
	}
	/* Readers look for the end record in this window (libzip tries every
	 * candidate there and keeps the "most consistent" one): no second
	 * end-record signature, not even inside entry data or a comment. */
	for (size_t i = 0; i + 4 <= tl; i++)
		if (tail[i] == 'P' && le32(tail + i) == 0x06054b50 &&
		    z->size - tl + i != (uint64_t)pos) {
			r = bad("a second end-of-central-directory signature at offset "
			    "%llu", (unsigned long long)(z->size - tl + i));
			goto out;
		}
	{
		const uint8_t *e = tail + (pos - (int64_t)(z->size - tl));
		uint16_t disk = le16(e + 4), cddisk = le16(e + 6);
		uint64_t n1 = le16(e + 8), n2 = le16(e + 10);
		uint64_t sz = le32(e + 12), off = le32(e + 16);
		int need64 = n1 == 0xffff || n2 == 0xffff || sz == 0xffffffffu ||
		    off == 0xffffffffu || disk == 0xffff || cddisk == 0xffff;
		uint8_t loc[20];
		int has_loc = 0;
		*cd_end_expect = (uint64_t)pos;
		z->eocd_off = (uint64_t)pos;
		z->comment_off = (uint64_t)pos + 22;
		z->comment_len = le16(e + 20);
		if (z->comment_len != 0) {
			r = bad("archive comment (refused: a comment can hide a "
			    "second directory)");
			goto out;
		}
		if (pos >= 20) {
			if ((r = zread(z, (uint64_t)pos - 20, loc, 20)) != 0)
				goto out;
			has_loc = le32(loc) == 0x07064b50;
		}
		if (has_loc && !need64) {
			r = bad("zip64 end locator that the end record does not need");
			goto out;
		}
		if (need64) {
			uint8_t rec[56];
			uint64_t roff;
			if (!has_loc) {
				r = bad("zip64 end locator missing");
				goto out;
			}
			roff = le64(loc + 8);
			if (pos < 20 + 56 || roff != (uint64_t)pos - 20 - 56) {
				r = bad("zip64 end record not directly before its locator");
				goto out;
			}
			if ((r = zread(z, roff, rec, 56)) != 0)
				goto out;
			if (le32(rec) != 0x06064b50 || le64(rec + 4) != 44) {
				r = bad("malformed zip64 end record");
				goto out;
			}
			if (le32(rec + 16) != 0 || le32(rec + 20) != 0 ||
			    le32(loc + 4) != 0 || le32(loc + 16) != 1) {
				r = bad("multi-disk zips are not supported");
				goto out;
			}
			if ((n1 != 0xffff && n1 != le64(rec + 24)) ||
			    (n2 != 0xffff && n2 != le64(rec + 32)) ||
			    (sz != 0xffffffffu && sz != le64(rec + 40)) ||
			    (off != 0xffffffffu && off != le64(rec + 48)) ||
			    (disk != 0xffff && disk != 0) ||
			    (cddisk != 0xffff && cddisk != 0)) {
				r = bad("end record and zip64 end record disagree");
				goto out;
			}
			n1 = le64(rec + 24);
			n2 = le64(rec + 32);
			sz = le64(rec + 40);
			off = le64(rec + 48);
			*cd_end_expect = roff;
			z->zip64 = 1;
			z->z64rec_off = roff;
		} else if (disk != 0 || cddisk != 0) {
			r = bad("multi-disk zips are not supported");
			goto out;
		}
		if (n1 != n2) {
			r = bad("inconsistent entry counts in the end record");
			goto out;
		}
		*cd_off = off;
		*cd_size = sz;
		*count = n2;
	}
	r = 0;
out:
	free(tail);
	return r;
}

/* Zip structure signatures ("PK" 1 2, 5 6, 6 6, 6 7) may appear after the
 * entries only where we parsed them: the central directory records, the
 * zip64 end record and locator, the end record. */
static int
zarc_scan_tail(const struct zarc *z, uint64_t cd_off)
{
	uint64_t pos;
	size_t ci = 0;
	uint8_t *buf;
	int r = 0;
	if ((buf = malloc(CHUNK + 3)) == NULL)
		return HSMFS_ERR_NOMEM;
	for (pos = cd_off; pos < z->size && r == 0;) {
		size_t n = z->size - pos > CHUNK + 3 ? CHUNK + 3 : (size_t)(z->size - pos);
		size_t step = n > CHUNK ? CHUNK : n;
		if ((r = zread(z, pos, buf, n)) != 0)
			break;
		for (size_t k = 0; k + 4 <= n && k < step; k++) {
			uint64_t at = pos + k;
			uint32_t sig;
			if (buf[k] != 'P' || buf[k + 1] != 'K')
				continue;
			sig = le32(buf + k);
			if (sig == 0x06054b50 && at != z->eocd_off) {
				r = bad("a second end-of-central-directory signature at "
				    "offset %llu", (unsigned long long)at);
				break;
			}
			if (sig == 0x02014b50) {
				while (ci < z->n && z->e[ci].cdoff < at)
					ci++;
				if (ci >= z->n || z->e[ci].cdoff != at) {
					r = bad("a central directory signature inside the "
					    "central directory at offset %llu",
					    (unsigned long long)at);
					break;
				}
			} else if ((sig == 0x06064b50 && !(z->zip64 && at == z->z64rec_off)) ||
			    (sig == 0x07064b50 && !(z->zip64 && at == z->eocd_off - 20))) {
				r = bad("a stray zip64 end record or locator signature at "
				    "offset %llu", (unsigned long long)at);
				break;
			}
		}
		pos += step;
	}
	free(buf);
	return r;
}

/* Read the archive once, every byte accounted for: the entries (local
 * header, data, data descriptor) tile the file from offset 0 in central
 * directory order, then the central directory, then the zip64 end record
 * and locator when needed, then the end record (SPEC §8). */
static int
zarc_open(const char *path, struct zarc *z)
{
	struct stat st;
	uint64_t cd_off = 0, cd_size = 0, count = 0, cd_end_expect = 0, p;
	uint64_t inflated = 0, budget;
	uint8_t h[46];
	struct zent **v = NULL;
	int r;

	memset(z, 0, sizeof(*z));
	if ((z->fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || fstat(z->fd, &st) < 0) {
		err_set("%s: %s", path, strerror(errno));
		r = hsmfs_errno_err(errno);
		goto out;
	}
	z->size = (uint64_t)st.st_size;
	if ((r = zarc_find_end(z, &cd_off, &cd_size, &count, &cd_end_expect)) != 0)
		goto out;
	if (cd_off > cd_end_expect || cd_size != cd_end_expect - cd_off) {
		r = bad("central directory does not end at the end record "
		    "(data prepended, appended or inserted)");
		goto out;
	}
	if (count > JAR_MAX_ENTRIES || count > cd_size / 46 + 1) {
		r = bad("too many entries (%llu)", (unsigned long long)count);
		goto out;
	}
	if ((z->e = calloc(count ? count : 1, sizeof(*z->e))) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	z->cd_off = cd_off;
	p = cd_off;
	for (uint64_t i = 0; i < count; i++) {
		struct zent *e = &z->e[z->n];
		uint16_t nlen, xlen, clen;
		uint8_t *x = NULL;
		int ascii = 1;
		if (p + 46 > cd_end_expect) {
			r = bad("central directory shorter than its entry count");
			goto out;
		}
		if ((r = zread(z, p, h, 46)) != 0)
			goto out;
		if (le32(h) != 0x02014b50) {
			r = bad("bad central directory entry signature");
			goto out;
		}
		e->flags = le16(h + 8);
		e->method = le16(h + 10);
		e->dtime = le16(h + 12);
		e->ddate = le16(h + 14);
		e->crc = le32(h + 16);
		e->csize = le32(h + 20);
		e->usize = le32(h + 24);
		nlen = le16(h + 28);
		xlen = le16(h + 30);
		clen = le16(h + 32);
		e->loff = le32(h + 42);
		e->cdoff = p;
		e->cdlen = 46u + nlen + xlen + clen;
		e->cd64 = e->csize == 0xffffffffu || e->usize == 0xffffffffu ||
		    e->loff == 0xffffffffu;
		if (le16(h + 34) != 0) {
			r = bad("multi-disk zips are not supported");
			goto out;
		}
		if (p + 46 + nlen + xlen + clen > cd_end_expect) {
			r = bad("central directory entry overruns the directory");
			goto out;
		}
		if ((e->name = malloc((size_t)nlen + 1)) == NULL ||
		    (xlen && (x = malloc(xlen)) == NULL)) {
			r = HSMFS_ERR_NOMEM;
			goto out;
		}
		z->n++;
		e->nlen = nlen;
		if ((r = zread(z, p + 46, e->name, nlen)) != 0 ||
		    (xlen && (r = zread(z, p + 46 + nlen, x, xlen)) != 0)) {
			free(x);
			goto out;
		}
		e->name[nlen] = '\0';
		if (memchr(e->name, '\0', nlen) != NULL) {
			free(x);
			r = bad("entry name contains a NUL byte");
			goto out;
		}
		if ((r = name_check(e->name, nlen)) != 0 ||
		    (r = extra_check(x, xlen, e, "central")) != 0) {
			free(x);
			goto out;
		}
		r = zip64_extra(x, xlen, &e->usize, &e->csize, &e->loff, 0);
		free(x);
		if (r < 0)
			goto out;
		if (clen != 0) {
			r = bad("entry comment (refused: a comment can hide a second "
			    "directory): %s", e->name);
			goto out;
		}
		if (h[6] > 45) {
			r = bad("entry needs zip version %u.%u to extract: %s",
			    h[6] / 10, h[6] % 10, e->name);
			goto out;
		}
		for (size_t k = 0; k < nlen; k++)
			ascii &= (unsigned char)e->name[k] < 0x80;
		if (!ascii && !(e->flags & 0x0800)) {
			r = bad("non-ASCII entry name without the UTF-8 flag "
			    "(readers would decode it differently): %s", e->name);
			goto out;
		}
		if (e->flags & 0x2041) {
			r = bad("encrypted entry: %s", e->name);
			goto out;
		}
		if (e->flags & ~0x080eu) {
			r = bad("unsupported general purpose flags 0x%04x: %s",
			    e->flags, e->name);
			goto out;
		}
		if (e->method != 0 && e->method != 8) {
			r = bad("unsupported compression method %u: %s", e->method,
			    e->name);
			goto out;
		}
		/* Readers skip directories when checking digests: a directory
		 * entry must not carry bytes the signature does not cover. */
		if (nlen > 0 && e->name[nlen - 1] == '/' && (e->usize != 0 ||
		    e->csize != 0 || e->method != 0 || e->crc != 0)) {
			r = bad("directory entry with data (must be stored, sizes 0, "
			    "CRC 0): %s", e->name);
			goto out;
		}
		/* The external attributes are not signed but decide how unzip
		 * extracts the signed bytes: a Unix mode (high 16 bits) may only
		 * say regular file (directory for directories) or nothing, with
		 * no setuid, setgid or sticky bit, and the MS-DOS directory
		 * attribute only on a directory (README.txt would otherwise be
		 * extracted as a symlink pointing at its content). */
		{
			uint32_t xa = le32(h + 38), type = (xa >> 16) & 0170000;
			int dir = nlen > 0 && e->name[nlen - 1] == '/';
			if ((type != 0 && type != (dir ? 0040000u : 0100000u)) ||
			    ((xa >> 16) & 07000) != 0 || (!dir && (xa & 0x10))) {
				r = bad("entry with external attributes 0x%08x (only a "
				    "plain %s mode is allowed): %s", (unsigned)xa,
				    dir ? "directory" : "file", e->name);
				goto out;
			}
		}
		if (e->method == 0 && e->csize != e->usize) {
			r = bad("stored entry with different sizes: %s", e->name);
			goto out;
		}
		/* ZipInputStream (JarInputStream) refuses a data descriptor on a
		 * stored entry and sees nothing from there on; Java never
		 * writes one. */
		if (e->method == 0 && (e->flags & 0x0008)) {
			r = bad("stored entry with a data descriptor: %s", e->name);
			goto out;
		}
		if (e->method == 8 && e->usize > JAR_RATIO_MIN_SIZE &&
		    e->usize / (e->csize ? e->csize : 1) > JAR_MAX_RATIO) {
			r = bad("compression ratio above %d:1 (zip bomb?): %s",
			    JAR_MAX_RATIO, e->name);
			goto out;
		}
		inflated += e->usize;
		p += 46 + (uint64_t)nlen + xlen + clen;
	}
	if (p != cd_end_expect) {
		r = bad("central directory longer than its entry count");
		goto out;
	}
	/* Work budget: every entry costs its inflated size plus a fixed
	 * amount, and the total must stay within a multiple of the file size
	 * (many small well-compressed entries are as costly as one big). */
	budget = (uint64_t)JAR_BUDGET_RATIO * z->size + JAR_BUDGET_SLACK;
	if (inflated > budget || inflated + (uint64_t)z->n * JAR_ENTRY_COST > budget) {
		r = bad("zip would inflate to %llu bytes in %zu entries, more than "
		    "%d times its size of %llu bytes allows (zip bomb?)",
		    (unsigned long long)inflated, z->n, JAR_BUDGET_RATIO,
		    (unsigned long long)z->size);
		goto out;
	}
	/* Local headers must agree with the central directory, and the
	 * entries must tile the file from offset 0 to the central directory
	 * in central directory order: no prepended data, no overlap
	 * (overlapping bombs), no hidden gaps. */
	p = 0;
	for (size_t i = 0; i < z->n; i++) {
		struct zent *e = &z->e[i];
		uint8_t lh[30], dd[24];
		uint64_t lu, lc;
		uint16_t nlen, xlen;
		uint8_t *buf = NULL;
		int z64;
		if (e->loff != p) {
			r = e->loff < p ? bad("overlapping entries: %s", e->name) :
			    i == 0 ? bad("data before the first local header "
			    "(prepended bytes)") :
			    bad("unaccounted data before entry %s (entries must follow "
			    "each other in central directory order)", e->name);
			goto out;
		}
		if ((r = zread(z, e->loff, lh, 30)) != 0) {
			r = bad("local header out of range: %s", e->name);
			goto out;
		}
		if (le32(lh) != 0x04034b50) {
			r = bad("no local header where the central directory points "
			    "(data prepended or shifted?): %s", e->name);
			goto out;
		}
		nlen = le16(lh + 26);
		xlen = le16(lh + 28);
		if ((buf = malloc((size_t)nlen + xlen + 1)) == NULL) {
			r = HSMFS_ERR_NOMEM;
			goto out;
		}
		if ((r = zread(z, e->loff + 30, buf, (size_t)nlen + xlen)) != 0) {
			free(buf);
			goto out;
		}
		if (nlen != e->nlen || memcmp(buf, e->name, nlen) != 0) {
			free(buf);
			r = bad("local and central header names differ: %s", e->name);
			goto out;
		}
		if ((r = extra_check(buf + nlen, xlen, e, "local")) != 0) {
			free(buf);
			goto out;
		}
		lu = le32(lh + 22);
		lc = le32(lh + 18);
		z64 = zip64_extra(buf + nlen, xlen, &lu, &lc, NULL, 1);
		free(buf);
		if (z64 < 0) {
			r = z64;
			goto out;
		}
		/* A data descriptor after a zip64 local header is 64-bit: only
		 * where the sizes need it, as ZipInputStream takes the width
		 * from the sizes (Java writes no other). Without a descriptor a
		 * needless zip64 local header is harmless (Python's
		 * force_zip64 writes one). */
		if (z64 > 0 && (e->flags & 0x0008) && e->csize < 0xffffffffu &&
		    e->usize < 0xffffffffu) {
			r = bad("zip64 local header for an entry whose sizes do not "
			    "need it: %s", e->name);
			goto out;
		}
		/* The zip64 values count only where the 32-bit field is the
		 * marker (as libzip reads it): the 32-bit fields are checked too. */
		if (le32(lh + 22) != 0xffffffffu)
			lu = le32(lh + 22);
		if (le32(lh + 18) != 0xffffffffu)
			lc = le32(lh + 18);
		if (le16(lh + 8) != e->method || le16(lh + 6) != e->flags) {
			r = bad("local and central headers differ (method or flags): %s",
			    e->name);
			goto out;
		}
		if (lh[4] > 45) {
			r = bad("entry needs zip version %u.%u to extract: %s",
			    lh[4] / 10, lh[4] % 10, e->name);
			goto out;
		}
		e->doff = e->loff + 30 + nlen + xlen;
		if (e->doff > z->size || e->csize > z->size - e->doff) {
			r = bad("entry data past the end of the file: %s", e->name);
			goto out;
		}
		e->end = e->doff + e->csize;
		if (e->flags & 0x0008) {
			/* Data descriptor: optional signature, then CRC and sizes
			 * (64-bit when the entry is zip64: a zip64 local header or a
			 * size that needs it). The local header holds zeros or the
			 * same values. */
			int d64 = z64 > 0 || e->csize >= 0xffffffffu ||
			    e->usize >= 0xffffffffu;
			size_t dl = d64 ? 20 : 12, off = 0;
			if ((le32(lh + 14) != 0 && le32(lh + 14) != e->crc) ||
			    (lc != 0 && lc != 0xffffffffu && lc != e->csize) ||
			    (lu != 0 && lu != 0xffffffffu && lu != e->usize)) {
				r = bad("local and central headers differ (CRC or sizes): %s",
				    e->name);
				goto out;
			}
			if ((r = zread(z, e->end, dd, 4)) != 0)
				goto out;
			if (le32(dd) == 0x08074b50)
				off = 4;
			if ((r = zread(z, e->end, dd, off + dl)) != 0)
				goto out;
			if (le32(dd + off) != e->crc ||
			    (d64 ? le64(dd + off + 4) : le32(dd + off + 4)) != e->csize ||
			    (d64 ? le64(dd + off + 12) : le32(dd + off + 8)) != e->usize) {
				r = bad("data descriptor and central directory differ: %s",
				    e->name);
				goto out;
			}
			e->end += off + dl;
		} else if (le32(lh + 14) != e->crc || lc != e->csize ||
		    lu != e->usize) {
			r = bad("local and central headers differ (CRC or sizes): %s",
			    e->name);
			goto out;
		}
		p = e->end;
	}
	if (p != cd_off) {
		r = p > cd_off ? bad("entry data overlaps the central directory") :
		    z->n == 0 ? bad("data before the central directory") :
		    bad("unaccounted data before the central directory");
		goto out;
	}
	if ((r = zarc_scan_tail(z, cd_off)) != 0)
		goto out;
	if ((v = calloc(z->n ? z->n : 1, sizeof(*v))) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	for (size_t i = 0; i < z->n; i++)
		v[i] = &z->e[i];
	qsort(v, z->n, sizeof(*v), cmp_name);
	for (size_t i = 1; i < z->n; i++)
		if (cmp_name(&v[i - 1], &v[i]) == 0) {
			r = bad("duplicate entry name: %s", v[i]->name);
			goto out;
		}
	/* No path through a file: a directory "x/" (or any "x/...") beside
	 * a file "x" makes extraction fail or keep one of them, and
	 * java.util.zip's getEntry("x") gives "x/" when "x" is missing. */
	for (size_t i = 0; i < z->n; i++) {
		struct zent key = z->e[i], *kp = &key;
		for (size_t k = 1; k < z->e[i].nlen; k++) {
			if (z->e[i].name[k] != '/')
				continue;
			key.nlen = k;
			if (bsearch(&kp, v, z->n, sizeof(*v), cmp_name) != NULL) {
				r = bad("entry name goes through a file: %s",
				    z->e[i].name);
				goto out;
			}
		}
	}
	z->byname = v;
	v = NULL;
	r = 0;
out:
	free(v);
	if (r != 0)
		zarc_close(z);
	return r;
}

/* libzip's raw (compressed) bytes of entry i start with ours: libzip
 * reads the data where we do (it has no call giving the local header
 * offset, so this checks the position through the bytes; the rest of the
 * data is then ours by the tiling). */
static int
libzip_same_data(zip_t *za, const struct zarc *z, const struct zent *e,
    size_t i)
{
	uint8_t a[4096], b[4096];
	size_t n = e->csize < sizeof(a) ? (size_t)e->csize : sizeof(a);
	zip_file_t *f;
	zip_int64_t got;
	int r;
	if (n == 0)
		return 0;
	if ((f = zip_fopen_index(za, i, ZIP_FL_COMPRESSED)) == NULL)
		return bad("libzip cannot read entry %s", e->name);
	got = zip_fread(f, a, n);
	zip_fclose(f);
	if (got != (zip_int64_t)n)
		return bad("libzip cannot read entry %s", e->name);
	if ((r = zread(z, e->doff, b, n)) != 0)
		return r;
	if (memcmp(a, b, n) != 0)
		return bad("entry %s: readers disagree on where its data is",
		    e->name);
	return 0;
}

/* libzip's own consistency check (local vs central, as it reads them), and
 * agreement between its view and ours, entry by entry. libzip reads the
 * very file we opened (a duplicate of our descriptor, not the path again:
 * a rename in between would have it check other bytes). */
static int
zarc_libzip_check(const char *path, const struct zarc *z, zip_t **keep)
{
	int ze = 0, fd = fcntl(z->fd, F_DUPFD_CLOEXEC, 0);
	zip_t *za = NULL;
	int r;
	if (fd < 0) {
		err_set("%s: %s", path, strerror(errno));
		return hsmfs_errno_err(errno);
	}
	if ((za = zip_fdopen(fd, ZIP_RDONLY | ZIP_CHECKCONS, &ze)) == NULL)
		close(fd);
	if (za == NULL) {
		zip_error_t er;
		zip_error_init_with_code(&er, ze);
		r = bad("zip rejected by libzip: %s", zip_error_strerror(&er));
		zip_error_fini(&er);
		return r;
	}
	if ((uint64_t)zip_get_num_entries(za, 0) != z->n) {
		r = bad("entry count differs between readers");
		goto out;
	}
	for (size_t i = 0; i < z->n; i++) {
		const struct zent *e = &z->e[i];
		const zip_uint64_t want = ZIP_STAT_NAME | ZIP_STAT_SIZE |
		    ZIP_STAT_COMP_SIZE | ZIP_STAT_CRC | ZIP_STAT_COMP_METHOD |
		    ZIP_STAT_ENCRYPTION_METHOD;
		zip_stat_t st;
		const char *nm = zip_get_name(za, i, ZIP_FL_ENC_RAW);
		if (nm == NULL || strcmp(nm, e->name) != 0) {
			r = bad("entry names differ between readers: %s", e->name);
			goto out;
		}
		zip_stat_init(&st);
		if (zip_stat_index(za, i, ZIP_FL_ENC_RAW, &st) != 0 ||
		    (st.valid & want) != want || strcmp(st.name, e->name) != 0 ||
		    st.size != e->usize || st.comp_size != e->csize ||
		    st.crc != e->crc || st.comp_method != e->method ||
		    st.encryption_method != ZIP_EM_NONE) {
			r = bad("entry %s differs between readers (CRC, sizes or "
			    "method)", e->name);
			goto out;
		}
		if ((r = libzip_same_data(za, z, e, i)) != 0)
			goto out;
	}
	if (keep) {
		*keep = za;
		return 0;
	}
	r = 0;
out:
	zip_discard(za);
	return r;
}

/* Stream an entry's uncompressed bytes through up to 3 digests. Exact:
 * the deflate stream must end at the compressed size, inflate to exactly
 * the declared size (no more: zip bombs) and match the CRC. */
static int
zent_digest(const struct zarc *z, const struct zent *e, const EVP_MD *const *mds,
    size_t nmd, uint8_t out[][EVP_MAX_MD_SIZE])
{
	EVP_MD_CTX *ctx[3] = {NULL, NULL, NULL};
	uint8_t *in = NULL, *buf = NULL;
	z_stream zs;
	int zinit = 0, r, done = 0;
	uint64_t pos = 0, total = 0;
	uLong crc = crc32(0L, Z_NULL, 0);

	memset(&zs, 0, sizeof(zs));
	if ((in = malloc(CHUNK)) == NULL || (buf = malloc(CHUNK)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	for (size_t i = 0; i < nmd; i++)
		if ((ctx[i] = EVP_MD_CTX_new()) == NULL ||
		    EVP_DigestInit_ex(ctx[i], mds[i], NULL) != 1) {
			r = HSMFS_ERR_CRYPTO;
			err_set_ossl("digest init");
			goto out;
		}
	if (e->method == 8) {
		if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) {
			r = HSMFS_ERR_NOMEM;
			goto out;
		}
		zinit = 1;
	}
	while (!done) {
		size_t n = 0;
		if (pos < e->csize) {
			n = e->csize - pos > CHUNK ? CHUNK : (size_t)(e->csize - pos);
			if ((r = zread(z, e->doff + pos, in, n)) != 0)
				goto out;
			pos += n;
		}
		if (e->method == 0) {
			crc = crc32(crc, in, (uInt)n);
			for (size_t i = 0; i < nmd; i++)
				EVP_DigestUpdate(ctx[i], in, n);
			total += n;
			done = pos == e->csize;
			continue;
		}
		zs.next_in = in;
		zs.avail_in = (uInt)n;
		do {
			int zr;
			size_t got;
			zs.next_out = buf;
			zs.avail_out = CHUNK;
			zr = inflate(&zs, Z_NO_FLUSH);
			if (zr != Z_OK && zr != Z_STREAM_END && zr != Z_BUF_ERROR) {
				r = bad("corrupt deflate data: %s", e->name);
				goto out;
			}
			got = CHUNK - zs.avail_out;
			total += got;
			if (total > e->usize) {
				r = bad("entry inflates beyond its declared size "
				    "(zip bomb?): %s", e->name);
				goto out;
			}
			crc = crc32(crc, buf, (uInt)got);
			for (size_t i = 0; i < nmd; i++)
				EVP_DigestUpdate(ctx[i], buf, got);
			if (zr == Z_STREAM_END) {
				if (zs.avail_in != 0 || pos != e->csize) {
					r = bad("data after the end of the deflate stream: %s",
					    e->name);
					goto out;
				}
				done = 1;
				break;
			}
			if (zr == Z_BUF_ERROR && n == 0) {
				r = bad("truncated deflate data: %s", e->name);
				goto out;
			}
		} while (zs.avail_in > 0 || zs.avail_out == 0);
	}
	if (total != e->usize) {
		r = bad("entry size differs from its header: %s", e->name);
		goto out;
	}
	if ((uint32_t)crc != e->crc) {
		r = bad("CRC error: %s", e->name);
		goto out;
	}
	for (size_t i = 0; i < nmd; i++)
		if (EVP_DigestFinal_ex(ctx[i], out[i], NULL) != 1) {
			r = HSMFS_ERR_CRYPTO;
			err_set_ossl("digest");
			goto out;
		}
	r = 0;
out:
	if (zinit)
		inflateEnd(&zs);
	for (size_t i = 0; i < nmd; i++)
		EVP_MD_CTX_free(ctx[i]);
	free(in);
	free(buf);
	return r;
}

/* ---------------------------------------------------------------- */
/* Entry digests in parallel                                         */

/* fn(ctx, i) for every i < n on up to JAR_THREADS threads (the caller is
 * one of them). The failure of the lowest i wins, with its err detail, so
 * the reason does not depend on scheduling: once something failed no new
 * i is started, and every lower i had already started. */
struct par {
	size_t n, next, fail_i;
	int (*fn)(void *ctx, size_t i);
	void *ctx;
	pthread_mutex_t lock;
	int fail_r;
	char reason[480];
};

static void *
par_worker(void *arg)
{
	struct par *p = arg;
	for (;;) {
		size_t i;
		int r;
		pthread_mutex_lock(&p->lock);
		if (p->next >= p->n || p->fail_i != SIZE_MAX) {
			pthread_mutex_unlock(&p->lock);
			return NULL;
		}
		i = p->next++;
		pthread_mutex_unlock(&p->lock);
		err_clear();
		if ((r = p->fn(p->ctx, i)) != 0) {
			pthread_mutex_lock(&p->lock);
			if (i < p->fail_i) {
				p->fail_i = i;
				p->fail_r = r;
				snprintf(p->reason, sizeof(p->reason), "%s", err_detail());
			}
			pthread_mutex_unlock(&p->lock);
		}
	}
}

static int
par_for(size_t n, uint64_t bytes, int (*fn)(void *, size_t), void *ctx)
{
	struct par p;
	pthread_t th[JAR_THREADS];
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	size_t want = 1, nt = 0;

	memset(&p, 0, sizeof(p));
	p.n = n;
	p.fn = fn;
	p.ctx = ctx;
	p.fail_i = SIZE_MAX;
	pthread_mutex_init(&p.lock, NULL);
	if (bytes >= PAR_MIN_BYTES && n > 1 && cpus > 1)
		want = (size_t)cpus < JAR_THREADS ? (size_t)cpus : JAR_THREADS;
	if (want > n)
		want = n;
	for (size_t k = 1; k < want; k++)
		if (pthread_create(&th[nt], NULL, par_worker, &p) == 0)
			nt++;
	par_worker(&p);
	for (size_t k = 0; k < nt; k++)
		pthread_join(th[k], NULL);
	pthread_mutex_destroy(&p.lock);
	if (p.fail_i != SIZE_MAX) {
		err_set("%s", p.reason);
		return p.fail_r;
	}
	return 0;
}

static int
is_dir(const struct zent *e);

/* Signing: one digest per covered entry, into digests[i * mdlen]. */
struct sign_dig {
	const struct zarc *z;
	const uint8_t *role;
	const EVP_MD *md;
	size_t mdlen;
	uint8_t *digests;
};

static int
sign_dig_one(void *ctx, size_t i)
{
	struct sign_dig *c = ctx;
	const struct zent *e = &c->z->e[i];
	uint8_t d[1][EVP_MAX_MD_SIZE];
	int r;
	if (c->role[i] != ROLE_ENTRY)
		return 0;
	if ((r = zent_digest(c->z, e, &c->md, 1, d)) != 0)
		return r;
	memcpy(c->digests + i * c->mdlen, d[0], c->mdlen);
	return 0;
}

static uint64_t
total_csize(const struct zarc *z)
{
	uint64_t t = 0;
	for (size_t i = 0; i < z->n; i++)
		t += z->e[i].csize;
	return t;
}

/* Read a whole small entry (manifest, .SF, block). */
static int
zent_slurp(const struct zarc *z, const struct zent *e, uint8_t **out,
    size_t *len)
{
	uint8_t *buf = NULL, *in = NULL;
	z_stream zs;
	int r;

	memset(&zs, 0, sizeof(zs));
	if (e->usize > MAX_META)
		return bad("%s is too large", e->name);
	if ((buf = malloc((size_t)e->usize + 1)) == NULL ||
	    (in = malloc(e->csize ? (size_t)e->csize : 1)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	if (e->csize > MAX_META) {
		r = bad("%s is too large", e->name);
		goto out;
	}
	if ((r = zread(z, e->doff, in, (size_t)e->csize)) != 0)
		goto out;
	if (e->method == 0) {
		memcpy(buf, in, (size_t)e->csize);
	} else {
		int zr;
		if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) {
			r = HSMFS_ERR_NOMEM;
			goto out;
		}
		zs.next_in = in;
		zs.avail_in = (uInt)e->csize;
		zs.next_out = buf;
		zs.avail_out = (uInt)e->usize + 1;
		zr = inflate(&zs, Z_FINISH);
		inflateEnd(&zs);
		if (zr != Z_STREAM_END || zs.total_out != e->usize ||
		    zs.avail_in != 0) {
			r = bad("corrupt compressed data: %s", e->name);
			goto out;
		}
	}
	if ((uint32_t)crc32(crc32(0L, Z_NULL, 0), buf, (uInt)e->usize) != e->crc) {
		r = bad("CRC error: %s", e->name);
		goto out;
	}
	buf[e->usize] = '\0';
	*out = buf;
	*len = (size_t)e->usize;
	buf = NULL;
	r = 0;
out:
	free(in);
	free(buf);
	return r;
}

/* ---------------------------------------------------------------- */
/* Manifest / signature file text                                    */

struct mf_attr {
	char *name, *value;
};

struct mf_section {
	size_t off, len;         /* raw bytes, including the blank line */
	struct mf_attr *a;
	size_t na;
	const char *name;        /* value of Name: (individual sections) */
};

struct mf {
	struct mf_section *s;    /* s[0] is the main section */
	size_t ns, cap;
	struct mf_section **idx; /* s[1..] sorted by name */
	const char *dup;         /* a name with two sections, if any */
};

static void
mf_free(struct mf *m)
{
	for (size_t i = 0; i < m->ns; i++) {
		for (size_t j = 0; j < m->s[i].na; j++) {
			free(m->s[i].a[j].name);
			free(m->s[i].a[j].value);
		}
		free(m->s[i].a);
	}
	free(m->s);
	free(m->idx);
	memset(m, 0, sizeof(*m));
}

static const char *
mf_get(const struct mf_section *s, const char *name)
{
	for (size_t i = 0; i < s->na; i++)
		if (strcasecmp(s->a[i].name, name) == 0)
			return s->a[i].value;
	return NULL;
}

/* Next line [*ls, *le) and the offset after its terminator (CRLF, LF, CR). */
static size_t
mf_line(const char *b, size_t n, size_t p, size_t *le)
{
	size_t i = p;
	while (i < n && b[i] != '\r' && b[i] != '\n')
		i++;
	*le = i;
	if (i < n && b[i] == '\r')
		i++;
	if (i < n && b[i] == '\n' && (i == *le || b[i - 1] == '\r'))
		i++;
	return i;
}

static int
mf_add_attr(struct mf_section *s, const char *line, size_t len)
{
	const char *colon = memchr(line, ':', len);
	struct mf_attr *na;
	if (colon == NULL || colon == line || colon + 1 >= line + len ||
	    colon[1] != ' ')
		return bad("malformed manifest line");
	if ((na = realloc(s->a, (s->na + 1) * sizeof(*na))) == NULL)
		return HSMFS_ERR_NOMEM;
	s->a = na;
	na = &s->a[s->na];
	na->name = strndup(line, (size_t)(colon - line));
	na->value = strndup(colon + 2, len - (size_t)(colon - line) - 2);
	if (na->name == NULL || na->value == NULL) {
		free(na->name);
		free(na->value);
		return HSMFS_ERR_NOMEM;
	}
	s->na++;
	return 0;
}

static int
cmp_sec(const void *a, const void *b)
{
	return strcmp((*(struct mf_section *const *)a)->name,
	    (*(struct mf_section *const *)b)->name);
}

/* Lookups by name stay O(log n): zips may have 200,000 entries. */
static int
mf_index(struct mf *m)
{
	size_t n = m->ns ? m->ns - 1 : 0;
	if ((m->idx = calloc(n ? n : 1, sizeof(*m->idx))) == NULL)
		return HSMFS_ERR_NOMEM;
	for (size_t i = 0; i < n; i++)
		m->idx[i] = &m->s[i + 1];
	qsort(m->idx, n, sizeof(*m->idx), cmp_sec);
	for (size_t i = 1; i < n && m->dup == NULL; i++)
		if (strcmp(m->idx[i - 1]->name, m->idx[i]->name) == 0)
			m->dup = m->idx[i]->name;
	return 0;
}

static const struct mf_section *
mf_find(const struct mf *m, const char *name)
{
	struct mf_section key, *kp = &key, **p;
	if (m == NULL || m->ns < 2)
		return NULL;
	key.name = name;
	p = bsearch(&kp, m->idx, m->ns - 1, sizeof(*m->idx), cmp_sec);
	return p ? *p : NULL;
}

/* Parse manifest-format text into sections with their raw byte ranges;
 * continuation lines (leading space) are joined into the attribute. */
static int
mf_parse(const char *b, size_t n, struct mf *m, const char *what)
{
	size_t p = 0;
	char *line = NULL;
	size_t cap = 0, ll = 0;
	int r;

	memset(m, 0, sizeof(*m));
	if (memchr(b, '\0', n) != NULL) {
		r = bad("%s contains a NUL byte", what);
		goto out;
	}
	while (p < n || m->ns == 0) {
		struct mf_section *s, *ns;
		if (m->ns == m->cap) {  /* geometric: 200,000 sections */
			size_t nc = m->cap ? m->cap * 2 : 64;
			if ((ns = realloc(m->s, nc * sizeof(*ns))) == NULL) {
				r = HSMFS_ERR_NOMEM;
				goto out;
			}
			m->s = ns;
			m->cap = nc;
		}
		s = &m->s[m->ns++];
		memset(s, 0, sizeof(*s));
		s->off = p;
		ll = 0;
		for (;;) {
			size_t le, next;
			if (p >= n) {
				if (ll && (r = mf_add_attr(s, line, ll)) != 0)
					goto out;
				break;
			}
			next = mf_line(b, n, p, &le);
			if (le == p) {          /* blank line ends the section */
				if (ll && (r = mf_add_attr(s, line, ll)) != 0)
					goto out;
				p = next;
				break;
			}
			if (b[p] == ' ') {
				if (ll == 0) {
					r = bad("%s: continuation line without a header", what);
					goto out;
				}
			} else if (ll) {
				if ((r = mf_add_attr(s, line, ll)) != 0)
					goto out;
				ll = 0;
			}
			{
				size_t add = le - p - (b[p] == ' ' ? 1 : 0);
				const char *src = b + p + (b[p] == ' ' ? 1 : 0);
				if (ll + add + 1 > cap) {
					char *nl = realloc(line, ll + add + 256);
					if (nl == NULL) {
						r = HSMFS_ERR_NOMEM;
						goto out;
					}
					line = nl;
					cap = ll + add + 256;
				}
				memcpy(line + ll, src, add);
				ll += add;
				line[ll] = '\0';
			}
			p = next;
		}
		s->len = p - s->off;
		if (m->ns > 1) {
			if (s->na == 0) {     /* stray blank line: not a section */
				m->ns--;
				free(s->a);
				continue;
			}
			if ((s->name = mf_get(s, "Name")) == NULL ||
			    strcasecmp(s->a[0].name, "Name") != 0) {
				r = bad("%s: section without a leading Name", what);
				goto out;
			}
		}
	}
	r = mf_index(m);
out:
	free(line);
	if (r != 0)
		mf_free(m);
	return r;
}

struct sbuf {
	char *b;
	size_t n, cap;
};

static int
sb_put(struct sbuf *s, const void *p, size_t n)
{
	if (s->n + n + 1 > s->cap) {
		size_t nc = (s->n + n + 1) * 2;
		char *nb = realloc(s->b, nc);
		if (nb == NULL)
			return HSMFS_ERR_NOMEM;
		s->b = nb;
		s->cap = nc;
	}
	memcpy(s->b + s->n, p, n);
	s->n += n;
	s->b[s->n] = '\0';
	return 0;
}

/* "Name: value" wrapped at 72 bytes per line (continuations start with a
 * space), never inside a UTF-8 sequence, CRLF terminated. */
static int
sb_header(struct sbuf *s, const char *name, const char *value)
{
	size_t nl = strlen(name), vl = strlen(value), width = 72, used;
	char *full = malloc(nl + 2 + vl + 1);
	size_t fl, p = 0;
	int r = 0;
	if (full == NULL)
		return HSMFS_ERR_NOMEM;
	memcpy(full, name, nl);
	memcpy(full + nl, ": ", 2);
	memcpy(full + nl + 2, value, vl + 1);
	fl = nl + 2 + vl;
	used = 0;
	while (p < fl && r == 0) {
		size_t take = fl - p;
		if (p > 0) {
			r = sb_put(s, " ", 1);
			used = 1;
		}
		if (take > width - used) {
			take = width - used;
			while (take > 1 && ((unsigned char)full[p + take] & 0xc0) == 0x80)
				take--;
		}
		if (r == 0)
			r = sb_put(s, full + p, take);
		if (r == 0)
			r = sb_put(s, "\r\n", 2);
		p += take;
	}
	free(full);
	return r;
}

static const char *
md_java_name(const EVP_MD *md)
{
	switch (EVP_MD_get_type(md)) {
	case NID_sha256: return "SHA-256";
	case NID_sha384: return "SHA-384";
	case NID_sha512: return "SHA-512";
	}
	return NULL;
}

/* Accepted digest attribute prefixes; SHA-1 and MD5 are deliberately
 * absent (SPEC §3: a SHA-1 signature is invalid). */
static const EVP_MD *
md_from_java(const char *s, size_t n)
{
	if (n == 7 && strncasecmp(s, "SHA-256", 7) == 0)
		return EVP_sha256();
	if (n == 7 && strncasecmp(s, "SHA-384", 7) == 0)
		return EVP_sha384();
	if (n == 7 && strncasecmp(s, "SHA-512", 7) == 0)
		return EVP_sha512();
	return NULL;
}

static int
is_weak_digest_attr(const char *name, const char *suffix)
{
	size_t n = strlen(name), sl = strlen(suffix);
	if (n <= sl || strcasecmp(name + n - sl, suffix) != 0)
		return 0;
	return strncasecmp(name, "SHA1", 4) == 0 || strncasecmp(name, "SHA-1", 5) == 0 ||
	    strncasecmp(name, "MD5", 3) == 0 || strncasecmp(name, "MD2", 3) == 0;
}

static int
is_dir(const struct zent *e)
{
	return e->nlen > 0 && e->name[e->nlen - 1] == '/';
}

static int
b64_of(const uint8_t *d, size_t n, char **out)
{
	if ((*out = util_b64_encode(d, n)) == NULL)
		return HSMFS_ERR_NOMEM;
	return 0;
}

static int
digest_b64(const EVP_MD *md, const void *p, size_t n, char **out)
{
	uint8_t d[EVP_MAX_MD_SIZE];
	unsigned dl;
	if (EVP_Digest(p, n, d, &dl, md, NULL) != 1) {
		err_set_ossl("digest");
		return HSMFS_ERR_CRYPTO;
	}
	return b64_of(d, dl, out);
}

/* What each entry is for the signature (JAR specification, made strict):
 * the manifest; per signer exactly one X.SF with exactly one block
 * (X.RSA, X.DSA or X.EC), names compared without case as Java does; the
 * signer being replaced at signing (own: its base name, or NULL);
 * directories; everything else, SIG-* and any other file under META-INF/
 * included, is an ordinary entry the manifest must cover. */
static const char *const block_exts[] = {".RSA", ".DSA", ".EC"};

static int
cmp_case(const void *a, const void *b)
{
	const struct zent *x = *(struct zent *const *)a, *y = *(struct zent *const *)b;
	return strcasecmp(x->name, y->name);
}

/* Extension of a direct child of META-INF/: 1 .SF, 2 block, 3 manifest,
 * 0 other (or not a direct child). */
static int
meta_kind(const char *name, size_t *baselen)
{
	const char *b, *dot;
	if (strncasecmp(name, "META-INF/", 9) != 0)
		return 0;
	b = name + 9;
	if (*b == '\0' || strchr(b, '/') != NULL)
		return 0;
	if (strcasecmp(b, "MANIFEST.MF") == 0)
		return 3;
	if ((dot = strrchr(b, '.')) == NULL || dot == b)
		return 0;
	*baselen = (size_t)(dot - b);
	if (strcasecmp(dot, ".SF") == 0)
		return 1;
	for (size_t k = 0; k < 3; k++)
		if (strcasecmp(dot, block_exts[k]) == 0)
			return 2;
	return 0;
}

static int
meta_roles(const struct zarc *z, const char *own, uint8_t *role, int *block)
{
	struct zent **v = NULL, key, *kp = &key, **hit;
	size_t nv = 0;
	char nm[300];
	int r = 0;

	if ((v = calloc(z->n ? z->n : 1, sizeof(*v))) == NULL)
		return HSMFS_ERR_NOMEM;
	for (size_t i = 0; i < z->n; i++) {
		const struct zent *e = &z->e[i];
		size_t bl = 0;
		block[i] = -1;
		role[i] = is_dir(e) ? ROLE_DIR : ROLE_ENTRY;
		if (strncasecmp(e->name, "META-INF/", 9) == 0 &&
		    strchr(e->name + 9, '/') == NULL)
			v[nv++] = &z->e[i];
		if (meta_kind(e->name, &bl) == 3)
			role[i] = ROLE_MANIFEST;
	}
	qsort(v, nv, sizeof(*v), cmp_case);
	for (size_t i = 1; i < nv; i++)
		if (strcasecmp(v[i - 1]->name, v[i]->name) == 0) {
			r = bad("two entries whose names differ only in case: %s",
			    v[i]->name);
			goto out;
		}
	for (size_t i = 0; i < z->n; i++) {
		const char *name = z->e[i].name;
		size_t bl = 0;
		int kind = meta_kind(name, &bl), nb = 0;
		if (kind != 1 && kind != 2)
			continue;
		if (own && bl == strlen(own) && strncasecmp(name + 9, own, bl) == 0) {
			role[i] = ROLE_OWN;
			continue;
		}
		if (kind != 1)
			continue;
		role[i] = ROLE_SF;
		for (size_t k = 0; k < 3; k++) {
			snprintf(nm, sizeof(nm), "%.*s%s", (int)(9 + bl), name,
			    block_exts[k]);
			key.name = nm;
			if ((hit = bsearch(&kp, v, nv, sizeof(*v), cmp_case)) != NULL) {
				block[i] = (int)(*hit - z->e);
				role[block[i]] = ROLE_BLOCK;
				nb++;
			}
		}
		if (nb != 1) {
			r = nb ? bad("%s has %d signature blocks (exactly one of "
			    ".RSA/.DSA/.EC allowed)", name, nb) :
			    bad("%s has no signature block (.RSA/.DSA/.EC)", name);
			goto out;
		}
	}
	for (size_t i = 0; i < z->n; i++) {
		size_t bl = 0;
		if (role[i] == ROLE_ENTRY && meta_kind(z->e[i].name, &bl) == 2) {
			r = bad("signature block %s without its .SF file", z->e[i].name);
			goto out;
		}
	}
out:
	free(v);
	return r;
}

/* The manifest entry, matched case-insensitively as Java does; two
 * spellings of it would let readers disagree on which one counts. */
static int
find_manifest(const struct zarc *z, long *idx)
{
	*idx = -1;
	for (size_t i = 0; i < z->n; i++) {
		if (strcasecmp(z->e[i].name, "META-INF/MANIFEST.MF") != 0)
			continue;
		if (*idx >= 0)
			return bad("two manifests (names differing in case)");
		*idx = (long)i;
	}
	return 0;
}

/* ---------------------------------------------------------------- */
/* Output                                                            */

static void
put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void
put32(uint8_t *p, uint32_t v)
{
	put16(p, (uint16_t)v);
	put16(p + 2, (uint16_t)(v >> 16));
}

static int
write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err_set("write: %s", strerror(errno));
			return hsmfs_errno_err(errno);
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Copy [off, off+len) of the input to the output's position, in the
 * kernel when it can (copy_file_range), else through a buffer. */
static int
copy_range(int in, uint64_t off, int out, uint64_t len)
{
	static const size_t bufsz = 1 << 20;
	uint8_t *buf = NULL;
	loff_t o = (loff_t)off;
	int r = 0;
	while (len > 0) {
		ssize_t n = copy_file_range(in, &o, out, NULL,
		    len > (1u << 30) ? (1u << 30) : (size_t)len, 0);
		if (n > 0) {
			len -= (uint64_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 0 || errno == EXDEV || errno == ENOSYS || errno == EINVAL ||
		    errno == EOPNOTSUPP)
			break;
		err_set("copy: %s", strerror(errno));
		return hsmfs_errno_err(errno);
	}
	if (len > 0 && (buf = malloc(bufsz)) == NULL)
		return HSMFS_ERR_NOMEM;
	while (len > 0 && r == 0) {
		ssize_t n = pread(in, buf, len > bufsz ? bufsz : (size_t)len, (off_t)o);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			err_set("read: %s", n < 0 ? strerror(errno) : "short file");
			r = HSMFS_ERR_IO;
			break;
		}
		r = write_all(out, buf, (size_t)n);
		o += n;
		len -= (uint64_t)n;
	}
	free(buf);
	return r;
}

struct new_entry {
	const char *name;
	const uint8_t *data;
	size_t len;
	uint8_t *comp;           /* raw deflate of data */
	size_t clen;
	uint32_t crc;
	uint64_t off;
};

static int
deflate_buf(struct new_entry *ne)
{
	z_stream zs;
	size_t cap;
	int zr;
	memset(&zs, 0, sizeof(zs));
	if (deflateInit2(&zs, Z_BEST_COMPRESSION, Z_DEFLATED, -MAX_WBITS, 8,
	    Z_DEFAULT_STRATEGY) != Z_OK)
		return HSMFS_ERR_NOMEM;
	cap = deflateBound(&zs, (uLong)ne->len);
	if ((ne->comp = malloc(cap)) == NULL) {
		deflateEnd(&zs);
		return HSMFS_ERR_NOMEM;
	}
	zs.next_in = (Bytef *)(uintptr_t)ne->data;
	zs.avail_in = (uInt)ne->len;
	zs.next_out = ne->comp;
	zs.avail_out = (uInt)cap;
	zr = deflate(&zs, Z_FINISH);
	ne->clen = zs.total_out;
	deflateEnd(&zs);
	if (zr != Z_STREAM_END)
		return HSMFS_ERR_CRYPTO;
	ne->crc = (uint32_t)crc32(crc32(0L, Z_NULL, 0), ne->data, (uInt)ne->len);
	return 0;
}

static void
dos_time(time_t t, uint16_t *dtime, uint16_t *ddate)
{
	struct tm tm;
	localtime_r(&t, &tm);
	if (tm.tm_year < 80) {
		*dtime = 0;
		*ddate = (1 << 5) | 1;
		return;
	}
	*dtime = (uint16_t)(tm.tm_hour << 11 | tm.tm_min << 5 | tm.tm_sec / 2);
	*ddate = (uint16_t)((tm.tm_year - 80) << 9 | (tm.tm_mon + 1) << 5 | tm.tm_mday);
}

/* The signed zip without libzip: the three signature entries, then every
 * kept entry's local header, data and descriptor copied byte for byte
 * (copy_file_range), then the central directory records copied byte for
 * byte with only their local header offset changed. Used when no zip64
 * field is needed in the central directory or end record (the libzip
 * writer handles those). */
static int
write_raw(const struct zarc *z, const char *out_path, struct new_entry *ne,
    const uint8_t *keep, time_t now)
{
	uint8_t h[46], *cd = NULL;
	uint16_t dtime, ddate;
	uint64_t off = 0, cd_start, nout = 3;
	int fd = -1, r;
	size_t cdcap = 1 << 16;

	dos_time(now, &dtime, &ddate);
	if ((fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0) {
		err_set("%s: %s", out_path, strerror(errno));
		return hsmfs_errno_err(errno);
	}
	for (int k = 0; k < 3; k++) {
		size_t nl = strlen(ne[k].name);
		memset(h, 0, 30);
		put32(h, 0x04034b50);
		put16(h + 4, 20);
		put16(h + 8, 8);
		put16(h + 10, dtime);
		put16(h + 12, ddate);
		put32(h + 14, ne[k].crc);
		put32(h + 18, (uint32_t)ne[k].clen);
		put32(h + 22, (uint32_t)ne[k].len);
		put16(h + 26, (uint16_t)nl);
		ne[k].off = off;
		if ((r = write_all(fd, h, 30)) != 0 ||
		    (r = write_all(fd, ne[k].name, nl)) != 0 ||
		    (r = write_all(fd, ne[k].comp, ne[k].clen)) != 0)
			goto out;
		off += 30 + nl + ne[k].clen;
	}
	/* Runs of consecutive kept entries are one copy. */
	for (size_t i = 0; i < z->n;) {
		size_t j = i;
		uint64_t len = 0;
		if (!keep[i]) {
			i++;
			continue;
		}
		while (j < z->n && keep[j] && (j == i || z->e[j].loff == z->e[j - 1].end))
			len += z->e[j].end - z->e[j].loff, j++;
		if ((r = copy_range(z->fd, z->e[i].loff, fd, len)) != 0)
			goto out;
		off += len;
		i = j;
	}
	cd_start = off;
	for (int k = 0; k < 3; k++) {
		size_t nl = strlen(ne[k].name);
		memset(h, 0, 46);
		put32(h, 0x02014b50);
		put16(h + 4, 0x0314);            /* made by: Unix, 2.0 */
		put16(h + 6, 20);
		put16(h + 10, 8);
		put16(h + 12, dtime);
		put16(h + 14, ddate);
		put32(h + 16, ne[k].crc);
		put32(h + 20, (uint32_t)ne[k].clen);
		put32(h + 24, (uint32_t)ne[k].len);
		put16(h + 28, (uint16_t)nl);
		put32(h + 38, 0100644u << 16);   /* -rw-r--r-- */
		put32(h + 42, (uint32_t)ne[k].off);
		if ((r = write_all(fd, h, 46)) != 0 || (r = write_all(fd, ne[k].name, nl)) != 0)
			goto out;
		off += 46 + nl;
	}
	if ((cd = malloc(cdcap)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	{
		uint64_t data_off = 0;
		/* New local offsets follow from the copy order above. */
		for (int k = 0; k < 3; k++)
			data_off += 30 + strlen(ne[k].name) + ne[k].clen;
		for (size_t i = 0; i < z->n; i++) {
			const struct zent *e = &z->e[i];
			if (!keep[i])
				continue;
			if (e->cdlen > cdcap) {
				r = bad("central directory record too long");
				goto out;
			}
			if ((r = zread(z, e->cdoff, cd, e->cdlen)) != 0)
				goto out;
			put32(cd + 42, (uint32_t)data_off);
			if ((r = write_all(fd, cd, e->cdlen)) != 0)
				goto out;
			data_off += e->end - e->loff;
			off += e->cdlen;
			nout++;
		}
	}
	memset(h, 0, 22);
	put32(h, 0x06054b50);
	put16(h + 8, (uint16_t)nout);
	put16(h + 10, (uint16_t)nout);
	put32(h + 12, (uint32_t)(off - cd_start));
	put32(h + 16, (uint32_t)cd_start);
	put16(h + 20, z->comment_len);
	if ((r = write_all(fd, h, 22)) != 0)
		goto out;
	if (z->comment_len > 0 &&
	    (r = copy_range(z->fd, z->comment_off, fd, z->comment_len)) != 0)
		goto out;
	if (close(fd) < 0) {
		fd = -1;
		err_set("%s: %s", out_path, strerror(errno));
		r = hsmfs_errno_err(errno);
		goto out;
	}
	fd = -1;
	r = 0;
out:
	if (fd >= 0)
		close(fd);
	free(cd);
	return r;
}

/* Sign in place, without copying any entry: insert a block-aligned gap at
 * the start of the file (FALLOC_FL_INSERT_RANGE moves extents, not bytes),
 * write the three signature entries into it (the last one's local extra
 * field pads to the gap's exact size, as zipalign does), then rewrite the
 * central directory with shifted offsets. Only for files nothing is
 * dropped from, on filesystems that support it (ext4, XFS); *done = 0
 * otherwise, with the file untouched. After the insertion a failure
 * leaves the file unusable (it is the caller's spool, never user data). */
#define PAD_EXTRA_ID 0xd935      /* zipalign's alignment padding field */
#define INPLACE_MAX_CD (16u << 20)

static int
write_in_place(const struct zarc *z, const char *path, struct new_entry *ne,
    time_t now, int *done)
{
	struct stat st;
	uint8_t h[46], *cd = NULL, *pre = NULL;
	uint16_t dtime, ddate;
	uint64_t cd_size = 0, p = 0, gap, pad, off;
	int fd = -1, r = 0;

	*done = 0;
	for (size_t i = 0; i < z->n; i++)
		cd_size += z->e[i].cdlen;
	for (int k = 0; k < 3; k++)
		p += 30 + strlen(ne[k].name) + ne[k].clen;
	if (cd_size > INPLACE_MAX_CD || z->comment_len > 0)
		return 0;
	if ((fd = open(path, O_RDWR | O_CLOEXEC)) < 0 || fstat(fd, &st) < 0 ||
	    st.st_blksize <= 0 || st.st_blksize > 32768) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	gap = (p + 4 + (uint64_t)st.st_blksize - 1) / (uint64_t)st.st_blksize *
	    (uint64_t)st.st_blksize;
	pad = gap - p;                   /* >= 4: room for the field header */
	if ((cd = malloc(cd_size ? cd_size : 1)) == NULL ||
	    (pre = calloc(1, gap)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	if (cd_size > 0 && (r = zread(z, z->cd_off, cd, cd_size)) != 0)
		goto out;
	dos_time(now, &dtime, &ddate);
	off = 0;
	for (int k = 0; k < 3; k++) {
		size_t nl = strlen(ne[k].name);
		uint8_t *l = pre + off;
		put32(l, 0x04034b50);
		put16(l + 4, 20);
		put16(l + 8, 8);
		put16(l + 10, dtime);
		put16(l + 12, ddate);
		put32(l + 14, ne[k].crc);
		put32(l + 18, (uint32_t)ne[k].clen);
		put32(l + 22, (uint32_t)ne[k].len);
		put16(l + 26, (uint16_t)nl);
		put16(l + 28, k == 2 ? (uint16_t)pad : 0);
		memcpy(l + 30, ne[k].name, nl);
		ne[k].off = off;
		off += 30 + nl;
		if (k == 2) {
			put16(pre + off, PAD_EXTRA_ID);
			put16(pre + off + 2, (uint16_t)(pad - 4));
			off += pad;
		}
		memcpy(pre + off, ne[k].comp, ne[k].clen);
		off += ne[k].clen;
	}
	if (fallocate(fd, FALLOC_FL_INSERT_RANGE, 0, (off_t)gap) < 0) {
		r = 0;                       /* unsupported here: copy instead */
		goto out;
	}
	*done = 1;
	if (pwrite(fd, pre, gap, 0) != (ssize_t)gap ||
	    ftruncate(fd, (off_t)(gap + z->cd_off)) < 0 ||
	    lseek(fd, (off_t)(gap + z->cd_off), SEEK_SET) < 0) {
		err_set("%s: %s", path, strerror(errno));
		r = hsmfs_errno_err(errno);
		goto out;
	}
	off = 0;
	for (int k = 0; k < 3; k++) {
		size_t nl = strlen(ne[k].name);
		memset(h, 0, 46);
		put32(h, 0x02014b50);
		put16(h + 4, 0x0314);
		put16(h + 6, 20);
		put16(h + 10, 8);
		put16(h + 12, dtime);
		put16(h + 14, ddate);
		put32(h + 16, ne[k].crc);
		put32(h + 20, (uint32_t)ne[k].clen);
		put32(h + 24, (uint32_t)ne[k].len);
		put16(h + 28, (uint16_t)nl);
		put32(h + 38, 0100644u << 16);
		put32(h + 42, (uint32_t)ne[k].off);
		if ((r = write_all(fd, h, 46)) != 0 || (r = write_all(fd, ne[k].name, nl)) != 0)
			goto out;
		off += 46 + nl;
	}
	/* The old records, in their order, each pointing gap bytes further. */
	for (size_t i = 0; i < z->n; i++) {
		uint8_t *rec = cd + (z->e[i].cdoff - z->cd_off);
		put32(rec + 42, (uint32_t)(z->e[i].loff + gap));
	}
	if ((r = write_all(fd, cd, cd_size)) != 0)
		goto out;
	off += cd_size;
	memset(h, 0, 22);
	put32(h, 0x06054b50);
	put16(h + 8, (uint16_t)(z->n + 3));
	put16(h + 10, (uint16_t)(z->n + 3));
	put32(h + 12, (uint32_t)off);
	put32(h + 16, (uint32_t)(gap + z->cd_off));
	if ((r = write_all(fd, h, 22)) != 0)
		goto out;
	r = 0;
out:
	if (fd >= 0 && close(fd) < 0 && r == 0 && *done) {
		err_set("%s: %s", path, strerror(errno));
		r = hsmfs_errno_err(errno);
	}
	free(cd);
	free(pre);
	return r;
}

/* The raw writer needs no zip64 structure anywhere in the output. */
static int
raw_possible(const struct zarc *z, const struct new_entry *ne, const uint8_t *keep)
{
	uint64_t size = 22 + (uint64_t)z->comment_len, n = 3;
	if (z->zip64)
		return 0;
	for (int k = 0; k < 3; k++)
		size += 76 + 2 * strlen(ne[k].name) + ne[k].clen;
	for (size_t i = 0; i < z->n; i++) {
		if (!keep[i])
			continue;
		if (z->e[i].cd64)
			return 0;
		size += z->e[i].end - z->e[i].loff + z->e[i].cdlen;
		n++;
	}
	return n < 0xffff && size < 0xffffffffu;
}

/* ---------------------------------------------------------------- */
/* Signing                                                           */

void
jar_signer_name(const char *alias, char out[9])
{
	size_t i = 0;
	for (; alias && alias[i] && i < 8; i++) {
		char c = alias[i];
		if (c >= 'a' && c <= 'z')
			c = (char)(c - 'a' + 'A');
		if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
		    c == '_'))
			c = '_';
		out[i] = c;
	}
	if (i == 0)
		memcpy(out, "SIGNER", (i = 6));
	out[i] = '\0';
}

static int
zip_fail(zip_t *za, const char *what)
{
	err_set("%s: %s", what, za ? zip_strerror(za) : "libzip failure");
	return HSMFS_ERR_IO;
}

static int
add_buffer(zip_t *out, const char *name, const void *buf, size_t len,
    time_t now)
{
	zip_source_t *src = zip_source_buffer(out, buf, len, 0);
	zip_int64_t idx;
	if (src == NULL)
		return zip_fail(out, name);
	if ((idx = zip_file_add(out, name, src, ZIP_FL_ENC_UTF_8)) < 0) {
		zip_source_free(src);
		return zip_fail(out, name);
	}
	if (zip_set_file_compression(out, (zip_uint64_t)idx, ZIP_CM_DEFLATE, 0) < 0 ||
	    zip_file_set_mtime(out, (zip_uint64_t)idx, now, 0) < 0)
		return zip_fail(out, name);
	return 0;
}

/* Copy entry i of in to out without recompressing: same name, method,
 * time, attributes, comment and extra fields; the compressed bytes are
 * passed through (ZIP_FL_COMPRESSED with a matching method). */
static int
copy_entry(zip_t *out, zip_t *in, const struct zent *e, zip_uint64_t i)
{
	zip_source_t *src = zip_source_zip(out, in, i, ZIP_FL_COMPRESSED, 0, -1);
	zip_int64_t idx;
	zip_uint8_t opsys;
	zip_uint32_t attr, clen;
	const char *comment;
	zip_flags_t where[2] = {ZIP_FL_LOCAL, ZIP_FL_CENTRAL};

	if (src == NULL)
		return zip_fail(out, e->name);
	if ((idx = zip_file_add(out, e->name, src, ZIP_FL_ENC_UTF_8)) < 0) {
		zip_source_free(src);
		return zip_fail(out, e->name);
	}
	if (zip_set_file_compression(out, (zip_uint64_t)idx,
	    e->method == 0 ? ZIP_CM_STORE : ZIP_CM_DEFLATE, 0) < 0 ||
	    zip_file_set_dostime(out, (zip_uint64_t)idx, e->dtime, e->ddate, 0) < 0)
		return zip_fail(out, e->name);
	if (zip_file_get_external_attributes(in, i, 0, &opsys, &attr) == 0 &&
	    zip_file_set_external_attributes(out, (zip_uint64_t)idx, 0, opsys,
	    attr) < 0)
		return zip_fail(out, e->name);
	if ((comment = zip_file_get_comment(in, i, &clen, ZIP_FL_ENC_RAW)) &&
	    clen > 0 && zip_file_set_comment(out, (zip_uint64_t)idx, comment,
	    (zip_uint16_t)clen, 0) < 0)
		return zip_fail(out, e->name);
	for (int w = 0; w < 2; w++) {
		zip_int16_t nx = zip_file_extra_fields_count(in, i, where[w]);
		for (zip_int16_t x = 0; x < nx; x++) {
			zip_uint16_t id, len;
			const zip_uint8_t *d = zip_file_extra_field_get(in, i,
			    (zip_uint16_t)x, &id, &len, where[w]);
			if (d && zip_file_extra_field_set(out, (zip_uint64_t)idx, id,
			    ZIP_EXTRA_FIELD_NEW, d, len, where[w]) < 0)
				return zip_fail(out, e->name);
		}
	}
	return 0;
}

/* The main section of an existing manifest is kept (its attributes, in
 * order, re-wrapped); a fresh one gets Manifest-Version and Created-By. */
static int
build_main(struct sbuf *mf, const struct mf *old, const char *created_by)
{
	int r = 0;
	if (old && old->ns > 0 && old->s[0].na > 0) {
		const struct mf_section *s = &old->s[0];
		if (mf_get(s, "Manifest-Version") == NULL)
			r = sb_header(mf, "Manifest-Version", "1.0");
		for (size_t i = 0; i < s->na && r == 0; i++)
			r = sb_header(mf, s->a[i].name, s->a[i].value);
		if (r == 0 && mf_get(s, "Created-By") == NULL)
			r = sb_header(mf, "Created-By", created_by);
	} else {
		r = sb_header(mf, "Manifest-Version", "1.0");
		if (r == 0)
			r = sb_header(mf, "Created-By", created_by);
	}
	if (r == 0)
		r = sb_put(mf, "\r\n", 2);
	return r;
}

static int
add_chain(CMS_ContentInfo *cms, STACK_OF(X509) *chain, X509 *leaf)
{
	for (int i = 0; chain && i < sk_X509_num(chain); i++) {
		X509 *c = sk_X509_value(chain, i);
		if (X509_cmp(c, leaf) != 0 && CMS_add1_cert(cms, c) != 1)
			return 0;
	}
	return 1;
}

/* One manifest section. An entry's section in an existing manifest keeps
 * its attributes and order (only our digest line is set), so the section
 * bytes of another signer using the same digest stay what it signed. */
static int
build_section(struct sbuf *mf, const struct mf *old, const char *name,
    const char *attr, const char *b64)
{
	const struct mf_section *os = mf_find(old, name);
	int r, wrote = 0;
	if ((r = sb_header(mf, "Name", name)) != 0)
		return r;
	for (size_t i = 1; os && i < os->na && r == 0; i++) {
		if (strcasecmp(os->a[i].name, attr) == 0) {
			if (wrote)
				continue;
			r = sb_header(mf, attr, b64);
			wrote = 1;
		} else {
			r = sb_header(mf, os->a[i].name, os->a[i].value);
		}
	}
	if (r == 0 && !wrote)
		r = sb_header(mf, attr, b64);
	if (r == 0)
		r = sb_put(mf, "\r\n", 2);
	return r;
}

static int
cms_sign_sf(const struct jar_sign_opts *o, const struct sbuf *sf,
    uint8_t **der, size_t *derlen)
{
	X509 *cert = hsm_key_cert(o->key);
	EVP_PKEY *pkey = hsm_key_pkey(o->key);
	BIO *in = NULL;
	CMS_ContentInfo *cms = NULL;
	unsigned flags = CMS_BINARY | CMS_DETACHED | CMS_PARTIAL | CMS_NOATTR |
	    CMS_NOSMIMECAP;
	unsigned char *p = NULL;
	int len, r = HSMFS_ERR_CRYPTO;

	if (cert == NULL || pkey == NULL) {
		err_set("key %s has no certificate", hsm_key_name(o->key));
		return HSMFS_ERR_NOTFOUND;
	}
	/* No signed attributes, as jarsigner: the signature is then exactly
	 * one RSASSA-PKCS1-v1_5 over the .SF bytes, done by the HSM. */
	if ((in = BIO_new_mem_buf(sf->b, (int)sf->n)) == NULL ||
	    (cms = CMS_sign(NULL, NULL, NULL, NULL, flags)) == NULL ||
	    CMS_add1_signer(cms, cert, pkey, o->md, flags) == NULL ||
	    !add_chain(cms, o->chain, cert) ||
	    CMS_final(cms, in, NULL, flags) != 1) {
		err_set_ossl("CMS signature with key %s", hsm_key_name(o->key));
		goto out;
	}
	if ((len = i2d_CMS_ContentInfo(cms, &p)) <= 0) {
		err_set_ossl("CMS encoding");
		goto out;
	}
	*der = p;
	*derlen = (size_t)len;
	r = 0;
out:
	CMS_ContentInfo_free(cms);
	BIO_free(in);
	return r;
}

int
jar_sign(const char *in_path, const char *out_path, const struct jar_sign_opts *o)
{
	return jar_sign_ex(in_path, out_path, o, NULL);
}

int
jar_sign_ex(const char *in_path, const char *out_path,
    const struct jar_sign_opts *o, int *in_place)
{
	struct zarc z;
	zip_t *in = NULL, *out = NULL;
	struct mf old;
	struct sbuf mf = {0}, sf = {0};
	uint8_t *oldmf = NULL, *block = NULL;
	size_t oldmflen = 0, blocklen = 0, main_len;
	char signer[9], created[64], path_sf[32], path_blk[32], attr[32];
	char **sections = NULL;  /* per-entry manifest section digests (b64) */
	char *b64 = NULL;
	const char *alg = o->md ? md_java_name(o->md) : NULL;
	long mf_index = -1;
	struct sign_dig dig = {0};
	struct new_entry ne[3];
	uint8_t *keep = NULL, *role = NULL;
	int *blockof = NULL;
	time_t now = time(NULL);
	int r, have_old = 0;

	if (in_place)
		*in_place = 0;
	memset(&old, 0, sizeof(old));
	memset(ne, 0, sizeof(ne));
	z.fd = -1;
	z.e = NULL;
	if (alg == NULL) {
		err_set("JAR digest must be SHA-256, SHA-384 or SHA-512");
		return HSMFS_ERR_CONFIG;
	}
	jar_signer_name(o->signer, signer);
	snprintf(created, sizeof(created), "%s",
	    o->created_by ? o->created_by : "hsmfs " HSMFS_VERSION);
	snprintf(path_sf, sizeof(path_sf), "META-INF/%s.SF", signer);
	snprintf(path_blk, sizeof(path_blk), "META-INF/%s.RSA", signer);
	snprintf(attr, sizeof(attr), "%s-Digest", alg);

	if ((r = zarc_open(in_path, &z)) != 0 ||
	    (r = zarc_libzip_check(in_path, &z, &in)) != 0)
		goto out;
	if ((r = find_manifest(&z, &mf_index)) != 0)
		goto out;
	if ((role = calloc(z.n ? z.n : 1, 1)) == NULL ||
	    (blockof = calloc(z.n ? z.n : 1, sizeof(*blockof))) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	if ((r = meta_roles(&z, signer, role, blockof)) != 0)
		goto out;
	/* Other signers' files are kept as they are: they too must inflate
	 * exactly, so that no byte of the output goes unchecked. */
	for (size_t i = 0; i < z.n; i++) {
		uint8_t *b = NULL;
		size_t bl = 0;
		if (role[i] != ROLE_SF && role[i] != ROLE_BLOCK)
			continue;
		if ((r = zent_slurp(&z, &z.e[i], &b, &bl)) != 0)
			goto out;
		free(b);
	}
	if (mf_index >= 0) {
		if ((r = zent_slurp(&z, &z.e[mf_index], &oldmf, &oldmflen)) != 0 ||
		    (r = mf_parse((char *)oldmf, oldmflen, &old, "META-INF/MANIFEST.MF")) != 0)
			goto out;
		have_old = 1;
	}
	if ((r = build_main(&mf, have_old ? &old : NULL, created)) != 0)
		goto out;
	main_len = mf.n;
	if ((sections = calloc(z.n ? z.n : 1, sizeof(*sections))) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	dig.z = &z;
	dig.role = role;
	dig.md = o->md;
	dig.mdlen = (size_t)EVP_MD_get_size(o->md);
	if ((dig.digests = calloc(z.n ? z.n : 1, dig.mdlen)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	if ((r = par_for(z.n, total_csize(&z), sign_dig_one, &dig)) != 0)
		goto out;
	for (size_t i = 0; i < z.n; i++) {
		const struct zent *e = &z.e[i];
		size_t start = mf.n;
		if (role[i] != ROLE_ENTRY)
			continue;
		if ((r = b64_of(dig.digests + i * dig.mdlen, dig.mdlen, &b64)) != 0 ||
		    (r = build_section(&mf, have_old ? &old : NULL, e->name, attr,
		    b64)) != 0)
			goto out;
		free(b64);
		b64 = NULL;
		if ((r = digest_b64(o->md, mf.b + start, mf.n - start,
		    &sections[i])) != 0)
			goto out;
	}
	/* The signature file: whole-manifest and main-section digests, then
	 * one section per entry over its exact manifest section bytes. */
	{
		char name[48];
		if ((r = sb_header(&sf, "Signature-Version", "1.0")) != 0 ||
		    (r = sb_header(&sf, "Created-By", created)) != 0 ||
		    (r = digest_b64(o->md, mf.b, main_len, &b64)) != 0)
			goto out;
		snprintf(name, sizeof(name), "%s-Digest-Manifest-Main-Attributes", alg);
		if ((r = sb_header(&sf, name, b64)) != 0)
			goto out;
		free(b64);
		b64 = NULL;
		if ((r = digest_b64(o->md, mf.b, mf.n, &b64)) != 0)
			goto out;
		snprintf(name, sizeof(name), "%s-Digest-Manifest", alg);
		if ((r = sb_header(&sf, name, b64)) != 0 ||
		    (r = sb_put(&sf, "\r\n", 2)) != 0)
			goto out;
		free(b64);
		b64 = NULL;
		for (size_t i = 0; i < z.n; i++) {
			if (sections[i] == NULL)
				continue;
			if ((r = sb_header(&sf, "Name", z.e[i].name)) != 0 ||
			    (r = sb_header(&sf, attr, sections[i])) != 0 ||
			    (r = sb_put(&sf, "\r\n", 2)) != 0)
				goto out;
		}
	}
	if ((r = cms_sign_sf(o, &sf, &block, &blocklen)) != 0)
		goto out;

	if ((keep = calloc(z.n ? z.n : 1, 1)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	for (size_t i = 0; i < z.n; i++) {
		/* Our own earlier signature is replaced; other signers stay. */
		if (role[i] == ROLE_MANIFEST || role[i] == ROLE_OWN)
			continue;
		keep[i] = 1;
	}
	ne[0].name = "META-INF/MANIFEST.MF";
	ne[0].data = (uint8_t *)mf.b;
	ne[0].len = mf.n;
	ne[1].name = path_sf;
	ne[1].data = (uint8_t *)sf.b;
	ne[1].len = sf.n;
	ne[2].name = path_blk;
	ne[2].data = block;
	ne[2].len = blocklen;
	for (int k = 0; k < 3; k++)
		if ((r = deflate_buf(&ne[k])) != 0)
			goto out;
	if (raw_possible(&z, ne, keep)) {
		int all_kept = 1;
		for (size_t i = 0; i < z.n; i++)
			all_kept &= keep[i];
		if (in_place && all_kept) {
			if ((r = write_in_place(&z, in_path, ne, now, in_place)) != 0 ||
			    *in_place)
				goto out;
		}
		r = write_raw(&z, out_path, ne, keep, now);
		goto out;
	}
	{
		int ze = 0;
		if ((out = zip_open(out_path, ZIP_CREATE | ZIP_TRUNCATE, &ze)) == NULL) {
			zip_error_t er;
			zip_error_init_with_code(&er, ze);
			err_set("%s: %s", out_path, zip_error_strerror(&er));
			zip_error_fini(&er);
			r = HSMFS_ERR_IO;
			goto out;
		}
	}
	/* jarsigner's order: manifest, .SF, block, then the entries. */
	if ((r = add_buffer(out, "META-INF/MANIFEST.MF", mf.b, mf.n, now)) != 0 ||
	    (r = add_buffer(out, path_sf, sf.b, sf.n, now)) != 0 ||
	    (r = add_buffer(out, path_blk, block, blocklen, now)) != 0)
		goto out;
	for (size_t i = 0; i < z.n; i++)
		if (keep[i] && (r = copy_entry(out, in, &z.e[i], i)) != 0)
			goto out;
	{
		int clen = 0;
		const char *c = zip_get_archive_comment(in, &clen, ZIP_FL_ENC_RAW);
		if (c && clen > 0 && zip_set_archive_comment(out, c,
		    (zip_uint16_t)clen) < 0) {
			r = zip_fail(out, "archive comment");
			goto out;
		}
	}
	if (zip_close(out) < 0) {
		r = zip_fail(out, out_path);
		goto out;
	}
	out = NULL;
	r = 0;
out:
	if (r == HSMFS_ERR_BADMSG)
		r = HSMFS_ERR_INVALID;  /* for the signer, bad input is EINVAL */
	if (out)
		zip_discard(out);
	if (in)
		zip_discard(in);
	for (size_t i = 0; sections && i < z.n; i++)
		free(sections[i]);
	free(sections);
	free(dig.digests);
	free(keep);
	free(role);
	free(blockof);
	for (int k = 0; k < 3; k++)
		free(ne[k].comp);
	free(b64);
	free(mf.b);
	free(sf.b);
	free(oldmf);
	OPENSSL_free(block);
	mf_free(&old);
	zarc_close(&z);
	return r;
}

/* ---------------------------------------------------------------- */
/* Verification                                                      */

static int
find_entry(const struct zarc *z, const char *name)
{
	struct zent key, *kp = &key, **p;
	key.name = (char *)name;
	key.nlen = strlen(name);
	p = bsearch(&kp, z->byname, z->n, sizeof(*z->byname), cmp_name);
	return p ? (int)(*p - z->e) : -1;
}

/* Strong digest attributes of a section ("<ALG>-Digest<suffix>"), at
 * most 3; weak ones are counted so the reason can say "SHA-1". */
struct dattr {
	const EVP_MD *md;
	const char *b64;
};

static size_t
section_digests(const struct mf_section *s, const char *suffix,
    struct dattr *d, int *weak)
{
	size_t nd = 0, sl = strlen(suffix);
	for (size_t i = 0; i < s->na; i++) {
		const char *n = s->a[i].name;
		size_t l = strlen(n);
		const EVP_MD *md;
		if (l <= sl || strcasecmp(n + l - sl, suffix) != 0)
			continue;
		if ((md = md_from_java(n, l - sl)) != NULL) {
			if (nd < 3) {
				d[nd].md = md;
				d[nd].b64 = s->a[i].value;
				nd++;
			}
		} else if (is_weak_digest_attr(n, suffix)) {
			(*weak)++;
		}
	}
	return nd;
}

static int
digest_matches(const EVP_MD *md, const void *p, size_t n, const char *b64)
{
	char *mine = NULL;
	int ok;
	if (digest_b64(md, p, n, &mine) != 0)
		return -1;
	ok = strcmp(mine, b64) == 0;
	free(mine);
	return ok;
}

static void
dn_rfc2253(X509_NAME *nm, char *out, size_t len)
{
	BIO *b = BIO_new(BIO_s_mem());
	int n;
	out[0] = '\0';
	if (b == NULL)
		return;
	X509_NAME_print_ex(b, nm, 0, XN_FLAG_RFC2253);
	n = BIO_read(b, out, (int)len - 1);
	out[n > 0 ? n : 0] = '\0';
	BIO_free(b);
}

/* Keep in *na the earlier of itself and x's notAfter. */
static void
min_not_after(X509 *x, time_t *na)
{
	struct tm tm;
	time_t t;
	if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1 &&
	    (t = timegm(&tm)) > 0 && (*na == 0 || t < *na))
		*na = t;
}

/* The signer certificate is trusted; *na gets the earliest notAfter of the
 * certificates that made it so (the whole chain up to the trusted root). */
static int
signer_trusted(X509 *cert, STACK_OF(X509) *chain, const struct jar_trust *t,
    time_t *na)
{
	int direct = 0, r;
	uint32_t ku;
	for (size_t i = 0; t && i < t->ncerts; i++)
		if (t->certs[i] && X509_cmp(cert, t->certs[i]) == 0)
			direct = 1;
	if (direct) {
		if (X509_cmp_current_time(X509_get0_notBefore(cert)) >= 0)
			return bad("signer certificate is not yet valid");
		if (X509_cmp_current_time(X509_get0_notAfter(cert)) <= 0)
			return bad("signer certificate has expired");
		min_not_after(cert, na);
	} else if (t && t->store) {
		X509_STORE_CTX *ctx = X509_STORE_CTX_new();
		if (ctx == NULL)
			return HSMFS_ERR_NOMEM;
		if (X509_STORE_CTX_init(ctx, t->store, cert, chain) != 1) {
			X509_STORE_CTX_free(ctx);
			err_set_ossl("X509_STORE_CTX_init");
			return HSMFS_ERR_CRYPTO;
		}
		X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_ANY);
		r = X509_verify_cert(ctx);
		if (r != 1) {
			int e = X509_STORE_CTX_get_error(ctx);
			X509_STORE_CTX_free(ctx);
			ERR_clear_error();
			return bad("signer certificate not trusted: %s",
			    X509_verify_cert_error_string(e));
		}
		{
			STACK_OF(X509) *vc = X509_STORE_CTX_get0_chain(ctx);
			for (int k = 0; k < sk_X509_num(vc); k++)
				min_not_after(sk_X509_value(vc, k), na);
		}
		X509_STORE_CTX_free(ctx);
	} else {
		return bad("signer certificate is not a configured ConfigZipSigner "
		    "certificate and no truststore is configured");
	}
	ku = X509_get_key_usage(cert);
	if ((X509_get_extension_flags(cert) & EXFLAG_KUSAGE) &&
	    !(ku & KU_DIGITAL_SIGNATURE))
		return bad("signer certificate lacks the digitalSignature key usage");
	/* A certificate for something else (a TLS server, say) from the same
	 * CA does not sign configuration. */
	if ((X509_get_extension_flags(cert) & EXFLAG_XKUSAGE) &&
	    !(X509_get_extended_key_usage(cert) & (XKU_CODE_SIGN | XKU_ANYEKU)))
		return bad("signer certificate's extended key usage does not "
		    "include codeSigning");
	return 0;
}

/* One signer: CMS over the .SF, then .SF against the manifest. */
static int
verify_signer(const struct zarc *z, int sf_i, int blk_i, const char *mfb,
    size_t mfl, const struct mf *m, const struct jar_trust *t,
    struct jar_verdict *v, struct mf *sfm)
{
	uint8_t *sfb = NULL, *blk = NULL;
	size_t sfl = 0, blkl = 0;
	const unsigned char *p;
	CMS_ContentInfo *cms = NULL;
	BIO *content = NULL;
	STACK_OF(X509) *signers = NULL, *certs = NULL;
	STACK_OF(CMS_SignerInfo) *sis;
	X509_ALGOR *dig = NULL;
	const ASN1_OBJECT *obj;
	X509 *cert;
	struct dattr d[3];
	int weak = 0, r;
	size_t nd;

	if ((r = zent_slurp(z, &z->e[sf_i], &sfb, &sfl)) != 0 ||
	    (r = zent_slurp(z, &z->e[blk_i], &blk, &blkl)) != 0)
		goto out;
	p = blk;
	if ((cms = d2i_CMS_ContentInfo(NULL, &p, (long)blkl)) == NULL ||
	    p != blk + blkl) {
		ERR_clear_error();
		r = bad("%s is not a DER CMS signature", z->e[blk_i].name);
		goto out;
	}
	if (OBJ_obj2nid(CMS_get0_type(cms)) != NID_pkcs7_signed ||
	    CMS_is_detached(cms) != 1) {
		r = bad("%s is not a detached CMS SignedData", z->e[blk_i].name);
		goto out;
	}
	sis = CMS_get0_SignerInfos(cms);
	if (sk_CMS_SignerInfo_num(sis) != 1) {
		r = bad("%s must hold exactly one signer", z->e[blk_i].name);
		goto out;
	}
	CMS_SignerInfo_get0_algs(sk_CMS_SignerInfo_value(sis, 0), NULL, NULL,
	    &dig, NULL);
	X509_ALGOR_get0(&obj, NULL, NULL, dig);
	switch (OBJ_obj2nid(obj)) {
	case NID_sha256: case NID_sha384: case NID_sha512:
		break;
	case NID_sha1:
		r = bad("SHA-1 signature in %s is not accepted", z->e[blk_i].name);
		goto out;
	default:
		r = bad("unsupported digest algorithm in %s", z->e[blk_i].name);
		goto out;
	}
	if ((content = BIO_new_mem_buf(sfb, (int)sfl)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	if (CMS_verify(cms, NULL, NULL, content, NULL,
	    CMS_BINARY | CMS_NO_SIGNER_CERT_VERIFY) != 1) {
		unsigned long e = ERR_peek_last_error();
		char es[200];
		ERR_error_string_n(e, es, sizeof(es));
		ERR_clear_error();
		r = bad("signature in %s does not verify over %s (%s)",
		    z->e[blk_i].name, z->e[sf_i].name,
		    ERR_reason_error_string(e) ? ERR_reason_error_string(e) : es);
		goto out;
	}
	if ((signers = CMS_get0_signers(cms)) == NULL ||
	    sk_X509_num(signers) != 1 || (cert = sk_X509_value(signers, 0)) == NULL) {
		r = bad("signer certificate missing from %s", z->e[blk_i].name);
		goto out;
	}
	certs = CMS_get1_certs(cms);
	if ((r = signer_trusted(cert, certs, t, &v->not_after)) != 0)
		goto out;
	if (v->signer[0] == '\0')
		dn_rfc2253(X509_get_subject_name(cert), v->signer, sizeof(v->signer));

	if ((r = mf_parse((char *)sfb, sfl, sfm, z->e[sf_i].name)) != 0)
		goto out;
	if (sfm->dup != NULL) {
		r = bad("%s has two sections for %s", z->e[sf_i].name, sfm->dup);
		goto out;
	}
	/* Main attributes: whole-manifest digest (strong only). */
	nd = section_digests(&sfm->s[0], "-Digest-Manifest", d, &weak);
	if (nd == 0) {
		r = weak ? bad("SHA-1 digests in %s are not accepted", z->e[sf_i].name) :
		    bad("%s has no manifest digest", z->e[sf_i].name);
		goto out;
	}
	/* A stale whole-manifest digest is tolerated, as in Java (another
	 * signer may have grown the manifest): the main-section and per-entry
	 * section digests below are what bind this signer to the entries. */
	(void)mfl;
	weak = 0;
	nd = section_digests(&sfm->s[0], "-Digest-Manifest-Main-Attributes", d, &weak);
	for (size_t i = 0; i < nd; i++) {
		int ok = digest_matches(d[i].md, mfb, m->s[0].len, d[i].b64);
		if (ok <= 0) {
			r = ok < 0 ? HSMFS_ERR_CRYPTO :
			    bad("%s: manifest main attributes modified", z->e[sf_i].name);
			goto out;
		}
	}
	/* Every .SF section must match its manifest section byte for byte. */
	for (size_t s = 1; s < sfm->ns; s++) {
		const struct mf_section *ss = &sfm->s[s];
		const struct mf_section *ms = mf_find(m, ss->name);
		weak = 0;
		if (ms == NULL) {
			r = bad("%s names %s, which is not in the manifest",
			    z->e[sf_i].name, ss->name);
			goto out;
		}
		nd = section_digests(ss, "-Digest", d, &weak);
		if (nd == 0) {
			r = weak ? bad("SHA-1 digests in %s are not accepted",
			    z->e[sf_i].name) :
			    bad("%s: no digest for %s", z->e[sf_i].name, ss->name);
			goto out;
		}
		for (size_t i = 0; i < nd; i++) {
			int ok = digest_matches(d[i].md, mfb + ms->off, ms->len, d[i].b64);
			if (ok <= 0) {
				r = ok < 0 ? HSMFS_ERR_CRYPTO :
				    bad("manifest section of %s does not match %s",
				    ss->name, z->e[sf_i].name);
				goto out;
			}
		}
	}
	r = 0;
out:
	if (r != 0)
		mf_free(sfm);
	sk_X509_pop_free(certs, X509_free);
	sk_X509_free(signers);
	BIO_free(content);
	CMS_ContentInfo_free(cms);
	free(sfb);
	free(blk);
	return r;
}

static int
sf_has(const struct mf *sfm, const char *name)
{
	return mf_find(sfm, name) != NULL;
}

/* Verification: entry i against the digests of its manifest section. */
struct verify_dig {
	const struct zarc *z;
	const struct mf_section **ms;   /* per entry, NULL: not covered */
};

static int
verify_dig_one(void *ctx, size_t i)
{
	struct verify_dig *c = ctx;
	const struct zent *e = &c->z->e[i];
	struct dattr d[3];
	const EVP_MD *mds[3] = {NULL, NULL, NULL};
	uint8_t got[3][EVP_MAX_MD_SIZE];
	int weak = 0, r;
	size_t nd;
	if (c->ms[i] == NULL)
		return 0;
	nd = section_digests(c->ms[i], "-Digest", d, &weak);
	for (size_t k = 0; k < nd; k++)
		mds[k] = d[k].md;
	if ((r = zent_digest(c->z, e, mds, nd, got)) != 0)
		return r;
	for (size_t k = 0; k < nd; k++) {
		char *b = NULL;
		if ((r = b64_of(got[k], (size_t)EVP_MD_get_size(mds[k]), &b)) != 0)
			return r;
		r = strcmp(b, d[k].b64) != 0;
		free(b);
		if (r)
			return bad("entry %s was modified (digest mismatch)", e->name);
	}
	return 0;
}

int
jar_verify(const char *path, const struct jar_trust *t, struct jar_verdict *v)
{
	struct zarc z;
	struct mf m, *sfm = NULL;
	struct verify_dig vd = {0};
	uint8_t *mfb = NULL, *role = NULL;
	int *blockof = NULL;
	size_t mfl = 0, nsig = 0;
	long mf_l = -1;
	int mf_i = -1, r;

	memset(v, 0, sizeof(*v));
	memset(&m, 0, sizeof(m));
	err_clear();
	if ((r = zarc_open(path, &z)) != 0)
		goto out_noz;
	if ((r = zarc_libzip_check(path, &z, NULL)) != 0)
		goto out;
	if ((r = find_manifest(&z, &mf_l)) != 0)
		goto out;
	mf_i = (int)mf_l;
	if (mf_i < 0) {
		r = bad("unsigned zip (no META-INF/MANIFEST.MF)");
		goto out;
	}
	if ((r = zent_slurp(&z, &z.e[mf_i], &mfb, &mfl)) != 0 ||
	    (r = mf_parse((char *)mfb, mfl, &m, "META-INF/MANIFEST.MF")) != 0)
		goto out;
	if (m.dup != NULL) {
		r = bad("manifest has two sections for %s", m.dup);
		goto out;
	}
	if ((sfm = calloc(z.n, sizeof(*sfm))) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	if ((role = calloc(z.n ? z.n : 1, 1)) == NULL ||
	    (blockof = calloc(z.n ? z.n : 1, sizeof(*blockof))) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	if ((r = meta_roles(&z, NULL, role, blockof)) != 0)
		goto out;
	/* Every signer present must verify and be trusted. */
	for (size_t i = 0; i < z.n; i++) {
		if (role[i] != ROLE_SF)
			continue;
		if ((r = verify_signer(&z, (int)i, blockof[i], (char *)mfb, mfl, &m,
		    t, v, &sfm[nsig])) != 0)
			goto out;
		nsig++;
	}
	if (nsig == 0) {
		r = bad("unsigned zip (no signature file in META-INF)");
		goto out;
	}
	/* Manifest sections must name existing entries ... */
	for (size_t s = 1; s < m.ns; s++) {
		int k = find_entry(&z, m.s[s].name);
		if (k < 0) {
			r = bad("entry %s is listed in the manifest but missing",
			    m.s[s].name);
			goto out;
		}
	}
	/* ... and every entry must be in the manifest and in every .SF (cheap
	 * checks first), then match its digests (in parallel). */
	if ((vd.ms = calloc(z.n, sizeof(*vd.ms))) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	for (size_t i = 0; i < z.n; i++) {
		const struct zent *e = &z.e[i];
		struct dattr d[3];
		int weak = 0;
		if (role[i] != ROLE_ENTRY)
			continue;
		if ((vd.ms[i] = mf_find(&m, e->name)) == NULL) {
			r = bad("entry %s is not signed (not in the manifest)", e->name);
			goto out;
		}
		for (size_t k = 0; k < nsig; k++)
			if (!sf_has(&sfm[k], e->name)) {
				r = bad("entry %s is not covered by every signature file",
				    e->name);
				goto out;
			}
		if (section_digests(vd.ms[i], "-Digest", d, &weak) == 0) {
			r = weak ? bad("SHA-1 digests are not accepted (entry %s)",
			    e->name) : bad("entry %s has no digest in the manifest",
			    e->name);
			goto out;
		}
	}
	vd.z = &z;
	if ((r = par_for(z.n, total_csize(&z), verify_dig_one, &vd)) != 0)
		goto out;
	v->valid = 1;
	r = 0;
out:
	for (size_t k = 0; sfm && k < nsig; k++)
		mf_free(&sfm[k]);
	free(sfm);
	free(vd.ms);
	free(role);
	free(blockof);
	mf_free(&m);
	free(mfb);
	zarc_close(&z);
out_noz:
	if (r != 0) {
		v->valid = 0;
		v->signer[0] = '\0';
		snprintf(v->reason, sizeof(v->reason), "%s", err_detail());
	}
	return r;
}

int
jar_trust_load_pem(const char *path, X509_STORE **out)
{
	X509_STORE *st = X509_STORE_new();
	BIO *b = NULL;
	X509 *x;
	int n = 0, r = HSMFS_ERR_CONFIG;

	if (st == NULL)
		return HSMFS_ERR_NOMEM;
	if ((b = BIO_new_file(path, "r")) == NULL) {
		err_set_ossl("truststore %s: cannot open", path);
		r = HSMFS_ERR_NOTFOUND;
		goto out;
	}
	while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
		X509_STORE_add_cert(st, x);
		X509_free(x);
		n++;
	}
	ERR_clear_error();
	if (n == 0) {
		err_set("truststore %s: no PEM certificate found", path);
		goto out;
	}
	*out = st;
	st = NULL;
	r = 0;
out:
	BIO_free(b);
	X509_STORE_free(st);
	return r;
}

int
jar_chain_from_store(X509 *leaf, X509_STORE *store, STACK_OF(X509) **out)
{
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	STACK_OF(X509) *chain = NULL;
	if (ctx == NULL || X509_STORE_CTX_init(ctx, store, leaf, NULL) != 1) {
		X509_STORE_CTX_free(ctx);
		return HSMFS_ERR_NOMEM;
	}
	X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_ANY);
	if (X509_verify_cert(ctx) == 1 && (chain = X509_STORE_CTX_get1_chain(ctx))) {
		X509_free(sk_X509_shift(chain));   /* the leaf itself */
	} else {
		chain = sk_X509_new_null();
	}
	ERR_clear_error();
	X509_STORE_CTX_free(ctx);
	if (chain == NULL)
		return HSMFS_ERR_NOMEM;
	*out = chain;
	return 0;
}
