#!/bin/sh
# Benchmark /sign-out and /verify-in against jarsigner on the same SoftHSM
# key (SunPKCS11) and sha256sum + cp as the floor. Verification compares
# the first read of /verify-in with jarsigner -verify -strict of the same
# hsmfs-signed zip. Prints figures, asserts nothing. Usage: bench/zip.sh [SIZE_MB]   (default 100)
# Needs: a build (HSMFS_BIN/HSMFS_TOOL or ./build), softhsm2, pkcs11-tool,
# openssl, jarsigner, python3, fuse3.
set -eu

SIZE_MB=${1:-100}
SRC=$(cd "$(dirname "$0")/.." && pwd)
HSMFS=${HSMFS_BIN:-$SRC/build/fs/hsmfs}
MODULE=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
W=$(mktemp -d /tmp/hsmfs-bench-zip.XXXXXX)
MNT=$W/mnt
PIN=1234

cleanup() {
	if mountpoint -q "$MNT" 2>/dev/null; then fusermount3 -u "$MNT" || true; fi
	[ -n "${DPID:-}" ] && wait "$DPID" 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT INT TERM

now() { date +%s.%N; }
elapsed() { echo "$(now) $1" | awk '{printf "%.3f", $1 - $2}'; }
ratio() { echo "$1 $2" | awk '{ if ($2 > 0) printf "%.2f", $1 / $2; else print "n/a" }'; }

# ---- private token with one key + CA-issued certificate (same label/ID)
mkdir -p "$W/tokens" "$MNT"
export SOFTHSM2_CONF=$W/softhsm2.conf
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' \
	"$W/tokens" > "$SOFTHSM2_CONF"
SLOT=$(softhsm2-util --init-token --free --label bench --so-pin 5678 --pin $PIN |
	awk '/reassigned to slot/ {print $NF}')
P11="pkcs11-tool --module $MODULE --token-label bench --login --pin $PIN"
$P11 --keypairgen --key-type rsa:2048 --label zipsigner --id 01 \
	--usage-sign >/dev/null 2>&1
pkcs11-tool --module "$MODULE" --token-label bench --read-object --type pubkey \
	--label zipsigner -o "$W/pub.der" >/dev/null 2>&1
openssl pkey -pubin -inform DER -in "$W/pub.der" -out "$W/pub.pem"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$W/ca.key" -out "$W/ca.pem" \
	-days 30 -subj "/CN=bench CA" -addext basicConstraints=critical,CA:TRUE \
	-addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req -new -newkey rsa:2048 -nodes -keyout "$W/tmp.key" -out "$W/tmp.csr" \
	-subj "/CN=zipsigner" 2>/dev/null
printf 'keyUsage=critical,digitalSignature\n' > "$W/ext"
openssl x509 -req -in "$W/tmp.csr" -CA "$W/ca.pem" -CAkey "$W/ca.key" \
	-CAcreateserial -days 30 -force_pubkey "$W/pub.pem" -extfile "$W/ext" \
	-out "$W/cert.pem" 2>/dev/null
openssl x509 -in "$W/cert.pem" -outform DER -out "$W/cert.der"
$P11 --write-object "$W/cert.der" --type cert --label zipsigner --id 01 >/dev/null 2>&1

cat > "$W/engine.xml" <<EOF
<engineSignEncrypt>
  <descriptors>
    <descriptor name="ConfigZipSigner" version="1">
      <type algorithm="SHA-256" key="zipsigner"/>
    </descriptor>
  </descriptors>
  <keys>
    <key name="zipsigner">
      <type name="HSM" locationValue="$MODULE" pin="$PIN" alias="zipsigner" slot="$SLOT"/>
    </key>
  </keys>
</engineSignEncrypt>
EOF
chmod 600 "$W/engine.xml"
printf 'name = SoftHSM\nlibrary = %s\nslot = %s\n' "$MODULE" "$SLOT" > "$W/pkcs11.cfg"
JS_P11="-keystore NONE -storetype PKCS11 -providerClass sun.security.pkcs11.SunPKCS11 -providerArg $W/pkcs11.cfg -storepass $PIN"
keytool -importcert -noprompt -alias ca -file "$W/ca.pem" -keystore "$W/trust.p12" \
	-storetype PKCS12 -storepass changeit >/dev/null 2>&1

# ---- inputs: stored random entries, and deflated text
python3 - "$W" "$SIZE_MB" <<'EOF'
import os, random, sys, zipfile
w, mb = sys.argv[1], int(sys.argv[2])
with zipfile.ZipFile(f"{w}/stored.zip", "w") as z:
    per = max(1, mb // 10)
    for i in range(10):
        z.writestr(f"data/blob{i}.bin", os.urandom(per << 20), zipfile.ZIP_STORED)
rnd = random.Random(1)
words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9)))
         for _ in range(5000)]
