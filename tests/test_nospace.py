"""contract §8, a full disk and a hostile environment: the store on a 4 MiB
tmpfs filled to the last block (writes fail with ENOSPC, nothing corrupt or
half visible, everything works again once space is freed), store files
never readable by group/other even under umask 000, the PIN never in the
daemon's environment or log, the daemon not dumpable."""
import copy
import errno
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import conftest
import load
from folderops import (append, errname, mail_message, make_zip, read,
                       store_files, verify_zip, write)
from helpers import fill, is_mounted, run, wait_for


@pytest.fixture
def tmpfs(tmp_path):
    d = tmp_path / "tmpfs"
    d.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(d)])
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


def snapshot(m, fs):
    """Listings, without sign-out refusal records (names whose close()
    failed, kept empty and unreadable to carry their reason)."""
    out = {f: sorted(os.listdir(m.path(f))) for f in ("fields", "sign-out", "mail")
           if f in fs}
    if "sign-out" in out:
        out["sign-out"] = [n for n in out["sign-out"]
                           if not load.refusal_only(m, n) or
                           os.stat(m.path("sign-out", n)).st_size]
    return out


def test_full_disk_enospc_nothing_half_visible_and_recovers(tmpfs, mount_factory, hsm):
    fs = load.folders()
    m = mount_factory(store=tmpfs / "store")
    before = {
        "fields": lambda: write(m.path("fields", "before"), b"s3cret-before"),
        "history": lambda: append(m.path("history", "obj"), b"rec1\n"),
        "sign-out": lambda: write(m.path("sign-out", "before.zip"), make_zip(seed=b"b")),
        "mail": lambda: write(m.path("mail", "before"), mail_message("before")),
    }
    for f in fs:
        assert before[f]() is None, f
    signed_before = read(m.path("sign-out", "before.zip"))[0] if "sign-out" in fs else None
    listing = snapshot(m, fs)

    fill(tmpfs / "ballast")
    big = secrets.token_bytes(256 << 10)   # more than any slack left
    during = {
        "fields": lambda: write(m.path("fields", "during"), b"x" * 300000),
        "history": lambda: append(m.path("history", "obj"),
                                  b"rec-during " + big.hex().encode() + b"\n"),
        "sign-out": lambda: write(m.path("sign-out", "during.zip"),
                                  make_zip(seed=big[:64], size=300000)),
        "mail": lambda: write(m.path("mail", "during"),
                              mail_message("during", body=big.hex())),
    }
    results = {f: during[f]() for f in fs}
    bad = {k: errname(v) for k, v in results.items() if v != errno.ENOSPC}
    assert not bad, f"expected ENOSPC from every folder: {bad}\n{m.log()}"
    # Nothing half visible, everything older intact.
    assert snapshot(m, fs) == listing
    if "fields" in fs:
        assert read(m.path("fields", "before")) == (b"s3cret-before", None)
    if "history" in fs:
        assert read(m.path("history", "obj")) == (b"rec1\n", None)
    if "sign-out" in fs:
        assert read(m.path("sign-out", "before.zip")) == (signed_before, None)

    os.unlink(tmpfs / "ballast")
    after = {
        "fields": lambda: write(m.path("fields", "after"), b"s3cret-after"),
        "history": lambda: append(m.path("history", "obj"), b"rec2\n"),
        "sign-out": lambda: write(m.path("sign-out", "after.zip"), make_zip(seed=b"a")),
        "mail": lambda: write(m.path("mail", "after"), mail_message("after")),
    }
    for f in fs:
        assert after[f]() is None, f
    m.unmount()
    m.remount()
    if "fields" in fs:
        assert read(m.path("fields", "before")) == (b"s3cret-before", None)
        assert read(m.path("fields", "after")) == (b"s3cret-after", None)
        assert "during" not in os.listdir(m.path("fields"))
    if "history" in fs:
        assert read(m.path("history", "obj")) == (b"rec1\nrec2\n", None)
    if "sign-out" in fs:
        for z in ("before.zip", "after.zip"):
            data, e = read(m.path("sign-out", z))
            assert e is None, errname(e)
            ok, out = verify_zip(hsm, data)
            assert ok, out
        assert load.refusal_only(m, "during.zip")
    if "mail" in fs:
        names = set(os.listdir(m.path("mail")))
        assert {"before", "after"} <= names and "during" not in names
    m.unmount()


