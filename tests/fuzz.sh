#!/bin/sh
# Build the libFuzzer targets (clang, -Dfuzz=true, ASan+UBSan) and run each
# for SECONDS (default 30), starting from the committed seed corpora in
# tests/fuzz/corpus/<target>/ (copied: new inputs stay in the work dir).
# Prints executions, corpus growth and crashes per target; exit 1 if any
# target crashed (artifacts kept in WORK/<target>/artifacts/).
# Usage: tests/fuzz.sh [SECONDS] [BUILD_DIR] [WORK_DIR]
set -eu
cd "$(dirname "$0")/.."
SECS=${1:-30}
BUILD=${2:-build-fuzz}
WORK=${3:-$(mktemp -d /tmp/hsmfs-fuzz.XXXXXX)}
if ! command -v clang >/dev/null; then
	echo "fuzz.sh: clang is needed (apt-get install clang libclang-rt-14-dev)" >&2
	exit 2
fi
if [ -d "$BUILD" ]; then
	meson setup --reconfigure "$BUILD" -Dfuzz=true >/dev/null
else
	CC=clang meson setup "$BUILD" -Dfuzz=true >/dev/null
fi
ninja -C "$BUILD" >/dev/null
# Leaks are reported per input by libFuzzer; UBSan reports abort.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
total_crash=0
printf '%-10s %12s %10s %8s %8s\n' target execs exec/s corpus crashes
for exe in "$BUILD"/tests/fuzz/fuzz-*; do
	[ -f "$exe" ] && [ -x "$exe" ] || continue
	t=${exe##*/fuzz-}
	d="$WORK/$t"
	mkdir -p "$d/corpus" "$d/artifacts"
	seeds=tests/fuzz/corpus/$t
	[ -d "$seeds" ] && cp -r "$seeds/." "$d/corpus/"
	case $t in
	jar | zipdiff) maxlen=65536 ;;
	smime) maxlen=16384 ;;
	*) maxlen=8192 ;;
	esac
	"$exe" -max_total_time="$SECS" -print_final_stats=1 -timeout=10 \
		-rss_limit_mb=2048 -max_len=$maxlen \
		-artifact_prefix="$d/artifacts/" "$d/corpus" >"$d/log" 2>&1 || true
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$d/log" | tail -1)
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$d/log" | tail -1)
	n=$(find "$d/corpus" -type f | wc -l)
	c=$(find "$d/artifacts" -type f | wc -l)
	total_crash=$((total_crash + c))
	printf '%-10s %12s %10s %8s %8s\n' "$t" "${execs:-?}" "${rate:-?}" "$n" "$c"
	if [ "$c" -gt 0 ]; then
		grep -m1 -E 'ERROR: |runtime error|deadly signal' "$d/log" | sed 's/^/    /' || true
		ls "$d/artifacts" | sed 's/^/    artifact: /'
	fi
done
echo "fuzz: work dir $WORK; crashes: $total_crash"
[ "$total_crash" -eq 0 ]
