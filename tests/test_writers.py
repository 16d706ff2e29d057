"""Issue 13: every common writer and reader works in every folder, on a real
mount, each end state checked with an outside tool (jarsigner, the SMTP
sink, hsmfs-tool open-field, the journal and verify-history): cp, install,
dd, tee, shell redirections, rsync (hidden temp + rename, --inplace, -a),
temp file + rename(), Java NIO (Files.copy, Files.write, createTempFile +
ATOMIC_MOVE, APPEND, JarFile), mv from another file system, vim's save
sequence; views never stale; a crash in the middle of an rsync."""
import errno
import os
import secrets
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import HSMFS, TOOL, Mount
from helpers import run, wait_for
from test_mail import Relay, SENDER

SRC = Path(__file__).resolve().parent.parent
JAVA_SRC = SRC / "tests" / "java" / "Writers.java"


class Env:
    pass


@pytest.fixture(scope="module")
def env(hsm, tmp_path_factory):
    """One mount for the whole matrix (every case uses its own names), its
    SMTP sink, the Java helper compiled with javac, a truststore for
    jarsigner and a signed zip for /verify-in."""
    e = Env()
    root = tmp_path_factory.mktemp("writers")
    e.tmp = root / "work"
    e.tmp.mkdir()
    e.relay = Relay().start()
    e.hsm = hsm
    cfg = hsm.config(root / "engineSignEncrypt.xml")
    e.m = Mount(hsm, root, cfg, opts={"smtp": e.relay.url, "mail_retry": 1,
                                      "truststore": hsm.ca_cert})
    e.m.start()
    e.java = root / "java"
    e.java.mkdir()
    run(["javac", "-d", str(e.java), str(JAVA_SRC)], timeout=300)
    e.trust = str(root / "trust.p12")
    run(["keytool", "-importcert", "-noprompt", "-alias", "testca", "-file",
         hsm.ca_cert, "-keystore", e.trust, "-storetype", "PKCS12",
         "-storepass", "changeit"])
    # A zip signed by the mount, for /verify-in.
    p = e.m.path("sign-out", "for-verify-in.zip")
    Path(p).write_bytes(small_zip("verify-in"))
    e.signed = Path(p).read_bytes()
    os.unlink(p)
    yield e
    try:
        e.m.unmount()
    finally:
        e.m.cleanup()
        e.relay.stop()


def small_zip(tag):
    import io
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        z.writestr("config/app.properties", f"tag={tag}\n" * 20,
                   zipfile.ZIP_DEFLATED)
        z.writestr("config/stored.bin", tag.encode() * 8, zipfile.ZIP_STORED)
    return b.getvalue()


def message(tag):
    return (f"From: Sender <{SENDER}>\nTo: alice@example.org\n"
            f"Subject: {tag}\n\nHello from {tag}.\n").encode()


def content(e, folder, tag):
    if folder == "sign-out":
        return small_zip(tag)
    if folder == "verify-in":
        return e.signed
    if folder == "fields":
        return f"secret value of {tag}".encode()
    if folder == "mail":
        return message(tag)
    return f"record of {tag}\n".encode()


def java(e, *args, check=True):
    return run(["java", "-cp", str(e.java), "Writers", *map(str, args)],
               check=check, timeout=300)


def jarsigner_ok(e, path):
    p = run(["jarsigner", "-verify", "-strict", "-keystore", e.trust,
             "-storepass", "changeit", str(path)], check=False)
    assert p.returncode == 0 and "jar verified" in p.stdout, p.stdout + p.stderr


def mail_subjects(e, tag):
    return [d for _, _, d in list(e.relay.messages)
            if f"Subject: {tag}\r\n".encode() in d]


def no_hidden(e, folder):
    """Nothing but valid names listed (os.listdir shows dot names too;
    /history's .journal view is listed on purpose)."""
    names = os.listdir(e.m.path(folder))
    assert not [n for n in names if n.startswith(".") and n != ".journal"], names


def records(journal):
    """Record lines of a journal view: those before the first blank line."""
    return journal.split("\n\n")[0].splitlines()


