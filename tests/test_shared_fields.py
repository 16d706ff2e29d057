"""/fields on the shared store (contract §9, docs/scale.md): two daemons A and
B, each with its own STORE and mount point, on one real PostgreSQL 15
database (tests/pgcluster.py, tests/shared_nodes.py). Read-after-write
across nodes, rename and unlink, the configuration check at mount and the
rolling rotation, the database stopped and started again (EIO, no hang,
recovery without remount, /sign-out unaffected), .status, and
rekey-fields on the database while a node reads."""
import base64
import errno
import os
import secrets
import struct
import threading
import time

import pgcluster
from pgcluster import pg  # noqa: F401 (fixture)
from conftest import TOOL
from folderops import make_zip, read as fread, verify_zip, write as fwrite
from helpers import run
from shared_nodes import V1, V2, ef, get, nodes, put, v2key  # noqa: F401 (fixtures)


pytestmark = pgcluster.requires_pg


def envelope_version(text):
    b = base64.b64decode(text[5:].rstrip(b"\n"), validate=True)
    assert b[:4] == b"NX02"
    return struct.unpack(">I", b[4:8])[0]


def status(m):
    out = {}
    for line in get_status(m).splitlines():
        k, _, v = line.partition(": ")
        out[k] = v
    return out


def get_status(m):
    with open(m.path(".status")) as f:
        return f.read()


def test_read_after_write_across_nodes(nodes):
    a, b = nodes.mount("A"), nodes.mount("B")
    for i in range(200):
        w, r = (a, b) if i % 2 == 0 else (b, a)
        v = b"value %d " % i + secrets.token_bytes(i % 40)
        put(w, "shared", v)
        assert get(r, "shared") == v, f"stale value on the other node at {i}"
    # The envelope, not the plaintext, is in the database.
    row = nodes.sql("SELECT envelope FROM hsmfs_fields WHERE name = 'shared'")
    assert row.startswith("NX02:") and "value 199" not in row
    # Nothing under either STORE/fields but the node-local temp area.
    for m in (a, b):
        d = os.path.join(m.store, "fields")
        assert not [n for n in os.listdir(d) if not n.startswith(".")], os.listdir(d)
    # A new name appears in the other node's listing at once.
    put(a, "fresh", b"x")
    assert "fresh" in os.listdir(b.path("fields"))
    assert get(b, os.path.join(".sealed", "fresh")).startswith(b"NX02:")


def test_rename_and_unlink_seen_on_other_node(nodes):
    a, b = nodes.mount("A"), nodes.mount("B")
    put(a, "one", b"first")
    put(a, "two", b"second")
    os.rename(a.path("fields", "one"), a.path("fields", "uno"))
    assert sorted(os.listdir(b.path("fields"))) == ["two", "uno"]
    assert get(b, "uno") == b"first"
    assert fread(b.path("fields", "one"))[1] == errno.ENOENT
    # Replacing rename onto an existing name, seen on A.
    os.rename(b.path("fields", "uno"), b.path("fields", "two"))
    assert get(a, "two") == b"first" and os.listdir(a.path("fields")) == ["two"]
    # A writer's temporary published on B (the mv-into-place idiom).
    put(b, ".tmp-new", b"published")
    os.rename(b.path("fields", ".tmp-new"), b.path("fields", "pub"))
    assert get(a, "pub") == b"published"
    os.unlink(a.path("fields", "two"))
    assert fread(b.path("fields", "two"))[1] == errno.ENOENT
    assert os.listdir(b.path("fields")) == ["pub"]
    assert nodes.sql("SELECT string_agg(name, ',') FROM hsmfs_fields") == "pub"


def test_node_with_other_version_refused(nodes, hsm, tmp_path):
    a = nodes.mount("A")
    put(a, "kept", b"v")
    other = hsm.config(tmp_path / "other.xml", omit=("EncryptedFields",),
                       descriptors=[ef(3, V1, "SHA-384")])
    c = nodes.mount("C", config=other, start=False)
    rc = c.start(expect_fail=True)
    assert rc != 0
    lines = [ln for ln in c.log().splitlines() if "shared store" in ln]
    assert len(lines) == 1, c.log()
    assert "EncryptedFields version 1 is in the cluster's configuration, not " \
        "in this node's" in lines[0], lines[0]
    assert not os.path.ismount(c.mnt)
    assert nodes.sql("SELECT string_agg(name, ',' ORDER BY name) FROM "
                     "hsmfs_nodes") == "A"