def test_store_never_group_or_other_readable(mount_factory, hsm, tmp_path):
    old = os.umask(0)           # the most permissive caller
    try:
        m = mount_factory(store=tmp_path / "fresh-store")
    finally:
        os.umask(old)
    exercise(m)
    m.unmount()
    m.remount()     # recovery paths create files too
    assert append(m.path("history", "h"), b"r2\n") is None
    m.unmount()
    loose = []
    for p in [m.store] + list(store_files(m.store)):
        mode = os.lstat(p).st_mode
        if stat.S_IMODE(mode) & 0o077:
            loose.append(f"{oct(stat.S_IMODE(mode))} {p}")
    assert not loose, "\n".join(loose)


@pytest.fixture
def pin_token(hsm, tmp_path_factory):
    """A second token with a PIN that cannot occur by chance, holding the
    four contract keys (removed again afterwards: other tests rely on one
    token)."""
    h = copy.copy(hsm)
    h.root = tmp_path_factory.mktemp("pintoken")
    h.pin = "Pq7-" + secrets.token_hex(8)
    h.token_label = "hsmfs-pin-" + secrets.token_hex(3)
    h.keys = {}
    out = run(["softhsm2-util", "--init-token", "--free", "--label", h.token_label,
               "--so-pin", h.so_pin, "--pin", h.pin]).stdout
    h.slot = int(out.strip().split()[-1])
    try:
        for alias in ("encryptedFieldsCertificateV1", "configZipSignerCertificateV1",
                      "objectHistorySignerCertificateV1"):
            h.make_key(alias, method="pkcs11-tool")
        h.make_key("signEmailCertificateV1", method="pkcs11-tool",
                   email="sender@example.org")
        yield h
    finally:
        subprocess.run(["softhsm2-util", "--delete-token", "--token", h.token_label],
                       capture_output=True)


def exercise(m):
    """Operations that use every key, and a few failures that log."""
    fs = load.folders()
    if "fields" in fs:
        assert write(m.path("fields", "f"), b"value") is None
        assert read(m.path("fields", "f")) == (b"value", None)
        write(m.path("fields", ".sealed", "bad"), b"NX02:garbage")
    if "history" in fs:
        assert append(m.path("history", "h"), b"r\n") is None
    if "sign-out" in fs:
        assert write(m.path("sign-out", "z.zip"), make_zip()) is None
        write(m.path("sign-out", "bad.zip"), b"not a zip")
    if "mail" in fs:
        assert write(m.path("mail", "m"), mail_message("m")) is None
        write(m.path("mail", "bad"), b"no headers at all")


@pytest.mark.parametrize("source", ["pin", "pin.env", "pin.encrypted"])
def test_pin_never_in_environ_or_log(pin_token, mount_factory, tmp_path,
                                     monkeypatch, source):
    h = pin_token
    var = "HSMFS_TEST_PIN_" + secrets.token_hex(3).upper()
    if source == "pin":
        attrs = {}
    elif source == "pin.env":
        monkeypatch.setenv(var, h.pin)
        attrs = {"pin": None, "pin.env": var}
    else:
        scr = run([h.tool, "scramble-pin"], input=h.pin + "\n").stdout.strip()
        attrs = {"pin": None, "pin.encrypted": scr}
    cfg = h.config(tmp_path / "c.xml", key_attrs={a: attrs for a in h.keys})
    m = mount_factory(config=cfg)
    exercise(m)
    pid = m.proc.pid
    for what in ("environ", "cmdline"):
        with open(f"/proc/{pid}/{what}", "rb") as f:
            data = f.read()
        assert h.pin.encode() not in data, f"PIN in /proc/{pid}/{what} ({source})"
    m.unmount()
    assert h.pin not in m.log()
    for p in store_files(m.store):
        if os.path.isfile(p):
            with open(p, "rb") as f:
                assert h.pin.encode() not in f.read(), f"PIN in the store: {p}"


NOBODY = 65534


def proc_owner(pid):
    return os.stat(f"/proc/{pid}/environ").st_uid