def check(e, folder, name, data):
    """The end state, seen through the mount and an outside tool."""
    p = e.m.path(folder, name)
    if folder == "sign-out":
        got = Path(p).read_bytes()
        assert os.stat(p).st_size == len(got)
        out = e.tmp / f"out-{name}"
        out.write_bytes(got)
        jarsigner_ok(e, out)
        with zipfile.ZipFile(out) as zo, zipfile.ZipFile(
                __import__("io").BytesIO(data)) as zi:
            for n in zi.namelist():
                assert zo.read(n) == zi.read(n)
        assert os.getxattr(p, "user.hsmfs.sign").startswith(b"signed signer=")
    elif folder == "verify-in":
        got = Path(p).read_bytes()
        assert got == data and os.stat(p).st_size == len(data)
        assert os.getxattr(p, "user.hsmfs.verify").startswith(b"valid signer=")
        out = e.tmp / f"out-{name}"
        out.write_bytes(got)
        jarsigner_ok(e, out)
    elif folder == "fields":
        assert Path(p).read_bytes() == data and os.stat(p).st_size == len(data)
        env_ = Path(e.m.path("fields", ".sealed", name)).read_bytes()
        assert run([TOOL, "open-field", "-o", f"config={e.m.config}"],
                   input=env_).stdout == data
    elif folder == "mail":
        tag = name
        wait_for(lambda: name in os.listdir(e.m.path("mail", "sent")),
                 timeout=60, what=f"mail {name} sent")
        sent = Path(e.m.path("mail", "sent", name)).read_bytes()
        got = mail_subjects(e, tag)
        assert len(got) == 1, f"{name} delivered {len(got)} times"
        assert got[0] == sent
        assert name not in os.listdir(e.m.path("mail", "failed"))
    no_hidden(e, folder)


def write_src(e, tag, data):
    src = e.tmp / f"src-{tag}"
    src.write_bytes(data)
    return src


# ------------------------------------------------------------ the writers

def w_cp(e, s, d):
    run(["cp", s, d])


def w_cp_sparse(e, s, d):
    run(["cp", "--sparse=always", s, d])


def w_install(e, s, d):
    run(["install", "-m", "600", s, d])


def w_dd(e, s, d):
    run(["dd", f"if={s}", f"of={d}", "bs=1", "status=none"])


def w_tee(e, s, d):
    with open(s, "rb") as f:
        run(["tee", d], input=f.read())


def w_shell(e, s, d):
    run(["sh", "-c", 'cat "$1" > "$2"', "sh", s, d])


def w_rsync(e, s, d):
    run(["rsync", s, d])


def w_rsync_inplace(e, s, d):
    run(["rsync", "--inplace", s, d])


def w_mv(e, s, d):
    # From another file system: mv copies, then unlinks the source.
    mine = e.tmp / f"mv-{os.path.basename(d)}"
    shutil.copy(s, mine)
    run(["mv", str(mine), d])
    assert not mine.exists()


def w_rename(e, s, d):
    """Temp file + rename(), the old target readable until the rename."""
    dirname, name = os.path.split(d)
    tmp = os.path.join(dirname, f".{name}.{secrets.token_hex(3)}")
    old = Path(d).read_bytes() if os.path.exists(d) else None
    with open(tmp, "wb") as f:
        f.write(Path(s).read_bytes())
    assert os.path.basename(tmp) not in os.listdir(dirname)
    if old is not None:
        assert Path(d).read_bytes() == old
    os.rename(tmp, d)
    assert not os.path.exists(tmp)


def w_java_copy(e, s, d):
    java(e, "copy", s, d)


def w_java_write(e, s, d):
    java(e, "write", s, d)


def w_java_atomic(e, s, d):
    java(e, "atomic", s, d)


WRITERS = {
    "cp": w_cp, "cp-sparse": w_cp_sparse, "install": w_install, "dd": w_dd,
    "tee": w_tee, "shell": w_shell, "rsync": w_rsync,
    "rsync-inplace": w_rsync_inplace, "mv": w_mv, "rename": w_rename,
    "java-copy": w_java_copy, "java-write": w_java_write,
    "java-atomic": w_java_atomic,
}


@pytest.mark.parametrize("folder", ["sign-out", "verify-in", "fields", "mail"])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_writer(env, folder, writer):
    e = env
    tag = f"{writer}-{folder}-{secrets.token_hex(3)}"
    data = content(e, folder, tag)
    if folder == "verify-in":
        tag = tag + ".zip"
    dst = e.m.path(folder, tag)
    if folder != "mail" and writer != "java-write":
        # An older item under the name is replaced whole (a queued mail
        # is read-only; java-write creates).
        old = content(e, folder, "old-" + tag)
        Path(dst).write_bytes(old if folder != "verify-in" else e.signed)
    WRITERS[writer](e, str(write_src(e, tag, data)), dst)
    check(e, folder, tag, data)


