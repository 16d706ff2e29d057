"""The hsm layer through tests/hsmprobe, against a private SoftHSM token
(and a PKCS#12 file for the software backend), checked by external
verifiers: openssl dgst/pkeyutl/cms and pkcs11-tool.

Fixtures are module-local (prefix p11_) with their own SOFTHSM2_CONF,
passed explicitly to every child process."""
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from helpers import MODULE, run

SRC = Path(os.environ.get("HSMFS_SRC", Path(__file__).resolve().parent.parent))
BUILD = Path(os.environ.get("HSMFS_BUILD", SRC / "build"))
PROBE = os.environ.get("HSMFS_PROBE", str(BUILD / "tests" / "hsmprobe"))
TOOL = os.environ.get("HSMFS_TOOL", str(BUILD / "tool" / "hsmfs-tool"))

PIN = "246810"
SO_PIN = "13579111"
LABEL = "p11-probe-token"
ALIAS = "probeKey"
FALLBACK_WARNING = "refuses native OAEP"


class P11Env:
    def __init__(self, root: Path):
        self.root = root
        tokdir = root / "tokens"
        tokdir.mkdir()
        self.conf = root / "softhsm2.conf"
        self.conf.write_text(f"directories.tokendir = {tokdir}\n"
                             "objectstore.backend = file\nlog.level = ERROR\n")
        self.env = dict(os.environ, SOFTHSM2_CONF=str(self.conf))
        out = self.run(["softhsm2-util", "--init-token", "--free", "--label",
                        LABEL, "--so-pin", SO_PIN, "--pin", PIN]).stdout
        self.slot = int(out.strip().split()[-1])
        self.ca_key = str(root / "ca.key")
        self.ca_cert = str(root / "ca.pem")
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
             "-keyout", self.ca_key, "-out", self.ca_cert, "-days", "30",
             "-subj", "/CN=p11 test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign"])

    def run(self, cmd, check=True, env_extra=None, **kw):
        env = dict(self.env, **(env_extra or {}))
        return run(cmd, check=check, env=env, **kw)

    def pkcs11(self, *args, login=True, pin=PIN, check=True):
        cmd = ["pkcs11-tool", "--module", MODULE, "--token-label", LABEL]
        if login:
            cmd += ["--login", "--pin", pin]
        return self.run(cmd + list(args), check=check)

    def issue(self, pub_pem, subject, out):
        """CA-issued certificate for a bare public key."""
        d = Path(out).parent
        run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes",
             "-keyout", str(d / "junk.key"), "-out", str(d / "junk.csr"),
             "-subj", subject])
        run(["openssl", "x509", "-req", "-in", str(d / "junk.csr"),
             "-CA", self.ca_cert, "-CAkey", self.ca_key,
             "-set_serial", str(secrets.randbits(62)), "-days", "30",
             "-force_pubkey", pub_pem, "-out", out, "-sha256"])
        return out

    def token_key(self, alias, bits=2048, with_cert=True, key_id=None):
        """pkcs11-tool key pair + CA-issued cert written under the label."""
        d = self.root / alias
        d.mkdir()
        key_id = key_id or secrets.token_hex(8)
        self.pkcs11("--keypairgen", "--key-type", f"rsa:{bits}", "--label", alias,
                    "--id", key_id, "--sensitive", "--usage-sign",
                    "--usage-decrypt")
        self.pkcs11("--read-object", "--type", "pubkey", "--label", alias,
                    "-o", str(d / "pub.der"), login=False)
        pub = str(d / "pub.pem")
        run(["openssl", "pkey", "-pubin", "-inform", "DER", "-in",
             str(d / "pub.der"), "-out", pub])
        cert = str(d / "cert.pem")
        self.issue(pub, f"/CN={alias}", cert)
        if with_cert:
            run(["openssl", "x509", "-in", cert, "-outform", "DER",
                 "-out", str(d / "cert.der")])
            self.pkcs11("--write-object", str(d / "cert.der"), "--type", "cert",
                        "--label", alias, "--id", key_id)
        return {"alias": alias, "pub": pub, "cert": cert, "id": key_id}

    def probe(self, key_args, *args, pin=PIN, check=True):
        env = {"HSMFS_PIN": pin} if pin is not None else {}
        if pin is None:
            env_run = {k: v for k, v in self.env.items() if k != "HSMFS_PIN"}
            return run([PROBE, *key_args, *args], check=check, env=env_run)
        return self.run([PROBE, *key_args, *args], check=check, env_extra=env)


