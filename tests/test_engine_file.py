"""The Identity Manager's own engine file (issue 18, contract §2) and PKCS#11
naming (issue 14): a vendor-style engineSignEncrypt.xml with descriptors
hsmfs does not serve, pkcs12 keys at classpath: locations (one missing),
CRLF line ends and a BOM mounts unchanged; a served descriptor with a
pkcs12 key found through -o classpath= signs zips jarsigner accepts; a
key named by an RFC 7512 pkcs11: URI signs; a bare module name resolves
through p11-kit's module registry."""
import os
import re
import subprocess
import zipfile
from pathlib import Path

import pytest

from conftest import TOOL
from folderops import Relay, append, mail_message, read, smime_verify, write
from helpers import run, wait_for

# The descriptors of the vendor's documented examples that hsmfs does not
# serve, with the key each names (pkcs12 at classpath: locations).
UNSERVED = [
    ("ConfigZipEncrypter", "1",
     'algorithm="AES/CBC/PKCS7Padding" size="256" '
     'asymCipher="RSA/None/OAEPWithSHA384AndMGF1Padding"', "configZipEncrypterV1"),
    ("SelfServiceJWTSigner", "1", 'algorithm="SHA256withRSA" kid="ss-2024"',
     "selfServiceJwtV1"),
    ("ContentProviderJWSSigner", "1", 'algorithm="SHA256withRSA"',
     "selfServiceJwtV1"),
    ("hermodDeviceEnc", "2", 'algorithm="RSA/ECB/OAEPWithSHA-256AndMGF1Padding"',
     "hermodDeviceV2"),
    ("idopteAuthentication", "1", 'algorithm="SHA256withRSA" audience="idopte"',
     "idopteV1"),
    ("insideClientAuth", "1", 'algorithm="SHA256withRSA"', "insideClientV1"),
    ("att_android", "1", 'algorithm="SHA256withECDSA" attestationRoot="google"',
     "attestationV1"),
    ("att_ios", "1", 'algorithm="SHA256withECDSA"', "attestationV1"),
    ("acmeBankPinBlob", "3", 'algorithm="RSA/ECB/OAEPWithSHA-1AndMGF1Padding"',
     "pinBlobV3"),
]
# key -> classpath file (hermodDeviceV2's file is missing on purpose).
UNSERVED_KEYS = {
    "configZipEncrypterV1": "config_enc.p12",
    "selfServiceJwtV1": "sign_new.p12",
    "hermodDeviceV2": "hermod_missing.p12",
    "idopteV1": "idopte.p12",
    "insideClientV1": "inside.p12",
    "attestationV1": "att.p12",
    "pinBlobV3": "pinblob.p12",
}
SERVED_KEYS = ["encryptedFieldsCertificateV1", "configZipSignerCertificateV1",
               "objectHistorySignerCertificateV1", "signEmailCertificateV1"]


def p12_file(hsm, d, name, password="changeit", cn="pkcs12 key"):
    """A CA-issued RSA key and certificate in a PKCS#12 file (also usable
    by hsmfs's P12 backend and by jarsigner's keystore)."""
    key, csr, pem = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
    run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout",
         str(key), "-out", str(csr), "-subj", f"/CN={cn}/O=hsmfs tests"])
    hsm.issue_cert(f"/CN={cn}/O=hsmfs tests", csr=str(csr), out=str(pem))
    out = d / name
    run(["openssl", "pkcs12", "-export", "-inkey", str(key), "-in", str(pem),
         "-name", "signer", "-passout", f"pass:{password}", "-out", str(out)])
    return out


def hsm_key(hsm, name, module=None):
    return (f'    <key name="{name}">\n'
            f'      <type name="HSM" locationValue="{module or hsm.module}" '
            f'pin="{hsm.pin}" alias="{name}" slot="{hsm.slot}"/>\n'
            f'    </key>\n')


