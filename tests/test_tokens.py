"""PKCS#11 implementations other than in-process SoftHSM (docs/tokens.md).

Outage of a remote token: SoftHSM behind `p11-kit server`, hsmfs loading
p11-kit-client.so. The server (and every per-connection child) is killed
during field reads, history appends and signing: operations fail with EIO
without hanging, the daemon stays up and .status shows the key as
unavailable; once the server is back, operations succeed again without a
remount after exactly one new login, also when the token comes back under
another slot ID. Logins are counted on both sides: the daemon's .status
and the fault shim loaded by the server in front of SoftHSM.

Whatever HSMFS_TOKEN says, these tests build the tokens they need (they
run once, in the SoftHSM suite)."""
import errno
import os
import subprocess
import threading
import time

import pytest

import tokens
from conftest import DEFAULT_DESCRIPTORS, HSMFS, TOOL, Hsm, make_spec_keys
from faultshim import SHIM
from folderops import append, errname, make_zip, read, verify_zip, write
from helpers import is_mounted, wait_for

# An operation that has not returned after this long is a hang (the
# outage makes every call fail at once; see docs/tokens.md for figures).
HANG_S = 30


@pytest.fixture(scope="module")
def saved_env():
    """Token adapters put their variables in os.environ: give them back."""
    env = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(env)


@pytest.fixture(scope="module")
def remote(tmp_path_factory, saved_env):
    """A remote token whose server loads the fault shim in front of
    SoftHSM, only to count the calls reaching the server."""
    root = tmp_path_factory.mktemp("remote")
    env = {"HSMFS_SHIM_MODULE": tokens.SOFTHSM,
           "HSMFS_SHIM_STATS": str(root / "server.stats.%p"),
           "HSMFS_SHIM_CONTROL": str(root / "no-faults")}
    env.update(sanitizer_preload(SHIM))
    tok = tokens.RemoteToken(root / "token", provider=SHIM, provider_env=env)
    h = Hsm(root, token=tok)
    try:
        yield make_spec_keys(h)
    finally:
        h.close()


def sanitizer_preload(lib):
    """The shim of a sanitizer build (tests/sanitize.sh) needs its runtime
    first in the uninstrumented p11-kit server; its leak report is no
    concern of these tests (the server is killed or its children exit)."""
    out = subprocess.run(["ldd", lib], capture_output=True, text=True).stdout
    pre = [line.split("=>")[1].split()[0] for line in out.splitlines()
           if "=>" in line and ("libasan" in line or "libubsan" in line)]
    if not pre:
        return {}
    return {"LD_PRELOAD": " ".join(pre), "ASAN_OPTIONS": "detect_leaks=0"}


def server_logins(h):
    """C_Login calls that reached SoftHSM through the server, summed over
    the server's processes (one per client connection)."""
    n = 0
    for p in h.root.glob("server.stats.*"):
        for line in p.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == "calls.C_Login":
                n += int(v)
    return n


def status(m):
    out = {}
    with open(m.path(".status")) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition(": ")
            out[k] = v
    return out


KEYS = ("encryptedFieldsCertificateV1", "configZipSignerCertificateV1",
        "objectHistorySignerCertificateV1", "signEmailCertificateV1")


def timed(fn, *a):
    """fn(*a) in a thread: its result and how long it took; a hang fails."""
    res = {}

    def run():
        t0 = time.monotonic()
        res["r"] = fn(*a)
        res["t"] = time.monotonic() - t0
    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(HANG_S)
    assert not th.is_alive(), f"{fn.__name__} hung for {HANG_S} s"
    return res["r"], res["t"]


def sign_out(m, name, z):
    return write(m.path("sign-out", name), z)


def exercise_down(m, worst):
    """Every key's operation fails with EIO while the server is down."""
    (data, e), t = timed(read, m.path("fields", "pw"))
    assert e == errno.EIO, (errname(e), data)
    worst.append(t)
    e, t = timed(append, m.path("history", "obj"), b"while down\n")
    assert e == errno.EIO, errname(e)
    worst.append(t)
    e, t = timed(sign_out, m, "down.zip", make_zip(seed=b"down"))
    assert e == errno.EIO, errname(e)
    worst.append(t)


def burst_down(m, n=16):
    """n concurrent field reads while the token is away: more than the
    session pool holds; every one fails with EIO, none hangs."""
    res = [None] * n

    def one(i):
        res[i] = read(m.path("fields", "pw"))[1]
    ths = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    t0 = time.monotonic()
    for t in ths:
        t.start()
    for t in ths:
        t.join(max(0.1, HANG_S - (time.monotonic() - t0)))
    assert not any(t.is_alive() for t in ths), "field reads hung"
    assert res == [errno.EIO] * n, [errname(e) for e in res]
    return time.monotonic() - t0


