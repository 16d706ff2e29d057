"""contract §8, an HSM that fails: every key goes through tests/p11shim.c, which
injects PKCS#11 errors, latency and token removal on command. Operations
fail cleanly with EIO while the faults last, the daemon keeps serving, and
the same operations succeed once the faults clear, without a remount."""
import errno
import os
import subprocess
import threading
import time

import pytest

from conftest import HSMFS, TOOL
import load
from faultshim import Shim
from folderops import (Relay, append, errname, mail_message, make_zip, read,
                       smime_verify, verify_zip, write)
from helpers import run, wait_for


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


# ---- the mounted folders ----

@pytest.fixture
def fmount(shim, mount_factory, tmp_path):
    """A mount whose every key goes through the shim."""
    def make(**opts):
        cfg = shim.config(tmp_path / "shim-config.xml")
        return mount_factory(config=cfg, opts=opts or None)
    return make


HSM_FAULTS = ["CKR_DEVICE_ERROR", "CKR_GENERAL_ERROR", "CKR_DEVICE_REMOVED",
              "CKR_TOKEN_NOT_PRESENT", "CKR_USER_NOT_LOGGED_IN"]


def logins(shim):
    return shim.stats().get("calls.C_Login", 0)


@pytest.mark.parametrize("ckr", HSM_FAULTS)
def test_fields_read_fails_with_eio_and_recovers(shim, fmount, ckr):
    m = fmount()
    p = m.path("fields", "db-password")
    assert write(p, b"s3cret") is None
    shim.set(f"fail C_Decrypt {ckr}")
    data, e = read(p)
    assert e == errno.EIO, (errname(e), data)
    # Still serving: stat and the sealed view need no HSM; writes seal
    # with the certificate; other folders sign.
    assert os.stat(p).st_size == 6
    sealed, e = read(m.path("fields", ".sealed", "db-password"))
    assert e is None and sealed.startswith(b"NX02:")
    assert write(m.path("fields", "other"), b"v2") is None
    assert append(m.path("history", "obj"), b"during decrypt fault\n") is None
    data, e = read(p)
    assert e == errno.EIO, errname(e)
    shim.clear()
    assert read(p) == (b"s3cret", None)
    assert read(m.path("fields", "other")) == (b"v2", None)
    assert shim.stats().get("injected.C_Decrypt", 0) >= 2
    m.unmount()


@pytest.mark.parametrize("ckr", HSM_FAULTS)
def test_history_append_fails_at_close_and_recovers(shim, fmount, ckr):
    m = fmount()
    p = m.path("history", "user-42")
    assert append(p, b"status=active\n") is None
    shim.set(f"fail C_Sign {ckr}")
    e = append(p, b"status=failed-while-hsm-down\n")
    assert e == errno.EIO, errname(e)
    # Nothing half-visible: the failed record is not part of the history,
    # which still verifies (verification needs no HSM).
    assert read(p) == (b"status=active\n", None)
    # Decryption is unaffected.
    assert write(m.path("fields", "f"), b"x") is None
    assert read(m.path("fields", "f")) == (b"x", None)
    shim.clear()
    assert append(p, b"status=locked\n") is None
    assert read(p) == (b"status=active\nstatus=locked\n", None)
    # An object whose first append failed can be appended to (created on
    # first append), also right away (the kernel may still cache its name).
    q = m.path("history", "fresh")
    shim.set(f"fail C_Sign {ckr}")
    assert append(q, b"first try\n") == errno.EIO
    shim.clear()
    assert append(q, b"second try\n") is None
    assert read(q) == (b"second try\n", None)
    m.unmount()
    # And after a restart: the failed records never resurface.
    m.remount()
    assert read(p) == (b"status=active\nstatus=locked\n", None)
    assert read(q) == (b"second try\n", None)


@pytest.mark.parametrize("ckr", ["CKR_DEVICE_ERROR", "CKR_DEVICE_REMOVED"])
def test_signout_fails_at_close_and_recovers(shim, fmount, hsm, ckr):
    m = fmount()
    z = make_zip()
    shim.set(f"fail C_Sign {ckr}")
    p = m.path("sign-out", "export.zip")
    e = write(p, z)
    assert e == errno.EIO, errname(e)
    # At most a refusal record (empty, EINVAL, reason in the xattr).
    assert load.refusal_only(m, "export.zip")
    if os.path.exists(p):
        assert b"sign" in os.getxattr(p, "user.hsmfs.sign").lower() or \
            ckr.encode() in os.getxattr(p, "user.hsmfs.sign")
    shim.clear()
    assert write(p, z) is None
    signed, e = read(p)
    assert e is None
    ok, out = verify_zip(hsm, signed)
    assert ok, out
    m.unmount()


