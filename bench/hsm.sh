#!/bin/sh
# HSM layer throughput: RSA-2048 sign (CKM_SHA256_RSA_PKCS) and OAEP-SHA384
# unwrap through hsm/ (session pool, SoftHSM, raw-RSA fallback for OAEP) with
# 1 and 2 threads, beside the same operations on a PKCS#12 key in process
# memory through the same interface (the software ceiling). Prints figures.
#   usage: bench/hsm.sh [SECONDS]   (after building into ./build)
set -eu
cd "$(dirname "$0")/.."
SECS=${1:-3}
PROBE=build/tests/hsmprobe
[ -x "$PROBE" ] || { echo "build first: meson setup build && ninja -C build" >&2; exit 2; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
export SOFTHSM2_CONF="$T/softhsm2.conf"
mkdir "$T/tokens"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$T" > "$SOFTHSM2_CONF"
softhsm2-util --init-token --free --label bench --so-pin 5678 --pin 1234 >/dev/null
export HSMFS_PIN=1234
M=/usr/lib/softhsm/libsofthsm2.so
$PROBE --module $M --token-label bench --alias k --keygen 2048 info >/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/k.pem" -out "$T/c.pem" \
	-subj /CN=bench -days 2 2>/dev/null
openssl pkcs12 -export -inkey "$T/k.pem" -in "$T/c.pem" -out "$T/k.p12" -passout pass:1234

rate() { sed -n 's/.*ops_per_s=\([0-9.]*\).*/\1/p' | tail -1; }
printf '%-34s %12s %12s\n' "operation (RSA-2048)" "1 thread/s" "2 threads/s"
for op in "bench-sign" "bench-unwrap --md sha384"; do
	for key in "softhsm:--module $M --token-label bench --alias k --no-cert" \
		"pkcs12:--p12 $T/k.p12"; do
		name=${key%%:*}; opts=${key#*:}
		# shellcheck disable=SC2086
		r1=$($PROBE $opts $op --threads 1 --seconds "$SECS" 2>&1 | rate)
		# shellcheck disable=SC2086
		r2=$($PROBE $opts $op --threads 2 --seconds "$SECS" 2>&1 | rate)
		printf '%-34s %12s %12s\n' "${op%% *} ($name)" "$r1" "$r2"
	done
done