def vendor_config(hsm, classes, zip_key_xml=None, module=None, extra_desc=""):
    """engineSignEncrypt.xml as the Identity Manager ships it in
    WEB-INF/classes: XML declaration, comments, served and unserved
    descriptors, an EncryptedFields version migrated with initVector."""
    descs = [
        '    <!-- fields: version 1 was migrated from data with a fixed IV -->',
        '    <descriptor name="EncryptedFields" version="1">',
        '      <type algorithm="AES/CBC/PKCS7Padding" size="256" result="NX02"',
        '            key="encryptedFieldsCertificateV1" initVector="AAECAwQFBgcICQoLDA0ODw=="',
        '            asymCipher="RSA/None/OAEPWithSHA384AndMGF1Padding"/>',
        '    </descriptor>',
        '    <descriptor name="EncryptedFields" version="2">',
        '      <type algorithm="AES/CBC/PKCS7Padding" size="256" result="NX02"',
        '            key="encryptedFieldsCertificateV1"',
        '            asymCipher="RSA/ECB/OAEPWithSHA-384AndMGF1Padding"/>',
        '    </descriptor>',
        '    <descriptor name="ConfigZipSigner" version="1">',
        '      <type algorithm="SHA-256" key="configZipSignerCertificateV1"/>',
        '    </descriptor>',
        '    <descriptor name="ObjectHistorySigner" version="1">',
        '      <type algorithm="SHA-256" key="objectHistorySignerCertificateV1"/>',
        '    </descriptor>',
        '    <descriptor name="SignEmailDescriptor" version="1">',
        '      <type algorithm="SHA256withRSA" key="signEmailCertificateV1"/>',
        '    </descriptor>',
    ]
    for name, ver, attrs, key in UNSERVED:
        descs += [f'    <descriptor name="{name}" version="{ver}">',
                  f'      <type {attrs} key="{key}"/>',
                  '    </descriptor>']
    keys = ""
    for k in SERVED_KEYS:
        if k == "configZipSignerCertificateV1" and zip_key_xml is not None:
            keys += zip_key_xml
        else:
            keys += hsm_key(hsm, k, module)
    for k, f in UNSERVED_KEYS.items():
        keys += (f'    <key name="{k}">\n'
                 f'      <type name="pkcs12" locationValue="classpath:{f}" '
                 f'pin="changeit" alias="signer"/>\n'
                 f'    </key>\n')
    text = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<!-- Sign and encrypt engine of the Identity Manager.\n'
            '     All clients of one database must use the same file. -->\n'
            '<engineSignEncrypt>\n  <descriptors>\n' + "\n".join(descs) + "\n" +
            extra_desc + '  </descriptors>\n  <keys>\n' + keys +
            '  </keys>\n</engineSignEncrypt>\n')
    path = classes / "engineSignEncrypt.xml"
    # As saved on a Windows workstation: BOM and CRLF.
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    os.chmod(path, 0o600)
    return path


@pytest.fixture(scope="module")
def pkcs12s(hsm, tmp_path_factory):
    """One real PKCS#12 file copied under every unserved key's name (not
    the missing one), and a CA-issued signing key for ConfigZipSigner."""
    d = tmp_path_factory.mktemp("p12")
    base = p12_file(hsm, d, "base.p12", cn="unserved key")
    signer = p12_file(hsm, d, "zipsigner.p12", password="zip-Pass-5",
                      cn="pkcs12 zip signer")
    trust = d / "trust.p12"
    run(["keytool", "-importcert", "-noprompt", "-alias", "testca", "-file",
         hsm.ca_cert, "-keystore", str(trust), "-storetype", "PKCS12",
         "-storepass", "changeit"])
    return {"base": base, "signer": signer, "trust": trust}


@pytest.fixture
def classes(tmp_path, pkcs12s):
    """A WEB-INF/classes directory with the unserved keys' files."""
    c = tmp_path / "webapp" / "WEB-INF" / "classes"
    c.mkdir(parents=True)
    for f in UNSERVED_KEYS.values():
        if "missing" not in f:
            (c / f).write_bytes(pkcs12s["base"].read_bytes())
    return c


