"""/sign-out and /verify-in (issue 3, contract §3 and §8): JAR-signed zips,
checked with the real jarsigner and openssl both ways, hostile zips
rejected with a reason, and the daemon's memory on a large zip."""
import errno
import importlib.util
import os
import re
import ssl
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path

import pytest

from conftest import TOOL
from helpers import run

LONG = ("config/a-very-long-directory-name-that-goes-on-and-on/"
        "beyond-seventy-two-bytes-of-manifest-line/settings.properties")
UTF8 = "réglages/日本語/" + "é" * 40 + ".txt"
SIGNER_KEY = "configZipSignerCertificateV1"


# ---------------------------------------------------------------- helpers

def make_zip(path, extra=()):
    """Stored and deflated entries, nested folders, a directory entry, an
    empty file, a name longer than 72 bytes and a UTF-8 name."""
    text = "".join(f"line {i}: some configuration text\n" for i in range(5000))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(zipfile.ZipInfo("config/"), b"")
        z.writestr("config/stored.bin", os.urandom(3000), zipfile.ZIP_STORED)
        z.writestr("config/deflated.txt", text, zipfile.ZIP_DEFLATED)
        z.writestr("config/deep/er/nested.xml", "<a/>\n", zipfile.ZIP_DEFLATED)
        z.writestr("empty.txt", b"", zipfile.ZIP_STORED)
        z.writestr(LONG, "x=1\n", zipfile.ZIP_DEFLATED)
        z.writestr(UTF8, "utf8 content\n", zipfile.ZIP_DEFLATED)
        for name, data in extra:
            z.writestr(name, data)
    return path


def raw_entries(path):
    """name -> (method, crc, compressed bytes) straight from the file."""
    out = {}
    data = Path(path).read_bytes()
    with zipfile.ZipFile(path) as z:
        for i in z.infolist():
            off = i.header_offset
            n, x = struct.unpack("<HH", data[off + 26:off + 30])
            start = off + 30 + n + x
            out[i.filename] = (i.compress_type, i.CRC,
                               data[start:start + i.compress_size])
    return out


