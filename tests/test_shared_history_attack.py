"""Attacks on /history on the shared store (contract §5 and §9,
docs/scale.md "History on the database"), with real mounts on one real
PostgreSQL database: readers on one node while both nodes append, batches
touching several objects in opposite orders, the daemon role's credential
rewriting an object's row, the database rolled back below what a node
acknowledged (a restored backup), odd names and an object row without
records. Each test asserts what the contract requires: exact content where
it must succeed, EBADMSG (or a refused append) where the history was
damaged, never a history served or extended that forks what was signed."""
import errno
import os
import threading

import pytest

import pgcluster
from pgcluster import pg  # noqa: F401 (fixture)
from conftest import TOOL
from helpers import run
from shared_nodes import history_append, nodes  # noqa: F401 (fixture)

pytestmark = pgcluster.requires_pg


append = history_append


def read(m, obj):
    with open(m.path("history", obj), "rb") as f:
        return f.read()


def read_errno(m, obj):
    """The errno open()/read() fails with, or None with the content."""
    try:
        return None, read(m, obj)
    except OSError as e:
        return e.errno, None


def append_errno(m, obj, data):
    try:
        append(m, obj, data)
        return None
    except OSError as e:
        return e.errno


def verify_tool(nodes, obj, *extra):
    return run([TOOL, "verify-history", "-o",
                f"config={nodes.config},shared={nodes.uri},"
                f"shared_password={nodes.pw}", *extra, "--", obj], check=False)


def as_daemon(nodes, sql):
    """SQL with the daemons' own credential (what a compromised node has)."""
    return nodes.pg.psql_as(pgcluster.DAEMON, pgcluster.DAEMON_PW, nodes.db, sql)


def row_of(nodes, obj):
    """The object's row as SQL literals (size, bytes, frontier, checkpoint)."""
    out = nodes.sql("SELECT size, bytes, encode(frontier, 'hex'), "
                    f"encode(checkpoint, 'hex') FROM hsmfs_history_objects "
                    f"WHERE name = '{obj}'")
    size, nbytes, fr, cp = out.split("|")
    return (f"size = {size}, bytes = {nbytes}, frontier = decode('{fr}', 'hex'), "
            f"checkpoint = decode('{cp}', 'hex')")


def rows(nodes, obj):
    return nodes.sql("SELECT count(*), count(DISTINCT seq), coalesce(max(seq), -1) "
                     f"FROM hsmfs_history_records WHERE object = '{obj}'")


def assert_refused(nodes, nodes_and_errs, obj, nrows):
    """Every append failed and the database still holds exactly nrows rows
    of obj (seq 0..nrows-1): nothing forked the history."""
    for m, e in nodes_and_errs:
        assert e in (errno.EBADMSG, errno.EIO), \
            f"an append on a damaged history returned {e}:\n{m.log()[-2000:]}"
    assert rows(nodes, obj) == f"{nrows}|{nrows}|{nrows - 1}"


# ---- readers while both nodes append -------------------------------------

