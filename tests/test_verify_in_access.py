"""/verify-in (issue 12, classes 5 and 6): every open that can read
verifies first, a writer reads back only what it wrote or what was
verified; the verdict cache is keyed by content, trust configuration and
verifier format, and a valid verdict expires with the earliest notAfter of
the signer's chain. Real mounts, jarsigner-signed zips."""
import calendar
import errno
import hashlib
import os
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from helpers import run
from test_zip import SIGNER_KEY, jarsign, make_zip, pki, status, write_file, zm  # noqa: F401

VERIFY_FORMAT = b"hsmfs jar_verify format 3"     # fs/verifyin.c


@pytest.fixture
def signed(pki, tmp_path):  # noqa: F811
    return jarsign(pki["good"], make_zip(tmp_path / "good.zip")).read_bytes()


def open_errno(path, flags):
    try:
        fd = os.open(path, flags)
    except OSError as e:
        return e.errno
    os.close(fd)
    return 0


def read_all(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    out = b""
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return out
        out += b


# ------------------------------------------------ class 5: open modes

def test_rdwr_on_invalid_stored_zip_is_refused(zm, signed):  # noqa: F811
    d = zm.path("verify-in")
    bad = signed + b"trailing garbage"
    assert write_file(os.path.join(d, "bad.zip"), bad) == 0
    p = os.path.join(d, "bad.zip")
    for flags in (os.O_RDONLY, os.O_RDWR, os.O_RDWR | os.O_APPEND):
        assert open_errno(p, flags) == errno.EBADMSG, flags
    # Nothing of it came back through a writer either.
    assert (Path(zm.store) / "verify-in" / "bad.zip").read_bytes() == bad
    assert "verify-in/bad.zip: invalid: " in zm.log()


def test_writer_reads_back_only_its_own_bytes(zm, signed):  # noqa: F811
    d = zm.path("verify-in")
    p = os.path.join(d, "bad.zip")
    bad = signed + b"trailing garbage"
    assert write_file(p, bad) == 0
    # O_WRONLY: allowed, unverified, and the kernel refuses reads.
    fd = os.open(p, os.O_WRONLY)
    try:
        with pytest.raises(OSError) as e:
            os.read(fd, 10)
        assert e.value.errno == errno.EBADF
    finally:
        os.close(fd)
    assert (Path(zm.store) / "verify-in" / "bad.zip").read_bytes() == bad
    # O_RDWR|O_TRUNC starts empty: reads give this handle's bytes only.
    fd = os.open(p, os.O_RDWR | os.O_TRUNC)
    try:
        assert read_all(fd) == b""
        os.pwrite(fd, b"mine", 10)
        assert read_all(fd) == b"\0" * 10 + b"mine"
    finally:
        os.close(fd)
    assert Path(p).stat().st_size == 14
    assert open_errno(p, os.O_RDONLY) == errno.EBADMSG    # not a zip
    # A new name opened O_RDWR|O_CREAT: the same.
    q = os.path.join(d, "new.zip")
    fd = os.open(q, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert read_all(fd) == b""
        os.write(fd, b"abc")
        assert read_all(fd) == b"abc"
    finally:
        os.close(fd)


def test_rdwr_cannot_read_another_writers_bytes(zm, signed):  # noqa: F811
    """A name only in flight (another handle writing it, not yet closed):
    O_RDWR starts empty, never with the other handle's bytes."""
    p = zm.path("verify-in", "flight.zip")
    w = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(w, signed + b"junk")
        assert os.stat(p).st_size == len(signed) + 4
        fd = os.open(p, os.O_RDWR)
        try:
            assert read_all(fd) == b""
        finally:
            os.close(fd)
    finally:
        os.close(w)


def test_rdwr_on_valid_zip_is_verified_then_reads_it(zm, signed):  # noqa: F811
    p = zm.path("verify-in", "good.zip")
    assert write_file(p, signed) == 0
    s0 = status(zm)
    fd = os.open(p, os.O_RDWR)
    try:
        assert read_all(fd) == signed
        s1 = status(zm)
        assert int(s1["verify-in.valid"]) == int(s0["verify-in.valid"]) + 1
        # Its own change reads back, over the verified bytes.
        os.pwrite(fd, b"XX", 0)
        assert read_all(fd) == b"XX" + signed[2:]
    finally:
        os.close(fd)
    # Stored as written; now it is invalid for everyone.
    assert open_errno(p, os.O_RDONLY) == errno.EBADMSG
    assert open_errno(p, os.O_RDWR) == errno.EBADMSG


# ------------------------------------------------ class 6: verdict cache

def trust_fp(hsm, truststore):
    """fs/verifyin.c trust_fingerprint(): SHA-256 over the DER of every
    ConfigZipSigner certificate, then "truststore" and the file's bytes."""
    h = hashlib.sha256()
    h.update(ssl.PEM_cert_to_DER_cert(Path(hsm.keys[SIGNER_KEY].cert_pem).read_text()))
    if truststore:
        h.update(b"truststore" + Path(truststore).read_bytes())
    return h.digest()


def cache_key(data, fp, fmt=VERIFY_FORMAT):
    return hashlib.sha256(hashlib.sha256(data).digest() + fp + fmt).hexdigest()


def test_verdict_of_old_key_format_not_trusted(hsm, zm, signed):  # noqa: F811
    vdir = Path(zm.store) / "verify-in" / ".verdict"
    fp = trust_fp(hsm, hsm.ca_cert)
    good = zm.path("verify-in", "good.zip")
    assert write_file(good, signed) == 0
    assert Path(good).read_bytes() == signed
    # The key is what this test computes (so the old key below is exact).
    entry = (vdir / cache_key(signed, fp)).read_text()
    assert entry.split(" ", 1)[1].startswith("valid signer=")
    # A "valid" verdict for forged bytes under the pre-format key, as the
    # old code would have cached it, with a far expiry.
    bad = signed + b"trailing garbage"
    old = cache_key(bad, fp, fmt=b"")
    (vdir / old).write_text(f"{int(time.time()) + 86400 * 365} valid signer=CN=forged")
    p = zm.path("verify-in", "bad.zip")
    assert write_file(p, bad) == 0
    assert open_errno(p, os.O_RDONLY) == errno.EBADMSG
    assert os.getxattr(p, "user.hsmfs.verify").decode().startswith("invalid: ")
    # A "valid" entry without an expiry is not trusted either.
    new = cache_key(bad, fp)
    (vdir / new).write_text("0 valid signer=CN=forged")
    assert open_errno(p, os.O_RDONLY) == errno.EBADMSG
    assert (vdir / new).read_text().startswith("0 invalid: ")


def test_truststore_change_between_mounts_reverifies(hsm, mount_factory, signed,
                                                     tmp_path):
    ts = tmp_path / "trust.pem"
    ts.write_bytes(Path(hsm.ca_cert).read_bytes())
    m = mount_factory(opts={"truststore": str(ts)})
    p = m.path("verify-in", "a.zip")
    assert write_file(p, signed) == 0
    assert Path(p).read_bytes() == signed
    assert Path(p).read_bytes() == signed
    assert int(status(m)["verify-in.cached"]) >= 1
    m.unmount()
    # Another CA at the same path: the jarsigner signer no longer chains.
    other_key, other = tmp_path / "o.key", tmp_path / "o.pem"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
         str(other_key), "-out", str(other), "-days", "30", "-subj", "/CN=other CA",
         "-addext", "basicConstraints=critical,CA:TRUE"])
    ts.write_bytes(other.read_bytes())
    m.start()
    assert open_errno(p, os.O_RDONLY) == errno.EBADMSG
    st = status(m)
    assert st["verify-in.cached"] == "0" and st["verify-in.invalid"] == "1"
    assert "not trusted" in os.getxattr(p, "user.hsmfs.verify").decode()
    m.unmount()
    # And back: valid again (the earlier verdict, still cached).
    ts.write_bytes(Path(hsm.ca_cert).read_bytes())
    m.start()
    assert Path(p).read_bytes() == signed
    assert status(m)["verify-in.cached"] == "1"