def check(cfg, *opts):
    o = ",".join([f"config={cfg}", *opts])
    return subprocess.run([TOOL, "check", "-o", o], capture_output=True,
                          text=True, timeout=120)


def status(m):
    return dict(l.split(": ", 1) for l in
                Path(m.path(".status")).read_text().splitlines() if ": " in l)


def make_zip(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config/settings.properties", "a=1\n" * 200,
                   zipfile.ZIP_DEFLATED)
        z.writestr("config/policy.xml", "<policy/>\n", zipfile.ZIP_STORED)
    return path


def jarsigner_ok(path, trust):
    p = run(["jarsigner", "-verify", "-strict", "-keystore", str(trust),
             "-storepass", "changeit", str(path)], check=False)
    assert p.returncode == 0 and "jar verified" in p.stdout, p.stdout + p.stderr
    return p.stdout


def sign_and_verify(m, tmp_path, trust, name="export.zip"):
    src = make_zip(tmp_path / f"src-{name}")
    assert write(m.path("sign-out", name), src.read_bytes()) is None
    signed = tmp_path / f"signed-{name}"
    data, e = read(m.path("sign-out", name))
    assert e is None
    signed.write_bytes(data)
    return jarsigner_ok(signed, trust)


# ------------------------------------------------------------------ tests