def test_readers_during_appends(nodes):
    """4 writers on A and 4 on B append to one object (and each node's
    writers to one object of their own) while readers on B and on a third
    node C read the content, the journal and user.hsmfs.verify in tight
    loops: every read succeeds and is a prefix of the final history (no
    EBADMSG false positive, no short, garbled or reordered read), every
    journal lists records 0..n-1, and every node ends with the same
    history, which verify-history accepts."""
    a, b, c = nodes.mount("A"), nodes.mount("B"), nodes.mount("C")
    append(a, "s", b"seed\n")
    per = 25
    errs, snaps, journals, verifies = [], [], [], []
    done = threading.Event()

    def writer(m, tag):
        try:
            for i in range(per):
                append(m, "s", f"{tag}-{i}\n".encode())
                append(m, f"own-{m is a and 'a' or 'b'}", f"{tag}-{i}\n".encode())
        except OSError as e:
            errs.append(f"writer {tag}: {e}")

    def reader(m):
        while not done.is_set():
            try:
                snaps.append(read(m, "s"))
                with open(m.path("history", ".journal", "s")) as f:
                    journals.append(f.read())
                verifies.append(os.getxattr(m.path("history", "s"),
                                            "user.hsmfs.verify").decode())
            except OSError as e:
                errs.append(f"reader {m.mnt}: {e}")
                return

    ws = [threading.Thread(target=writer, args=(m, f"{n}{t}"))
          for m, n in ((a, "A"), (b, "B")) for t in range(4)]
    rs = [threading.Thread(target=reader, args=(m,)) for m in (b, c)]
    for t in rs + ws:
        t.start()
    for t in ws:
        t.join(timeout=120)
    done.set()
    for t in rs:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in ws + rs), "a writer or reader hung"
    assert errs == []
    final = read(a, "s")
    lines = final.splitlines()
    assert lines[0] == b"seed" and len(lines) == 1 + 8 * per
    assert sorted(lines[1:]) == sorted(f"{n}{t}-{i}".encode() for n in "AB"
                                       for t in range(4) for i in range(per))
    for m in (b, c):
        assert read(m, "s") == final
    assert len(snaps) > 0
    for s in snaps:
        assert final.startswith(s) and (s == b"" or s.endswith(b"\n")), s[-80:]
    for j in journals:
        recs, cp = j.split("\n\n", 1)
        seqs = [int(x.split()[0]) for x in recs.splitlines()]
        # Records 0..n-1, and the checkpoint shown signs exactly them.
        assert seqs == list(range(len(seqs))) and len(seqs) >= 1, j[:400]
        assert int(cp.splitlines()[1]) == len(seqs), j[-400:]
    assert all(v.startswith("valid") for v in verifies), set(verifies)
    for obj, n in (("s", 1 + 8 * per), ("own-a", 4 * per), ("own-b", 4 * per)):
        p = verify_tool(nodes, obj)
        assert p.returncode == 0 and \
            p.stdout.startswith(f"valid: {obj} records={n} "), p.stdout + p.stderr
        assert "note:" not in p.stdout, p.stdout


def test_batches_in_opposite_orders(nodes):
    """Writers on A walk objects m0..m5 upwards while writers on B walk
    them downwards, so batches on both nodes hold several objects at once
    in opposite arrival orders: no deadlock surfaces (every close() returns
    0), every record is there once, and each object verifies."""
    a, b = nodes.mount("A"), nodes.mount("B")
    objs = [f"m{i}" for i in range(6)]
    rounds, errs = 6, []

    def writer(m, tag, order):
        try:
            for r in range(rounds):
                for o in order:
                    append(m, o, f"{tag}-{r}\n".encode())
        except OSError as e:
            errs.append(f"{tag}: {e}")

    ws = [threading.Thread(target=writer, args=(a, f"A{t}", objs))
          for t in range(4)]
    ws += [threading.Thread(target=writer, args=(b, f"B{t}", objs[::-1]))
           for t in range(4)]
    for t in ws:
        t.start()
    for t in ws:
        t.join(timeout=150)
    assert not any(t.is_alive() for t in ws), "writers hung"
    assert errs == [], errs
    want = sorted(f"{n}{t}-{r}".encode() for n in "AB" for t in range(4)
                  for r in range(rounds))
    for o in objs:
        got = read(b, o)
        assert read(a, o) == got
        assert sorted(got.splitlines()) == want
        assert rows(nodes, o) == f"{len(want)}|{len(want)}|{len(want) - 1}"
    assert "deadlock" not in a.log() + b.log()


# ---- the daemon role's credential rewrites an object's row ----------------

def test_daemon_rewinds_object_row(nodes):
    """With the daemons' credential (UPDATE on hsmfs_history_objects) the
    object's row is set back to what it was at 3 records (size, bytes,
    frontier and its then-newest checkpoint, validly signed) while its 5
    rows stay. The history was not shortened, yet what the row claims is an
    older state: a node that verified 5 records fails the object with
    EBADMSG, no node appends on top of it (no fork), a node loading it
    afresh reports it, and so does verify-history."""
    a, b = nodes.mount("A"), nodes.mount("B")
    for i in range(3):
        append(a, "u", f"a{i}\n".encode())
    old = row_of(nodes, "u")
    append(b, "u", b"b3\n")
    append(b, "u", b"b4\n")
    want = b"a0\na1\na2\nb3\nb4\n"
    assert read(a, "u") == want and read(b, "u") == want
    p = as_daemon(nodes, f"UPDATE hsmfs_history_objects SET {old} "
                  "WHERE name = 'u'")
    assert p.returncode == 0, p.stderr

    # The nodes that verified 5 records.
    for m in (a, b):
        assert read_errno(m, "u")[0] == errno.EBADMSG
    assert_refused(nodes, [(m, append_errno(m, "u", b"x\n")) for m in (a, b)],
                   "u", 5)
    # A node loading the object afresh.
    c = nodes.mount("C")
    e, got = read_errno(c, "u")
    assert e == errno.EBADMSG, f"a fresh node served {got!r}"
    assert_refused(nodes, [(c, append_errno(c, "u", b"x\n"))], "u", 5)
    # The offline verifier.
    p = verify_tool(nodes, "u")
    assert p.returncode != 0 and p.stdout.startswith("invalid: u: "), \
        p.stdout + p.stderr


