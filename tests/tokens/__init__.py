"""Token adapters for the pytest suite: one small class per PKCS#11
implementation. Each creates an initialised token with a user PIN under
the test's temporary directory, starts the services it needs there, and
stops them in close(). The suite's Hsm (tests/conftest.py) then generates
the four keys on it (non-extractable), issues the certificates and writes
configurations; nothing below knows about hsmfs.

HSMFS_TOKEN selects the implementation for a test session:
  softhsm  SoftHSM 2 in-process (default)
  remote   SoftHSM behind `p11-kit server`; hsmfs loads p11-kit-client.so
           (every call a round trip over a unix socket; the server can die
           and come back: stop_server()/start_server())
  tpm2     tpm2-pkcs11 on a software TPM: swtpm + a private D-Bus session
           bus + tpm2-abrmd, store made with tpm2_ptool
"""
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

# Token-independent mount tests: the test files (one per folder, plus the
# HSM fault tests) that run on every implementation. test_tokens.py makes
# its own remote and TPM tokens: it runs once, in the SoftHSM suite.
# On HSMFS_TOKEN=remote|tpm2 the suite runs only these (the others are
# deselected, not skipped); SOFTHSM_ONLY lists the tests in them that rely
# on SoftHSM itself. conftest.py marks the selected ones `mount`.
MOUNT_TEST_FILES = ("test_zip.py", "test_fields.py", "test_history.py",
                    "test_mail.py", "test_faults.py", "test_mount.py")
SOFTHSM_ONLY = {
    # 8 s of random faults under load: SoftHSM's run covers the logic.
    "test_faults.py::test_soak_random_faults_under_load",
}


def is_mount_test(nodeid):
    """nodeid: "tests/test_x.py::test_y[param]"."""
    path, _, name = nodeid.partition("::")
    f = os.path.basename(path)
    return f in MOUNT_TEST_FILES and \
        f"{f}::{name.split('[')[0]}" not in SOFTHSM_ONLY


SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
P11KIT_CLIENT = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
TPM2_PKCS11 = "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so"

KINDS = ("softhsm", "remote", "tpm2")


def kind():
    k = os.environ.get("HSMFS_TOKEN", "softhsm") or "softhsm"
    if k not in KINDS:
        raise ValueError(f"HSMFS_TOKEN={k}: use one of {', '.join(KINDS)}")
    return k


