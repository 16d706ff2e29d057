/* Entry data of a zip opened by zarc_open: streamed digests with exact
 * inflate (sizes, CRC, end of stream), whole small entries, and the
 * parallel loop the signer and the verifier run their digests in. */
#include "crypto/zip_int.h"
#include "common/err.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define JAR_THREADS 4           /* entry digests in parallel, at most */
#define PAR_MIN_BYTES (8u << 20)

/* Stream an entry's uncompressed bytes through up to 3 digests. Exact:
 * the deflate stream must end at the compressed size, inflate to exactly
 * the declared size (no more: zip bombs) and match the CRC. */
int
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
			if ((r = zarc_read(z, e->doff + pos, in, n)) != 0)
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
				r = jar_bad("corrupt deflate data: %s", e->name);
				goto out;
			}
			got = CHUNK - zs.avail_out;
			total += got;
			if (total > e->usize) {
				r = jar_bad("entry inflates beyond its declared size "
				    "(zip bomb?): %s", e->name);
				goto out;
			}
			crc = crc32(crc, buf, (uInt)got);
			for (size_t i = 0; i < nmd; i++)
				EVP_DigestUpdate(ctx[i], buf, got);
			if (zr == Z_STREAM_END) {
				if (zs.avail_in != 0 || pos != e->csize) {
					r = jar_bad("data after the end of the deflate stream: %s",
					    e->name);
					goto out;
				}
				done = 1;
				break;
			}
			if (zr == Z_BUF_ERROR && n == 0) {
				r = jar_bad("truncated deflate data: %s", e->name);
				goto out;
			}
		} while (zs.avail_in > 0 || zs.avail_out == 0);
	}
	if (total != e->usize) {
		r = jar_bad("entry size differs from its header: %s", e->name);
		goto out;
	}
	if ((uint32_t)crc != e->crc) {
		r = jar_bad("CRC error: %s", e->name);
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

int
zarc_par_for(size_t n, uint64_t bytes, int (*fn)(void *, size_t), void *ctx)
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

uint64_t
zarc_total_csize(const struct zarc *z)
{
	uint64_t t = 0;
	for (size_t i = 0; i < z->n; i++)
		t += z->e[i].csize;
	return t;
}

/* Read a whole small entry (manifest, .SF, block). */
int
zent_slurp(const struct zarc *z, const struct zent *e, uint8_t **out,
    size_t *len)
{
	uint8_t *buf = NULL, *in = NULL;
	z_stream zs;
	int r;

	memset(&zs, 0, sizeof(zs));
	if (e->usize > MAX_META)
		return jar_bad("%s is too large", e->name);
	if ((buf = malloc((size_t)e->usize + 1)) == NULL ||
	    (in = malloc(e->csize ? (size_t)e->csize : 1)) == NULL) {
		r = HSMFS_ERR_NOMEM;
		goto out;
	}
	if (e->csize > MAX_META) {
		r = jar_bad("%s is too large", e->name);
		goto out;
	}
	if ((r = zarc_read(z, e->doff, in, (size_t)e->csize)) != 0)
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
			r = jar_bad("corrupt compressed data: %s", e->name);
			goto out;
		}
	}
	if ((uint32_t)crc32(crc32(0L, Z_NULL, 0), buf, (uInt)e->usize) != e->crc) {
		r = jar_bad("CRC error: %s", e->name);
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