@pytest.mark.parametrize("folder", ["sign-out", "verify-in", "fields", "mail"])
def test_rsync_a_whole_folder(env, folder):
    e = env
    src = e.tmp / f"tree-{folder}"
    src.mkdir()
    items = {}
    for i in range(3):
        tag = f"rsync-a-{folder}-{i}-{secrets.token_hex(3)}"
        data = content(e, folder, tag)
        if folder == "verify-in":
            tag += ".zip"
        (src / tag).write_bytes(data)
        os.chmod(src / tag, 0o644)
        items[tag] = data
    run(["rsync", "-a", f"{src}/", e.m.path(folder) + "/"])
    for tag, data in items.items():
        check(e, folder, tag, data)


def test_history_writers(env):
    """/history is append-only: the append writers add one record each,
    the creating writers make a new object of one record, and rsync's
    temp-file-then-rename is refused clearly."""
    e = env
    name = f"obj-{secrets.token_hex(3)}"
    p = e.m.path("history", name)
    recs = []

    def add(data, how):
        recs.append(data)
        if how == ">>":
            s = write_src(e, f"h{len(recs)}", data)
            run(["sh", "-c", 'cat "$1" >> "$2"', "sh", str(s), p])
        elif how == "ab":
            with open(p, "ab") as f:
                f.write(data)
        elif how == "java":
            java(e, "append", write_src(e, f"h{len(recs)}", data), p)

    for i, how in enumerate([">>", "ab", "java", ">>"]):
        add(f"record {i} by {how}\n".encode(), how)
    assert Path(p).read_bytes() == b"".join(recs)
    journal = Path(e.m.path("history", ".journal", name)).read_text()
    assert len(records(journal)) == len(recs), journal
    assert run([TOOL, "verify-history", "-o", f"config={e.m.config}", e.m.store,
                name], check=False).returncode == 0
    # Creating writers: a new object, one record.
    for w in ("cp", "dd", "tee", "shell", "rsync-inplace"):
        obj = f"new-{w}-{secrets.token_hex(3)}"
        data = f"first record by {w}\n".encode()
        WRITERS[w](e, str(write_src(e, obj, data)), e.m.path("history", obj))
        assert Path(e.m.path("history", obj)).read_bytes() == data
        j = Path(e.m.path("history", ".journal", obj)).read_text()
        assert len(records(j)) == 1, j
    # rsync's default (hidden temp + rename): one clear refusal.
    s = write_src(e, "rs", b"rsync record\n")
    r = run(["rsync", str(s), e.m.path("history", "by-rsync")], check=False)
    assert r.returncode != 0 and "Operation not permitted" in r.stderr, r.stderr
    assert "history/.by-rsync" in e.m.log() and "append-only" in e.m.log()
    assert "by-rsync" not in os.listdir(e.m.path("history"))
    no_hidden(e, "history")


def test_vim_save_sequence_on_a_field(env):
    """vim's :w on MNT/fields/NAME, as vim does it: the swap file .NAME.swp
    (written, fsync'ed, read back, open across the save), the writability
    probe 4913, the backup by rename (NAME~ is not a valid name: vim then
    copies it to the next 'backupdir', outside the mount), the new text
    written over NAME, backup and swap removed."""
    e = env
    d = e.m.path("fields")
    name = f"vim-{secrets.token_hex(3)}"
    p = os.path.join(d, name)
    Path(p).write_bytes(b"old value\n")
    new = b"new value typed in vim\n"
    swap = os.path.join(d, f".{name}.swp")
    sfd = os.open(swap, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    block0 = b"b0VIM 9.0\0" + b"\0" * 1014
    os.write(sfd, block0)
    os.pwrite(sfd, new.ljust(1024, b"\0"), 1024)
    os.fsync(sfd)
    assert os.pread(sfd, 1024, 1024).rstrip(b"\0") == new
    assert f".{name}.swp" not in os.listdir(d)
    assert os.stat(swap).st_size == 2048
    # :w
    probe = os.path.join(d, "4913")
    os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW,
                     0o600))
    os.unlink(probe)
    with pytest.raises(OSError) as ex:
        os.rename(p, p + "~")
    assert ex.value.errno == errno.EINVAL
    backup = e.tmp / f"{name}~"
    shutil.copyfile(p, backup)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, new)
    os.fsync(fd)
    os.close(fd)
    backup.unlink()
    os.close(sfd)
    os.unlink(swap)
    check(e, "fields", name, new)
    fields_store = Path(e.m.store) / "fields"
    assert not list((fields_store / ".temp").iterdir())
    assert not (fields_store / "4913").exists()
    # The swap file never reached the store as plaintext.
    for f in fields_store.rglob("*"):
        if f.is_file():
            assert new not in f.read_bytes()