with zipfile.ZipFile(f"{w}/deflated.zip", "w", zipfile.ZIP_DEFLATED) as z:
    for i in range(10):
        out, n = [], 0
        while n < (mb << 20) // 10:
            line = b" ".join(rnd.choice(words) for _ in range(12)) + b"\n"
            out.append(line)
            n += len(line)
        z.writestr(f"conf/part{i}.txt", b"".join(out))
EOF

"$HSMFS" "$W/store" "$MNT" -f -o "config=$W/engine.xml,truststore=$W/ca.pem" \
	2>"$W/hsmfs.log" &
DPID=$!
i=0
until mountpoint -q "$MNT"; do
	i=$((i + 1)); [ $i -gt 200 ] && { cat "$W/hsmfs.log"; exit 1; }; sleep 0.05
done
ls "$MNT" >/dev/null

printf '%-10s %9s | %9s %9s %9s %9s | %9s %9s\n' variant "zip MB" \
	"hsmfs" jarsigner "sha+cp" "js/hsmfs" "verify-in" "js-verify"
printf '%-10s %9s | %9s %9s %9s %9s | %9s %9s\n' "" "" "sign s" "sign s" \
	"floor s" "ratio" "read s" "s"
for v in stored deflated; do
	in=$W/$v.zip
	mb=$(du -m "$in" | cut -f1)
	sync
	# floor: hash + plain copy of the same bytes
	t=$(now); sha256sum "$in" >/dev/null; cp "$in" "$W/plain-$v.zip"; floor=$(elapsed "$t")
	# hsmfs: cp returns once signed and durable
	t=$(now); cp "$in" "$MNT/sign-out/$v.zip"; hs=$(elapsed "$t")
	# jarsigner through SunPKCS11 on the same token and key
	t=$(now); jarsigner $JS_P11 -signedjar "$W/js-$v.zip" "$in" zipsigner >/dev/null 2>&1
	js=$(elapsed "$t")
	# verification: hsmfs verifies on the first open of /verify-in
	cp "$MNT/sign-out/$v.zip" "$MNT/verify-in/$v.zip"
	cp "$MNT/sign-out/$v.zip" "$W/hs-$v.zip"
	t=$(now); cat "$MNT/verify-in/$v.zip" >/dev/null; hv=$(elapsed "$t")
	getfattr --only-values -n user.hsmfs.verify "$MNT/verify-in/$v.zip" 2>/dev/null |
		grep -q '^valid' ||
		echo "warning: /verify-in did not accept $v.zip" >&2
	t=$(now); jrc=0; jarsigner -verify -strict -keystore "$W/trust.p12" -storepass changeit \
		"$W/hs-$v.zip" >"$W/jv.out" 2>&1 || jrc=$?; jv=$(elapsed "$t")
	grep -qx 'jar verified.' "$W/jv.out" || echo "warning: jarsigner -verify exit $jrc:" \
		"$(head -3 "$W/jv.out")" >&2
	printf '%-10s %9s | %9s %9s %9s %9s | %9s %9s\n' "$v" "$mb" "$hs" "$js" "$floor" \
		"$(ratio "$js" "$hs")x" "$hv" "$jv"
	echo "           hsmfs/floor sign $(ratio "$hs" "$floor")x," \
		"js-verify/verify-in $(ratio "$jv" "$hv")x"
done
pid=$DPID
echo "daemon peak RSS (VmHWM): $(awk '/VmHWM/ {print $2, $3}' /proc/$pid/status)"
