#!/bin/sh
# Decode one NX02 envelope with a software RSA private key and nothing but
# the openssl CLI, following docs/fields.md step by step: an independent
# decoder for audits and migrations (hsmfs itself unwraps in the HSM).
# Key material passes through a private temp directory and openssl's
# command line (-K/-iv, -macopt): use it on a trusted machine only.
#   usage: examples/nx02-decode.sh PRIVATE_KEY.pem < ENVELOPE_LINE > PLAINTEXT
# Exit status 1: not NX02, damaged, or failed authentication.
set -eu
[ $# -eq 1 ] || { echo "usage: $0 PRIVATE_KEY.pem < envelope > plaintext" >&2; exit 2; }
KEY=$1
umask 077
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
die() { echo "nx02-decode: $*" >&2; exit 1; }

# Text form: "NX02:" + base64 (standard alphabet, padded, one line).
line=$(cat)
line=${line%"$(printf '\r')"}
case $line in NX02:*) ;; *) die "not an NX02 envelope" ;; esac
printf %s "${line#NX02:}" | openssl base64 -d -A > "$t/env" || die "bad base64"
n=$(wc -c < "$t/env")
[ "$n" -ge 212 ] || die "too short"

# Big-endian unsigned integer of LEN bytes at OFFSET.
num() { od -An -tu1 -j"$1" -N"$2" "$t/env" |
	awk '{ for (i = 1; i <= NF; i++) v = v * 256 + $i } END { printf "%d", v }'; }
hex() { od -An -tx1 -j"$1" -N"$2" "$t/env" | tr -d ' \n'; }

# 1. The last 32 bytes are SHA-256 of everything before them.
head -c $((n - 32)) "$t/env" | openssl dgst -sha256 -binary > "$t/check"
tail -c 32 "$t/env" | cmp -s - "$t/check" || die "damaged (check mismatch)"

# 2. Header.
[ "$(head -c 4 "$t/env")" = NX02 ] || die "bad magic"
version=$(num 4 4)
K=$(num 40 1)
case $(num 41 1) in
1) md=sha1 ;; 2) md=sha256 ;; 3) md=sha384 ;; 4) md=sha512 ;;
*) die "unknown OAEP hash" ;;
esac
P=$(num 42 8)
IV=$(hex 50 16)
W=$(num 66 2)
C=$(( (P / 16 + 1) * 16 ))
[ "$n" -eq $((68 + W + C + 64)) ] || die "length does not match the header"
echo "nx02-decode: descriptor version $version, key id $(hex 8 32)," \
	"AES-$((K * 8))-CBC, OAEP $md, $P bytes" >&2

# 3. Unwrap AES key || HMAC key (RSA-OAEP, MGF1 with the same hash).
tail -c +69 "$t/env" | head -c "$W" > "$t/wrapped"
openssl pkeyutl -decrypt -inkey "$KEY" -in "$t/wrapped" -out "$t/keys" \
	-pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:$md \
	-pkeyopt rsa_mgf1_md:$md 2>/dev/null || die "failed authentication"
[ "$(wc -c < "$t/keys")" -eq $((K + 32)) ] || die "failed authentication"
aes=$(od -An -tx1 -N"$K" "$t/keys" | tr -d ' \n')
mac=$(od -An -tx1 -j"$K" -N32 "$t/keys" | tr -d ' \n')

# 4. HMAC-SHA-256 over header, wrapped keys and ciphertext, before decrypting.
head -c $((68 + W + C)) "$t/env" |
	openssl dgst -sha256 -mac HMAC -macopt hexkey:"$mac" -binary > "$t/tag"
tail -c 64 "$t/env" | head -c 32 | cmp -s - "$t/tag" || die "failed authentication"

# 5. AES-CBC with PKCS#7 padding; the result has exactly P bytes.
tail -c +$((69 + W)) "$t/env" | head -c "$C" > "$t/ct"
openssl enc -d -aes-$((K * 8))-cbc -K "$aes" -iv "$IV" -in "$t/ct" \
	-out "$t/pt" || die "failed authentication"
[ "$(wc -c < "$t/pt")" -eq "$P" ] || die "failed authentication"
cat "$t/pt"