@pytest.fixture(scope="module")
def p11_env(tmp_path_factory):
    return P11Env(tmp_path_factory.mktemp("p11"))


@pytest.fixture(scope="module")
def p11_key(p11_env):
    return p11_env.token_key(ALIAS)


@pytest.fixture(scope="module")
def p11_p12(p11_env):
    """A software key + CA cert in a PKCS#12 file (password = PIN)."""
    d = p11_env.root / "p12"
    d.mkdir()
    run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
         "rsa_keygen_bits:2048", "-out", str(d / "key.pem")])
    run(["openssl", "pkey", "-in", str(d / "key.pem"), "-pubout",
         "-out", str(d / "pub.pem")])
    cert = p11_env.issue(str(d / "pub.pem"), "/CN=p12key", str(d / "cert.pem"))
    p12 = str(d / "key.p12")
    run(["openssl", "pkcs12", "-export", "-inkey", str(d / "key.pem"), "-in",
         cert, "-name", "p12key", "-passout", f"pass:{PIN}", "-out", p12])
    return {"args": ["--p12", p12, "--alias", "p12key"], "pub": str(d / "pub.pem"),
            "cert": cert}


@pytest.fixture(params=["pkcs11", "p12"])
def p11_any(request, p11_env, p11_key, p11_p12):
    """The same tests for a token key and a PKCS#12 key."""
    if request.param == "pkcs11":
        return {"args": ["--module", MODULE, "--slot", str(p11_env.slot),
                         "--alias", p11_key["alias"]],
                "pub": p11_key["pub"], "cert": p11_key["cert"], "kind": "pkcs11"}
    return dict(p11_p12, kind="p12")


def tok_args(p11_env, alias=ALIAS):
    return ["--module", MODULE, "--slot", str(p11_env.slot), "--alias", alias]


# ---- key properties ----

def test_token_private_key_sensitive_not_extractable(p11_env, p11_key):
    out = p11_env.pkcs11("--list-objects", "--type", "privkey", "--label",
                         ALIAS).stdout
    assert "Private Key Object" in out
    assert "sensitive" in out and "never extractable" in out, out


# ---- operations, both backends ----

@pytest.mark.parametrize("md", ["sha256", "sha384", "sha512"])
def test_sign_verifies_with_openssl(p11_env, p11_any, tmp_path, md):
    data = tmp_path / "in.bin"
    data.write_bytes(os.urandom(5000))
    sig = tmp_path / "sig.bin"
    p11_env.probe(p11_any["args"], "sign", "--md", md, str(data), str(sig))
    r = run(["openssl", "dgst", f"-{md}", "-verify", p11_any["pub"],
             "-signature", str(sig), str(data)])
    assert "Verified OK" in r.stdout
    # A signature over other data must not verify (the check can fail).
    data.write_bytes(data.read_bytes() + b"x")
    r = run(["openssl", "dgst", f"-{md}", "-verify", p11_any["pub"],
             "-signature", str(sig), str(data)], check=False)
    assert r.returncode != 0


def test_sign_digest_verifies_with_openssl(p11_env, p11_any, tmp_path):
    data = tmp_path / "in.bin"
    data.write_bytes(b"digest me" * 100)
    sig = tmp_path / "sig.bin"
    p11_env.probe(p11_any["args"], "sign-digest", "--md", "sha384", str(data),
                  str(sig))
    r = run(["openssl", "dgst", "-sha384", "-verify", p11_any["pub"],
             "-signature", str(sig), str(data)])
    assert "Verified OK" in r.stdout


