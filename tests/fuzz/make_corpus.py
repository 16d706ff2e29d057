#!/usr/bin/python3
"""Regenerate the seed corpora under tests/fuzz/corpus/<target>/ (committed;
run by hand when a format changes). Valid samples made by the real code
(hsmfs-tool seal-field with a throwaway PKCS#12 key, jarsigner, openssl)
plus hostile variants. Usage: make_corpus.py BUILD_DIR"""
import base64
import hashlib
import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD = Path(sys.argv[1] if len(sys.argv) > 1 else HERE.parent.parent / "build")
TOOL = str(BUILD / "tool" / "hsmfs-tool")
OUT = HERE / "corpus"
W = Path(tempfile.mkdtemp(prefix="hsmfs-corpus-"))


def put(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def sh(*cmd, input=None):
    return subprocess.run(cmd, input=input, capture_output=True, check=True).stdout


# ---- a throwaway key (PKCS#12, no HSM needed) ----
sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
   str(W / "k.pem"), "-out", str(W / "c.pem"), "-days", "3650", "-subj",
   "/CN=fuzz seed/O=hsmfs")
sh("openssl", "pkcs12", "-export", "-inkey", str(W / "k.pem"), "-in",
   str(W / "c.pem"), "-out", str(W / "k.p12"), "-passout", "pass:secret",
   "-name", "fuzzkey")

# ---- engine ----
DESC = {
    "EncryptedFields": '<type algorithm="AES/CBC/PKCS7Padding" size="{size}" result="NX02" '
                       'key="k" asymCipher="RSA/ECB/OAEPWith{h}AndMGF1Padding"/>',
    "ConfigZipSigner": '<type algorithm="SHA-256" key="k"/>',
    "ObjectHistorySigner": '<type algorithm="SHA-384" key="k"/>',
    "SignEmailDescriptor": '<type algorithm="SHA256withRSA" key="k"/>',
}


def config(size=256, h="SHA-384", key=None, extra_desc="", versions=(1,)):
    key = key or f'<type name="P12" locationValue="{W}/k.p12" pin="secret" alias="fuzzkey"/>'
    ds = ""
    for v in versions:
        for n, t in DESC.items():
            ds += (f'    <descriptor name="{n}" version="{v}">\n      '
                   f'{t.format(size=size, h=h)}\n    </descriptor>\n')
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<engineSignEncrypt>\n'
            f'  <descriptors>\n{ds}{extra_desc}  </descriptors>\n'
            f'  <keys>\n    <key name="k">\n      {key}\n    </key>\n  </keys>\n'
            f'</engineSignEncrypt>\n')


scr = sh(TOOL, "scramble-pin", input=b"1234\n").decode().strip()
put("engine", "example.xml", (HERE.parent.parent / "examples" / "engineSignEncrypt.xml").read_bytes())
put("engine", "p12.xml", config())
put("engine", "versions.xml", config(versions=(1, 2, 7), size=128, h="SHA-1"))
put("engine", "hsm-slot.xml", config(key='<type name="HSM" locationValue="libsofthsm2" '
                                        f'pin.encrypted="{scr}" alias="k" slot="0x1f"/>'))
put("engine", "hsm-label.xml", config(key='<type name="HSM" locationValue="/usr/lib/softhsm/'
                                         'libsofthsm2.so" pin.env="PIN" alias="k" '
                                         'tokenLabel="idm" rawRsaFallback="false"/>'))
put("engine", "pinfile.xml", config(key='<type name="PKCS12" locationValue="k.p12" '
                                       'pin.file="/nonexistent/pin"/>'))
put("engine", "spellings.xml", config(h="SHA256").replace("RSA/ECB/", "RSA/None/"))
put("engine", "doctype.xml", '<?xml version="1.0"?>\n<!DOCTYPE e [<!ENTITY x SYSTEM '
                             '"file:///etc/passwd">]>\n<engineSignEncrypt>&x;</engineSignEncrypt>\n')
put("engine", "comments.xml", config().replace("<descriptors>", "<descriptors><!-- c -->\n"
                                                "<![CDATA[ x ]]>"))
put("engine", "unknown-attr.xml", config().replace('key="k"/>', 'key="k" colour="red"/>', 1))
put("engine", "dup.xml", config(versions=(1, 1)))
put("engine", "pin.encrypted.txt", scr)

