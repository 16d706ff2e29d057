/* The strict zip reader (contract §8): our own parse of the end record,
 * central directory and local headers (every byte of the file accounted
 * for, the work budget against bombs), then libzip's ZIP_CHECKCONS view
 * cross-checked entry by entry. Entry data (inflate, digests) is in
 * zip_data.c. */
#include "crypto/zip_int.h"
#include "common/err.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Where readers look for the end record: a maximal comment, the record
 * and a zip64 locator before it. */
#define TAIL_WINDOW (65535 + 22 + 20)

int
jar_bad(const char *fmt, ...)
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
int
zarc_read(const struct zarc *z, uint64_t off, void *buf, size_t len)
{
	size_t got = 0;
	if (off > z->size || len > z->size - off)
		return jar_bad("truncated zip (structure points past the end of the file)");
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
			return jar_bad("truncated zip");
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
 * readers are refused outright (contract §8). */
static int
name_check(const char *name, size_t n)
{
	if (n == 0)
		return jar_bad("empty entry name");
	if (!utf8_valid((const uint8_t *)name, n))
		return jar_bad("entry name is not valid UTF-8");
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)name[i];
		if (c < 0x20 || c == 0x7f)
			return jar_bad("entry name contains a control character");
		if (c == '\\')
			return jar_bad("entry name contains a backslash: %s", name);
	}
	if (name[0] == '/')
		return jar_bad("absolute entry name: %s", name);
	if (n >= 2 && name[1] == ':' &&
	    ((name[0] >= 'A' && name[0] <= 'Z') || (name[0] >= 'a' && name[0] <= 'z')))
		return jar_bad("entry name with a drive letter: %s", name);
	for (const char *p = name; p < name + n;) {
		const char *s = memchr(p, '/', (size_t)(name + n - p));
		size_t cl = s ? (size_t)(s - p) : (size_t)(name + n - p);
		if ((cl == 2 && p[0] == '.' && p[1] == '.'))
			return jar_bad("entry name with a '..' component: %s", name);
		if (cl == 0 || (cl == 1 && p[0] == '.'))
			return jar_bad("entry name with an empty or '.' component: %s", name);
		if (s == NULL)
			break;
		p = s + 1;
		if (p == name + n)
			break;  /* trailing '/': a directory */
	}
	return 0;
}

void
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
			return jar_bad("malformed extra field");
		if (id == 0x0001) {
			if (*usize == 0xffffffffu || (local && p + 16 <= len)) {
				if (p + 8 > len)
					return jar_bad("malformed zip64 extra field");
				*usize = le64(d + p);
				p += 8;
			}
			if (*csize == 0xffffffffu || (local && p + 8 <= len)) {
				if (p + 8 > len)
					return jar_bad("malformed zip64 extra field");
				*csize = le64(d + p);
				p += 8;
			}
			if (loff && *loff == 0xffffffffu) {
				if (p + 8 > len)
					return jar_bad("malformed zip64 extra field");
				*loff = le64(d + p);
				p += 8;
			}
			/* Central: exactly the fields whose 32-bit value is the
			 * marker (readers differ on what else they would take). */
			if (!local && p != len)
				return jar_bad("zip64 extra field with fields the header "
				    "does not need");
			return 1;
		}
		i += 4 + (size_t)len;
	}
	if (i != xlen)
		return jar_bad("malformed extra field");
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

