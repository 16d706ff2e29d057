#!/bin/sh
# Install the Debian 12 packages hsmfs needs to build, run and test.
# Only calls apt-get when something is missing (or with --force, as CI does).
# --fuzz adds clang and its libFuzzer runtime for tests/fuzz.sh.
# Usage: examples/install-deps.sh [--force] [--fuzz]
set -eu
force=""
fuzz=""
for a in "$@"; do
	case $a in
	--force) force=1 ;;
	--fuzz) fuzz=1 ;;
	*) echo "usage: $0 [--force] [--fuzz]" >&2; exit 2 ;;
	esac
done
PKGS="gcc pkg-config meson ninja-build libfuse3-dev fuse3 libzip-dev zlib1g-dev libxml2-dev
libssl-dev openssl libcurl4-openssl-dev libp11-kit-dev softhsm2 opensc python3 python3-pytest
python3-aiosmtpd python3-asn1crypto python3-prometheus-client default-jdk-headless attr unzip zip
procps curl psmisc systemd groff-base util-linux p11-kit p11-kit-modules swtpm swtpm-tools
tpm2-abrmd libtss2-tcti-tabrmd0 libtpm2-pkcs11-1 libtpm2-pkcs11-tools tpm2-tools dbus-daemon
libsystemd-dev rsync vim-tiny
libpq-dev postgresql-15"
[ -n "$fuzz" ] && PKGS="$PKGS clang libclang-rt-14-dev"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
if [ -n "$force" ] || [ -n "$missing" ]; then
	SUDO=""
	[ "$(id -u)" -eq 0 ] || SUDO="sudo"
	echo "installing:${missing:- (all, forced)}" >&2
	$SUDO apt-get update -qq
	# shellcheck disable=SC2086
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $PKGS >/dev/null
fi
