"""Sustained mixed load on a mount, for the soak (test_faults.py, faults
injected meanwhile) and the kill -9 matrix (test_kill.py). One Worker per
thread owns its names, records every operation whose close() returned 0
("acknowledged") and the one in flight, and checks afterwards that the
store holds exactly that: nothing acknowledged lost, nothing else visible
but complete in-flight items.

Outcome classes: ok; clean failure (EIO: the HSM failed, contract §8); wrong
(anything else: another errno, wrong bytes, an item lost or half visible)."""
import errno
import os
import random
import secrets
import threading
import time

from folderops import (append, errname, mail_message, make_zip, read,
                       store_blob, store_contains, verify_zips, write)

DEAD = (errno.ENOTCONN, errno.ECONNABORTED, errno.ENODEV)


class Worker(threading.Thread):
    folder = None

    def __init__(self, m, tid, stop, faults_expected=True):
        super().__init__(daemon=True)
        self.m = m
        self.tid = tid
        self.stop = stop
        self.faults_expected = faults_expected
        self.ops = self.ok = self.clean = 0
        self.wrong = []
        self.inflight = None
        self.dead = False
        self.rng = random.Random(secrets.randbits(32))

    def fail(self, what):
        self.wrong.append(f"{self.folder}[{self.tid}]: {what}")

    def gone(self):
        """The daemon was killed (Mount.kill9 clears .proc): after the lazy
        unmount, paths fall through to the empty mountpoint directory."""
        p = self.m.proc
        return p is None or p.poll() is not None

    def outcome(self, e, what):
        """Classify one errno; True when the daemon is gone (kill -9)."""
        self.ops += 1
        if e is None:
            self.ok += 1
        elif e in DEAD or self.gone():
            self.ops -= 1
            self.dead = True
        elif e == errno.EIO and self.faults_expected:
            self.clean += 1
        else:
            self.fail(f"{what}: {errname(e)}")
        return self.dead

    def run(self):
        try:
            while not self.stop.is_set() and not self.dead:
                self.step()
        except OSError as ex:
            if ex.errno in DEAD or self.gone():
                self.dead = True
            else:
                self.fail(f"{ex!r}")
        except Exception as ex:  # a bug in the test is a wrong result too
            self.fail(f"exception {ex!r}")

    def figures(self):
        return {"ops": self.ops, "ok": self.ok, "clean": self.clean,
                "wrong": len(self.wrong)}


class FieldsWorker(Worker):
    folder = "fields"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.values = {}      # name -> acknowledged value
        self.maybe = {}       # name -> value of the write in flight
        self.n = 0

    def step(self):
        if self.values and self.rng.random() < 0.5:
            name = self.rng.choice(sorted(self.values))
            data, e = read(self.m.path("fields", name))
            if self.outcome(e, f"read {name}"):
                return
            if e is None and data != self.values[name]:
                self.fail(f"read {name}: wrong value")
            return
        # New name, or replace an old one (a fifth of the time).
        if self.values and self.rng.random() < 0.2:
            name = self.rng.choice(sorted(self.values))
        else:
            self.n += 1
            name = f"f{self.tid}-{self.n}"
        value = b"secret-" + secrets.token_hex(16).encode()
        self.inflight = (name, value)
        e = write(self.m.path("fields", name), value)
        if self.outcome(e, f"write {name}"):
            return
        self.inflight = None
        if e is None:
            self.values[name] = value

    def verify(self, m):
        """After remount: every acknowledged value, nothing else but the
        in-flight write, whole; no plaintext in the store."""
        names = set(os.listdir(m.path("fields"))) - {".sealed"}
        mine = {n for n in names if n.startswith(f"f{self.tid}-")}
        allowed = set(self.values)
        if self.inflight:
            allowed.add(self.inflight[0])
        for n in mine - allowed:
            self.fail(f"unacknowledged {n} visible")
        lost = 0
        for n, v in self.values.items():
            data, e = read(m.path("fields", n))
            ok = {v}
            if self.inflight and self.inflight[0] == n:
                ok.add(self.inflight[1])
            if data not in ok:
                lost += 1
                self.fail(f"{n}: {errname(e) if e else 'wrong value'} after restart")
        if self.inflight and self.inflight[0] in mine and \
                self.inflight[0] not in self.values:
            data, e = read(m.path("fields", self.inflight[0]))
            if data != self.inflight[1]:
                self.fail(f"in-flight {self.inflight[0]} half visible "
                          f"({errname(e) if e else 'other bytes'})")
        secrets_ = list(self.values.values()) + ([self.inflight[1]] if self.inflight else [])
        blob = store_blob(m.store)
        for v in secrets_:
            if v in blob:
                self.fail(f"plaintext in the store: {store_contains(m.store, v)}")
        return len(self.values), lost


