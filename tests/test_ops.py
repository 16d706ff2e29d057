"""Operating hsmfs like a Debian FUSE tool (issue 8): install, man pages,
fstab/mount(8), standard FUSE options, .status, hsmfs-tool status."""
import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BUILD, HSMFS, SRC, TOOL
from helpers import is_mounted, run, wait_for


def mount_line(mnt):
    mnt = os.path.realpath(mnt)
    for line in open("/proc/self/mounts"):
        f = line.split()
        if f[1] == mnt:
            return f
    return None


def test_install_into_destdir(tmp_path):
    dest = tmp_path / "dest"
    run(["meson", "install", "-C", str(BUILD), "--no-rebuild", "--destdir", str(dest)])
    files = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    sbin = [f for f in files if f.endswith("sbin/hsmfs")]
    tool = [f for f in files if f.endswith("bin/hsmfs-tool")]
    assert sbin and tool, files
    assert any(f.endswith("man8/hsmfs.8") for f in files)
    assert any(f.endswith("man8/hsmfs-tool.8") for f in files)
    assert any(f.endswith("systemd/system/hsmfs.service") for f in files)
    assert any(f.endswith("examples/engineSignEncrypt.xml") for f in files)
    out = run([str(dest / sbin[0]), "--version"]).stdout
    assert "hsmfs" in out
    assert run([str(dest / tool[0]), "--help"]).returncode == 0


@pytest.mark.parametrize("page", ["hsmfs.8", "hsmfs-tool.8"])
def test_man_pages_render(page):
    p = run(["man", "--warnings", "-l", str(BUILD / "man" / page)],
            env=dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat"))
    text = p.stdout
    assert "SYNOPSIS" in text and "EXIT STATUS" in text
    assert "@VERSION@" not in text
    serious = [l for l in p.stderr.splitlines() if "warning" in l and
               "cannot adjust" not in l]
    assert not serious, p.stderr


def test_mount_via_mount_fuse(hsm, tmp_path):
    cfg = hsm.config(tmp_path / "c.xml")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ, PATH=f"{Path(HSMFS).parent}:{os.environ['PATH']}")
    run(["mount", "-t", "fuse.hsmfs", str(tmp_path / "store"), str(mnt),
         "-o", f"config={cfg}"], env=env)
    try:
        wait_for(lambda: is_mounted(mnt), what="mount")
        line = mount_line(mnt)
        assert line[2] == "fuse.hsmfs", line
        assert sorted(os.listdir(mnt)) == ["fields", "history", "mail",
                                           "sign-out", "verify-in"]
    finally:
        run(["umount", str(mnt)], check=False)
    wait_for(lambda: not is_mounted(mnt), what="unmount")


def test_mount_via_fstab(hsm, tmp_path):
    cfg = hsm.config(tmp_path / "c.xml")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{tmp_path / 'store'} {mnt} fuse.hsmfs config={cfg},nofail 0 0\n")
    env = dict(os.environ, PATH=f"{Path(HSMFS).parent}:{os.environ['PATH']}")
    run(["mount", "-T", str(fstab), str(mnt)], env=env)
    try:
        wait_for(lambda: is_mounted(mnt), what="fstab mount")
        assert mount_line(mnt)[0] == f"hsmfs:{tmp_path / 'store'}"
    finally:
        run(["umount", str(mnt)], check=False)
    wait_for(lambda: not is_mounted(mnt), what="unmount")


def test_fsname_and_subtype_options(mount_factory):
    m = mount_factory(opts="fsname=idmstore,subtype=idm")
    line = mount_line(m.mnt)
    assert line[0] == "idmstore" and line[2] == "fuse.idm", line


def test_single_threaded_and_debug(mount_factory):
    m = mount_factory(opts=None)
    m.unmount()
    m.start(opts="")  # plain restart works
    m.unmount()
    m2 = mount_factory(start=False)
    m2.proc = subprocess.Popen([HSMFS, m2.store, m2.mnt, "-s", "-d", "-o",
                                f"config={m2.config}"], stdout=open(m2.logfile, "ab"),
                               stderr=subprocess.STDOUT)
    m2._log = open(m2.logfile, "ab")
    wait_for(lambda: is_mounted(m2.mnt), what="-s -d mount")
    assert sorted(os.listdir(m2.mnt))[0] == "fields"
    m2.unmount()
    assert "unique:" in m2.log() or "opcode" in m2.log().lower()


def test_allow_other_keeps_default_permissions(mount_factory):
    m = mount_factory(opts="allow_other")
    line = mount_line(m.mnt)
    assert "allow_other" in line[3] and "default_permissions" in line[3], line


def test_auto_unmount(mount_factory):
    m = mount_factory(opts="auto_unmount")
    m.proc.kill()
    m.proc.wait()
    m.proc = None
    m._log.close()
    wait_for(lambda: not is_mounted(m.mnt), what="auto_unmount")


def test_read_only_mount(mount_factory):
    m = mount_factory(opts="ro")
    for folder in ("fields", "history", "sign-out", "verify-in", "mail"):
        with pytest.raises(OSError) as e:
            open(m.path(folder, "x"), "wb").close()
        assert e.value.errno == errno.EROFS
    assert "ro" in mount_line(m.mnt)[3].split(",")


def test_status_file_and_tool(mount):
    status = open(mount.path(".status")).read()
    fields = dict(l.split(": ", 1) for l in status.splitlines() if ": " in l)
    assert fields["version"]
    assert int(fields["uptime"]) >= 0
    assert fields["key.signEmailCertificateV1.backend"] == "pkcs11"
    assert fields["key.signEmailCertificateV1.token"] == mount.hsm.token_label
    before = int(fields["key.configZipSignerCertificateV1.ops"])
    time.sleep(1.1)
    status2 = open(mount.path(".status")).read()
    f2 = dict(l.split(": ", 1) for l in status2.splitlines() if ": " in l)
    assert int(f2["uptime"]) > int(fields["uptime"])
    assert int(f2["key.configZipSignerCertificateV1.ops"]) >= before
    p = run([TOOL, "status", mount.mnt], check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "signEmailCertificateV1" in p.stdout and "backend" in p.stdout
    assert run([TOOL, "status", "/tmp"], check=False).returncode == 2


def test_log_level_option(mount_factory):
    m = mount_factory(opts="log_level=debug")
    m.unmount()
    assert run([HSMFS, "x", "y", "-o", "config=/dev/null,log_level=loud"],
               check=False).returncode == 2
