#!/usr/bin/env python3
"""Regenerate the forged-zip fixtures of issue 12 (one per attack class and
base zip) from signed-by-jarsigner.zip and signed-by-hsmfs.zip. Every
fixture keeps the signed entries byte for byte and changes only what an
attacker can change after signing; each one is refused by hsmfs with the
reason listed in FIXTURES below (tests/test_zip.py checks it). The bytes
are deterministic: running this again gives the committed files.

Usage: tests/data/jar/make_forged.py [OUTDIR]   (default: this directory)
"""
import struct
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASES = {"js": "signed-by-jarsigner.zip", "hs": "signed-by-hsmfs.zip"}
EVIL = b"admin.password=attacker\nfeature.unsafe=on\n"


def u16(b, o):
    return struct.unpack_from("<H", b, o)[0]


def u32(b, o):
    return struct.unpack_from("<I", b, o)[0]


class Zip:
    """A zip as body (everything before the central directory) and a list
    of raw central directory records; the bases have no comments."""

    def __init__(self, data):
        e = len(data) - 22
        assert data[e:e + 4] == b"PK\x05\x06" and u16(data, e + 20) == 0
        n, cdoff = u16(data, e + 10), u32(data, e + 16)
        self.body = bytearray(data[:cdoff])
        self.cd = []
        p = cdoff
        for _ in range(n):
            nl, xl, cl = struct.unpack_from("<HHH", data, p + 28)
            self.cd.append(bytearray(data[p:p + 46 + nl + xl + cl]))
            p += 46 + nl + xl + cl

    def names(self):
        return [bytes(r[46:46 + u16(r, 28)]).decode() for r in self.cd]

    def record(self, name):
        return self.cd[self.names().index(name)]

    def add(self, name, data, method=0, usize=None, crc=None, raw=None):
        """Append an entry (local header + data) after the signed ones."""
        comp = raw if raw is not None else (
            data if method == 0 else deflate(data))
        crc = zlib.crc32(data) if crc is None else crc
        usize = len(data) if usize is None else usize
        nb = name.encode()
        off = len(self.body)
        self.body += struct.pack("<IHHHHHIIIHH", 0x04034b50, 20, 0x800,
                                 method, 0, 0x21, crc, len(comp), usize,
                                 len(nb), 0) + nb + comp
        self.cd.append(bytearray(cdrec(nb, method, crc, len(comp), usize, off)))
        return off

    def bytes(self, pre_eocd=b"", comment=b"", eocd=None):
        cd = b"".join(self.cd)
        n, off = len(self.cd), len(self.body)
        e = eocd or (0, 0, n, n, len(cd), off)
        return (bytes(self.body) + cd + pre_eocd +
                struct.pack("<IHHHHIIH", 0x06054b50, *e, len(comment)) +
                comment)


def deflate(data):
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def cdrec(nb, method, crc, csize, usize, off, extra=b"", comment=b""):
    return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014b50, 20, 20, 0x800,
                       method, 0, 0x21, crc, csize, usize, len(nb),
                       len(extra), len(comment), 0, 0, 0, off) + nb + extra + \
        comment


def set_tail(rec, extra=None, comment=None):
    """Replace a central record's extra field and/or comment."""
    nl, xl, cl = struct.unpack_from("<HHH", rec, 28)
    name = rec[46:46 + nl]
    x = rec[46 + nl:46 + nl + xl] if extra is None else extra
    c = rec[46 + nl + xl:] if comment is None else comment
    struct.pack_into("<HH", rec, 30, len(x), len(c))
    del rec[46:]
    rec += name + x + c


def hidden_directory(z, base_off):
    """Bytes to be placed at file offset base_off: a local header with
    EVIL for conf/app.properties, then a complete second central directory
    (the signed entries, but conf/app.properties pointing at the new local
    header) and its end record. A reader picking this end record reads
    attacker content under a signed name."""
    name = b"conf/app.properties"
    lh = struct.pack("<IHHHHHIIIHH", 0x04034b50, 20, 0x800, 0, 0, 0x21,
                     zlib.crc32(EVIL), len(EVIL), len(EVIL), len(name), 0)
    blob = lh + name + EVIL
    recs = []
    for r, nm in zip(z.cd, z.names()):
        if nm == "conf/app.properties":
            recs.append(cdrec(name, 0, zlib.crc32(EVIL), len(EVIL), len(EVIL),
                              base_off))
        else:
            rr = bytearray(r)
            set_tail(rr, extra=b"", comment=b"")
            recs.append(bytes(rr))
    cd = b"".join(recs)
    cd_off = base_off + len(blob)
    return blob + cd + struct.pack("<IHHHHIIH", 0x06054b50, 0, 0, len(recs),
                                   len(recs), len(cd), cd_off, 0)


