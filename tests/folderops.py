"""One operation per folder, as an application does it (open, write, close;
raw os calls so that the errno of close() is seen), plus the checks the
reliability tests share: a small SMTP relay, zip making and verifying,
store scanning. Used by test_faults.py, test_kill.py, test_nospace.py."""
import errno
import io
import os
import socket
import subprocess
import threading
import zipfile

from conftest import TOOL


def write(path, data, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
    """Write data in one open/close. Returns None on success or the errno
    of the first failing call (close() included: that is where hsmfs
    signs, encrypts and commits)."""
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        return e.errno
    err = None
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view[:1 << 20])
            view = view[n:]
    except OSError as e:
        err = e.errno
    try:
        os.close(fd)
    except OSError as e:
        err = err or e.errno
    return err


def append(path, data):
    return write(path, data, os.O_WRONLY | os.O_CREAT | os.O_APPEND)


def read(path):
    """(bytes, None) or (None, errno)."""
    try:
        with open(path, "rb") as f:
            return f.read(), None
    except OSError as e:
        return None, e.errno


def errname(e):
    return errno.errorcode.get(e, str(e)) if e else "ok"


def make_zip(n_entries=3, seed=b"x", size=2000):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(n_entries):
            zf.writestr(f"config/e{i}.xml", (seed + b"%d " % i) * (size // 8 + 1))
    return buf.getvalue()


def verify_zip(hsm, data_or_path, config=None):
    """hsmfs-tool verify-zip against the test CA: (ok, output)."""
    path = data_or_path
    if isinstance(data_or_path, bytes):
        import tempfile
        fd, path = tempfile.mkstemp(suffix=".zip")
        os.write(fd, data_or_path)
        os.close(fd)
    try:
        cmd = [TOOL, "verify-zip", "--truststore", hsm.truststore]
        if config:
            cmd += ["-o", f"config={config}"]
        p = subprocess.run(cmd + [path], capture_output=True, text=True, timeout=60)
        return p.returncode == 0, p.stdout + p.stderr
    finally:
        if isinstance(data_or_path, bytes):
            os.unlink(path)


def verify_zips(hsm, paths, chunk=200):
    """hsmfs-tool verify-zip over many files, one process per chunk:
    {path: (ok, verdict or error)}. A file the tool could not read gets
    (False, its stderr)."""
    out = {}
    paths = list(paths)
    for i in range(0, len(paths), chunk):
        part = paths[i:i + chunk]
        p = subprocess.run([TOOL, "verify-zip", "--truststore", hsm.truststore] + part,
                           capture_output=True, text=True, timeout=600)
        lines = p.stdout.splitlines()
        if len(part) == 1:
            lines = [f"{part[0]}: {ln}" for ln in lines]
        for ln in lines:
            path, _, verdict = ln.partition(": ")
            out[path] = (verdict.startswith("valid "), verdict)
        for path in part:
            out.setdefault(path, (False, p.stderr.strip() or "no verdict"))
    return out


def mail_message(name, to="rcpt@example.org", body="hello"):
    return (f"From: sender@example.org\nTo: {to}\nSubject: {name}\n\n{body}\n").encode()


def store_files(store):
    for dirpath, dirnames, filenames in os.walk(store):
        for n in dirnames + filenames:
            yield os.path.join(dirpath, n)


def store_contains(store, needle):
    """Paths of store files whose bytes contain needle."""
    hits = []
    for p in store_files(store):
        if os.path.isfile(p) and not os.path.islink(p):
            try:
                with open(p, "rb") as f:
                    if needle in f.read():
                        hits.append(p)
            except OSError:
                pass
    return hits


def store_blob(store):
    """Every store file's bytes, concatenated (one read for many needles)."""
    parts = []
    for p in store_files(store):
        if os.path.isfile(p) and not os.path.islink(p):
            try:
                with open(p, "rb") as f:
                    parts.append(f.read())
            except OSError:
                pass
    return b"\0".join(parts)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """A real SMTP relay (aiosmtpd) that keeps what it accepts."""

    def __init__(self):
        from aiosmtpd.controller import Controller
        self.port = free_port()
        self.messages = []
        self.lock = threading.Lock()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port,
                                     ready_timeout=10)

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                  bytes(envelope.original_content)))
        return "250 2.0.0 Ok: queued"

    @property
    def url(self):
        return f"smtp://127.0.0.1:{self.port}"

    def start(self):
        self.controller.start()
        return self

    def stop(self):
        self.controller.stop()

    def subjects(self):
        with self.lock:
            out = []
            for _, _, data in self.messages:
                for line in data.split(b"\r\n"):
                    if line.lower().startswith(b"subject: "):
                        out.append(line[9:].decode())
                        break
            return out


def smime_verify(hsm, data):
    """openssl smime -verify against the test CA: (ok, output)."""
    p = subprocess.run(["openssl", "smime", "-verify", "-CAfile", hsm.ca_cert,
                        "-purpose", "any"], input=data, capture_output=True,
                       timeout=60)
    return p.returncode == 0, p.stderr.decode(errors="replace")
