"""/mail on the shared store through real mounts (SPEC §9, docs/mail.md
"Shared queue"): two daemons A and B on one PostgreSQL 15 database
(tests/shared_nodes.py) and an SMTP sink (test_mail.Relay, aiosmtpd in
this process). One delivery per message for the cluster, sent/ and
failed/ seen on both nodes, a node killed before and during delivery
(duplicates counted by Message-ID in the sink), the database stopped and
started again without remount."""
import asyncio
import email
import errno
import os
import time

import pytest

import pgcluster
from pgcluster import pg  # noqa: F401 (fixture)
from folderops import write as fwrite
from helpers import wait_for
from shared_nodes import nodes  # noqa: F401 (fixture)
from test_mail import Relay, message, status

pytestmark = pgcluster.requires_pg




@pytest.fixture
def relay():
    r = Relay().start()
    yield r
    r.stop()


def node(nodes, name, relay=None, port=None, **extra):
    o = {"mail_retry": 1}
    if relay is not None or port is not None:
        o["smtp"] = relay.url if relay is not None else f"smtp://127.0.0.1:{port}"
    o.update(extra)
    return nodes.mount(name, extra=o)


def put(m, name, data):
    e = fwrite(m.path("mail", name), data)
    assert e is None, f"write mail/{name}: {errno.errorcode.get(e, e)}\n{m.log()}"


def ls(m, sub=None):
    return sorted(os.listdir(m.path("mail", sub) if sub else m.path("mail")))


def message_ids(relay):
    with relay.lock:
        return [email.message_from_bytes(d)["Message-ID"]
                for _, _, d in relay.messages]


def duplicates(ids):
    return len(ids) - len(set(ids))


def test_written_on_a_delivered_once_sent_on_both(nodes, relay):
    a, b = node(nodes, "A", relay), node(nodes, "B", relay)
    for i in range(5):
        put(a, f"m{i}", message(subject=f"one {i}"))
    want = [f"m{i}" for i in range(5)]
    wait_for(lambda: ls(a, "sent") == want and ls(b, "sent") == want,
             timeout=60, what="sent/ on both nodes")
    ids = message_ids(relay)
    assert len(ids) == 5 and duplicates(ids) == 0, ids
    assert relay.data_calls == 5
    assert ls(a) == ls(b) == ["failed", "sent"]
    # The bytes in sent/ are the same on both nodes.
    for n in want:
        assert open(a.path("mail", "sent", n), "rb").read() == \
            open(b.path("mail", "sent", n), "rb").read()
    assert int(status(a)["mail.queued"]) == 0 == int(status(b)["mail.queued"])


def test_a_killed_before_delivery_b_delivers(nodes, relay):
    # A has no relay: its sender never claims, so what it queued waits
    # in the database when it dies.
    a = node(nodes, "A")
    for i in range(10):
        put(a, f"k{i}", message(subject=f"kill {i}"))
    assert status(a)["mail.queued"] == "10"
    a.kill9()
    b = node(nodes, "B", relay)
    want = [f"k{i}" for i in range(10)]
    wait_for(lambda: ls(b, "sent") == want, timeout=60, what="B delivers")
    ids = message_ids(relay)
    print(f"killed before delivery: {len(ids)} deliveries, "
          f"{duplicates(ids)} duplicates")
    assert len(ids) == 10 and duplicates(ids) == 0, ids
    subjects = sorted(email.message_from_bytes(d)["Subject"]
                      for _, _, d in relay.messages)
    assert subjects == sorted(f"kill {i}" for i in range(10))
    a.start()
    assert ls(a, "sent") == want


class HangingRelay(Relay):
    """Records the first message at DATA, then does not answer: the sender
    dies while waiting for the 250 the relay would have given."""

    def __init__(self):
        super().__init__()
        self.hang = asyncio.Event()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.data_calls += 1
            first = self.data_calls == 1
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                  bytes(envelope.original_content)))
        if first:
            await asyncio.sleep(3600)
        return "250 2.0.0 Ok: queued"