def test_vendor_file_checks_lists_unserved_and_every_folder_serves(
        hsm, classes, mount_factory, tmp_path, pkcs12s):
    cfg = vendor_config(hsm, classes)
    p = check(cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "check passed" in p.stdout
    unserved = [l for l in p.stdout.splitlines() if "not served by hsmfs" in l]
    assert len(unserved) == len(UNSERVED), p.stdout
    for (name, ver, _, key), line in zip(UNSERVED, unserved):
        assert line.split()[:4] == [name, ver, key, "pkcs12"], line
    # The served ones still go through the round trips.
    for d in ("EncryptedFields", "ConfigZipSigner", "ObjectHistorySigner",
              "SignEmailDescriptor"):
        assert re.search(rf"^{d} .* ok ", p.stdout, re.M), p.stdout

    relay = Relay().start()
    try:
        m = mount_factory(config=str(cfg), opts={"truststore": hsm.ca_cert,
                                                 "smtp": relay.url})
        st = status(m)
        for f in ("sign-out", "verify-in", "fields", "history", "mail"):
            assert st[f"folder.{f}"] == "ready", st
        for name, ver, _, key in UNSERVED:
            assert st[f"descriptor.{name}.{ver}"] == \
                f"not served by hsmfs (key {key})", st
        # No unserved key was opened: only the four served ones.
        assert sorted(k.split(".")[1] for k in st if k.endswith(".backend")) == \
            sorted(SERVED_KEYS)

        # Every folder serves.
        sign_and_verify(m, tmp_path, pkcs12s["trust"])
        (tmp_path / "in.zip").write_bytes(
            open(m.path("sign-out", "export.zip"), "rb").read())
        assert write(m.path("verify-in", "in.zip"),
                     (tmp_path / "in.zip").read_bytes()) is None
        data, e = read(m.path("verify-in", "in.zip"))
        assert e is None and data == (tmp_path / "in.zip").read_bytes()
        assert write(m.path("fields", "dbPassword"), b"s3cret-value") is None
        assert read(m.path("fields", "dbPassword")) == (b"s3cret-value", None)
        sealed = os.listdir(m.path("fields", ".sealed"))
        env = open(m.path("fields", ".sealed", "dbPassword"), "rb").read()
        assert "dbPassword" in sealed and env.startswith(b"NX02:"), env[:20]
        assert append(m.path("history", "user42"), b"created\n") is None
        assert append(m.path("history", "user42"), b"renamed\n") is None
        assert read(m.path("history", "user42")) == (b"created\nrenamed\n", None)
        assert write(m.path("mail", "welcome"), mail_message("welcome")) is None
        wait_for(lambda: relay.messages, timeout=60, what="mail delivered")
        ok, out = smime_verify(hsm, relay.messages[0][2])
        assert ok, out
        m.unmount()
    finally:
        relay.stop()


def test_fields_encrypt_with_newest_version_not_the_initvector_one(
        hsm, classes, mount_factory):
    """initVector on an older EncryptedFields version is accepted (NX02
    envelopes carry their IV); new fields use the newest version, with a
    fresh IV each time."""
    m = mount_factory(config=str(vendor_config(hsm, classes)))
    envs = []
    for i in range(2):
        assert write(m.path("fields", f"f{i}"), b"same value") is None
        envs.append(open(m.path("fields", ".sealed", f"f{i}"), "rb").read())
    import base64
    raw = [base64.b64decode(e[5:].strip()) for e in envs]
    # docs/fields.md: version at offset 4 (u32, big-endian), IV at 50.
    assert all(int.from_bytes(r[4:8], "big") == 2 for r in raw)
    assert raw[0][50:66] != raw[1][50:66]
    assert bytes(range(16)) not in (raw[0][50:66], raw[1][50:66])
    m.unmount()


def test_initvector_on_newest_fields_version_is_refused(hsm, classes, tmp_path):
    text = vendor_config(hsm, classes).read_bytes().decode("utf-8-sig")
    # Drop version 2: the initVector version becomes the newest.
    text = re.sub(r'<descriptor name="EncryptedFields" version="2">.*?'
                  r'</descriptor>\r\n', "", text, flags=re.S)
    cfg = classes / "engineSignEncrypt.xml"
    cfg.write_text(text)
    line = text[:text.index("initVector")].count("\n") + 1
    p = check(cfg)
    assert p.returncode != 0
    assert re.search(rf"{re.escape(str(cfg))}:{line}: initVector", p.stderr), p.stderr
    errors = [l for l in p.stderr.splitlines() if "warning:" not in l]
    assert len(errors) == 1 and "fixed IV" in errors[0], p.stderr


def test_served_pkcs12_key_via_classpath_signs_zips_jarsigner_accepts(
        hsm, classes, mount_factory, tmp_path, pkcs12s):
    # The signing key lives in a second class-path directory (a jar's
    # exploded lib/, say), not next to the configuration.
    lib = tmp_path / "webapp" / "WEB-INF" / "lib-classes"
    lib.mkdir()
    (lib / "sign_zip.p12").write_bytes(pkcs12s["signer"].read_bytes())
    zipkey = ('    <key name="configZipSignerCertificateV1">\n'
              '      <type name="pkcs12" locationValue="classpath:sign_zip.p12"'
              ' pin="zip-Pass-5" alias="signer"/>\n    </key>\n')
    cfg = vendor_config(hsm, classes, zip_key_xml=zipkey)
    cp = f"classpath={classes}:{lib}"

    # Without the option: not found, and the message names what was tried.
    p = check(cfg)
    assert p.returncode != 0
    assert f"{classes}/sign_zip.p12" in p.stderr and "classpath=" in p.stderr, p.stderr
    p = check(cfg, cp)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"^ConfigZipSigner +1 +configZipSignerCertificateV1 +pkcs12 +ok",
                     p.stdout, re.M), p.stdout

    m = mount_factory(config=str(cfg), opts={"truststore": hsm.ca_cert,
                                             "classpath": f"{classes}:{lib}"})
    assert status(m)["key.configZipSignerCertificateV1.backend"] == "pkcs12"
    out = sign_and_verify(m, tmp_path, pkcs12s["trust"])
    # jarsigner -verbose -certs names the pkcs12 signer.
    p = run(["jarsigner", "-verify", "-verbose", "-certs", "-keystore",
             str(pkcs12s["trust"]), "-storepass", "changeit",
             str(tmp_path / "signed-export.zip")])
    assert "CN=pkcs12 zip signer" in p.stdout, p.stdout
    assert "jar verified" in out
    m.unmount()


