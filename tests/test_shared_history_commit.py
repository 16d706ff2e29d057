"""/history on the shared store when the answer to COMMIT is lost (contract
§9, docs/scale.md "History on the database"): node A reaches PostgreSQL
through a TCP proxy that, once armed, either passes a COMMIT to the server
and drops the connection before the answer comes back (the batch
committed, the node does not know), or drops the connection instead of
passing it (the batch did not commit). The node must look its record up
by id after reconnecting: acknowledge the first (close() returns 0), fail
the second (EIO), and append nothing twice in either case."""
import errno
import os
import socket
import threading
import time

import pytest

import pgcluster
from pgcluster import pg  # noqa: F401 (fixture)
from conftest import TOOL
from helpers import run
from shared_nodes import history_append, nodes  # noqa: F401 (fixture)

pytestmark = pgcluster.requires_pg


class CommitCutter:
    """A TCP proxy to the database. arm("after"): the next client chunk
    holding COMMIT goes to the server, nothing more comes back, and both
    sides are closed 0.5 s later. arm("before"): that chunk is not passed
    on; both sides are closed at once. Then it passes everything again."""

    def __init__(self, port):
        self.port = port
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.addr = self.lsock.getsockname()
        self.mode = None
        self.fired = threading.Event()
        self.lock = threading.Lock()
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, mode):
        with self.lock:
            self.fired.clear()
            self.mode = mode

    def _take(self):
        with self.lock:
            m, self.mode = self.mode, None
            return m

    def _accept(self):
        while not self.closing:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.port))
            st = {"mute": False}
            threading.Thread(target=self._up, args=(c, s, st), daemon=True).start()
            threading.Thread(target=self._down, args=(s, c, st), daemon=True).start()

    @staticmethod
    def _close(*socks):
        for x in socks:
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            x.close()

    def _up(self, c, s, st):
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    break
                if b"COMMIT" in d and self.mode is not None:
                    m = self._take()
                    if m == "before":
                        self._close(c, s)
                        self.fired.set()
                        return
                    if m == "after":
                        st["mute"] = True
                        s.sendall(d)
                        time.sleep(0.5)
                        self._close(c, s)
                        self.fired.set()
                        return
                s.sendall(d)
        except OSError:
            pass
        self._close(c, s)

    def _down(self, s, c, st):
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                if not st["mute"]:
                    c.sendall(d)
        except OSError:
            pass
        self._close(c, s)

    def close(self):
        self.closing = True
        self.lsock.close()


append = history_append


def test_commit_answer_lost(nodes, pg):
    cut = CommitCutter(pg.port)
    try:
        uri = f"postgresql://{pgcluster.DAEMON}@127.0.0.1:{cut.addr[1]}/{nodes.db}"
        a = nodes.mount("A", extra={"shared": uri})
        b = nodes.mount("B")
        append(a, "u", b"first\n")

        # The server commits, the node never hears it: acknowledged after
        # the record was found by its id.
        cut.arm("after")
        append(a, "u", b"second\n")
        assert cut.fired.is_set(), "the proxy never saw the COMMIT"
        assert "is in the database: the batch committed" in a.log()

        # The COMMIT never reaches the server: EIO, nothing appended.
        cut.arm("before")
        with pytest.raises(OSError) as e:
            append(a, "u", b"third\n")
        assert e.value.errno == errno.EIO
        assert cut.fired.is_set()
        assert "is not in the database: the batch did not commit" in a.log()

        # The node goes on without remount; the other node agrees.
        append(a, "u", b"fourth\n")
        append(b, "u", b"fifth\n")
        want = b"first\nsecond\nfourth\nfifth\n"
        for m in (a, b):
            with open(m.path("history", "u"), "rb") as f:
                assert f.read() == want
        assert nodes.sql("SELECT count(*), count(DISTINCT record_id) FROM "
                         "hsmfs_history_records WHERE object = 'u'") == "4|4"
        p = run([TOOL, "verify-history", "-o",
                 f"config={nodes.config},shared={nodes.uri},"
                 f"shared_password={nodes.pw}", "u"], check=False)
        assert p.returncode == 0 and p.stdout.startswith("valid: u records=4 "), \
            p.stdout + p.stderr
    finally:
        cut.close()


def test_large_records(nodes):
    """A record past the 1 MiB spool threshold goes through the node-local
    spool into one row and reads back on the other node byte for byte; one
    past the shared store's 16 MiB per record is refused with EFBIG (one
    log line), and the history is unchanged."""
    a, b = nodes.mount("A"), nodes.mount("B")
    big = os.urandom(3 << 20)
    append(a, "big", big)
    with open(b.path("history", "big"), "rb") as f:
        assert f.read() == big
    fd = os.open(a.path("history", "big"), os.O_WRONLY | os.O_APPEND)
    try:
        with pytest.raises(OSError) as e:
            for _ in range(17):
                os.write(fd, b"\0" * (1 << 20))
        assert e.value.errno == errno.EFBIG
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    assert "larger than the shared store's 16 MiB per record" in a.log()
    with open(b.path("history", "big"), "rb") as f:
        assert f.read() == big
    assert nodes.sql("SELECT size FROM hsmfs_history_objects "
                     "WHERE name = 'big'") == "1"


def test_large_records_batched(nodes):
    """Six writers append 12 MiB records to one object at once: batched
    together they exceed one statement's 64 MiB of leaves, so the batch
    inserts them in several statements; every record is there once, in
    an order both nodes agree on, and the history verifies offline."""
    a, b = nodes.mount("A"), nodes.mount("B")
    recs = [bytes([65 + i]) * (12 << 20) for i in range(6)]
    errs = []

    def w(d):
        try:
            append(a, "heavy", d)
        except OSError as e:
            errs.append(e)
    ts = [threading.Thread(target=w, args=(d,)) for d in recs]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errs, errs
    with open(b.path("history", "heavy"), "rb") as f:
        got = f.read()
    assert len(got) == 6 * (12 << 20)
    parts = [got[i * (12 << 20):(i + 1) * (12 << 20)] for i in range(6)]
    assert sorted(parts) == sorted(recs)
    p = run([TOOL, "verify-history", "-o",
             f"config={nodes.config},shared={nodes.uri},"
             f"shared_password={nodes.pw}", "heavy"], check=False)
    assert p.returncode == 0 and p.stdout.startswith("valid: heavy records=6 "), \
        p.stdout + p.stderr