def write_file(path, data):
    """Write through os calls so close()'s error is seen; returns errno."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    except OSError as e:
        os.close(fd)
        return e.errno
    try:
        os.close(fd)
    except OSError as e:
        return e.errno
    return 0


def xattr(path, name):
    return os.getxattr(path, name).decode()


def jarsigner_verify(path, trust):
    p = run(["jarsigner", "-verify", "-strict", "-keystore", trust,
             "-storepass", "changeit", str(path)], check=False)
    return p


def status(m):
    return dict(l.split(": ", 1) for l in
                Path(m.path(".status")).read_text().splitlines() if ": " in l)


@pytest.fixture(scope="module")
def pki(hsm, tmp_path_factory):
    """Truststore for jarsigner (PKCS#12 made with keytool from the test CA)
    and PKCS#12 signing keys for jarsigner: CA-issued, self-signed,
    expired."""
    d = tmp_path_factory.mktemp("pki")
    trust = str(d / "trust.p12")
    run(["keytool", "-importcert", "-noprompt", "-alias", "testca", "-file",
         hsm.ca_cert, "-keystore", trust, "-storetype", "PKCS12",
         "-storepass", "changeit"])

    def p12_from(key, cert, name, chain=True):
        out = str(d / f"{name}.p12")
        cmd = ["openssl", "pkcs12", "-export", "-inkey", key, "-in", cert,
               "-name", "signer", "-passout", "pass:changeit", "-out", out]
        if chain:
            cmd += ["-certfile", hsm.ca_cert]
        run(cmd)
        return out

    # CA-issued
    key = str(d / "js.key")
    csr = str(d / "js.csr")
    run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout",
         key, "-out", csr, "-subj", "/CN=jarsigner user/O=hsmfs tests"])
    cert = hsm.issue_cert("/CN=jarsigner user/O=hsmfs tests", csr=csr,
                          out=str(d / "js.pem"))
    good = p12_from(key, cert, "good")
    # self-signed (untrusted)
    skey, scert = str(d / "self.key"), str(d / "self.pem")
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
         skey, "-out", scert, "-days", "30", "-subj", "/CN=self signed",
         "-addext", "keyUsage=critical,digitalSignature"])
    selfp = p12_from(skey, scert, "self", chain=False)
    # expired, issued by the test CA with dates in the past (openssl ca)
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")
    (d / "ca.cnf").write_text(
        "[ca]\ndefault_ca = c\n[c]\ndatabase = index.txt\nnew_certs_dir = .\n"
        "serial = serial\ndefault_md = sha256\npolicy = p\n"
        "[p]\ncommonName = supplied\norganizationName = optional\n"
        "[ext]\nkeyUsage = critical,digitalSignature\n")
    ekey, ecsr, ecert = str(d / "exp.key"), str(d / "exp.csr"), str(d / "exp.pem")
    run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout",
         ekey, "-out", ecsr, "-subj", "/CN=expired signer/O=hsmfs tests"])
    subprocess.run(["openssl", "ca", "-batch", "-config", "ca.cnf", "-cert",
                    hsm.ca_cert, "-keyfile", hsm.ca_key, "-in", ecsr, "-out",
                    ecert, "-startdate", "20200101000000Z", "-enddate",
                    "20210101000000Z", "-extensions", "ext", "-notext"],
                   cwd=d, check=True, capture_output=True)
    expired = p12_from(ekey, ecert, "expired")
    # CA-issued with an extended key usage: TLS server (class 7 of issue
    # 12: not for signing configuration), code signing; and one outliving
    # the CA (the verdict expires with the earliest notAfter of the chain).
    ekus = {}
    for name, eku, days in (("tls", "serverAuth", 365),
                            ("codesign", "codeSigning", 365),
                            ("longlived", None, 9000)):
        k, c = str(d / f"{name}.key"), str(d / f"{name}.csr")
        run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout",
             k, "-out", c, "-subj", f"/CN={name} signer/O=hsmfs tests"])
        ekus[name] = p12_from(k, hsm.issue_cert(f"/CN={name} signer/O=hsmfs tests",
                                                csr=c, out=str(d / f"{name}.pem"),
                                                eku=eku, days=days), name)
    return {**ekus, "dir": d, "trust": trust, "good": good, "self": selfp,
            "expired": expired}


def jarsign(p12, path, *args):
    run(["jarsigner", "-keystore", p12, "-storepass", "changeit", *args,
         str(path), "signer"])
    return path


@pytest.fixture
def zm(hsm, mount_factory):
    """A mount whose truststore is the test CA (the issuer chain is then
    embedded in signatures, as jarsigner -keystore needs)."""
    return mount_factory(opts={"truststore": hsm.ca_cert})


# ---------------------------------------------------------------- /sign-out

def test_sign_out_jarsigner_and_openssl_accept(hsm, zm, pki, tmp_path):
    src = make_zip(tmp_path / "export.zip")
    dst = zm.path("sign-out", "export.zip")
    assert write_file(dst, src.read_bytes()) == 0
    st = os.stat(dst)
    assert st.st_mode & 0o777 == 0o644
    signed = tmp_path / "signed.zip"
    signed.write_bytes(Path(dst).read_bytes())
    assert st.st_size == signed.stat().st_size
    assert xattr(dst, "user.hsmfs.sign").startswith("signed signer=")

    p = jarsigner_verify(signed, pki["trust"])
    assert p.returncode == 0, p.stdout + p.stderr
    assert "jar verified." in p.stdout.splitlines()

    with zipfile.ZipFile(signed) as z:
        names = z.namelist()
        mf = z.read("META-INF/MANIFEST.MF")
        sfname = [n for n in names if n.endswith(".SF")][0]
        sf = z.read(sfname)
        block = z.read(sfname[:-3] + ".RSA")
    # jarsigner's order, signer name from the key alias, then the entries.
    assert names[:3] == ["META-INF/MANIFEST.MF", "META-INF/CONFIGZI.SF",
                         "META-INF/CONFIGZI.RSA"]
    with zipfile.ZipFile(src) as z:
        assert names[3:] == z.namelist()
    # Entries copied raw: same method, CRC and compressed bytes.
    before, after = raw_entries(src), raw_entries(signed)
    for name, v in before.items():
        assert after[name] == v, name
    # Manifest format: CRLF, <= 72 bytes per line, SHA-256 digests, long
    # and UTF-8 names wrapped.
    lines = mf.split(b"\r\n")
    assert b"\n" not in b"".join(lines)
    assert all(len(l) <= 72 for l in lines)
    assert mf.count(b"SHA-256-Digest: ") == 6
    joined = mf.replace(b"\r\n ", b"").decode()
    assert f"Name: {LONG}" in joined and f"Name: {UTF8}" in joined
    assert "Name: config/\r\n" not in joined
    # The CMS block verifies over the .SF with openssl and embeds our cert.
    (tmp_path / "x.SF").write_bytes(sf)
    (tmp_path / "x.RSA").write_bytes(block)
    run(["openssl", "cms", "-verify", "-inform", "DER", "-in",
         str(tmp_path / "x.RSA"), "-content", str(tmp_path / "x.SF"), "-binary",
         "-purpose", "any", "-CAfile", hsm.ca_cert, "-out", "/dev/null"])
    cms = run(["openssl", "cms", "-cmsout", "-print", "-inform", "DER", "-in",
               str(tmp_path / "x.RSA")]).stdout
    assert "d.issuerAndSerialNumber" in cms      # not subjectKeyIdentifier
    assert re.search(r"signedAttrs:\s*<ABSENT>", cms), cms   # as jarsigner
    assert "eContent: <ABSENT>" in cms           # detached
    certs = run(["openssl", "pkcs7", "-inform", "DER", "-in",
                 str(tmp_path / "x.RSA"), "-print_certs"]).stdout
    ours = Path(hsm.keys[SIGNER_KEY].cert_pem).read_text().strip()
    assert ours in certs
    # The same zip through hsmfs-tool verify-zip, trusting the config.
    p = run([TOOL, "verify-zip", "-o", f"config={zm.config}", str(signed)])
    assert p.stdout.startswith("valid signer=") and SIGNER_KEY in p.stdout


def test_sign_out_sha384_descriptor_and_older_versions_verify(hsm, mount_factory,
                                                              pki, tmp_path):
    if "configZipSignerCertificateV2" not in hsm.keys:
        hsm.make_key("configZipSignerCertificateV2", method="pkcs11-tool")
    cfg = hsm.config(tmp_path / "v2.xml", descriptors=[
        {"name": "ConfigZipSigner", "version": 2, "algorithm": "SHA-384",
         "key": "configZipSignerCertificateV2"}])
    # Signed by version 1 first (default config, no truststore).
    m1 = mount_factory()
    assert write_file(m1.path("sign-out", "v1.zip"),
                      make_zip(tmp_path / "a.zip").read_bytes()) == 0
    v1 = Path(m1.path("sign-out", "v1.zip")).read_bytes()
    m1.unmount()
    m2 = mount_factory(config=cfg, opts={"truststore": hsm.ca_cert})
    assert write_file(m2.path("sign-out", "v2.zip"),
                      make_zip(tmp_path / "b.zip").read_bytes()) == 0
    v2 = tmp_path / "v2.zip"
    v2.write_bytes(Path(m2.path("sign-out", "v2.zip")).read_bytes())
    with zipfile.ZipFile(v2) as z:
        mf = z.read("META-INF/MANIFEST.MF").decode()
        sf = z.read("META-INF/CONFIGZI.SF").decode()
    assert "SHA-384-Digest: " in mf and "SHA-256-Digest" not in mf
    assert "SHA-384-Digest-Manifest: " in sf
    p = jarsigner_verify(v2, pki["trust"])
    assert p.returncode == 0 and "jar verified." in p.stdout, p.stdout
    # No truststore: both versions' certificates are trusted as configured.
    m2.unmount()
    m3 = mount_factory(config=cfg)
    for name, data in (("v1.zip", v1), ("v2.zip", v2.read_bytes())):
        dst = m3.path("verify-in", name)
        assert write_file(dst, data) == 0
        assert Path(dst).read_bytes() == data
        v = xattr(dst, "user.hsmfs.verify")
        assert v.startswith("valid signer=") and "CN=configZipSignerCertificateV" in v, v


# An empty file is a pending item, not an error (issue 13): see
# tests/test_writers.py::test_empty_temporaries_and_files.
@pytest.mark.parametrize("case", ["not-a-zip", "traversal", "duplicate",
                                  "prepended", "truncated"])
def test_sign_out_refuses_bad_input(zm, tmp_path, case):
    good = make_zip(tmp_path / "g.zip").read_bytes()
    marker = b"MARKER-" + os.urandom(8).hex().encode()
    if case == "not-a-zip":
        data, why = marker * 100, "not a zip"
    elif case == "traversal":
        data = zipfile_bytes(tmp_path, [("../../etc/evil", marker)])
        why = "'..'"
    elif case == "duplicate":
        data = zipfile_bytes(tmp_path, [("a.txt", marker), ("b.txt", marker)])
        data = data.replace(b"b.txt", b"a.txt")
        why = "duplicate"
    elif case == "prepended":
        data, why = marker + good, "prepended"
    else:
        data, why = good[:len(good) // 2], "not a zip"
    dst = zm.path("sign-out", "bad.zip")
    assert write_file(dst, data) == errno.EINVAL
    reason = xattr(dst, "user.hsmfs.sign")
    assert reason.startswith("invalid: ") and why in reason, reason
    # Nothing of the input reached the store, and no zip is served.
    for p in Path(zm.store).rglob("*"):
        if p.is_file() and data:
            assert marker not in p.read_bytes() and good[:64] not in p.read_bytes(), p
    assert os.stat(dst).st_size == 0
    with pytest.raises(OSError) as e:
        open(dst, "rb")
    assert e.value.errno == errno.EINVAL
    assert "sign-out/bad.zip" in zm.log() and why in zm.log()
    # cp reports the failure too (it checks close()).
    src = tmp_path / "in.zip"
    src.write_bytes(data)
    p = run(["cp", str(src), zm.path("sign-out", "bad2.zip")], check=False)
    assert p.returncode != 0 and "Invalid argument" in p.stderr
    # A good zip under the same name replaces the record.
    assert write_file(dst, good) == 0
    assert xattr(dst, "user.hsmfs.sign").startswith("signed")


def zipfile_bytes(tmp_path, entries):
    p = tmp_path / f"z{len(list(tmp_path.iterdir()))}.zip"
    with zipfile.ZipFile(p, "w") as z:
        for n, d in entries:
            z.writestr(n, d)
    return p.read_bytes()


def test_sign_out_names_rm_mv_and_flush_once(zm, tmp_path):
    data = make_zip(tmp_path / "a.zip").read_bytes()
    d = zm.path("sign-out")
    for bad in (".a b.zip", "a b.zip", "a:b.zip"):
        with pytest.raises(OSError) as e:
            open(os.path.join(d, bad), "wb")
        assert e.value.errno == errno.EINVAL, bad
    before = int(status(zm)["sign-out.signed"])
    # Two descriptors, two flushes, one signature.
    fd = os.open(os.path.join(d, "one.zip"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(fd, data)
    fd2 = os.dup(fd)
    os.close(fd2)
    os.close(fd)
    assert int(status(zm)["sign-out.signed"]) == before + 1
    signed = Path(d, "one.zip").read_bytes()
    # Reopening for writing without writing (touch, append nothing) does
    # not sign again.
    run(["touch", os.path.join(d, "one.zip")])
    with open(os.path.join(d, "one.zip"), "ab"):
        pass
    assert Path(d, "one.zip").read_bytes() == signed
    assert int(status(zm)["sign-out.signed"]) == before + 1
    os.rename(os.path.join(d, "one.zip"), os.path.join(d, "two.zip"))
    assert sorted(os.listdir(d)) == ["two.zip"]
    assert Path(d, "two.zip").read_bytes() == signed
    assert xattr(os.path.join(d, "two.zip"), "user.hsmfs.sign").startswith("signed")
    ls = run(["ls", "-l", d]).stdout
    assert re.search(r"-rw-r--r-- .* two\.zip", ls), ls
    os.unlink(os.path.join(d, "two.zip"))
    assert os.listdir(d) == []
    # Survives a remount (durable at close).
    assert write_file(os.path.join(d, "keep.zip"), data) == 0
    kept = Path(d, "keep.zip").read_bytes()
    zm.remount()
    assert Path(zm.path("sign-out", "keep.zip")).read_bytes() == kept


def test_sign_out_without_descriptor_refuses_writes(hsm, mount_factory, tmp_path):
    cfg = hsm.config(tmp_path / "c.xml", omit=("ConfigZipSigner",))
    m = mount_factory(config=cfg)
    with pytest.raises(OSError) as e:
        open(m.path("sign-out", "x.zip"), "wb")
    assert e.value.errno == errno.EOPNOTSUPP
    assert "sign-out" in m.log() and "not configured" in m.log()


@pytest.fixture
def small_store(tmp_path):
    d = tmp_path / "small"
    d.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=700", "tmpfs",
                        str(d)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {p.stderr}")
    yield d
    subprocess.run(["umount", "-l", str(d)])


def test_sign_out_full_disk(mount_factory, small_store, tmp_path):
    """contract §8: ENOSPC at close, the previous signed zip intact, no temp
    files left behind, and signing works again once there is room."""
    m = mount_factory(store=str(small_store / "store"))
    small = make_zip(tmp_path / "small.zip").read_bytes()
    dst = m.path("sign-out", "a.zip")
    assert write_file(dst, small) == 0
    before = Path(dst).read_bytes()
    big = zipfile_bytes(tmp_path, [("big.bin", os.urandom(2 << 20))])
    assert write_file(dst, big) == errno.ENOSPC
    assert Path(dst).read_bytes() == before
    assert xattr(dst, "user.hsmfs.sign").startswith("failed: ")
    spool = Path(m.store) / "sign-out" / ".spool"
    assert list(spool.iterdir()) == []
    assert write_file(m.path("sign-out", "b.zip"), small) == 0
    assert xattr(m.path("sign-out", "b.zip"), "user.hsmfs.sign").startswith("signed")


def test_sign_out_hsm_failure_then_recovery(hsm, mount_factory, tmp_path, monkeypatch):
    """contract §8: the HSM failing mid-operation fails close() with EIO,
    nothing is stored, and signing works again once it is back
    (tests/p11shim injects CKR_DEVICE_ERROR in front of SoftHSM)."""
    from conftest import BUILD
    shim = os.environ.get("HSMFS_P11SHIM", str(BUILD / "tests" / "p11shim.so"))
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    monkeypatch.setenv("P11SHIM_REAL", hsm.module)
    monkeypatch.setenv("P11SHIM_CTL", str(ctl))
    cfg = hsm.config(tmp_path / "shim.xml", key_attrs={
        SIGNER_KEY: {"locationValue": shim}})
    m = mount_factory(config=cfg)
    data = make_zip(tmp_path / "a.zip").read_bytes()
    (ctl / "fail_ops").touch()
    dst = m.path("sign-out", "a.zip")
    assert write_file(dst, data) == errno.EIO
    assert xattr(dst, "user.hsmfs.sign").startswith("failed: ")
    assert os.stat(dst).st_size == 0
    assert "sign-out/a.zip" in m.log()
    (ctl / "fail_ops").unlink()
    assert write_file(dst, data) == 0
    with zipfile.ZipFile(dst) as z:
        assert z.namelist()[:3] == ["META-INF/MANIFEST.MF", "META-INF/CONFIGZI.SF",
                                    "META-INF/CONFIGZI.RSA"]
    assert xattr(dst, "user.hsmfs.sign").startswith("signed")


# ---------------------------------------------------------------- /verify-in

@pytest.mark.parametrize("digestalg", [None, "SHA-512"])
def test_verify_in_accepts_jarsigner_zips(zm, pki, tmp_path, digestalg):
    z = make_zip(tmp_path / "js.zip")
    jarsign(pki["good"], z, *(["-digestalg", digestalg] if digestalg else []))
    if digestalg:
        with zipfile.ZipFile(z) as zz:
            assert b"SHA-512-Digest" in zz.read("META-INF/MANIFEST.MF")
    dst = zm.path("verify-in", "js.zip")
    run(["cp", str(z), dst])
    assert Path(dst).read_bytes() == z.read_bytes()
    v = xattr(dst, "user.hsmfs.verify")
    assert v == "valid signer=O=hsmfs tests,CN=jarsigner user", v


def test_sign_out_keeps_an_existing_jarsigner_signature(zm, pki, tmp_path):
    z = jarsign(pki["good"], make_zip(tmp_path / "pre.zip"))
    dst = zm.path("sign-out", "pre.zip")
    run(["cp", str(z), dst])
    out = tmp_path / "both.zip"
    out.write_bytes(Path(dst).read_bytes())
    with zipfile.ZipFile(out) as zz:
        names = zz.namelist()
    assert names[:3] == ["META-INF/MANIFEST.MF", "META-INF/CONFIGZI.SF",
                         "META-INF/CONFIGZI.RSA"]
    assert "META-INF/SIGNER.SF" in names and "META-INF/SIGNER.RSA" in names
    assert names.count("META-INF/MANIFEST.MF") == 1
    p = jarsigner_verify(out, pki["trust"])
    assert p.returncode == 0 and "jar verified." in p.stdout, p.stdout
    back = zm.path("verify-in", "both.zip")
    run(["cp", str(out), back])
    assert Path(back).read_bytes() == out.read_bytes()


def test_verify_in_accepts_hsmfs_signed_and_caches_verdict(zm, tmp_path):
    assert write_file(zm.path("sign-out", "a.zip"),
                      make_zip(tmp_path / "a.zip").read_bytes()) == 0
    signed = Path(zm.path("sign-out", "a.zip")).read_bytes()
    dst = zm.path("verify-in", "a.zip")
    assert write_file(dst, signed) == 0
    s0 = status(zm)
    assert Path(dst).read_bytes() == signed
    s1 = status(zm)
    assert Path(dst).read_bytes() == signed
    s2 = status(zm)
    assert int(s1["verify-in.valid"]) == int(s0["verify-in.valid"]) + 1
    assert s2["verify-in.valid"] == s1["verify-in.valid"]
    assert int(s2["verify-in.cached"]) > int(s1["verify-in.cached"])
    # The same bytes under another name reuse the verdict; new bytes do not.
    other = zm.path("verify-in", "b.zip")
    assert write_file(other, signed) == 0
    assert Path(other).read_bytes() == signed
    assert status(zm)["verify-in.valid"] == s2["verify-in.valid"]


def test_verify_in_names_rm_mv(zm, pki, tmp_path, signed_by_jarsigner):
    d = zm.path("verify-in")
    data = signed_by_jarsigner.read_bytes()
    with pytest.raises(OSError) as e:
        open(os.path.join(d, "bad name.zip"), "wb")
    assert e.value.errno == errno.EINVAL
    assert write_file(os.path.join(d, "a.zip"), data) == 0
    assert os.listdir(d) == ["a.zip"]
    st = os.stat(os.path.join(d, "a.zip"))
    assert st.st_mode & 0o777 == 0o644 and st.st_size == len(data)
    os.rename(os.path.join(d, "a.zip"), os.path.join(d, "b.zip"))
    assert os.listdir(d) == ["b.zip"]
    assert Path(d, "b.zip").read_bytes() == data
    assert xattr(os.path.join(d, "b.zip"), "user.hsmfs.verify").startswith("valid")
    assert "user.hsmfs.verify" in os.listxattr(os.path.join(d, "b.zip"))
    os.unlink(os.path.join(d, "b.zip"))
    assert os.listdir(d) == []
    assert list((Path(zm.store) / "verify-in" / ".meta").iterdir()) == []
    # Replacing the bytes under a name replaces the verdict too.
    assert write_file(os.path.join(d, "c.zip"), data) == 0
    assert Path(d, "c.zip").read_bytes() == data
    assert write_file(os.path.join(d, "c.zip"), data + b"junk") == 0
    with pytest.raises(OSError) as e:
        open(os.path.join(d, "c.zip"), "rb")
    assert e.value.errno == errno.EBADMSG


def _patch_sizes(path, name, usize):
    """Declare `usize` as the uncompressed size of `name` everywhere it is
    recorded: local header, data descriptor (jarsigner writes them) and
    central directory."""
    b = bytearray(Path(path).read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    off = info.header_offset
    n, x = struct.unpack("<HH", b[off + 26:off + 30])
    if not info.flag_bits & 8:
        b[off + 22:off + 26] = struct.pack("<I", usize)
    else:
        end = off + 30 + n + x + info.compress_size
        d = end + (4 if b[end:end + 4] == b"PK\x07\x08" else 0)
        b[d + 8:d + 12] = struct.pack("<I", usize)
    nb = name.encode()
    i = b.find(b"PK\x01\x02")
    while i >= 0:
        if b[i + 46:i + 46 + len(nb)] == nb:
            b[i + 24:i + 28] = struct.pack("<I", usize)
        i = b.find(b"PK\x01\x02", i + 4)
    return bytes(b)


def _rezip(src, dst, drop=(), replace=None, add=None):
    """Copy a zip entry by entry with Python's zipfile (no re-signing)."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w") as zo:
        for info in zi.infolist():
            if info.filename in drop:
                continue
            data = zi.read(info.filename)
            if replace and info.filename in replace:
                data = replace[info.filename](data)
            zo.writestr(info, data)
        for n, d in (add or {}).items():
            zo.writestr(n, d)
    return dst


HOSTILE = ["unsigned", "modified", "added", "removed", "sf-modified",
           "rsa-removed", "self-signed", "expired", "sha1", "duplicate",
           "local-central-mismatch", "prepended", "appended", "traversal",
           "absolute", "bomb-declared-small", "bomb-ratio", "two-manifests",
           "dir-with-data", "tls-server-cert", "sig-file-added"]


@pytest.fixture(scope="module")
def signed_by_jarsigner(pki, tmp_path_factory):
    d = tmp_path_factory.mktemp("js")
    return jarsign(pki["good"], make_zip(d / "good.zip"))


@pytest.fixture(scope="module")
def bomb(pki, tmp_path_factory):
    """A jarsigner-signed zip holding 1 GiB of zeros, deflated (~1 MB)."""
    size = 1 << 30
    p = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("zeros.bin", "w", force_zip64=False) as f:
            chunk = b"\0" * (16 << 20)
            for _ in range(size // len(chunk)):
                f.write(chunk)
    return jarsign(pki["good"], p)


@pytest.mark.parametrize("case", HOSTILE)
def test_verify_in_rejects(zm, pki, tmp_path, signed_by_jarsigner, case, request):
    good = signed_by_jarsigner
    g = good.read_bytes()
    out = tmp_path / "x.zip"
    if case == "unsigned":
        data, why = make_zip(out).read_bytes(), "unsigned zip"
    elif case == "modified":
        data = _rezip(good, out, replace={"config/deep/er/nested.xml":
                                          lambda d: d + b"<!-- -->"}).read_bytes()
        why = "modified"
    elif case == "added":
        data = _rezip(good, out, add={"config/new.txt": b"x"}).read_bytes()
        why = "not signed"
    elif case == "removed":
        data = _rezip(good, out, drop=("empty.txt",)).read_bytes()
        why = "listed in the manifest but missing"
    elif case == "sf-modified":
        data = _rezip(good, out, replace={"META-INF/SIGNER.SF": lambda d: d.replace(
            b"Created-By", b"Created-by")}).read_bytes()
        why = "does not verify"
    elif case == "rsa-removed":
        data = _rezip(good, out, drop=("META-INF/SIGNER.RSA",)).read_bytes()
        why = "no signature block"
    elif case == "self-signed":
        data = jarsign(pki["self"], make_zip(out)).read_bytes()
        why = "not trusted"
    elif case == "expired":
        data = jarsign(pki["expired"], make_zip(out)).read_bytes()
        why = "expired"
    elif case == "sha1":
        data = jarsign(pki["good"], make_zip(out), "-digestalg", "SHA-1",
                       "-sigalg", "SHA1withRSA").read_bytes()
        why = "SHA-1"
    elif case == "duplicate":
        data = _rezip(good, out, add={"empty.txx": b""}).read_bytes()
        data = data.replace(b"empty.txx", b"empty.txt")
        why = "duplicate entry name"
    elif case == "local-central-mismatch":
        b = bytearray(g)
        j = b.find(b"empty.txt")     # the local header's copy comes first
        b[j] = ord("E")
        data, why = bytes(b), "local and central header names differ"
    elif case == "prepended":
        data, why = b"#!/bin/sh\nexit 0\n" + g, "prepended"
    elif case == "appended":
        data, why = g + b"trailing garbage", "garbage appended"
    elif case == "traversal":
        data = _rezip(good, out, add={"../../evil.sh": b"x"}).read_bytes()
        why = "'..'"
    elif case == "absolute":
        data = _rezip(good, out, add={"/etc/cron.d/evil": b"x"}).read_bytes()
        why = "absolute"
    elif case == "two-manifests":
        data = _rezip(good, out, add={"meta-inf/manifest.mf":
                                      b"Manifest-Version: 1.0\r\n\r\n"}).read_bytes()
        why = "two manifests"
    elif case == "tls-server-cert":
        data = jarsign(pki["tls"], make_zip(out)).read_bytes()
        why = "extended key usage does not include codeSigning"
    elif case == "sig-file-added":
        data = _rezip(good, out, add={"META-INF/SIG-X.SIG": b"x"}).read_bytes()
        why = "entry META-INF/SIG-X.SIG is not signed"
    elif case == "dir-with-data":
        data = _rezip(good, out, add={"hidden/": b"bytes no digest covers"}).read_bytes()
        why = "directory entry with data"
    elif case == "bomb-declared-small":
        data = _patch_sizes(request.getfixturevalue("bomb"), "zeros.bin", 1000)
        why = "beyond its declared size"
    elif case == "bomb-ratio":
        data = request.getfixturevalue("bomb").read_bytes()
        why = "compression ratio"
    dst = zm.path("verify-in", "x.zip")
    assert write_file(dst, data) == 0            # stored as copied
    assert os.stat(dst).st_size == len(data)
    with pytest.raises(OSError) as e:
        open(dst, "rb")
    assert e.value.errno == errno.EBADMSG
    v = xattr(dst, "user.hsmfs.verify")
    assert v.startswith("invalid: ") and why in v, v
    assert "verify-in/x.zip: invalid: " in zm.log()
    # hsmfs-tool verify-zip gives the same answer offline.
    out.write_bytes(data)
    p = run([TOOL, "verify-zip", "-o", f"config={zm.config}", "--truststore",
             zm.hsm.ca_cert, str(out)], check=False)
    assert p.returncode == 1 and p.stdout.startswith("invalid: ") and why in p.stdout


def test_verify_in_without_trust_refuses_writes(hsm, mount_factory, tmp_path):
    cfg = hsm.config(tmp_path / "c.xml", omit=("ConfigZipSigner",))
    m = mount_factory(config=cfg)
    with pytest.raises(OSError) as e:
        open(m.path("verify-in", "x.zip"), "wb")
    assert e.value.errno == errno.EOPNOTSUPP


def test_verify_zip_tool_usage(hsm, tmp_path):
    assert run([TOOL, "verify-zip"], check=False).returncode == 2
    assert run([TOOL, "verify-zip", str(tmp_path / "x.zip")], check=False).returncode == 2
    p = run([TOOL, "verify-zip", "--truststore", hsm.ca_cert,
             str(tmp_path / "missing.zip")], check=False)
    assert p.returncode == 2
    assert run([TOOL, "verify-zip", "--help"]).returncode == 0


FIXTURES = Path(__file__).resolve().parent / "data" / "jar"


def test_verify_zip_several(tmp_path):
    """verify-zip ZIP...: one "ZIP: verdict" line per file, in order; exit
    1 when any is invalid, 2 when any cannot be read, the rest still checked."""
    trust = str(FIXTURES / "fixture-signer.pem")
    good = [str(FIXTURES / "signed-by-jarsigner.zip"), str(FIXTURES / "signed-by-hsmfs.zip")]
    forged = str(FIXTURES / "forged-content.zip")
    valid = "valid signer=CN=hsmfs fixture signer,O=hsmfs tests"
    p = run([TOOL, "verify-zip", "--truststore", trust] + good, check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "".join(f"{z}: {valid}\n" for z in good)
    p = run([TOOL, "verify-zip", good[0], forged, "--truststore", trust, good[1]],
            check=False)
    assert p.returncode == 1, p.stderr
    assert p.stdout.splitlines() == [
        f"{good[0]}: {valid}",
        f"{forged}: invalid: entry README.txt was modified (digest mismatch)",
        f"{good[1]}: {valid}"]
    missing = str(tmp_path / "missing.zip")
    p = run([TOOL, "verify-zip", "--truststore", trust, missing, forged, good[0]],
            check=False)
    assert p.returncode == 2
    assert missing in p.stderr
    assert p.stdout.splitlines()[-1] == f"{good[0]}: {valid}"
    assert len(p.stdout.splitlines()) == 2


@pytest.mark.parametrize("name,valid", [("signed-by-jarsigner.zip", True),
                                        ("signed-by-hsmfs.zip", True),
                                        ("forged-content.zip", False)])
def test_committed_fixtures(hsm, mount_factory, name, valid):
    """Known-good and forged zips kept in the tree (tests/data/jar/README)."""
    trust = str(FIXTURES / "fixture-signer.pem")
    data = (FIXTURES / name).read_bytes()
    p = run([TOOL, "verify-zip", "--truststore", trust, str(FIXTURES / name)],
            check=False)
    if valid:
        assert p.returncode == 0, p.stdout + p.stderr
        assert p.stdout == "valid signer=CN=hsmfs fixture signer,O=hsmfs tests\n"
    else:
        assert p.returncode == 1
        assert p.stdout == "invalid: entry README.txt was modified (digest mismatch)\n"
    m = mount_factory(opts={"truststore": trust})
    dst = m.path("verify-in", name)
    assert write_file(dst, data) == 0
    if valid:
        assert Path(dst).read_bytes() == data
    else:
        with pytest.raises(OSError) as e:
            open(dst, "rb")
        assert e.value.errno == errno.EBADMSG


def _forged():
    """The issue-12 fixtures: (file name, expected reason) for each class
    and base zip, from tests/data/jar/make_forged.py."""
    spec = importlib.util.spec_from_file_location("make_forged",
                                                  FIXTURES / "make_forged.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, [(f"{cls}.{tag}.zip", why) for cls, (_, why) in mod.FIXTURES.items()
                 for tag in mod.BASES]


FORGED = _forged()[1]


def test_forged_fixtures_match_their_script(tmp_path):
    mod, forged = _forged()
    mod.main(tmp_path)
    for name, _ in forged:
        assert (tmp_path / name).read_bytes() == (FIXTURES / name).read_bytes(), name
    readme = (FIXTURES / "README").read_text()
    for cls in mod.FIXTURES:
        assert f"{cls}." in readme, cls


@pytest.mark.parametrize("name,why", FORGED)
def test_forged_fixtures_refused_by_verify_zip(name, why):
    """Each class of issue 12, built on a jarsigner- and an hsmfs-signed zip."""
    p = run([TOOL, "verify-zip", "--truststore", str(FIXTURES / "fixture-signer.pem"),
             str(FIXTURES / name)], check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stdout.startswith("invalid: ") and why in p.stdout, p.stdout


def test_forged_fixtures_refused_on_the_mount(hsm, mount_factory):
    """The same fixtures through /verify-in (EBADMSG, reason in the
    attribute) and, where the zip's structure is at fault, through
    /sign-out (EINVAL: the signer reads its input with the same reader)."""
    m = mount_factory(opts={"truststore": str(FIXTURES / "fixture-signer.pem")})
    for name, why in FORGED:
        data = (FIXTURES / name).read_bytes()
        dst = m.path("verify-in", name)
        assert write_file(dst, data) == 0
        with pytest.raises(OSError) as e:
            open(dst, "rb")
        assert e.value.errno == errno.EBADMSG, name
        v = xattr(dst, "user.hsmfs.verify")
        assert v.startswith("invalid: ") and why in v, (name, v)
        if name.startswith("c3-"):
            continue        # well-formed zips: signing them is fine
        dst = m.path("sign-out", name)
        assert write_file(dst, data) == errno.EINVAL, name
        v = xattr(dst, "user.hsmfs.sign")
        assert v.startswith("invalid: ") and why in v, (name, v)


def test_sign_out_refuses_what_readers_would_read_differently(zm, tmp_path):
    """A stored entry holding an end-record signature within the last
    64 KiB: libzip would consider it as the end of the zip."""
    fake = b"PK\x05\x06" + bytes(18)
    src = make_zip(tmp_path / "a.zip", extra=[("data/blob.bin", fake)])
    dst = zm.path("sign-out", "a.zip")
    assert write_file(dst, src.read_bytes()) == errno.EINVAL
    assert "second end-of-central-directory signature" in xattr(dst, "user.hsmfs.sign")


def test_sign_out_signs_other_meta_inf_files(zm, pki, tmp_path):
    """Files under META-INF/ other than the signature's own are covered by
    the manifest (verify-in refuses them otherwise); jarsigner agrees."""
    src = make_zip(tmp_path / "a.zip", extra=[("META-INF/SIG-notes.txt", b"n\n"),
                                              ("META-INF/app.properties", b"a=1\n")])
    dst = zm.path("sign-out", "a.zip")
    assert write_file(dst, src.read_bytes()) == 0
    signed = tmp_path / "signed.zip"
    signed.write_bytes(Path(dst).read_bytes())
    with zipfile.ZipFile(signed) as z:
        mf = z.read("META-INF/MANIFEST.MF").replace(b"\r\n ", b"")
    assert b"Name: META-INF/SIG-notes.txt\r\n" in mf
    assert b"Name: META-INF/app.properties\r\n" in mf
    p = run([TOOL, "verify-zip", "-o", f"config={zm.config}", str(signed)], check=False)
    assert p.returncode == 0 and p.stdout.startswith("valid"), p.stdout
    p = jarsigner_verify(signed, pki["trust"])
    assert p.returncode == 0, p.stdout + p.stderr


def test_verify_in_code_signing_eku_and_chain_expiry(zm, pki, tmp_path):
    """An extendedKeyUsage with codeSigning is accepted; the cached verdict
    of a signer outliving its CA expires with the CA."""
    for name in ("codesign", "longlived"):
        data = jarsign(pki[name], make_zip(tmp_path / f"{name}.zip")).read_bytes()
        dst = zm.path("verify-in", f"{name}.zip")
        assert write_file(dst, data) == 0
        assert Path(dst).read_bytes() == data
        v = xattr(dst, "user.hsmfs.verify")
        assert v.startswith("valid signer=") and f"CN={name} signer" in v, v
    ca_end = run(["openssl", "x509", "-noout", "-enddate", "-in",
                  zm.hsm.ca_cert]).stdout.strip().split("=", 1)[1]
    leaf_end = run(["openssl", "x509", "-noout", "-enddate", "-in",
                    str(pki["dir"] / "longlived.pem")]).stdout.strip().split("=", 1)[1]
    ca_t, leaf_t = ssl.cert_time_to_seconds(ca_end), ssl.cert_time_to_seconds(leaf_end)
    assert leaf_t > ca_t
    lines = [f.read_text() for f in (Path(zm.store) / "verify-in" / ".verdict").iterdir()]
    mine = [l for l in lines if "CN=longlived signer" in l]
    assert len(mine) == 1 and int(mine[0].split()[0]) == ca_t, lines


def test_kill9_keeps_acknowledged_zips(hsm, mount_factory, tmp_path):
    """contract §8: what close() acknowledged survives kill -9 and verifies."""
    m = mount_factory(opts={"truststore": hsm.ca_cert})
    data = make_zip(tmp_path / "a.zip").read_bytes()
    assert write_file(m.path("sign-out", "a.zip"), data) == 0
    signed = Path(m.path("sign-out", "a.zip")).read_bytes()
    assert write_file(m.path("verify-in", "a.zip"), signed) == 0
    # An open writer that never closes: its bytes are not acknowledged.
    f = open(m.path("sign-out", "partial.zip"), "wb")
    f.write(data[:1000])
    f.flush()
    m.kill9()
    try:
        f.close()                   # the daemon is gone: ENOTCONN
    except OSError:
        pass
    m.start()
    assert Path(m.path("sign-out", "a.zip")).read_bytes() == signed
    assert Path(m.path("verify-in", "a.zip")).read_bytes() == signed
    assert sorted(os.listdir(m.path("sign-out"))) == ["a.zip"]
    leftovers = [p for p in Path(m.store).rglob(".tmp.*")]
    assert leftovers == []


# ---------------------------------------------------------------- memory

def vm_hwm_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_large_zip_memory(hsm, mount_factory, tmp_path, monkeypatch):
    """300 MB of entries signed and verified; the daemon's peak RSS (VmHWM,
    which includes the SoftHSM module and OpenSSL) stays far under 64 MiB.
    Under AddressSanitizer the freed-memory quarantine (256 MiB by default)
    would count too, so it is turned off for this daemon."""
    from conftest import HSMFS
    if "asan" in run(["ldd", HSMFS]).stdout:
        monkeypatch.setenv("ASAN_OPTIONS", "quarantine_size_mb=0:"
                           "thread_local_quarantine_size_kb=0")
    zm = mount_factory(opts={"truststore": hsm.ca_cert})
    src = tmp_path / "big.zip"
    block = os.urandom(1 << 20)
    with zipfile.ZipFile(src, "w") as z:
        for i in range(3):
            with z.open(f"data/part{i}.bin", "w", force_zip64=True) as f:
                for k in range(100):
                    f.write(block[k:] + block[:k])
        z.writestr("text.txt", "hello\n" * 100000, zipfile.ZIP_DEFLATED)
    run(["cp", str(src), zm.path("sign-out", "big.zip")])
    run(["cp", zm.path("sign-out", "big.zip"), zm.path("verify-in", "big.zip")])
    h = subprocess.run(["sha256sum", zm.path("verify-in", "big.zip")],
                       capture_output=True, text=True, check=True)
    assert h.returncode == 0
    hwm = vm_hwm_kib(zm.proc.pid)
    print(f"daemon VmHWM after signing and verifying a {src.stat().st_size >> 20} MiB "
          f"zip: {hwm} KiB")
    assert hwm < 64 * 1024, hwm