def test_missing_file_of_an_unserved_key_does_not_stop_the_mount(
        hsm, classes, mount_factory):
    # Every unserved key's file missing, the module of one unserved HSM
    # key too: nothing of it is opened.
    for f in UNSERVED_KEYS.values():
        if (classes / f).exists():
            (classes / f).unlink()
    extra = ('    <descriptor name="ssoAssertionSigner" version="1">\r\n'
             '      <type algorithm="SHA256withRSA" key="sso"/>\r\n'
             '    </descriptor>\r\n')
    cfg = vendor_config(hsm, classes, extra_desc=extra)
    text = cfg.read_bytes().decode("utf-8-sig").replace(
        "  </keys>", '    <key name="sso">\r\n      <type name="HSM" '
        'locationValue="/opt/vendor/lib/libnosuchhsm.so" alias="sso" '
        'pin.encrypted="vendor:3q2+7w=="/>\r\n    </key>\r\n  </keys>')
    cfg.write_bytes(b"\xef\xbb\xbf" + text.encode())
    p = check(cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"^ssoAssertionSigner +1 +sso +pkcs11 +not served", p.stdout,
                     re.M), p.stdout
    m = mount_factory(config=str(cfg))
    assert status(m)["descriptor.ssoAssertionSigner.1"] == \
        "not served by hsmfs (key sso)"
    m.unmount()


def test_syntax_error_inside_an_unserved_descriptor_names_its_line(
        hsm, classes, tmp_path):
    cfg = vendor_config(hsm, classes)
    text = cfg.read_bytes().decode("utf-8-sig")
    bad = text.replace('kid="ss-2024"', 'kid=ss-2024')
    cfg.write_bytes(b"\xef\xbb\xbf" + bad.encode())
    line = bad[:bad.index("kid=ss-2024")].count("\n") + 1
    p = check(cfg)
    assert p.returncode != 0
    assert re.search(rf"{re.escape(str(cfg))}:{line}: malformed XML", p.stderr), p.stderr
    # The daemon says the same and mounts nothing.
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    d = subprocess.run([os.environ.get("HSMFS_BIN", str(Path(TOOL).parent.parent /
                                                      "fs" / "hsmfs")),
                        str(tmp_path / "store"), str(mnt), "-f", "-o",
                        f"config={cfg}"], capture_output=True, text=True,
                       timeout=60)
    assert d.returncode != 0
    assert re.search(rf"{re.escape(str(cfg))}:{line}: malformed XML", d.stderr), d.stderr

    # A key an unserved descriptor names must exist: reported on its line.
    bad = text.replace('key="hermodDeviceV2"', 'key="hermodDeviceV9"')
    cfg.write_bytes(b"\xef\xbb\xbf" + bad.encode())
    line = bad[:bad.index('<descriptor name="hermodDeviceEnc"')].count("\n") + 1
    p = check(cfg)
    assert re.search(rf"{re.escape(str(cfg))}:{line}: .*hermodDeviceV9", p.stderr), \
        p.stderr