def test_a_killed_mid_send_lease_expires_b_delivers(nodes):
    relay = HangingRelay().start()
    try:
        a = node(nodes, "A", relay, mail_lease=3)
        put(a, "mid", message(subject="mid-send"))
        wait_for(lambda: relay.data_calls == 1, timeout=30, what="A sends")
        a.kill9()
        t0 = time.monotonic()
        b = node(nodes, "B", relay)
        wait_for(lambda: ls(b, "sent") == ["mid"], timeout=60,
                 what="B delivers after A's lease")
        took = time.monotonic() - t0
        ids = message_ids(relay)
        print(f"killed mid-send: {len(ids)} deliveries, {duplicates(ids)} "
              f"duplicate(s), B delivered {took:.1f} s after the kill")
        # At least once: the relay had A's copy; B sends the same bytes
        # with the same Message-ID. Exactly one duplicate, recognisable.
        assert len(ids) == 2 and duplicates(ids) == 1, ids
        assert relay.messages[0][2] == relay.messages[1][2]
    finally:
        relay.stop()


def test_failed_on_one_node_visible_on_the_other(nodes, relay):
    a, b = node(nodes, "A", relay), node(nodes, "B", relay)
    relay.replies = ["550 5.7.1 Message rejected by policy"]
    put(a, "nope", message())
    wait_for(lambda: ls(b, "failed") == ["nope", "nope.error"] and
             ls(a, "failed") == ["nope", "nope.error"], timeout=30,
             what="failed/ on both nodes")
    for m in (a, b):
        assert "550 5.7.1 Message rejected by policy" in \
            open(m.path("mail", "failed", "nope.error")).read()
        assert open(m.path("mail", "failed", "nope"), "rb").read() == message()
    assert relay.count() == 0 and relay.data_calls == 1
    # Requeued on B (the relay now accepts): delivered once, sent/ on A.
    os.rename(b.path("mail", "failed", "nope"), b.path("mail", "nope"))
    wait_for(lambda: ls(a, "sent") == ["nope"], timeout=30, what="requeued")
    assert ls(a, "failed") == [] and relay.count() == 1
    # rm in failed/ on one node: gone on the other.
    relay.replies = ["550 5.7.1 Message rejected by policy"]
    put(b, "again", message(subject="again"))
    wait_for(lambda: "again" in ls(a, "failed"), timeout=30, what="failed/")
    os.unlink(a.path("mail", "failed", "again"))
    assert ls(b, "failed") == []


def test_database_stopped_then_started(nodes, pg):
    relay = Relay()             # down at first: "early" waits in the queue
    a = node(nodes, "A", port=relay.port)
    put(a, "early", message(subject="early"))
    wait_for(lambda: status(a).get("mail.last_error", "") not in ("", "none"),
             timeout=30, what="a failed attempt")
    pg.stop()
    try:
        t0 = time.monotonic()
        e = fwrite(a.path("mail", "during"), message(subject="during"))
        took = time.monotonic() - t0
        print(f"mail write with the database stopped: "
              f"{errno.errorcode.get(e, e)} after {took:.3f} s")
        # Nothing acknowledged that is not committed: close() fails.
        assert e == errno.EIO, e
        assert took < 25, took      # the documented bound (docs/scale.md)
        relay.start()
        time.sleep(3)               # the sender meets the outage, lives on
        st = status(a)
        assert st["database.state"] == "down"
        assert relay.count() == 0
    finally:
        pg.start()
    try:
        # No remount: the queued message goes out, a new one is accepted.
        wait_for(lambda: ls(a, "sent") == ["early"], timeout=60,
                 what="delivery after the database is back")
        put(a, "after", message(subject="after"))
        wait_for(lambda: ls(a, "sent") == ["after", "early"], timeout=60,
                 what="a new message")
        subjects = sorted(email.message_from_bytes(d)["Subject"]
                          for _, _, d in relay.messages)
        assert subjects == ["after", "early"]
        assert "during" not in ls(a) and "during" not in ls(a, "sent")
        assert status(a)["database.state"] == "up"
    finally:
        relay.stop()