def oaep_wrap(pub, plain, out, md="sha384"):
    run(["openssl", "pkeyutl", "-encrypt", "-pubin", "-inkey", pub,
         "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", f"rsa_oaep_md:{md}",
         "-pkeyopt", f"rsa_mgf1_md:{md}", "-in", str(plain), "-out", str(out)])


@pytest.mark.parametrize("md", ["sha1", "sha256", "sha384", "sha512"])
def test_oaep_unwrap_matches_openssl_wrap(p11_env, p11_any, tmp_path, md):
    plain = tmp_path / "key.bin"
    plain.write_bytes(os.urandom(32))
    ct = tmp_path / "ct.bin"
    oaep_wrap(p11_any["pub"], plain, ct, md)
    out = tmp_path / "out.bin"
    r = p11_env.probe(p11_any["args"], "oaep-decrypt", "--md", md, str(ct),
                      str(out))
    assert out.read_bytes() == plain.read_bytes()
    if p11_any["kind"] == "pkcs11" and md != "sha1":
        # SoftHSM 2.6.1 refuses native OAEP with SHA-2: the raw fallback
        # ran, and said so once.
        assert r.stderr.count(FALLBACK_WARNING) == 1, r.stderr


def test_oaep_tampered_ciphertext_fails(p11_env, p11_any, tmp_path):
    plain = tmp_path / "key.bin"
    plain.write_bytes(os.urandom(32))
    ct = tmp_path / "ct.bin"
    oaep_wrap(p11_any["pub"], plain, ct)
    b = bytearray(ct.read_bytes())
    b[len(b) // 2] ^= 0x01
    ct.write_bytes(bytes(b))
    out = tmp_path / "out.bin"
    r = p11_env.probe(p11_any["args"], "oaep-decrypt", "--md", "sha384", str(ct),
                      str(out), check=False)
    assert r.returncode == 5, r.stderr      # HSMFS_ERR_BADMSG
    assert "OAEP decryption failed" in r.stderr
    assert not out.exists()
    # Wrong length is refused as bad input too.
    ct.write_bytes(bytes(b[:-1]))
    r = p11_env.probe(p11_any["args"], "oaep-decrypt", "--md", "sha384", str(ct),
                      str(out), check=False)
    assert r.returncode == 5, r.stderr


def test_cms_signed_through_bridge_verifies(p11_env, p11_any, tmp_path):
    data = tmp_path / "content.bin"
    data.write_bytes(os.urandom(3000))
    sig = tmp_path / "sig.der"
    p11_env.probe(p11_any["args"], "cms-sign", str(data), str(sig))
    r = run(["openssl", "cms", "-verify", "-inform", "DER", "-in", str(sig),
             "-binary", "-content", str(data), "-CAfile", p11_env.ca_cert,
             "-purpose", "any", "-out", os.devnull])
    assert "Verification successful" in r.stderr
    data.write_bytes(data.read_bytes()[:-1])
    r = run(["openssl", "cms", "-verify", "-inform", "DER", "-in", str(sig),
             "-binary", "-content", str(data), "-CAfile", p11_env.ca_cert,
             "-purpose", "any", "-out", os.devnull], check=False)
    assert r.returncode != 0


def test_stress_two_threads(p11_env, p11_any):
    r = p11_env.probe(p11_any["args"], "stress", "--threads", "2", "--ops", "500",
                      "--md", "sha384")
    assert "failures=0" in r.stdout and "ops=2000" in r.stdout, r.stdout + r.stderr


# ---- PKCS#11 specifics ----

def test_no_raw_rsa_refuses_fallback(p11_env, p11_key, tmp_path):
    plain = tmp_path / "key.bin"
    plain.write_bytes(os.urandom(32))
    ct = tmp_path / "ct.bin"
    oaep_wrap(p11_key["pub"], plain, ct)
    r = p11_env.probe(tok_args(p11_env) + ["--no-raw-rsa"], "oaep-decrypt",
                      "--md", "sha384", str(ct), str(tmp_path / "o"), check=False)
    assert r.returncode == 1
    assert "raw RSA fallback is disabled" in r.stderr
    assert "CKR_ARGUMENTS_BAD" in r.stderr


def test_native_oaep_sha1_needs_no_fallback(p11_env, p11_key, tmp_path):
    plain = tmp_path / "key.bin"
    plain.write_bytes(os.urandom(32))
    ct = tmp_path / "ct.bin"
    oaep_wrap(p11_key["pub"], plain, ct, "sha1")
    out = tmp_path / "o"
    r = p11_env.probe(tok_args(p11_env) + ["--no-raw-rsa"], "oaep-decrypt",
                      "--md", "sha1", str(ct), str(out))
    assert out.read_bytes() == plain.read_bytes()
    assert FALLBACK_WARNING not in r.stderr


def test_slot_by_id_label_and_default(p11_env, p11_key):
    for sel in (["--slot", str(p11_env.slot)], ["--token-label", LABEL], []):
        r = p11_env.probe(["--module", MODULE, *sel, "--alias", ALIAS], "info")
        assert f"where={LABEL}" in r.stdout and "cert=yes" in r.stdout


def test_absent_slot_and_label_are_named(p11_env, p11_key):
    r = p11_env.probe(["--module", MODULE, "--slot", "4242", "--alias", ALIAS],
                      "info", check=False)
    assert r.returncode == 2
    assert "slot 4242 not found" in r.stderr
    assert str(p11_env.slot) in r.stderr and LABEL in r.stderr
    r = p11_env.probe(["--module", MODULE, "--token-label", "nope", "--alias",
                       ALIAS], "info", check=False)
    assert r.returncode == 2
    assert 'no token labelled "nope"' in r.stderr and LABEL in r.stderr


@pytest.mark.parametrize("name", ["libsofthsm2", "libsofthsm2.so",
                                  "/usr/lib/softhsm/libsofthsm2"])
def test_module_name_forms(p11_env, p11_key, name):
    r = p11_env.probe(["--module", name, "--alias", ALIAS], "info")
    assert f"where={LABEL}" in r.stdout


def test_missing_module_message(p11_env):
    r = p11_env.probe(["--module", "libnosuchpkcs11", "--alias", ALIAS], "info",
                      check=False)
    assert r.returncode == 2
    assert 'cannot load PKCS#11 module "libnosuchpkcs11"' in r.stderr
    assert "/usr/lib/softhsm/libnosuchpkcs11.so" in r.stderr
    r = p11_env.probe(["--module", "/nonexistent/mod.so", "--alias", ALIAS],
                      "info", check=False)
    assert r.returncode == 2 and "/nonexistent/mod.so" in r.stderr


def test_missing_alias_message(p11_env, p11_key):
    r = p11_env.probe(tok_args(p11_env, "noSuchAlias"), "info", check=False)
    assert r.returncode == 2
    assert 'no private key with label (or ID) "noSuchAlias"' in r.stderr
    assert LABEL in r.stderr


def test_alias_falls_back_to_id(p11_env):
    """An alias that is not a label but the key's CKA_ID (as bytes) finds
    the key, and the certificate by that same ID."""
    k = p11_env.token_key("labelNotAlias", key_id=b"idAlias".hex())
    r = p11_env.probe(tok_args(p11_env, "idAlias"), "info")
    assert "cert=yes" in r.stdout
    data = p11_env.root / "labelNotAlias" / "m"
    data.write_bytes(b"by id")
    p11_env.probe(tok_args(p11_env, "idAlias"), "sign", str(data),
                  str(data) + ".sig")
    run(["openssl", "dgst", "-sha256", "-verify", k["pub"], "-signature",
         str(data) + ".sig", str(data)])


def test_wrong_pin_fails_once_without_lockout(p11_env, p11_key):
    for _ in range(2):
        r = p11_env.probe(tok_args(p11_env), "info", pin="000000", check=False)
        assert r.returncode == 3, r.stderr
        assert "PIN incorrect" in r.stderr and LABEL in r.stderr
    # The token is not locked: a correct login still works.
    r = p11_env.pkcs11("--list-objects", "--type", "privkey", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Private Key Object" in r.stdout
    r = p11_env.probe(tok_args(p11_env), "info")
    assert "cert=yes" in r.stdout


def cert_objects(p11_env, label):
    out = p11_env.pkcs11("--list-objects", "--type", "cert").stdout
    blocks = out.split("Certificate Object")[1:]
    return [b for b in blocks if f"label:      {label}\n" in b]


def test_missing_certificate(p11_env):
    k = p11_env.token_key("noCertKey", with_cert=False)
    r = p11_env.probe(tok_args(p11_env, "noCertKey"), "info", check=False)
    assert r.returncode == 2
    assert "no certificate with label \"noCertKey\"" in r.stderr
    # Without require_cert the public key object serves.
    r = p11_env.probe(tok_args(p11_env, "noCertKey") + ["--no-cert"], "info")
    assert "cert=no" in r.stdout and "bits=2048" in r.stdout
    # Storing a certificate for another key is refused...
    r = p11_env.probe(tok_args(p11_env, "noCertKey") + ["--no-cert"],
                      "store-cert", p11_env.root / ALIAS / "cert.pem",
                      check=False)
    assert r.returncode != 0 and "does not match" in r.stderr
    # ...its own is stored and then found under the label.
    p11_env.probe(tok_args(p11_env, "noCertKey") + ["--no-cert"], "store-cert",
                  k["cert"])
    r = p11_env.probe(tok_args(p11_env, "noCertKey"), "info")
    assert "cert=yes" in r.stdout
    # Storing again replaces the older certificate under the label.
    p11_env.probe(tok_args(p11_env, "noCertKey"), "store-cert", k["cert"])
    certs = cert_objects(p11_env, "noCertKey")
    assert len(certs) == 1, certs
    assert f"ID:         {k['id']}" in certs[0]


def test_mismatched_certificate_refused_at_open(p11_env, p11_key):
    k = p11_env.token_key("mismatchKey", with_cert=False)
    d = p11_env.root / "mismatchKey"
    run(["openssl", "x509", "-in", p11_key["cert"], "-outform", "DER",
         "-out", str(d / "other.der")])
    p11_env.pkcs11("--write-object", str(d / "other.der"), "--type", "cert",
                   "--label", "mismatchKey", "--id", k["id"])
    r = p11_env.probe(tok_args(p11_env, "mismatchKey"), "info", check=False)
    assert r.returncode == 2
    assert "does not match the private key" in r.stderr


def test_keygen_on_token(p11_env, tmp_path):
    r = p11_env.probe(tok_args(p11_env, "genKey") + ["--keygen", "3072"], "info")
    assert "bits=3072" in r.stdout and "cert=no" in r.stdout
    out = p11_env.pkcs11("--list-objects", "--type", "privkey", "--label",
                         "genKey").stdout
    assert "sensitive" in out and "never extractable" in out
    assert "decrypt, sign, unwrap" in out
    # Refuses a second key under the same label.
    r = p11_env.probe(tok_args(p11_env, "genKey") + ["--keygen", "2048"], "info",
                      check=False)
    assert r.returncode == 2 and "already exists" in r.stderr
    # The generated key signs (public key from the token's public object).
    p11_env.pkcs11("--read-object", "--type", "pubkey", "--label", "genKey",
                   "-o", str(tmp_path / "pub.der"), login=False)
    run(["openssl", "pkey", "-pubin", "-inform", "DER", "-in",
         str(tmp_path / "pub.der"), "-out", str(tmp_path / "pub.pem")])
    (tmp_path / "m").write_bytes(b"hello")
    p11_env.probe(tok_args(p11_env, "genKey") + ["--no-cert"], "sign",
                  str(tmp_path / "m"), str(tmp_path / "s"))
    run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"),
         "-signature", str(tmp_path / "s"), str(tmp_path / "m")])