def test_mail_stays_queued_while_signing_fails(shim, fmount, hsm):
    relay = Relay().start()
    try:
        shim.set("fail C_Sign CKR_DEVICE_ERROR")
        m = fmount(smtp=relay.url, mail_retry=1)
        name = "m-fault"
        # Durably queued even though it cannot be signed now.
        assert write(m.path("mail", name), mail_message(name)) is None
        assert name in os.listdir(m.path("mail"))
        wait_for(lambda: shim.stats().get("injected.C_Sign", 0) >= 2, timeout=30,
                 what="the sender to retry signing")
        assert relay.messages == []
        shim.clear()
        wait_for(lambda: name in os.listdir(m.path("mail", "sent")), timeout=60,
                 what="delivery after the HSM came back")
        assert relay.subjects() == [name]
        ok, out = smime_verify(hsm, relay.messages[0][2])
        assert ok, out
        m.unmount()
    finally:
        relay.stop()


def test_session_handle_invalid_once_is_transparent(shim, fmount):
    m = fmount()
    f = m.path("fields", "pw")
    h = m.path("history", "obj")
    assert write(f, b"s3cret") is None
    assert append(h, b"one\n") is None
    shim.set("fail C_Decrypt CKR_SESSION_HANDLE_INVALID count=1",
             "fail C_Sign CKR_SESSION_HANDLE_INVALID count=1")
    assert read(f) == (b"s3cret", None)
    assert append(h, b"two\n") is None
    st = shim.stats()
    assert st.get("injected.C_Decrypt") == 1 and st.get("injected.C_Sign") == 1, st
    assert read(h) == (b"one\ntwo\n", None)
    m.unmount()


def test_hsm_restart_behind_our_back_relogs_once(shim, fmount):
    """closeall: every real session closed, the login gone (an HSM restart).
    The next operations succeed after one transparent re-login."""
    m = fmount()
    f = m.path("fields", "pw")
    assert write(f, b"s3cret") is None
    assert read(f) == (b"s3cret", None)
    before = logins(shim)
    shim.set("closeall")
    assert read(f) == (b"s3cret", None)
    assert append(m.path("history", "obj"), b"after restart\n") is None
    for _ in range(5):
        assert read(f) == (b"s3cret", None)
    after = logins(shim)
    assert after == before + 1, (before, after)
    m.unmount()


def test_token_removed_then_back_recovers_with_relogin(shim, fmount):
    m = fmount()
    f = m.path("fields", "pw")
    h = m.path("history", "obj")
    assert write(f, b"s3cret") is None
    assert append(h, b"before\n") is None
    before = logins(shim)
    shim.set("removed")
    assert read(f)[1] == errno.EIO
    assert append(h, b"while removed\n") == errno.EIO
    # Serving everything that needs no token.
    assert os.stat(f).st_size == 6
    assert read(h) == (b"before\n", None)
    assert write(m.path("fields", "new"), b"sealed without the token") is None
    assert "pw" in os.listdir(m.path("fields"))
    shim.clear()
    assert read(f) == (b"s3cret", None)
    assert read(m.path("fields", "new")) == (b"sealed without the token", None)
    assert append(h, b"after\n") is None
    assert read(h) == (b"before\nafter\n", None)
    assert logins(shim) > before
    assert shim.stats().get("removals") == 1
    m.unmount()


def test_wrong_pin_at_relogin_is_not_retried(shim, fmount):
    """The token comes back but refuses the PIN (changed meanwhile): one
    C_Login, then operations fail with EIO without touching the PIN again."""
    m = fmount()
    f = m.path("fields", "pw")
    assert write(f, b"s3cret") is None
    assert append(m.path("history", "o"), b"first\n") is None
    before = logins(shim)
    shim.set("closeall", "fail C_Login CKR_PIN_INCORRECT")
    for _ in range(5):
        assert read(f)[1] == errno.EIO
        assert append(m.path("history", "o"), b"x\n") == errno.EIO
    shim.clear()
    for _ in range(3):
        assert read(f)[1] == errno.EIO
    assert logins(shim) == before + 1, (before, logins(shim))
    assert "PIN" in m.log()
    # Serving what needs no login.
    assert write(m.path("fields", "x"), b"y") is None
    m.unmount()


# ---- soak: random faults under mixed load ----

