/* The operation statistics of one key: counted by hsm/ (hsm_key_get_stats)
 * and handed up unchanged by crypto/keyring.h (keyring_status), so both
 * layers share this one definition without fs/ seeing hsm/. */
#ifndef HSMFS_COMMON_KEYSTATS_H
#define HSMFS_COMMON_KEYSTATS_H

/* Buckets of latency[] (the bounds: hsm_latency_bounds_ms, also
 * keyring_latency_bounds_ms); the last bucket counts everything slower. */
#define KEY_LATENCY_BUCKETS 14
/* Error kinds: errors_by[-r - 1000] for r in hsmfs_err (HSMFS_ERR_NOMEM
 * is 1), errors_by[0] for anything else. */
#define KEY_ERR_KINDS 16

struct key_stats {
	unsigned long ops, errors;
	double total_ms;           /* sum of operation latencies */
	unsigned pool_in_use, pool_size;
	int last_result;           /* hsmfs_err of the last operation */
	long long last_time;       /* unix seconds of the last operation */
	int available;             /* 0 while the token is gone (PKCS#11) */
	unsigned long logins;      /* C_Login calls on the key's token */
	unsigned long reinits;     /* module re-initialisations (reconnects) */
	unsigned long latency[KEY_LATENCY_BUCKETS];  /* per bucket, not cumulative */
	unsigned long errors_by[KEY_ERR_KINDS];
};

#endif
