"""Command-line details (issue 14): hsmfs's own --help, -V on both
programs, exit status 2 for a missing config, no libfuse warning at start,
and a non-root Identity Manager through allow_other,uid=,gid=."""
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import HSMFS, TOOL, Mount
from helpers import run

ZIP = Path(__file__).parent / "data" / "jar" / "signed-by-jarsigner.zip"


def test_hsmfs_help_is_its_own():
    p = run([HSMFS, "--help"])
    assert "-o config=FILE" in p.stdout and "max_threads=N" in p.stdout
    assert "(default 64)" in p.stdout
    # Not libfuse's text, whose max_threads default (10) is not ours.
    assert "default: 10" not in p.stdout + p.stderr
    assert p.stderr == ""


@pytest.mark.parametrize("prog", [HSMFS, TOOL])
@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(prog, flag):
    p = run([prog, flag])
    name = os.path.basename(prog)
    assert p.stdout.startswith(f"{name} ") and p.stdout.count("\n") == 1


def test_check_missing_config_is_an_environment_error(tmp_path):
    p = run([TOOL, "check", "-o", f"config={tmp_path / 'nope.xml'}"], check=False)
    assert p.returncode == 2 and "nope.xml" in p.stderr
    # A config that reads but does not check is a failed check.
    bad = tmp_path / "bad.xml"
    bad.write_text("<engineSignEncrypt><oops></engineSignEncrypt>\n")
    p = run([TOOL, "check", "-o", f"config={bad}"], check=False)
    assert p.returncode == 1, p.stderr


def test_start_prints_no_libfuse_warning(mount):
    assert os.path.exists(mount.path(".status"))
    log = mount.log()
    assert "Ignoring invalid" not in log and "max threads" not in log, log


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to act as another user")
def test_non_root_identity_manager(hsm, tmp_path):
    """README: allow_other,uid=,gid= give the server's user every view
    with the documented modes; a third user is kept out of the secrets."""
    idm, other = 4242, 4343
    # The server's user must be able to reach the mount point: outside
    # pytest's private (0700) temporary tree.
    root = tempfile.mkdtemp(prefix="hsmfs-idm-")
    os.chmod(root, 0o755)
    m = Mount(hsm, root, hsm.config(tmp_path / "cfg.xml"),
              store=tmp_path / "store", opts=f"allow_other,uid={idm},gid={idm}")
    try:
        m.start()
        _check_views(m, idm, other)
        m.unmount()
    finally:
        m.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def _check_views(m, idm, other):
    def as_user(uid, *cmd):
        return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}",
                               "--clear-groups", *cmd], capture_output=True,
                              timeout=60)

    for d in ("", "sign-out", "verify-in", "fields", "history", "mail"):
        st = os.stat(m.path(d))
        assert (st.st_uid, st.st_gid) == (idm, idm), d
        assert stat.S_IMODE(st.st_mode) == 0o755, d
    # The server writes a field, a history record and a zip as itself.
    p = as_user(idm, "sh", "-c", f"printf s3cret > {m.path('fields', 'pw')} && "
                f"echo rec >> {m.path('history', 'obj')}")
    assert p.returncode == 0, p.stderr
    assert as_user(idm, "cp", str(ZIP), m.path("sign-out", "a.zip")).returncode == 0
    assert stat.S_IMODE(os.stat(m.path("fields", "pw")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(m.path("history", "obj")).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(m.path("sign-out", "a.zip")).st_mode) == 0o644
    assert as_user(idm, "cat", m.path("fields", "pw")).stdout == b"s3cret"
    assert as_user(idm, "cat", m.path("history", "obj")).stdout == b"rec\n"
    # Another local user: no secret (0600), and no writes anywhere.
    p = as_user(other, "cat", m.path("fields", "pw"))
    assert p.returncode != 0 and b"Permission denied" in p.stderr
    for f in ("history/obj", "fields/new", "sign-out/b.zip", "mail/m"):
        p = as_user(other, "sh", "-c", f"echo x >> {m.path(f)}")
        assert p.returncode != 0 and b"Permission denied" in p.stderr, f
    # The rest of the README's table.
    for f, mode in ((".status", 0o444), (".metrics", 0o444),
                    ("fields/.sealed/pw", 0o600), ("history/.journal/obj", 0o444)):
        st = os.stat(m.path(f))
        assert stat.S_IMODE(st.st_mode) == mode and st.st_uid == idm, (f, oct(st.st_mode))
    p = as_user(other, "cat", m.path(".metrics"))
    assert p.returncode == 0 and b"hsmfs_info" in p.stdout, p.stderr
    p = as_user(other, "cat", m.path("fields", ".sealed", "pw"))
    assert p.returncode != 0 and b"Permission denied" in p.stderr
