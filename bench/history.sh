#!/bin/sh
# Benchmark of /history (issue 5): acknowledged appends/s with 1, 4 and 16
# concurrent writers on one object, beside the raw signature rate of the
# ObjectHistorySigner key (one thread, as one batch is signed at a time)
# and the fdatasync rate of the store's disk.
#
# Disk and CPU rates of a shared virtual machine drift by tens of percent
# within minutes, so each round measures the sign rate, the fsync rate and
# the three append rates back to back and the ratios compare figures
# taken seconds apart; the summary is the median of the rounds.
#
# Two token set-ups, both on a private SoftHSM token:
#   softhsm  SoftHSM itself: its RSA signatures run on this machine's CPUs,
#            the same CPUs the writers, FUSE and the daemon need;
#   latency  the same token behind tests/p11shim.so adding DELAY_MS to every
#            C_Sign, as a network HSM's round trip would (the signature's
#            own CPU time stays on this machine).
# With HSMFS_BENCH_TOKEN=remote, a third: the same token behind `p11-kit
# server` (unix socket, hsmfs loads p11-kit-client.so): a real round trip
# per PKCS#11 call, SoftHSM's CPU time in the server process.
#
#   usage: bench/history.sh [BUILD_DIR] [SECONDS_PER_STEP] [ROUNDS] [DELAY_MS]
set -eu
cd "$(dirname "$0")/.."
BUILD=$(realpath "${1:-build}")
SECS=${2:-3}
ROUNDS=${3:-5}
DELAY_MS=${4:-2}
# bench/histbench.c is built by meson (bench/meson.build).
HISTBENCH=$BUILD/bench/histbench
for b in "$BUILD/fs/hsmfs" "$BUILD/tool/hsmfs-tool" "$BUILD/tests/p11shim.so" "$HISTBENCH"; do
	[ -e "$b" ] || { echo "bench/history.sh: $b not built (ninja -C $BUILD)" >&2; exit 2; }
done
W=$(mktemp -d /tmp/hsmfs-bench.XXXXXX)
MNT=$W/mnt
SRV=
cleanup() {
	[ -z "$SRV" ] || kill -KILL -- "-$SRV" 2>/dev/null || true
	fusermount3 -u "$MNT" 2>/dev/null || true
	sleep 0.2
	rm -rf "$W"
}
trap cleanup EXIT INT TERM

examples/softhsm-setup.sh "$W/hsm" "$BUILD/tool/hsmfs-tool" >/dev/null
export SOFTHSM2_CONF="$W/hsm/softhsm2.conf"
CFG="$W/hsm/engineSignEncrypt.xml"
# The latency set-up: every key through the shim in front of SoftHSM.
SHIM="$BUILD/tests/p11shim.so"
sed "s|locationValue=\"[^\"]*\"|locationValue=\"$SHIM\"|" "$CFG" >"$W/shim.xml"
chmod 600 "$W/shim.xml"
echo "delay C_Sign ms=$DELAY_MS" >"$W/shim.ctl"


echo "# hsmfs /history benchmark, $(date -u +%FT%TZ), ${SECS}s per step, $ROUNDS rounds"
echo "# $(nproc) CPUs; store on $(df -T "$W" | awk 'NR==2 {print $2, $1}')"

batches() { sed -n 's/^history\.batches: //p' "$MNT/.status"; }

