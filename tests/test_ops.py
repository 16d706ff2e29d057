"""Operating hsmfs like a Debian FUSE tool (issue 8): install, man pages,
fstab/mount(8), standard FUSE options, .status, hsmfs-tool status."""
import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BUILD, HSMFS, SRC, TOOL
from helpers import is_mounted, run, visible, wait_for


def mount_line(mnt):
    mnt = os.path.realpath(mnt)
    for line in open("/proc/self/mounts", errors="surrogateescape"):
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


def mount_in_namespace(tmp_path, mount_cmd):
    """mount(8) resets PATH for helpers, so `fuse.hsmfs` needs hsmfs in
    /usr/sbin. Do that in a private mount namespace: bind a copy of
    /usr/sbin (symlinks) plus hsmfs over it, mount, look, unmount."""
    sbin = tmp_path / "sbin"
    orig = tmp_path / "orig-sbin"
    sbin.mkdir()
    orig.mkdir()
    for n in os.listdir("/usr/sbin"):
        os.symlink(orig / n, sbin / n)
    os.symlink(HSMFS, sbin / "hsmfs")
    mnt = tmp_path / "mnt"
    script = f"""set -e
mount --make-rprivate /
mount --bind /usr/sbin {orig}
mount --bind {sbin} /usr/sbin
{mount_cmd}
for i in $(seq 100); do grep -q " {mnt} " /proc/self/mounts && break; sleep 0.1; done
grep " {mnt} " /proc/self/mounts
ls {mnt}
umount {mnt}
"""
    return run(["unshare", "--mount", "sh", "-c", script]).stdout


def test_mount_via_mount_fuse(hsm, tmp_path):
    cfg = hsm.config(tmp_path / "c.xml")
    (tmp_path / "mnt").mkdir()
    out = mount_in_namespace(tmp_path, f"mount -t fuse.hsmfs {tmp_path / 'store'} "
                                       f"{tmp_path / 'mnt'} -o config={cfg}")
    line = out.splitlines()[0].split()
    assert line[2] == "fuse.hsmfs", out
    assert out.splitlines()[1:6] == ["fields", "history", "mail", "sign-out",
                                     "verify-in"], out
    assert not is_mounted(tmp_path / "mnt")


def test_mount_via_fstab(hsm, tmp_path):
    cfg = hsm.config(tmp_path / "c.xml")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{tmp_path / 'store'} {mnt} fuse.hsmfs config={cfg},nofail 0 0\n")
    out = mount_in_namespace(tmp_path, f"mount -T {fstab} {mnt}")
    line = out.splitlines()[0].split()
    assert line[0] == f"hsmfs:{tmp_path / 'store'}" and line[2] == "fuse.hsmfs", out
    assert "sign-out" in out


def test_fsname_and_subtype_options(mount_factory):
    m = mount_factory(opts="fsname=idmstore,subtype=idm")
    line = mount_line(m.mnt)
    assert line[0] == "idmstore" and line[2] == "fuse.idm", line


def test_single_threaded_and_debug(mount_factory):
    m = mount_factory(start=False)
    with open(m.logfile, "ab") as log:
        m.proc = subprocess.Popen([HSMFS, m.store, m.mnt, "-s", "-d", "-o",
                                   f"config={m.config}"], stdout=log,
                                  stderr=subprocess.STDOUT)
    m._log = open(m.logfile, "ab")
    wait_for(lambda: is_mounted(m.mnt), what="-s -d mount")
    assert visible(m.mnt)[0] == "fields"
    m.unmount()
    assert "unique:" in m.log(), m.log()[-2000:]


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
    wait_for(lambda: not is_mounted(m.mnt), timeout=60, what="auto_unmount")


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


def status_of(mount):
    text = open(mount.path(".status")).read()
    return dict(l.split(": ", 1) for l in text.splitlines() if ": " in l)


def test_status_follows_operations(mount):
    s0 = status_of(mount)
    with open(mount.path("history", "obj"), "ab") as f:
        f.write(b"one\n")
    with open(mount.path("fields", "f"), "wb") as f:
        f.write(b"secret")
    assert open(mount.path("fields", "f"), "rb").read() == b"secret"
    s1 = status_of(mount)
    assert int(s1["history.records_committed"]) == int(s0["history.records_committed"]) + 1
    assert float(s1["history.mean_batch"]) >= 1.0
    assert int(s1["history.last_checkpoint"]) > 0
    hk = "key.objectHistorySignerCertificateV1"
    assert int(s1[hk + ".ops"]) > int(s0[hk + ".ops"])
    assert s1[hk + ".last_result"] == "success"
    fk = "key.encryptedFieldsCertificateV1"
    assert int(s1[fk + ".ops"]) > int(s0[fk + ".ops"])
    assert float(s1[fk + ".mean_ms"]) > 0
    assert "secret" not in open(mount.path(".status")).read()


def test_log_level_option(mount_factory):
    m = mount_factory(opts="log_level=debug")
    m.unmount()
    assert run([HSMFS, "x", "y", "-o", "config=/dev/null,log_level=loud"],
               check=False).returncode == 2