/* Extra fields (contract §8): well-formed records that tile the field exactly,
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
			return jar_bad("zip structure signature inside the %s extra field "
			    "of %s", where, e->name);
	while (i + 4 <= xlen) {
		uint16_t id = le16(x + i), len = le16(x + i + 2);
		if (i + 4 + len > xlen)
			break;
		for (size_t k = 0; k < ns; k++)
			if (seen[k] == id)
				return jar_bad("extra field 0x%04x twice in the %s header of %s",
				    id, where, e->name);
		if (ns == 64)
			return jar_bad("too many extra fields in %s", e->name);
		seen[ns++] = id;
		if (id == 0x6375)
			return jar_bad("Unicode comment extra field refused: %s", e->name);
		if (id == 0x7075 && (len < 5 || x[i + 4] != 1 ||
		    (size_t)len - 5 != e->nlen ||
		    memcmp(x + i + 9, e->name, e->nlen) != 0))
			return jar_bad("Unicode path extra field naming another name: %s",
			    e->name);
		i += 4 + (size_t)len;
	}
	if (i != xlen)
		return jar_bad("malformed extra field in the %s header of %s", where,
		    e->name);
	return 0;
}

/* Find the end record. It must be the last 22 bytes of the file: archive
 * comments are refused (jarsigner and IdM exports write none, and a
 * comment is where a second directory hides). A zip64 end record and
 * locator must be there exactly when a classic field holds its 0xffff /
 * 0xffffffff marker, directly before the end record, and every classic
 * field must be either that marker or equal to the zip64 value. A
 * parser of the end records: its length is their fields' checks. */
