#!/bin/sh
# The long reliability run (issue 7): SOAK_SECONDS (120) of SOAK_PROB (1 %)
# random C_Sign/C_Decrypt failures injected by tests/p11shim.c under mixed
# load on every folder, then KILL_ROUNDS (20) kill -9 rounds per folder.
# Prints the figures: faults injected / operations / clean failures /
# wrong results, kill rounds / acknowledged / lost. CI runs the same tests
# short (tests/test_faults.py, tests/test_kill.py defaults).
# Usage: tests/soak.sh [BUILD_DIR] [pytest args...]
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build}
[ $# -gt 0 ] && shift
if [ ! -d "$BUILD" ]; then
	meson setup "$BUILD" >/dev/null
fi
ninja -C "$BUILD" >/dev/null
FIG=$(mktemp /tmp/hsmfs-soak-figures.XXXXXX)
export HSMFS_BIN="$PWD/$BUILD/fs/hsmfs" HSMFS_TOOL="$PWD/$BUILD/tool/hsmfs-tool" \
	HSMFS_SRC="$PWD" HSMFS_BUILD="$PWD/$BUILD" \
	HSMFS_P11SHIM="$PWD/$BUILD/tests/p11shim.so" HSMFS_PROBE="$PWD/$BUILD/tests/hsmprobe" \
	HSMFS_SOAK_SECONDS="${SOAK_SECONDS:-120}" HSMFS_SOAK_PROB="${SOAK_PROB:-0.01}" \
	HSMFS_KILL_ROUNDS="${KILL_ROUNDS:-20}" HSMFS_FIGURES="$FIG"
start=$(date +%s)
rc=0
/usr/bin/python3 -m pytest -p no:cacheprovider -q -rf \
	"$@" tests/test_faults.py::test_soak_random_faults_under_load tests/test_kill.py || rc=$?
echo "== soak figures ($(( $(date +%s) - start )) s, exit $rc)"
cat "$FIG"
rm -f "$FIG"
exit $rc
