#!/bin/sh
# Create a SoftHSM2 token in DIR (default ./demo) with the four keys of the
# contract's example (docs/contract.md §7), generated on the token (sensitive, not extractable) by
# `hsmfs-tool keygen --self-signed`, and write DIR/engineSignEncrypt.xml.
# For demos and first experiments: the PIN is 1234 and the certificates are
# self-signed. On a real HSM use keygen --csr and import-cert (README).
# Safe to run again: an existing token and existing keys are reused, so an
# interrupted run is finished by the next one, and a finished one is left
# alone.
#   usage: softhsm-setup.sh [DIR] [HSMFS_TOOL]
# hsmfs-tool: the second argument, else $HSMFS_TOOL, else the build tree
# (examples/ of a source checkout), else the installed one (this script in
# PREFIX/share/doc/hsmfs/examples), else the PATH.
set -eu
DIR=$(realpath -m "${1:-demo}")
here=$(dirname "$(realpath "$0")")
TOOL=${2:-${HSMFS_TOOL:-}}
if [ -z "$TOOL" ]; then
	for t in "$here/../build/tool/hsmfs-tool" "$here/../../../../bin/hsmfs-tool"; do
		if [ -x "$t" ]; then
			TOOL=$(realpath "$t")
			break
		fi
	done
fi
if [ -z "$TOOL" ]; then
	TOOL=$(command -v hsmfs-tool) || {
		echo "softhsm-setup.sh: hsmfs-tool not found; give its path as the second argument" >&2
		exit 2
	}
fi
MODULE=/usr/lib/softhsm/libsofthsm2.so
LABEL=hsmfs-demo
PIN=1234
SO_PIN=87654321

if [ -e "$DIR/engineSignEncrypt.xml" ]; then
	echo "$DIR already set up (remove it to start over)" >&2
	exit 0
fi
"$TOOL" --version >/dev/null || {
	echo "softhsm-setup.sh: $TOOL does not run" >&2
	exit 2
}
mkdir -p "$DIR/tokens"
chmod 700 "$DIR"
cat > "$DIR/softhsm2.conf" <<CONF
directories.tokendir = $DIR/tokens
objectstore.backend = file
log.level = ERROR
CONF
export SOFTHSM2_CONF="$DIR/softhsm2.conf"
# The token of an earlier, interrupted run, else a new one.
slot=$(softhsm2-util --show-slots | awk -v label="$LABEL" '
	/^Slot / { slot = $2 }
	$1 == "Label:" { $1 = ""; sub(/^ +/, ""); sub(/ +$/, "");
		if ($0 == label) { print slot; exit } }')
if [ -z "$slot" ]; then
	slot=$(softhsm2-util --init-token --free --label "$LABEL" --so-pin "$SO_PIN" \
		--pin "$PIN" | awk '/reassigned to slot/ {print $NF}')
fi
scrambled=$(printf '%s\n' "$PIN" | "$TOOL" scramble-pin)

key() {
	cat <<KEY
    <key name="$1">
      <type name="HSM" locationValue="libsofthsm2" pin.encrypted="$scrambled"
            alias="$1" slot="$slot"/>
    </key>
KEY
}
umask 077
# The config is written under a temporary name and renamed once every key
# exists: its presence means "set up".
cat > "$DIR/engineSignEncrypt.xml.tmp" <<XML
<?xml version="1.0" encoding="UTF-8"?>
<engineSignEncrypt>
  <descriptors>
    <descriptor name="EncryptedFields" version="1">
      <type algorithm="AES/CBC/PKCS7Padding" size="256" result="NX02"
            key="encryptedFieldsCertificateV1"
            asymCipher="RSA/ECB/OAEPWithSHA-384AndMGF1Padding"/>
    </descriptor>
    <descriptor name="ConfigZipSigner" version="1">
      <type algorithm="SHA-256" key="configZipSignerCertificateV1"/>
    </descriptor>
    <descriptor name="ObjectHistorySigner" version="1">
      <type algorithm="SHA-256" key="objectHistorySignerCertificateV1"/>
    </descriptor>
    <descriptor name="SignEmailDescriptor" version="1">
      <type algorithm="SHA256withRSA" key="signEmailCertificateV1"/>
    </descriptor>
  </descriptors>
  <keys>
$(key encryptedFieldsCertificateV1)
$(key configZipSignerCertificateV1)
$(key objectHistorySignerCertificateV1)
$(key signEmailCertificateV1)
  </keys>
</engineSignEncrypt>
XML
for k in encryptedFieldsCertificateV1 configZipSignerCertificateV1 \
	objectHistorySignerCertificateV1 signEmailCertificateV1; do
	subj="/CN=$k/O=hsmfs demo"
	[ "$k" = signEmailCertificateV1 ] && subj="/CN=$k/O=hsmfs demo/emailAddress=demo@example.org"
	# keygen refuses an alias that exists: a key made by an earlier run
	# (marker written after its certificate) is kept.
	[ -e "$DIR/.made-$k" ] && continue
	"$TOOL" keygen -o "config=$DIR/engineSignEncrypt.xml.tmp" --key "$k" \
		--bits 2048 --subject "$subj" --self-signed
	: > "$DIR/.made-$k"
done
mv "$DIR/engineSignEncrypt.xml.tmp" "$DIR/engineSignEncrypt.xml"
echo "token $LABEL (slot $slot) in $DIR/tokens, config $DIR/engineSignEncrypt.xml"