class HistoryWorker(Worker):
    folder = "history"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.obj = f"h{self.tid}"
        self.records = []
        self.n = 0

    def step(self):
        if self.records and self.rng.random() < 0.2:
            data, e = read(self.m.path("history", self.obj))
            if self.outcome(e, "read"):
                return
            if e is None and data != b"".join(self.records):
                self.fail(f"read: {len(data)} bytes, expected "
                          f"{len(b''.join(self.records))}")
            return
        self.n += 1
        rec = f"t{self.tid} n{self.n} {secrets.token_hex(8)}\n".encode()
        self.inflight = rec
        e = append(self.m.path("history", self.obj), rec)
        if self.outcome(e, f"append {self.n}"):
            return
        self.inflight = None
        if e is None:
            self.records.append(rec)

    def verify(self, m):
        data, e = read(m.path("history", self.obj))
        acked = b"".join(self.records)
        if not self.records and e == errno.ENOENT:
            data = b""
        ok = {acked}
        if self.inflight:
            ok.add(acked + self.inflight)
        if data not in ok:
            self.fail(f"after restart: {errname(e) if e else len(data)} "
                      f"(acknowledged {len(acked)} bytes)")
            lost = len(self.records) if data is None else \
                len(self.records) - sum(1 for r in self.records if r in data)
            return len(self.records), max(lost, 0)
        return len(self.records), 0


def refusal_only(m, name):
    """A zip whose close() failed may leave its name behind only as a
    refusal record (contract §3): empty, unreadable (EINVAL), the reason in
    user.hsmfs.sign. Anything else (a partial or unsigned zip) is not."""
    p = m.path("sign-out", name)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return True
    data, e = read(p)
    try:
        reason = os.getxattr(p, "user.hsmfs.sign")
    except OSError:
        reason = b""
    return st.st_size == 0 and e == errno.EINVAL and len(reason) > 0


class SignoutWorker(Worker):
    folder = "sign-out"

    def __init__(self, *a, hsm=None, **kw):
        super().__init__(*a, **kw)
        self.hsm = hsm
        self.zips = {}
        self.verified = {}    # name -> signed bytes already verified
        self.n = 0

    def step(self):
        self.n += 1
        name = f"z{self.tid}-{self.n}.zip"
        z = make_zip(n_entries=self.rng.randint(1, 4), seed=secrets.token_hex(4).encode())
        self.inflight = name
        e = write(self.m.path("sign-out", name), z)
        if self.outcome(e, f"cp {name}"):
            return
        self.inflight = None
        if e is None:
            self.zips[name] = z
        elif not refusal_only(self.m, name):
            self.fail(f"{name}: close failed but more than a refusal record is visible")

    def verify(self, m):
        names = {n for n in os.listdir(m.path("sign-out")) if n.startswith(f"z{self.tid}-")}
        allowed = set(self.zips) | ({self.inflight} if self.inflight else set())
        for n in names - allowed:
            if not refusal_only(m, n):
                self.fail(f"unacknowledged {n} visible")
        lost = 0
        check = set(self.zips) | {n for n in names & ({self.inflight} if self.inflight else set())
                                  if not refusal_only(m, n)}
        todo = {}
        for n in sorted(check):
            data, e = read(m.path("sign-out", n))
            if e is not None:
                lost += n in self.zips
                self.fail(f"{n}: {errname(e)} after restart")
                continue
            if self.verified.get(n) == data:
                continue      # same bytes as verified after an earlier restart
            todo[m.path("sign-out", n)] = (n, data)
        # One verify-zip process per few hundred zips: a 2-minute soak
        # acknowledges thousands.
        for path, (ok, out) in verify_zips(self.hsm, todo).items():
            n, data = todo[path]
            if not ok:
                lost += n in self.zips
                self.fail(f"{n}: does not verify after restart: {out.strip()}")
            else:
                self.verified[n] = data
        return len(self.zips), lost