def test_empty_temporaries_and_files(env):
    """An empty file created and closed is not an error; what becomes of
    it is defined per folder."""
    e = env
    t = secrets.token_hex(3)
    # sign-out: empty pending item, listed with size 0 and its state in the
    # attribute; refused where it would become visible (rename of an empty
    # temporary); a zip written to it later is signed.
    p = e.m.path("sign-out", f"touched-{t}.zip")
    run(["touch", p])
    assert os.stat(p).st_size == 0 and os.path.basename(p) in os.listdir(
        e.m.path("sign-out"))
    assert os.getxattr(p, "user.hsmfs.sign").startswith(b"pending: ")
    Path(p).write_bytes(small_zip(t))
    check(e, "sign-out", os.path.basename(p), small_zip(t))
    tmp = e.m.path("sign-out", f".empty-{t}")
    run(["touch", tmp])
    target = e.m.path("sign-out", f"target-{t}.zip")
    Path(target).write_bytes(small_zip("old"))
    old = Path(target).read_bytes()
    with pytest.raises(OSError) as ex:
        os.rename(tmp, target)
    assert ex.value.errno == errno.EINVAL
    assert b"empty" in os.getxattr(tmp, "user.hsmfs.sign")
    assert Path(target).read_bytes() == old
    os.unlink(tmp)
    # A refused temporary (not a zip): close fails, rename refused, target kept.
    bad = e.m.path("sign-out", f".bad-{t}")
    with pytest.raises(OSError) as ex:
        with open(bad, "wb") as f:
            f.write(b"not a zip")
    assert ex.value.errno == errno.EINVAL
    with pytest.raises(OSError) as ex:
        os.rename(bad, target)
    assert ex.value.errno == errno.EINVAL
    assert Path(target).read_bytes() == old
    os.unlink(bad)
    # fields: an empty value. verify-in: stored, and invalid when read.
    f = e.m.path("fields", f"empty-{t}")
    run(["touch", f])
    assert Path(f).read_bytes() == b"" and os.stat(f).st_size == 0
    v = e.m.path("verify-in", f"empty-{t}.zip")
    run(["touch", v])
    assert os.stat(v).st_size == 0
    with pytest.raises(OSError) as ex:
        open(v, "rb")
    assert ex.value.errno == errno.EBADMSG
    os.unlink(v)
    # mail: nothing to queue, no error; an empty temporary is not queued.
    run(["touch", e.m.path("mail", f"empty-{t}")])
    # Gone with the writer (its release reaches the daemon after close).
    wait_for(lambda: f"empty-{t}" not in os.listdir(e.m.path("mail")),
             what="empty mail writer released")
    assert not [q for q in os.listdir(Path(e.m.store) / "mail" / "queue")
                if q.startswith("empty")]
    mt = e.m.path("mail", f".empty-{t}")
    run(["touch", mt])
    with pytest.raises(OSError) as ex:
        os.rename(mt, e.m.path("mail", f"from-empty-{t}"))
    assert ex.value.errno == errno.EINVAL
    os.unlink(mt)
    # history: nothing appended, nothing listed.
    run(["touch", e.m.path("history", f"empty-{t}")])
    assert f"empty-{t}" not in os.listdir(e.m.path("history"))
    for folder in ("sign-out", "verify-in", "fields", "mail", "history"):
        no_hidden(e, folder)


# ------------------------------------------------------------ the readers

READ_FOLDERS = ["sign-out", "verify-in", "fields", "history", "mail"]