def test_signer_certificate_change_between_mounts_reverifies(hsm, mount_factory,
                                                            tmp_path):
    """No truststore: only the configured ConfigZipSigner certificate
    vouches. Configured to another key's certificate, the cached "valid"
    of the old one is not reused."""
    m = mount_factory()
    assert write_file(m.path("sign-out", "a.zip"),
                      make_zip(tmp_path / "a.zip").read_bytes()) == 0
    signed = Path(m.path("sign-out", "a.zip")).read_bytes()
    p = m.path("verify-in", "a.zip")
    assert write_file(p, signed) == 0
    assert Path(p).read_bytes() == signed
    assert Path(p).read_bytes() == signed
    assert status(m)["verify-in.cached"] == "1"
    m.unmount()
    m.config = hsm.config(tmp_path / "other.xml", omit=("ConfigZipSigner",),
                          descriptors=[{"name": "ConfigZipSigner", "version": 1,
                                        "algorithm": "SHA-256",
                                        "key": "objectHistorySignerCertificateV1"}])
    m.start()
    assert open_errno(p, os.O_RDONLY) == errno.EBADMSG
    st = status(m)
    assert st["verify-in.cached"] == "0" and st["verify-in.invalid"] == "1"


def not_after(pem):
    out = run(["openssl", "x509", "-in", str(pem), "-noout", "-enddate"]).stdout
    t = out.strip().split("=", 1)[1]
    return calendar.timegm(time.strptime(t, "%b %d %H:%M:%S %Y %Z"))


