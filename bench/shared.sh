#!/bin/bash
# The shared store (contract §9, docs/scale.md), fields part: field reads per
# second through a mount on a local STORE vs a mount on PostgreSQL (one
# reader process, each read = open + fetch + HSM unwrap + decrypt +
# close), the database round trip alone (SELECT 1, from .status), and
# the time a field read and a write take to fail with EIO once the
# database is stopped. A private PostgreSQL 15 (Debian's postgresql-15,
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
PGBIN=/usr/lib/postgresql/15/bin
for b in "$HSMFS" "$TOOL" "$READER" "$PGBIN/pg_ctl"; do
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

: > "$T/rounds"
for round in $(seq 1 "$ROUNDS"); do
	l=$("$READER" "$T/mnt-local/fields" "$SECS")
	s=$("$READER" "$T/mnt-shared/fields" "$SECS")
	rtt=$(sed -n 's/^database.rtt_ms: //p' "$T/mnt-shared/.status")
	echo "$l $s $rtt" >> "$T/rounds"
	echo "round $round: local=$l shared=$s rtt_ms=$rtt" >&2
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
echo "cpus: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg)"
