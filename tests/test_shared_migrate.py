"""hsmfs-tool migrate-store (docs/scale.md "Moving a local store into the
database"): a local store built by a normal mount (fields, histories
appended with >>, mail queued while the relay is down) moved into a real
PostgreSQL 15 database (tests/pgcluster.py, tests/shared_nodes.py), run
twice (nothing moved the second time), then read back through a node
mounted with shared= on an empty STORE: the fields, the histories with
the same roots, the mail delivered from the database's queue to an SMTP
sink, verify-history on the shared store with the same roots. Also: a
field and a history of the same names with other contents in the
database (conflicts, not overwritten), a history that does not verify
(not moved), a second run after the store grew (only the new things
move), a run killed midway (completed by the next), a record changed in
the database (not verified), and a daemon on STORE (refused)."""
import email
import errno
import os
import re
import subprocess

import pytest

import pgcluster
from pgcluster import pg  # noqa: F401 (fixture)
from conftest import TOOL
from folderops import read as fread, write as fwrite
from helpers import run, wait_for
from shared_nodes import nodes  # noqa: F401 (fixture)
from test_mail import Relay, free_port, message, status

pytestmark = pgcluster.requires_pg

FIELDS = {"db-password": b"s3cret", "api-token": b"tok-" + bytes(range(40)),
          "empty-ish": b"x"}
HISTORIES = {"alpha": [b"create user 42\n", b"grant admin\n", b"revoke admin\n"],
             "beta": [b"record %d\n" % i * (i + 1) for i in range(5)]}


@pytest.fixture
def relay():
    r = Relay().start()
    yield r
    r.stop()


def put(m, area, name, data):
    e = fwrite(m.path(area, name), data)
    assert e is None, f"write {area}/{name}: {errno.errorcode.get(e, e)}\n{m.log()}"


def get(m, area, name):
    data, e = fread(m.path(area, name))
    assert e is None, f"read {area}/{name}: {errno.errorcode.get(e, e)}\n{m.log()}"
    return data


def append(m, name, data):
    with open(m.path("history", name), "ab") as f:
        f.write(data)


def local_mount(nodes, mount_factory):
    """A local store (no shared=), its relay down: mail waits in STORE."""
    return mount_factory(config=nodes.config,
                         opts={"mail_retry": 1,
                               "smtp": f"smtp://127.0.0.1:{free_port()}"})


def verify_history(config, store, obj, *extra):
    """(records, root) of `hsmfs-tool verify-history` (store None: the
    shared store named in extra)."""
    p = run([TOOL, "verify-history", "-o", f"config={config}", *extra,
             *([store] if store else []), obj], check=False)
    m = re.match(r"valid: (\S+) records=(\d+) root=(\S+)", p.stdout)
    assert p.returncode == 0 and m, p.stdout + p.stderr
    return int(m.group(2)), m.group(3)


def migrate(nodes, store, config=None):
    return run([TOOL, "migrate-store", "-o",
                f"config={config or nodes.config},shared={nodes.uri},"
                f"shared_password={nodes.pw}", store], check=False)


def lines(p, prefix):
    return sorted(ln for ln in p.stdout.splitlines() if ln.startswith(prefix))


def summary(p):
    s = [ln for ln in p.stdout.splitlines() if ln.startswith("migrate-store: ")]
    assert len(s) == 1, p.stdout + p.stderr
    return s[0]


def build_local(nodes, mount_factory):
    loc = local_mount(nodes, mount_factory)
    for name, value in FIELDS.items():
        put(loc, "fields", name, value)
    for obj, recs in HISTORIES.items():
        for r in recs:
            append(loc, obj, r)
    put(loc, "mail", "welcome", message(subject="welcome"))
    put(loc, "mail", "report", message(subject="report", to="bob@example.org"))
    assert status(loc)["mail.queued"] == "2"
    content = {obj: get(loc, "history", obj) for obj in HISTORIES}
    loc.unmount()
    return loc, content