def zip64_end(n, cd_size, cd_off, rec_off):
    rec = struct.pack("<IQHHIIQQQQ", 0x06064b50, 44, 45, 45, 0, 0, n, n,
                      cd_size, cd_off)
    loc = struct.pack("<IIQI", 0x07064b50, 0, rec_off, 1)
    return rec + loc


# ---------------------------------------------------------------- classes

def c1_dir_in_entry_comment(z):
    # the comment starts where the last record (without one) ends
    comment_at = len(z.body) + sum(len(r) for r in z.cd)
    set_tail(z.cd[-1], comment=hidden_directory(z, comment_at))
    return z.bytes()


def c1_dir_in_extra(z):
    last = z.cd[-1]
    at = len(z.body) + sum(len(r) for r in z.cd) + 4
    hid = hidden_directory(z, at)
    set_tail(last, extra=struct.pack("<HH", 0x6666, len(hid)) + hid)
    return z.bytes()


def c1_dir_in_archive_comment(z):
    at = len(z.body) + sum(len(r) for r in z.cd) + 22
    return z.bytes(comment=hidden_directory(z, at))


def c1_entry_comment(z):
    set_tail(z.cd[-1], comment=b"just a comment")
    return z.bytes()


def c1_archive_comment(z):
    return z.bytes(comment=b"just a comment")


def c1_cd_record_in_extra(z):
    """A copy of a central record (for conf/app.properties) in an extra
    field: a reader resynchronising on signatures would see it."""
    rec = bytes(z.record("conf/app.properties"))
    set_tail(z.cd[-1], extra=struct.pack("<HH", 0x6666, len(rec)) + rec)
    return z.bytes()


def c2_zip64_not_needed(z):
    cd = sum(len(r) for r in z.cd)
    n = len(z.cd)
    return z.bytes(pre_eocd=zip64_end(n, cd, len(z.body), len(z.body) + cd),
                   eocd=(0, 0, n, n, cd, len(z.body)))


def c2_zip64_disagrees(z):
    """Classic record: one entry fewer (README.txt, the last, unseen by a
    reader that trusts it) and the offset marker; zip64 record: all."""
    cd = sum(len(r) for r in z.cd)
    n = len(z.cd)
    return z.bytes(pre_eocd=zip64_end(n, cd, len(z.body), len(z.body) + cd),
                   eocd=(0, 0, n - 1, n - 1, cd, 0xffffffff))


def c2_locator_in_extra(z):
    """A zip64 locator (and record) at the end of the last central record's
    extra field, directly before the end record: readers that follow any
    locator use its counts."""
    cd = sum(len(r) for r in z.cd)
    n = len(z.cd)
    last = z.cd[-1]
    body = 4 + 56 + 20
    rec_off = len(z.body) + cd + 4 + 4
    tail = zip64_end(n, cd + body, len(z.body), rec_off)
    set_tail(last, extra=struct.pack("<HH", 0x6666, 56 + 20 + 4) + b"\0" * 4 +
             tail)
    return z.bytes()


def signer_base(z):
    return [n for n in z.names() if n.endswith(".SF")][0][:-3]


def c3_sig_file(z):
    z.add("META-INF/SIG-anything", EVIL)
    return z.bytes()


def c3_second_block(z):
    base = signer_base(z)
    z.add(base + ".EC", b"\x30\x03\x02\x01\x00")
    return z.bytes()


def c3_unsigned_meta_file(z):
    z.add("META-INF/extra.properties", EVIL)
    return z.bytes()


def c4_dir_with_data(z):
    garbage = deflate(EVIL)
    z.add("hidden/", b"", method=8, usize=0, crc=0, raw=garbage)
    return z.bytes()


