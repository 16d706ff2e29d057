"""`meson install --destdir` (issue 14): documentation, examples and the
verifier scripts under share/doc/hsmfs, working from there; the systemd
units with this build's paths in systemd's unit directory, accepted by
`systemd-analyze verify`; man pages clean under `groff -ww`."""
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import BUILD, SRC
from helpers import run

pytestmark = pytest.mark.skipif(shutil.which("meson") is None,
                                reason="meson not installed")


def build_option(name):
    opts = json.loads(run(["meson", "introspect", str(BUILD), "--buildoptions"]).stdout)
    return next(o["value"] for o in opts if o["name"] == name)


@pytest.fixture(scope="module")
def inst(tmp_path_factory):
    """The build installed into a DESTDIR; paths as installed."""
    dest = tmp_path_factory.mktemp("destdir")
    run(["meson", "install", "-C", str(BUILD), "--no-rebuild", "--quiet",
         "--destdir", str(dest)], timeout=300)
    prefix = Path(build_option("prefix"))
    unitdir = build_option("systemdsystemunitdir")
    if not unitdir:
        p = subprocess.run(["pkg-config", "--variable=systemdsystemunitdir", "systemd"],
                           capture_output=True, text=True)
        unitdir = p.stdout.strip() or str(prefix / "lib" / "systemd" / "system")

    class I:
        root = dest
        sbin = prefix / build_option("sbindir")
        bin = prefix / build_option("bindir")
        doc = prefix / build_option("datadir") / "doc" / "hsmfs"
        units = Path(unitdir)
        man = prefix / build_option("mandir")

        @staticmethod
        def path(p):
            return dest / Path(p).relative_to("/")
    return I


def test_docs_examples_and_verifiers_installed(inst):
    doc = inst.path(inst.doc)
    assert (doc / "README.md").read_text() == (SRC / "README.md").read_text()
    for md in (SRC / "docs").glob("*.md"):
        assert (doc / "docs" / md.name).read_text() == md.read_text()
    for f in ("engineSignEncrypt.xml", "fstab", "hsmfs.service", "hsmfs@.service"):
        assert (doc / "examples" / f).is_file(), f
    for f in ("softhsm-setup.sh", "verify-history.py", "nx02-decode.sh"):
        mode = (doc / "examples" / f).stat().st_mode
        assert mode & stat.S_IXUSR, f
    for page in ("hsmfs.8", "hsmfs-tool.8"):
        assert (inst.path(inst.man) / "man8" / page).is_file()


def test_installed_verifiers_run_from_there(inst):
    ex = inst.path(inst.doc) / "examples"
    fixtures = SRC / "tests" / "data" / "history"
    p = run([str(ex / "verify-history.py"), str(fixtures / "journal"),
             "--log", str(fixtures / "user-42.log")])
    assert "size=4" in p.stdout
    p = run([str(ex / "verify-history.py"), str(fixtures / "journal-forged-leaf")],
            check=False)
    assert p.returncode == 1
    p = run([str(ex / "nx02-decode.sh")], check=False)
    assert p.returncode == 2 and "usage" in p.stderr


def test_units_carry_the_configured_paths(inst):
    for unit in ("hsmfs.service", "hsmfs@.service"):
        text = inst.path(inst.units / unit).read_text()
        assert f"ExecStart={inst.sbin}/hsmfs " in text, unit
        assert f"ExecReload={inst.bin}/hsmfs-tool reload " in text
        assert "Type=notify" in text
        assert "/bin/fusermount3 -uz \"$$HSMFS_MOUNT\"" in text
        assert "LoadCredential=pin:" in text
        assert "SystemCallFilter=@system-service @mount" in text
        assert "@" not in text.replace("%i", "").split("[Unit]")[1].replace(
            "@system-service @mount", "").replace("hsmfs@", "").replace(
            "@resources", ""), "unreplaced @VAR@"
        assert "/srv/idm" not in text
    assert "%i" in inst.path(inst.units / "hsmfs@.service").read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed")