def test_rolling_rotation(nodes, hsm, v2key, tmp_path):
    a, b = nodes.mount("A"), nodes.mount("B")
    put(a, "old", b"under v1")
    rot = hsm.config(tmp_path / "rot.xml", descriptors=[ef(2, V2, "SHA-512")])
    # Step 1: the new version added on every node, one at a time. A has
    # it first: it keeps sealing with version 1, which B can open.
    a.unmount()
    a.config = rot
    a.start()
    assert "EncryptedFields v2 " in nodes.sql("SELECT config_lines FROM hsmfs_cluster")
    put(a, "early", b"A has v2, B not yet")
    assert envelope_version(get(b, ".sealed/early")) == 1
    assert get(b, "early") == b"A has v2, B not yet"
    b.unmount()
    b.config = rot
    b.start()
    # Step 2: used once every node has it (B now; A after its remount),
    # read by the other node.
    put(b, "new", b"under v2")
    assert envelope_version(get(a, ".sealed/new")) == 2
    assert get(a, "new") == b"under v2" and get(b, "old") == b"under v1"
    a.unmount()
    a.start()
    put(a, "newer", b"A on v2")
    assert envelope_version(get(b, ".sealed/newer")) == 2
    assert get(b, "newer") == b"A on v2"
    # A node still without version 2 is refused now, naming it.
    c = nodes.mount("C", start=False)
    assert c.start(expect_fail=True) != 0
    assert "EncryptedFields version 2 is in the cluster's configuration" in c.log()


def test_database_stopped_then_started(nodes, pg):
    a, b = nodes.mount("A"), nodes.mount("B")
    put(a, "f", b"before")
    assert status(a)["database.state"] == "up"
    pg.stop()
    try:
        t0 = time.monotonic()
        data, e = fread(a.path("fields", "f"))
        t_read = time.monotonic() - t0
        assert e == errno.EIO, (data, e)
        t0 = time.monotonic()
        e = fwrite(a.path("fields", "g"), b"during")
        t_write = time.monotonic() - t0
        assert e == errno.EIO
        # The documented bound: connect_timeout + the client deadline.
        assert t_read < 25 and t_write < 25, (t_read, t_write)
        print(f"time to EIO with the database stopped: read {t_read:.3f} s, "
              f"write {t_write:.3f} s")
        st = status(a)
        assert st["database.state"] == "down"
        assert "cannot connect" in st["database.last_error"]
        assert int(st["database.failures"]) > 0
        # /sign-out does not need the database.
        z = make_zip()
        assert fwrite(a.path("sign-out", "c.zip"), z) is None
        signed, e = fread(a.path("sign-out", "c.zip"))
        assert e is None and verify_zip(a.hsm, signed)[0]
    finally:
        pg.start()
    # Recovers without remount, both ways.
    assert get(a, "f") == b"before"
    put(a, "g", b"after")
    assert get(b, "g") == b"after"
    st = status(a)
    assert st["database.state"] == "up" and int(st["database.reconnects"]) > 0
    assert float(st["database.rtt_ms"]) > 0
    assert "g" in nodes.sql("SELECT string_agg(name, ',') FROM hsmfs_fields")


def test_status_and_metrics(nodes, mount_factory):
    a = nodes.mount("A")
    st = status(a)
    assert st["database.state"] == "up"
    assert st["database.cluster"] == f"hsmfs/{nodes.db}"
    assert st["database.last_error"] == "none"
    with open(a.path(".metrics")) as f:
        met = f.read()
    assert "hsmfs_database_up 1" in met
    assert "hsmfs_database_rtt_seconds " in met
    # Without shared=, no database lines, and fields stay in STORE.
    local = mount_factory()
    assert not [k for k in status(local) if k.startswith("database.")]
    put(local, "here", b"local")
    assert os.path.exists(os.path.join(local.store, "fields", "here"))
    assert "here" not in nodes.sql("SELECT coalesce(string_agg(name, ','), '') "
                                   "FROM hsmfs_fields")


def test_rekey_on_database_while_node_reads(nodes, hsm, v2key, tmp_path):
    a, b = nodes.mount("A"), nodes.mount("B")
    vals = {f"k{i}": secrets.token_bytes(20 + i) for i in range(40)}
    for n, v in vals.items():
        put(a, n, v)
    rot = hsm.config(tmp_path / "rot.xml", descriptors=[ef(2, V2, "SHA-512")])
    for m in (a, b):
        m.unmount()
        m.config = rot
        m.start()
    errors, stop = [], threading.Event()

    def reader():
        names = list(vals)
        i = 0
        while not stop.is_set():
            n = names[i % len(names)]
            data, e = fread(b.path("fields", n))
            if e is not None or data != vals[n]:
                errors.append((n, e))
            i += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        p = run([TOOL, "rekey-fields", "-o",
                 f"config={rot},shared={nodes.uri},shared_password={nodes.pw}"],
                check=False)
    finally:
        stop.set()
        t.join()
    assert p.returncode == 0, p.stdout + p.stderr
    assert "40 rewrapped to EncryptedFields version 2" in p.stdout, p.stdout
    assert not errors, errors[:5]
    for n, v in vals.items():
        assert envelope_version(get(a, ".sealed/" + n)) == 2
        assert get(b, n) == v
    p = run([TOOL, "rekey-fields", "-o",
             f"config={rot},shared={nodes.uri},shared_password={nodes.pw}"])
    assert "0 rewrapped" in p.stdout and "40 already current" in p.stdout