def exercise_up(m, h, tag):
    assert read(m.path("fields", "pw")) == (b"s3cret", None)
    assert append(m.path("history", "obj"), tag + b"\n") is None
    z = make_zip(seed=tag)
    assert sign_out(m, tag.decode() + ".zip", z) is None
    signed, e = read(m.path("sign-out", tag.decode() + ".zip"))
    assert e is None
    ok, out = verify_zip(h, signed)
    assert ok, out


def test_remote_outage_and_restart(remote, mount_factory, tmp_path):
    """Kill the server (whole process group) under a live mount, then
    start it again: same slot first, then a different slot ID."""
    h = remote
    m = mount_factory(config=h.config(tmp_path / "remote.xml"))
    assert write(m.path("fields", "pw"), b"s3cret") is None
    exercise_up(m, h, b"before")
    st = status(m)
    assert all(st[f"key.{k}.state"] == "available" for k in KEYS), st
    logins0 = int(st[f"key.{KEYS[0]}.logins"])
    srv0 = server_logins(h)
    history = b"before\n"
    slot0 = h.token.client_slot()

    worst = []
    for round_, exported in enumerate(([h.token_label],
                                       ["hsmfs-decoy", h.token_label])):
        h.token.stop_server()
        exercise_down(m, worst)
        burst = burst_down(m)
        # Everything that needs no token still works.
        assert read(m.path("history", "obj")) == (history, None)
        assert write(m.path("fields", f"sealed{round_}"), b"offline") is None
        st = status(m)
        assert st[f"key.{KEYS[0]}.state"] == "unavailable", st
        assert m.proc.poll() is None
        r = subprocess.run([TOOL, "status", m.mnt], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode != 0 and "unavailable" in r.stdout, r.stdout
        if round_ == 1:
            # A second token in front of ours: the client numbers the
            # exported slots in the server's order, in which the shim
            # swaps the first two when SoftHSM happens to list ours first.
            h.token.init_token("hsmfs-decoy")
            h.token.start_server(exported)
            if h.token.client_slot() == slot0:
                h.token.stop_server()
                (h.root / "no-faults").write_text("swap_slots\n")
                h.token.start_server(exported)
            assert h.token.client_slot() != slot0
        else:
            h.token.start_server(exported)
        # Back without a remount; the first try may fall in the module's
        # reconnect back-off (250 ms), hence the wait.
        wait_for(lambda: read(m.path("fields", "pw")) == (b"s3cret", None),
                 what="field read after the server restart")
        tag = f"after{round_}".encode()
        exercise_up(m, h, tag)
        history += tag + b"\n"
        assert read(m.path("history", "obj")) == (history, None)
        assert read(m.path("fields", f"sealed{round_}")) == (b"offline", None)
        st = status(m)
        assert all(st[f"key.{k}.state"] == "available" for k in KEYS), st
        r = subprocess.run([TOOL, "status", m.mnt], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        # Exactly one new login per outage, seen by us and by the server.
        assert int(st[f"key.{KEYS[0]}.logins"]) == logins0 + round_ + 1, st
        assert server_logins(h) == srv0 + round_ + 1
        assert int(st[f"key.{KEYS[0]}.reconnects"]) >= round_ + 1
    print(f"remote outage: worst failing operation {max(worst) * 1000:.1f} ms "
          f"over {len(worst)}; 16 concurrent reads {burst * 1000:.1f} ms")
    assert "re-initialising module" in m.log()
    m.unmount()



def test_no_module_instance_across_fork(remote, tmp_path):
    """The daemon never uses a module initialised before a fork: the key
    check runs in a child that exits, libfuse daemonizes (forks) before
    the keys are opened in the FUSE init callback. p11-kit's client
    detects the mistake: a module instance used in a forked child answers
    CKR_CRYPTOKI_NOT_INITIALIZED to every call. So a daemonized mount
    through it must work, with one login in the check child and one in
    the daemon, as seen by the server."""
    h = remote
    cfg = h.config(tmp_path / "fork.xml")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    before = server_logins(h)
    p = subprocess.run([HSMFS, str(tmp_path / "store"), str(mnt), "-o",
                        f"config={cfg}"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    try:
        wait_for(lambda: is_mounted(mnt), what="daemonized mount")
        assert write(str(mnt / "fields" / "pw"), b"forked") is None
        assert read(str(mnt / "fields" / "pw")) == (b"forked", None)
        assert append(str(mnt / "history" / "o"), b"x\n") is None
        z = make_zip(seed=b"fork")
        assert write(str(mnt / "sign-out" / "f.zip"), z) is None
        signed, e = read(str(mnt / "sign-out" / "f.zip"))
        assert e is None and verify_zip(h, signed)[0]
        st = {}
        for line in (mnt / ".status").read_text().splitlines():
            k, _, v = line.partition(": ")
            st[k] = v
        assert st[f"key.{KEYS[0]}.logins"] == "1", st
        assert server_logins(h) == before + 2
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
    wait_for(lambda: not is_mounted(mnt), what="unmount")


# ---- native OAEP without the raw-RSA fallback ----

@pytest.fixture(scope="module")
def tpm2(hsm, tmp_path_factory, saved_env):
    """A tpm2-pkcs11 token with the four keys (the session's own when the
    suite runs on tpm2)."""
    if hsm.kind == "tpm2":
        yield hsm
        return
    root = tmp_path_factory.mktemp("tpm2")
    h = Hsm(root, token=tokens.Tpm2Token(root / "token"))
    try:
        yield make_spec_keys(h)
    finally:
        h.close()


def check(h, cfg):
    return subprocess.run([TOOL, "check", "-o", f"config={cfg}"],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **h.token.env))


def oaep_config(h, path, digest, raw, only_fields=False):
    """The default descriptors (or EncryptedFields alone) with the fields
    key's OAEP digest and rawRsaFallback set."""
    descs = [dict(d) for d in DEFAULT_DESCRIPTORS
             if not only_fields or d["name"] == "EncryptedFields"]
    for d in descs:
        if d["name"] == "EncryptedFields":
            d["asymCipher"] = f"RSA/ECB/OAEPWith{digest}AndMGF1Padding"
    fields_key = "encryptedFieldsCertificateV1"
    return h.config(path, descriptors=descs,
                    omit=[d["name"] for d in DEFAULT_DESCRIPTORS],
                    key_attrs={fields_key: {"rawRsaFallback": raw}})


def test_tpm2_native_oaep_sha384_without_raw_fallback(tpm2, mount_factory,
                                                      tmp_path):
    """tpm2-pkcs11 decrypts OAEP-SHA-384 itself: with the raw-RSA fallback
    forbidden, check passes and fields work end to end."""
    cfg = oaep_config(tpm2, tmp_path / "noraw.xml", "SHA-384", "false")
    r = check(tpm2, cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    m = mount_factory(config=cfg)
    assert write(m.path("fields", "pw"), b"native oaep") is None
    assert read(m.path("fields", "pw")) == (b"native oaep", None)
    sealed, e = read(m.path("fields", ".sealed", "pw"))
    assert e is None and sealed.startswith(b"NX02:")
    assert "refuses native OAEP" not in m.log()
    m.unmount()


@pytest.fixture(scope="module")
def softhsm(hsm, tmp_path_factory, saved_env):
    """SoftHSM with the fields key (the session's token when it is one)."""
    if hsm.kind == "softhsm":
        yield hsm
        return
    root = tmp_path_factory.mktemp("softhsm")
    h = Hsm(root, token=tokens.SoftHsmToken(root / "token"))
    h.make_key("encryptedFieldsCertificateV1", method="keygen")
    yield h
    h.close()


def test_check_refuses_token_without_oaep_hash_or_raw_rsa(softhsm, tmp_path):
    """SoftHSM 2.6 refuses OAEP with SHA-384: with rawRsaFallback="false"
    the key cannot unwrap at all, and check says so in one line."""
    h = softhsm
    r = check(h, oaep_config(h, tmp_path / "noraw.xml", "SHA-384", "false",
                             only_fields=True))
    assert r.returncode != 0, r.stdout
    lines = [l for l in (r.stdout + r.stderr).splitlines()
             if "raw RSA fallback is disabled" in l]
    assert len(lines) == 1, r.stdout + r.stderr
    assert "encryptedFieldsCertificateV1" in lines[0] and "SHA" in lines[0]
    print(lines[0])
    # The same configuration with the fallback allowed passes.
    r = check(h, oaep_config(h, tmp_path / "raw.xml", "SHA-384", "true",
                             only_fields=True))
    assert r.returncode == 0, r.stdout + r.stderr