def test_systemd_analyze_verify(inst, tmp_path):
    """The installed units in a root made of the DESTDIR plus the host's
    own units (sysinit.target and the rest a unit depends on): executables
    are looked up in that root, man pages in the DESTDIR."""
    root = tmp_path / "root"
    shutil.copytree(inst.root, root, symlinks=True)
    host = Path("/usr/lib/systemd/system")
    if not host.is_dir():
        host = Path("/lib/systemd/system")
    dest = root / "usr" / "lib" / "systemd" / "system"
    dest.mkdir(parents=True, exist_ok=True)
    for f in host.iterdir():
        # Never a copy of hsmfs installed on this host: ours is verified.
        if f.name.startswith("hsmfs") or (dest / f.name).exists():
            continue
        if f.is_symlink():
            os.symlink(os.readlink(f), dest / f.name)
        elif f.is_dir():
            shutil.copytree(f, dest / f.name, symlinks=True)
        else:
            shutil.copy2(f, dest / f.name)
    env = dict(os.environ, MANPATH=str(inst.path(inst.man)), SYSTEMD_LOG_LEVEL="notice")
    # Instance names as systemd-escape makes them (dashes, escapes).
    for unit in ("hsmfs.service", "hsmfs@idm.service", "hsmfs@idm-prod.service",
                 "hsmfs@idm\\x2dprod.service", "hsmfs@store\\x20two.service"):
        p = subprocess.run(["systemd-analyze", "verify", f"--root={root}", unit],
                           capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 0 and p.stderr.strip() == "", (unit, p.stderr)
    # It does catch a unit that is wrong.
    bad = root / inst.units.relative_to("/") / "hsmfs.service"
    bad.write_text(bad.read_text().replace("Type=notify", "Type=notify\nBogus=1"))
    p = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "hsmfs.service"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert "Bogus" in p.stderr


def tokens_labelled(conf, label):
    out = run(["softhsm2-util", "--show-slots"],
              env=dict(os.environ, SOFTHSM2_CONF=conf)).stdout
    return sum(1 for ln in out.splitlines()
               if ln.strip().startswith("Label:") and ln.split(":", 1)[1].strip() == label)


def test_installed_softhsm_setup_is_idempotent(inst, tmp_path):
    """Run from its installed place, with hsmfs-tool found next to it (not
    in ../build, not on the PATH): an interrupted run is finished by the
    next, a finished one is left alone, and there is one token."""
    script = inst.path(inst.doc) / "examples" / "softhsm-setup.sh"
    tool = inst.path(inst.bin) / "hsmfs-tool"
    demo = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items()
           if k not in ("HSMFS_TOOL", "SOFTHSM2_CONF")}
    env["PATH"] = "/usr/bin:/bin"
    # First run: keygen of the last key fails (as if interrupted).
    flaky = tmp_path / "flaky-tool"
    flaky.write_text("#!/bin/sh\ncase \" $* \" in *signEmailCertificateV1*) "
                     f"exit 1 ;; esac\nexec {tool} \"$@\"\n")
    flaky.chmod(0o755)
    p = subprocess.run([str(script), str(demo)], env=dict(env, HSMFS_TOOL=str(flaky)),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    assert not (demo / "engineSignEncrypt.xml").exists()
    conf = str(demo / "softhsm2.conf")
    assert tokens_labelled(conf, "hsmfs-demo") == 1
    p = subprocess.run([str(script), str(demo)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (demo / "engineSignEncrypt.xml").exists()
    p = subprocess.run([str(script), str(demo)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0 and "already set up" in p.stderr
    assert tokens_labelled(conf, "hsmfs-demo") == 1
    p = subprocess.run([str(tool), "check", "-o",
                        f"config={demo / 'engineSignEncrypt.xml'}"],
                       env=dict(env, SOFTHSM2_CONF=conf), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("page", ["hsmfs.8", "hsmfs-tool.8"])
def test_man_pages_clean_under_groff(page):
    path = BUILD / "man" / page
    p = subprocess.run(["groff", "-ww", "-man", "-z", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    # The rendered page, as man shows it, is readable too.
    p = subprocess.run(["groff", "-ww", "-man", "-Tutf8", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert p.stderr == "", p.stderr
    text = re.sub(".\b", "", p.stdout)      # grotty's bold and underline
    for section in ("SYNOPSIS", "OPTIONS", "ENVIRONMENT", "FILES", "EXIT STATUS"):
        assert section in text, section
    if page == "hsmfs.8":
        for word in ("max_threads", "SIGHUP", "SIGTERM", "syslog", "SOFTHSM2_CONF",
                     "CREDENTIALS_DIRECTORY", "allow_other", ".metrics"):
            assert word in text, word
    else:
        for word in ("--format", "--version", "SOFTHSM2_CONF"):
            assert word in text, word


def test_units_of_a_non_default_prefix(tmp_path):
    """meson setup --prefix=/opt/hsmfs (configuring is enough: the units
    are generated then): both units run the binaries of that prefix."""
    b = tmp_path / "build-opt"
    run(["meson", "setup", str(b), str(SRC), "--prefix=/opt/hsmfs"], timeout=300)
    for unit in ("hsmfs.service", "hsmfs@.service"):
        text = (b / unit).read_text()
        assert "ExecStart=/opt/hsmfs/sbin/hsmfs " in text, unit
        assert "ExecReload=/opt/hsmfs/bin/hsmfs-tool reload " in text, unit
        assert "file:/opt/hsmfs/share/doc/hsmfs/README.md" in text, unit
        assert "/usr/local" not in text, unit


def test_unit_clears_a_dead_mount_but_not_a_live_one(inst, mount):
    """The units' ExecStartPre, run as systemd would (its $$ is a literal
    $, the variable comes from the environment): a live mount at
    HSMFS_MOUNT is left alone, a dead one left by a crash is detached."""
    import shlex
    import signal
    from helpers import is_mounted, wait_for
    for unit in ("hsmfs.service", "hsmfs@.service"):
        text = inst.path(inst.units / unit).read_text()
        pre = [ln.split("=", 1)[1] for ln in text.splitlines()
               if ln.startswith("ExecStartPre=-") and "fusermount3" in ln]
        assert len(pre) == 1, unit
        argv = shlex.split(pre[0][1:].replace("$$", "$"))
        env = dict(os.environ, HSMFS_MOUNT=mount.mnt)
        subprocess.run(argv, env=env, timeout=60)
        assert is_mounted(mount.mnt), f"{unit} detached a live mount"
        assert os.path.exists(mount.path(".status"))
    mount.proc.send_signal(signal.SIGKILL)
    mount.proc.wait(timeout=30)
    mount.proc = None
    mount._log.close()
    subprocess.run(argv, env=env, timeout=60)
    wait_for(lambda: not is_mounted(mount.mnt), what="dead mount cleared")
    mount.start()
