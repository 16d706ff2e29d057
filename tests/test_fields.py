"""/fields on a real mount with SoftHSM keys: plaintext and .sealed views,
NX02 envelope authenticity (every byte), import rules, the field tools,
key rotation with rekey-fields (online, killed and resumed), concurrency.
The envelope is decoded here from the documented layout (docs/fields.md),
independently of the C code."""
import base64
import errno
import hashlib
import os
import pty
import secrets
import signal
import struct
import subprocess
import threading
import time

import pytest

from conftest import TOOL
from helpers import run, wait_for

V1 = "encryptedFieldsCertificateV1"
V2 = "encryptedFieldsCertificateV2"


def v2_descriptor(version=2, key=V2, size=256, oaep="SHA-512"):
    return {"name": "EncryptedFields", "version": version,
            "algorithm": "AES/CBC/PKCS7Padding", "size": size, "result": "NX02",
            "key": key, "asymCipher": f"RSA/ECB/OAEPWith{oaep}AndMGF1Padding"}


@pytest.fixture(scope="module")
def v2key(hsm):
    return hsm.keys.get(V2) or hsm.make_key(V2, method="pkcs11-tool")


# ---- the documented envelope layout ----

def decode(text):
    """Binary envelope and header fields of an NX02 text line."""
    assert isinstance(text, (bytes, str))
    if isinstance(text, bytes):
        text = text.decode("ascii")
    assert text.startswith("NX02:") and text.count("\n") <= 1
    b = base64.b64decode(text[5:].rstrip("\n"), validate=True)
    assert b[:4] == b"NX02"
    version, = struct.unpack(">I", b[4:8])
    key_id = b[8:40]
    aes_len, oaep = b[40], b[41]
    plain_len, = struct.unpack(">Q", b[42:50])
    wlen, = struct.unpack(">H", b[66:68])
    ct_len = (plain_len // 16 + 1) * 16
    assert len(b) == 68 + wlen + ct_len + 32 + 32
    assert hashlib.sha256(b[:-32]).digest() == b[-32:]
    return b, {"version": version, "key_id": key_id, "aes_len": aes_len,
               "oaep": oaep, "plain_len": plain_len, "wrapped_len": wlen}


def encode(b):
    return b"NX02:" + base64.b64encode(b) + b"\n"


def with_check(b):
    """What a forger does: recompute the unkeyed SHA-256 check."""
    return b[:-32] + hashlib.sha256(b[:-32]).digest()


def spki_id(cert_pem):
    der = run(["openssl", "x509", "-in", cert_pem, "-pubkey", "-noout"]).stdout
    der = run(["openssl", "pkey", "-pubin", "-outform", "DER"],
              input=der.encode()).stdout
    return hashlib.sha256(der).digest()


# ---- file helpers ----

def write(path, data, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
    """Write and close; returns 0 or the errno of the failing call."""
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        return e.errno
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        os.close(fd)
        return e.errno
    try:
        os.close(fd)
    except OSError as e:
        return e.errno
    return 0


def read(path):
    with open(path, "rb") as f:
        return f.read()


def key_ops(m, alias):
    for line in read(m.path(".status")).decode().splitlines():
        if line.startswith(f"key.{alias}.ops: "):
            return int(line.split(": ")[1])
    raise AssertionError(f"no ops line for {alias}")


def store_files(store):
    for root, _, files in os.walk(store):
        for f in files:
            yield os.path.join(root, f)


def assert_not_in_store(store, values):
    blob = b"".join(read(p) for p in store_files(store))
    for v in values:
        if len(v) >= 4:
            assert v not in blob, f"plaintext {v[:16]!r}... found under STORE"


VALUES = {
    "empty": b"",
    "one": b"x",
    "big": secrets.token_bytes(100 * 1024),
    "nul": b"pass\x00word\x00\x00\xff\x01 with NULs",
    "utf8": "pässwörd € 密码 🔑".encode(),
}


# ---- tests ----

def test_round_trips_mode_size_remount(mount):
    f = mount.path("fields")
    for name, v in VALUES.items():
        assert write(os.path.join(f, name), v) == 0
    for name, v in VALUES.items():
        p = os.path.join(f, name)
        assert read(p) == v, name
        st = os.stat(p)
        assert st.st_mode == 0o100600 and st.st_size == len(v), name
        sealed = read(os.path.join(f, ".sealed", name))
        assert sealed.startswith(b"NX02:") and sealed.endswith(b"\n")
        assert sealed.count(b"\n") == 1
        assert os.stat(os.path.join(f, ".sealed", name)).st_size == len(sealed)
        _, h = decode(sealed)
        assert h["version"] == 1 and h["plain_len"] == len(v)
        assert h["aes_len"] == 32 and h["oaep"] == 3   # AES-256, SHA-384
        assert h["key_id"] == spki_id(mount.hsm.keys[V1].cert_pem)
    assert sorted(os.listdir(f)) == sorted(VALUES)
    assert sorted(os.listdir(os.path.join(f, ".sealed"))) == sorted(VALUES)
    mount.remount()
    for name, v in VALUES.items():
        assert read(os.path.join(f, name)) == v, name
    assert_not_in_store(mount.store, VALUES.values())


def test_shell_redirect_and_cat(mount):
    p = mount.path("fields", "db-password")
    run(["sh", "-c", f"printf %s 's3cret' > {p}"])
    assert run(["cat", p]).stdout == "s3cret"
    run(["sh", "-c", f"printf %s '-more' >> {p}"])
    assert run(["cat", p]).stdout == "s3cret-more"
    out = run(["ls", "-l", mount.path("fields")]).stdout
    assert "-rw------- " in out and " 11 " in out and "db-password" in out


def test_stat_does_not_touch_hsm(mount):
    p = mount.path("fields", "s")
    assert write(p, b"twelve bytes") == 0
    before = key_ops(mount, V1)
    for _ in range(20):
        assert os.stat(p).st_size == 12
        time.sleep(0.06)   # past the attribute cache now and then
    assert os.listdir(mount.path("fields")) == ["s"]
    assert key_ops(mount, V1) == before
    assert read(p) == b"twelve bytes"
    assert key_ops(mount, V1) == before + 1   # one unwrap per open


def test_partial_writes_like_a_regular_file(mount):
    p = mount.path("fields", "partial")
    assert write(p, b"0123456789") == 0
    # pwrite in the middle, past the end (hole of zeros), ftruncate.
    fd = os.open(p, os.O_RDWR)
    os.pwrite(fd, b"AB", 3)
    assert os.pread(fd, 100, 0) == b"012AB56789"
    os.pwrite(fd, b"Z", 12)
    assert os.fstat(fd).st_size == 13
    # Until close the stored value is unchanged for other readers.
    assert read(p) == b"0123456789"
    os.ftruncate(fd, 4)
    os.close(fd)
    assert read(p) == b"012A"
    # O_APPEND: appended at the end whatever the offset.
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"+1")
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"+2")
    os.close(fd)
    assert read(p) == b"012A+1+2"
    # O_TRUNC with nothing written empties the field.
    os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
    assert read(p) == b"" and os.stat(p).st_size == 0
    # truncate(2) by name.
    assert write(p, b"abcdef") == 0
    os.truncate(p, 2)
    assert read(p) == b"ab"
    # Writes grow past the first buffer; dup'd fd: flush twice is harmless.
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    fd2 = os.dup(fd)
    os.write(fd, b"q" * 70000)
    os.close(fd2)
    os.write(fd, b"!")
    os.close(fd)
    assert read(p) == b"q" * 70000 + b"!"


