"""Start-up checks (contract §1, §2): config errors with line numbers, module
and slot resolution, PIN handling, hsmfs-tool check."""
import os
import re
import subprocess

import pytest

from conftest import HSMFS, TOOL
from helpers import is_mounted, pkcs11, run, visible

GOOD_DESC = """    <descriptor name="ConfigZipSigner" version="1">
      <type algorithm="SHA-256" key="configZipSignerCertificateV1"/>
    </descriptor>
"""


def start_expect_fail(tmp_path, cfg):
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    p = subprocess.run([HSMFS, str(tmp_path / "store"), str(mnt), "-f", "-o",
                        f"config={cfg}"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode != 0, p.stderr
    assert not is_mounted(mnt)
    return p.stderr


def key_xml(hsm, alias="configZipSignerCertificateV1", **over):
    attrs = {"name": "HSM", "locationValue": hsm.module, "pin": hsm.pin,
             "alias": alias, "slot": str(hsm.slot)}
    attrs.update(over)
    a = " ".join(f'{k}="{v}"' for k, v in attrs.items() if v is not None)
    return f'    <key name="{alias}">\n      <type {a}/>\n    </key>\n'


def config_text(hsm, descs=GOOD_DESC, keys=None):
    keys = keys if keys is not None else key_xml(hsm)
    return ("<engineSignEncrypt>\n  <descriptors>\n" + descs +
            "  </descriptors>\n  <keys>\n" + keys + "  </keys>\n</engineSignEncrypt>\n")


def write(tmp_path, text, name="engineSignEncrypt.xml"):
    p = tmp_path / name
    p.write_text(text)
    os.chmod(p, 0o600)
    return str(p)


BROKEN = [
    # (id, text transform, line, words expected in the message)
    ("malformed", lambda t: t.replace("</descriptors>", "</descriptor>"), 6, []),
    ("unknown-attribute", lambda t: t.replace('algorithm="SHA-256"',
                                              'algorithm="SHA-256" colour="red"'), 4, ["colour"]),
    ("bad-algorithm", lambda t: t.replace('algorithm="SHA-256"', 'algorithm="MD5"'), 4,
     ["algorithm"]),
    ("missing-key", lambda t: t.replace('key="configZipSignerCertificateV1"',
                                        'key="nosuchkey"'), 4, ["nosuchkey"]),
    ("duplicate-version", lambda t: t.replace("  </descriptors>",
                                              GOOD_DESC + "  </descriptors>"), 6,
     ["ConfigZipSigner"]),
    # Unknown descriptors are the Identity Manager's (listed, not served);
    # a near miss of a served name is a typo.
    ("misspelt-descriptor", lambda t: t.replace('name="ConfigZipSigner"',
                                                'name="ConfigZipSignr"'), 3,
     ["ConfigZipSignr", "ConfigZipSigner"]),
]


@pytest.mark.parametrize("case", BROKEN, ids=[c[0] for c in BROKEN])
def test_config_errors_name_the_line(hsm, tmp_path, case):
    _, transform, line, words = case
    cfg = write(tmp_path, transform(config_text(hsm)))
    err = start_expect_fail(tmp_path, cfg)
    assert re.search(rf"{re.escape(cfg)}:{line}\b", err), err
    for w in words:
        assert w in err, err
    # Exactly one line of explanation, nothing mounted.
    assert len([l for l in err.splitlines() if l.strip()]) == 1, err


def test_external_entity_is_not_expanded(hsm, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    text = (f'<!DOCTYPE e [<!ENTITY x SYSTEM "file://{secret}">]>\n' +
            config_text(hsm).replace('version="1"', 'version="&x;"'))
    cfg = write(tmp_path, text)
    err = start_expect_fail(tmp_path, cfg)
    assert "TOPSECRET" not in err


@pytest.mark.parametrize("spelling", ["RSA/ECB/OAEPWithSHA-384AndMGF1Padding",
                                      "RSA/None/OAEPWithSHA384AndMGF1Padding"])
def test_oaep_spellings_accepted(hsm, tmp_path, spelling):
    cfg = hsm.config(tmp_path / "c.xml", omit=("EncryptedFields",), descriptors=[
        {"name": "EncryptedFields", "version": 1, "algorithm": "AES/CBC/PKCS7Padding",
         "size": 256, "result": "NX02", "key": "encryptedFieldsCertificateV1",
         "asymCipher": spelling}])
    p = run([TOOL, "check", "-o", f"config={cfg}"], check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "EncryptedFields" in p.stdout


@pytest.mark.parametrize("location", ["/usr/lib/softhsm/libsofthsm2.so",
                                      "/usr/lib/softhsm/libsofthsm2",
                                      "libsofthsm2.so", "libsofthsm2"])
def test_module_location_forms(hsm, mount_factory, tmp_path, location):
    cfg = hsm.config(tmp_path / "c.xml", key_attrs={
        k: {"locationValue": location} for k in hsm.keys})
    m = mount_factory(config=cfg)
    assert visible(m.mnt) == ["fields", "history", "mail", "sign-out",
                                         "verify-in"]


@pytest.mark.parametrize("how", ["slot", "tokenLabel", "absent"])
def test_slot_selection(hsm, mount_factory, tmp_path, how):
    attrs = {"slot": None}
    if how == "slot":
        attrs = {"slot": str(hsm.slot)}
    elif how == "tokenLabel":
        attrs = {"slot": None, "tokenLabel": hsm.token_label}
    cfg = hsm.config(tmp_path / "c.xml", key_attrs={k: attrs for k in hsm.keys})
    mount_factory(config=cfg)


def test_wrong_pin_reported_once_never_retried(hsm, tmp_path):
    cfg = hsm.config(tmp_path / "c.xml", key_attrs={
        k: {"pin": "9999"} for k in hsm.keys})
    for _ in range(2):
        err = start_expect_fail(tmp_path, cfg)
        assert "PIN" in err, err
        assert "9999" not in err
    # Two failed starts cost at most two tries: the token is not locked and
    # the correct PIN still works.
    out = pkcs11(hsm, "--list-objects", "--type", "privkey").stdout
    assert "encryptedFieldsCertificateV1" in out


def test_missing_module(hsm, tmp_path):
    cfg = hsm.config(tmp_path / "c.xml", key_attrs={
        k: {"locationValue": "/nonexistent/libnothing.so"} for k in hsm.keys})
    err = start_expect_fail(tmp_path, cfg)
    assert "libnothing" in err, err


def test_missing_alias(hsm, tmp_path):
    text = config_text(hsm, keys=key_xml(hsm, alias="configZipSignerCertificateV1")
                       .replace('alias="configZipSignerCertificateV1"', 'alias="noSuchAlias"'))
    err = start_expect_fail(tmp_path, write(tmp_path, text))
    assert "noSuchAlias" in err, err


def test_keys_are_sensitive_and_not_extractable(hsm):
    out = pkcs11(hsm, "--list-objects", "--type", "privkey").stdout
    blocks = out.split("Private Key Object")[1:]
    assert len(blocks) >= 4
    for b in blocks:
        assert "sensitive" in b and "never extractable" in b, b


def test_tool_check_passes(hsm, tmp_path):
    cfg = hsm.config(tmp_path / "c.xml")
    p = run([TOOL, "check", "-o", f"config={cfg}"], check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    for name in ("EncryptedFields", "ConfigZipSigner", "ObjectHistorySigner",
                 "SignEmailDescriptor"):
        assert name in p.stdout
    assert "FAIL" not in p.stdout


def test_tool_check_names_bad_key(hsm, tmp_path):
    cfg = hsm.config(tmp_path / "c.xml", key_attrs={
        "signEmailCertificateV1": {"alias": "missingAlias"}})
    p = run([TOOL, "check", "-o", f"config={cfg}"], check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    bad = [l for l in p.stdout.splitlines() if " FAIL " in l]
    assert bad and all("signEmailCertificateV1" in l for l in bad), p.stdout


def test_tool_usage_errors_exit_2():
    assert run([TOOL, "check"], check=False).returncode == 2
    assert run([TOOL, "no-such-command"], check=False).returncode == 2
    p = run([TOOL, "check", "--help"], check=False)
    assert p.returncode == 0 and "config=FILE" in p.stdout
