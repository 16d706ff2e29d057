#!/bin/sh
# A second build with AddressSanitizer + UndefinedBehaviorSanitizer (gcc,
# -Db_sanitize=address,undefined) and the C unit tests plus the whole
# pytest suite against it. Sanitizers halt on the first report; the pytest
# harness fails any test whose daemon log holds one, and any tool that
# reports exits non-zero. Leak checking is on, with tests/lsan.supp for
# allocations that libraries keep until exit by design.
# Usage: tests/sanitize.sh [BUILD_DIR] [pytest args...]   e.g.
#        tests/sanitize.sh build-asan -k fields
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build-asan}
[ $# -gt 0 ] && shift
if [ -d "$BUILD" ]; then
	meson setup --reconfigure "$BUILD" -Db_sanitize=address,undefined \
		-Db_lundef=false -Dwerror_ci=true >/dev/null
else
	meson setup "$BUILD" -Db_sanitize=address,undefined -Db_lundef=false \
		-Dwerror_ci=true >/dev/null
fi
ninja -C "$BUILD"
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=1:detect_stack_use_after_return=1"
export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
start=$(date +%s)
rc=0
meson test -C "$BUILD" --suite unit --print-errorlogs --timeout-multiplier 3 || rc=$?
HSMFS_BIN="$PWD/$BUILD/fs/hsmfs" HSMFS_TOOL="$PWD/$BUILD/tool/hsmfs-tool" \
HSMFS_SRC="$PWD" HSMFS_BUILD="$PWD/$BUILD" \
HSMFS_P11SHIM="$PWD/$BUILD/tests/p11shim.so" HSMFS_PROBE="$PWD/$BUILD/tests/hsmprobe" \
	/usr/bin/python3 -m pytest -p no:cacheprovider -q -rfE \
	--junitxml="$BUILD/pytest-sanitize.xml" "$@" tests || rc=$?
echo "sanitize: $(( $(date +%s) - start )) s, exit $rc"
exit $rc
