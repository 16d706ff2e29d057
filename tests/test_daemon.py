"""Running one daemon per store (issue 14): the store lock, mount point
rules, start-up checks of the smtp= options, SIGHUP reload and systemd
readiness notifications."""
import errno
import os
import signal
import subprocess

import pytest

from conftest import HSMFS, TOOL
from helpers import is_mounted, run, wait_for


def start_fail(m, *extra, opts=None):
    """Run hsmfs in the foreground expecting a refusal; returns (rc, output)."""
    o = m._optstr(opts if opts is not None else m.opts)
    p = subprocess.run([HSMFS, m.store, m.mnt, "-f", "-o", o, *extra],
                       capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


# ---- store lock ----

def test_second_daemon_on_same_store_refused(mount, mount_factory):
    other = mount_factory(store=mount.store, start=False)
    rc, out = start_fail(other)
    assert rc != 0
    assert not is_mounted(other.mnt)
    assert f"in use by PID {mount.proc.pid} hsmfs" in out, out
    assert len(out.strip().splitlines()) == 1, out
    # The first mount still serves, the lock file names it.
    assert os.path.exists(mount.path(".status"))
    held = open(os.path.join(mount.store, "lock")).read().split()
    assert held[0] == str(mount.proc.pid) and held[1] == "hsmfs"
    # After an unmount the store is free again.
    mount.unmount()
    other.start()
    assert os.path.exists(other.path(".status"))


def test_daemonized_daemon_keeps_the_lock(hsm, mount_factory, tmp_path):
    m = mount_factory(start=False)
    p = run([HSMFS, m.store, m.mnt, "-o", m._optstr(None)])
    try:
        wait_for(lambda: is_mounted(m.mnt), what="mount")
        # The parent of daemonize exited: the lock moved with the child.
        other = mount_factory(store=m.store, start=False)
        rc, out = start_fail(other)
        assert rc != 0 and "in use by PID" in out, out
        pid = int(open(os.path.join(m.store, "lock")).read().split()[0])
        assert os.path.exists(f"/proc/{pid}") and pid != os.getpid()
        assert "hsmfs" in open(f"/proc/{pid}/comm").read()
    finally:
        run(["fusermount3", "-u", m.mnt])
    assert p.returncode == 0


def test_offline_rekey_holds_the_lock_mounted_rekey_cooperates(hsm, mount):
    with open(mount.path("fields", "a"), "w") as f:
        f.write("s3cret")
    # Mounted: rekey-fields works alongside the daemon (contract §4).
    out = run([TOOL, "rekey-fields", "-o", f"config={mount.config}",
               mount.store]).stdout
    assert "0 failed" in out
    mount.unmount()
    # Not mounted: a rekey in progress holds the store; a daemon is refused.
    import fcntl
    fd = os.open(os.path.join(mount.store, "lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.write(fd, b"4242 hsmfs-tool-rekey-fields\n")
        p = run([TOOL, "rekey-fields", "-o", f"config={mount.config}",
                 mount.store], check=False)
        assert p.returncode == 2 and "in use by PID 4242" in p.stderr, p.stderr
        rc, out = start_fail(mount)
        assert rc != 0 and "in use by PID 4242 hsmfs-tool-rekey-fields" in out
    finally:
        os.close(fd)
    mount.start()
    assert open(mount.path("fields", "a")).read() == "s3cret"
    settle(mount)


# ---- mount point ----

def test_nonempty_mount_point_refused_unless_nonempty(mount_factory):
    m = mount_factory(start=False)
    open(os.path.join(m.mnt, "precious"), "w").write("x")
    rc, out = start_fail(m)
    assert rc != 0 and "is not empty" in out and "-o nonempty" in out, out
    assert not is_mounted(m.mnt)
    assert not os.path.exists(os.path.join(m.store, "lock")), \
        "the store was touched before the mount point was checked"
    m.start(opts="nonempty")
    assert os.path.exists(m.path(".status"))
    m.unmount()
    assert open(os.path.join(m.mnt, "precious")).read() == "x"


def test_live_hsmfs_mount_point_refused(mount, mount_factory):
    other = mount_factory(start=False)
    other.mnt = mount.mnt
    for extra in ([], ["-o", "nonempty"]):
        rc, out = start_fail(other, *extra)
        assert rc != 0 and "already an hsmfs mount" in out, out
    # The first mount is untouched.
    assert os.path.exists(mount.path(".status"))


def test_dead_mount_explained(mount):
    mount.proc.send_signal(signal.SIGKILL)
    mount.proc.wait(timeout=30)
    mount.proc = None
    mount._log.close()
    try:
        with pytest.raises(OSError) as e:
            os.statvfs(mount.mnt)
        assert e.value.errno == errno.ENOTCONN
        rc, out = start_fail(mount)
        assert rc != 0
        assert "dead mount" in out and f"fusermount3 -uz {mount.mnt}" in out, out
    finally:
        subprocess.run(["fusermount3", "-u", "-z", mount.mnt], capture_output=True)
    wait_for(lambda: not is_mounted(mount.mnt), what="dead mount to clear")
    mount.start()


# ---- smtp= checks before mounting ----

@pytest.mark.parametrize("opts,msg", [
    ("smtp=ftp://x", "unsupported scheme"),
    ("smtp=smtp://", "no valid host"),
    ("smtp=smtp://relay:0", "port must be"),
    ("smtp=smtp://relay:99999", "port must be"),
    ("smtp=smtp://relay:25x", "unexpected \"x\""),
    ("smtp=smtp://relay:", "port must be"),
    ("smtp=smtp://relay/path", "unexpected"),
    ("smtp=smtp://relay,smtp_auth=AUTH", "needs TLS"),
    ("smtp=smtps://relay,smtp_auth=AUTH1", "user name line and a password"),
    ("smtp=smtps://relay,smtp_auth=MISSING", "No such file"),
    ("smtp=smtps://relay,smtp_ca=AUTH", "no PEM certificate"),
    ("smtp_ca=CA", "without smtp="),
])
def test_smtp_options_checked_before_mounting(mount_factory, hsm, opts, msg):
    m = mount_factory(start=False)
    auth = m.root / "auth"
    auth.write_text("user\npass\n")
    (m.root / "auth1").write_text("user only\n")
    opts = (opts.replace("AUTH1", str(m.root / "auth1"))
            .replace("AUTH", str(auth)).replace("MISSING", str(m.root / "nope"))
            .replace("CA", hsm.ca_cert))
    rc, out = start_fail(m, opts=opts)
    assert rc != 0 and msg in out, out
    assert len(out.strip().splitlines()) == 1, out
    assert not is_mounted(m.mnt)


@pytest.mark.parametrize("url", ["smtp://relay.example:2525",
                                 "smtps://127.0.0.1:465/",
                                 "smtp+starttls://[::1]:587"])
def test_good_smtp_urls_mount(mount_factory, url):
    m = mount_factory(opts=f"smtp={url}")
    assert status(m)["folder.mail"] == "ready"


# ---- SIGHUP reload ----

V2 = "encryptedFieldsCertificateV2"
V2_DESC = {"name": "EncryptedFields", "version": 2,
           "algorithm": "AES/CBC/PKCS7Padding", "size": 256, "result": "NX02",
           "key": V2, "asymCipher": "RSA/ECB/OAEPWithSHA-512AndMGF1Padding"}


def settle(m):
    """A synchronous request after a close: the file's RELEASE, which the
    kernel sends asynchronously, has been taken by the daemon before it
    answers, so an unmount right after cannot drop it (an LSan report)."""
    os.stat(m.path(".status"))


def status(m):
    out = {}
    with open(m.path(".status")) as f:
        text = f.read()
    settle(m)
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        out[k] = v
    return out


def field_version(m, name):
    import base64
    import struct
    text = open(m.path("fields", ".sealed", name)).read()
    b = base64.b64decode(text[5:].strip())
    return struct.unpack(">I", b[4:8])[0]


def write_field(m, name, value):
    with open(m.path("fields", name), "w") as f:
        f.write(value)


def test_reload_adds_encrypted_fields_v2(hsm, mount_factory):
    if V2 not in hsm.keys:
        hsm.make_key(V2, method="pkcs11-tool")
    m = mount_factory()
    write_field(m, "old", "value one")
    assert field_version(m, "old") == 1
    assert open(m.path("fields", "old")).read() == "value one"   # an unwrap
    ops_before = int(status(m)["key.encryptedFieldsCertificateV1.ops"])
    assert ops_before >= 1
    # An open writer started before the reload finishes with the old key.
    pending = open(m.path("fields", "pending"), "w")
    pending.write("written across the reload")
    hsm.config(m.config, descriptors=[V2_DESC])
    p = run([TOOL, "reload", m.mnt])
    assert p.stdout.strip() == "reload: ok"
    pending.close()
    st = status(m)
    assert st["config.reload"] == "ok" and st["config.generation"] == "2", st
    assert f"key.{V2}.backend" in st
    # The v1 key was kept open (same session, counters go on), not reopened.
    assert int(st["key.encryptedFieldsCertificateV1.ops"]) >= ops_before
    write_field(m, "new", "value two")
    assert field_version(m, "new") == 2
    assert open(m.path("fields", "old")).read() == "value one"
    assert open(m.path("fields", "pending")).read() == "written across the reload"
    assert field_version(m, "old") == 1
    # SIGHUP itself: a second reload of the same file, mount still serving.
    m.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: status(m)["config.reloads"] == "2", what="second reload")
    assert status(m)["config.generation"] == "3"
    assert m.proc.poll() is None and is_mounted(m.mnt)
    assert open(m.path("fields", "new")).read() == "value two"
    settle(m)
    assert "reloaded" in m.log()


def test_reload_adds_history_signer_v2(hsm, mount_factory):
    name = "objectHistorySignerCertificateV2"
    if name not in hsm.keys:
        hsm.make_key(name)
    m = mount_factory()
    obj = m.path("history", "user-7")
    with open(obj, "ab") as f:
        f.write(b"v1 era\n")
    x = os.getxattr(obj, "user.hsmfs.verify").decode()
    assert "objectHistorySignerCertificateV1" in x, x
    hsm.config(m.config, descriptors=[
        {"name": "ObjectHistorySigner", "version": 2, "algorithm": "SHA-256",
         "key": name}])
    run([TOOL, "reload", m.mnt])
    # The object's newest checkpoint is still the v1 one, shown as such.
    assert "objectHistorySignerCertificateV1" in \
        os.getxattr(obj, "user.hsmfs.verify").decode()
    with open(obj, "ab") as f:
        f.write(b"v2 era\n")
    assert open(obj, "rb").read() == b"v1 era\nv2 era\n"
    x = os.getxattr(obj, "user.hsmfs.verify").decode()
    assert name in x, x
    assert status(m)["history.signer"] == name
    # Offline, every checkpoint verifies with its own version's key.
    m.unmount()
    run([TOOL, "verify-history", "-o", f"config={m.config}", m.store, "user-7"])


def test_reload_under_load_and_key_removal(hsm, mount_factory):
    """Reloads while fields and history are busy: nothing in flight
    fails; a key no longer configured is closed and leaves .status."""
    import threading
    if V2 not in hsm.keys:
        hsm.make_key(V2, method="pkcs11-tool")
    m = mount_factory()
    v1_only = open(m.config).read()
    hsm.config(m.config, descriptors=[V2_DESC])
    open(m.config, "w").write(v1_only)
    both = open(m.config).read()
    errors = []

    def worker(n):
        try:
            for i in range(30):
                name = f"w{n}-{i % 3}"
                write_field(m, name, f"value {n} {i}")
                assert open(m.path("fields", name)).read() == f"value {n} {i}"
                with open(m.path("history", f"obj{n}"), "ab") as f:
                    f.write(f"record {i}\n".encode())
        except Exception as e:     # reported below, with the daemon log
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    # v1 only, then v1 and v2 (new writes v2) reloaded again and again:
    # only additions, so every field written stays readable.
    open(m.config, "w").write(v1_only)
    run([TOOL, "reload", m.mnt])
    for k in range(5):
        open(m.config, "w").write(both)
        run([TOOL, "reload", m.mnt])
    for t in threads:
        t.join()
    assert not errors, f"{errors}\n{m.log()}"
    for n in range(4):
        assert open(m.path("history", f"obj{n}"), "rb").read() == \
            b"".join(f"record {i}\n".encode() for i in range(30))
    # Only v2 configured: the v1 key is closed once unused.
    hsm.config(m.config, descriptors=[V2_DESC], omit=("EncryptedFields",))
    run([TOOL, "reload", m.mnt])
    st = status(m)
    assert "key.encryptedFieldsCertificateV1.backend" not in st
    assert f"key.{V2}.backend" in st
    write_field(m, "late", "v2 only")
    assert field_version(m, "late") == 2
    assert open(m.path("fields", "late")).read() == "v2 only"
    settle(m)


def test_broken_reload_keeps_old_config(hsm, mount_factory):
    m = mount_factory()
    write_field(m, "a", "before")
    good = open(m.config).read()
    open(m.config, "w").write(good.replace("</descriptors>", "</descriptor>"))
    p = run([TOOL, "reload", m.mnt], check=False)
    assert p.returncode == 1, p
    assert "failed" in p.stderr and "keeps serving" in p.stderr
    st = status(m)
    assert st["config.reload"].startswith("failed: ") and m.config in \
        st["config.reload"], st
    assert st["config.generation"] == "1"
    assert run([TOOL, "status", m.mnt], check=False).returncode == 1
    # The old configuration still serves reads and writes.
    assert open(m.path("fields", "a")).read() == "before"
    write_field(m, "b", "after")
    assert open(m.path("fields", "b")).read() == "after"
    fails = [ln for ln in m.log().splitlines() if "reload of" in ln]
    assert len(fails) == 1 and "previous configuration keeps serving" in fails[0]
    # A key that cannot be opened is refused the same way.
    hsm.config(m.config, descriptors=[dict(V2_DESC, key="noSuchKeyAlias")])
    p = run([TOOL, "reload", m.mnt], check=False)
    assert p.returncode == 1 and "noSuchKeyAlias" in p.stderr, p.stderr
    # Fixed: the next reload succeeds.
    open(m.config, "w").write(good)
    run([TOOL, "reload", m.mnt])
    assert status(m)["config.reload"] == "ok"


def test_reload_tool_usage(tmp_path):
    p = run([TOOL, "reload", str(tmp_path)], check=False)
    assert p.returncode == 2 and "not an hsmfs mount" in p.stderr


# ---- systemd readiness ----

def test_sd_notify_ready_reloading_stopping_watchdog(hsm, mount_factory, tmp_path):
    import socket
    m = mount_factory(start=False)
    sock_path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    s.settimeout(60)
    # A watchdog of 0.4 s: pings come at half of it.
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="400000")
    log = open(m.logfile, "ab")
    proc = subprocess.Popen([HSMFS, m.store, m.mnt, "-f", "-o", m._optstr(None)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    m.proc, m._log = proc, log
    msgs = []

    def until(word):
        while True:
            msg = s.recv(4096).decode()
            msgs.append(msg)
            if word in msg.split("\n"):
                return msg

    try:
        ready = until("READY=1")
        # READY comes once the mount answers and the keys are loaded.
        assert is_mounted(m.mnt) and "key.encryptedFieldsCertificateV1.ops" in \
            open(m.path(".status")).read()
        assert any(ln.startswith("STATUS=serving") for ln in ready.split("\n"))
        until("WATCHDOG=1")
        proc.send_signal(signal.SIGHUP)
        assert "RELOADING=1" in until("RELOADING=1")
        until("READY=1")
        run(["fusermount3", "-u", m.mnt])
        until("STOPPING=1")
        assert proc.wait(timeout=60) == 0
    finally:
        s.close()
    m.proc = None
    log.close()
    order = [w for msg in msgs for w in msg.split("\n")
             if w in ("READY=1", "RELOADING=1", "STOPPING=1")]
    assert order == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"], msgs


# ---- store and mount point overlap ----

def test_store_and_mount_point_must_not_overlap(mount_factory, tmp_path):
    m = mount_factory(start=False)
    # A mount point inside the store: the daemon's scans of its store
    # would walk into its own mount.
    os.makedirs(m.store, mode=0o700, exist_ok=True)
    inner = os.path.join(m.store, "mnt")
    os.mkdir(inner)
    m.mnt = inner
    rc, out = start_fail(m)
    assert rc != 0 and "overlap" in out, out
    assert not is_mounted(inner)
    # The same store reached through a symlink and a relative path.
    os.symlink(m.store, tmp_path / "storelink")
    p = subprocess.run([HSMFS, "storelink", os.path.relpath(inner, tmp_path),
                        "-f", "-o", m._optstr(None)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "overlap" in p.stderr, p.stderr
    os.rmdir(inner)
    assert not os.path.exists(os.path.join(m.store, "lock"))
    # A store inside the mount point would be hidden by the mount; a
    # store that did not exist is not left behind.
    m.mnt = str(m.root / "mnt")
    m.store = os.path.join(m.mnt, "store")
    rc, out = start_fail(m)
    assert rc != 0 and "overlap" in out, out
    assert os.listdir(m.mnt) == []
    # The store as the mount point itself.
    m.store = m.mnt
    rc, out = start_fail(m)
    assert rc != 0 and "overlap" in out, out
    # Side by side they mount.
    m.store = str(m.root / "store")
    m.start()
    assert os.path.exists(m.path(".status"))


def test_sighup_while_starting_becomes_a_reload(hsm, mount_factory, tmp_path):
    """A HUP sent before the mount is up (here: while the keys are being
    checked, the PIN coming from a FIFO nobody writes yet) must not kill
    the daemon; it is held back and becomes a reload once mounted."""
    import threading
    import time
    fifo = str(tmp_path / "pin.fifo")
    os.mkfifo(fifo, 0o600)
    m = mount_factory(start=False)
    names = [d["key"] for d in __import__("conftest").DEFAULT_DESCRIPTORS]
    hsm.config(m.config, key_attrs={n: {"pin": None, "pin.file": fifo}
                                    for n in names})
    m._log = open(m.logfile, "ab")
    m.proc = subprocess.Popen([HSMFS, m.store, m.mnt, "-f", "-o",
                               m._optstr(None)],
                              stdout=m._log, stderr=subprocess.STDOUT)
    children = f"/proc/{m.proc.pid}/task/{m.proc.pid}/children"
    # The key check (a child process) now waits on the FIFO.
    wait_for(lambda: m.proc.poll() is not None or
             open(children).read().strip() != "", what="key check child")
    assert m.proc.poll() is None, m.log()
    m.proc.send_signal(signal.SIGHUP)
    stop = threading.Event()

    def feed():
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:      # no reader right now
                time.sleep(0.02)
                continue
            try:
                os.write(fd, hsm.pin.encode() + b"\n")
            finally:
                os.close(fd)
            time.sleep(0.02)
    t = threading.Thread(target=feed, daemon=True)
    t.start()
    try:
        wait_for(lambda: m.proc.poll() is not None or is_mounted(m.mnt),
                 what="mount")
        assert m.proc.poll() is None, m.log()
        wait_for(lambda: status(m).get("config.reloads") == "1",
                 what="the held-back HUP to reload")
        assert status(m)["config.reload"] == "ok"
    finally:
        stop.set()
        t.join()
    m.unmount()


def test_reload_checks_a_changed_pin_source(hsm, mount_factory, tmp_path):
    """A reload that changes only where a key's PIN comes from keeps the
    logged-in session, but reads the new source: a PIN file that is not
    there is refused now, not at the next start."""
    from conftest import DEFAULT_DESCRIPTORS
    m = mount_factory()
    write_field(m, "a", "before")
    names = [d["key"] for d in DEFAULT_DESCRIPTORS]
    pinfile = str(tmp_path / "pin")
    hsm.config(m.config, key_attrs={n: {"pin": None, "pin.file": pinfile}
                                    for n in names})
    p = run([TOOL, "reload", m.mnt], check=False)
    assert p.returncode == 1 and pinfile in p.stderr, p.stderr
    assert status(m)["config.generation"] == "1"
    with open(pinfile, "w") as f:
        f.write(hsm.pin + "\n")
    os.chmod(pinfile, 0o600)
    run([TOOL, "reload", m.mnt])
    st = status(m)
    assert st["config.reload"] == "ok" and st["config.generation"] == "2", st
    assert open(m.path("fields", "a")).read() == "before"
    # The same config starts a fresh daemon.
    m.unmount()
    m.start()
    assert open(m.path("fields", "a")).read() == "before"


def test_sighup_storm_under_load(hsm, mount_factory):
    """100 HUPs in a row while fields are written and read and .metrics is
    scraped: no crash, every HUP is one reload, the state is consistent
    and the data intact."""
    import threading
    m = mount_factory()
    errors = []
    stop = threading.Event()

    def writer(i):
        n = 0
        while not stop.is_set():
            try:
                write_field(m, f"w{i}", f"value {i} {n}")
                assert open(m.path("fields", f"w{i}")).read() == \
                    f"value {i} {n}"
                n += 1
            except Exception as e:      # reported below
                errors.append(repr(e))
                return

    def scraper():
        while not stop.is_set():
            try:
                text = open(m.path(".metrics")).read()
                assert text.endswith("\n") and "hsmfs_" in text
            except Exception as e:
                errors.append(repr(e))
                return
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    threads.append(threading.Thread(target=scraper))
    for t in threads:
        t.start()
    try:
        for _ in range(100):
            m.proc.send_signal(signal.SIGHUP)
        # HUPs that arrive while one is pending coalesce (signals do not
        # queue); one more, waited for, ends the storm.
        assert run([TOOL, "reload", m.mnt]).stdout.strip() == "reload: ok"
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert m.proc.poll() is None, m.log()
    assert not errors, errors
    st = status(m)
    reloads = int(st["config.reloads"])
    assert 1 <= reloads <= 101, st
    assert st["config.reload"] == "ok", st
    assert st["config.generation"] == str(reloads + 1), st
    settle(m)
    m.unmount()
    m.start()
    for i in range(3):
        assert open(m.path("fields", f"w{i}")).read().startswith(f"value {i} ")


def test_reload_tool_waits_past_a_reload_in_progress(hsm, mount_factory,
                                                     tmp_path):
    """hsmfs-tool reload while another reload is still reading the old
    files (here: a new key whose PIN comes from a FIFO nobody writes yet)
    reports the outcome of a reload that read the files after it was
    asked, not the one in progress."""
    import threading
    import time
    if V2 not in hsm.keys:
        hsm.make_key(V2, method="pkcs11-tool")
    fifo1, fifo2 = str(tmp_path / "pin1"), str(tmp_path / "pin2")
    os.mkfifo(fifo1, 0o600)
    os.mkfifo(fifo2, 0o600)
    m = mount_factory()
    hsm.config(m.config, descriptors=[V2_DESC],
               key_attrs={V2: {"pin": None, "pin.file": fifo1}})
    m.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: status(m)["config.reloading"] == "yes",
             what="a reload in progress")
    # The operator's edit, then the tool: a key that does not exist (its
    # PIN from a second FIFO, so that this reload is slow too).
    bad = dict(V2_DESC, version=3, key="noSuchKeyAlias")
    hsm.config(m.config, descriptors=[V2_DESC, bad],
               key_attrs={V2: {"pin": None, "pin.file": fifo1},
                          "noSuchKeyAlias": {"pin": None, "pin.file": fifo2}})
    out = {}

    def tool():
        out["p"] = run([TOOL, "reload", m.mnt], check=False)
    t = threading.Thread(target=tool)
    t.start()
    try:
        time.sleep(1)        # the tool looks and signals meanwhile
        for fifo, reloads in ((fifo1, "1"), (fifo2, "2")):
            fd = os.open(fifo, os.O_WRONLY)
            os.write(fd, hsm.pin.encode() + b"\n")
            os.close(fd)
            wait_for(lambda: status(m)["config.reloads"] == reloads,
                     what=f"reload {reloads}")
    finally:
        t.join(timeout=120)
    p = out["p"]
    assert p.returncode == 1 and "noSuchKeyAlias" in p.stderr, (p.stdout,
                                                                p.stderr)
    st = status(m)
    assert st["config.generation"] == "2" and st["config.reloading"] == "no"


def test_planted_lock_symlink_refused(mount_factory, tmp_path):
    """STORE/lock as a symlink (planted by someone who could write the
    store) is not followed: the start is refused and the target untouched."""
    m = mount_factory(start=False)
    os.makedirs(m.store, mode=0o700, exist_ok=True)
    target = tmp_path / "victim"
    target.write_text("precious\n")
    os.symlink(target, os.path.join(m.store, "lock"))
    rc, out = start_fail(m)
    assert rc != 0 and "cannot lock" in out, out
    assert len(out.strip().splitlines()) == 1, out
    assert not is_mounted(m.mnt)
    assert target.read_text() == "precious\n"
    os.unlink(os.path.join(m.store, "lock"))
    m.start()
    assert os.path.exists(m.path(".status"))


@pytest.mark.parametrize("stop", ["SIGTERM", "fusermount3"])
def test_sighup_storm_while_stopping(mount_factory, stop):
    """HUPs keep coming while the daemon unmounts (STOPPING): it exits 0,
    unmounted, and the store is free for the next start."""
    import threading
    m = mount_factory()
    write_field(m, "a", "kept")
    settle(m)
    done = threading.Event()
    # A pidfd: no HUP can reach another process that reuses the PID.
    pidfd = os.pidfd_open(m.proc.pid)

    def storm():
        while not done.is_set():
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGHUP)
            except ProcessLookupError:
                return
    t = threading.Thread(target=storm)
    t.start()
    try:
        if stop == "SIGTERM":
            m.proc.send_signal(signal.SIGTERM)
        else:
            run(["fusermount3", "-u", m.mnt])
        rc = m.proc.wait(timeout=60)
    finally:
        done.set()
        t.join()
        os.close(pidfd)
    m.proc = None
    m._log.close()
    assert rc == 0, m.log()
    assert not is_mounted(m.mnt)
    m.start()
    assert open(m.path("fields", "a")).read() == "kept"
