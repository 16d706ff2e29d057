#!/bin/bash
# Cost of serving every lookup and stat from the daemon (issue 13: hsmfs
# sets entry_timeout and attr_timeout to 0, so no name or size is ever
# stale after signing, a .sealed import, rename or rekey). Per-operation
# wall time through a real mount for: stat of a field (the plaintext size
# from the envelope header, no HSM), `ls -l` of /sign-out holding 200 zips,
# open+read+close of a /verify-in zip (verdict cached), and cp of a 4 KiB
# zip into /verify-in. With BASELINE (an hsmfs built with 1 s timeouts)
# the same run measures it too, interleaved, medians of ROUNDS.
#   usage: bench/attrs.sh [BUILD_DIR] [BASELINE_HSMFS] [ROUNDS]
set -eu
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(realpath "${1:-$SRC/build}")
BASE=${2:-}
ROUNDS=${3:-5}
TOOL=$BUILD/tool/hsmfs-tool
T=$(mktemp -d /tmp/hsmfs-bench-attrs.XXXXXX)
MNT=$T/mnt
PID=
stop() {
	if [ -n "$PID" ]; then
		fusermount3 -u "$MNT" 2>/dev/null || true
		wait "$PID" 2>/dev/null || true
		PID=
	fi
}
trap 'stop; rm -rf "$T"' EXIT INT TERM
"$SRC/examples/softhsm-setup.sh" "$T/demo" "$TOOL" >/dev/null
export SOFTHSM2_CONF=$T/demo/softhsm2.conf
CFG=$T/demo/engineSignEncrypt.xml
mkdir -p "$MNT"

run_one() {    # binary -> "stat_us ls_ms read_us cp_us"
	rm -rf "$T/store"
	"$1" "$T/store" "$MNT" -f -o "config=$CFG" 2>>"$T/hsmfs.log" &
	PID=$!
	until grep -qs " $MNT fuse" /proc/mounts; do sleep 0.05; done
	/usr/bin/python3 - "$MNT" <<'PY'
import io, os, shutil, sys, time, zipfile
mnt = sys.argv[1]
b = io.BytesIO()
with zipfile.ZipFile(b, "w") as z:
    z.writestr("a.txt", os.urandom(4096).hex())
zbytes = b.getvalue()
f = os.path.join(mnt, "fields", "f")
open(f, "wb").write(b"secret")
for i in range(200):
    open(os.path.join(mnt, "sign-out", f"z{i}.zip"), "wb").write(zbytes)
signed = open(os.path.join(mnt, "sign-out", "z0.zip"), "rb").read()
v = os.path.join(mnt, "verify-in", "v.zip")
open(v, "wb").write(signed)
open(v, "rb").read()
def per(n, fn):
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t) / n
st = per(5000, lambda i: os.stat(f)) * 1e6
d = os.path.join(mnt, "sign-out")
ls = per(20, lambda i: [os.lstat(os.path.join(d, n)) for n in os.listdir(d)]) * 1e3
rd = per(1000, lambda i: open(v, "rb").read()) * 1e6
src = os.path.join(os.path.dirname(mnt), "src.zip")
open(src, "wb").write(signed)
cp = per(300, lambda i: shutil.copyfile(src, os.path.join(mnt, "verify-in", f"c{i}.zip"))) * 1e6
print(f"{st:.1f} {ls:.2f} {rd:.1f} {cp:.1f}")
PY
	stop
}

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
: >"$T/new"; : >"$T/base"
for r in $(seq 1 "$ROUNDS"); do
	run_one "$BUILD/fs/hsmfs" >>"$T/new"
	[ -z "$BASE" ] || run_one "$BASE" >>"$T/base"
done
report() {
	[ -s "$2" ] || return 0
	printf '%-24s stat %6s us   ls -l(200) %6s ms   open+read %6s us   cp 4K zip %6s us\n' "$1" \
		"$(cut -d' ' -f1 "$2" | median)" "$(cut -d' ' -f2 "$2" | median)" \
		"$(cut -d' ' -f3 "$2" | median)" "$(cut -d' ' -f4 "$2" | median)"
}
echo "rounds (stat_us ls_ms read_us cp_us), hsmfs:"; cat "$T/new"
[ -z "$BASE" ] || { echo "baseline:"; cat "$T/base"; }
report "timeouts 0 (hsmfs)" "$T/new"
report "timeouts 1 s (baseline)" "$T/base"