def test_recovery_after_sessions_vanish(p11_env, p11_key):
    """All sessions (and with them the login) are closed behind the
    backend's back three times while 4 threads work: every operation
    still succeeds, and each event is recovered exactly once."""
    r = p11_env.probe(tok_args(p11_env), "recover-test", "--threads", "4",
                      "--ops", "20", "--seconds", "3")
    assert "failures=0" in r.stdout and "disrupted=3" in r.stdout, \
        r.stdout + r.stderr
    assert r.stderr.count("reopening sessions and logging in again") == 3, r.stderr


def test_bridge_evp_decrypt_and_pss(p11_env, p11_any, tmp_path):
    """OpenSSL EVP code using hsm_key_pkey: OAEP-SHA384 decryption and a
    PSS signature (raw private operations through the bridge)."""
    plain = tmp_path / "key.bin"
    plain.write_bytes(os.urandom(48))
    ct = tmp_path / "ct.bin"
    oaep_wrap(p11_any["pub"], plain, ct)
    out = tmp_path / "out.bin"
    p11_env.probe(p11_any["args"], "evp-decrypt", "--md", "sha384", str(ct),
                  str(out))
    assert out.read_bytes() == plain.read_bytes()
    b = bytearray(ct.read_bytes())
    b[5] ^= 0x80
    ct.write_bytes(bytes(b))
    r = p11_env.probe(p11_any["args"], "evp-decrypt", "--md", "sha384", str(ct),
                      str(tmp_path / "bad.bin"), check=False)
    assert r.returncode == 5
    sig = tmp_path / "pss.bin"
    p11_env.probe(p11_any["args"], "evp-sign-pss", "--md", "sha256", str(plain),
                  str(sig))
    run(["openssl", "dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss",
         "-sigopt", "rsa_pss_saltlen:digest", "-verify", p11_any["pub"],
         "-signature", str(sig), str(plain)])