@pytest.mark.parametrize("folder", READ_FOLDERS)
def test_readers(env, folder):
    """cat, cp -a, rsync and tar out of the folder, unzip -l and JarFile on
    zips: every reader sees the served bytes (signed zip, verified bytes,
    plaintext, payloads, views) and no temporary."""
    e = env
    t = secrets.token_hex(3)
    name = f"read-{t}" + (".zip" if folder == "verify-in" else "")
    data = content(e, folder, name)
    view = folder
    if folder == "mail":
        Path(e.m.path("mail", name)).write_bytes(data)
        check(e, "mail", name, data)
        view = "mail/sent"
    elif folder == "history":
        with open(e.m.path("history", name), "ab") as f:
            f.write(data)
    else:
        Path(e.m.path(folder, name)).write_bytes(data)
    # A closed temporary waiting for its rename must stay invisible.
    if folder in ("sign-out", "verify-in", "fields", "mail"):
        tmp = e.m.path(folder, f".pending-{t}")
        Path(tmp).write_bytes(content(e, folder, f"pending-{t}")
                              if folder != "verify-in" else e.signed)
    served = Path(e.m.path(view, name)).read_bytes()
    if folder in ("verify-in", "fields", "history"):
        assert served == data
    out = e.tmp / f"readers-{folder}-{t}"
    out.mkdir()
    # cat
    assert subprocess.run(["cat", e.m.path(view, name)], check=True,
                          capture_output=True).stdout == served
    # cp -a of the item and of the whole folder
    run(["cp", "-a", e.m.path(view, name), str(out / "cp-a-item")])
    assert (out / "cp-a-item").read_bytes() == served
    run(["cp", "-a", e.m.path(view), str(out / "cp-a-dir")])
    assert (out / "cp-a-dir" / name).read_bytes() == served
    # rsync out
    run(["rsync", "-a", e.m.path(view) + "/", str(out / "rsync") + "/"])
    assert (out / "rsync" / name).read_bytes() == served
    # tar c
    tarball = out / "x.tar"
    run(["tar", "cf", str(tarball), "-C", e.m.path(view), "."])
    with tarfile.open(tarball) as tf:
        members = [m.name for m in tf.getmembers()]
        assert tf.extractfile(f"./{name}").read() == served
    for listing in (members, os.listdir(out / "cp-a-dir"),
                    os.listdir(out / "rsync")):
        assert not [n for n in listing if os.path.basename(n).startswith(".")
                    and os.path.basename(n) not in (".", "", ".journal")
                    and "/.journal/" not in n], listing
    if folder in ("sign-out", "verify-in"):
        u = run(["unzip", "-l", e.m.path(folder, name)]).stdout
        assert "config/app.properties" in u
        assert ("META-INF/MANIFEST.MF" in u)
        assert java(e, "jarfile", e.m.path(folder, name)).stdout.strip() == \
            "verified 2"
    if folder in ("sign-out", "verify-in", "fields", "mail"):
        os.unlink(tmp)
    no_hidden(e, folder)


# ------------------------------------------------------------ stale views