def test_daemon_row_with_another_objects_checkpoint(nodes):
    """The daemons' credential puts object v's (validly signed) checkpoint
    into object u's row: u fails with EBADMSG on a node loading it (the
    checkpoint names v) and in verify-history; v and the node are fine."""
    a = nodes.mount("A")
    append(a, "u", b"u0\n")
    append(a, "u", b"u1\n")
    append(a, "v", b"v0\n")
    append(a, "v", b"v1\n")
    p = as_daemon(nodes, "UPDATE hsmfs_history_objects SET checkpoint = "
                  "(SELECT checkpoint FROM hsmfs_history_objects WHERE name = 'v') "
                  "WHERE name = 'u'")
    assert p.returncode == 0, p.stderr
    b = nodes.mount("B")
    assert read_errno(b, "u")[0] == errno.EBADMSG
    assert read(b, "v") == b"v0\nv1\n"
    p = verify_tool(nodes, "u")
    assert p.returncode != 0 and p.stdout.startswith("invalid: u: "), \
        p.stdout + p.stderr
    p = verify_tool(nodes, "v")
    assert p.returncode == 0 and p.stdout.startswith("valid: v records=2 "), \
        p.stdout + p.stderr


@pytest.mark.parametrize("rewrite", ["checkpoint = NULL",
                                     "size = 0, bytes = 0, frontier = '\\x'::bytea, "
                                     "checkpoint = NULL"])
def test_daemon_row_says_no_records(nodes, rewrite):
    """The daemons' credential makes u's row claim no signed records (its
    checkpoint cleared, or the row reset to a fresh object's) while u's
    two records and checkpoints stay: a node loading u afresh must not
    serve an empty or missing history (EBADMSG), nor start a second
    history at record 0; verify-history reports it."""
    a = nodes.mount("A")
    append(a, "u", b"u0\n")
    append(a, "u", b"u1\n")
    p = as_daemon(nodes, f"UPDATE hsmfs_history_objects SET {rewrite} "
                  "WHERE name = 'u'")
    assert p.returncode == 0, p.stderr
    b = nodes.mount("B")
    e, got = read_errno(b, "u")
    assert e == errno.EBADMSG, f"served {got!r} ({e})"
    assert_refused(nodes, [(b, append_errno(b, "u", b"fork\n"))], "u", 2)
    p = verify_tool(nodes, "u")
    assert p.returncode != 0 and p.stdout.startswith("invalid: u: "), \
        p.stdout + p.stderr


def test_daemon_bogus_frontier(nodes):
    """The daemons' credential replaces u's frontier by zeros of the right
    length: an append on a node must not be acknowledged over a frontier
    that does not match the verified records (its checkpoint would not
    sign the records), the records stay as they were and verify."""
    a, b = nodes.mount("A"), nodes.mount("B")
    append(a, "u", b"u0\n")
    append(a, "u", b"u1\n")
    assert read(b, "u") == b"u0\nu1\n"
    p = as_daemon(nodes, "UPDATE hsmfs_history_objects SET frontier = "
                  "decode(repeat('00', 32), 'hex') WHERE name = 'u'")
    assert p.returncode == 0, p.stderr
    assert_refused(nodes, [(m, append_errno(m, "u", b"x\n")) for m in (a, b)],
                   "u", 2)
    assert read(b, "u") == b"u0\nu1\n"
    p = verify_tool(nodes, "u")
    assert p.returncode == 0 and p.stdout.startswith("valid: u records=2 "), \
        p.stdout + p.stderr


