"""SPEC §8, an HSM that fails: every key goes through tests/p11shim.c, which
injects PKCS#11 errors, latency and token removal on command. Operations
fail cleanly with EIO while the faults last, the daemon keeps serving, and
the same operations succeed once the faults clear, without a remount."""
import errno
import os
import subprocess

import pytest

from conftest import HSMFS, TOOL
from faultshim import Shim
from helpers import run


@pytest.fixture
def shim(hsm, tmp_path, monkeypatch):
    return Shim(hsm, tmp_path / "shim").activate(monkeypatch)


def check(cfg):
    return subprocess.run([TOOL, "check", "-o", f"config={cfg}"],
                          capture_output=True, text=True, timeout=120)


# ---- the HSM layer, through hsmfs-tool check ----

def test_check_through_shim_passes(shim, tmp_path):
    cfg = shim.config(tmp_path / "c.xml")
    p = check(cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    st = shim.stats()
    # Every key really went through the shim, and nothing was injected.
    assert st.get("calls.C_Sign", 0) >= 3 and st.get("calls.C_Login", 0) >= 1, st
    assert st.get("injected", 0) == 0


@pytest.mark.parametrize("func", ["C_Sign", "C_Decrypt"])
@pytest.mark.parametrize("ckr", ["CKR_DEVICE_ERROR", "CKR_GENERAL_ERROR",
                                 "CKR_DEVICE_REMOVED"])
def test_check_reports_hsm_failure(shim, tmp_path, func, ckr):
    cfg = shim.config(tmp_path / "c.xml")
    shim.set(f"fail {func} {ckr}")
    p = check(cfg)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert ckr in out, out           # translated once, named (STYLE: errors)
    assert shim.stats().get(f"injected.{func}", 0) >= 1
    shim.clear()
    p = check(cfg)
    assert p.returncode == 0, p.stdout + p.stderr


def test_check_session_handle_invalid_once_is_transparent(shim, tmp_path):
    cfg = shim.config(tmp_path / "c.xml")
    shim.set("fail C_Sign CKR_SESSION_HANDLE_INVALID count=1",
             "fail C_Decrypt CKR_SESSION_HANDLE_INVALID count=1")
    p = check(cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    st = shim.stats()
    assert st.get("injected.C_Sign") == 1 and st.get("injected.C_Decrypt") == 1, st


def test_wrong_pin_tried_once(shim, tmp_path):
    """Four keys on one token with a wrong PIN: one C_Login, never more
    (tokens lock after a few failures), for the tool and for the daemon."""
    cfg = shim.config(tmp_path / "c.xml", extra_attrs={"pin": "9999"})
    p = check(cfg)
    assert p.returncode != 0
    assert shim.stats().get("calls.C_Login") == 1, shim.stats()
    shim.reset_stats()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    d = subprocess.run([HSMFS, str(tmp_path / "store"),
                        str(mnt), "-f", "-o", f"config={cfg}"],
                       capture_output=True, text=True, timeout=60)
    assert d.returncode != 0
    assert shim.stats().get("calls.C_Login") == 1, (shim.stats(), d.stderr)
    # The token still accepts the right PIN (not locked by retries).
    run([TOOL, "check", "-o", f"config={shim.config(tmp_path / 'ok.xml')}"])
