#!/bin/bash
# The shared store (contract §9, docs/scale.md). Fields: field reads per
# second through a mount on a local STORE vs a mount on PostgreSQL (one
# reader process, each read = open + fetch + HSM unwrap + decrypt +
# close), the database round trip alone (SELECT 1, from .status), and
# the time a field read and a write take to fail with EIO once the
# database is stopped. History: acknowledged appends/s (open(O_APPEND) +
# write + close, bench/histbench) with 1 node vs 2 nodes on the database,
# 16 writers per node, each writer on an object of its own and all on one
# object, beside the raw HSM signature rate (one thread). A private PostgreSQL 15 (Debian's postgresql-15,
# run as `postgres`, unix socket only, trust) and SoftHSM token, both
# removed at the end. Interleaved rounds, medians.
#   usage: bench/shared.sh [BUILD_DIR] [SECONDS] [ROUNDS]
set -eu
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(realpath "${1:-$SRC/build}")
SECS=${2:-3}
ROUNDS=${3:-3}
HSMFS=$BUILD/fs/hsmfs
TOOL=$BUILD/tool/hsmfs-tool
READER=$BUILD/bench/field-reader
HISTBENCH=$BUILD/bench/histbench
PGBIN=/usr/lib/postgresql/15/bin
for b in "$HSMFS" "$TOOL" "$READER" "$HISTBENCH" "$PGBIN/pg_ctl"; do
	[ -x "$b" ] || { echo "bench/shared.sh: $b missing" >&2; exit 2; }
done

T=$(mktemp -d /tmp/hsmfs-bench-shared.XXXXXX)
chmod 755 "$T"
PGD=$T/pg
PIDS=
aspg() { runuser -u postgres -- "$@"; }
cleanup() {
	for m in "$T"/mnt-*; do
		[ -d "$m" ] && fusermount3 -u "$m" 2>/dev/null || true
	done
	for p in $PIDS; do wait "$p" 2>/dev/null || true; done
	aspg "$PGBIN/pg_ctl" -D "$PGD/data" -m immediate -w stop >/dev/null 2>&1 || true
	rm -rf "$T"
}
trap cleanup EXIT INT TERM

mkdir -p "$PGD"
chown postgres: "$PGD"
aspg "$PGBIN/initdb" -D "$PGD/data" -U postgres --no-sync --auth-local=trust \
	>/dev/null 2>&1
pgstart() {
	aspg "$PGBIN/pg_ctl" -D "$PGD/data" -l "$PGD/log" -w \
		-o "-k $PGD -c listen_addresses=''" start >/dev/null
}
pgstart
aspg psql -X -q -h "$PGD" -d postgres -c "CREATE DATABASE bench"
URI="postgresql://postgres@/bench?host=$(printf %s "$PGD" | sed 's|/|%2F|g')"

"$SRC/examples/softhsm-setup.sh" "$T/demo" "$TOOL" >/dev/null
export SOFTHSM2_CONF=$T/demo/softhsm2.conf
CFG=$T/demo/engineSignEncrypt.xml
"$TOOL" db-init -o "config=$CFG,shared=$URI" >/dev/null

# mount NAME [OPTS]: a daemon on $T/store-NAME at $T/mnt-NAME.
mount_node() {
	local m=$T/mnt-$1 i=0
	mkdir -p "$m"
	"$HSMFS" "$T/store-$1" "$m" -f -o "config=$CFG${2:+,$2}" 2>"$T/$1.log" &
	PIDS="$PIDS $!"
	eval "PID_$1=$!"
	until grep -qs " $m fuse" /proc/mounts; do
		i=$((i + 1))
		[ $i -lt 200 ] || { cat "$T/$1.log" >&2; exit 1; }
		sleep 0.05
	done
	stat "$m/.status" >/dev/null
	for n in $(seq 1 16); do
		printf 'secret-value-%02d' "$n" > "$m/fields/f$n"
	done
}
mount_node local
mount_node shared "shared=$URI,node=bench"
mount_node shared2 "shared=$URI,node=bench2"

: > "$T/rounds"
for round in $(seq 1 "$ROUNDS"); do
	l=$("$READER" "$T/mnt-local/fields" "$SECS")
	s=$("$READER" "$T/mnt-shared/fields" "$SECS")
	rtt=$(sed -n 's/^database.rtt_ms: //p' "$T/mnt-shared/.status")
	echo "$l $s $rtt" >> "$T/rounds"
	echo "round $round: local=$l shared=$s rtt_ms=$rtt" >&2