def test_migrate_then_mount_shared(nodes, mount_factory, relay):
    loc, content = build_local(nodes, mount_factory)
    envelopes = {n: open(os.path.join(loc.store, "fields", n), "rb").read()
                 for n in FIELDS}
    roots = {o: verify_history(nodes.config, loc.store, o) for o in HISTORIES}
    msgids = {}
    for n in ("welcome", "report"):
        with open(os.path.join(loc.store, "mail", "queue", n), "rb") as f:
            assert f.read(1)                     # queued, not sent
    p = migrate(nodes, loc.store)
    out = p.stdout + p.stderr
    assert lines(p, "field ") == sorted(f"field {n}: moved" for n in FIELDS), out
    assert [ln.split(" ")[:2] + ln.split(" ")[3:4] for ln in lines(p, "mail ")] \
        == [["mail", "report", "moved"], ["mail", "welcome", "moved"]], out
    for ln in lines(p, "mail "):
        msgids[ln.split(" ")[1]] = ln.split(" ")[2].rstrip(":")
    hist = lines(p, "history ")
    assert len(hist) == 2, out
    for o, (n, root) in roots.items():
        want = f"history {o}: moved, {n} records, root {root} ("
        assert any(ln.startswith(want) for ln in hist), out
    assert p.returncode == 0, out
    # Verified from the database by the history backend after the COMMIT.
    assert all(ln.endswith("(verified before and after)") for ln in hist), out
    assert summary(p).startswith(
        "migrate-store: fields 3 moved, 0 already there, 0 conflicts; "
        "histories 2 moved, 0 already there, 0 conflicts, 0 not valid "
        "(roots verified); mail 2 moved, 0 already there, 0 conflicts"), out

    # In the database: the envelopes as they were, the same leaves at the
    # same offsets, a checkpoint naming the cluster.
    for n, env in envelopes.items():
        assert nodes.sql(f"SELECT envelope FROM hsmfs_fields WHERE name = '{n}'") \
            == env.decode().rstrip("\n")
    origin = nodes.sql("SELECT origin FROM hsmfs_cluster")
    for o, (n, root) in roots.items():
        log = open(os.path.join(loc.store, "history", "objects", f"{o}.log"),
                   "rb").read()
        rows = nodes.sql(f"SELECT seq, off, encode(leaf, 'hex') FROM "
                         f"hsmfs_history_records WHERE object = '{o}' "
                         f"ORDER BY seq").splitlines()
        assert len(rows) == n
        pos = 0
        for i, row in enumerate(rows):
            seq, off, leaf = row.split("|")
            leaf = bytes.fromhex(leaf)
            assert (int(seq), int(off)) == (i, pos)
            assert log[pos + 16:pos + 16 + len(leaf)] == leaf
            pos += 48 + len(leaf)
        assert nodes.sql(f"SELECT size, bytes, length(frontier) FROM "
                         f"hsmfs_history_objects WHERE name = '{o}'") == \
            f"{n}|{pos}|{32 * bin(n).count('1')}"
        cp = nodes.sql(f"SELECT convert_from(checkpoint, 'UTF8') FROM "
                       f"hsmfs_checkpoints WHERE object = '{o}' AND size = {n}")
        assert cp.splitlines()[:3] == [f"{origin}/history/{o}", str(n), root]
    assert nodes.sql("SELECT string_agg(name || ' ' || message_id, ',' ORDER "
                     "BY name) FROM hsmfs_mail_queue") == \
        f"report {msgids['report']},welcome {msgids['welcome']}"
    # The local queue is empty; its copies are in failed/ with the reason.
    assert os.listdir(os.path.join(loc.store, "mail", "queue")) == []
    assert sorted(os.listdir(os.path.join(loc.store, "mail", "failed"))) == \
        ["report", "welcome"]

    # Twice: nothing moves.
    p2 = migrate(nodes, loc.store)
    out2 = p2.stdout + p2.stderr
    assert p2.returncode == p.returncode, out2
    assert lines(p2, "field ") == sorted(f"field {n}: already there"
                                         for n in FIELDS), out2
    assert lines(p2, "mail ") == [], out2          # nothing left locally
    assert sorted(ln.split(",")[0] for ln in lines(p2, "history ")) == \
        [f"history {o}: already there" for o in sorted(HISTORIES)], out2
    assert summary(p2).startswith("migrate-store: fields 0 moved, 3 already "
                                  "there, 0 conflicts; histories 0 moved, 2 "
                                  "already there, 0 conflicts"), out2
    assert "mail 0 moved, 0 already there, 0 conflicts" in summary(p2), out2
    assert nodes.sql("SELECT count(*) FROM hsmfs_history_records") == \
        str(sum(len(r) for r in HISTORIES.values()))
    assert nodes.sql("SELECT count(*) FROM hsmfs_checkpoints") == "2"
    assert nodes.sql("SELECT count(*) FROM hsmfs_mail_queue") == "2"

    # A node on an empty STORE: the fields, the mail delivered from the
    # database's queue, the histories.
    a = nodes.mount("A", extra={"mail_retry": 1, "smtp": relay.url})
    for n, value in FIELDS.items():
        assert get(a, "fields", n) == value
    wait_for(lambda: sorted(os.listdir(a.path("mail", "sent"))) ==
             ["report", "welcome"], timeout=60, what="delivery from the database")
    got = sorted((email.message_from_bytes(d)["Subject"],
                  email.message_from_bytes(d)["Message-ID"])
                 for _, _, d in relay.messages)
    assert got == sorted([("report", msgids["report"]),
                          ("welcome", msgids["welcome"])]), got
    for o, (n, root) in roots.items():
        assert get(a, "history", o) == content[o]
        # verify-history on the shared store: the same root.
        assert verify_history(nodes.config, None, o, "-o",
                              f"shared={nodes.uri},shared_password={nodes.pw}") \
            == (n, root)
        append(a, o, b"after the move\n")
        assert get(a, "history", o) == content[o] + b"after the move\n"
        assert verify_history(nodes.config, None, o, "-o",
                              f"shared={nodes.uri},shared_password={nodes.pw}") \
            [0] == n + 1
    # A third run after the cluster appended: still "already there".
    p3 = migrate(nodes, loc.store)
    assert p3.returncode == 0, p3.stdout + p3.stderr
    assert sorted(ln.split(",")[0] for ln in lines(p3, "history ")) == \
        [f"history {o}: already there" for o in sorted(HISTORIES)]


