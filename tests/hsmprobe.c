/* hsmprobe: drive one hsm_key from the command line, for the pytest suite
 * and for benchmarks. Opens a PKCS#11 key (--module, --slot or
 * --token-label, --alias, PIN from $HSMFS_PIN) or a PKCS#12 file (--p12,
 * password from $HSMFS_PIN) and runs one command on it. */
#include "hsm/hsm.h"
#include "common/err.h"
#include "common/log.h"

#include <dlfcn.h>
#include <errno.h>
#include <p11-kit/pkcs11.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

static void
usage(void)
{
	fprintf(stderr,
	    "usage: hsmprobe KEY-OPTIONS COMMAND [ARGS]\n"
	    "key: --module M [--slot ID | --token-label L] --alias A [--pool N]\n"
	    "     [--no-raw-rsa] [--no-cert] [--keygen BITS] [--also ALIAS2] | --p12 FILE [--alias A]; PIN in $HSMFS_PIN\n"
	    "commands: info | sign [--md MD] IN OUT | sign-digest [--md MD] IN OUT\n"
	    "  | oaep-decrypt [--md MD] IN OUT | cms-sign IN OUT.der\n"
	    "  | evp-decrypt [--md MD] IN OUT | evp-sign-pss [--md MD] IN OUT\n"
	    "  | stress [--threads N] [--ops M] [--md MD]\n"
	    "  | bench-sign [--threads N] [--seconds S]\n"
	    "  | bench-unwrap [--threads N] [--seconds S] [--md MD]\n"
	    "  | store-cert CERT.pem | pool | serve [--md MD]\n"
	    "  | recover-test [--threads N] [--ops M] [--seconds ROUNDS]\n");
	exit(2);
}

static int
read_all(const char *path, unsigned char **buf, size_t *len)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
	size_t cap = 4096, n = 0, got;
	unsigned char *b;

	if (f == NULL)
		return -1;
	b = malloc(cap);
	while (b && (got = fread(b + n, 1, cap - n, f)) > 0) {
		n += got;
		if (n == cap)
			b = realloc(b, cap *= 2);
	}
	if (f != stdin)
		fclose(f);
	if (b == NULL)
		return -1;
	*buf = b;
	*len = n;
	return 0;
}

static int
write_all(const char *path, const unsigned char *buf, size_t len)
{
	FILE *f = strcmp(path, "-") == 0 ? stdout : fopen(path, "wb");
	int ok;
	if (f == NULL)
		return -1;
	ok = fwrite(buf, 1, len, f) == len;
	if (f != stdout)
		ok = fclose(f) == 0 && ok;
	else
		fflush(f);
	return ok ? 0 : -1;
}

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static const EVP_MD *
md_by_name(const char *s)
{
	const EVP_MD *md = EVP_get_digestbyname(s);
	if (md == NULL) {
		fprintf(stderr, "hsmprobe: unknown digest %s\n", s);
		exit(2);
	}
	return md;
}

/* ---- threaded loops ---- */

struct job {
	hsm_key *k;
	const EVP_MD *md;
	int do_sign, do_unwrap;
	long ops;              /* stress: iterations; bench: 0 */
	double until;          /* bench: stop time */
	const unsigned char *ct; size_t ctlen;  /* bench-unwrap input */
	long done, failures;
	char first_err[512];
};

static void
job_fail(struct job *j, const char *what)
{
	if (j->failures++ == 0)
		snprintf(j->first_err, sizeof(j->first_err), "%s: %s", what,
		    err_detail());
}

static int
oaep_encrypt(EVP_PKEY *pub, const EVP_MD *md, const unsigned char *in,
    size_t inlen, unsigned char *out, size_t *outlen)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pub, NULL);
	int ok = ctx && EVP_PKEY_encrypt_init(ctx) > 0 &&
	    EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) > 0 &&
	    EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) > 0 &&
	    EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) > 0 &&
	    EVP_PKEY_encrypt(ctx, out, outlen, in, inlen) > 0;
	EVP_PKEY_CTX_free(ctx);
	return ok ? 0 : -1;
}

