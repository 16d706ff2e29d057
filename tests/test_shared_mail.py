"""The mail queue on PostgreSQL (store/mailq_pg.c, docs/mail.md "Shared
queue"): two nodes, A and B, on one database of a real PostgreSQL 15
(tests/pgcluster.py), driven at the store level by
tests/unit/test-mailq-pg.c (the two-node mount test comes with the
daemon's shared= option). Claims with FOR UPDATE SKIP LOCKED and a
lease, at-least-once after a node dies, the views of the cluster's
queue, sent/ and failed/, and a database that stops and comes back."""
import os
import subprocess
import time

import pytest

import pgcluster
from conftest import BUILD
from test_shared_db import (config, db, db_init, owner, owner_sql, pg,  # noqa: F401
                            pwfile)

PROBE = os.path.join(BUILD, "tests", "test-mailq-pg")
IO, NOTFOUND, PERM, INVALID = -1009, -1007, -1013, -1002

pytestmark = pytest.mark.skipif(not pgcluster.available(),
                                reason="postgresql-15 is not installed")


class Nodes:
    """Two mailq handles (nodes A and B) in one probe process."""

    def __init__(self, uri, pw, tmp_path):
        dirs = []
        for n in ("A", "B"):
            d = tmp_path / f"store-{n}"
            d.mkdir()
            dirs.append(str(d))
        self.p = subprocess.Popen([PROBE, uri, pw] + dirs, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        first = self.p.stdout.readline().strip()
        assert first == "open", first + self.p.stderr.read()

    def __call__(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        out = self.p.stdout.readline().strip()
        assert out, f"no answer to {line!r}"
        return out

    def ok(self, line):
        out = self(line)
        assert out == "ok" or out.startswith("ok "), f"{line!r}: {out}"
        return out[3:]

    def err(self, line, code):
        out = self(line)
        assert out.startswith(f"err {code} "), f"{line!r}: {out}"
        return out

    def close(self):
        self.p.stdin.close()
        assert self.p.wait(timeout=60) == 0
        return self.p.stderr.read()


@pytest.fixture
def nodes(pg, db, owner, config, tmp_path):
    uri, pw = owner
    db_init(config, uri, pw, role=pgcluster.DAEMON)
    dpw = pwfile(tmp_path / "daemon.pw", pgcluster.DAEMON_PW)
    n = Nodes(pg.uri(pgcluster.DAEMON, db), dpw, tmp_path)
    yield n
    n.close()


def done_rows(pg, db):
    return pg.sql("SELECT message_id, outcome, node, attempts FROM "
                  "hsmfs_mail_done ORDER BY message_id", db=db).splitlines()


def test_one_queue_for_two_nodes(pg, db, nodes):
    """Queued on A, claimed by B; A cannot claim it while B's lease runs;
    completed by B, A sees it in sent/ (the signed form); A can no longer
    complete it. The row moved in one statement: queue empty, done once."""
    nodes.ok("enq A m1 <m1@test>")
    assert nodes.ok("list B q") == "m1"
    assert nodes.ok("lease B 600") == "m1 1"
    assert nodes("lease A 600").startswith("none ")
    assert nodes.ok("find A m1").split()[:2] == ["1", "1"]      # attempts 1, leased
    nodes.err("complete A m1", NOTFOUND)                 # not A's lease
    nodes.ok("complete B m1")
    assert nodes.ok("list A q") == ""
    assert nodes.ok("list A s") == "m1"
    assert nodes.ok("exists A s m1") == "1"
    assert nodes.ok("part A s sig m1") == "6 SIG m1"
    assert nodes.ok("read A s m1") == "<m1@test> 24 6"
    assert done_rows(pg, db) == ["<m1@test>|sent|B#" +
                                 done_rows(pg, db)[0].split("|B#")[1]]
    assert pg.sql("SELECT count(*) FROM hsmfs_mail_queue", db=db) == "0"
    nodes.err("complete B m1", NOTFOUND)                 # once only
    nodes.err("remove A q m1", PERM)
    nodes.ok("remove A s m1")
    assert nodes.ok("list B s") == ""


def test_concurrent_claims_skip_locked(pg, db, nodes):
    """A and B drain 200 messages at once, each in its own thread: every
    message is claimed and completed exactly once between them."""
    for i in range(200):
        nodes.ok(f"enq A r{i:03d} <r{i}@test>")
    out = nodes.ok("race 1")
    counts = dict(kv.split("=") for kv in out.split())
    assert int(counts["A"]) + int(counts["B"]) == 200, out
    assert counts["dup"] == "0", out
    assert pg.sql("SELECT count(*), count(DISTINCT message_id) FROM "
                  "hsmfs_mail_done WHERE outcome = 'sent'", db=db) == "200|200"


def test_node_killed_mid_send(pg, db, nodes):
    """A claims a message and dies (its lease, 2 s here, never ends); B
    delivers everything else at once and that message after the lease
    expires, once (attempts 2: A's try counted). The duplicate count of
    a kill: the messages A had in flight, one per sender thread (here 1),
    recognisable by their unchanged Message-ID; nothing is lost."""
    for i in range(10):
        nodes.ok(f"enq A k{i} <k{i}@test>")
    killed = nodes.ok("lease A 2").split()[0]
    delivered = []
    while True:
        out = nodes("lease B 600")
        if out.startswith("none"):
            break
        name = out.split()[1]
        delivered.append(name)
        nodes.ok(f"complete B {name}")
    assert sorted(delivered) == sorted(f"k{i}" for i in range(10) if
                                       f"k{i}" != killed)
    # The killed node's lease expires on the database's clock: B then
    # claims the message (the wait is bounded, not asserted on).
    deadline = time.monotonic() + 60
    while True:
        out = nodes("lease B 600")
        if out.startswith("ok "):
            break
        assert out.startswith("none "), out
        assert time.monotonic() < deadline, "lease never expired"
        time.sleep(0.5)
    assert out == f"ok {killed} 2"
    nodes.ok(f"complete B {killed}")
    nodes.err(f"complete A {killed}", NOTFOUND)     # A back: too late
    rows = done_rows(pg, db)
    assert len(rows) == 10
    assert len({r.split("|")[0] for r in rows}) == 10   # each Message-ID once
    assert all(r.split("|")[2].startswith("B#") for r in rows)


def test_fail_defer_requeue_stage(pg, db, nodes):
    """The other transitions and views: defer (lease cleared, due later,
    reason kept), fail (failed/ with the reason lines), requeue (same
    Message-ID, fresh schedule), set_signed, stage/publish (node-local
    temporary), summary."""
    nodes.ok("enq A d1 <d1@test>")
    nodes.ok("enq A f1 <f1@test>")
    assert nodes.ok("summary B") == "2 0"
    first = nodes.ok("lease B 600").split()[0]
    second = nodes.ok("lease A 600").split()[0]
    assert {first, second} == {"d1", "f1"}
    h_d, h_f = ("B", "A") if first == "d1" else ("A", "B")
    nodes.ok(f"defer {h_d} d1 3600 451 try later")
    assert nodes.ok("find A d1") == "1 0 451 try later"
    assert nodes("lease A 600").startswith("none ")    # due in an hour
    nodes.ok(f"fail {h_f} f1 550 no such user")
    assert nodes.ok("list B f") == "f1"
    assert nodes.ok("summary A") == "1 1"
    reason = nodes.ok("part B f reason f1")
    assert "550 no such user|attempts: 1|queued: " in reason
    assert "message-id: <f1@test>|" in reason
    assert nodes.ok("part A f msg f1") == "24 Subject: f1||||body f1||"
    nodes.ok("requeue B f1")
    nodes.err("requeue B f1", NOTFOUND)
    assert nodes.ok("list A f") == ""
    assert nodes.ok("find A f1").startswith("0 0 queued again")
    assert nodes.ok("read A q f1") == "<f1@test> 24 6"
    nodes.ok("setsig A f1 SIGNED-AGAIN")
    assert nodes.ok("part B q sig f1") == "12 SIGNED-AGAIN"
    nodes.err("enq B f1 <other@test>", PERM)           # name queued already
    # Staged temporaries stay on their node; publish queues them once.
    nodes.ok("stage A t1.tmp <s1@test>")
    nodes.ok("stage0 A t0.tmp")
    assert nodes.ok("list A t") == "t0.tmp,t1.tmp"
    assert nodes.ok("list B t") == ""
    nodes.err("publish A t0.tmp s0", INVALID)
    nodes.ok("publish A t1.tmp s1")
    nodes.err("publish A t1.tmp s1", NOTFOUND)
    assert nodes.ok("read B q s1") == "<s1@test> 32 10"
    assert nodes.ok("list B q") == "d1,f1,s1"


def test_database_stops_and_returns(pg, db, nodes):
    """Stopped: every call fails with EIO (HSMFS_ERR_IO) at once (bounded
    by the pg deadlines), a failed lease says when to look again (the
    sender's retry), views are empty but for the leases a node holds, the
    summary is the last known one; a delivery completed meanwhile is
    recorded at the next sync (its lease still runs: not sent twice).
    Started: the same handles work again without reopening."""
    nodes.ok("enq A p1 <p1@test>")
    nodes.ok("enq A p2 <p2@test>")
    assert nodes.ok("summary A") == "2 0"
    held = nodes.ok("lease B 600").split()[0]
    other = ({"p1", "p2"} - {held}).pop()
    pg.stop()
    try:
        out = nodes.err("lease B 600", IO)
        soonest = int(out.split("soonest=")[1].split()[0])
        assert 0 < soonest <= 5
        nodes.ok(f"complete B {held}")          # delivered; recorded later
        nodes.err("sync B", IO)
        assert nodes.ok(f"find B {held}").split()[:2] == ["1", "1"]
        assert nodes(f"find A {held}") == "none"
        nodes.err("enq A p3 <p3@test>", IO)
        nodes.err("list A s", IO)
        assert nodes.ok("summary A") == "2 0"   # the last known
    finally:
        pg.start()
    nodes.ok("sync B")
    assert nodes.ok("list A s") == held
    assert nodes.ok("lease B 600") == f"{other} 1"
    nodes.ok(f"complete B {other}")
    nodes.ok("enq A p3 <p3@test>")
    assert nodes.ok("list A s") == "p1,p2"
    assert nodes.ok("list B q") == "p3"
    assert len(done_rows(pg, db)) == 2


def test_schema_1_migrates(pg, db, owner, config, tmp_path):
    """A version 1 database (its mail tables as version 1 made them, a
    queued row in them) is migrated in place by db-init: the row keeps its
    message and gets a name; a node then works on it."""
    uri, pw = owner
    db_init(config, uri, pw, role=pgcluster.DAEMON)
    p = owner_sql(pg, db, """
        DROP INDEX hsmfs_mail_queue_name, hsmfs_mail_queue_message_id,
            hsmfs_mail_done_name, hsmfs_mail_done_message_id;
        ALTER TABLE hsmfs_mail_queue DROP COLUMN name, DROP COLUMN signed,
            DROP COLUMN msg_date, ADD UNIQUE (message_id);
        ALTER TABLE hsmfs_mail_done DROP COLUMN name, DROP COLUMN signed,
            DROP COLUMN msg_date, DROP COLUMN queued;
        DELETE FROM hsmfs_schema_version WHERE version > 1;
        INSERT INTO hsmfs_mail_queue (message_id, entry)
            VALUES ('<old@test>', 'Subject: old');""")
    assert p.returncode == 0, p.stderr
    p = db_init(config, uri, pw, role=pgcluster.DAEMON)
    assert "schema version 3 migrated" in p.stdout
    name = pg.sql("SELECT name FROM hsmfs_mail_queue", db=db)
    assert name.startswith("queued-")
    dpw = pwfile(tmp_path / "daemon.pw", pgcluster.DAEMON_PW)
    n = Nodes(pg.uri(pgcluster.DAEMON, db), dpw, tmp_path)
    try:
        assert n.ok("list A q") == name
        assert n.ok(f"part B q msg {name}") == "12 Subject: old"
        assert n.ok("lease B 600") == f"{name} 1"
        n.ok(f"complete B {name}")
        n.ok("enq A new <old@test>")     # Message-ID no longer unique
    finally:
        n.close()
