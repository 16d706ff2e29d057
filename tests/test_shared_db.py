"""The shared store's database layer against a real PostgreSQL 15
(tests/pgcluster.py): hsmfs-tool db-init (creates, idempotent, schema
versions, the daemon role's privileges, the append-only history trigger),
shared_password= handling, the configuration fingerprint rule (contract §9,
docs/scale.md), and store/pg.c's behaviour when the server stops or
restarts (through tests/unit/test-pg-probe.c). The mounts on a shared
store come with the areas' backends (issue #16, next round)."""
import os
import signal
import subprocess
import time

import pytest

import pgcluster
from pgcluster import pg  # noqa: F401 (fixture)
from conftest import BUILD, TOOL
from helpers import run

PROBE = os.path.join(BUILD, "tests", "test-pg-probe")
EF = "encryptedFieldsCertificateV1"

pytestmark = pgcluster.requires_pg



@pytest.fixture
def db(pg):
    return pg.new_db()


def pwfile(path, password, mode=0o600):
    with open(path, "w") as f:
        f.write(password + "\n")
    os.chmod(path, mode)
    return str(path)


@pytest.fixture
def owner(pg, db, tmp_path):
    """(URI, shared_password file) of the schema owner for db."""
    return pg.uri(pgcluster.OWNER, db), pwfile(tmp_path / "owner.pw", pgcluster.OWNER_PW)


@pytest.fixture
def config(hsm, tmp_path):
    return hsm.config(tmp_path / "engine.xml")


def db_init(config, uri, password=None, role=None, check=False, ok=True, env=None):
    o = f"config={config},shared={uri}"
    if password:
        o += f",shared_password={password}"
    if role:
        o += f",daemon_role={role}"
    cmd = [TOOL, "db-init"] + (["--check"] if check else []) + ["-o", o]
    p = run(cmd, check=False, env=env)
    if ok:
        assert p.returncode == 0, f"db-init failed: {p.stdout}{p.stderr}"
    return p


def one_line(p):
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    return lines[0]


def daemon_sql(pg, db, sql):
    return pg.psql_as(pgcluster.DAEMON, pgcluster.DAEMON_PW, db, sql)


def owner_sql(pg, db, sql):
    return pg.psql_as(pgcluster.OWNER, pgcluster.OWNER_PW, db, sql)


TABLES = {"hsmfs_schema_version", "hsmfs_cluster", "hsmfs_nodes", "hsmfs_fields",
          "hsmfs_history_objects", "hsmfs_history_records", "hsmfs_checkpoints",
          "hsmfs_mail_queue", "hsmfs_mail_done"}


def test_db_init_creates_and_is_idempotent(pg, db, owner, config):
    uri, pw = owner
    p = db_init(config, uri, pw, role=pgcluster.DAEMON)
    assert "schema version 3 created" in p.stdout and "recorded" in p.stdout
    tables = set(pg.sql("SELECT tablename FROM pg_tables WHERE tablename "
                        "LIKE 'hsmfs_%'", db=db).split())
    assert tables == TABLES
    assert pg.sql("SELECT tableowner FROM pg_tables WHERE tablename = "
                  "'hsmfs_fields'", db=db) == pgcluster.OWNER
    fp1 = pg.sql("SELECT fingerprint || ' ' || origin FROM hsmfs_cluster", db=db)
    assert fp1.endswith(f" hsmfs/{db}") and len(fp1.split()[0]) == 64
    lines = pg.sql("SELECT config_lines FROM hsmfs_cluster", db=db)
    assert "EncryptedFields v1 " in lines and "cert=" in lines
    assert "pin" not in lines.lower() and "softhsm" not in lines.lower()
    # Again, twice: nothing changes, nothing fails.
    for _ in range(2):
        p = db_init(config, uri, pw, role=pgcluster.DAEMON)
        assert "schema version 3 up to date" in p.stdout
        assert "unchanged" in p.stdout
    assert pg.sql("SELECT count(*) FROM hsmfs_cluster", db=db) == "1"
    assert pg.sql("SELECT string_agg(version::text, ',' ORDER BY version) "
                  "FROM hsmfs_schema_version", db=db) == "1,2,3"
    assert pg.sql("SELECT fingerprint || ' ' || origin FROM hsmfs_cluster",
                  db=db) == fp1