done

# appends NODES MODE ROUND: acknowledged appends/s of 16 writers on each of
# the NODES (shared, or shared shared2) for SECS; MODE distinct: one
# process per writer, each on its own object; one: one process of 16
# threads per node, all on one object. Any failed append aborts the bench.
# cpu: CPU ticks used so far by the shared daemons, by PostgreSQL (the
# postmaster and its children) and by the whole machine (busy), so that
# the appends say what they are limited by.
cpu() {
	local pm d=0 p=0 pid
	pm=$(head -n 1 "$PGD/data/postmaster.pid")
	for pid in $PID_shared $PID_shared2; do
		d=$((d + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
	done
	for pid in $pm $(ps -o pid= --ppid "$pm"); do
		p=$((p + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
	done
	echo "$d $p $(awk '/^cpu /{print $2 + $3 + $4 + $7 + $8, $9}' /proc/stat)"
}
appends() {
	local nodes=$1 mode=$2 round=$3 n f out=$T/appends.out pids= c0 t0
	: > "$out"
	# Each object gets its first record before the clock starts: steady
	# appends are measured, not the creation of objects.
	for n in $nodes; do
		if [ "$mode" = one ]; then
			f=$T/mnt-shared/history/one-$round-${nodes// /}
			[ -e "$f" ] || echo first >> "$f"
		else
			for w in $(seq 1 16); do
				echo first >> "$T/mnt-$n/history/d-$round-$n-$w-${nodes// /}"
			done
		fi
	done
	c0=$(cpu)
	t0=$EPOCHREALTIME
	for n in $nodes; do
		if [ "$mode" = one ]; then
			"$HISTBENCH" append "$T/mnt-$n/history/one-$round-${nodes// /}" 16 \
				"$SECS" >> "$out" & pids="$pids $!"
		else
			for w in $(seq 1 16); do
				"$HISTBENCH" append "$T/mnt-$n/history/d-$round-$n-$w-${nodes// /}" \
					1 "$SECS" >> "$out" & pids="$pids $!"
			done
		fi
	done
	for p in $pids; do
		wait "$p" || { echo "bench/shared.sh: append errors:" >&2; cat "$out" >&2; exit 1; }
	done
	echo "$mode ${nodes// /+} $c0 $(cpu) $(echo "$EPOCHREALTIME - $t0" | bc)" >> "$T/cpu"
	awk '{ ops += $2; if ($3 > t) t = $3 } END { printf "%.1f", ops / t }' "$out"
}
"$HISTBENCH" append "$T/mnt-shared/history/warm-up" 4 1 >/dev/null
"$HISTBENCH" append "$T/mnt-shared2/history/warm-up" 4 1 >/dev/null
: > "$T/arounds"
for round in $(seq 1 "$ROUNDS"); do
	sign=$("$HISTBENCH" sign "$CFG" "$SECS" | awk '{print $4}')
	d1=$(appends shared distinct "$round")
	d2=$(appends "shared shared2" distinct "$round")
	o1=$(appends shared one "$round")
	o2=$(appends "shared shared2" one "$round")
	echo "$d1 $d2 $o1 $o2 $sign" >> "$T/arounds"
	echo "round $round: distinct 1 node=$d1 2 nodes=$d2; one object 1 node=$o1" \
		"2 nodes=$o2; sign=$sign" >&2
done
# Every node sees one history per object that verifies.
for f in "$T"/mnt-shared/history/one-*; do
	getfattr --absolute-names -n user.hsmfs.verify --only-values "$T/mnt-shared2/history/${f##*/}" |
		grep -q '^valid' || { echo "bench/shared.sh: ${f##*/} does not verify" >&2; exit 1; }
done

# Time to EIO: the database stopped (the pool's connections see the
# server gone; a new connect is refused at once on a live host).
aspg "$PGBIN/pg_ctl" -D "$PGD/data" -m fast -w stop >/dev/null
t0=$(date +%s.%N)
if cat "$T/mnt-shared/fields/f1" >/dev/null 2>"$T/err"; then
	echo "bench/shared.sh: a read succeeded with the database stopped" >&2
	exit 1
fi
t1=$(date +%s.%N)
if (printf x > "$T/mnt-shared/fields/f2") 2>>"$T/err"; then
	echo "bench/shared.sh: a write succeeded with the database stopped" >&2
	exit 1
fi
t2=$(date +%s.%N)
grep -q "Input/output error" "$T/err" || { cat "$T/err" >&2; exit 1; }
pgstart
cat "$T/mnt-shared/fields/f1" >/dev/null

awk -v s="$SECS" -v rounds="$ROUNDS" -v tr="$(echo "$t1 - $t0" | bc)" \
    -v tw="$(echo "$t2 - $t1" | bc)" '
function median(a, n,    i, j, t) {
	for (i = 1; i <= n; i++)
		for (j = i + 1; j <= n; j++)
			if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{ A[NR] = $1; B[NR] = $2; C[NR] = $3 }
END {
	l = median(A, NR); sh = median(B, NR); rtt = median(C, NR)
	printf "shared store bench, fields (SoftHSM 2, PostgreSQL 15 on a unix socket; median of %d rounds of %s s)\n", rounds, s
	printf "  field reads, local STORE      %9.1f /s\n", l
	printf "  field reads, shared database  %9.1f /s   %.2fx local (goal >= 0.5)\n", sh, sh / l
	printf "  database round trip (SELECT 1) %8.3f ms\n", rtt
	printf "  database stopped: read EIO after %.3f s, write EIO after %.3f s\n", tr, tw
}' "$T/rounds"
awk -v s="$SECS" -v rounds="$ROUNDS" '
function median(a, n,    i, j, t) {
	for (i = 1; i <= n; i++)
		for (j = i + 1; j <= n; j++)
			if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{ D1[NR] = $1; D2[NR] = $2; O1[NR] = $3; O2[NR] = $4; S[NR] = $5
  RD[NR] = $2 / $1; RO[NR] = $4 / $3 }
END {
	d1 = median(D1, NR); d2 = median(D2, NR); o1 = median(O1, NR)
	o2 = median(O2, NR); sg = median(S, NR); rd = median(RD, NR); ro = median(RO, NR)
	printf "shared store bench, history (16 writers per node; median of %d rounds of %s s;\n", rounds, s
	printf "2/1: median of the rounds ratios, figures taken seconds apart)\n"
	printf "                              1 node      2 nodes    2/1\n"
	printf "  appends/s, distinct objects %9.1f  %9.1f  %5.2fx (goal >= 1.6)\n", d1, d2, rd
	printf "  appends/s, one object       %9.1f  %9.1f  %5.2fx\n", o1, o2, ro
	printf "  HSM signatures/s (one thread, no daemon) %9.1f\n", sg
}' "$T/arounds"
# CPU seconds per second of run (summed over the rounds): of the two daemons,
# of PostgreSQL, and of the whole machine (every process, this bench's
# writers and other users included) out of its CPUs.
awk -v hz="$(getconf CLK_TCK)" -v ncpu="$(nproc)" '
{ k = $1 " " $2; D[k] += $7 - $3; P[k] += $8 - $4; B[k] += $9 - $5
  ST[k] += $10 - $6; S[k] += $11
  if (!(k in seen)) { seen[k] = 1; order[++n] = k } }
END {
	printf "  CPU use (CPU-s per s)       daemons  postgres  machine (of %d)  stolen\n", ncpu
	for (i = 1; i <= n; i++) {
		k = order[i]
		printf "  %-26s %8.2f  %8.2f  %8.2f  %14.2f\n", k, D[k] / hz / S[k],
		    P[k] / hz / S[k], B[k] / hz / S[k], ST[k] / hz / S[k]
	}
}' "$T/cpu"
echo "cpus: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "note: both daemons (SoftHSM signs inside them), PostgreSQL and the 32"
echo "writer processes share these CPUs, and so does anything else running (the"
echo "load above): when 'machine' is near the CPU count, a second node adds no"
echo "CPU, and 2 nodes gain only by overlapping database round trips, commits"
echo "and signatures. Distinct objects need one checkpoint signature per object"
echo "per batch; one object shared by 2 nodes serialises their batches on the"
echo "object's row lock (each first catches up with the other's records)."