def test_soak_random_faults_under_load(shim, fmount, hsm):
    """HSMFS_SOAK_SECONDS (default 8) of C_Sign/C_Decrypt failing with
    probability HSMFS_SOAK_PROB (default 0.05; tests/soak.sh: 120 s at
    0.01) under writers and readers on every folder. Every operation
    succeeds or fails with EIO; afterwards every acknowledged item is
    there and verifies, mail is delivered, the daemon never died."""
    secs = float(os.environ.get("HSMFS_SOAK_SECONDS", "8"))
    prob = float(os.environ.get("HSMFS_SOAK_PROB", "0.05"))
    relay = Relay().start()
    try:
        m = fmount(smtp=relay.url, mail_retry=1)
        shim.set(f"fail C_Sign,C_Decrypt CKR_DEVICE_ERROR prob={prob}")
        stop, ws = load.start(m, hsm, load.folders(), threads=2)
        time.sleep(secs)
        load.join(stop, ws)
        st = shim.stats()
        shim.clear()
        assert m.proc.poll() is None, "daemon died:\n" + m.log()
        acked = lost = 0
        for w in ws:
            a, l = w.verify(m)
            acked += a
            lost += l
        mails = [n for w in ws if w.folder == "mail" for n in w.msgs]
        if mails:
            wait_for(lambda: set(mails) <= set(relay.subjects()), timeout=120,
                     what="every queued message delivered")
            for _, _, data in relay.messages[:5]:
                ok, out = smime_verify(hsm, data)
                assert ok, out
        t = load.totals(ws)
        load.figure(f"soak: {secs:g} s, p={prob:g}, folders "
                    f"{','.join(load.folders())}: faults injected "
                    f"{st.get('injected', 0)} (C_Sign {st.get('injected.C_Sign', 0)}/"
                    f"{st.get('calls.C_Sign', 0)}, C_Decrypt "
                    f"{st.get('injected.C_Decrypt', 0)}/{st.get('calls.C_Decrypt', 0)}) "
                    f"/ operations {t['ops']} / ok {t['ok']} / clean failures "
                    f"{t['clean']} / wrong results {t['wrong']}; acknowledged "
                    f"{acked}, lost {lost}; mail delivered {len(relay.messages)}; "
                    f"daemon alive")
        wrong = [x for w in ws for x in w.wrong]
        assert not wrong, "\n".join(wrong[:30])
        assert t["ok"] > 0 and acked > 0
        if st.get("calls.C_Sign", 0) + st.get("calls.C_Decrypt", 0) >= 300:
            assert st.get("injected", 0) > 0
        m.unmount()
    finally:
        relay.stop()


def test_lost_login_is_reestablished_once(shim, fmount):
    """The token forgets the login (CKR_USER_NOT_LOGGED_IN, once): the
    operation succeeds after exactly one new C_Login."""
    m = fmount()
    f = m.path("fields", "pw")
    h = m.path("history", "obj")
    assert write(f, b"s3cret") is None
    assert append(h, b"one\n") is None
    for func, op in (("C_Decrypt", lambda: read(f) == (b"s3cret", None)),
                     ("C_Sign", lambda: append(h, b"two\n") is None)):
        before = logins(shim)
        shim.set(f"fail {func} CKR_USER_NOT_LOGGED_IN count=1")
        assert op(), func
        assert logins(shim) == before + 1, (func, before, logins(shim))
        assert shim.stats().get(f"injected.{func}") == 1
        shim.clear()
    assert read(h) == (b"one\ntwo\n", None)
    m.unmount()


def test_slow_hsm_does_not_block_other_folders(shim, fmount):
    """A signature that takes 3 s (latency injected in C_Sign) holds up
    only its own writer: a field is decrypted and another field written
    while it is still pending, and the append then succeeds."""
    m = fmount()
    f = m.path("fields", "pw")
    h = m.path("history", "slow")
    assert write(f, b"s3cret") is None
    before = shim.stats().get("calls.C_Sign", 0)
    shim.set("delay C_Sign ms=3000")
    result = {}
    t = threading.Thread(target=lambda: result.update(e=append(h, b"slow\n")))
    t.start()
    wait_for(lambda: shim.stats().get("calls.C_Sign", 0) > before, timeout=30,
             what="the append to reach C_Sign")
    assert read(f) == (b"s3cret", None)
    assert write(m.path("fields", "other"), b"v") is None
    assert t.is_alive(), "the signature was not pending any more"
    t.join(60)
    assert result.get("e") is None, errname(result.get("e"))
    shim.clear()
    assert read(h) == (b"slow\n", None)
    assert shim.stats().get("delayed", 0) >= 1
    m.unmount()
