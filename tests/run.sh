#!/bin/sh
# Build hsmfs and run the whole suite: C unit tests and the pytest
# integration tests against real FUSE mounts and SoftHSM tokens.
# Usage: tests/run.sh [BUILD_DIR]    (CI=true: warnings are errors,
# skipped tests fail)
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build}
examples/install-deps.sh
WERROR=false
[ "${CI:-}" = "true" ] && WERROR=true
if [ -d "$BUILD" ]; then
	meson setup --reconfigure "$BUILD" -Dwerror_ci=$WERROR >/dev/null
else
	meson setup "$BUILD" -Dwerror_ci=$WERROR >/dev/null
fi
ninja -C "$BUILD"
rc=0
meson test -C "$BUILD" --print-errorlogs --num-processes 1 -v || rc=$?
# One plain closing line counting every unit test and pytest case.
/usr/bin/python3 - "$BUILD" <<'PY' || true
import json, sys, xml.etree.ElementTree as ET
b = sys.argv[1]
p = f = s = 0
for line in open(f"{b}/meson-logs/testlog.json"):
    t = json.loads(line)
    if t.get("name") == "pytest":
        continue
    if t["result"] == "OK": p += 1
    elif t["result"] == "SKIP": s += 1
    else: f += 1
try:
    r = ET.parse(f"{b}/pytest-junit.xml").getroot()
    for ts in r.iter("testsuite"):
        n = int(ts.get("tests", 0)); fl = int(ts.get("failures", 0)) + int(ts.get("errors", 0))
        sk = int(ts.get("skipped", 0))
        p += n - fl - sk; f += fl; s += sk
except (OSError, ET.ParseError):
    f += 1
print(f"summary: {p} passed, {f} failed, {s} skipped")
PY
exit $rc
