#!/bin/sh
# Create a SoftHSM2 token in DIR (default ./demo) with the four keys of the
# SPEC example, generated on the token (sensitive, not extractable) by
# `hsmfs-tool keygen --self-signed`, and write DIR/engineSignEncrypt.xml.
# For demos and first experiments: the PIN is 1234 and the certificates are
# self-signed. On a real HSM use keygen --csr and import-cert (README).
#   usage: examples/softhsm-setup.sh [DIR] [HSMFS_TOOL]
set -eu
DIR=$(realpath -m "${1:-demo}")
TOOL=${2:-$(dirname "$0")/../build/tool/hsmfs-tool}
MODULE=/usr/lib/softhsm/libsofthsm2.so
LABEL=hsmfs-demo
PIN=1234
SO_PIN=87654321

if [ -e "$DIR/engineSignEncrypt.xml" ]; then
	echo "$DIR already set up (remove it to start over)" >&2
	exit 0
fi
mkdir -p "$DIR/tokens"
chmod 700 "$DIR"
cat > "$DIR/softhsm2.conf" <<CONF
directories.tokendir = $DIR/tokens
objectstore.backend = file
log.level = ERROR
CONF
export SOFTHSM2_CONF="$DIR/softhsm2.conf"
slot=$(softhsm2-util --init-token --free --label "$LABEL" --so-pin "$SO_PIN" \
	--pin "$PIN" | awk '/reassigned to slot/ {print $NF}')
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
cat > "$DIR/engineSignEncrypt.xml" <<XML
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
	"$TOOL" keygen -o "config=$DIR/engineSignEncrypt.xml" --key "$k" \
		--bits 2048 --subject "$subj" --self-signed
done
echo "token $LABEL (slot $slot) in $DIR/tokens, config $DIR/engineSignEncrypt.xml"
