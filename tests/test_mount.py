"""The mount itself (contract §1): folders, store, unconfigured folders,
clean unmount by fusermount3 and SIGTERM, daemonized mode."""
import errno
import os
import shutil
import signal
import stat
import subprocess

import pytest

from conftest import HSMFS
from helpers import is_mounted, run, visible, wait_for

FOLDERS = ["fields", "history", "mail", "sign-out", "verify-in"]


def test_five_folders_and_status(mount):
    assert visible(mount.mnt) == FOLDERS
    assert ".status" in os.listdir(mount.mnt)
    for f in FOLDERS:
        assert stat.S_ISDIR(os.stat(mount.path(f)).st_mode)
    status = open(mount.path(".status")).read()
    assert "version:" in status and "key.configZipSignerCertificateV1.backend: pkcs11" in status
    assert "pin" not in status.lower()


def test_store_created_private(mount):
    st = os.stat(mount.store)
    assert stat.S_IMODE(st.st_mode) == 0o700


def test_unconfigured_folders_refuse_writes(hsm, mount_factory, tmp_path):
    cfg = hsm.config(tmp_path / "none.xml",
                     omit=("EncryptedFields", "ConfigZipSigner",
                           "ObjectHistorySigner", "SignEmailDescriptor"))
    m = mount_factory(config=cfg)
    for f in FOLDERS:
        with pytest.raises(OSError) as e:
            with open(m.path(f, "x"), "wb") as fh:
                fh.write(b"data")
        assert e.value.errno == errno.EOPNOTSUPP, (f, e.value)
    assert "not available" in m.log() or "not configured" in m.log()


def test_unknown_paths(mount):
    assert not os.path.exists(mount.path("nope"))
    with pytest.raises(OSError) as e:
        os.mkdir(mount.path("newdir"))
    assert e.value.errno in (errno.EPERM, errno.EACCES)


def test_sigterm_unmounts_cleanly(mount):
    mount.proc.send_signal(signal.SIGTERM)
    assert mount.proc.wait(timeout=30) == 0
    mount.proc = None
    mount._log.close()
    assert not is_mounted(mount.mnt)


def test_fusermount_unmount(mount):
    mount.unmount()
    assert not is_mounted(mount.mnt)


def test_daemonized_mount(hsm, tmp_path):
    cfg = hsm.config(tmp_path / "c.xml")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = run([HSMFS, str(tmp_path / "store"), str(mnt), "-o", f"config={cfg}"])
    try:
        assert p.returncode == 0
        wait_for(lambda: is_mounted(mnt), what="daemonized mount")
        assert visible(mnt) == FOLDERS
        status = (mnt / ".status").read_text()
        assert "folder.sign-out" in status
    finally:
        run(["fusermount3", "-u", str(mnt)], check=False)
    wait_for(lambda: not is_mounted(mnt), what="unmount")


def test_missing_config_option(tmp_path):
    (tmp_path / "mnt").mkdir()
    p = subprocess.run([HSMFS, str(tmp_path / "s"), str(tmp_path / "mnt")],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "config=" in p.stderr


def test_relative_paths_survive_daemonizing(hsm, tmp_path):
    """libfuse's daemonize changes to /: path options are made absolute."""
    cfg = hsm.config(tmp_path / "c.xml")
    (tmp_path / "mnt").mkdir()
    shutil.copy(hsm.ca_cert, tmp_path / "ca.pem")
    p = run([HSMFS, "store", "mnt", "-o",
             "config=c.xml,truststore=ca.pem,history_anchor=anchor"],
            check=False, cwd=tmp_path)
    mnt = tmp_path / "mnt"
    try:
        assert p.returncode == 0, p.stderr
        wait_for(lambda: is_mounted(mnt), what="daemonized mount")
        with open(mnt / "history" / "obj", "ab") as f:
            f.write(b"x\n")
        assert (tmp_path / "anchor").stat().st_size > 0
    finally:
        run(["fusermount3", "-u", str(mnt)], check=False)
    wait_for(lambda: not is_mounted(mnt), what="unmount")


def test_bad_anchor_directory_refused_before_mount(hsm, tmp_path):
    cfg = hsm.config(tmp_path / "c.xml")
    (tmp_path / "mnt").mkdir()
    p = subprocess.run([HSMFS, str(tmp_path / "s"), str(tmp_path / "mnt"), "-f",
                        "-o", f"config={cfg},history_anchor=/nonexistent/dir/a"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "history_anchor" in p.stderr
    assert not is_mounted(tmp_path / "mnt")