def c8_many_small_entries(z):
    """40 entries of 512 KiB of zeros (~500 bytes each compressed): each
    below the old 1 MiB exemption, together 20 MiB from ~30 KiB."""
    zeros = bytes(512 << 10)
    for i in range(40):
        z.add(f"bomb/{i:02d}.bin", zeros, method=8)
    return z.bytes()


def x_symlink_mode(z):
    # Unsigned external attributes: a Unix symlink mode on a signed file
    # makes Info-ZIP unzip extract it as a symlink to its content.
    r = z.record("conf/app.properties")
    struct.pack_into("<HI", r, 4, (3 << 8) | 20, 0)
    struct.pack_into("<I", r, 38, 0o120777 << 16)
    return z.bytes()


def x_setuid_mode(z):
    r = z.record("conf/app.properties")
    struct.pack_into("<H", r, 4, (3 << 8) | 20)
    struct.pack_into("<I", r, 38, 0o104755 << 16)
    return z.bytes()


def x_dos_dir_attr(z):
    struct.pack_into("<I", z.record("conf/app.properties"), 38, 0x10)
    return z.bytes()


def x_dir_named_like_file(z, name="README.txt/"):
    # An unsigned directory entry (directories need no manifest section)
    # named like a signed file.
    nb = name.encode()
    off = len(z.body)
    z.body += struct.pack("<IHHHHHIIIHH", 0x04034b50, 20, 0x800, 0, 0,
                          0x21, 0, 0, 0, len(nb), 0) + nb
    z.cd.append(bytearray(cdrec(nb, 0, 0, 0, 0, off)))
    return z.bytes()


def x_dir_under_manifest(z):
    return x_dir_named_like_file(z, "META-INF/MANIFEST.MF/x/")


FIXTURES = {
    "c1-dir-in-entry-comment": (c1_dir_in_entry_comment,
                                "a second end-of-central-directory signature"),
    "c1-dir-in-extra": (c1_dir_in_extra,
                        "a second end-of-central-directory signature"),
    "c1-dir-in-archive-comment": (c1_dir_in_archive_comment,
                                  "a second end-of-central-directory signature"),
    "c1-entry-comment": (c1_entry_comment, "entry comment (refused"),
    "c1-archive-comment": (c1_archive_comment, "archive comment (refused"),
    "c1-cd-record-in-extra": (c1_cd_record_in_extra,
                              "zip structure signature inside the central extra"),
    "c2-zip64-not-needed": (c2_zip64_not_needed,
                            "zip64 end locator that the end record does not need"),
    "c2-zip64-disagrees": (c2_zip64_disagrees,
                           "end record and zip64 end record disagree"),
    "c2-locator-in-extra": (c2_locator_in_extra,
                            "zip64 end locator that the end record does not need"),
    "c3-sig-file": (c3_sig_file,
                    "entry META-INF/SIG-anything is not signed"),
    "c3-second-block": (c3_second_block, "has 2 signature blocks"),
    "c3-unsigned-meta-file": (c3_unsigned_meta_file,
                              "entry META-INF/extra.properties is not signed"),
    "c4-dir-with-data": (c4_dir_with_data, "directory entry with data"),
    "c8-many-small-entries": (c8_many_small_entries, "zip bomb"),
    "x-symlink-mode": (x_symlink_mode, "entry with external attributes 0xa1ff0000"),
    "x-setuid-mode": (x_setuid_mode, "entry with external attributes 0x89ed0000"),
    "x-dos-dir-attr": (x_dos_dir_attr, "entry with external attributes 0x00000010"),
    "x-dir-named-like-file": (x_dir_named_like_file,
                              "entry name goes through a file: README.txt/"),
    "x-dir-under-manifest": (x_dir_under_manifest,
                             "entry name goes through a file: META-INF/MANIFEST.MF/x/"),
}


def main(out=None):
    out = Path(out or (sys.argv[1] if len(sys.argv) > 1 else HERE))
    for cls, (fn, _) in FIXTURES.items():
        for tag, base in BASES.items():
            z = Zip((HERE / base).read_bytes())
            (out / f"{cls}.{tag}.zip").write_bytes(fn(z))


if __name__ == "__main__":
    main()
