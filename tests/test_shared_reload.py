"""A reload (SIGHUP, `hsmfs-tool reload`) on a shared mount does what the
mount does with the configuration (docs/scale.md, "Same configuration
everywhere"): a configuration the cluster would refuse at mount is refused
by the reload (the old one keeps serving), an accepted one is recorded in
hsmfs_nodes, and in hsmfs_cluster during a rolling rotation. Two real
nodes on one private PostgreSQL 15 (tests/pgcluster.py)."""
import base64
import os
import struct

import pgcluster
from pgcluster import pg  # noqa: F401 (fixture)
from conftest import TOOL
from helpers import run
from shared_nodes import V1, V2, ef, get, nodes, put, v2key  # noqa: F401 (fixtures)


pytestmark = pgcluster.requires_pg


def sealed_version(m, name):
    b = base64.b64decode(get(m, ".sealed/" + name)[5:].rstrip(b"\n"),
                         validate=True)
    assert b[:4] == b"NX02"
    return struct.unpack(">I", b[4:8])[0]


def status(m):
    with open(m.path(".status")) as f:
        return dict(ln.partition(": ")[::2] for ln in f.read().splitlines())


def node_row(nodes, name):
    """(fingerprint, config_lines) of a node; the fingerprint is checked to
    be the SHA-256 of the lines, as the mount records it."""
    fp, ok = nodes.sql(
        "SELECT fingerprint, fingerprint = encode(sha256(convert_to("
        f"config_lines, 'UTF8')), 'hex') FROM hsmfs_nodes WHERE name = '{name}'"
    ).split("|")
    assert ok == "t", fp
    lines = nodes.sql(f"SELECT config_lines FROM hsmfs_nodes WHERE name = '{name}'")
    return fp, lines


def cluster_lines(nodes):
    return nodes.sql("SELECT config_lines FROM hsmfs_cluster")


def reload(m, ok=True):
    p = run([TOOL, "reload", m.mnt], check=False)
    if ok:
        assert p.returncode == 0 and p.stdout.strip() == "reload: ok", \
            f"{p.stdout}{p.stderr}\n{m.log()}"
    else:
        assert p.returncode == 1, f"{p.stdout}{p.stderr}\n{m.log()}"
        assert "keeps serving" in p.stderr, p.stderr
    return p


def reload_failures(m):
    return [ln for ln in m.log().splitlines() if "reload of" in ln]


def test_reload_records_rolling_rotation(nodes, hsm, v2key, tmp_path):
    """Step 1 of the rolling rotation by reload, node by node: recorded in
    the database at each reload, and /fields switches to the new version
    once every node's recorded lines have it, without a remount."""
    ca = hsm.config(tmp_path / "a.xml")
    cb = hsm.config(tmp_path / "b.xml")
    a, b = nodes.mount("A", config=ca), nodes.mount("B", config=cb)
    put(a, "old", b"under v1")
    fp_a0, lines_a0 = node_row(nodes, "A")
    fp_b0, _ = node_row(nodes, "B")
    assert "EncryptedFields v1 " in lines_a0 and "EncryptedFields v2" not in lines_a0

    # A gets version 2 first: accepted as a rotation and recorded, in A's
    # row and in the cluster's; B's row is untouched.
    hsm.config(ca, descriptors=[ef(2, V2, "SHA-512")])
    reload(a)
    fp_a1, lines_a1 = node_row(nodes, "A")
    assert fp_a1 != fp_a0 and "EncryptedFields v2 " in lines_a1, lines_a1
    assert all(ln in lines_a1.splitlines() for ln in lines_a0.splitlines())
    assert "EncryptedFields v2 " in cluster_lines(nodes)
    assert node_row(nodes, "B")[0] == fp_b0
    assert status(a)["config.generation"] == "2"
    assert "recorded (rolling rotation" in a.log(), a.log()
    # B does not have it yet: A keeps sealing with version 1.
    put(a, "early", b"A has v2, B not yet")
    assert sealed_version(b, "early") == 1
    assert get(b, "early") == b"A has v2, B not yet"

    # B reloads with it: recorded; every node has version 2 now, so B's
    # new values use it, and A's after its next reload.
    hsm.config(cb, descriptors=[ef(2, V2, "SHA-512")])
    reload(b)
    assert node_row(nodes, "B")[1] == lines_a1
    put(b, "new", b"B on v2")
    assert sealed_version(a, "new") == 2 and get(a, "new") == b"B on v2"
    reload(a)
    put(a, "newer", b"A on v2")
    assert sealed_version(b, "newer") == 2 and get(b, "newer") == b"A on v2"
    assert get(b, "old") == b"under v1"
    assert reload_failures(a) == [] and reload_failures(b) == []
    # The cluster's lines are the union, which is now every node's.
    assert cluster_lines(nodes) == lines_a1


