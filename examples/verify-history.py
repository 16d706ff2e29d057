#!/usr/bin/env python3
"""Independent verifier for an hsmfs object history (docs/history.md).
Python standard library only.

  verify-history.py JOURNAL [--pubkey PEM] [--log OBJECT.log]

JOURNAL is a copy of MNT/history/.journal/OBJECT: one line per record
("index time uid length leafhash"), a blank line, the signed checkpoint.
The script recomputes the RFC 6962 root from the leaf hashes and checks it
against the checkpoint's size and root. With --pubkey (the signer's public
key or certificate public key, PEM "PUBLIC KEY") it also checks the
RSASSA-PKCS1-v1_5 SHA-256 signature and the key id; with --log (a copy of
STORE/history/objects/OBJECT.log) it re-hashes every record frame and
checks it against the journal. Exit 0 valid, 1 invalid, 2 usage.
"""
import base64
import hashlib
import sys

EM_DASH = "\u2014"


def fail(msg):
    print("invalid: " + msg)
    sys.exit(1)


def leaf_hash(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def mth(hashes):
    """RFC 6962 section 2.1 Merkle Tree Hash over leaf hashes."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return node_hash(mth(hashes[:k]), mth(hashes[k:]))


def parse_journal(text):
    records_part, sep, note = text.partition("\n\n")
    if not sep:
        fail("no blank line between records and checkpoint")
    records = []
    for n, line in enumerate(records_part.split("\n")):
        f = line.split(" ")
        if len(f) != 5 or int(f[0]) != n or len(f[4]) != 64:
            fail(f"journal line {n + 1} is malformed")
        records.append((int(f[0]), f[1], int(f[2]), int(f[3]), bytes.fromhex(f[4])))
    return records, note


def parse_checkpoint(note):
    body, sep, sigs = note.partition("\n\n")
    lines = body.split("\n")
    if not sep or len(lines) != 3:
        fail("checkpoint is not origin, size, root, blank line, signatures")
    origin, size, root = lines
    if not size.isdigit() or (len(size) > 1 and size[0] == "0"):
        fail("checkpoint size is not a decimal number")
    root = base64.b64decode(root, validate=True)
    signatures = []
    for line in sigs.split("\n"):
        if not line:
            continue
        if not line.startswith(EM_DASH + " "):
            fail("bad signature line")
        name, b64 = line[2:].split(" ")
        blob = base64.b64decode(b64, validate=True)
        signatures.append((name, blob[:4], blob[4:]))
    return origin, int(size), root, (body + "\n").encode(), signatures


# --- minimal DER reading for an RSA SubjectPublicKeyInfo ---

def der_next(buf, pos):
    tag = buf[pos]
    length = buf[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(buf[pos:pos + n], "big")
        pos += n
    return tag, buf[pos:pos + length], pos + length


def rsa_public_key(pem):
    b64 = "".join(l for l in pem.splitlines() if l and not l.startswith("-----"))
    spki = base64.b64decode(b64)
    _, seq, _ = der_next(spki, 0)
    _, _alg, pos = der_next(seq, 0)
    _, bitstr, _ = der_next(seq, pos)
    _, rsakey, _ = der_next(bitstr[1:], 0)          # skip unused-bits byte
    _, n, pos = der_next(rsakey, 0)
    _, e, _ = der_next(rsakey, pos)
    return spki, int.from_bytes(n, "big"), int.from_bytes(e, "big")


def rsa_verify_sha256(n, e, message, sig):
    k = (n.bit_length() + 7) // 8
    if len(sig) != k:
        return False
    em = pow(int.from_bytes(sig, "big"), e, n).to_bytes(k, "big")
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420")
    t = digest_info + hashlib.sha256(message).digest()
    return em == b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t


def check_log(path, records):
    data = open(path, "rb").read()
    pos = 0
    for idx, _, _, length, lh in records:
        if data[pos:pos + 4] != b"HSR1":
            fail(f"log: record {idx}: bad frame magic")
        leaf_len = int.from_bytes(data[pos + 4:pos + 8], "big")
        if int.from_bytes(data[pos + 8:pos + 16], "big") != idx:
            fail(f"log: record {idx}: out of order")
        leaf = data[pos + 16:pos + 16 + leaf_len]
        stored = data[pos + 16 + leaf_len:pos + 48 + leaf_len]
        if len(leaf) != leaf_len or leaf[0] != 1:
            fail(f"log: record {idx}: truncated or unknown version")
        if int.from_bytes(leaf[1:9], "big") != idx or leaf_len - 21 != length:
            fail(f"log: record {idx}: sequence or length differs from journal")
        if leaf_hash(leaf) != lh or stored != lh:
            fail(f"log: record {idx}: leaf hash differs from journal")
        pos += 48 + leaf_len


def main(argv):
    args, pubkey, log = [], None, None
    it = iter(argv[1:])
    for a in it:
        if a == "--pubkey":
            pubkey = next(it, None)
        elif a == "--log":
            log = next(it, None)
        else:
            args.append(a)
    if len(args) != 1:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    records, note = parse_journal(open(args[0], encoding="utf-8").read())
    origin, size, root, signed, sigs = parse_checkpoint(note)
    if size != len(records):
        fail(f"checkpoint size {size}, journal has {len(records)} records")
    computed = mth([r[4] for r in records])
    if computed != root:
        fail("recomputed root differs from the checkpoint")
    if log:
        check_log(log, records)
    if pubkey:
        spki, n, e = rsa_public_key(open(pubkey).read())
        key_id = hashlib.sha256(origin.encode() + b"\x0a\xff" +
                                b"PKIX-RSA-PKCS#1v1.5" + spki).digest()[:4]
        mine = [s for s in sigs if s[0] == origin and s[1] == key_id]
        if not mine:
            fail("no signature by this key (key id %s)" % key_id.hex())
        if not all(rsa_verify_sha256(n, e, signed, s[2]) for s in mine):
            fail("checkpoint signature does not verify")
    print(f"valid: {origin} size={size} root={base64.b64encode(computed).decode()}"
          + (" signature=ok" if pubkey else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