def test_damaged_row_spares_other_objects(nodes):
    """Appends to u, whose frontier the daemons' credential replaced, run
    at once with appends to v on the same node (so group commit puts both
    objects in one batch): u's are refused, every one of v's succeeds --
    one damaged object's row must not fail other objects' writers."""
    a = nodes.mount("A")
    append(a, "u", b"u0\n")
    append(a, "v", b"v0\n")
    p = as_daemon(nodes, "UPDATE hsmfs_history_objects SET frontier = "
                  "decode(repeat('00', 32), 'hex') WHERE name = 'u'")
    assert p.returncode == 0, p.stderr
    verr, uerr = [], []

    def writer(obj, out, n):
        for i in range(n):
            e = append_errno(a, obj, f"{obj}-{i}\n".encode())
            if e is not None:
                out.append(e)

    ts = [threading.Thread(target=writer, args=("v", verr, 8)) for _ in range(6)]
    ts += [threading.Thread(target=writer, args=("u", uerr, 8)) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in ts)
    assert verr == [], f"{len(verr)} appends to v failed: {set(verr)}"
    assert len(uerr) == 32 and set(uerr) <= {errno.EBADMSG, errno.EIO}, uerr
    assert rows(nodes, "v") == "49|49|48"
    assert rows(nodes, "u") == "1|1|0"
    assert read(a, "u") == b"u0\n"


def test_daemon_cannot_touch_records(nodes):
    """The daemon role cannot UPDATE, DELETE or TRUNCATE history rows or
    checkpoints (GRANTs and the trigger), and an extra row it INSERTs
    after the signed records (a forged record) is not served as history."""
    a = nodes.mount("A")
    append(a, "u", b"u0\n")
    for sql in ("UPDATE hsmfs_history_records SET leaf = leaf",
                "DELETE FROM hsmfs_history_records",
                "TRUNCATE hsmfs_history_records",
                "UPDATE hsmfs_checkpoints SET size = size",
                "DELETE FROM hsmfs_checkpoints"):
        p = as_daemon(nodes, sql)
        assert p.returncode != 0, sql
    assert nodes.sql("SELECT count(*) FROM hsmfs_history_records") == "1"
    # A forged row after the signed one, and the row's counters moved on.
    p = as_daemon(nodes, "INSERT INTO hsmfs_history_records (object, seq, off, "
                  "record_id, leaf) SELECT object, 1, (SELECT bytes FROM "
                  "hsmfs_history_objects WHERE name = 'u'), gen_random_uuid(), "
                  "leaf FROM hsmfs_history_records WHERE object = 'u' AND seq = 0;"
                  "UPDATE hsmfs_history_objects SET size = 2, bytes = bytes * 2 "
                  "WHERE name = 'u'")
    assert p.returncode == 0, p.stderr
    b = nodes.mount("B")
    for m in (a, b):
        e, got = read_errno(m, "u")
        assert e == errno.EBADMSG, f"served {got!r}"
        why = os.getxattr(m.path("history", "u"), "user.hsmfs.verify").decode()
        assert why.startswith("invalid: "), why
    p = verify_tool(nodes, "u")
    assert p.returncode != 0 and p.stdout.startswith("invalid: u: "), \
        p.stdout + p.stderr


def test_owner_rewrites_a_record(nodes):
    """The schema owner drops the append-only trigger and changes one byte
    of record 1's payload in its row. A node that verified the records
    keeps serving its verified copy (docs/scale.md); a node loading the
    object afresh fails it with EBADMSG and says why in
    user.hsmfs.verify, and verify-history reports it invalid."""
    a = nodes.mount("A")
    for i in range(3):
        append(a, "u", f"rec{i}\n".encode())
    want = b"rec0\nrec1\nrec2\n"
    assert read(a, "u") == want
    p = nodes.pg.psql_as(
        pgcluster.OWNER, pgcluster.OWNER_PW, nodes.db,
        "DROP TRIGGER hsmfs_history_records_append_only ON hsmfs_history_records;"
        "UPDATE hsmfs_history_records SET leaf = overlay(leaf placing "
        "'\\x58'::bytea from length(leaf) - 1 for 1) "
        "WHERE object = 'u' AND seq = 1")
    assert p.returncode == 0, p.stderr
    assert read(a, "u") == want
    b = nodes.mount("B")
    assert read_errno(b, "u")[0] == errno.EBADMSG
    why = os.getxattr(b.path("history", "u"), "user.hsmfs.verify").decode()
    assert why.startswith("invalid: "), why
    p = verify_tool(nodes, "u")
    assert p.returncode != 0 and p.stdout.startswith("invalid: u: "), \
        p.stdout + p.stderr