def test_daemon_check_through_passfile(pg, db, owner, config, tmp_path):
    """The daemon role's view (what a node checks at mount), its password
    through libpq's own PGPASSFILE."""
    uri, pw = owner
    db_init(config, uri, pw, role=pgcluster.DAEMON)
    passfile = pwfile(tmp_path / "pgpass",
                      f"127.0.0.1:{pg.port}:{db}:{pgcluster.DAEMON}:"
                      f"{pgcluster.DAEMON_PW}")
    env = dict(os.environ, PGPASSFILE=passfile)
    p = db_init(config, pg.uri(pgcluster.DAEMON, db), check=True, env=env)
    assert "schema version 3 ok" in p.stdout and "unchanged" in p.stdout
    # Over the unix socket too, with passfile= in the URI.
    sock = pwfile(tmp_path / "pgpass2", f"*:*:*:{pgcluster.DAEMON}:"
                  f"{pgcluster.DAEMON_PW}")
    p = db_init(config, pg.uri(pgcluster.DAEMON, db, tcp=False,
                               extra=f"passfile={sock}"), check=True)
    assert "schema version 3 ok" in p.stdout
    # The daemon role cannot create the schema (least privilege).
    p = db_init(config, pg.uri(pgcluster.DAEMON, db), ok=False, env=env)
    assert p.returncode != 0 and "permission denied" in one_line(p)


def test_schema_version_refused(pg, db, owner, config):
    uri, pw = owner
    p = db_init(config, uri, pw, check=True, ok=False)
    assert p.returncode == 1
    assert "no hsmfs schema; run hsmfs-tool db-init" in one_line(p)
    db_init(config, uri, pw)
    # A newer (unknown) version: refused by the node check and by db-init.
    owner_sql(pg, db, "INSERT INTO hsmfs_schema_version (version) VALUES (99)")
    for check in (True, False):
        p = db_init(config, uri, pw, check=check, ok=False)
        assert p.returncode == 1
        assert "schema version 99 is unknown to this hsmfs" in one_line(p)
    # An older version: the node refuses, db-init migrates.
    owner_sql(pg, db, "DELETE FROM hsmfs_schema_version; "
              "INSERT INTO hsmfs_schema_version (version) VALUES (0)")
    p = db_init(config, uri, pw, check=True, ok=False)
    assert p.returncode == 1
    assert "schema version 0 is older than this hsmfs's 3; run hsmfs-tool " \
        "db-init" in one_line(p)
    p = db_init(config, uri, pw)
    assert "schema version 3 migrated" in p.stdout
    db_init(config, uri, pw, check=True)


