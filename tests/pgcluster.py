"""A private PostgreSQL 15 cluster for the shared-store tests (Debian's
postgresql-15: initdb and pg_ctl run as the `postgres` user).

Everything lives in a directory of its own under /tmp (pytest's temp root
is 0700 root, which `postgres` cannot reach), owned by postgres: the data
directory, the unix socket and the server log. The server listens on the
socket and on a free loopback port. Roles: `postgres` (superuser, trusted
on the socket, for setup only), `hsmfs_owner` (owns the databases, runs
db-init) and `hsmfs_daemon` (what the daemons use); both log in with a
SCRAM password. Use as a session fixture (`pg` in test_shared_db.py);
close() stops the server and removes the directory."""
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import urllib.parse

BIN = "/usr/lib/postgresql/15/bin"
OWNER, OWNER_PW = "hsmfs_owner", "owner-Pw-3b1f8c"
DAEMON, DAEMON_PW = "hsmfs_daemon", "daemon-Pw-9e2d47"


def available():
    return os.path.exists(f"{BIN}/initdb") and os.path.exists(f"{BIN}/pg_ctl")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    def __init__(self):
        pw = pwd.getpwnam("postgres")
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.root = tempfile.mkdtemp(prefix="hsmfs-pg-", dir="/tmp")
        os.chown(self.root, self.uid, self.gid)
        os.chmod(self.root, 0o755)
        self.data = os.path.join(self.root, "data")
        self.logfile = os.path.join(self.root, "server.log")
        self.port = _free_port()
        self.ndb = 0
        self._as_pg([f"{BIN}/initdb", "-D", self.data, "-U", "postgres",
                     "-E", "UTF8", "--no-sync", "--auth-local=trust",
                     "--auth-host=scram-sha-256"])
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write("local all postgres trust\n"
                    "local all all scram-sha-256\n"
                    "host all all 127.0.0.1/32 scram-sha-256\n")
        self.start()
        self.sql(f"CREATE ROLE {OWNER} LOGIN PASSWORD '{OWNER_PW}';"
                 f"CREATE ROLE {DAEMON} LOGIN PASSWORD '{DAEMON_PW}'")

    def _as_pg(self, cmd, check=True, input=None):
        p = subprocess.run(["runuser", "-u", "postgres", "--"] + cmd,
                           capture_output=True, text=True, input=input,
                           timeout=120, cwd=self.root)
        if check and p.returncode != 0:
            raise AssertionError(f"{cmd!r} exited {p.returncode}\n{p.stdout}\n"
                                 f"{p.stderr}\n{self.log()}")
        return p

    def log(self):
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def start(self):
        self._as_pg([f"{BIN}/pg_ctl", "-D", self.data, "-l", self.logfile, "-w",
                     "-o", f"-k {self.root} -p {self.port} "
                     "-c listen_addresses=127.0.0.1", "start"])

    def stop(self, mode="fast"):
        self._as_pg([f"{BIN}/pg_ctl", "-D", self.data, "-m", mode, "-w", "stop"])

    def restart(self):
        self._as_pg([f"{BIN}/pg_ctl", "-D", self.data, "-l", self.logfile, "-w",
                     "-m", "fast", "-o", f"-k {self.root} -p {self.port} "
                     "-c listen_addresses=127.0.0.1", "restart"])

    def sql(self, sql, db="postgres", check=True):
        """As the superuser over the socket; rows as 'a|b' lines."""
        p = self._as_pg(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                         "-h", self.root, "-p", str(self.port), "-d", db,
                         "-c", sql], check=check)
        return p if not check else p.stdout.strip()

    def new_db(self):
        self.ndb += 1
        name = f"hsmfs{self.ndb}"
        self.sql(f"CREATE DATABASE {name} OWNER {OWNER}")
        return name

    def uri(self, user, db, tcp=True, extra=""):
        if tcp:
            u = f"postgresql://{user}@127.0.0.1:{self.port}/{db}"
            return u + (f"?{extra}" if extra else "")
        host = urllib.parse.quote(self.root, safe="")
        return (f"postgresql://{user}@/{db}?host={host}&port={self.port}" +
                (f"&{extra}" if extra else ""))

    def psql_as(self, user, password, db, sql):
        """psql as a login role over TCP (the password in the environment
        of this one client): the CompletedProcess, never raising."""
        env = dict(os.environ, PGPASSWORD=password)
        return subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v",
                               "ON_ERROR_STOP=1", self.uri(user, db), "-c", sql],
                              capture_output=True, text=True, env=env, timeout=60)

    def close(self):
        try:
            self._as_pg([f"{BIN}/pg_ctl", "-D", self.data, "-m", "immediate",
                         "-w", "stop"], check=False)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


# For every tests/test_shared_*.py: the skip on a machine without
# postgresql-15 (a failure in CI, like every skip) and one private cluster
# per test module, stopped and removed after it.
import pytest  # noqa: E402

requires_pg = pytest.mark.skipif(not available(),
                                 reason="postgresql-15 is not installed")


@pytest.fixture(scope="module")
def pg():
    c = PgCluster()
    try:
        yield c
    finally:
        c.close()
