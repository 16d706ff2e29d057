#!/bin/sh
# The main job on a fresh Debian 12 machine: install what is missing,
# build, make a SoftHSM token with the four keys, mount hsmfs at ./mnt and
# show it working. Run from the repository root: examples/demo.sh
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
examples/install-deps.sh
[ -d build ] || meson setup build >/dev/null
ninja -C build >/dev/null
examples/softhsm-setup.sh "$ROOT/demo" "$ROOT/build/tool/hsmfs-tool"
export SOFTHSM2_CONF="$ROOT/demo/softhsm2.conf"
CFG="$ROOT/demo/engineSignEncrypt.xml"

echo "== hsmfs-tool check"
build/tool/hsmfs-tool check -o "config=$CFG"

mkdir -p mnt
if mountpoint -q mnt; then fusermount3 -u mnt; fi
echo "== mounting $ROOT/demo/store at $ROOT/mnt"
build/fs/hsmfs "$ROOT/demo/store" "$ROOT/mnt" -o "config=$CFG"
ls -la mnt/*

echo "== a secret field"
printf %s 's3cret' > mnt/fields/db-password && cat mnt/fields/db-password && echo &&
	cat mnt/fields/.sealed/db-password || echo "(fields not available in this build)"

echo "== a signed configuration zip"
tmp=$(mktemp -d)
printf 'key=value\n' > "$tmp/app.properties"
(cd "$tmp" && zip -q export.zip app.properties)
cp "$tmp/export.zip" mnt/sign-out/ && unzip -l mnt/sign-out/export.zip &&
	cp mnt/sign-out/export.zip mnt/verify-in/ && getfattr -n user.hsmfs.verify mnt/verify-in/export.zip ||
	echo "(sign-out not available in this build)"
rm -rf "$tmp"

echo "== an object history"
echo 'status=active' >> mnt/history/user-42 && cat mnt/history/user-42 &&
	cat mnt/history/.journal/user-42 || echo "(history not available in this build)"

echo "== status"
cat mnt/.status
echo
echo "hsmfs is mounted at $ROOT/mnt (store $ROOT/demo/store)."
echo "Unmount with: fusermount3 -u $ROOT/mnt"