def test_daemon_role_cannot_alter_history(pg, db, owner, config):
    uri, pw = owner
    db_init(config, uri, pw, role=pgcluster.DAEMON)
    ins = ("INSERT INTO hsmfs_history_objects (name) VALUES ('user-42'); "
           "INSERT INTO hsmfs_history_records (object, seq, off, record_id, leaf) "
           "VALUES ('user-42', 0, 0, gen_random_uuid(), '\\x00'::bytea); "
           "INSERT INTO hsmfs_checkpoints (object, size, checkpoint) "
           "VALUES ('user-42', 1, '\\x01'::bytea)")
    p = daemon_sql(pg, db, ins)
    assert p.returncode == 0, p.stderr
    changes = ["UPDATE hsmfs_history_records SET leaf = '\\x01'::bytea",
               "DELETE FROM hsmfs_history_records",
               "TRUNCATE hsmfs_history_records CASCADE",
               "UPDATE hsmfs_checkpoints SET checkpoint = '\\x02'::bytea",
               "DELETE FROM hsmfs_checkpoints"]
    # By GRANT: the daemon role has no UPDATE/DELETE/TRUNCATE on history.
    for sql in changes:
        p = daemon_sql(pg, db, sql)
        assert p.returncode != 0 and "permission denied" in p.stderr, (sql, p)
    # By the trigger: the owner (who has every privilege) is refused too.
    for sql in changes:
        p = owner_sql(pg, db, sql)
        assert p.returncode != 0 and "is append-only" in p.stderr, (sql, p)
    # A daemon role granted UPDATE/DELETE by mistake still cannot.
    owner_sql(pg, db, f"GRANT UPDATE, DELETE ON hsmfs_history_records TO "
              f"{pgcluster.DAEMON}")
    for sql in changes[:2]:
        p = daemon_sql(pg, db, sql)
        assert p.returncode != 0 and "hsmfs_history_records is append-only" \
            in p.stderr, (sql, p)
    # db-init takes the mistaken grant back.
    db_init(config, uri, pw, role=pgcluster.DAEMON)
    p = daemon_sql(pg, db, changes[0])
    assert "permission denied" in p.stderr
    assert pg.sql("SELECT count(*) FROM hsmfs_history_records", db=db) == "1"
    # What the daemons need is allowed: fields, the queue, object state.
    p = daemon_sql(pg, db, "INSERT INTO hsmfs_fields (name, envelope) VALUES "
                   "('a', 'NX02...'); UPDATE hsmfs_fields SET version = 2; "
                   "DELETE FROM hsmfs_fields; UPDATE hsmfs_history_objects SET "
                   "size = 1; INSERT INTO hsmfs_mail_queue (name, message_id, entry) "
                   "VALUES ('m1', '<m1@x>', '\\x00'::bytea); DELETE FROM hsmfs_mail_queue")
    assert p.returncode == 0, p.stderr
    # ... but not the schema version.
    p = daemon_sql(pg, db, "UPDATE hsmfs_schema_version SET version = 2")
    assert "permission denied" in p.stderr