def test_conflicts_not_overwritten(nodes, mount_factory):
    """A field and a history object of the same names, other contents,
    already in the database: reported, left as they are, the rest moved."""
    loc = local_mount(nodes, mount_factory)
    put(loc, "fields", "dup", b"local value")
    put(loc, "fields", "solo", b"only here")
    append(loc, "obj", b"local record\n")
    append(loc, "mine", b"local only\n")
    loc.unmount()
    b = nodes.mount("B")
    put(b, "fields", "dup", b"cluster value")
    append(b, "obj", b"cluster record 1\n")
    append(b, "obj", b"cluster record 2\n")
    theirs = nodes.sql("SELECT envelope FROM hsmfs_fields WHERE name = 'dup'")
    cluster_obj = get(b, "history", "obj")
    p = migrate(nodes, loc.store)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert lines(p, "field ") == [
        "field dup: CONFLICT: the database holds another envelope under this "
        "name; not overwritten", "field solo: moved"], out
    assert lines(p, "history ")[1] == (
        "history obj: CONFLICT: the database holds another history of that "
        "name (2 records, no checkpoint of 1 records with the local root); "
        "left untouched"), out
    assert lines(p, "history ")[0].startswith("history mine: moved"), out
    assert summary(p).startswith("migrate-store: fields 1 moved, 0 already "
                                 "there, 1 conflicts; histories 1 moved, 0 "
                                 "already there, 1 conflicts"), out
    assert get(b, "history", "obj") == cluster_obj
    assert get(b, "history", "mine").endswith(b"local only\n")
    assert nodes.sql("SELECT envelope FROM hsmfs_fields WHERE name = 'dup'") \
        == theirs
    assert get(b, "fields", "dup") == b"cluster value"
    assert get(b, "fields", "solo") == b"only here"
    # Still conflicts the second time; solo is there.
    p2 = migrate(nodes, loc.store)
    assert p2.returncode == 1 and lines(p2, "field ")[1] == \
        "field solo: already there", p2.stdout + p2.stderr


def test_history_that_does_not_verify_is_not_moved(nodes, mount_factory):
    loc = local_mount(nodes, mount_factory)
    for i in range(3):
        append(loc, "good", b"good %d\n" % i)
        append(loc, "bad", b"bad %d\n" % i)
    loc.unmount()
    log = os.path.join(loc.store, "history", "objects", "bad.log")
    with open(log, "r+b") as f:
        data = bytearray(f.read())
        data[-40] ^= 1                           # a payload byte of the last record
        f.seek(0)
        f.write(data)
    p = migrate(nodes, loc.store)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    hist = lines(p, "history ")
    assert hist[0].startswith("history bad: NOT MOVED: does not verify in the "
                              "local store: "), out
    assert hist[1].startswith("history good: moved, 3 records"), out
    assert "histories 1 moved, 0 already there, 0 conflicts, 1 not valid" in \
        summary(p), out
    assert nodes.sql("SELECT string_agg(name, ',') FROM hsmfs_history_objects") \
        == "good"
    assert nodes.sql("SELECT count(*) FROM hsmfs_history_records WHERE "
                     "object = 'bad'") == "0"


