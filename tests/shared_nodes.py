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
import os

import pytest

import pgcluster
from conftest import TOOL
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


@pytest.fixture
def nodes(pg, hsm, mount_factory, tmp_path):
    """Two daemons, A and B, on one database of the module's cluster."""
    return SharedNodes(pg, hsm, mount_factory, tmp_path)