# ---- the database rolled back below what a node acknowledged --------------

def rollback_to(nodes, obj, nrec, row):
    """What a restored backup does to obj: its rows and checkpoints after
    nrec records gone, its row as it was then (as the superuser, whose
    session_replication_role skips the append-only triggers, as a restore
    into a fresh database would)."""
    nodes.sql("BEGIN; SET LOCAL session_replication_role = replica; "
              f"DELETE FROM hsmfs_history_records WHERE object = '{obj}' "
              f"AND seq >= {nrec}; DELETE FROM hsmfs_checkpoints WHERE "
              f"object = '{obj}' AND size > {nrec}; UPDATE hsmfs_history_objects "
              f"SET {row} WHERE name = '{obj}'; COMMIT")


def test_database_rolled_back(nodes, tmp_path):
    """The database goes back to a state of 3 records after A (with a
    history anchor) and B acknowledged 5: both live nodes fail the object
    with EBADMSG and append nothing on top (no fork of what was
    acknowledged); A remounted still detects it from its anchor, and so
    does verify-history --anchor. Other objects go on."""
    anchor = tmp_path / "anchor-A"
    a = nodes.mount("A", extra={"history_anchor": str(anchor)})
    b = nodes.mount("B")
    for i in range(3):
        append(a, "u", f"r{i}\n".encode())
    old = row_of(nodes, "u")
    append(a, "u", b"r3\n")
    append(b, "u", b"r4\n")
    assert read(a, "u") == read(b, "u") == b"r0\nr1\nr2\nr3\nr4\n"
    rollback_to(nodes, "u", 3, old)
    assert rows(nodes, "u") == "3|3|2"

    for m in (a, b):
        assert read_errno(m, "u")[0] == errno.EBADMSG
    assert_refused(nodes, [(m, append_errno(m, "u", b"fork\n")) for m in (a, b)],
                   "u", 3)
    append(b, "w", b"other\n")
    assert read(a, "w") == b"other\n"

    a.remount()
    assert read_errno(a, "u")[0] == errno.EBADMSG
    assert_refused(nodes, [(a, append_errno(a, "u", b"fork\n"))], "u", 3)
    p = verify_tool(nodes, "u", "--anchor", str(anchor))
    assert p.returncode != 0 and p.stdout.startswith("invalid: u: "), \
        p.stdout + p.stderr


def test_database_rolled_back_then_forked(nodes):
    """The database goes back to 3 records after A and B acknowledged 5,
    then a fresh node C appends two other records of the same length (the
    rows now say 5 records and as many bytes, with another root): A and B
    must not go on serving, as the cluster's one history, records the
    database contradicts -- their reads fail with EBADMSG -- and their
    appends are refused."""
    a, b = nodes.mount("A"), nodes.mount("B")
    for i in range(3):
        append(a, "u", f"r{i}\n".encode())
    old = row_of(nodes, "u")
    append(a, "u", b"x3\n")
    append(b, "u", b"x4\n")
    assert read(a, "u") == read(b, "u") == b"r0\nr1\nr2\nx3\nx4\n"
    rollback_to(nodes, "u", 3, old)
    c = nodes.mount("C")
    append(c, "u", b"y3\n")
    append(c, "u", b"y4\n")
    assert read(c, "u") == b"r0\nr1\nr2\ny3\ny4\n"
    for m in (a, b):
        e, got = read_errno(m, "u")
        assert e == errno.EBADMSG, f"{m.mnt} served {got!r}"
    assert_refused(nodes, [(m, append_errno(m, "u", b"z\n")) for m in (a, b)],
                   "u", 5)


# ---- names ----------------------------------------------------------------