def _run(cmd, env=None, check=True, timeout=120):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd!r} exited {p.returncode}\n"
                             f"stdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def _wait(pred, what, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def free_port_pair():
    """Two consecutive free loopback TCP ports (swtpm: server, ctrl)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p >= 65535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue
    raise AssertionError("no two consecutive free loopback ports")


def _kill_group(proc, sig=signal.SIGTERM, timeout=10):
    """A service started with start_new_session=True: its whole process
    group (p11-kit server forks a child per client connection)."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _wait(lambda: not _group_alive(proc.pid), "process group to exit")


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class Token:
    """What the suite needs of a token. env: variables every process
    (tools, the daemon) needs to reach it; they are put in os.environ."""
    kind = "?"
    module = None            # locationValue of the keys
    by_label = False         # configs select the token by tokenLabel
    native_oaep_sha384 = False

    def __init__(self, root: Path, label="hsmfs-test", pin="1234", so_pin="5678"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.token_label = label
        self.pin = pin
        self.so_pin = so_pin
        self.slot = None
        self.env = {}

    def apply_env(self):
        os.environ.update(self.env)

    def run(self, cmd, **kw):
        """A command with this token's variables (whatever os.environ
        holds meanwhile: another token may have been made since)."""
        return _run(cmd, env=dict(os.environ, **self.env), **kw)

    def close(self):
        pass


class SoftHsmToken(Token):
    kind = "softhsm"
    module = SOFTHSM

    def __init__(self, root, **kw):
        super().__init__(root, **kw)
        tokdir = self.root / "tokens"
        tokdir.mkdir()
        self.softhsm_conf = str(self.root / "softhsm2.conf")
        Path(self.softhsm_conf).write_text(
            f"directories.tokendir = {tokdir}\nobjectstore.backend = file\n"
            "log.level = ERROR\nslots.removable = false\n")
        self.env = {"SOFTHSM2_CONF": self.softhsm_conf}
        self.apply_env()
        self.slot = self.init_token(self.token_label)

    def init_token(self, label):
        out = self.run(["softhsm2-util", "--init-token", "--free", "--label", label,
                    "--so-pin", self.so_pin, "--pin", self.pin]).stdout
        return int(out.strip().split()[-1])


class RemoteToken(SoftHsmToken):
    """SoftHSM exported by `p11-kit server` over a unix socket. The server
    runs in its own process group (it forks one child per connection):
    stop_server() kills the whole group, as an outage does. provider:
    the module the server loads (SoftHSM, or the fault shim wrapping it
    to count calls on the server's side)."""
    kind = "remote"
    module = P11KIT_CLIENT
    by_label = True

    def __init__(self, root, provider=SOFTHSM, provider_env=None, **kw):
        super().__init__(root, **kw)
        self.sock = str(self.root / "p11kit.sock")
        self.provider = provider
        self.provider_env = dict(provider_env or {})
        self.exported = [self.token_label]
        self.server = None
        self.env["P11_KIT_SERVER_ADDRESS"] = f"unix:path={self.sock}"
        self.apply_env()
        self.start_server()
        self.slot = self.client_slot()

    def start_server(self, tokens=None):
        """Export tokens (labels, in this order: the client numbers its
        slots by it) through a fresh server."""
        assert self.server is None
        if tokens is not None:
            self.exported = list(tokens)
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        env = dict(os.environ, **self.env, **self.provider_env)
        env.pop("P11_KIT_SERVER_ADDRESS", None)
        log = open(self.root / "p11kit-server.log", "ab")
        self.server = subprocess.Popen(
            ["p11-kit", "server", "-f", "-n", self.sock, "--provider",
             self.provider] + [f"pkcs11:token={t}" for t in self.exported],
            stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
        log.close()
        _wait(lambda: os.path.exists(self.sock) or self.server.poll() is not None,
              "p11-kit server socket")
        if self.server.poll() is not None:
            raise AssertionError("p11-kit server exited: " +
                                 (self.root / "p11kit-server.log").read_text())

    def stop_server(self):
        """The outage: SIGKILL to the listener and every per-client child."""
        if self.server is not None:
            _kill_group(self.server, signal.SIGKILL)
            self.server = None

    def client_slot(self):
        out = self.run(["pkcs11-tool", "--module", self.module, "-L"]).stdout
        slot = None
        for line in out.splitlines():
            if line.startswith("Slot ") and "(0x" in line:
                slot = int(line.split("(0x")[1].split(")")[0], 16)
            if "token label" in line and line.split(":", 1)[1].strip() == self.token_label:
                return slot
        raise AssertionError(f"token {self.token_label} not seen by the client:\n{out}")

    def close(self):
        self.stop_server()


class Tpm2Token(Token):
    """tpm2-pkcs11 on swtpm. tpm2-abrmd (a resource manager) is needed:
    with the direct TCTI the module runs out of TPM object contexts. It
    talks D-Bus, so a private session bus runs under the test directory."""
    kind = "tpm2"
    module = TPM2_PKCS11
    by_label = True
    native_oaep_sha384 = True

    def __init__(self, root, **kw):
        super().__init__(root, **kw)
        self.procs = []
        self.dbus_pid = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self):
        state = self.root / "tpmstate"
        state.mkdir()
        self.store = self.root / "tpm2-pkcs11"
        self.store.mkdir()
        for attempt in range(5):
            # Free when probed, but another process may take a port before
            # swtpm binds it: then swtpm exits and we try other ports.
            port = free_port_pair()
            log = open(self.root / "swtpm.log", "ab")
            swtpm = subprocess.Popen(
                ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
                 "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                 "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                 "--flags", "not-need-init,startup-clear"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()

            def listening():
                if swtpm.poll() is not None:
                    return True
                try:
                    socket.create_connection(("127.0.0.1", port),
                                             timeout=0.2).close()
                    return True
                except OSError:
                    return False
            _wait(listening, "swtpm")
            if swtpm.poll() is None:
                break
        else:
            raise AssertionError("swtpm did not start: " +
                                 (self.root / "swtpm.log").read_text())
        self.procs.append(swtpm)
        # A private session bus: its address goes to abrmd and the module.
        out = _run(["dbus-daemon", "--session", "--fork", "--print-address=1",
                    "--print-pid=1", f"--address=unix:path={self.root}/dbus.sock"]
                   ).stdout.split()
        bus, self.dbus_pid = out[0], int(out[1])
        self.env = {"DBUS_SESSION_BUS_ADDRESS": bus,
                    "TPM2_PKCS11_TCTI": "tabrmd:bus_type=session",
                    "TPM2TOOLS_TCTI": "tabrmd:bus_type=session",
                    "TPM2_PKCS11_STORE": str(self.store),
                    "TSS2_LOG": "all+NONE"}
        self.apply_env()
        log = open(self.root / "abrmd.log", "ab")
        self.procs.append(subprocess.Popen(
            ["tpm2-abrmd", "--session", "--allow-root",
             f"--tcti=swtpm:host=127.0.0.1,port={port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        log.close()
        _wait(lambda: _run(["tpm2_getcap", "-T", "tabrmd:bus_type=session",
                            "properties-fixed"], check=False).returncode == 0,
              "tpm2-abrmd")
        _run(["tpm2_ptool", "init", f"--path={self.store}"])
        _run(["tpm2_ptool", "addtoken", "--pid=1", f"--label={self.token_label}",
              f"--sopin={self.so_pin}", f"--userpin={self.pin}",
              f"--path={self.store}"])

    def close(self):
        for p in reversed(self.procs):
            _kill_group(p)
        self.procs = []
        if self.dbus_pid:
            try:
                os.kill(self.dbus_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.dbus_pid = None


def make(root, k=None, **kw):
    k = k or kind()
    return {"softhsm": SoftHsmToken, "remote": RemoteToken,
            "tpm2": Tpm2Token}[k](root, **kw)