static int
zarc_find_end(struct zarc *z, uint64_t *cd_off, uint64_t *cd_size,
    uint64_t *count, uint64_t *cd_end_expect)
{
	uint8_t *tail = NULL;
	size_t tl;
	int r, seen = 0;
	int64_t pos = -1;

	if (z->size < 22)
		return jar_bad("not a zip file (too short)");
	tl = z->size < TAIL_WINDOW ? (size_t)z->size : TAIL_WINDOW;
	if ((tail = malloc(tl)) == NULL)
		return HSMFS_ERR_NOMEM;
	if ((r = zarc_read(z, z->size - tl, tail, tl)) != 0)
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
		r = seen ? jar_bad("data after the end of the zip (garbage appended)") :
		    jar_bad("not a zip file (no end of central directory)");
		goto out;
	}
	/* Readers look for the end record in this window (libzip tries every
	 * candidate there and keeps the "most consistent" one): no second
	 * end-record signature, not even inside entry data or a comment. */
	for (size_t i = 0; i + 4 <= tl; i++)
		if (tail[i] == 'P' && le32(tail + i) == 0x06054b50 &&
		    z->size - tl + i != (uint64_t)pos) {
			r = jar_bad("a second end-of-central-directory signature at offset "
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
			r = jar_bad("archive comment (refused: a comment can hide a "
			    "second directory)");
			goto out;
		}
		if (pos >= 20) {
			if ((r = zarc_read(z, (uint64_t)pos - 20, loc, 20)) != 0)
				goto out;
			has_loc = le32(loc) == 0x07064b50;
		}
		if (has_loc && !need64) {
			r = jar_bad("zip64 end locator that the end record does not need");
			goto out;
		}
		if (need64) {
			uint8_t rec[56];
			uint64_t roff;
			if (!has_loc) {
				r = jar_bad("zip64 end locator missing");
				goto out;
			}
			roff = le64(loc + 8);
			if (pos < 20 + 56 || roff != (uint64_t)pos - 20 - 56) {
				r = jar_bad("zip64 end record not directly before its locator");
				goto out;
			}
			if ((r = zarc_read(z, roff, rec, 56)) != 0)
				goto out;
			if (le32(rec) != 0x06064b50 || le64(rec + 4) != 44) {
				r = jar_bad("malformed zip64 end record");
				goto out;
			}
			if (le32(rec + 16) != 0 || le32(rec + 20) != 0 ||
			    le32(loc + 4) != 0 || le32(loc + 16) != 1) {
				r = jar_bad("multi-disk zips are not supported");
				goto out;
			}
			if ((n1 != 0xffff && n1 != le64(rec + 24)) ||
			    (n2 != 0xffff && n2 != le64(rec + 32)) ||
			    (sz != 0xffffffffu && sz != le64(rec + 40)) ||
			    (off != 0xffffffffu && off != le64(rec + 48)) ||
			    (disk != 0xffff && disk != 0) ||
			    (cddisk != 0xffff && cddisk != 0)) {
				r = jar_bad("end record and zip64 end record disagree");
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
			r = jar_bad("multi-disk zips are not supported");
			goto out;
		}
		if (n1 != n2) {
			r = jar_bad("inconsistent entry counts in the end record");
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
		if ((r = zarc_read(z, pos, buf, n)) != 0)
			break;
		for (size_t k = 0; k + 4 <= n && k < step; k++) {
			uint64_t at = pos + k;
			uint32_t sig;
			if (buf[k] != 'P' || buf[k + 1] != 'K')
				continue;
			sig = le32(buf + k);
			if (sig == 0x06054b50 && at != z->eocd_off) {
				r = jar_bad("a second end-of-central-directory signature at "
				    "offset %llu", (unsigned long long)at);
				break;
			}
			if (sig == 0x02014b50) {
				while (ci < z->n && z->e[ci].cdoff < at)
					ci++;
				if (ci >= z->n || z->e[ci].cdoff != at) {
					r = jar_bad("a central directory signature inside the "
					    "central directory at offset %llu",
					    (unsigned long long)at);
					break;
				}
			} else if ((sig == 0x06064b50 && !(z->zip64 && at == z->z64rec_off)) ||
			    (sig == 0x07064b50 && !(z->zip64 && at == z->eocd_off - 20))) {
				r = jar_bad("a stray zip64 end record or locator signature at "
				    "offset %llu", (unsigned long long)at);
				break;
			}
		}
		pos += step;
	}
	free(buf);
	return r;
}

/* The checks on one central directory record that need no other record
 * (h: its fixed part; the name and extra field are already checked). */
static int
cd_record_check(const struct zent *e, const uint8_t *h)
{
	int ascii = 1;
	if (h[6] > 45)
		return jar_bad("entry needs zip version %u.%u to extract: %s",
		    h[6] / 10, h[6] % 10, e->name);
	for (size_t k = 0; k < e->nlen; k++)
		ascii &= (unsigned char)e->name[k] < 0x80;
	if (!ascii && !(e->flags & 0x0800))
		return jar_bad("non-ASCII entry name without the UTF-8 flag "
		    "(readers would decode it differently): %s", e->name);
	if (e->flags & 0x2041)
		return jar_bad("encrypted entry: %s", e->name);
	if (e->flags & ~0x080eu)
		return jar_bad("unsupported general purpose flags 0x%04x: %s",
		    e->flags, e->name);
	if (e->method != 0 && e->method != 8)
		return jar_bad("unsupported compression method %u: %s", e->method,
		    e->name);
	/* Readers skip directories when checking digests: a directory
	 * entry must not carry bytes the signature does not cover. */
	if (zent_is_dir(e) && (e->usize != 0 || e->csize != 0 ||
	    e->method != 0 || e->crc != 0))
		return jar_bad("directory entry with data (must be stored, sizes 0, "
		    "CRC 0): %s", e->name);
	/* The external attributes are not signed but decide how unzip
	 * extracts the signed bytes: a Unix mode (high 16 bits) may only
	 * say regular file (directory for directories) or nothing, with
	 * no setuid, setgid or sticky bit, and the MS-DOS directory
	 * attribute only on a directory (README.txt would otherwise be
	 * extracted as a symlink pointing at its content). */
	{
		uint32_t xa = le32(h + 38), type = (xa >> 16) & 0170000;
		int dir = zent_is_dir(e);
		if ((type != 0 && type != (dir ? 0040000u : 0100000u)) ||
		    ((xa >> 16) & 07000) != 0 || (!dir && (xa & 0x10)))
			return jar_bad("entry with external attributes 0x%08x (only a "
			    "plain %s mode is allowed): %s", (unsigned)xa,
			    dir ? "directory" : "file", e->name);
	}
	if (e->method == 0 && e->csize != e->usize)
		return jar_bad("stored entry with different sizes: %s", e->name);
	/* ZipInputStream (JarInputStream) refuses a data descriptor on a
	 * stored entry and sees nothing from there on; Java never
	 * writes one. */
	if (e->method == 0 && (e->flags & 0x0008))
		return jar_bad("stored entry with a data descriptor: %s", e->name);
	if (e->method == 8 && e->usize > JAR_RATIO_MIN_SIZE &&
	    e->usize / (e->csize ? e->csize : 1) > JAR_MAX_RATIO)
		return jar_bad("compression ratio above %d:1 (zip bomb?): %s",
		    JAR_MAX_RATIO, e->name);
	return 0;
}

/* The central directory record at *p (before cd_end) into the next
 * entry z->e[z->n] (counted in z->n once it owns its name); *p moves
 * past it. */
static int
cd_record(struct zarc *z, uint64_t *p, uint64_t cd_end)
{
	struct zent *e = &z->e[z->n];
	uint16_t nlen, xlen, clen;
	uint8_t h[46], *x = NULL;
	int r;

	if (*p + 46 > cd_end)
		return jar_bad("central directory shorter than its entry count");
	if ((r = zarc_read(z, *p, h, 46)) != 0)
		return r;
	if (le32(h) != 0x02014b50)
		return jar_bad("bad central directory entry signature");
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
	e->cdoff = *p;
	e->cdlen = 46u + nlen + xlen + clen;
	e->cd64 = e->csize == 0xffffffffu || e->usize == 0xffffffffu ||
	    e->loff == 0xffffffffu;
	if (le16(h + 34) != 0)
		return jar_bad("multi-disk zips are not supported");
	if (*p + 46 + nlen + xlen + clen > cd_end)
		return jar_bad("central directory entry overruns the directory");
	if ((e->name = malloc((size_t)nlen + 1)) == NULL ||
	    (xlen && (x = malloc(xlen)) == NULL))
		return HSMFS_ERR_NOMEM;
	z->n++;
	e->nlen = nlen;
	if ((r = zarc_read(z, *p + 46, e->name, nlen)) != 0 ||
	    (xlen && (r = zarc_read(z, *p + 46 + nlen, x, xlen)) != 0))
		goto out;
	e->name[nlen] = '\0';
	if (memchr(e->name, '\0', nlen) != NULL) {
		r = jar_bad("entry name contains a NUL byte");
		goto out;
	}
	if ((r = name_check(e->name, nlen)) != 0 ||
	    (r = extra_check(x, xlen, e, "central")) != 0)
		goto out;
	if ((r = zip64_extra(x, xlen, &e->usize, &e->csize, &e->loff, 0)) < 0)
		goto out;
	if (clen != 0) {
		r = jar_bad("entry comment (refused: a comment can hide a second "
		    "directory): %s", e->name);
		goto out;
	}
	if ((r = cd_record_check(e, h)) != 0)
		goto out;
	*p += 46 + (uint64_t)nlen + xlen + clen;
	r = 0;
out:
	free(x);
	return r;
}

/* The data descriptor after entry e (lh: its local header; lc, lu: the
 * local sizes; z64: the local header is zip64): optional signature, then
 * CRC and sizes (64-bit when the entry is zip64: a zip64 local header or
 * a size that needs it). The local header holds zeros or the same
 * values. e->end moves past it. */
static int
data_descriptor(const struct zarc *z, struct zent *e, const uint8_t *lh,
    uint64_t lc, uint64_t lu, int z64)
{
	uint8_t dd[24];
	int d64 = z64 > 0 || e->csize >= 0xffffffffu || e->usize >= 0xffffffffu;
	size_t dl = d64 ? 20 : 12, off = 0;
	int r;
	if ((le32(lh + 14) != 0 && le32(lh + 14) != e->crc) ||
	    (lc != 0 && lc != 0xffffffffu && lc != e->csize) ||
	    (lu != 0 && lu != 0xffffffffu && lu != e->usize))
		return jar_bad("local and central headers differ (CRC or sizes): %s",
		    e->name);
	if ((r = zarc_read(z, e->end, dd, 4)) != 0)
		return r;
	if (le32(dd) == 0x08074b50)
		off = 4;
	if ((r = zarc_read(z, e->end, dd, off + dl)) != 0)
		return r;
	if (le32(dd + off) != e->crc ||
	    (d64 ? le64(dd + off + 4) : le32(dd + off + 4)) != e->csize ||
	    (d64 ? le64(dd + off + 12) : le32(dd + off + 8)) != e->usize)
		return jar_bad("data descriptor and central directory differ: %s",
		    e->name);
	e->end += off + dl;
	return 0;
}

/* Entry i's local header, which must sit at p (where entry i - 1 ended)
 * and agree with the central directory; sets e->doff and e->end. */
static int
local_record(const struct zarc *z, size_t i, uint64_t p)
{
	struct zent *e = &z->e[i];
	uint8_t lh[30];
	uint64_t lu, lc;
	uint16_t nlen, xlen;
	uint8_t *buf = NULL;
	int z64, r;
	if (e->loff != p)
		return e->loff < p ? jar_bad("overlapping entries: %s", e->name) :
		    i == 0 ? jar_bad("data before the first local header "
		    "(prepended bytes)") :
		    jar_bad("unaccounted data before entry %s (entries must follow "
		    "each other in central directory order)", e->name);
	if ((r = zarc_read(z, e->loff, lh, 30)) != 0)
		return jar_bad("local header out of range: %s", e->name);
	if (le32(lh) != 0x04034b50)
		return jar_bad("no local header where the central directory points "
		    "(data prepended or shifted?): %s", e->name);
	nlen = le16(lh + 26);
	xlen = le16(lh + 28);
	if ((buf = malloc((size_t)nlen + xlen + 1)) == NULL)
		return HSMFS_ERR_NOMEM;
	if ((r = zarc_read(z, e->loff + 30, buf, (size_t)nlen + xlen)) != 0) {
		free(buf);
		return r;
	}
	if (nlen != e->nlen || memcmp(buf, e->name, nlen) != 0) {
		free(buf);
		return jar_bad("local and central header names differ: %s", e->name);
	}
	if ((r = extra_check(buf + nlen, xlen, e, "local")) != 0) {
		free(buf);
		return r;
	}
	lu = le32(lh + 22);
	lc = le32(lh + 18);
	z64 = zip64_extra(buf + nlen, xlen, &lu, &lc, NULL, 1);
	free(buf);
	if (z64 < 0)
		return z64;
	/* A data descriptor after a zip64 local header is 64-bit: only
	 * where the sizes need it, as ZipInputStream takes the width
	 * from the sizes (Java writes no other). Without a descriptor a
	 * needless zip64 local header is harmless (Python's
	 * force_zip64 writes one). */
	if (z64 > 0 && (e->flags & 0x0008) && e->csize < 0xffffffffu &&
	    e->usize < 0xffffffffu)
		return jar_bad("zip64 local header for an entry whose sizes do not "
		    "need it: %s", e->name);
	/* The zip64 values count only where the 32-bit field is the
	 * marker (as libzip reads it): the 32-bit fields are checked too. */
	if (le32(lh + 22) != 0xffffffffu)
		lu = le32(lh + 22);
	if (le32(lh + 18) != 0xffffffffu)
		lc = le32(lh + 18);
	if (le16(lh + 8) != e->method || le16(lh + 6) != e->flags)
		return jar_bad("local and central headers differ (method or flags): %s",
		    e->name);
	if (lh[4] > 45)
		return jar_bad("entry needs zip version %u.%u to extract: %s",
		    lh[4] / 10, lh[4] % 10, e->name);
	e->doff = e->loff + 30 + nlen + xlen;
	if (e->doff > z->size || e->csize > z->size - e->doff)
		return jar_bad("entry data past the end of the file: %s", e->name);
	e->end = e->doff + e->csize;
	if (e->flags & 0x0008)
		return data_descriptor(z, e, lh, lc, lu, z64);
	if (le32(lh + 14) != e->crc || lc != e->csize || lu != e->usize)
		return jar_bad("local and central headers differ (CRC or sizes): %s",
		    e->name);
	return 0;
}

/* The name index (z->byname): no duplicate, and no path through a file:
 * a directory "x/" (or any "x/...") beside a file "x" makes extraction
 * fail or keep one of them, and java.util.zip's getEntry("x") gives "x/"
 * when "x" is missing. */
static int
zarc_index(struct zarc *z)
{
	struct zent **v;
	int r = 0;
	if ((v = calloc(z->n ? z->n : 1, sizeof(*v))) == NULL)
		return HSMFS_ERR_NOMEM;
	for (size_t i = 0; i < z->n; i++)
		v[i] = &z->e[i];
	qsort(v, z->n, sizeof(*v), cmp_name);
	for (size_t i = 1; i < z->n && r == 0; i++)
		if (cmp_name(&v[i - 1], &v[i]) == 0)
			r = jar_bad("duplicate entry name: %s", v[i]->name);
	for (size_t i = 0; i < z->n && r == 0; i++) {
		struct zent key = z->e[i], *kp = &key;
		for (size_t k = 1; k < z->e[i].nlen; k++) {
			if (z->e[i].name[k] != '/')
				continue;
			key.nlen = k;
			if (bsearch(&kp, v, z->n, sizeof(*v), cmp_name) != NULL) {
				r = jar_bad("entry name goes through a file: %s",
				    z->e[i].name);
				break;
			}
		}
	}
	if (r != 0) {
		free(v);
		return r;
	}
	z->byname = v;
	return 0;
}

/* Read the archive once, every byte accounted for: the entries (local
 * header, data, data descriptor) tile the file from offset 0 in central
 * directory order, then the central directory, then the zip64 end record
 * and locator when needed, then the end record (contract §8). */
int
zarc_open(const char *path, struct zarc *z)
{
	struct stat st;
	uint64_t cd_off = 0, cd_size = 0, count = 0, cd_end_expect = 0, p;
	uint64_t inflated = 0, budget;
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
		r = jar_bad("central directory does not end at the end record "
		    "(data prepended, appended or inserted)");
		goto out;
	}
	if (count > JAR_MAX_ENTRIES || count > cd_size / 46 + 1) {
		r = jar_bad("too many entries (%llu)", (unsigned long long)count);
		goto out;
	}
	if ((z->e = calloc(count ? count : 1, sizeof(*z->e))) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	z->cd_off = cd_off;
	p = cd_off;
	for (uint64_t i = 0; i < count; i++) {
		if ((r = cd_record(z, &p, cd_end_expect)) != 0)
			goto out;
		inflated += z->e[z->n - 1].usize;
	}
	if (p != cd_end_expect) {
		r = jar_bad("central directory longer than its entry count");
		goto out;
	}
	/* Work budget: every entry costs its inflated size plus a fixed
	 * amount, and the total must stay within a multiple of the file size
	 * (many small well-compressed entries are as costly as one big). */
	budget = (uint64_t)JAR_BUDGET_RATIO * z->size + JAR_BUDGET_SLACK;
	if (inflated > budget || inflated + (uint64_t)z->n * JAR_ENTRY_COST > budget) {
		r = jar_bad("zip would inflate to %llu bytes in %zu entries, more than "
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
		if ((r = local_record(z, i, p)) != 0)
			goto out;
		p = z->e[i].end;
	}
	if (p != cd_off) {
		r = p > cd_off ? jar_bad("entry data overlaps the central directory") :
		    z->n == 0 ? jar_bad("data before the central directory") :
		    jar_bad("unaccounted data before the central directory");
		goto out;
	}
	if ((r = zarc_scan_tail(z, cd_off)) != 0)
		goto out;
	r = zarc_index(z);
out:
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
		return jar_bad("libzip cannot read entry %s", e->name);
	got = zip_fread(f, a, n);
	zip_fclose(f);
	if (got != (zip_int64_t)n)
		return jar_bad("libzip cannot read entry %s", e->name);
	if ((r = zarc_read(z, e->doff, b, n)) != 0)
		return r;
	if (memcmp(a, b, n) != 0)
		return jar_bad("entry %s: readers disagree on where its data is",
		    e->name);
	return 0;
}

/* libzip's own consistency check (local vs central, as it reads them), and
 * agreement between its view and ours, entry by entry. libzip reads the
 * very file we opened (a duplicate of our descriptor, not the path again:
 * a rename in between would have it check other bytes). */
int
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
		r = jar_bad("zip rejected by libzip: %s", zip_error_strerror(&er));
		zip_error_fini(&er);
		return r;
	}
	if ((uint64_t)zip_get_num_entries(za, 0) != z->n) {
		r = jar_bad("entry count differs between readers");
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
			r = jar_bad("entry names differ between readers: %s", e->name);
			goto out;
		}
		zip_stat_init(&st);
		if (zip_stat_index(za, i, ZIP_FL_ENC_RAW, &st) != 0 ||
		    (st.valid & want) != want || strcmp(st.name, e->name) != 0 ||
		    st.size != e->usize || st.comp_size != e->csize ||
		    st.crc != e->crc || st.comp_method != e->method ||
		    st.encryption_method != ZIP_EM_NONE) {
			r = jar_bad("entry %s differs between readers (CRC, sizes or "
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

int
zarc_find(const struct zarc *z, const char *name)
{
	struct zent key, *kp = &key, **p;
	key.name = (char *)name;
	key.nlen = strlen(name);
	p = bsearch(&kp, z->byname, z->n, sizeof(*z->byname), cmp_name);
	return p ? (int)(*p - z->e) : -1;
}

/* ---------------------------------------------------------------- */
/* Header emitter (both writers)                                     */

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

void
zhdr_dos_time(time_t t, uint16_t *dtime, uint16_t *ddate)
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

/* The fields the local and central headers share, in the same order:
 * version needed, flags, method, time, date, CRC, sizes, name length. */
static void
zhdr_common(uint8_t *p, const struct new_entry *ne, uint16_t dtime,
    uint16_t ddate)
{
	put16(p, 20);
	put16(p + 4, 8);
	put16(p + 6, dtime);
	put16(p + 8, ddate);
	put32(p + 10, ne->crc);
	put32(p + 14, (uint32_t)ne->clen);
	put32(p + 18, (uint32_t)ne->len);
	put16(p + 22, (uint16_t)strlen(ne->name));
}

void
zhdr_local(uint8_t *h, const struct new_entry *ne, uint16_t dtime,
    uint16_t ddate, uint16_t xlen)
{
	memset(h, 0, ZHDR_LOCAL);
	put32(h, 0x04034b50);
	zhdr_common(h + 4, ne, dtime, ddate);
	put16(h + 28, xlen);
}

void
zhdr_central(uint8_t *h, const struct new_entry *ne, uint16_t dtime,
    uint16_t ddate)
{
	memset(h, 0, ZHDR_CENTRAL);
	put32(h, 0x02014b50);
	put16(h + 4, 0x0314);            /* made by: Unix, 2.0 */
	zhdr_common(h + 6, ne, dtime, ddate);
	put32(h + 38, 0100644u << 16);   /* -rw-r--r-- */
	put32(h + 42, (uint32_t)ne->off);
}

void
zhdr_pad(uint8_t *x, uint16_t len)
{
	put16(x, ZHDR_PAD_ID);
	put16(x + 2, (uint16_t)(len - 4));
}

void
zhdr_end(uint8_t *h, uint64_t n, uint64_t cd_size, uint64_t cd_off,
    uint16_t comment_len)
{
	memset(h, 0, ZHDR_END);
	put32(h, 0x06054b50);
	put16(h + 8, (uint16_t)n);
	put16(h + 10, (uint16_t)n);
	put32(h + 12, (uint32_t)cd_size);
	put32(h + 16, (uint32_t)cd_off);
	put16(h + 20, comment_len);
}

void
zhdr_set_offset(uint8_t *cdrec, uint64_t loff)
{
	put32(cdrec + 42, (uint32_t)loff);
}
