#!/bin/sh
# The token-independent mount tests (tests/tokens/__init__.py) on the
# PKCS#11 implementations other than SoftHSM: a remote token (SoftHSM
# behind `p11-kit server`, through p11-kit-client.so) and tpm2-pkcs11 on
# swtpm + tpm2-abrmd. Every service runs under the tests' temp directory.
# The full suite on SoftHSM is tests/run.sh. Each token prints its time.
# Usage: tests/tokens.sh [BUILD_DIR] [TOKEN...]   (default: remote tpm2)
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build}
[ $# -gt 0 ] && shift
KINDS=${*:-remote tpm2}
[ -x "$BUILD/fs/hsmfs" ] || { echo "tokens: build $BUILD first" >&2; exit 2; }
ninja -C "$BUILD" >/dev/null
rc=0
for k in $KINDS; do
	start=$(date +%s)
	r=0
	HSMFS_TOKEN=$k HSMFS_BIN="$PWD/$BUILD/fs/hsmfs" \
	HSMFS_TOOL="$PWD/$BUILD/tool/hsmfs-tool" HSMFS_SRC="$PWD" \
	HSMFS_BUILD="$PWD/$BUILD" HSMFS_P11SHIM="$PWD/$BUILD/tests/p11shim.so" \
	HSMFS_PROBE="$PWD/$BUILD/tests/hsmprobe" \
		/usr/bin/python3 -m pytest -p no:cacheprovider -q -rfE \
		--junitxml="$BUILD/pytest-token-$k.xml" tests || r=$?
	echo "tokens: $k $(( $(date +%s) - start )) s, exit $r"
	[ $r -eq 0 ] || rc=$r
done
exit $rc