def test_views_never_stale(env):
    """Write through one view, stat and read the other at once: sizes and
    bytes exact, 200 alternating iterations (no sleeps). Fields: the
    plaintext and .sealed views; sign-out: the signed zip replacing the
    written bytes, written directly and through a renamed temporary."""
    e = env
    t = secrets.token_hex(3)
    plain = e.m.path("fields", f"stale-{t}")
    sealed = e.m.path("fields", ".sealed", f"stale-{t}")
    # Envelopes of known values to import through .sealed.
    envs = []
    for i in range(4):
        v = secrets.token_bytes(1 + 37 * i).hex().encode()
        Path(plain).write_bytes(v)
        envs.append((v, Path(sealed).read_bytes()))
    so = e.m.path("sign-out", f"stale-{t}.zip")
    for i in range(200):
        if i % 2 == 0:
            v = secrets.token_hex(1 + (i * 7) % 300).encode()
            with open(plain, "wb") as f:
                f.write(v)
            st = os.stat(sealed)
            env_ = Path(sealed).read_bytes()
            assert st.st_size == len(env_), i
            assert os.stat(plain).st_size == len(v)
        else:
            v, env_ = envs[(i // 2) % len(envs)]
            with open(sealed, "wb") as f:
                f.write(env_)
            assert os.stat(plain).st_size == len(v), i
            assert Path(plain).read_bytes() == v, i
            assert os.stat(sealed).st_size == len(env_)
        z = small_zip(f"{t}-{i}" * (1 + i % 5))
        if i % 2 == 0:
            with open(so, "wb") as f:
                f.write(z)
        else:
            tmp = e.m.path("sign-out", f".stale-{t}.tmp")
            with open(tmp, "wb") as f:
                f.write(z)
            os.rename(tmp, so)
        st = os.stat(so)
        got = Path(so).read_bytes()
        assert st.st_size == len(got) and len(got) > len(z), i
        assert f"{t}-{i}".encode() in zipfile.ZipFile(
            __import__("io").BytesIO(got)).read("config/app.properties")


# ------------------------------------------------------------ crashes, leftovers

@pytest.mark.parametrize("folder", ["sign-out", "verify-in", "fields"])
def test_kill9_mid_rsync(hsm, mount_factory, tmp_path, folder):
    """kill -9 the daemon while rsync's temporary is open: after remount no
    temporary is visible and the previous item is intact."""
    m = mount_factory()
    name = "item" if folder == "fields" else "item.zip"
    dst = m.path(folder, name)
    if folder != "fields":
        Path(m.path("sign-out", "prev.zip")).write_bytes(small_zip("previous"))
        if folder == "verify-in":
            Path(dst).write_bytes(Path(m.path("sign-out", "prev.zip")).read_bytes())
            os.unlink(m.path("sign-out", "prev.zip"))
        else:
            os.rename(m.path("sign-out", "prev.zip"), dst)
        big = tmp_path / "big.zip"
        with zipfile.ZipFile(big, "w") as z:
            z.writestr("blob.bin", os.urandom(8 << 20), zipfile.ZIP_STORED)
    else:
        Path(dst).write_bytes(b"previous value")
        big = tmp_path / "big"
        big.write_bytes(secrets.token_hex(400 << 10).encode()[:(800 << 10)])
    before = Path(dst).read_bytes()
    r = subprocess.Popen(["rsync", "--bwlimit=200", str(big), dst],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # rsync has created its hidden temporary and is writing into it.
    if folder != "fields":
        spool = Path(m.store) / folder / ".spool"
        wait_for(lambda: any(p.stat().st_size > 0 for p in spool.iterdir()),
                 timeout=60, what="rsync writing")
    else:
        wait_for(lambda: _fuse_names(m, folder, name), timeout=60,
                 what="rsync writing")
    m.kill9()
    r.wait(timeout=60)
    assert r.returncode != 0
    m.start()
    d = m.path(folder)
    assert os.listdir(d) == [name]
    assert Path(dst).read_bytes() == before
    if folder == "sign-out":
        assert os.getxattr(dst, "user.hsmfs.sign").startswith(b"signed")
    if folder == "verify-in":
        assert os.getxattr(dst, "user.hsmfs.verify").startswith(b"valid")
    for sub in (".temp", ".spool"):
        area = Path(m.store) / folder / sub
        if area.exists():
            assert not [p for p in area.iterdir()], list(area.iterdir())
    m.unmount()


def _fuse_names(m, folder, name):
    """Names rsync's temporary may have, probed by stat (never listed)."""
    out = []
    for p in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            t = os.readlink(p)
        except OSError:
            continue
        if t.startswith(m.path(folder, f".{name}.")):
            out.append(os.path.basename(t))
    return out


def test_leftover_temporaries_removed_after_timeout(mount_factory):
    m = mount_factory(opts={"temp_max_age": 1})
    t = m.path("sign-out", ".left.zip.x1")
    f = m.path("fields", ".left.x1")
    run(["touch", t, f])
    assert os.path.exists(t) and os.path.exists(f)

    def gone():
        os.listdir(m.path("sign-out"))
        os.listdir(m.path("fields"))
        return not os.path.exists(t) and not os.path.exists(f)
    wait_for(gone, timeout=30, what="leftover temporaries swept")
    assert "temporary file(s) of writers older than 1 s" in m.log()
    # Each name, for whoever copied a dot file in on purpose.
    assert "removed temporary .left.x1: not renamed onto a name" in m.log()
    m.unmount()


def _renameat2(a, b, flags):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), flags) != 0:
        return ctypes.get_errno()
    return 0


@pytest.mark.parametrize("folder", ["sign-out", "verify-in", "fields"])
def test_rename_exchange_never_hides_an_item(env, folder):
    """RENAME_EXCHANGE of a temporary and an item would turn the item into
    a hidden temporary (and leave the per-name records behind);
    RENAME_WHITEOUT would put a device node in the store: EINVAL, both
    names as they were."""
    e = env
    item, tmp = e.m.path(folder, f"xchg-{folder}"), e.m.path(folder, ".xchg.t")
    Path(item).write_bytes(content(e, folder, "xchg-item"))
    before = Path(item).read_bytes()
    Path(tmp).write_bytes(content(e, folder, "xchg-tmp"))
    for flags in (2, 4):   # RENAME_EXCHANGE, RENAME_WHITEOUT
        assert _renameat2(tmp, item, flags) == errno.EINVAL
        assert _renameat2(item, tmp, flags) == errno.EINVAL
        assert Path(item).read_bytes() == before
        assert os.path.basename(item) in os.listdir(e.m.path(folder))
        assert os.path.exists(tmp)
    no_hidden(e, folder)
    # A plain rename still publishes the temporary.
    os.rename(tmp, item)
    assert not os.path.exists(tmp)
    check(e, folder, os.path.basename(item), content(e, folder, "xchg-tmp"))


def test_sweep_spares_open_slow_writers(mount_factory):
    """A writer slower than temp_max_age (a long rsync, a stalled Java
    copy) keeps its temporary: the sweep removes only closed leftovers;
    its bytes, written before and after the sweep, are published whole."""
    m = mount_factory(opts={"temp_max_age": 1})
    data = {"sign-out": small_zip("slow"), "verify-in": b"x" * 1000,
            "fields": b"secret" * 100, "mail": message("slow")}
    open_ = {}
    for folder, d in data.items():
        f = open(m.path(folder, ".slow.t"), "wb", buffering=0)
        f.write(d[:len(d) // 2])
        open_[folder] = f
    left = m.path("fields", ".left.t")
    Path(left).write_bytes(b"abandoned")

    def swept():
        for folder in data:
            os.listdir(m.path(folder))
        return not os.path.exists(left)
    wait_for(swept, timeout=30, what="abandoned temporary swept")
    for folder, d in data.items():
        f = open_[folder]
        f.write(d[len(d) // 2:])
        f.close()
        os.rename(m.path(folder, ".slow.t"), m.path(folder, "slow"))
        assert "slow" in os.listdir(m.path(folder))
    assert Path(m.path("fields", "slow")).read_bytes() == data["fields"]
    # Stored as written (reading it fails: not a signed zip).
    assert os.stat(m.path("verify-in", "slow")).st_size == 1000
    with zipfile.ZipFile(m.path("sign-out", "slow")) as z:
        assert z.read("config/app.properties") == b"tag=slow\n" * 20
    assert os.getxattr(m.path("sign-out", "slow"),
                       "user.hsmfs.sign").startswith(b"signed")
    m.unmount()


@pytest.mark.parametrize("opts", [
    "", "set backupcopy=yes", "set backupcopy=no", "set nobackup nowritebackup",
    "set backup backupdir=/tmp"])
def test_real_vim_saves_a_field(env, opts):
    """vim.tiny itself edits MNT/fields/NAME (swap file in the folder,
    each 'backupcopy'/'writebackup' variant): the field holds the edited
    value, nothing else is listed, no plaintext reaches the store."""
    e = env
    d = e.m.path("fields")
    name = f"rvim-{secrets.token_hex(3)}"
    Path(d, name).write_bytes(b"user=alice\npassword=old\n")
    secret = f"new-{secrets.token_hex(8)}".encode()
    p = run(["vim.tiny", "-u", "NONE", "-i", "NONE", "-N", "-es",
             "-c", "set directory=.", "-c", opts or "set nocompatible",
             "-c", f"%s/password=old/password={secret.decode()}/", "-c", "wq",
             name], cwd=d, check=False, env={**os.environ, "HOME": str(e.tmp)})
    assert p.returncode == 0, p.stdout + p.stderr
    check(e, "fields", name, b"user=alice\npassword=" + secret + b"\n")
    assert name in os.listdir(d)
    for f in (Path(e.m.store) / "fields").rglob("*"):
        if f.is_file():
            assert secret not in f.read_bytes(), f
