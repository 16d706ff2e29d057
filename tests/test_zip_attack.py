"""/verify-in attacked through the kernel (issue 12, beyond the forged zips):
bytes written by an unverified writer handle, or a verified zip replaced,
must never reach a reader of a verified zip."""
import errno
import mmap
import os

import pytest

from test_verify_in_access import read_all, signed  # noqa: F401
from test_zip import jarsign, make_zip, pki, write_file, zm  # noqa: F401


@pytest.mark.parametrize("wflags", [os.O_WRONLY, os.O_RDWR])
def test_writer_pages_never_reach_a_verified_reader(zm, signed, wflags):  # noqa: F811
    """A second handle writing the name (O_WRONLY is not verified): its
    bytes reach neither the verified reader nor, before close, the name;
    at close they are stored and refused."""
    d = zm.path("verify-in")
    p = os.path.join(d, "good.zip")
    assert write_file(p, signed) == 0
    r = os.open(p, os.O_RDONLY)
    try:
        assert read_all(r) == signed
        w = os.open(p, wflags)
        try:
            evil = b"E" * 8192
            assert os.pwrite(w, evil, 0) == len(evil)
            got = os.pread(r, 8192, 0)
            assert got == signed[:8192]
            assert read_all_path(p) == signed
        finally:
            os.close(w)
        assert read_all(r) == signed
        with pytest.raises(OSError) as e:      # stored at close: not valid
            open(p, "rb")
        assert e.value.errno == errno.EBADMSG
    finally:
        os.close(r)


def test_two_verified_contents_never_mix_in_one_read(zm, pki, tmp_path):  # noqa: F811
    """A reader of zip A and a reader of zip B under the same name (B
    replaced A while A was open): each reads exactly what it verified, the
    pages of one never show in the other."""
    a = jarsign(pki["good"], make_zip(tmp_path / "a.zip")).read_bytes()
    b = jarsign(pki["good"], make_zip(tmp_path / "b.zip")).read_bytes()
    assert a != b
    p = os.path.join(zm.path("verify-in"), "cfg.zip")
    assert write_file(p, a) == 0
    ra = os.open(p, os.O_RDONLY)
    try:
        assert write_file(p, b) == 0
        rb = os.open(p, os.O_RDONLY)
        try:
            assert read_all(ra) == a      # A's pages, through A's handle
            assert read_all(rb) == b
            assert read_all(ra) == a
        finally:
            os.close(rb)
    finally:
        os.close(ra)



def test_shared_mmap_refused_sendfile_reads_verified_bytes(zm, signed, tmp_path):  # noqa: F811
    """MAP_SHARED needs the shared page cache: refused (ENODEV), like
    /sign-out. sendfile() gets the verified bytes."""
    p = os.path.join(zm.path("verify-in"), "good.zip")
    assert write_file(p, signed) == 0
    fd = os.open(p, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as e:
            mmap.mmap(fd, len(signed), mmap.MAP_SHARED, mmap.PROT_READ)
        assert e.value.errno == errno.ENODEV
        out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            n = 0
            while n < len(signed):
                k = os.sendfile(out, fd, n, len(signed) - n)
                assert k > 0
                n += k
        finally:
            os.close(out)
        assert (tmp_path / "out").read_bytes() == signed
    finally:
        os.close(fd)


def test_reader_keeps_its_size_when_a_smaller_zip_replaces_it(zm, pki, signed, tmp_path):  # noqa: F811
    """fstat and reads of a verified handle follow the bytes it verified,
    not a smaller zip stored since under the name."""
    import zipfile
    with zipfile.ZipFile(tmp_path / "small.zip", "w") as z:
        z.writestr("a.txt", "a=1\n")
    small = jarsign(pki["good"], tmp_path / "small.zip").read_bytes()
    assert len(small) < len(signed)
    p = os.path.join(zm.path("verify-in"), "cfg.zip")
    assert write_file(p, signed) == 0
    r = os.open(p, os.O_RDONLY)
    try:
        assert write_file(p, small) == 0
        assert os.stat(p).st_size == len(small)
        # (fstat shows the name's size: one kernel inode per name)
        assert read_all(r) == signed
    finally:
        os.close(r)


def test_store_file_changed_in_place_with_its_mtime_reset_is_verified_again(zm, signed):  # noqa: F811
    """.meta finds a stored zip's content hash without reading it; bytes
    changed in place in STORE (same inode and size, mtime put back, as
    `rsync --inplace --times` or a careless admin does) are not taken for
    the verified ones: the change of ctime shows them."""
    p = os.path.join(zm.path("verify-in"), "good.zip")
    assert write_file(p, signed) == 0
    assert read_all_path(p) == signed          # verified, verdict cached
    stored = os.path.join(zm.store, "verify-in", "good.zip")
    st = os.stat(stored)
    evil = bytearray(signed)
    evil[100] ^= 1                             # inside the manifest's data
    fd = os.open(stored, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(evil), 0)
    finally:
        os.close(fd)
    os.utime(stored, ns=(st.st_atime_ns, st.st_mtime_ns))
    st2 = os.stat(stored)
    assert (st2.st_ino, st2.st_size, st2.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    with pytest.raises(OSError) as e:
        open(p, "rb")
    assert e.value.errno == errno.EBADMSG


def read_all_path(p):
    with open(p, "rb") as f:
        return f.read()


def test_symlink_planted_in_the_store_is_not_followed(zm, signed, tmp_path):  # noqa: F811
    """getattr shows a symlink in STORE/verify-in as itself; open does not
    follow it either (ELOOP), whatever it points at."""
    outside = tmp_path / "outside.zip"
    outside.write_bytes(signed)
    os.symlink(outside, os.path.join(zm.store, "verify-in", "link.zip"))
    p = os.path.join(zm.path("verify-in"), "link.zip")
    for flags in (os.O_RDONLY, os.O_RDWR, os.O_WRONLY):
        with pytest.raises(OSError) as e:
            os.close(os.open(p, flags))
        assert e.value.errno == errno.ELOOP, flags
    with pytest.raises(OSError):
        os.getxattr(p, "user.hsmfs.verify")


def test_rdonly_with_trunc_neither_cuts_nor_skips_verification(zm, signed):  # noqa: F811
    """O_RDONLY|O_TRUNC (Linux truncates when the caller may write):
    the stored zip is not cut, and a bad zip is still refused."""
    d = zm.path("verify-in")
    p = os.path.join(d, "good.zip")
    assert write_file(p, signed) == 0
    try:
        fd = os.open(p, os.O_RDONLY | os.O_TRUNC)
    except OSError as e:
        assert e.errno == errno.EPERM
    else:
        try:
            assert read_all(fd) == signed
        finally:
            os.close(fd)
    assert read_all_path(p) == signed
    bad = os.path.join(d, "bad.zip")
    assert write_file(bad, signed + b"junk") == 0
    with pytest.raises(OSError) as e:
        os.close(os.open(bad, os.O_RDONLY | os.O_TRUNC))
    assert e.value.errno in (errno.EBADMSG, errno.EPERM)
    assert (open(os.path.join(zm.store, "verify-in", "bad.zip"), "rb").read()
            == signed + b"junk")