class MailWorker(Worker):
    folder = "mail"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.msgs = {}
        self.n = 0

    def step(self):
        self.n += 1
        name = f"m{self.tid}-{self.n}"
        msg = mail_message(name, body=secrets.token_hex(32))
        self.inflight = name
        e = write(self.m.path("mail", name), msg)
        # Queuing needs no HSM: EIO is not a clean failure here.
        if e == errno.EIO and not self.gone():
            self.ops += 1
            self.fail(f"queue {name}: EIO")
            return
        if self.outcome(e, f"queue {name}"):
            return
        self.inflight = None
        if e is None:
            self.msgs[name] = msg
        # Do not flood the relay-less queue.
        time.sleep(0.01)

    def where(self, m, name):
        for sub in ("", "sent", "failed"):
            if name in os.listdir(m.path("mail", sub) if sub else m.path("mail")):
                return sub or "queue"
        return None

    def verify(self, m):
        lost = 0
        for name, msg in self.msgs.items():
            w = self.where(m, name)
            if w is None or w == "failed":
                lost += 1
                self.fail(f"{name}: {w or 'missing'} after restart")
                continue
            data, e = read(m.path("mail", name) if w == "queue" else m.path("mail", w, name))
            if e is not None or f"Subject: {name}".encode() not in (data or b""):
                lost += 1
                self.fail(f"{name}: {errname(e) if e else 'other content'} in {w}")
        visible = {n for n in os.listdir(m.path("mail")) if n.startswith(f"m{self.tid}-")}
        visible |= {n for n in os.listdir(m.path("mail", "sent")) if n.startswith(f"m{self.tid}-")}
        allowed = set(self.msgs) | ({self.inflight} if self.inflight else set())
        for n in visible - allowed:
            self.fail(f"unacknowledged {n} visible")
        return len(self.msgs), lost


WORKERS = {"fields": FieldsWorker, "history": HistoryWorker,
           "sign-out": SignoutWorker, "mail": MailWorker}


def start(m, hsm, folders, threads=2, faults_expected=True, tid0=0):
    stop = threading.Event()
    ws = []
    for fi, f in enumerate(folders):
        for t in range(threads):
            kw = {"hsm": hsm} if f == "sign-out" else {}
            w = WORKERS[f](m, tid0 + fi * 100 + t, stop, faults_expected, **kw)
            ws.append(w)
    for w in ws:
        w.start()
    return stop, ws


def join(stop, ws, timeout=60):
    stop.set()
    for w in ws:
        w.join(timeout)
        assert not w.is_alive(), f"{w.folder} worker stuck"


def folders():
    """The folders under load (HSMFS_LOAD_FOLDERS narrows it)."""
    env = os.environ.get("HSMFS_LOAD_FOLDERS")
    return env.split(",") if env else list(WORKERS)


def figure(line):
    """Print a figure line; also append it to $HSMFS_FIGURES (soak.sh)."""
    print(line)
    path = os.environ.get("HSMFS_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def totals(ws):
    t = {"ops": 0, "ok": 0, "clean": 0, "wrong": 0}
    for w in ws:
        for k, v in w.figures().items():
            t[k] += v
    return t