# run LABEL CONFIG: one mount, ROUNDS rounds; prints a line per round.
run() {
	label=$1 cfg=$2
	rm -rf "$W/store"
	mkdir -m 700 "$W/store"
	mkdir -p "$MNT"
	# More FUSE threads than writers, so every waiting close() can join
	# a batch.
	"$BUILD/fs/hsmfs" "$W/store" "$MNT" -o "config=$cfg,max_threads=64"
	i=0
	until grep -q " $MNT " /proc/self/mounts; do
		i=$((i + 1)); [ $i -gt 200 ] && { echo "mount failed" >&2; exit 1; }
		sleep 0.05
	done
	ls "$MNT/history" >/dev/null
	# Warm-up, not counted: the token's sessions, the store's first
	# files and the daemon's threads exist before the first round.
	"$HISTBENCH" append "$MNT/history/warm-up" 4 1 >/dev/null
	for r in $(seq "$ROUNDS"); do
		sign=$("$HISTBENCH" sign "$cfg" "$SECS" | awk '{print $4}')
		fs=$("$HISTBENCH" fsync "$W/store" "$SECS" | awk '{print $4}')
		line="$label round=$r sign=$sign fsync=$fs"
		for n in 1 4 16; do
			b0=$(batches)
			a=$("$HISTBENCH" append "$MNT/history/bench-$r-$n" "$n" "$SECS")
			b1=$(batches)
			line="$line a$n=$(echo "$a" | awk '{print $4}')"
			line="$line b$n=$(echo "$a" | awk -v b=$((b1 - b0)) '{printf "%.1f", b ? $2 / b : 0}')"
			case $a in *errors=0*) ;; *) echo "append errors: $a" >&2; exit 1 ;; esac
		done
		echo "$line"
	done
	fusermount3 -u "$MNT"
}

out=$W/rounds
run softhsm "$CFG" | tee "$out"
HSMFS_SHIM_MODULE=/usr/lib/softhsm/libsofthsm2.so HSMFS_SHIM_CONTROL="$W/shim.ctl" \
	run "latency+${DELAY_MS}ms" "$W/shim.xml" | tee -a "$out"
if [ "${HSMFS_BENCH_TOKEN:-}" = remote ]; then
	# Its own process group: p11-kit server forks a child per client.
	setsid p11-kit server -f -n "$W/p11kit.sock" \
		--provider /usr/lib/softhsm/libsofthsm2.so \
		"pkcs11:token=hsmfs-demo" >"$W/p11kit.log" 2>&1 &
	SRV=$!
	i=0
	until [ -S "$W/p11kit.sock" ]; do
		i=$((i + 1)); [ $i -gt 200 ] && { cat "$W/p11kit.log" >&2; exit 1; }
		sleep 0.05
	done
	CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
	sed -e "s|locationValue=\"[^\"]*\"|locationValue=\"$CLIENT\"|" \
		-e 's|slot="[0-9]*"|tokenLabel="hsmfs-demo"|' "$CFG" >"$W/remote.xml"
	chmod 600 "$W/remote.xml"
	P11_KIT_SERVER_ADDRESS=unix:path=$W/p11kit.sock \
		run remote "$W/remote.xml" | tee -a "$out"
fi

awk '
	function med(arr, n,    i, j, t) {
		for (i = 1; i <= n; i++)
			for (j = i + 1; j <= n; j++)
				if (arr[j] < arr[i]) { t = arr[i]; arr[i] = arr[j]; arr[j] = t }
		return n % 2 ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2
	}
	{
		for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
		L = $1
		if (!(L in n)) order[++nl] = L
		k = ++n[L]
		bound = 1 / (1 / v["sign"] + 1 / v["fsync"])
		r1[L, k] = v["a1"] / bound
		r16[L, k] = v["a16"] / v["sign"]
		a1[L, k] = v["a1"]; a16[L, k] = v["a16"]; b16[L, k] = v["b16"]
		sg[L, k] = v["sign"]; fs[L, k] = v["fsync"]
	}
	END {
		for (l = 1; l <= nl; l++) {
			L = order[l]
			for (k = 1; k <= n[L]; k++) {
				x1[k] = r1[L, k]; x16[k] = r16[L, k]; y1[k] = a1[L, k]
				y16[k] = a16[L, k]; z[k] = b16[L, k]; s[k] = sg[L, k]; f[k] = fs[L, k]
			}
			printf "# %s, median of %d rounds: sign %.0f/s, fdatasync %.0f/s\n", L, n[L], med(s, n[L]), med(f, n[L])
			printf "#   1 writer: %.0f/s = %.2f x 1/(t_sign+t_fsync) (goal >= 0.70)\n", med(y1, n[L]), med(x1, n[L])
			printf "#   16 writers: %.0f/s = %.2f x the sign rate, %.1f records per signature (goal >= 6x or >= 10000/s)\n", med(y16, n[L]), med(x16, n[L]), med(z, n[L])
		}
	}' "$out"