def test_too_large(mount):
    p = mount.path("fields", "huge")
    assert write(p, b"x" * ((1 << 20) + 1)) == errno.EFBIG
    assert write(p, b"x" * (1 << 20)) == 0
    assert os.stat(p).st_size == 1 << 20


def test_names_rm_mv(mount):
    f = mount.path("fields")
    for bad in ("a b", "ä", "semi;colon", "tab\t", ".a b"):
        assert write(os.path.join(f, bad), b"v") == errno.EINVAL, bad
        assert write(os.path.join(f, ".sealed", bad), b"v") == errno.EINVAL, bad
    assert write(os.path.join(f, "A-z_0.9"), b"ok") == 0
    assert write(os.path.join(f, "x" * 255), b"long") == 0
    assert read(os.path.join(f, "x" * 255)) == b"long"
    os.rename(os.path.join(f, "A-z_0.9"), os.path.join(f, "renamed"))
    assert read(os.path.join(f, "renamed")) == b"ok"
    assert not os.path.exists(os.path.join(f, "A-z_0.9"))
    with pytest.raises(OSError) as e:
        os.rename(os.path.join(f, "renamed"), os.path.join(f, ".bad"))
    assert e.value.errno == errno.EINVAL
    # mv across the views names the same field.
    os.rename(os.path.join(f, ".sealed", "renamed"), os.path.join(f, "again"))
    assert read(os.path.join(f, "again")) == b"ok"
    os.unlink(os.path.join(f, "again"))
    os.unlink(os.path.join(f, ".sealed", "x" * 255))
    assert os.listdir(f) == [] and os.listdir(os.path.join(f, ".sealed")) == []
    with pytest.raises(FileNotFoundError):
        read(os.path.join(f, "again"))
    with pytest.raises(PermissionError):
        os.mkdir(os.path.join(f, "dir"))
    with pytest.raises(PermissionError):
        os.chmod(os.path.join(f, ".sealed"), 0o777)