def test_shared_password_file(pg, db, owner, config, tmp_path):
    uri, pw = owner
    for mode in (0o644, 0o604, 0o640):
        os.chmod(pw, mode)
        p = db_init(config, uri, pw, ok=False)
        assert p.returncode != 0
        line = one_line(p)
        assert "accessible by group or others" in line and pgcluster.OWNER_PW not in line
    os.chmod(pw, 0o600)
    db_init(config, uri, pw)
    # A wrong password: one line, naming the server's refusal, not the password.
    bad = pwfile(tmp_path / "bad.pw", "not-the-password-5x")
    p = db_init(config, uri, bad, ok=False)
    line = one_line(p)
    assert "password authentication failed" in line and "5x" not in line
    # A password in the URI is refused and not echoed.
    p = db_init(config, f"postgresql://{pgcluster.OWNER}:{pgcluster.OWNER_PW}@"
                f"127.0.0.1:{pg.port}/{db}", ok=False)
    line = one_line(p)
    assert "holds a password" in line and pgcluster.OWNER_PW not in line
    # A live client: the password is neither in ps nor in its output, nor
    # in the server's log.
    probe = subprocess.Popen([PROBE, uri, pw], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        assert probe.stdout.readline().strip() == "open"
        ps = run(["ps", "-eww", "-o", "args"]).stdout
        assert pw in ps and pgcluster.OWNER_PW not in ps
        with open(f"/proc/{probe.pid}/environ", "rb") as f:
            assert pgcluster.OWNER_PW.encode() not in f.read()
        probe.stdin.write("ping\n")
        probe.stdin.flush()
        assert probe.stdout.readline().startswith("ok ")
    finally:
        out, _ = probe.communicate(timeout=30)
    assert pgcluster.OWNER_PW not in out
    assert pgcluster.OWNER_PW not in pg.log()


def test_fingerprint_rule(hsm, pg, db, owner, config, tmp_path):
    uri, pw = owner
    db_init(config, uri, pw)
    before = pg.sql("SELECT fingerprint FROM hsmfs_cluster", db=db)
    # Another EncryptedFields version instead of the cluster's: refused,
    # named, nothing recorded.
    other = hsm.config(tmp_path / "other.xml", omit=("EncryptedFields",), descriptors=[
        {"name": "EncryptedFields", "version": 3, "algorithm": "AES/CBC/PKCS7Padding",
         "size": 256, "result": "NX02", "key": EF,
         "asymCipher": "RSA/ECB/OAEPWithSHA-384AndMGF1Padding"}])
    for check in (True, False):
        p = db_init(other, uri, pw, check=check, ok=False)
        assert p.returncode == 1
        assert "configuration differs from the cluster's: EncryptedFields version " \
            "1 is in the cluster's configuration, not in this node's" in one_line(p)
    # Same version, another attribute: the attribute and both values named.
    aes128 = hsm.config(tmp_path / "aes128.xml", omit=("EncryptedFields",), descriptors=[
        {"name": "EncryptedFields", "version": 1, "algorithm": "AES/CBC/PKCS7Padding",
         "size": 128, "result": "NX02", "key": EF,
         "asymCipher": "RSA/ECB/OAEPWithSHA-384AndMGF1Padding"}])
    p = db_init(aes128, uri, pw, check=True, ok=False)
    assert "EncryptedFields version 1: cluster has size=256, this node has " \
        "size=128" in one_line(p)
    assert pg.sql("SELECT fingerprint FROM hsmfs_cluster", db=db) == before
    # Rolling rotation: a node adds version 2 (newer than the cluster's
    # newest): accepted, and the cluster records the union.
    rot = hsm.config(tmp_path / "rot.xml", descriptors=[
        {"name": "EncryptedFields", "version": 2, "algorithm": "AES/CBC/PKCS7Padding",
         "size": 256, "result": "NX02", "key": EF,
         "asymCipher": "RSA/ECB/OAEPWithSHA-512AndMGF1Padding"}])
    p = db_init(rot, uri, pw, check=True)
    assert "accepted as a rolling rotation" in p.stdout
    assert pg.sql("SELECT fingerprint FROM hsmfs_cluster", db=db) == before
    p = db_init(rot, uri, pw)
    assert "extended (rolling rotation" in p.stdout
    assert "EncryptedFields v2 " in pg.sql("SELECT config_lines FROM hsmfs_cluster",
                                           db=db)
    # Now a node still without version 2 is refused, naming it.
    p = db_init(config, uri, pw, check=True, ok=False)
    assert "EncryptedFields version 2 is in the cluster's configuration, not in " \
        "this node's" in one_line(p)
    db_init(rot, uri, pw, check=True)


def test_node_join(pg, db, owner, config, tmp_path):
    """What a node does at mount (store/pg_cluster.h, JOIN): the schema
    check, the configuration rule, the union recorded on a rolling
    rotation, the node registered; the cluster's origin returned."""
    uri, pw = owner
    probe0 = Probe(uri, pw)
    try:
        f = tmp_path / "lines"
        f.write_text("EncryptedFields v1 size=256 cert=aa\n")
        out = probe0.cmd(f"join n0 {f}")
        assert "no hsmfs schema; run hsmfs-tool db-init" in out
    finally:
        probe0.close()
    db_init(config, uri, pw, role=pgcluster.DAEMON)
    lines = pg.sql("SELECT config_lines FROM hsmfs_cluster", db=db) + "\n"
    same, newer, lacking = (tmp_path / n for n in ("same", "newer", "lacking"))
    same.write_text(lines)
    extra = "EncryptedFields v7 algorithm=AES/CBC/PKCS7Padding size=256 key=k7 cert=77"
    newer.write_text("".join(sorted(lines.splitlines(True) + [extra + "\n"])))
    lacking.write_text("".join(l for l in lines.splitlines(True)
                               if not l.startswith("ObjectHistorySigner v1 ")))
    probe = Probe(uri, pw)
    try:
        assert probe.cmd(f"join node-a {same}") == f"ok 0 hsmfs/{db}"
        out = probe.cmd(f"join node-b {lacking}")
        assert out.startswith("err -1008 ") and "ObjectHistorySigner version 1 is " \
            "in the cluster's configuration, not in this node's" in out
        assert probe.cmd(f"join node-b {newer}") == f"ok 1 hsmfs/{db}"
        assert extra in pg.sql("SELECT config_lines FROM hsmfs_cluster", db=db)
        # node-a, not yet rotated, must now add version 7 too.
        out = probe.cmd(f"join node-a {same}")
        assert "EncryptedFields version 7 is in the cluster's" in out
        assert probe.cmd(f"join node-a {newer}") == f"ok 0 hsmfs/{db}"
    finally:
        probe.close()
    assert pg.sql("SELECT string_agg(name, ',' ORDER BY name) FROM hsmfs_nodes",
                  db=db) == "node-a,node-b"


class Probe:
    """tests/unit/test-pg-probe.c: one store/pg pool in a process."""

    def __init__(self, uri, pw):
        self.p = subprocess.Popen([PROBE, uri, pw], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        first = self.p.stdout.readline().strip()
        assert first == "open", first

    def cmd(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()

    def status(self):
        return dict(kv.split("=") for kv in self.cmd("status").split())

    def close(self):
        self.p.stdin.close()
        assert self.p.wait(timeout=30) == 0


@pytest.mark.parametrize("tcp", [True, False], ids=["tcp", "socket"])
def test_server_stopped_and_restarted(pg, db, owner, tcp, tmp_path):
    """Stopped server: EIO (one line naming the cause) well within the
    documented connect_timeout, no hang; started again: the same pool
    reconnects by itself. A restart between two statements is invisible."""
    _, pw = owner
    uri = pg.uri(pgcluster.OWNER, db, tcp=tcp)
    owner_sql(pg, db, "CREATE TABLE t (id text PRIMARY KEY)")
    probe = Probe(uri, pw)
    try:
        assert probe.cmd("ping").startswith("ok ")
        assert probe.cmd("tx t a") == "ok"
        pg.stop()
        for cmd in ("ping", "tx t b"):
            out = probe.cmd(cmd)
            assert out.startswith("err -1009 "), out    # HSMFS_ERR_IO: EIO
            assert "database:" in out
        assert probe.status()["state"] == "down"
        pg.start()
        assert probe.cmd("ping").startswith("ok ")
        assert probe.cmd("tx t b") == "ok"
        st = probe.status()
        assert st["state"] == "up" and int(st["reconnects"]) >= 1
        # Restarted between statements: the dead idle connection is
        # replaced before use, the caller sees nothing.
        n = int(st["reconnects"])
        pg.restart()
        assert probe.cmd("tx t c") == "ok"
        assert probe.cmd("ping").startswith("ok ")
        assert int(probe.status()["reconnects"]) == n + 1
        # A duplicate is the server's answer (SQLSTATE), not a lost connection.
        out = probe.cmd("tx t c")
        assert out.startswith("err ") and "SQLSTATE 23505" in out
    finally:
        probe.close()
    assert owner_sql(pg, db, "SELECT string_agg(id, ',' ORDER BY id) FROM t"
                     ).stdout.strip() == "a,b,c"


def test_server_hung(pg, db, owner):
    """A server that accepts but never answers (here: every PostgreSQL
    process stopped with SIGSTOP, the kernel still ACKs): a statement
    fails with EIO once the client-side deadline (statement_timeout 10 s
    + 5 s, store/pg.h PG_CLIENT_DEADLINE) passes, a new connection once
    connect_timeout (5 s) passes; no hang. Resumed: served again."""
    uri, pw = owner
    probe = Probe(uri, pw)
    pids = []
    try:
        assert probe.cmd("ping").startswith("ok ")
        with open(os.path.join(pg.data, "postmaster.pid")) as f:
            pm = int(f.readline())
        pids = [pm] + [int(x) for x in run(["pgrep", "-P", str(pm)],
                                           check=False).stdout.split()]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        out = probe.cmd("ping")
        assert out.startswith("err -1009 ") and "no answer within 15000 ms" in out, out
        out = probe.cmd("ping")
        assert out.startswith("err -1009 ") and "timeout expired" in out, out
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    try:
        assert probe.cmd("ping").startswith("ok ")
    finally:
        probe.close()
