"""Two (or more) hsmfs daemons on one PostgreSQL database, for the shared
store's tests (fields, mail, history): a private cluster
(tests/pgcluster.py), a fresh database initialised by `hsmfs-tool db-init`
as the schema owner with the daemon role granted, and mounts (each with
its own STORE and mount point) using the daemon role with
shared_password=FILE and node=NAME.

    pg = pgcluster.PgCluster()            # a session fixture
    nodes = SharedNodes(pg, hsm, mount_factory, tmp_path)
    a, b = nodes.mount("A"), nodes.mount("B")
"""
import errno
import os
import threading

import pytest

import pgcluster
from conftest import TOOL
from folderops import read as fread, write as fwrite
from helpers import run


def pwfile(path, password):
    with open(path, "w") as f:
        f.write(password + "\n")
    os.chmod(path, 0o600)
    return str(path)


class SharedNodes:
    def __init__(self, pg, hsm, mount_factory, tmp_path, config=None, tcp=True):
        self.pg, self.hsm, self.factory = pg, hsm, mount_factory
        self.db = pg.new_db()
        self.dir = tmp_path / "shared"
        self.dir.mkdir(exist_ok=True)
        self.config = config or hsm.config(self.dir / "engine.xml")
        self.owner_uri = pg.uri(pgcluster.OWNER, self.db, tcp=tcp)
        self.owner_pw = pwfile(self.dir / "owner.pw", pgcluster.OWNER_PW)
        self.uri = pg.uri(pgcluster.DAEMON, self.db, tcp=tcp)
        self.pw = pwfile(self.dir / "daemon.pw", pgcluster.DAEMON_PW)
        self.db_init()

    def db_init(self, config=None, check=True):
        p = run([TOOL, "db-init", "-o",
                 f"config={config or self.config},shared={self.owner_uri},"
                 f"shared_password={self.owner_pw},"
                 f"daemon_role={pgcluster.DAEMON}"], check=False)
        if check:
            assert p.returncode == 0, f"db-init: {p.stdout}{p.stderr}"
        return p

    def opts(self, name, extra=None):
        o = {"shared": self.uri, "shared_password": self.pw, "node": name}
        o.update(extra or {})
        return o

    def mount(self, name, config=None, start=True, extra=None):
        """A node named name (a Mount of conftest); start=False: not started."""
        return self.factory(config=config or self.config,
                            opts=self.opts(name, extra), start=start)

    def sql(self, sql):
        """As the superuser (rows as 'a|b' lines)."""
        return self.pg.sql(sql, db=self.db)


V1 = "encryptedFieldsCertificateV1"
V2 = "encryptedFieldsCertificateV2"


@pytest.fixture(scope="module")
def v2key(hsm):
    """A second EncryptedFields key on the token (rotation tests)."""
    return hsm.keys.get(V2) or hsm.make_key(V2, method="pkcs11-tool")


def ef(version, key, oaep):
    """An EncryptedFields descriptor for hsm.config()."""
    return {"name": "EncryptedFields", "version": version,
            "algorithm": "AES/CBC/PKCS7Padding", "size": 256, "result": "NX02",
            "key": key, "asymCipher": f"RSA/ECB/OAEPWith{oaep}AndMGF1Padding"}


def put(m, name, value):
    e = fwrite(m.path("fields", name), value)
    assert e is None, f"write {name}: {errno.errorcode.get(e, e)}\n{m.log()}"


def get(m, name):
    data, e = fread(m.path("fields", name))
    assert e is None, f"read {name}: {errno.errorcode.get(e, e)}\n{m.log()}"
    return data


class SessionKiller:
    """While running, ends the daemons' database sessions every 50 ms
    (pg_terminate_backend as the superuser); .killed counts them."""

    def __init__(self, nodes):
        self.nodes, self.killed = nodes, 0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run)

    def _run(self):
        while not self.stop.is_set():
            out = self.nodes.sql("SELECT pg_terminate_backend(pid) FROM "
                                 "pg_stat_activity WHERE usename = "
                                 f"'{pgcluster.DAEMON}' AND application_name "
                                 "NOT LIKE 'psql%'")
            self.killed += sum(1 for x in out.split() if x == "t")
            self.stop.wait(0.05)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join()


def history_append(m, obj, data):
    """One record appended to MNT/history/obj (raises on any failure,
    close() included)."""
    fd = os.open(m.path("history", obj), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@pytest.fixture
def nodes(pg, hsm, mount_factory, tmp_path):
    """Two daemons, A and B, on one database of the module's cluster."""
    return SharedNodes(pg, hsm, mount_factory, tmp_path)