# ---- envelope ----
cfgp = W / "cfg.xml"
for i, (size, h) in enumerate([(256, "SHA-384"), (128, "SHA-1"), (192, "SHA-256"),
                               (256, "SHA-512")]):
    cfgp.write_text(config(size=size, h=h))
    os.chmod(cfgp, 0o600)
    for j, pt in enumerate([b"s3cret", b"", b"x" * 100, bytes(range(256))]):
        env = sh(TOOL, "seal-field", "-o", f"config={cfgp}", input=pt).strip()
        put("envelope", f"text-{size}-{h}-{j}", env + b"\n")
        if j == 0:
            binary = base64.b64decode(env[5:])
            put("envelope", f"bin-{size}-{h}", binary)
            flipped = bytearray(binary)
            flipped[len(flipped) // 2] ^= 1
            put("envelope", f"bin-flip-{size}-{h}", bytes(flipped))
            put("envelope", f"bin-trunc-{size}-{h}", binary[:-7])
put("envelope", "garbage", b"NX02:AAAA\r\n")

# ---- smime ----
MSGS = {
    "plain": "From: a@example.org\nTo: b@example.org\nSubject: hi\n\nhello\n",
    "crlf": "From: A <a@example.org>\r\nTo: b@example.org, c@example.org\r\n"
            "Cc: d@example.org\r\nBcc: e@example.org\r\nSubject: x\r\n\r\nbody\r\n",
    "8bit": "From: a@example.org\nTo: b@example.org\nContent-Type: text/plain; "
            "charset=utf-8\n\nGr\u00fc\u00dfe, \u00e9t\u00e9\n",
    "mime": "From: a@example.org\nTo: b@example.org\nMIME-Version: 1.0\nContent-Type: "
            "multipart/mixed; boundary=XX\nMessage-ID: <1@x>\nDate: Mon, 1 Jan 2024 "
            "00:00:00 +0000\n\n--XX\nContent-Type: text/plain\n\na\n--XX--\n",
    "folded": "From: a@example.org\nTo: b@example.org,\n c@example.org\nSubject: a\n"
              " long subject\n\nx\n",
    "group": "From: \"Q, A\" <a@example.org>\nTo: undisclosed-recipients:;\n"
             "Bcc: z@example.org\n\nx\n",
    "nofrom": "To: b@example.org\n\nx\n",
    "norcpt": "From: a@example.org\nSubject: x\n\nx\n",
    "longline": "From: a@example.org\nTo: b@example.org\nX: " + "y" * 1200 + "\n\nx\n",
}
for n, m in MSGS.items():
    put("smime", n, m.encode())

# ---- tlog ----
def note(origin, size, root, sigs=1):
    body = f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"
    lines = "".join(f"\u2014 {origin} {base64.b64encode(os.urandom(4 + 256)).decode()}\n"
                    for _ in range(sigs))
    return body + "\n" + lines


def frame(index, payload, seq):
    leaf = bytes([1]) + struct.pack(">QQI", seq, 1700000000000000 + seq, 0) + payload
    return (b"HSR1" + struct.pack(">IQ", len(leaf), index) + leaf +
            hashlib.sha256(b"\0" + leaf).digest())


put("tlog", "note1", note("hsmfs/history/user-42", 3, os.urandom(32)))
put("tlog", "notes2", note("o", 1, os.urandom(32)) + note("o", 2, os.urandom(32), sigs=2))
put("tlog", "note-torn", note("o", 5, os.urandom(32))[:-20])
frames = b"".join(frame(i, f"status={i}\n".encode(), i) for i in range(4))
put("tlog", "frames", frames)
put("tlog", "frames-torn", frames[:-10])
put("tlog", "frames-zero-tail", frames + bytes(64))
put("tlog", "leaf", frame(0, b"x", 0)[16:-32])

# ---- jar ----
z = W / "z"
z.mkdir()
def mkzip(path, entries, method=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", method) as zf:
        for n, d in entries:
            zf.writestr(n, d)

mkzip(z / "plain.zip", [("config/a.xml", "<a/>\n" * 20), ("b.txt", "hello\n")])
shutil.copy(z / "plain.zip", z / "signed.zip")
sh("keytool", "-genkeypair", "-keystore", str(z / "ks.p12"), "-storetype", "PKCS12",
   "-storepass", "secret", "-alias", "signer", "-keyalg", "RSA", "-keysize", "2048",
   "-dname", "CN=fuzz jar", "-validity", "3650")
sh("jarsigner", "-keystore", str(z / "ks.p12"), "-storepass", "secret",
   "-digestalg", "SHA-256", "-sigalg", "SHA256withRSA", str(z / "signed.zip"), "signer")
signed = (z / "signed.zip").read_bytes()
put("jar", "plain.zip", (z / "plain.zip").read_bytes())
put("jar", "signed.zip", signed)
put("jar", "garbage-before.zip", b"MZ" + bytes(100) + signed)
put("jar", "garbage-after.zip", signed + b"trailing")
mkzip(z / "dup.zip", [("a", "1"), ("b", "2")])
put("jar", "dup.zip", (z / "dup.zip").read_bytes().replace(b"b", b"a"))
mkzip(z / "trav.zip", [("../evil", "x"), ("/abs", "y")], zipfile.ZIP_STORED)
put("jar", "traversal.zip", (z / "trav.zip").read_bytes())
mkzip(z / "bomb.zip", [("zeros", bytes(4 << 20))])
put("jar", "bomb.zip", (z / "bomb.zip").read_bytes())
# local header name differs from the central directory's
lh = bytearray((z / "plain.zip").read_bytes())
lh[30] ^= 0x20
put("jar", "lh-mismatch.zip", bytes(lh))
# entry removed after signing
with zipfile.ZipFile(io.BytesIO(signed)) as src, \
        zipfile.ZipFile(z / "removed.zip", "w", zipfile.ZIP_DEFLATED) as dst:
    for info in src.infolist():
        if info.filename != "b.txt":
            dst.writestr(info, src.read(info))
put("jar", "removed-entry.zip", (z / "removed.zip").read_bytes())
put("jar", "empty", b"")
put("jar", "eocd-only", b"PK\x05\x06" + bytes(18))

shutil.rmtree(W)
for t in sorted(os.listdir(OUT)):
    print(t, len(os.listdir(OUT / t)))