# ---- faults injected by tests/p11shim (a module wrapping SoftHSM) ----

SHIM = os.environ.get("HSMFS_P11SHIM", str(BUILD / "tests" / "p11shim.so"))


@pytest.fixture
def p11_shim(p11_env, p11_key, tmp_path):
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    env = dict(p11_env.env, P11SHIM_REAL=MODULE, P11SHIM_CTL=str(ctl),
               HSMFS_PIN=PIN)
    return {"ctl": ctl, "env": env,
            "args": ["--module", SHIM, "--token-label", LABEL, "--alias", ALIAS]}


def logins(shim):
    f = shim["ctl"] / "logins"
    return len(f.read_text().splitlines()) if f.exists() else 0


@pytest.mark.parametrize("flags,code,msg", [
    (0x40000, 4, "PIN locked, unblock with the SO PIN"),
    (0x20000, 4, "one PIN attempt left"),
])
def test_pin_flags_checked_before_login(p11_shim, flags, code, msg):
    (p11_shim["ctl"] / "flags").write_text(f"{flags:x}\n")
    r = run([PROBE, *p11_shim["args"], "info"], check=False, env=p11_shim["env"])
    assert r.returncode == code, r.stderr
    assert msg in r.stderr and LABEL in r.stderr
    assert logins(p11_shim) == 0        # C_Login was never tried
    (p11_shim["ctl"] / "flags").unlink()
    r = run([PROBE, *p11_shim["args"], "info"], env=p11_shim["env"])
    assert "cert=yes" in r.stdout and logins(p11_shim) == 1