def test_database_copy_read_back(nodes, mount_factory):
    """A record changed in the database behind hsmfs's back (the owner
    lifting the append-only trigger): the next run finds the object there
    but reports it not verified from the database, exit 1."""
    loc = local_mount(nodes, mount_factory)
    for i in range(4):
        append(loc, "obj", b"record %d\n" % i)
    loc.unmount()
    p = migrate(nodes, loc.store)
    assert lines(p, "history ")[0].startswith("history obj: moved, 4 records"), \
        p.stdout + p.stderr
    nodes.sql("ALTER TABLE hsmfs_history_records DISABLE TRIGGER USER; "
              "UPDATE hsmfs_history_records SET leaf = leaf || '\\x00'::bytea "
              "WHERE object = 'obj' AND seq = 2; "
              "ALTER TABLE hsmfs_history_records ENABLE TRIGGER USER")
    p = migrate(nodes, loc.store)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    frame = 48 + 21 + len(b"record 0\n")     # frame and leaf headers
    assert lines(p, "history ") == [
        "history obj: already there, but NOT verified from the database: read "
        f"back from the database: record 3 is at offset {3 * frame}, its frame "
        f"starts at {3 * frame + 1}"], out
    assert "(1 NOT verified from the database)" in summary(p), out


def test_second_run_moves_only_what_is_new(nodes, mount_factory):
    """A run that did part of the work (here: an earlier run, then the
    store grew) is completed by the next: each field, message and object
    is one atomic step, and what the database has is skipped."""
    loc = local_mount(nodes, mount_factory)
    put(loc, "fields", "one", b"1")
    append(loc, "obj", b"first\n")
    loc.unmount()
    p = migrate(nodes, loc.store)
    assert "fields 1 moved" in summary(p), p.stdout + p.stderr
    loc.start()
    put(loc, "fields", "two", b"2")
    append(loc, "other", b"new object\n")
    put(loc, "mail", "late", message(subject="late"))
    loc.unmount()
    p = migrate(nodes, loc.store)
    out = p.stdout + p.stderr
    assert lines(p, "field ") == ["field one: already there",
                                  "field two: moved"], out
    hist = lines(p, "history ")
    assert hist[0].startswith("history obj: already there, 1 records"), out
    assert hist[1].startswith("history other: moved, 1 records"), out
    assert [ln.split(" ")[3] for ln in lines(p, "mail ")] == ["moved"], out
    assert nodes.sql("SELECT count(*) FROM hsmfs_history_records") == "2"


def test_run_killed_midway_completed_by_the_next(nodes, mount_factory):
    """migrate-store killed (SIGKILL) once it reported its first field:
    whatever it had committed stays, nothing is half there, and the next
    run moves exactly the rest (moved + already there = everything)."""
    loc = local_mount(nodes, mount_factory)
    names = [f"f{i:03d}" for i in range(150)]
    for n in names:
        put(loc, "fields", n, n.encode())
    for i in range(3):
        append(loc, "obj", b"record %d\n" % i)
    loc.unmount()
    proc = subprocess.Popen(
        [TOOL, "migrate-store", "-o", f"config={nodes.config},shared={nodes.uri},"
         f"shared_password={nodes.pw}", loc.store],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    proc.kill()
    proc.communicate(timeout=60)
    assert first.startswith("field f") and first.endswith(": moved\n"), first
    before = int(nodes.sql("SELECT count(*) FROM hsmfs_fields"))
    print(f"killed after {before} of {len(names)} fields")
    assert 1 <= before <= len(names)
    p = migrate(nodes, loc.store)
    out = p.stdout + p.stderr
    f = lines(p, "field ")
    assert len(f) == len(names), out
    assert sum(ln.endswith(": already there") for ln in f) == before, out
    assert sum(ln.endswith(": moved") for ln in f) == len(names) - before, out
    assert nodes.sql("SELECT count(*) FROM hsmfs_fields") == str(len(names))
    assert nodes.sql("SELECT string_agg(name || '=' || size, ',') FROM "
                     "hsmfs_history_objects") == "obj=3"
    assert nodes.sql("SELECT count(*) FROM hsmfs_history_records") == "3"


def test_refused_while_a_daemon_runs_on_store(nodes, mount_factory):
    loc = local_mount(nodes, mount_factory)
    put(loc, "fields", "f", b"v")
    p = migrate(nodes, loc.store)
    assert p.returncode == 2, p.stdout + p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "is in use by PID" in err[0] and \
        "unmount it first" in err[0], p.stderr
    assert p.stdout == ""
    assert nodes.sql("SELECT count(*) FROM hsmfs_fields") == "0"
    assert get(loc, "fields", "f") == b"v"