def test_verdict_expires_with_the_intermediate(hsm, mount_factory, tmp_path):
    """Root (truststore) -> intermediate valid 20 days -> leaf valid 300
    days: the cached valid verdict ends with the intermediate."""
    d = tmp_path
    ik, icsr, ic = d / "int.key", d / "int.csr", d / "int.pem"
    run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout",
         str(ik), "-out", str(icsr), "-subj", "/CN=short intermediate/O=hsmfs tests"])
    (d / "int.ext").write_text("basicConstraints=critical,CA:TRUE\n"
                               "keyUsage=critical,keyCertSign,cRLSign\n"
                               "subjectKeyIdentifier=hash\n"
                               "authorityKeyIdentifier=keyid\n")
    run(["openssl", "x509", "-req", "-in", str(icsr), "-CA", hsm.ca_cert, "-CAkey",
         hsm.ca_key, "-set_serial", "4242", "-days", "20", "-extfile",
         str(d / "int.ext"), "-out", str(ic), "-sha256"])
    lk, lcsr, lc = d / "leaf.key", d / "leaf.csr", d / "leaf.pem"
    run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout",
         str(lk), "-out", str(lcsr), "-subj", "/CN=long leaf/O=hsmfs tests"])
    (d / "leaf.ext").write_text("basicConstraints=critical,CA:FALSE\n"
                                "keyUsage=critical,digitalSignature\n")
    run(["openssl", "x509", "-req", "-in", str(lcsr), "-CA", str(ic), "-CAkey",
         str(ik), "-set_serial", "4343", "-days", "300", "-extfile",
         str(d / "leaf.ext"), "-out", str(lc), "-sha256"])
    (d / "chain.pem").write_bytes(ic.read_bytes() + Path(hsm.ca_cert).read_bytes())
    p12 = d / "leaf.p12"
    run(["openssl", "pkcs12", "-export", "-inkey", str(lk), "-in", str(lc),
         "-certfile", str(d / "chain.pem"), "-name", "signer", "-passout",
         "pass:changeit", "-out", str(p12)])
    assert not_after(ic) < not_after(lc)
    data = jarsign(str(p12), make_zip(d / "z.zip")).read_bytes()
    m = mount_factory(opts={"truststore": hsm.ca_cert})
    p = m.path("verify-in", "z.zip")
    assert write_file(p, data) == 0
    assert Path(p).read_bytes() == data
    entry = (Path(m.store) / "verify-in" / ".verdict" /
             cache_key(data, trust_fp(hsm, hsm.ca_cert))).read_text()
    until, text = entry.split(" ", 1)
    assert text == "valid signer=O=hsmfs tests,CN=long leaf"
    assert int(until) == not_after(ic)