class Served:
    """A long-lived hsmprobe: one operation per request."""

    def __init__(self, shim):
        self.p = subprocess.Popen([PROBE, *shim["args"], "--md", "sha384", "serve"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True,
                                  env=shim["env"])
        assert self.p.stdout.readline().strip() == "ready"

    def op(self, what):
        self.p.stdin.write(what + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()

    def close(self):
        self.p.stdin.close()
        rc = self.p.wait(timeout=30)
        err = self.p.stderr.read()
        assert rc == 0, err
        return err


def test_device_error_fails_then_recovers(p11_shim):
    s = Served(p11_shim)
    assert s.op("sign") == "ok" and s.op("unwrap") == "ok"
    (p11_shim["ctl"] / "fail_ops").touch()
    r = s.op("sign")
    assert r.startswith("err") and "C_SignInit failed: CKR_DEVICE_ERROR (0x30)" in r
    (p11_shim["ctl"] / "fail_ops").unlink()
    assert s.op("sign") == "ok" and s.op("unwrap") == "ok"
    err = s.close()
    # The failure made it log in again once (same PIN, kept for this).
    assert logins(p11_shim) == 2
    assert err.count("reopening sessions and logging in again") == 1, err


def test_token_removed_fails_then_comes_back(p11_shim):
    s = Served(p11_shim)
    assert s.op("sign") == "ok"
    (p11_shim["ctl"] / "removed").touch()
    for what in ("sign", "unwrap", "sign"):
        r = s.op(what)
        assert r.startswith("err") and "is not present in module" in r, r
    assert logins(p11_shim) == 1        # no login attempts while it is away
    (p11_shim["ctl"] / "removed").unlink()
    assert s.op("unwrap") == "ok" and s.op("sign") == "ok"
    err = s.close()
    assert logins(p11_shim) == 2
    assert err.count("reopening sessions") == 1 and "is back" in err, err


# ---- hsmfs-tool keygen / import-cert ----

def tool_config(p11_env, path, keys):
    """keys: {name: alias} on the test token; one descriptor uses the first."""
    first = next(iter(keys))
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<engineSignEncrypt>",
             "  <descriptors>",
             '    <descriptor name="ConfigZipSigner" version="1">',
             f'      <type algorithm="SHA-256" key="{first}"/>',
             "    </descriptor>", "  </descriptors>", "  <keys>"]
    for name, alias in keys.items():
        if alias.endswith(".p12"):
            typ = f'name="P12" locationValue="{alias}" pin="{PIN}"'
        else:
            typ = (f'name="HSM" locationValue="libsofthsm2" pin="{PIN}" '
                   f'alias="{alias}" tokenLabel="{LABEL}"')
        lines += [f'    <key name="{name}">', f"      <type {typ}/>", "    </key>"]
    lines += ["  </keys>", "</engineSignEncrypt>"]
    Path(path).write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return str(path)


def test_tool_keygen_csr_and_self_signed(p11_env, p11_p12, tmp_path):
    cfg = tool_config(p11_env, tmp_path / "c.xml",
                      {"kgKey": "kgAlias", "kgKey2": "kgAlias2",
                       "softKey": p11_p12["args"][1]})
    csr = tmp_path / "req.pem"
    r = p11_env.run([TOOL, "keygen", "-o", f"config={cfg}", "--key", "kgKey",
                     "--bits", "3072", "--subject", "CN=Tool Key,O=Example,C=DE",
                     "--csr", str(csr), "--self-signed"])
    assert 'under label "kgAlias"' in r.stdout
    # The CSR was signed by the token key (through the EVP bridge).
    r = run(["openssl", "req", "-in", str(csr), "-verify", "-noout", "-subject",
             "-pubkey"])
    assert "verify OK" in r.stdout + r.stderr
    assert "C = DE, O = Example, CN = Tool Key" in r.stdout
    # The self-signed certificate is on the token under label and ID, and
    # the key opens with it (certificate and key match).
    certs = cert_objects(p11_env, "kgAlias")
    assert len(certs) == 1
    priv = p11_env.pkcs11("--list-objects", "--type", "privkey").stdout
    block = [b for b in priv.split("Private Key Object")
             if "label:      kgAlias\n" in b][0]
    assert "sensitive" in block and "never extractable" in block
    key_id = block.split("ID:")[1].split()[0]
    assert f"ID:         {key_id}" in certs[0]
    p11_env.pkcs11("--read-object", "--type", "cert", "--label", "kgAlias",
                   "-o", str(tmp_path / "c.der"), login=False)
    r = run(["openssl", "x509", "-inform", "DER", "-in", str(tmp_path / "c.der"),
             "-noout", "-text"])
    assert "CA:FALSE" in r.stdout and "Digital Signature, Key Encipherment" in r.stdout
    assert "Public-Key: (3072 bit)" in r.stdout
    run(["openssl", "x509", "-inform", "DER", "-in", str(tmp_path / "c.der"),
         "-out", str(tmp_path / "c.pem")])
    run(["openssl", "verify", "-CAfile", str(tmp_path / "c.pem"),
         str(tmp_path / "c.pem")])
    r = p11_env.probe(tok_args(p11_env, "kgAlias"), "info")
    assert "cert=yes" in r.stdout and "bits=3072" in r.stdout
    # Refusals: existing alias, bad size, P12 key, unknown key.
    r = p11_env.run([TOOL, "keygen", "-o", f"config={cfg}", "--key", "kgKey"],
                    check=False)
    assert r.returncode == 2 and "already exists" in r.stderr
    r = p11_env.run([TOOL, "keygen", "-o", f"config={cfg}", "--key", "kgKey2",
                     "--bits", "1024"], check=False)
    assert r.returncode == 2 and "--bits" in r.stderr
    r = p11_env.run([TOOL, "keygen", "-o", f"config={cfg}", "--key", "softKey"],
                    check=False)
    assert r.returncode == 2 and "not an HSM key" in r.stderr
    r = p11_env.run([TOOL, "keygen", "-o", f"config={cfg}", "--key", "nope"],
                    check=False)
    assert r.returncode == 2 and 'no key named "nope"' in r.stderr


def test_tool_import_cert(p11_env, p11_key, tmp_path):
    cfg = tool_config(p11_env, tmp_path / "c.xml", {"impKey": "impAlias"})
    csr = tmp_path / "req.pem"
    p11_env.run([TOOL, "keygen", "-o", f"config={cfg}", "--key", "impKey",
                 "--subject", "/CN=impAlias/O=hsmfs", "--csr", str(csr)])
    assert cert_objects(p11_env, "impAlias") == []
    # Without a certificate the key does not open for normal use.
    r = p11_env.probe(tok_args(p11_env, "impAlias"), "info", check=False)
    assert r.returncode == 2 and "no certificate" in r.stderr
    # A certificate of another key is refused (exit 1), nothing stored.
    r = p11_env.run([TOOL, "import-cert", "-o", f"config={cfg}", "--key",
                     "impKey", p11_key["cert"]], check=False)
    assert r.returncode == 1 and "does not match" in r.stderr
    assert cert_objects(p11_env, "impAlias") == []
    # The CA-issued certificate for its CSR is stored and used.
    cert = tmp_path / "cert.pem"
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", p11_env.ca_cert,
         "-CAkey", p11_env.ca_key, "-set_serial", "4711", "-days", "30",
         "-out", str(cert)])
    p11_env.run([TOOL, "import-cert", "-o", f"config={cfg}", "--key", "impKey",
                 str(cert)])
    assert len(cert_objects(p11_env, "impAlias")) == 1
    data = tmp_path / "m"
    data.write_bytes(b"imported")
    p11_env.probe(tok_args(p11_env, "impAlias"), "cms-sign", str(data),
                  str(tmp_path / "s.der"))
    run(["openssl", "cms", "-verify", "-inform", "DER", "-in",
         str(tmp_path / "s.der"), "-binary", "-content", str(data), "-CAfile",
         p11_env.ca_cert, "-purpose", "any", "-out", os.devnull])
    r = p11_env.run([TOOL, "import-cert", "-o", f"config={cfg}", "--key",
                     "impKey", str(tmp_path / "missing.pem")], check=False)
    assert r.returncode == 2


def test_ambiguous_label_refused(p11_env):
    for _ in range(2):
        p11_env.pkcs11("--keypairgen", "--key-type", "rsa:2048", "--label",
                       "twinKey", "--id", secrets.token_hex(8), "--sensitive")
    r = p11_env.probe(tok_args(p11_env, "twinKey") + ["--no-cert"], "info",
                      check=False)
    assert r.returncode == 2
    assert 'several private keys labelled "twinKey"' in r.stderr


def test_two_keys_share_one_login(p11_shim, p11_env):
    p11_env.token_key("secondKey")
    r = run([PROBE, *p11_shim["args"], "--also", "secondKey", "info"],
            env=p11_shim["env"])
    assert "name=probe2" in r.stdout and "sign=ok" in r.stdout, r.stdout
    assert logins(p11_shim) == 1