static void *
job_run(void *arg)
{
	struct job *j = arg;
	EVP_PKEY *pub = hsm_key_pubkey(j->k);
	unsigned char msg[64], sig[1024], ct[1024], pt[1024];
	size_t siglen, ctlen, ptlen;
	EVP_MD_CTX *v = EVP_MD_CTX_new();

	for (long i = 0; j->ops ? i < j->ops : now_s() < j->until; i++) {
		RAND_bytes(msg, sizeof(msg));
		if (j->do_sign) {
			siglen = sizeof(sig);
			if (hsm_key_sign(j->k, EVP_sha256(), msg, sizeof(msg), sig,
			    &siglen) != 0) {
				job_fail(j, "sign");
			} else if (j->ops && (EVP_DigestVerifyInit(v, NULL, EVP_sha256(),
			    NULL, pub) != 1 || EVP_DigestVerify(v, sig, siglen, msg,
			    sizeof(msg)) != 1)) {
				err_set("signature does not verify");
				job_fail(j, "verify");
			}
		}
		if (j->do_unwrap) {
			if (j->ct) {
				if (hsm_key_oaep_decrypt(j->k, j->md, j->ct, j->ctlen,
				    pt, &ptlen) != 0)
					job_fail(j, "oaep-decrypt");
			} else {
				ctlen = sizeof(ct);
				if (oaep_encrypt(pub, j->md, msg, 32, ct, &ctlen) != 0) {
					err_set("encrypt failed");
					job_fail(j, "encrypt");
				} else if (hsm_key_oaep_decrypt(j->k, j->md, ct, ctlen,
				    pt, &ptlen) != 0) {
					job_fail(j, "oaep-decrypt");
				} else if (ptlen != 32 || memcmp(pt, msg, 32) != 0) {
					err_set("unwrapped bytes differ");
					job_fail(j, "compare");
				}
			}
		}
		j->done++;
	}
	EVP_MD_CTX_free(v);
	return NULL;
}

static int
run_jobs(hsm_key *k, int threads, struct job *tmpl, const char *label,
    int ops_per_iter)
{
	pthread_t *th = calloc((size_t)threads, sizeof(*th));
	struct job *jobs = calloc((size_t)threads, sizeof(*jobs));
	long done = 0, fail = 0;
	double t0 = now_s(), dt;
	const char *first = NULL;

	for (int i = 0; i < threads; i++) {
		jobs[i] = *tmpl;
		pthread_create(&th[i], NULL, job_run, &jobs[i]);
	}
	for (int i = 0; i < threads; i++) {
		pthread_join(th[i], NULL);
		done += jobs[i].done;
		fail += jobs[i].failures;
		if (jobs[i].failures && first == NULL)
			first = jobs[i].first_err;
	}
	dt = now_s() - t0;
	printf("%s: threads=%d ops=%ld failures=%ld seconds=%.3f ops_per_s=%.1f\n",
	    label, threads, done * ops_per_iter, fail, dt,
	    dt > 0 ? done * ops_per_iter / dt : 0.0);
	if (first)
		fprintf(stderr, "hsmprobe: first failure: %s\n", first);
	free(th);
	free(jobs);
	return fail ? 1 : 0;
}

/* ---- recovery test: pull the sessions from under the backend ---- */

/* The same module handle as the backend's (dlopen refcounts), so
 * C_CloseAllSessions drops the backend's sessions and its login, as a
 * token reset or an HSM restart would. */
static int
close_all_sessions(const char *module)
{
	void *dl = dlopen(module, RTLD_NOW | RTLD_NOLOAD);
	CK_C_GetFunctionList getfl;
	CK_FUNCTION_LIST_PTR f = NULL;
	CK_SLOT_ID slots[64];
	CK_ULONG n = 64;
	int done = 0;

	if (dl == NULL || (getfl = (CK_C_GetFunctionList)dlsym(dl,
	    "C_GetFunctionList")) == NULL || getfl(&f) != CKR_OK ||
	    f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK) {
		fprintf(stderr, "hsmprobe: cannot reach module %s\n", module);
		return 0;
	}
	for (CK_ULONG i = 0; i < n; i++)
		if (f->C_CloseAllSessions(slots[i]) == CKR_OK)
			done = 1;
	dlclose(dl);
	return done;
}

struct rjob {
	struct job j;
	pthread_barrier_t *bar;
	const char *module;
	int rounds, leader, disrupted;
};

/* Each round: all threads idle, the leader closes every session, then
 * all threads hit the dead sessions at once (one must recover, the
 * others wait). Sessions are never closed under a running operation:
 * SoftHSM crashes when that happens. */