def test_plaintext_never_in_store(mount):
    secret = b"NEVER-ON-DISK-" + secrets.token_hex(16).encode()
    p = mount.path("fields", "pending")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, secret)
    # Open and written, not closed: visible, sized, nothing stored.
    assert os.stat(p).st_size == len(secret)
    assert "pending" in os.listdir(mount.path("fields"))
    assert_not_in_store(mount.store, [secret])
    assert not os.path.exists(os.path.join(mount.store, "fields", "pending"))
    os.close(fd)
    assert_not_in_store(mount.store, [secret])
    assert read(p) == secret
    assert secret not in mount.log().encode()
    for fpath in store_files(mount.store):
        assert os.stat(fpath).st_mode & 0o077 == 0, fpath


def test_sealed_import_under_new_name(mount):
    f = mount.path("fields")
    assert write(os.path.join(f, "orig"), b"copy me") == 0
    env = read(os.path.join(f, ".sealed", "orig"))
    assert write(os.path.join(f, ".sealed", "copy"), env) == 0
    assert read(os.path.join(f, "copy")) == b"copy me"
    # CRLF and no line ending are accepted too; stored as one LF line.
    assert write(os.path.join(f, ".sealed", "crlf"), env.rstrip(b"\n") + b"\r\n") == 0
    assert write(os.path.join(f, ".sealed", "nolf"), env.rstrip(b"\n")) == 0
    assert read(os.path.join(f, ".sealed", "crlf")) == env
    assert read(os.path.join(f, "nolf")) == b"copy me"
    # cp of the envelope file works the same way.
    run(["cp", os.path.join(f, ".sealed", "orig"), os.path.join(f, ".sealed", "cp")])
    assert read(os.path.join(f, "cp")) == b"copy me"


