#!/bin/sh
# bench/mail.sh: S/MIME-signed messages delivered per second through
# MNT/mail (HSM key on SoftHSM, durable queue, libcurl to a local sink),
# beside the obvious shell alternative in the same run (`openssl smime
# -sign` with a key file + `curl smtp://` per message), and the sink alone.
#   usage: bench/mail.sh [N_HSMFS (500)] [N_SHELL (100)] [WRITERS (4)]
# Env: HSMFS_BIN, HSMFS_BUILD (default ./build), KEEP=1 keeps the temp dir.
set -eu
N=${1:-500}
NSH=${2:-100}
W=${3:-4}
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${HSMFS_BUILD:-$SRC/build}
HSMFS=${HSMFS_BIN:-$BUILD/fs/hsmfs}
PY=/usr/bin/python3
MODULE=/usr/lib/softhsm/libsofthsm2.so
T=$(mktemp -d /tmp/hsmfs-bench-mail.XXXXXX)
SINK_PID=
cleanup() {
	fusermount3 -u "$T/mnt" 2>/dev/null || true
	[ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null || true
	[ "${KEEP:-0}" = 1 ] || rm -rf "$T"
}
trap cleanup EXIT INT TERM

now() { date +%s.%N; }
rate() { echo "$1 $2 $3" | awk '{ printf "%.1f", $1 / ($3 - $2) }'; }

# ---- token, CA, signing key (on the token) and certificate ----
mkdir -p "$T/tokens" "$T/mnt"
cat > "$T/softhsm2.conf" <<CONF
directories.tokendir = $T/tokens
objectstore.backend = file
log.level = ERROR
CONF
export SOFTHSM2_CONF="$T/softhsm2.conf"
slot=$(softhsm2-util --init-token --free --label bench --so-pin 5678 --pin 1234 |
	awk '/reassigned to slot/ {print $NF}')
P11="pkcs11-tool --module $MODULE --token-label bench --login --pin 1234"
$P11 --keypairgen --key-type rsa:2048 --label signEmailCertificateV1 --id 01 \
	--usage-sign >/dev/null 2>&1
$P11 --read-object --type pubkey --label signEmailCertificateV1 -o "$T/pub.der" >/dev/null 2>&1
openssl pkey -pubin -inform DER -in "$T/pub.der" -out "$T/pub.pem"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/ca.key" -out "$T/ca.pem" \
	-days 30 -subj "/CN=bench CA" -addext basicConstraints=critical,CA:TRUE \
	-addext keyUsage=critical,keyCertSign 2>/dev/null
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nsubjectAltName=email:sender@example.org\nextendedKeyUsage=emailProtection\n' > "$T/ext"
# The shell alternative's key is a file; its request also carries the
# token key's certificate (-force_pubkey).
openssl req -new -newkey rsa:2048 -nodes -keyout "$T/shell.key" -out "$T/shell.csr" \
	-subj "/CN=sender" 2>/dev/null
openssl x509 -req -in "$T/shell.csr" -CA "$T/ca.pem" -CAkey "$T/ca.key" -set_serial 2 \
	-days 30 -extfile "$T/ext" -out "$T/shell.pem" 2>/dev/null
openssl x509 -req -in "$T/shell.csr" -CA "$T/ca.pem" -CAkey "$T/ca.key" -set_serial 3 \
	-days 30 -extfile "$T/ext" -force_pubkey "$T/pub.pem" -out "$T/hsm.pem" 2>/dev/null
openssl x509 -in "$T/hsm.pem" -outform DER -out "$T/hsm.der"
$P11 --write-object "$T/hsm.der" --type cert --label signEmailCertificateV1 --id 01 >/dev/null 2>&1
cat > "$T/engineSignEncrypt.xml" <<XML
<?xml version="1.0" encoding="UTF-8"?>
<engineSignEncrypt>
  <descriptors>
    <descriptor name="SignEmailDescriptor" version="1">
      <type algorithm="SHA256withRSA" key="signEmailCertificateV1"/>
    </descriptor>
  </descriptors>
  <keys>
    <key name="signEmailCertificateV1">
      <type name="HSM" locationValue="$MODULE" pin="1234"
            alias="signEmailCertificateV1" slot="$slot"/>
    </key>
  </keys>
</engineSignEncrypt>
XML
chmod 600 "$T/engineSignEncrypt.xml"

# A 2.5 KB message with an 8-bit (UTF-8) body, like a notification mail.
{
	printf 'From: Sender <sender@example.org>\nTo: alice@example.org\n'
	printf 'Cc: bob@example.org\nSubject: benchmark\n\n'
	i=0
	while [ $i -lt 40 ]; do
		printf 'Grüße, line %02d of a typical notification message body.\n' $i
		i=$((i + 1))
	done
} > "$T/msg.txt"

# ---- the sink ----
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
$PY "$SRC/bench/smtp_sink.py" --port "$PORT" --count-file "$T/sink.count" > "$T/sink.out" &
SINK_PID=$!
while ! grep -q ready "$T/sink.out" 2>/dev/null; do sleep 0.05; done
SINK_RATE=$($PY "$SRC/bench/smtp_sink.py" --client 2000 --port "$PORT")
echo "sink alone (smtplib, one connection): $SINK_RATE messages/s"

# ---- shell alternative: openssl smime -sign + curl per message ----
t0=$(now)
i=0
while [ $i -lt "$NSH" ]; do
	openssl smime -sign -signer "$T/shell.pem" -inkey "$T/shell.key" -md sha256 \
		-in "$T/msg.txt" -from sender@example.org -to alice@example.org \
		-subject benchmark -out "$T/signed.eml"
	curl -s "smtp://127.0.0.1:$PORT" --mail-from sender@example.org \
		--mail-rcpt alice@example.org --mail-rcpt bob@example.org \
		-T "$T/signed.eml"
	i=$((i + 1))
done
t1=$(now)
SHELL_RATE=$(rate "$NSH" "$t0" "$t1")
echo "shell (openssl smime -sign + curl, $NSH messages): $SHELL_RATE messages/s"

# ---- hsmfs ----
"$HSMFS" "$T/store" "$T/mnt" -o "config=$T/engineSignEncrypt.xml,smtp=smtp://127.0.0.1:$PORT" \
	2> "$T/hsmfs.log"
while [ ! -d "$T/mnt/mail/sent" ]; do sleep 0.05; done
# Writers use the shell's own redirection: a `cp` per message would make
# process start-up (about 3.5 ms here) the thing being measured.
MSG=$(cat "$T/msg.txt")
per=$((N / W))
N=$((per * W))
t0=$(now)
w=0
pids=
while [ $w -lt "$W" ]; do
	(
		i=0
		while [ $i -lt "$per" ]; do
			printf '%s\n' "$MSG" > "$T/mnt/mail/w$w-$i"
			i=$((i + 1))
		done
	) &
	pids="$pids $!"
	w=$((w + 1))
done
for p in $pids; do wait "$p"; done
t_queued=$(now)
while [ "$(ls "$T/mnt/mail/sent" | wc -l)" -lt "$N" ]; do
	if [ "$(ls "$T/mnt/mail/failed" | wc -l)" -gt 0 ]; then
		echo "messages failed:" >&2; cat "$T/mnt/mail/failed/"*.error >&2; exit 1
	fi
	sleep 0.02
done
t1=$(now)
HSMFS_RATE=$(rate "$N" "$t0" "$t1")
QUEUE_RATE=$(rate "$N" "$t0" "$t_queued")
# The receiver's view: the last one verifies against the CA.
openssl smime -verify -CAfile "$T/ca.pem" -in "$T/mnt/mail/sent/w0-0" -out /dev/null 2>/dev/null ||
	{ echo "hsmfs output does not verify" >&2; exit 1; }
fusermount3 -u "$T/mnt"
kill "$SINK_PID"; wait "$SINK_PID" 2>/dev/null || true
SINK_PID=
echo "hsmfs ($N messages, $W writers): $HSMFS_RATE messages/s delivered" \
	"(queued, signed and durable at close: $QUEUE_RATE/s)"
echo "sink received $(cat "$T/sink.count") messages in total" \
	"(2000 + $NSH + $N expected)"
echo "$HSMFS_RATE $SHELL_RATE" | awk '{ printf "speed-up vs shell: %.1fx\n", $1 / $2 }'