def test_names(nodes):
    """A 255-byte name and names of every character util_name_valid allows
    append on A, list and read on B and verify offline; an object row
    without records (size 0, as a failed first batch could leave) is not
    listed, reads as ENOENT and takes its first record normally."""
    a, b = nodes.mount("A"), nodes.mount("B")
    names = ["n" * 255, "A-z_0.9", "x.", "-", "_-_.._"]
    for i, n in enumerate(names):
        append(a, n, f"rec{i}\n".encode())
    listing = os.listdir(b.path("history"))
    for i, n in enumerate(names):
        assert n in listing
        assert read(b, n) == f"rec{i}\n".encode()
        p = verify_tool(nodes, n)
        assert p.returncode == 0 and p.stdout.startswith(f"valid: {n} records=1 "), \
            p.stdout + p.stderr
    p = as_daemon(nodes, "INSERT INTO hsmfs_history_objects (name) "
                  "VALUES ('empty')")
    assert p.returncode == 0, p.stderr
    assert "empty" not in os.listdir(b.path("history"))
    assert read_errno(b, "empty")[0] == errno.ENOENT
    append(b, "empty", b"first\n")
    assert read(a, "empty") == b"first\n"
    # Too long for a name: refused, nothing in the database.
    assert append_errno(a, "n" * 256, b"x\n") in (errno.EINVAL, errno.ENAMETOOLONG)
    assert nodes.sql("SELECT count(*) FROM hsmfs_history_objects "
                     "WHERE length(name) > 255") == "0"


# ---- big records, pool pressure ------------------------------------------

def test_big_records_and_fields_pressure(nodes):
    """Three writers append 6 MiB records to one object at once (batches of
    tens of MiB in the committer's memory and in one transaction) while 12
    /fields writers and readers hold pool connections on the same node:
    nothing hangs, every record is there byte for byte on the other node."""
    a, b = nodes.mount("A"), nodes.mount("B")
    bigs = [os.urandom(6 << 20) for _ in range(3)]
    errs = []
    done = threading.Event()

    def big(i):
        try:
            append(a, "big", bigs[i])
        except OSError as e:
            errs.append(f"big {i}: {e}")

    def field(i):
        k = 0
        while not done.is_set():
            p = a.path("fields", f"f{i}")
            try:
                with open(p, "wb") as f:
                    f.write(f"v{k}".encode())
                with open(p, "rb") as f:
                    assert f.read() == f"v{k}".encode()
                append(a, "small", f"{i}-{k}\n".encode())
            except OSError as e:
                errs.append(f"field {i}: {e}")
                return
            k += 1

    fs = [threading.Thread(target=field, args=(i,)) for i in range(12)]
    bs = [threading.Thread(target=big, args=(i,)) for i in range(3)]
    for t in fs + bs:
        t.start()
    for t in bs:
        t.join(timeout=150)
    done.set()
    for t in fs:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in fs + bs), "a writer hung"
    assert errs == [], errs
    got = read(b, "big")
    assert len(got) == 3 * (6 << 20)
    parts = [got[i:i + (6 << 20)] for i in range(0, len(got), 6 << 20)]
    assert sorted(parts) == sorted(bigs)
    p = verify_tool(nodes, "big")
    assert p.returncode == 0 and p.stdout.startswith("valid: big records=3 "), \
        p.stdout + p.stderr


def vm(m, key):
    with open(f"/proc/{m.proc.pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) << 10
    raise AssertionError(f"no {key} for {m.mnt}")


def test_catch_up_memory_is_bounded(nodes, monkeypatch):
    """B catches up with 12 records of 12 MiB appended on A (144 MiB of
    history read back by B byte for byte): B's peak memory grows by well
    under the history's size -- rows are fetched in windows, not the whole
    history in one result (256 records of 16 MiB would be 4 GiB)."""
    if "ASAN_OPTIONS" in os.environ:    # freed windows must not linger
        monkeypatch.setenv("ASAN_OPTIONS", os.environ["ASAN_OPTIONS"] +
                           ":quarantine_size_mb=4")
    a, b = nodes.mount("A"), nodes.mount("B")
    rec = os.urandom(12 << 20)
    for _ in range(12):
        append(a, "big", rec)
    before = vm(b, "VmRSS")
    n = 0
    with open(b.path("history", "big"), "rb") as f:
        while True:
            d = f.read(1 << 20)
            if not d:
                break
            k = n % len(rec)
            assert d == rec[k:k + len(d)], f"record bytes differ at {n}"
            n += len(d)
    assert n == 12 * len(rec)
    grew = vm(b, "VmHWM") - before
    assert grew < 12 * len(rec) // 2, f"B's peak memory grew by {grew >> 20} MiB"