def test_reload_refuses_other_configuration(nodes, hsm, v2key, tmp_path):
    """A reload whose configuration the cluster would refuse at mount is
    refused: one log line naming the difference, `hsmfs-tool reload` fails,
    the database keeps the node's old row, the old configuration serves."""
    ca = hsm.config(tmp_path / "a.xml")
    a, b = nodes.mount("A", config=ca), nodes.mount("B")
    good = open(ca).read()
    put(a, "before", b"v1 value")
    fp0, lines0 = node_row(nodes, "A")
    cl0 = cluster_lines(nodes)

    # Version 1 with another OAEP hash: differs otherwise than by a newer
    # version.
    hsm.config(ca, omit=("EncryptedFields",), descriptors=[ef(1, V1, "SHA-512")])
    p = reload(a, ok=False)
    assert "EncryptedFields version 1" in p.stderr, p.stderr
    fails = reload_failures(a)
    assert len(fails) == 1, a.log()
    assert "shared store" in fails[0] and "EncryptedFields version 1" in \
        fails[0] and "previous configuration keeps serving" in fails[0], fails[0]
    assert node_row(nodes, "A") == (fp0, lines0) and cluster_lines(nodes) == cl0
    st = status(a)
    assert st["config.generation"] == "1" and st["config.reload"].startswith(
        "failed: "), st
    # The old configuration serves: writes on A, read on B and back.
    put(a, "after", b"still v1")
    assert get(b, "after") == b"still v1" and sealed_version(b, "after") == 1
    put(b, "from-b", b"B writes")
    assert get(a, "from-b") == b"B writes" and get(a, "before") == b"v1 value"

    # Once the cluster has version 2 (B rotates by remount), a reload of A
    # without it is refused naming it; with it, accepted and recorded.
    cb = hsm.config(tmp_path / "b.xml", descriptors=[ef(2, V2, "SHA-512")])
    b.unmount()
    b.config = cb
    b.start()
    open(ca, "w").write(good)
    p = reload(a, ok=False)
    assert "EncryptedFields version 2 is in the cluster's configuration, " \
        "not in this node's" in p.stderr, p.stderr
    assert node_row(nodes, "A") == (fp0, lines0)
    assert get(a, "after") == b"still v1"
    hsm.config(ca, descriptors=[ef(2, V2, "SHA-512")])
    reload(a)
    assert node_row(nodes, "A")[1] == node_row(nodes, "B")[1] == cluster_lines(nodes)
    put(a, "rotated", b"A on v2")
    assert sealed_version(b, "rotated") == 2
    assert status(a)["config.generation"] == "2"


def test_reload_with_database_down_keeps_old(nodes, hsm, pg, v2key, tmp_path):
    """The database unreachable: the reload cannot check the cluster, so it
    is refused (within the documented bound) and the old one serves."""
    ca = hsm.config(tmp_path / "a.xml")
    a = nodes.mount("A", config=ca)
    put(a, "x", b"before")
    fp0 = node_row(nodes, "A")[0]
    hsm.config(ca, descriptors=[ef(2, V2, "SHA-512")])
    pg.stop()
    try:
        p = reload(a, ok=False)
        assert "shared store" in p.stderr, p.stderr
    finally:
        pg.start()
    assert status(a)["config.generation"] == "1"
    assert node_row(nodes, "A")[0] == fp0
    assert get(a, "x") == b"before"
    # With the database back, the same file is accepted and recorded.
    reload(a)
    assert "EncryptedFields v2 " in node_row(nodes, "A")[1]


HS2 = "objectHistorySignerCertificateV2"


def hs(version, key):
    return {"name": "ObjectHistorySigner", "version": version,
            "algorithm": "SHA-256", "key": key}


def history_read(m, obj):
    with open(m.path("history", obj), "rb") as f:
        return f.read()


def history_append(m, obj, data):
    with open(m.path("history", obj), "ab") as f:
        f.write(data)


def test_history_signer_rolling_rotation(nodes, hsm, tmp_path):
    """The rolling rotation of ObjectHistorySigner by reload: as for
    EncryptedFields, a node that has the new version before the others
    keeps signing with the previous one, so every node reads every object
    throughout; once every node has it, it is used."""
    if HS2 not in hsm.keys:
        hsm.make_key(HS2)
    ca, cb = hsm.config(tmp_path / "a.xml"), hsm.config(tmp_path / "b.xml")
    a, b = nodes.mount("A", config=ca), nodes.mount("B", config=cb)
    history_append(a, "o", b"v1 era\n")
    hsm.config(ca, descriptors=[hs(2, HS2)])
    reload(a)
    assert "ObjectHistorySigner v2 " in node_row(nodes, "A")[1]
    history_append(a, "o", b"A has v2, B not yet\n")
    assert history_read(b, "o") == b"v1 era\nA has v2, B not yet\n", \
        os.getxattr(b.path("history", "o"), "user.hsmfs.verify")
    hsm.config(cb, descriptors=[hs(2, HS2)])
    reload(b)
    reload(a)
    history_append(a, "o", b"both have v2\n")
    x = os.getxattr(a.path("history", "o"), "user.hsmfs.verify").decode()
    assert HS2 in x, x
    assert history_read(b, "o").endswith(b"both have v2\n")