def test_daemon_not_dumpable(hsm, tmp_path):
    """PR_SET_DUMPABLE 0 shows nowhere in /proc, and root bypasses what it
    guards. Its one visible effect: the kernel makes a non-dumpable task's
    /proc/PID files owned by root (task_dump_owner), so they are no longer
    readable by the task's own user. So the daemon runs as an unprivileged
    user here (fusermount3 mounts for it, as in production), and
    /proc/PID/environ must belong to root while the daemon's uid is not;
    a control process started the same way keeps its own uid."""
    base = Path(tempfile.mkdtemp(prefix="hsmfs-nodump-"))
    os.chmod(base, 0o755)
    dev_mode = None
    try:
        tokens = base / "tokens"
        shutil.copytree(Path(hsm.softhsm_conf).parent / "tokens", tokens)
        conf = base / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                        "log.level = ERROR\nslots.removable = false\n")
        cfg = hsm.config(base / "engineSignEncrypt.xml")
        mnt = base / "mnt"
        mnt.mkdir()
        for p in [base, conf, Path(cfg), mnt] + list(tokens.rglob("*")) + [tokens]:
            os.chown(p, NOBODY, NOBODY)
        env = dict(os.environ, SOFTHSM2_CONF=str(conf))
        # libfuse opens /dev/fuse itself; distributions make it 0666 (udev),
        # bare VMs may not: open it up for the test, as udev would.
        dev_mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
        if dev_mode & 0o006 != 0o006:
            os.chmod("/dev/fuse", dev_mode | 0o666)
        asuser = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

        control = subprocess.Popen(asuser + ["sleep", "60"])
        try:
            # Owned by root until setpriv has switched uid and exec'd.
            wait_for(lambda: proc_owner(control.pid) == NOBODY, timeout=10,
                     what="control process environ owned by its own user")
        finally:
            control.kill()
            control.wait()

        log = open(base / "hsmfs.log", "wb")
        d = subprocess.Popen(asuser + [conftest.HSMFS, str(base / "store"), str(mnt),
                                       "-f", "-o", f"config={cfg}"],
                             stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for(lambda: is_mounted(mnt) or d.poll() is not None, timeout=60,
                     what="mount as nobody")
            assert d.poll() is None, (base / "hsmfs.log").read_text()
            with open(f"/proc/{d.pid}/status") as f:
                uid_line = next(line for line in f if line.startswith("Uid:"))
            assert uid_line.split()[1:] == [str(NOBODY)] * 4, uid_line
            # FUSE init (where hsmfs drops dumpability) runs right after
            # the mount appears; give it a moment, then it must hold.
            wait_for(lambda: proc_owner(d.pid) == 0, timeout=10,
                     what="daemon to become non-dumpable")
            time.sleep(0.5)
            assert proc_owner(d.pid) == 0
        finally:
            subprocess.run(asuser + ["fusermount3", "-u", str(mnt)], capture_output=True)
            try:
                rc = d.wait(timeout=30)
            except subprocess.TimeoutExpired:
                d.kill()
                rc = d.wait()
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
            log.close()
        assert rc == 0, (base / "hsmfs.log").read_text()
    finally:
        if dev_mode is not None:
            os.chmod("/dev/fuse", dev_mode)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("how", ["temporary", "overwrite"])
def test_enospc_mid_write_publishes_nothing(tmpfs, mount_factory, how):
    """A write that fails with ENOSPC leaves bytes that are not what the
    writer sent: /verify-in and /sign-out must not store or sign them at
    close, and a temporary that failed so cannot replace the item by
    rename(); the item keeps its bytes (issue 13: never a half-state)."""
    m = mount_factory(store=tmpfs / "store")
    old = {"verify-in": b"v" * 5000, "sign-out": make_zip(seed=b"old")}
    for f, d in old.items():
        assert write(m.path(f, "item"), d) is None
    stored = {f: (tmpfs / "store" / f / "item").read_bytes() for f in old}
    fill(tmpfs / "ballast")
    big = secrets.token_bytes(1 << 20)
    new = {"verify-in": big, "sign-out": make_zip(seed=big[:64], size=1 << 20)}
    for f, d in new.items():
        target = m.path(f, ".item.t" if how == "temporary" else "item")
        assert write(target, d) == errno.ENOSPC, f
        if how == "temporary":
            with pytest.raises(OSError):
                os.rename(target, m.path(f, "item"))
        assert (tmpfs / "store" / f / "item").read_bytes() == stored[f], f
    os.unlink(tmpfs / "ballast")
    assert read(m.path("sign-out", "item")) == (stored["sign-out"], None)
    m.unmount()
