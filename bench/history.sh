#!/bin/sh
# Benchmark of /history (issue 5): acknowledged appends/s with 1, 4 and 16
# concurrent writers on one object, beside the raw HSM signature rate of the
# ObjectHistorySigner key and the fdatasync rate of the store's disk, all
# measured in this run on a private SoftHSM token.
#   usage: bench/history.sh [BUILD_DIR] [SECONDS_PER_STEP]
set -eu
cd "$(dirname "$0")/.."
BUILD=$(realpath "${1:-build}")
SECS=${2:-5}
W=$(mktemp -d /tmp/hsmfs-bench.XXXXXX)
MNT=$W/mnt
cleanup() {
	fusermount3 -u "$MNT" 2>/dev/null || true
	sleep 0.2
	rm -rf "$W"
}
trap cleanup EXIT INT TERM

examples/softhsm-setup.sh "$W/hsm" "$BUILD/tool/hsmfs-tool" >/dev/null
export SOFTHSM2_CONF="$W/hsm/softhsm2.conf"
CFG="$W/hsm/engineSignEncrypt.xml"

cc -O2 -D_GNU_SOURCE -I. -o "$W/histbench" bench/histbench.c \
	"$BUILD/crypto/libhsmfs-crypto.a" "$BUILD/hsm/libhsmfs-hsm.a" \
	"$BUILD/common/libhsmfs-common.a" \
	$(pkg-config --cflags --libs libcrypto libxml-2.0 libzip) -lpthread -ldl

mkdir -p "$W/store" "$MNT"
# More FUSE threads than writers, so every waiting close() can join a batch.
"$BUILD/fs/hsmfs" "$W/store" "$MNT" -o "config=$CFG,max_threads=64"
i=0
until grep -q " $MNT " /proc/self/mounts; do
	i=$((i + 1)); [ $i -gt 200 ] && { echo "mount failed" >&2; exit 1; }
	sleep 0.05
done
ls "$MNT/history" >/dev/null

echo "# hsmfs /history benchmark, $(date -u +%FT%TZ), ${SECS}s per step"
echo "# $(nproc) CPUs; store on $(df -T "$W/store" | awk 'NR==2 {print $2, $1}')"
sign=$("$W/histbench" sign "$CFG" "$SECS")
echo "$sign"
if [ -x "$BUILD/tests/hsmprobe" ]; then
	# The same key through tests/hsmprobe, 1 and 8 threads (PKCS#11 pool).
	slot=$(sed -n 's/.*slot="\([0-9]*\)".*/\1/p' "$CFG" | head -n 1)
	for t in 1 8; do
		HSMFS_PIN=1234 "$BUILD/tests/hsmprobe" --module /usr/lib/softhsm/libsofthsm2.so \
			--slot "$slot" --alias objectHistorySignerCertificateV1 \
			bench-sign --threads $t --seconds "$SECS" || true
	done
fi
fsync=$("$W/histbench" fsync "$W/store" "$SECS")
echo "$fsync"
out=""
batches() { sed -n 's/^history\.batches: //p' "$MNT/.status"; }
for n in 1 4 16; do
	b0=$(batches)
	r=$("$W/histbench" append "$MNT/history/bench-$n" "$n" "$SECS")
	b1=$(batches)
	echo "$r batches=$((b1 - b0)) records_per_batch=$(echo "$r" | awk -v b=$((b1 - b0)) '{printf "%.1f", b ? $2 / b : 0}')"
	out="$out$r
"
done
grep -E '^history\.(batches|signatures|max_batch|records)' "$MNT/.status" || true

printf '%s\n%s\n%s' "$sign" "$fsync" "$out" | awk '
	$1 == "hsm_sign" { sign = $4 }
	$1 == "fdatasync" { fs = $4 }
	$1 ~ /^append_/ { a[$1] = $4 }
	END {
		t = 1 / sign + 1 / fs
		printf "# t_sign=%.3fms t_fsync=%.3fms 1/(t_sign+t_fsync)=%.1f/s\n", 1000 / sign, 1000 / fs, 1 / t
		printf "# 1 writer: %.1f/s = %.2f x 1/(t_sign+t_fsync) (goal >= 0.70)\n", a["append_1"], a["append_1"] * t
		printf "# 4 writers: %.1f/s = %.2f x HSM sign rate\n", a["append_4"], a["append_4"] / sign
		printf "# 16 writers: %.1f/s = %.2f x HSM sign rate (goal >= 10000/s or >= 6x)\n", a["append_16"], a["append_16"] / sign
	}'