def test_import_garbage_and_unknown_version(mount, hsm, v2key, tmp_path):
    f = mount.path("fields")
    assert write(os.path.join(f, "keep"), b"unchanged") == 0
    garbage = [b"hello\n", b"NX02:\n", b"NX02:!!!!\n", b"NX01:AAAA\n", b"",
               b"NX02:" + base64.b64encode(b"NX02" + b"\0" * 200) + b"\n",
               read(os.path.join(f, ".sealed", "keep")) * 2]
    for g in garbage:
        assert write(os.path.join(f, ".sealed", "keep"), g) == errno.EINVAL, g[:20]
        assert write(os.path.join(f, ".sealed", "new"), g) == errno.EINVAL, g[:20]
    assert read(os.path.join(f, "keep")) == b"unchanged"
    assert "new" not in os.listdir(f)
    # A genuine envelope for version 2, which this mount does not have.
    cfg2 = hsm.config(tmp_path / "v2.xml", descriptors=[v2_descriptor()])
    env2 = run([TOOL, "seal-field", "-o", f"config={cfg2}"], input="v2 value").stdout
    assert decode(env2)[1]["version"] == 2
    assert write(os.path.join(f, ".sealed", "v2"), env2.encode()) == errno.EINVAL
    assert "v2" not in os.listdir(f)
    assert "version 2" in mount.log()
    # A version-1 header naming another key (check recomputed): EINVAL.
    b, _ = decode(read(os.path.join(f, ".sealed", "keep")))
    forged = with_check(b[:8] + spki_id(v2key.cert_pem) + b[40:])
    assert write(os.path.join(f, ".sealed", "other"), encode(forged)) == errno.EINVAL


def test_every_byte_flip_is_ebadmsg(mount):
    f = mount.path("fields")
    assert write(os.path.join(f, "victim"), b"flip every byte") == 0
    b, h = decode(read(os.path.join(f, ".sealed", "victim")))
    target = os.path.join(f, ".sealed", "victim")
    results = {}
    for i in range(len(b)):
        c = bytearray(b)
        c[i] ^= 0x01
        results[i] = write(target, encode(bytes(c)), os.O_WRONLY | os.O_TRUNC)
    bad = {i: r for i, r in results.items() if r != errno.EBADMSG}
    assert not bad, f"byte positions not EBADMSG: {bad}"
    assert len(results) == len(b) > 400
    # A forger recomputing the unkeyed check: never accepted; from the
    # wrapped key on (wrap, ciphertext, MAC) the MAC/unwrap says EBADMSG.
    forged = {}
    for i in list(range(0, 68)) + list(range(68, len(b) - 32, 7)):
        c = bytearray(b)
        c[i] ^= 0x80
        forged[i] = write(target, encode(with_check(bytes(c))),
                          os.O_WRONLY | os.O_TRUNC)
    odd = {i: r for i, r in forged.items() if r not in (errno.EBADMSG, errno.EINVAL)}
    assert not odd, odd
    assert all(r == errno.EBADMSG for i, r in forged.items() if i >= 68), forged
    # IV, plaintext length and other authenticated header bytes: EBADMSG.
    assert all(forged[i] == errno.EBADMSG for i in range(50, 66))
    assert read(os.path.join(f, "victim")) == b"flip every byte"


def test_tools_open_and_seal(mount, hsm):
    cfg = mount.config
    env = run([TOOL, "seal-field", "-o", f"config={cfg}"],
              input=b"tool\x00secret").stdout
    assert env.startswith(b"NX02:") and env.endswith(b"\n") and env.count(b"\n") == 1
    assert run([TOOL, "open-field", "-o", f"config={cfg}"], input=env).stdout == \
        b"tool\x00secret"
    # The mount reads what the tool sealed, and the tool what the mount sealed.
    assert write(mount.path("fields", ".sealed", "fromtool"), env) == 0
    assert read(mount.path("fields", "fromtool")) == b"tool\x00secret"
    assert write(mount.path("fields", "frommount"), b"m") == 0
    assert run([TOOL, "open-field", "-o", f"config={cfg}"],
               input=read(mount.path("fields", ".sealed", "frommount"))).stdout == b"m"
    b, _ = decode(env)
    c = bytearray(b)
    c[100] ^= 4
    p = run([TOOL, "open-field", "-o", f"config={cfg}"], input=encode(bytes(c)),
            check=False)
    assert p.returncode == 1 and p.stdout == b"" and b"authentication" in p.stderr
    p = run([TOOL, "open-field", "-o", f"config={cfg}"], input=b"garbage", check=False)
    assert p.returncode == 1
    p = run([TOOL, "open-field"], check=False)
    assert p.returncode == 2


