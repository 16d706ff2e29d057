"""Secret hygiene outside the daemon's main process (issue 12): the
pre-mount key-check child and the hsmfs-tool commands that read PINs are
not dumpable and keep their secrets in the locked secure heap; a full
secure heap is said once in the log and counted in .status.

How dumpability is seen (docs/reliability.md): PR_SET_DUMPABLE 0 shows
nowhere in /proc and root bypasses it, but the kernel makes a non-dumpable
task's /proc/PID files owned by root. So the processes run as nobody, with
pin.file a FIFO: each blocks opening it, i.e. at the moment it is about to
read the PIN, and is inspected there (owner of /proc/PID/environ, VmLck
of /proc/PID/status for the locked secure heap). A control process started
the same way keeps its own uid."""
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import conftest
from helpers import run, wait_for

NOBODY = 65534
ASUSER = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def proc_owner(pid):
    return os.stat(f"/proc/{pid}/environ").st_uid


def vmlck_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmLck:"):
                return int(line.split()[1])
    return 0


def waiting_on(pid):
    """True while pid blocks opening a FIFO (no writer yet): the kernel
    function it sleeps in, wait_for_partner (inlined into fifo_open on
    some kernels)."""
    try:
        w = Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False
    return w in ("wait_for_partner", "fifo_open")


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                st = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(st.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


@pytest.fixture
def nobody_env(hsm):
    """A copy of the token, a config whose keys read their PIN from a FIFO,
    and a store, all owned by nobody."""
    base = Path(tempfile.mkdtemp(prefix="hsmfs-secrets-"))
    os.chmod(base, 0o755)
    tokens = base / "tokens"
    shutil.copytree(Path(hsm.softhsm_conf).parent / "tokens", tokens)
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n")
    fifo = base / "pin.fifo"
    os.mkfifo(fifo, 0o600)
    pinfile = {"pin": None, "pin.file": str(fifo)}
    cfg = Path(hsm.config(base / "engineSignEncrypt.xml", key_attrs={
        k["key"]: pinfile for k in conftest.DEFAULT_DESCRIPTORS}))
    store = base / "store"
    (store / "fields").mkdir(parents=True)
    (store / "history").mkdir()
    mnt = base / "mnt"
    mnt.mkdir()
    cert = base / "cert.pem"
    shutil.copy(hsm.keys["configZipSignerCertificateV1"].cert_pem, cert)
    for p in [base, conf, cfg, fifo, cert, store, store / "fields", store / "history",
              mnt, tokens] + list(tokens.rglob("*")):
        os.chown(p, NOBODY, NOBODY)
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    yield {"base": base, "cfg": str(cfg), "store": str(store), "mnt": str(mnt),
           "fifo": str(fifo), "env": env, "cert": str(cert)}
    shutil.rmtree(base, ignore_errors=True)


def test_control_process_keeps_its_owner():
    p = subprocess.Popen(ASUSER + ["sleep", "60"])
    try:
        wait_for(lambda: proc_owner(p.pid) == NOBODY, timeout=10,
                 what="control process environ owned by its own user")
    finally:
        p.kill()
        p.wait()


def check_blocked_process(pid, what):
    with open(f"/proc/{pid}/status") as f:
        uid = next(line for line in f if line.startswith("Uid:")).split()[1:]
    assert uid == [str(NOBODY)] * 4, (what, uid)
    assert proc_owner(pid) == 0, f"{what} is dumpable"
    assert vmlck_kb(pid) > 0, f"{what} has no locked secure heap"


@pytest.mark.parametrize("cmd", ["check", "keygen", "rekey-fields",
                                 "verify-history", "verify-zip", "import-cert"])
def test_tool_commands_not_dumpable(nobody_env, cmd):
    e = nobody_env
    args = {
        "check": [],
        "keygen": ["--key", "configZipSignerCertificateV1", "--csr",
                   str(e["base"] / "x.csr")],
        "rekey-fields": [e["store"]],
        "verify-history": [e["store"], "user-1"],
        "verify-zip": [str(e["base"] / "none.zip")],
        "import-cert": ["--key", "configZipSignerCertificateV1",
                        e["cert"]],
    }[cmd]
    p = subprocess.Popen(ASUSER + [conftest.TOOL, cmd, "-o", f"config={e['cfg']}",
                                   *args], env=e["env"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        wait_for(lambda: waiting_on(p.pid) or p.poll() is not None,
                 timeout=30, what=f"{cmd} to read its PIN")
        assert p.poll() is None, p.communicate()
        check_blocked_process(p.pid, cmd)
    finally:
        p.kill()
        p.wait()


def test_key_check_child_not_dumpable(nobody_env):
    """hsmfs opens every key in a child before mounting: that child reads
    every PIN, so it is hardened right after its fork."""
    e = nobody_env
    d = subprocess.Popen(ASUSER + [conftest.HSMFS, e["store"], e["mnt"], "-f", "-o",
                                   f"config={e['cfg']}"], env=e["env"],
                         stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    try:
        kid = []

        def blocked_child():
            kid[:] = [c for c in children(d.pid) if waiting_on(c)]
            return kid or d.poll() is not None
        wait_for(blocked_child, timeout=30, what="the key-check child")
        assert d.poll() is None, d.communicate()
        check_blocked_process(kid[0], "key-check child")
    finally:
        for c in children(d.pid):
            os.kill(c, 9)
        d.kill()
        d.wait()


def test_secure_heap_exhaustion_logged_once_and_counted(mount):
    """The daemon's secure heap is 8 MiB; ten open fields of 1 MiB each
    need more: the rest goes to ordinary memory, logged once, counted in
    secmem.fallbacks, and every value is still stored intact."""
    def status():
        return dict(line.split(": ", 1) for line in
                    Path(mount.path(".status")).read_text().splitlines()
                    if ": " in line)
    assert status()["secmem.fallbacks"] == "0"
    vals = [os.urandom(1 << 20) for _ in range(10)]
    fds = []
    try:
        for i, v in enumerate(vals):
            fd = os.open(mount.path("fields", f"big{i}"),
                         os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            fds.append(fd)
            os.write(fd, v)
        assert int(status()["secmem.fallbacks"]) > 0
    finally:
        for fd in fds:
            os.close(fd)
    assert mount.log().count("secure heap exhausted") == 1
    for i in (0, 9):
        assert Path(mount.path("fields", f"big{i}")).read_bytes() == vals[i]