def test_key_by_pkcs11_uri_signs(hsm, classes, mount_factory, tmp_path, pkcs12s):
    """uri= (RFC 7512) instead of locationValue/slot/tokenLabel/alias, with
    the module by p11-kit name and the PIN from a pin-source file."""
    (classes / "hsm-pin").write_text(hsm.pin + "\n")
    os.chmod(classes / "hsm-pin", 0o600)
    zipkey = ('    <key name="configZipSignerCertificateV1">\n'
              '      <type name="HSM" uri="pkcs11:token=hsmfs-test;'
              'object=configZipSignerCertificateV1;type=private'
              '?module-name=softhsm2&amp;pin-source=file:hsm-pin"/>\n'
              '    </key>\n')
    cfg = vendor_config(hsm, classes, zip_key_xml=zipkey)
    p = check(cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    m = mount_factory(config=str(cfg), opts={"truststore": hsm.ca_cert})
    assert status(m)["key.configZipSignerCertificateV1.token"] == "hsmfs-test"
    sign_and_verify(m, tmp_path, pkcs12s["trust"])
    p = run(["jarsigner", "-verify", "-verbose", "-certs", "-keystore",
             str(pkcs12s["trust"]), "-storepass", "changeit",
             str(tmp_path / "signed-export.zip")])
    assert "CN=configZipSignerCertificateV1" in p.stdout, p.stdout
    assert "(p11-kit module registry)" in m.log()
    m.unmount()

    # A bad URI is one line naming the attribute.
    bad = zipkey.replace("token=hsmfs-test;", "serial=42;")
    cfg = vendor_config(hsm, classes, zip_key_xml=bad)
    p = check(cfg)
    assert p.returncode != 0 and "'serial'" in p.stderr, p.stderr


def test_bare_module_name_resolves_through_p11kit(hsm, classes, mount_factory,
                                                 tmp_path):
    registry = Path("/usr/share/p11-kit/modules/softhsm2.module")
    assert registry.exists(), "Debian's softhsm2 package installs it"
    lib = [l.split(":", 1)[1].strip() for l in registry.read_text().splitlines()
           if l.startswith("module:")][0]
    cfg = vendor_config(hsm, classes, module="softhsm2")
    p = check(cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    m = mount_factory(config=str(cfg))
    assert f'PKCS#11 module "softhsm2" is {lib} (p11-kit module registry)' in m.log()
    assert write(m.path("fields", "x"), b"v") is None
    assert read(m.path("fields", "x")) == (b"v", None)
    m.unmount()
    # An unknown name: the message lists the registry files tried.
    cfg = vendor_config(hsm, classes, module="nosuchmodule42")
    p = check(cfg)
    assert p.returncode != 0
    assert "/usr/share/p11-kit/modules/nosuchmodule42.module" in p.stdout + p.stderr


def test_shipped_idm_example_parses(tmp_path):
    """examples/engineSignEncrypt-idm.xml (the docs' example) loads: its
    unserved descriptors are listed (its HSM token is not on this host,
    so the served rows fail to open, which is all that may fail)."""
    src = Path(__file__).resolve().parent.parent / "examples" / "engineSignEncrypt-idm.xml"
    cfg = tmp_path / "engineSignEncrypt.xml"
    cfg.write_bytes(src.read_bytes())
    os.chmod(cfg, 0o600)
    p = check(cfg)
    listed = [l.split()[0] for l in p.stdout.splitlines() if "not served by hsmfs" in l]
    assert listed == ["ConfigZipEncrypter", "SelfServiceJWTSigner",
                      "ContentProviderJWSSigner", "hermodDeviceEnc", "att_android",
                      "bankPinBlob"], p.stdout + p.stderr


def test_idm_example_is_installed(tmp_path):
    """meson install ships the Identity Manager example next to the
    others, unchanged (the docs point administrators at it)."""
    from conftest import BUILD
    dest = tmp_path / "dest"
    run(["meson", "install", "-C", str(BUILD), "--no-rebuild", "--quiet",
         "--destdir", str(dest)])
    found = list(dest.rglob("share/doc/hsmfs/examples/engineSignEncrypt-idm.xml"))
    assert len(found) == 1, sorted(str(p) for p in dest.rglob("*.xml"))
    src = Path(__file__).resolve().parent.parent / "examples" / "engineSignEncrypt-idm.xml"
    assert found[0].read_bytes() == src.read_bytes()


def test_classpath_option_errors_name_the_directory(hsm, classes, tmp_path):
    cfg = vendor_config(hsm, classes)
    missing = tmp_path / "no-such-dir"
    p = check(cfg, f"classpath={classes}:{missing}")
    assert p.returncode == 2 and str(missing) in p.stderr, p.stderr
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    hsmfs = os.environ.get("HSMFS_BIN", str(Path(TOOL).parent.parent / "fs" / "hsmfs"))
    d = subprocess.run([hsmfs, str(tmp_path / "store"), str(mnt), "-f", "-o",
                        f"config={cfg},classpath={missing}"], capture_output=True,
                       text=True, timeout=60)
    assert d.returncode == 2 and str(missing) in d.stderr, d.stderr
    assert not os.path.ismount(mnt)


def test_token_label_shared_by_two_tokens_is_refused(hsm, tmp_path):
    """A URI token= (or tokenLabel) matching two tokens names no token:
    one line naming both slots, instead of the first one silently."""
    tokdir = tmp_path / "tokens"
    tokdir.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokdir}\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n")
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    slots = []
    for _ in range(2):
        out = run(["softhsm2-util", "--init-token", "--free", "--label", "twin",
                   "--so-pin", "5678", "--pin", "1234"], env=env).stdout
        slots.append(out.strip().split()[-1])
    cfg = tmp_path / "engineSignEncrypt.xml"
    cfg.write_text(
        '<engineSignEncrypt>\n  <descriptors>\n'
        '    <descriptor name="ConfigZipSigner" version="1">\n'
        '      <type algorithm="SHA-256" key="zip"/>\n'
        '    </descriptor>\n  </descriptors>\n  <keys>\n'
        '    <key name="zip">\n'
        f'      <type name="HSM" uri="pkcs11:token=twin;object=zip?module-path={hsm.module}'
        '&amp;pin-value=1234"/>\n'
        '    </key>\n  </keys>\n</engineSignEncrypt>\n')
    os.chmod(cfg, 0o600)
    p = run([TOOL, "check", "-o", f"config={cfg}"], env=env, check=False)
    assert p.returncode != 0
    msg = p.stdout + p.stderr
    assert 'two tokens labelled "twin"' in msg, msg
    assert all(s in msg for s in slots), (slots, msg)


def test_tool_holding_pins_is_not_dumpable(hsm):
    """hsmfs-tool is non-dumpable before it reads the configuration: a
    pin-value (or pin) parsed from it cannot reach a core dump. Run as
    nobody (as root, /proc ownership shows nothing); a key's pin.file is
    a FIFO, so the tool waits there with the other key's PIN in memory."""
    import shutil
    import tempfile
    import time
    d = Path(tempfile.mkdtemp(prefix="hsmfs-dump-"))
    try:
        os.chmod(d, 0o755)
        fifo = d / "pin.fifo"
        os.mkfifo(fifo, 0o644)
        cfg = d / "engineSignEncrypt.xml"
        cfg.write_text(
            '<engineSignEncrypt>\n  <descriptors>\n'
            '    <descriptor name="ConfigZipSigner" version="1">\n'
            '      <type algorithm="SHA-256" key="zip"/>\n    </descriptor>\n'
            '    <descriptor name="ObjectHistorySigner" version="1">\n'
            '      <type algorithm="SHA-256" key="hist"/>\n    </descriptor>\n'
            '  </descriptors>\n  <keys>\n'
            '    <key name="zip"><type name="HSM" uri="pkcs11:object=zip'
            f'?module-path={hsm.module}&amp;pin-value=S3CR3T-77"/></key>\n'
            '    <key name="hist"><type name="pkcs12" locationValue="/nonexistent.p12"'
            f' pin.file="{fifo}"/></key>\n'
            '  </keys>\n</engineSignEncrypt>\n')
        os.chmod(cfg, 0o644)
        env = {"PATH": os.environ["PATH"], "SOFTHSM2_CONF": "/nonexistent"}
        p = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534",
                              "--clear-groups", TOOL, "check", "-o", f"config={cfg}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            # Blocked opening the FIFO: pin.file is the last thing read.
            wait_for(lambda: p.poll() is None and Path(
                f"/proc/{p.pid}/wchan").read_text() == "wait_for_partner",
                what="hsmfs-tool blocked opening the FIFO")
            st = os.stat(f"/proc/{p.pid}/environ")
            assert p.poll() is None
            assert st.st_uid == 0, "hsmfs-tool is dumpable while holding a PIN"
        finally:
            p.kill()
            p.wait()
    finally:
        shutil.rmtree(d)