def test_not_configured_refuses_writes(mount_factory, hsm, tmp_path):
    cfg = hsm.config(tmp_path / "nofields.xml", omit=("EncryptedFields",))
    m = mount_factory(config=cfg)
    assert write(m.path("fields", "x"), b"v") == errno.EOPNOTSUPP
    assert write(m.path("fields", ".sealed", "x"), b"NX02:AAAA") == errno.EOPNOTSUPP
    assert os.listdir(m.path("fields")) == []


def rotate_config(hsm, tmp_path, name="v12.xml"):
    return hsm.config(tmp_path / name, descriptors=[v2_descriptor()])


def versions(m):
    return {n: decode(read(m.path("fields", ".sealed", n)))[1]["version"]
            for n in os.listdir(m.path("fields"))}


def test_rotation_with_rekey_while_mounted(mount_factory, hsm, v2key, tmp_path):
    m = mount_factory()
    vals = {f"f{i}": secrets.token_bytes(i * 37 % 300) for i in range(12)}
    for n, v in vals.items():
        assert write(m.path("fields", n), v) == 0
    assert set(versions(m).values()) == {1}
    m.unmount()
    m.config = rotate_config(hsm, tmp_path)
    m.start()
    for n, v in vals.items():           # v1 still reads
        assert read(m.path("fields", n)) == v
    assert write(m.path("fields", "new"), b"new value") == 0
    _, h = decode(read(m.path("fields", ".sealed", "new")))
    assert h["version"] == 2 and h["oaep"] == 4 and \
        h["key_id"] == spki_id(v2key.cert_pem)
    p = run([TOOL, "rekey-fields", "-o", f"config={m.config}", m.store])
    assert "12 rewrapped to EncryptedFields version 2" in p.stdout
    assert "1 already current, 0 failed" in p.stdout
    assert "rekey-fields:" not in p.stderr
    assert set(versions(m).values()) == {2}
    for n, v in vals.items():
        assert read(m.path("fields", n)) == v
    p = run([TOOL, "rekey-fields", "-o", f"config={m.config}", m.store])
    assert "0 rewrapped" in p.stdout and "13 already current" in p.stdout
    # With v1 removed from the config everything still reads.
    m.unmount()
    m.config = hsm.config(tmp_path / "v2only.xml", omit=("EncryptedFields",),
                          descriptors=[v2_descriptor()])
    m.start()
    for n, v in vals.items():
        assert read(m.path("fields", n)) == v


def test_rekey_changes_aes_size(mount_factory, hsm, v2key, tmp_path):
    m = mount_factory()
    assert write(m.path("fields", "a"), b"aes-256 first") == 0
    b1, _ = decode(read(m.path("fields", ".sealed", "a")))
    m.unmount()
    m.config = hsm.config(tmp_path / "aes128.xml", descriptors=[
        v2_descriptor(version=3, size=128, oaep="SHA-256")])
    m.start()
    run([TOOL, "rekey-fields", "-o", f"config={m.config}", m.store])
    b3, h = decode(read(m.path("fields", ".sealed", "a")))
    assert h["version"] == 3 and h["aes_len"] == 16 and h["oaep"] == 2
    assert b3[50:66] != b1[50:66]   # re-encrypted: fresh IV
    assert read(m.path("fields", "a")) == b"aes-256 first"