static void *
rjob_run(void *arg)
{
	struct rjob *r = arg;
	for (int i = 0; i < r->rounds; i++) {
		pthread_barrier_wait(r->bar);
		if (r->leader)
			r->disrupted += close_all_sessions(r->module);
		pthread_barrier_wait(r->bar);
		job_run(&r->j);
	}
	return NULL;
}

/* ---- main ---- */

int
main(int argc, char **argv)
{
	struct hsm_key_spec spec = { .backend = HSM_BACKEND_PKCS11, .name = "probe",
	    .require_cert = 1 };
	const char *cmd = NULL, *md_name = "sha256";
	int threads = 1, i, r = 2;
	long ops = 100;
	double seconds = 5;
	hsm_key *k = NULL;
	unsigned char *in = NULL, out[1024];
	size_t inlen = 0, outlen = sizeof(out);
	char *args[4];
	int nargs = 0, keygen_bits = 0;
	const char *also = NULL;     /* a second key on the same token */
	hsm_key *k2 = NULL;

	log_init("hsmprobe", 0, LOG_WARNING);
	for (i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define TAKE() do { if (v == NULL) usage(); i++; } while (0)
		if (strcmp(a, "--module") == 0) { TAKE(); spec.location = v; }
		else if (strcmp(a, "--p12") == 0) {
			TAKE(); spec.location = v; spec.backend = HSM_BACKEND_P12;
		} else if (strcmp(a, "--slot") == 0) {
			TAKE(); spec.has_slot = 1; spec.slot = strtoul(v, NULL, 0);
		} else if (strcmp(a, "--token-label") == 0) { TAKE(); spec.token_label = v; }
		else if (strcmp(a, "--alias") == 0) { TAKE(); spec.alias = v; }
		else if (strcmp(a, "--pool") == 0) { TAKE(); spec.pool_size = (unsigned)atoi(v); }
		else if (strcmp(a, "--also") == 0) { TAKE(); also = v; }
		else if (strcmp(a, "--keygen") == 0) { TAKE(); keygen_bits = atoi(v); }
		else if (strcmp(a, "--no-raw-rsa") == 0) spec.no_raw_rsa = 1;
		else if (strcmp(a, "--no-cert") == 0) spec.require_cert = 0;
		else if (strcmp(a, "--md") == 0) { TAKE(); md_name = v; }
		else if (strcmp(a, "--threads") == 0) { TAKE(); threads = atoi(v); }
		else if (strcmp(a, "--ops") == 0) { TAKE(); ops = atol(v); }
		else if (strcmp(a, "--seconds") == 0) { TAKE(); seconds = atof(v); }
		else if (a[0] == '-' && a[1] == '-') usage();
		else if (cmd == NULL) cmd = a;
		else if (nargs < 4) args[nargs++] = argv[i];
		else usage();
#undef TAKE
	}
	if (cmd == NULL || spec.location == NULL || threads < 1)
		usage();
	spec.pin = getenv("HSMFS_PIN");
	if (keygen_bits)
		spec.require_cert = 0;
	if ((r = keygen_bits ? hsm_keygen(&spec, keygen_bits, &k) :
	    hsm_key_open(&spec, &k)) != 0) {
		fprintf(stderr, "hsmprobe: %s\n", err_detail());
		return r == HSMFS_ERR_PIN_INCORRECT ? 3 : r == HSMFS_ERR_PIN_LOCKED ? 4 : 2;
	}
	if (also != NULL) {
		struct hsm_key_spec s2 = spec;
		s2.alias = also;
		s2.name = "probe2";
		if (hsm_key_open(&s2, &k2) != 0) {
			fprintf(stderr, "hsmprobe: %s\n", err_detail());
			hsm_key_free(k);
			return 2;
		}
	}
	r = 1;
	if (strcmp(cmd, "info") == 0) {
		printf("name=%s where=%s bits=%d cert=%s\n", hsm_key_name(k),
		    hsm_key_where(k), hsm_key_bits(k), hsm_key_cert(k) ? "yes" : "no");
		if (k2 != NULL) {
			unsigned char m[8] = "probe2", sg[1024];
			size_t sl = sizeof(sg);
			int e = hsm_key_sign(k2, EVP_sha256(), m, sizeof(m), sg, &sl);
			printf("name=%s where=%s bits=%d cert=%s sign=%s\n",
			    hsm_key_name(k2), hsm_key_where(k2), hsm_key_bits(k2),
			    hsm_key_cert(k2) ? "yes" : "no", e ? "failed" : "ok");
		}
		r = 0;
	} else if (strcmp(cmd, "sign") == 0 || strcmp(cmd, "sign-digest") == 0 ||
	    strcmp(cmd, "oaep-decrypt") == 0) {
		const EVP_MD *md = md_by_name(md_name);
		unsigned char d[EVP_MAX_MD_SIZE];
		unsigned dl;
		int e;
		if (nargs != 2)
			usage();
		if (read_all(args[0], &in, &inlen) != 0) {
			fprintf(stderr, "hsmprobe: cannot read %s: %s\n", args[0],
			    strerror(errno));
			goto out;
		}
		if (cmd[0] == 'o')
			e = hsm_key_oaep_decrypt(k, md, in, inlen, out, &outlen);
		else if (strcmp(cmd, "sign") == 0)
			e = hsm_key_sign(k, md, in, inlen, out, &outlen);
		else
			e = EVP_Digest(in, inlen, d, &dl, md, NULL) != 1 ? HSMFS_ERR_CRYPTO :
			    hsm_key_sign_digest(k, md, d, dl, out, &outlen);
		if (e != 0) {
			fprintf(stderr, "hsmprobe: %s: %s (%s)\n", cmd, err_detail(),
			    hsmfs_strerror(e));
			r = e == HSMFS_ERR_BADMSG ? 5 : 1;
			goto out;
		}
		r = write_all(args[1], out, outlen) == 0 ? 0 : 1;
		OPENSSL_cleanse(out, sizeof(out));
	} else if (strcmp(cmd, "evp-decrypt") == 0 || strcmp(cmd, "evp-sign-pss") == 0) {
		/* Through hsm_key_pkey (the EVP bridge for token keys). */
		const EVP_MD *md = md_by_name(md_name);
		EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(hsm_key_pkey(k), NULL);
		unsigned char d[EVP_MAX_MD_SIZE];
		unsigned dl = 0;
		int dec = cmd[4] == 'd', ok;
		if (nargs != 2)
			usage();
		if (read_all(args[0], &in, &inlen) != 0)
			goto out;
		if (!dec && EVP_Digest(in, inlen, d, &dl, md, NULL) != 1)
			goto out;
		ok = ctx != NULL && (dec ? EVP_PKEY_decrypt_init(ctx) :
		    EVP_PKEY_sign_init(ctx)) > 0 &&
		    EVP_PKEY_CTX_set_rsa_padding(ctx, dec ? RSA_PKCS1_OAEP_PADDING :
		    RSA_PKCS1_PSS_PADDING) > 0 &&
		    (dec ? EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) > 0 &&
		    EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) > 0 :
		    EVP_PKEY_CTX_set_signature_md(ctx, md) > 0 &&
		    EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, RSA_PSS_SALTLEN_DIGEST) > 0) &&
		    (dec ? EVP_PKEY_decrypt(ctx, out, &outlen, in, inlen) :
		    EVP_PKEY_sign(ctx, out, &outlen, d, dl)) > 0;
		EVP_PKEY_CTX_free(ctx);
		if (!ok) {
			fprintf(stderr, "hsmprobe: %s failed: %s\n", cmd, err_detail());
			ERR_print_errors_fp(stderr);
			r = 5;
			goto out;
		}
		r = write_all(args[1], out, outlen) == 0 ? 0 : 1;
		OPENSSL_cleanse(out, sizeof(out));
	} else if (strcmp(cmd, "cms-sign") == 0) {
		BIO *bin = NULL, *bout = NULL;
		CMS_ContentInfo *cms = NULL;
		if (nargs != 2 || hsm_key_cert(k) == NULL)
			usage();
		if ((bin = BIO_new_file(args[0], "rb")) == NULL ||
		    (bout = BIO_new_file(args[1], "wb")) == NULL ||
		    (cms = CMS_sign(hsm_key_cert(k), hsm_key_pkey(k), NULL, bin,
		    CMS_DETACHED | CMS_BINARY)) == NULL ||
		    i2d_CMS_bio(bout, cms) != 1) {
			fprintf(stderr, "hsmprobe: cms-sign failed: %s\n", err_detail());
			ERR_print_errors_fp(stderr);
		} else {
			r = 0;
		}
		CMS_ContentInfo_free(cms);
		BIO_free(bin);
		BIO_free(bout);
	} else if (strcmp(cmd, "store-cert") == 0) {
		FILE *f;
		X509 *c = NULL;
		if (nargs != 1)
			usage();
		if ((f = fopen(args[0], "r")) != NULL) {
			c = PEM_read_X509(f, NULL, NULL, NULL);
			fclose(f);
		}
		if (c == NULL)
			fprintf(stderr, "hsmprobe: cannot read certificate %s\n", args[0]);
		else if (hsm_key_store_cert(k, c) != 0)
			fprintf(stderr, "hsmprobe: %s\n", err_detail());
		else
			r = 0;
		X509_free(c);
	} else if (strcmp(cmd, "stress") == 0) {
		struct job t = { .k = k, .md = md_by_name(md_name), .do_sign = 1,
		    .do_unwrap = 1, .ops = ops };
		r = run_jobs(k, threads, &t, "stress", 2);
	} else if (strcmp(cmd, "recover-test") == 0) {
		/* --ops: operations per thread per round; --seconds: rounds. */
		pthread_barrier_t bar;
		pthread_t *th = calloc((size_t)threads, sizeof(*th));
		struct rjob *rj = calloc((size_t)threads, sizeof(*rj));
		long fail = 0, done = 0;
		int disrupted = 0;
		pthread_barrier_init(&bar, NULL, (unsigned)threads);
		for (i = 0; i < threads; i++) {
			rj[i].j = (struct job){ .k = k, .md = md_by_name(md_name),
			    .do_sign = 1, .do_unwrap = 1, .ops = ops };
			rj[i].bar = &bar;
			rj[i].module = spec.location;
			rj[i].rounds = (int)seconds;
			rj[i].leader = i == 0;
			pthread_create(&th[i], NULL, rjob_run, &rj[i]);
		}
		for (i = 0; i < threads; i++) {
			pthread_join(th[i], NULL);
			fail += rj[i].j.failures;
			done += rj[i].j.done;
			disrupted += rj[i].disrupted;
			if (rj[i].j.failures)
				fprintf(stderr, "hsmprobe: first failure: %s\n",
				    rj[i].j.first_err);
		}
		printf("recover-test: threads=%d ops=%ld failures=%ld disrupted=%d\n",
		    threads, done * 2, fail, disrupted);
		r = fail == 0 && disrupted == (int)seconds ? 0 : 1;
		pthread_barrier_destroy(&bar);
		free(th);
		free(rj);
	} else if (strcmp(cmd, "serve") == 0) {
		/* One operation per stdin line ("sign" or "unwrap"), answered
		 * "ok" or "err CODE DETAIL": lets a test change the token's
		 * state between operations of one long-lived process. */
		char line[64];
		const EVP_MD *md = md_by_name(md_name);
		struct job t = { .k = k, .md = md, .ops = 1 };
		setvbuf(stdout, NULL, _IOLBF, 0);
		printf("ready\n");
		while (fgets(line, sizeof(line), stdin) != NULL) {
			t.do_sign = strncmp(line, "sign", 4) == 0;
			t.do_unwrap = strncmp(line, "unwrap", 6) == 0;
			if (!t.do_sign && !t.do_unwrap)
				break;
			t.failures = 0;
			job_run(&t);
			if (t.failures)
				printf("err %s\n", t.first_err);
			else
				printf("ok\n");
		}
		r = 0;
	} else if (strcmp(cmd, "bench-sign") == 0) {
		struct job t = { .k = k, .do_sign = 1, .until = now_s() + seconds };
		r = run_jobs(k, threads, &t, "bench-sign", 1);
	} else if (strcmp(cmd, "bench-unwrap") == 0) {
		unsigned char key[32], ct[1024];
		size_t ctlen = sizeof(ct);
		struct job t = { .k = k, .md = md_by_name(md_name), .do_unwrap = 1 };
		RAND_bytes(key, sizeof(key));
		if (oaep_encrypt(hsm_key_pubkey(k), t.md, key, sizeof(key), ct,
		    &ctlen) != 0)
			goto out;
		t.ct = ct;
		t.ctlen = ctlen;
		t.until = now_s() + seconds;
		r = run_jobs(k, threads, &t, "bench-unwrap", 1);
	} else if (strcmp(cmd, "pool") == 0) {
		struct key_stats st;
		hsm_key_get_stats(k, &st);
		printf("pool_in_use=%u pool_size=%u ops=%lu errors=%lu\n",
		    st.pool_in_use, st.pool_size, st.ops, st.errors);
		r = 0;
	} else {
		usage();
	}
out:
	free(in);
	hsm_key_free(k2);
	hsm_key_free(k);
	return r;
}
