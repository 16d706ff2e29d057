"""contract §8, kill -9 at any moment: writers under sustained load on one
folder record every operation whose close() returned 0; the daemon is
killed with SIGKILL at a random moment, the dead mount cleared, the store
remounted; every acknowledged item must be there and verify, and nothing
else may be visible but the one item each writer had in flight, whole.
HSMFS_KILL_ROUNDS rounds per folder (default 3; tests/soak.sh: 20)."""
import os
import random
import secrets
import time

import pytest

import load
from helpers import wait_for

ROUNDS = int(os.environ.get("HSMFS_KILL_ROUNDS", "3"))


@pytest.mark.parametrize("folder", ["sign-out", "fields", "history", "mail"])
def test_kill9_matrix(folder, mount_factory, hsm):
    seed = secrets.randbits(32)
    rng = random.Random(seed)
    m = mount_factory()
    workers = []
    for rnd in range(ROUNDS):
        stop, ws = load.start(m, hsm, [folder], threads=3, faults_expected=False,
                              tid0=rnd * 1000)
        time.sleep(rng.uniform(0.3, 1.5))
        m.kill9()
        # Each writer's next operation meets the dead mount (ENOTCONN).
        wait_for(lambda: all(w.dead or not w.is_alive() for w in ws), timeout=30,
                 what="writers to notice the kill")
        load.join(stop, ws)
        workers += ws
        m.start()
        # Every round re-checks all earlier rounds too: a later crash must
        # not lose what an earlier restart recovered.
        acked = lost = 0
        for w in workers:
            a, l = w.verify(m)
            acked += a
            lost += l
        wrong = [x for w in workers for x in w.wrong]
        assert not wrong, f"round {rnd + 1} (seed {seed}):\n" + "\n".join(wrong[:30])
    ops = sum(w.ops for w in workers)
    load.figure(f"kill9 {folder}: rounds {ROUNDS} / operations {ops} / "
                f"acknowledged {acked} / lost {lost} (seed {seed})")
    assert acked > 0, "no operation was acknowledged: the test proved nothing"
    assert lost == 0
    m.unmount()