def test_rekey_killed_then_rerun(mount_factory, hsm, v2key, tmp_path):
    m = mount_factory()
    vals = {f"k{i:03d}": secrets.token_hex(8).encode() for i in range(300)}
    for n, v in vals.items():
        assert write(m.path("fields", n), v) == 0
    m.unmount()
    m.config = rotate_config(hsm, tmp_path)
    m.start()
    sdir = os.path.join(m.store, "fields")

    def converted():
        n = 0
        for name in vals:
            with open(os.path.join(sdir, name), "rb") as f:
                n += decode(f.read())[1]["version"] == 2
        return n
    proc = subprocess.Popen([TOOL, "rekey-fields", "-o", f"config={m.config}",
                             m.store], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # Kill as soon as some (not all) fields are converted.
    while proc.poll() is None:
        if converted() >= 5:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    killed_at = converted()
    assert 0 < killed_at < len(vals), f"rekey not interrupted mid-way ({killed_at})"
    # Mid-way state: consistent, every field reads (v1 and v2 mixed).
    for n, v in vals.items():
        assert read(m.path("fields", n)) == v
    p = run([TOOL, "rekey-fields", "-o", f"config={m.config}", m.store])
    assert f"{len(vals) - killed_at} rewrapped" in p.stdout, (killed_at, p.stdout)
    assert converted() == len(vals)
    for n, v in vals.items():
        assert read(m.path("fields", n)) == v
    m.remount()
    assert sorted(os.listdir(m.path("fields"))) == sorted(vals)


def test_rekey_concurrent_with_writes(mount_factory, hsm, v2key, tmp_path):
    """The per-name lock: values written through the mount while rekey
    runs are never replaced by rewrapped older values."""
    m = mount_factory()
    names = [f"c{i}" for i in range(60)]
    for n in names:
        assert write(m.path("fields", n), b"old") == 0
    m.unmount()
    m.config = rotate_config(hsm, tmp_path)
    m.start()
    last = {}
    stop = threading.Event()
    errors = []

    def writer():
        i = 0
        while not stop.is_set():
            n = names[i % len(names)]
            v = f"new-{i}".encode()
            r = write(m.path("fields", n), v)
            if r:
                errors.append((n, r))
            last[n] = v
            i += 1
    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(3):
            run([TOOL, "rekey-fields", "-o", f"config={m.config}", m.store])
    finally:
        stop.set()
        t.join()
    assert not errors
    run([TOOL, "rekey-fields", "-o", f"config={m.config}", m.store])
    for n in names:
        assert read(m.path("fields", n)) == last.get(n, b"old"), n
    assert set(versions(m).values()) == {2}


def test_rekey_progress_only_on_terminal(mount_factory, hsm, v2key, tmp_path):
    m = mount_factory()
    for i in range(3):
        assert write(m.path("fields", f"p{i}"), b"v") == 0
    m.unmount()
    cfg = rotate_config(hsm, tmp_path)
    p = run([TOOL, "rekey-fields", "-o", f"config={cfg}", m.store])
    assert "3/3" not in p.stderr and "3 rewrapped" in p.stdout
    # A third version, so that there is work again, now on a terminal.
    cfg3 = hsm.config(tmp_path / "v3.xml", descriptors=[
        v2_descriptor(), v2_descriptor(version=3, key=V1, oaep="SHA-256")])
    master, slave = pty.openpty()
    proc = subprocess.Popen([TOOL, "rekey-fields", "-o", f"config={cfg3}", m.store],
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    out = proc.communicate(timeout=60)[0].decode()
    tty = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        tty += chunk
    os.close(master)
    assert proc.returncode == 0 and "3 rewrapped" in out
    assert b"rekey-fields: 3/3" in tty and b"1/3" in tty


def test_two_processes_200_each(mount):
    script = r"""
import os, sys, secrets
base, tag = sys.argv[1], sys.argv[2]
vals = {}
for i in range(200):
    n = os.path.join(base, f"{tag}-{i}")
    v = secrets.token_bytes(1 + i % 97)
    with open(n, "wb") as f:
        f.write(v)
    vals[n] = v
    with open(n, "rb") as f:
        assert f.read() == v, n
for n, v in vals.items():
    with open(n, "rb") as f:
        assert f.read() == v, n
print("ok", len(vals))
"""
    base = mount.path("fields")
    procs = [subprocess.Popen(["/usr/bin/python3", "-c", script, base, f"p{k}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for k in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip() == b"ok 200", err.decode()
    assert len(os.listdir(base)) == 400
    for n in os.listdir(base):
        assert decode(read(os.path.join(base, ".sealed", n)))[1]["version"] == 1



def test_unlink_while_open(mount):
    f = mount.path("fields")
    assert write(os.path.join(f, "gone"), b"still readable") == 0
    with open(os.path.join(f, "gone"), "rb") as r:
        os.unlink(os.path.join(f, "gone"))
        assert r.read() == b"still readable"
    assert "gone" not in os.listdir(f)
    # A writer of a removed name: its value dies with it (no resurrection).
    fd = os.open(os.path.join(f, "doomed"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"v1")
    os.fsync(fd)
    assert read(os.path.join(f, "doomed")) == b"v1"
    os.write(fd, b"v2")
    os.unlink(os.path.join(f, "doomed"))
    os.close(fd)
    assert os.listdir(f) == []


def test_rename_while_open(mount):
    f = mount.path("fields")
    assert write(os.path.join(f, "moving"), b"written before mv") == 0
    fd = os.open(os.path.join(f, "moving"), os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"new")
    os.rename(os.path.join(f, "moving"), os.path.join(f, "moved"))
    os.close(fd)
    # The open file follows its name, like a regular file.
    assert read(os.path.join(f, "moved")) == b"new"
    assert sorted(os.listdir(f)) == ["moved"]
    # A writer whose name is replaced by mv: the replaced file's value dies.
    assert write(os.path.join(f, "other"), b"other") == 0
    fd = os.open(os.path.join(f, "moved"), os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"lost")
    os.rename(os.path.join(f, "other"), os.path.join(f, "moved"))
    os.close(fd)
    assert read(os.path.join(f, "moved")) == b"other"


def test_documented_format_independent_decoder(mount_factory, hsm, tmp_path):
    """docs/fields.md is enough to decode: examples/nx02-decode.sh (openssl
    CLI only) opens what the mount sealed with a software (P12) key."""
    key, cert, p12 = tmp_path / "k.pem", tmp_path / "c.pem", tmp_path / "k.p12"
    run(["openssl", "req", "-x509", "-newkey", "rsa:3072", "-nodes", "-keyout",
         str(key), "-out", str(cert), "-subj", "/CN=fields p12", "-days", "30"])
    run(["openssl", "pkcs12", "-export", "-inkey", str(key), "-in", str(cert),
         "-name", "fieldsP12", "-out", str(p12), "-passout", "pass:pw"])
    cfg = hsm.config(tmp_path / "p12.xml", key_attrs={V1: {
        "name": "P12", "locationValue": str(p12), "pin": "pw",
        "alias": "fieldsP12", "slot": None}})
    m = mount_factory(config=cfg)
    decoder = os.path.join(os.environ.get("HSMFS_SRC", "."), "examples",
                           "nx02-decode.sh")
    for name, v in VALUES.items():
        assert write(m.path("fields", name), v) == 0
        env = read(m.path("fields", ".sealed", name))
        assert decode(env)[1]["key_id"] == spki_id(str(cert))
        p = run([decoder, str(key)], input=env)
        assert p.stdout == v, name
    b, _ = decode(read(m.path("fields", ".sealed", "one")))
    for i in (5, 60, 70, len(b) - 40):   # header, IV, wrap, MAC
        c = bytearray(b)
        c[i] ^= 1
        p = run([decoder, str(key)], input=encode(with_check(bytes(c))), check=False)
        assert p.returncode == 1 and p.stdout == b"", i
        p = run([decoder, str(key)], input=encode(bytes(c)), check=False)
        assert p.returncode == 1 and b"damaged" in p.stderr


def test_hsm_failure_is_eio_then_recovers(mount_factory, hsm, tmp_path,
                                          monkeypatch):
    """contract §8: an HSM failing mid-operation fails the read with EIO, the
    mount keeps serving, and reads work again when the HSM is back."""
    from conftest import BUILD
    shim = os.environ.get("HSMFS_P11SHIM", str(BUILD / "tests" / "p11shim.so"))
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    monkeypatch.setenv("P11SHIM_REAL", hsm.module)
    monkeypatch.setenv("P11SHIM_CTL", str(ctl))
    aliases = [V1, "configZipSignerCertificateV1",
               "objectHistorySignerCertificateV1", "signEmailCertificateV1"]
    cfg = hsm.config(tmp_path / "shim.xml",
                     key_attrs={a: {"locationValue": shim} for a in aliases})
    m = mount_factory(config=cfg)
    p = m.path("fields", "f")
    assert write(p, b"value") == 0
    assert read(p) == b"value"
    (ctl / "fail_ops").touch()
    with pytest.raises(OSError) as e:
        read(p)
    assert e.value.errno == errno.EIO
    assert os.stat(p).st_size == 5                  # no HSM needed
    assert read(m.path("fields", ".sealed", "f")).startswith(b"NX02:")
    assert write(m.path("fields", "g"), b"sealed without the HSM") == 0
    assert "CKR_DEVICE_ERROR" in m.log()
    (ctl / "fail_ops").unlink()
    assert read(p) == b"value"
    assert read(m.path("fields", "g")) == b"sealed without the HSM"


def test_rekey_leaves_damaged_field_alone(mount_factory, hsm, v2key, tmp_path):
    m = mount_factory()
    for n in ("good1", "bad", "good2"):
        assert write(m.path("fields", n), n.encode()) == 0
    m.unmount()
    bad = os.path.join(m.store, "fields", "bad")
    b, _ = decode(read(bad))
    c = bytearray(b)
    c[200] ^= 1                       # inside the wrapped key
    forged = encode(with_check(bytes(c)))
    with open(bad, "wb") as f:
        f.write(forged)
    cfg = rotate_config(hsm, tmp_path)
    p = run([TOOL, "rekey-fields", "-o", f"config={cfg}", m.store], check=False)
    assert p.returncode == 1
    assert "2 rewrapped" in p.stdout and "1 failed" in p.stdout
    assert "field bad" in p.stderr and "authentication" in p.stderr
    assert p.stderr.count("field bad") == 1
    assert read(bad) == forged        # left alone, not laundered
    m.config = cfg
    m.start()
    assert versions(m) == {"good1": 2, "good2": 2, "bad": 1}
    assert read(m.path("fields", "good1")) == b"good1"
    with pytest.raises(OSError) as e:
        read(m.path("fields", "bad"))
    assert e.value.errno == errno.EBADMSG


def test_daemon_kill9_keeps_acknowledged_values(mount_factory):
    """contract §8: kill -9 of the daemon at any moment; every value whose
    close() returned 0 survives and opens after restart."""
    m = mount_factory()
    script = r"""
import os, sys
base = sys.argv[1]
i = 0
while True:
    n = os.path.join(base, "k%d" % (i % 50))
    v = ("value-%d" % i).encode()
    try:
        fd = os.open(n, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, v)
        os.close(fd)
    except OSError:
        break
    print(n, v.decode(), flush=True)
    i += 1
"""
    p = subprocess.Popen(["/usr/bin/python3", "-c", script, m.path("fields")],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    acked = {}
    lines = 0
    deadline = time.monotonic() + 30
    while lines < 120 and time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        n, v = line.split()
        acked[os.path.basename(n)] = v.encode()
        lines += 1
    m.kill9()
    for line in p.stdout:
        n, v = line.split()
        acked[os.path.basename(n)] = v.encode()
    p.wait(timeout=30)
    assert len(acked) == 50
    # The write after the last acknowledged one was in flight: either
    # value may be there for its name.
    last = max(int(v.decode().split("-")[1]) for v in acked.values())
    inflight = (f"k{(last + 1) % 50}", f"value-{last + 1}".encode())
    m.start()
    for n, v in acked.items():
        got = read(m.path("fields", n))
        assert got == v or (n, got) == inflight, (n, got, v)
    names = os.listdir(os.path.join(m.store, "fields"))
    assert not [x for x in names if x.startswith(".tmp.")]
    assert_not_in_store(m.store, acked.values())
