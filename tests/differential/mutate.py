#!/usr/bin/python3
"""Deterministic zip mutants for the differential harness.

From signed zips (jarsigner- and hsmfs-signed), make mutants that move,
duplicate or hide zip structures: end records moved, duplicated or held in
comments, second central directories, needless zip64 records and locators,
extra fields, overlapping data, data descriptors, directory entries with
data, duplicate names, case variants under META-INF, local/central
mismatches, re-compressed entries, reordered entries... Most mutations keep
every signed byte (manifest, .SF, block and the entries' uncompressed
bytes) as it was, so that a reader picking the honest view still finds a
valid signature: those are the dangerous ones, where another reader may
see something else.

  tests/differential/mutate.py [--seed N] [--count N] OUTDIR BASE.zip...

writes COUNT mutants per base into OUTDIR (names say which mutations were
applied). The same seed and bases give the same bytes.
"""
import argparse
import copy
import os
import random
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

SIG_LOCAL, SIG_CD, SIG_EOCD = 0x04034b50, 0x02014b50, 0x06054b50
SIG_Z64EOCD, SIG_Z64LOC, SIG_DD = 0x06064b50, 0x07064b50, 0x08074b50
EVIL = b"admin.password=attacker\nurl=https://evil.example/\n"


class Late:
    """A piece of the file whose bytes depend on where things land (its
    length does not): fn(ctx, pos) -> bytes of length n."""

    def __init__(self, n, fn):
        self.n, self.fn = n, fn


def seglen(segs):
    return sum(s.n if isinstance(s, Late) else len(s) for s in segs)


@dataclass
class Ent:
    name: bytes
    data: bytes                  # compressed bytes as stored
    plain: bytes                 # uncompressed bytes
    method: int
    crc: int
    flags: int = 0
    ver: int = 20
    vermade: int = 20
    time: int = 0
    date: int = 0x21
    iattr: int = 0
    eattr: int = 0
    lextra: list = field(default_factory=list)
    cextra: list = field(default_factory=list)
    ccomment: list = field(default_factory=list)
    dd: bytes = b""              # data descriptor as stored (flag bit 3)
    # Overrides of what the local header / central record say (None: true).
    lname: bytes = None
    lmethod: int = None
    lflags: int = None
    lcrc: int = None
    lcsize: int = None
    lusize: int = None
    cmethod: int = None
    cflags: int = None
    ccrc: int = None
    ccsize: int = None
    cusize: int = None
    cname: bytes = None
    loff: object = None          # fn(ctx) -> int, or None: the real offset
    disk: int = 0
    gap_after: list = field(default_factory=list)   # bytes after its data


@dataclass
class Arc:
    ents: list                   # in local (file) order
    cd: list                     # in central-directory order (may repeat)
    prefix: list = field(default_factory=list)
    pre_cd: list = field(default_factory=list)
    mid: list = field(default_factory=list)         # between CD and end record
    comment: list = field(default_factory=list)
    trailer: list = field(default_factory=list)
    zip64: str = ""              # "", "needed" (classic fields 0xff..), "unneeded"
    eocd: dict = field(default_factory=dict)        # field overrides
    z64: dict = field(default_factory=dict)


def parse(data):
    """A well-formed base zip into the model (no zip64, one disk)."""
    eo = data.rfind(struct.pack("<I", SIG_EOCD))
    _, _, _, n, _, cdsize, cdoff, clen = struct.unpack("<IHHHHIIH", data[eo:eo + 22])
    ents, p = [], cdoff
    byoff = {}
    for _ in range(n):
        (sig, vermade, ver, flags, method, tm, dt, crc, csize, usize, nlen, xlen,
         cl, disk, ia, ea, loff) = struct.unpack("<IHHHHHHIIIHHHHHII", data[p:p + 46])
        assert sig == SIG_CD
        name = data[p + 46:p + 46 + nlen]
        cx = data[p + 46 + nlen:p + 46 + nlen + xlen]
        cc = data[p + 46 + nlen + xlen:p + 46 + nlen + xlen + cl]
        p += 46 + nlen + xlen + cl
        lh = struct.unpack("<IHHHHHIIIHH", data[loff:loff + 30])
        lnl, lxl = lh[9], lh[10]
        lx = data[loff + 30 + lnl:loff + 30 + lnl + lxl]
        doff = loff + 30 + lnl + lxl
        comp = data[doff:doff + csize]
        plain = comp if method == 0 else zlib.decompress(comp, -15)
        dd = b""
        if flags & 8:
            q = doff + csize
            dd = data[q:q + 16] if data[q:q + 4] == struct.pack("<I", SIG_DD) else data[q:q + 12]
        e = Ent(name=name, data=comp, plain=plain, method=method, crc=crc, flags=flags,
                ver=ver, vermade=vermade, time=tm, date=dt, iattr=ia, eattr=ea,
                lextra=[lx] if lx else [], cextra=[cx] if cx else [],
                ccomment=[cc] if cc else [], dd=dd)
        if flags & 8:
            e.lcrc, e.lcsize, e.lusize = lh[6], lh[7], lh[8]
        ents.append((loff, e))
        byoff[loff] = e
    cd = [e for _, e in ents]
    ents.sort(key=lambda x: x[0])
    return Arc(ents=[e for _, e in ents], cd=cd,
               comment=[data[eo + 22:eo + 22 + clen]] if clen else [])


def _local(e, ctx, at):
    name = e.name if e.lname is None else e.lname
    lx = b"".join(_render(e.lextra, ctx, at + 30 + len(name)))
    crc = e.crc if e.lcrc is None else e.lcrc
    cs = len(e.data) if e.lcsize is None else e.lcsize
    us = len(e.plain) if e.lusize is None else e.lusize
    return struct.pack("<IHHHHHIIIHH", SIG_LOCAL, e.ver,
                       e.flags if e.lflags is None else e.lflags,
                       e.method if e.lmethod is None else e.lmethod,
                       e.time, e.date, crc & 0xffffffff, cs & 0xffffffff,
                       us & 0xffffffff, len(name), len(lx)) + name + lx


def _central(e, ctx, loff, at):
    name = e.name if e.cname is None else e.cname
    cx = b"".join(_render(e.cextra, ctx, at + 46 + len(name)))
    cc = b"".join(_render(e.ccomment, ctx, at + 46 + len(name) + len(cx)))
    if e.loff is not None:
        loff = e.loff(ctx) if ctx is not None else 0
    return struct.pack("<IHHHHHHIIIHHHHHII", SIG_CD, e.vermade, e.ver,
                       e.flags if e.cflags is None else e.cflags,
                       e.method if e.cmethod is None else e.cmethod,
                       e.time, e.date, (e.crc if e.ccrc is None else e.ccrc) & 0xffffffff,
                       (len(e.data) if e.ccsize is None else e.ccsize) & 0xffffffff,
                       (len(e.plain) if e.cusize is None else e.cusize) & 0xffffffff,
                       len(name), len(cx), len(cc), e.disk, e.iattr, e.eattr,
                       loff & 0xffffffff) + name + cx + cc


def _render(segs, ctx, pos):
    out = []
    for s in segs:
        if isinstance(s, Late):
            b = s.fn(ctx, pos) if ctx is not None else b"\0" * s.n
            assert len(b) == s.n, (len(b), s.n)
            out.append(b)
        else:
            out.append(s)
        if pos is not None:
            pos += len(out[-1])
    return out


def _emit(a, ctx):
    """One pass: the file's bytes and the positions things landed at."""
    out, pos = [], {"loff": {}}
    cur = 0

    def put(b):
        nonlocal cur
        out.append(b)
        cur += len(b)

    for b in _render(a.prefix, ctx, cur):
        put(b)
    for e in a.ents:
        pos["loff"][id(e)] = cur
        put(_local(e, ctx, cur))
        put(e.data)
        put(e.dd)
        for b in _render(e.gap_after, ctx, cur):
            put(b)
    for b in _render(a.pre_cd, ctx, cur):
        put(b)
    pos["cd_off"] = cur
    for e in a.cd:
        put(_central(e, ctx, ctx["loff"].get(id(e), 0) if ctx else 0, cur))
    pos["cd_end"] = cur
    for b in _render(a.mid, ctx, cur):
        put(b)
    n = len(a.cd)
    cdsize, cdoff = pos["cd_end"] - pos["cd_off"], pos["cd_off"]
    if a.zip64:
        pos["z64"] = cur
        z = dict(dict(n_disk=n, n_total=n, cd_size=cdsize, cd_off=cdoff, size=44,
                      disk=0, cddisk=0), **a.z64)
        put(struct.pack("<IQHHIIQQQQ", SIG_Z64EOCD, z["size"], 45, 45, z["disk"],
                        z["cddisk"], z["n_disk"], z["n_total"], z["cd_size"], z["cd_off"]))
        put(struct.pack("<IIQI", SIG_Z64LOC, 0, a.z64.get("loc_off", pos["z64"]), 1))
    pos["eocd"] = cur
    clen = seglen(a.comment)
    f = dict(disk=0, cddisk=0, n_disk=n, n_total=n, cd_size=cdsize, cd_off=cdoff,
             clen=clen)
    if a.zip64 == "needed":
        f.update(n_disk=0xffff, n_total=0xffff, cd_size=0xffffffff, cd_off=0xffffffff)
    f.update(a.eocd)
    put(struct.pack("<IHHHHIIH", SIG_EOCD, f["disk"], f["cddisk"], f["n_disk"] & 0xffff,
                    f["n_total"] & 0xffff, f["cd_size"] & 0xffffffff,
                    f["cd_off"] & 0xffffffff, f["clen"] & 0xffff))
    for b in _render(a.comment, ctx, cur):
        put(b)
    for b in _render(a.trailer, ctx, cur):
        put(b)
    pos["size"] = cur
    return b"".join(out), pos


def serialize(a):
    _, pos = _emit(a, None)
    data, pos2 = _emit(a, pos)
    assert pos2["size"] == pos["size"]
    return data


# ------------------------------------------------------------------ helpers

def deflate(b, level=6):
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(b) + c.flush()


def set_content(e, plain, method=None, level=6):
    """Give e new uncompressed bytes (fixing CRC, sizes, descriptor)."""
    e.method = e.method if method is None else method
    e.plain = plain
    e.data = plain if e.method == 0 else deflate(plain, level)
    e.crc = zlib.crc32(plain)
    fix_dd(e)


def fix_dd(e):
    if e.flags & 8:
        sig = e.dd[:4] == struct.pack("<I", SIG_DD) if e.dd else True
        body = struct.pack("<III", e.crc, len(e.data), len(e.plain))
        e.dd = (struct.pack("<I", SIG_DD) if sig else b"") + body
        e.lcrc, e.lcsize, e.lusize = 0, 0, 0


def cd_record(e, loff, comment=b""):
    """A plain central record for e at loff (no extra)."""
    return struct.pack("<IHHHHHHIIIHHHHHII", SIG_CD, 20, 20, e.flags, e.method,
                       e.time, e.date, e.crc, len(e.data), len(e.plain),
                       len(e.name), 0, len(comment), 0, 0, e.eattr, loff) + e.name + comment


def local_record(e):
    return struct.pack("<IHHHHHIIIHH", SIG_LOCAL, 20, e.flags & ~8, e.method, e.time,
                       e.date, e.crc, len(e.data), len(e.plain), len(e.name), 0) + \
        e.name + e.data


def eocd(n, cdsize, cdoff, clen=0):
    return struct.pack("<IHHHHIIH", SIG_EOCD, 0, 0, n, n, cdsize, cdoff, clen)


def z64_pair(n, cdsize, cdoff, at):
    return struct.pack("<IQHHIIQQQQ", SIG_Z64EOCD, 44, 45, 45, 0, 0, n, n, cdsize, cdoff) + \
        struct.pack("<IIQI", SIG_Z64LOC, 0, at, 1)


def target(r, a):
    """A signed, non-META-INF file entry to forge (the interesting kind)."""
    c = [e for e in a.cd if not e.name.upper().startswith(b"META-INF/")
         and not e.name.endswith(b"/")]
    return r.choice(c) if c else r.choice(a.cd)


def evil_ent(r, e, name=None):
    f = copy.copy(e)
    f.lextra, f.cextra, f.ccomment, f.gap_after = [], [], [], []
    f.flags &= ~8
    f.dd = b""
    f.lname = f.lcrc = f.lcsize = f.lusize = f.cname = f.ccrc = f.ccsize = f.cusize = None
    f.lmethod = f.lflags = f.cmethod = f.cflags = f.loff = None
    f.name = e.name if name is None else name
    set_content(f, EVIL + bytes([r.randrange(256)]), r.choice([0, 8]))
    return f


def fake_dir_blob(r, a, kind, eocd_tail=0):
    """A second directory, as a Late blob: a forged local entry for a signed
    name, a central directory naming every real entry (at their real
    offsets) but that one, and (per kind) an end record and/or a zip64
    record + locator pointing at it. eocd_tail: bytes after the blob up to
    the end of the file (the fake end record's comment length may cover
    them, so that it looks like the last one to a reader)."""
    t = target(r, a)
    f = evil_ent(r, t)
    lrec = local_record(f)
    recs = [(e, len(cd_record(e, 0))) for e in a.cd]
    cdlen = sum(n for _, n in recs)
    endlen = {"eocd": 22, "z64": 76 + 22, "cd": 0, "z64only": 76}[kind]
    total = len(lrec) + cdlen + endlen
    fake_clen = r.choice([0, 0, 1])
    z64_magic = r.random() < 0.5     # kind "z64": classic fields 0xff.. or not

    def fn(ctx, pos):
        cdo = pos + len(lrec)
        cd = b"".join(cd_record(f if e is t else e, pos if e is t else ctx["loff"][id(e)])
                      for e, _ in recs)
        out = lrec + cd
        if kind in ("z64", "z64only"):
            out += z64_pair(len(recs), cdlen, cdo, cdo + cdlen)
        if kind in ("eocd", "z64"):
            clen = (ctx["size"] - (pos + total)) if fake_clen else 0
            n = 0xffff if kind == "z64" and z64_magic else len(recs)
            out += struct.pack("<IHHHHIIH", SIG_EOCD, 0, 0, n, n,
                               0xffffffff if n == 0xffff else cdlen,
                               0xffffffff if n == 0xffff else cdo, max(0, clen) & 0xffff)
        return out
    return Late(total, fn)


# ------------------------------------------------------------------ mutations
# Each takes (r, a) and changes the model in place; returns a short tag.

def m_recompress(r, a):
    e = r.choice(a.ents)
    if e.name.endswith(b"/"):
        return "recompress-none"
    m = 8 if e.method == 0 else r.choice([0, 8])
    set_content(e, e.plain, m, r.choice([0, 1, 9]))
    return f"recompress{m}"


def m_deflate_stored_blocks(r, a):
    """Same bytes, deflate made of stored blocks plus an empty final block."""
    e = r.choice(a.ents)
    if e.name.endswith(b"/"):
        return "deflate-none"
    c = zlib.compressobj(0, zlib.DEFLATED, -15)
    e.method = 8
    e.data = c.compress(e.plain) + c.flush(zlib.Z_SYNC_FLUSH) + c.flush()
    fix_dd(e)
    return "deflate-stored-blocks"


def m_extra(r, a):
    e = r.choice(a.ents)
    kind = r.choice(["unknown", "ts", "unix", "pad", "zip64", "zip64-both", "upath",
                     "upath"])
    where = r.choice(["local", "central", "both"])
    if kind == "unknown":
        x = struct.pack("<HH", 0xcafe, 4) + bytes(r.randrange(256) for _ in range(4))
    elif kind == "ts":
        x = struct.pack("<HHBI", 0x5455, 5, 1, 1700000000)
    elif kind == "unix":
        x = struct.pack("<HHBBIBI", 0x7875, 11, 1, 4, 1000, 4, 1000)
    elif kind == "upath":
        # Info-ZIP Unicode Path (0x7075): unzip and libzip take this name
        # instead of the header's when its CRC matches the header name
        k = r.choice(["same", "other", "other", "badcrc"])
        nn = {"same": e.name, "badcrc": e.name + b"x"}.get(k, r.choice(
            [x.name for x in a.ents if x is not e] or [b"evil.txt"]))
        crc = zlib.crc32(e.name) ^ (k == "badcrc")
        x = struct.pack("<HHBI", 0x7075, 5 + len(nn), 1, crc) + nn
        kind = f"upath-{k}"
    elif kind == "pad":
        x = struct.pack("<HH", 0xd935, 2) + b"\0\0"
    else:
        x = struct.pack("<HHQQ", 1, 16, len(e.plain), len(e.data))
    if kind == "zip64-both":
        e.lextra.append(x)
        e.cextra.append(x)
        if r.random() < 0.5:
            e.lcsize = e.lusize = 0xffffffff
        if r.random() < 0.5:
            e.ccsize = e.cusize = 0xffffffff
        return "extra-zip64-sizes"
    if where in ("local", "both"):
        e.lextra.append(x)
    if where in ("central", "both"):
        e.cextra.append(x)
    return f"extra-{kind}-{where}"


def m_extra_holding(r, a):
    """An extra field (local or central) holding zip records."""
    e = r.choice(a.ents)
    blob = fake_dir_blob(r, a, r.choice(["eocd", "cd", "z64"]))
    hdr = Late(4, lambda ctx, pos, n=blob.n: struct.pack("<HH", 0x6b6b, n))
    if r.random() < 0.5:
        e.lextra += [hdr, blob]
        return "extra-local-holds-dir"
    e.cextra += [hdr, blob]
    return "extra-central-holds-dir"


def m_time_attrs(r, a):
    e = r.choice(a.ents)
    k = r.choice(["time", "symlink", "exec", "dirmode", "vermade", "iattr"])
    if k == "time":
        e.time, e.date = r.randrange(0x10000), r.randrange(0x10000)
    elif k == "symlink":      # unzip: a link for Unix, VMS, Atari, BeOS, AtheOS
        e.vermade = r.choice([0x031e, 0x021e, 0x051e, 0x101e, 0x1e1e, 0x001e])
        e.eattr = 0o120777 << 16
    elif k == "exec":
        e.vermade, e.eattr = 0x031e, 0o100755 << 16
    elif k == "dirmode":
        e.vermade, e.eattr = 0x031e, (0o040755 << 16) | 0x10
    elif k == "vermade":
        e.vermade = r.choice([0x0014, 0x0b14, 0x0a14, 0x3f3f])
    else:
        e.iattr = 1
    return f"attr-{k}"


def m_comment(r, a):
    k = r.choice(["archive", "file"])
    txt = r.choice([b"hello", b"PK", b"PK\x05\x06", b"PK\x01\x02",
                    bytes(r.randrange(256) for _ in range(8))])
    if k == "archive":
        a.comment = [txt]
    else:
        r.choice(a.cd).ccomment.append(txt)
    return f"comment-{k}"


def m_hidden_dir(r, a):
    """Class 1: a complete second directory where nobody looks."""
    kind = r.choice(["eocd", "eocd", "z64", "cd", "z64only"])
    place = r.choice(["last-cd-comment", "last-cd-comment", "cd-comment", "eocd-comment",
                      "pre-cd", "mid", "trailer", "gap", "prefix"])
    blob = fake_dir_blob(r, a, kind)
    if place == "last-cd-comment":
        a.cd[-1].ccomment.append(blob)
    elif place == "cd-comment":
        r.choice(a.cd).ccomment.append(blob)
    elif place == "eocd-comment":
        a.comment.append(blob)
    elif place == "pre-cd":
        a.pre_cd.append(blob)
    elif place == "mid":
        a.mid.append(blob)
    elif place == "trailer":
        a.trailer.append(blob)
    elif place == "gap":
        r.choice(a.ents).gap_after.append(blob)
    else:
        a.prefix.append(blob)
    return f"hidden-{kind}-in-{place}"


def m_zip64(r, a):
    """Class 2: zip64 end record + locator, needed or not, true or lying."""
    k = r.choice(["needed", "unneeded", "unneeded", "lying-count", "lying-off",
                  "locator-in-comment", "locator-only"])
    if k in ("needed", "unneeded"):
        a.zip64 = k
    elif k == "lying-count":
        a.zip64 = r.choice(["needed", "unneeded"])
        a.z64 = {"n_disk": len(a.cd) - 1, "n_total": len(a.cd) - 1}
    elif k == "lying-off":
        # a needless zip64 pair pointing at a forged directory, in the
        # last central record's comment, just before the end record
        a.cd[-1].ccomment.append(fake_dir_blob(r, a, "z64only"))
    elif k == "locator-in-comment":
        blob = fake_dir_blob(r, a, "z64only")
        a.cd[-1].ccomment.append(blob)
    else:
        # a locator pointing at a zip64 record that is the real one's twin
        def fn(ctx, pos):
            n = len(a.cd)
            return z64_pair(n, ctx["cd_end"] - ctx["cd_off"], ctx["cd_off"], pos)
        a.mid.append(Late(76, fn))
    return f"zip64-{k}"


def m_end_records(r, a):
    k = r.choice(["dup-after", "dup-in-comment", "dup-before", "fake-in-comment",
                  "counts", "cdsize", "cdoff", "disk", "comment-len"])
    n = len(a.cd)

    def true_eocd(ctx, pos):
        return eocd(n, ctx["cd_end"] - ctx["cd_off"], ctx["cd_off"])
    if k == "dup-after":
        a.trailer.append(Late(22, true_eocd))
    elif k == "dup-in-comment":
        a.comment.append(Late(22, true_eocd))
    elif k == "dup-before":
        a.mid.append(Late(22, true_eocd))
    elif k == "fake-in-comment":
        a.comment.append(fake_dir_blob(r, a, "eocd"))
    elif k == "counts":
        a.eocd.update(n_disk=n + r.choice([-1, 1]), n_total=n + r.choice([0, -1, 1]))
    elif k == "cdsize":
        a._cdsize_delta = r.choice([-46, -1, 1, 22])
    elif k == "cdoff":
        a._cdoff_delta = r.choice([-1, 1, 30])
    elif k == "disk":
        a.eocd.update(disk=1, cddisk=1) if r.random() < .5 else a.eocd.update(cddisk=1)
    else:
        a.comment = [b"x" * r.choice([1, 3])]
        a.eocd["clen"] = r.choice([0, 2, 10])
    return f"eocd-{k}"


def m_dir_with_data(r, a):
    """Class 4: directory entries carrying bytes."""
    dirs = [e for e in a.ents if e.name.endswith(b"/")]
    k = r.choice(["deflate-garbage", "deflate-data", "stored", "new-dir"])
    if k == "new-dir" or not dirs:
        d = evil_ent(r, a.ents[-1], b"hidden/")
        a.ents.append(d)
        a.cd.append(d)
    else:
        d = dirs[0]
    if k == "deflate-garbage":
        d.method, d.plain = 8, b""
        d.data = bytes(r.randrange(256) for _ in range(40))
        d.crc = 0
        fix_dd(d)
    elif k == "deflate-data":
        set_content(d, EVIL, 8)
        if r.random() < 0.5:
            d.cusize = d.lusize = 0
    elif k == "stored":
        set_content(d, EVIL, 0)
        if r.random() < 0.5:
            d.cusize = d.lusize = d.ccsize = d.lcsize = 0
    return f"dir-data-{k}"


def m_duplicate(r, a):
    """Duplicate names: a second entry (forged or identical) for a name."""
    t = target(r, a) if r.random() < 0.7 else r.choice(a.cd)
    k = r.choice(["forged-after", "forged-before", "same-local-twice"])
    if k == "same-local-twice":
        a.cd.insert(r.randrange(len(a.cd) + 1), t)
    else:
        f = evil_ent(r, t)
        a.ents.insert(0 if k == "forged-before" else len(a.ents), f)
        a.cd.insert(0 if k == "forged-before" else len(a.cd), f)
    return f"dup-{k}"


META_NAMES = [b"META-INF/SIG-X", b"META-INF/SIG-FIXTURE.SF", b"META-INF/FIXTURE.EC",
              b"META-INF/FIXTURE.DSA", b"META-INF/fixture.rsa", b"META-INF/manifest.mf",
              b"meta-inf/MANIFEST.MF", b"Meta-Inf/Manifest.MF", b"META-INF/OTHER.SF",
              b"META-INF/OTHER.RSA", b"META-INF/INDEX.LIST", b"META-INF/x/",
              b"META-INF/evil.txt", b"META-INF/sub/A.SF", b"META-INF/MANIFEST.MF/",
              b"META-INF/FIXTURE.SF.bak"]


def m_meta_inf(r, a):
    """Class 3 and case variants: extra files under META-INF."""
    nm = r.choice(META_NAMES)
    src = {e.name.upper().rsplit(b".", 1)[-1]: e for e in a.ents}
    kind = nm.upper().rsplit(b".", 1)[-1]
    f = evil_ent(r, a.ents[0], nm)
    if kind in src and r.random() < 0.7:
        set_content(f, src[kind].plain, src[kind].method)   # a copy of the real one
    elif nm.endswith(b"/"):
        set_content(f, b"", 0)
    a.ents.append(f)
    a.cd.insert(r.randrange(len(a.cd) + 1), f)
    return "meta-" + nm.decode().replace("/", "_")


def m_mismatch(r, a):
    """Local header vs central record."""
    e = r.choice(a.ents)
    k = r.choice(["lname-case", "cname-case", "lname-other", "lmethod", "cmethod",
                  "lflags-utf8", "cflags-utf8", "lcrc", "ccrc", "lsize", "csize-c",
                  "usize-c", "flag-dd-local-only", "flag-dd-central-only"])
    if k == "lname-case":
        e.lname = e.name.swapcase()
    elif k == "cname-case":
        e.cname = e.name.swapcase()
    elif k == "lname-other":
        e.lname = r.choice(a.ents).name
    elif k == "lmethod":
        e.lmethod = 8 - e.method
    elif k == "cmethod":
        e.cmethod = 8 - e.method
    elif k == "lflags-utf8":
        e.lflags = e.flags | 0x800
    elif k == "cflags-utf8":
        e.cflags = e.flags | 0x800
    elif k == "lcrc":
        e.lcrc = (e.crc ^ 1) if not e.flags & 8 else e.crc ^ 1
    elif k == "ccrc":
        e.ccrc = e.crc ^ 0x100
    elif k == "lsize":
        e.lcsize = len(e.data) + r.choice([-1, 1])
    elif k == "csize-c":
        e.ccsize = len(e.data) + r.choice([-1, 1, 4])
    elif k == "usize-c":
        e.cusize = len(e.plain) + r.choice([-1, 1])
    elif k == "flag-dd-local-only":
        e.lflags = e.flags | 8
    else:
        e.cflags = e.flags | 8
    return f"mismatch-{k}"


def m_descriptor(r, a):
    e = r.choice(a.ents)
    k = r.choice(["add-sig", "add-nosig", "remove", "drop-sig", "zip64-dd",
                  "local-sizes-kept"])
    if k in ("add-sig", "add-nosig"):
        e.flags |= 8
        e.dd = struct.pack("<I", SIG_DD) if k == "add-sig" else b"\0"
        if k == "add-nosig":
            e.dd = b""
            e.lcrc, e.lcsize, e.lusize = 0, 0, 0
            e.dd = struct.pack("<III", e.crc, len(e.data), len(e.plain))
        else:
            fix_dd(e)
    elif k == "remove":
        e.flags &= ~8
        e.dd = b""
        e.lcrc = e.lcsize = e.lusize = None
    elif k == "drop-sig":
        if e.flags & 8:
            e.dd = struct.pack("<III", e.crc, len(e.data), len(e.plain))
    elif k == "zip64-dd":
        e.flags |= 8
        e.lextra.append(struct.pack("<HHQQ", 1, 16, 0, 0))
        e.lcrc, e.lcsize, e.lusize = 0, 0xffffffff, 0xffffffff
        e.dd = struct.pack("<IIQQ", SIG_DD, e.crc, len(e.data), len(e.plain))
    else:
        e.flags |= 8
        fix_dd(e)
        e.lcrc, e.lcsize, e.lusize = e.crc, len(e.data), len(e.plain)
    return f"dd-{k}"


def m_overlap(r, a):
    k = r.choice(["cd-points-elsewhere", "csize-into-next", "data-shared",
                  "deflate-trailing", "deflate-short"])
    e = r.choice(a.ents)
    if k == "cd-points-elsewhere":
        o = r.choice(a.ents)
        e.loff = lambda ctx, o=o: ctx["loff"][id(o)]
    elif k == "csize-into-next":
        e.ccsize = len(e.data) + 30
        if not e.flags & 8:
            e.lcsize = e.ccsize
    elif k == "data-shared":
        # a forged entry whose central record points into another's data
        f = evil_ent(r, target(r, a))
        f.name = f.name + b".2"
        a.cd.append(f)
        f.loff = lambda ctx, o=e, d=r.choice([0, 2, 30]): ctx["loff"][id(o)] + d
    elif k == "deflate-trailing":
        if e.name.endswith(b"/"):
            return "overlap-none"
        set_content(e, e.plain, 8)
        e.data += b"PK\x05\x06hidden"
        fix_dd(e)
    else:
        if e.name.endswith(b"/"):
            return "overlap-none"
        set_content(e, e.plain, 8)
        e.gap_after.append(b"")
        e.data = e.data[:-1] if len(e.data) > 2 else e.data
        fix_dd(e)
    return f"overlap-{k}"


def m_reorder(r, a):
    k = r.choice(["cd", "local", "both"])
    if k in ("cd", "both"):
        r.shuffle(a.cd)
    if k in ("local", "both"):
        r.shuffle(a.ents)
    return f"reorder-{k}"


def m_edges(r, a):
    k = r.choice(["prepend", "append", "gap", "remove-dir", "remove-entry",
                  "add-unsigned", "encrypted", "method", "truncate-name", "utf8"])
    if k == "prepend":
        a.prefix.append(r.choice([b"MZ" + b"\0" * 62, b"#!/bin/sh\n", b"\0"]))
    elif k == "append":
        a.trailer.append(r.choice([b"\n", b"PK", b"\0" * 16]))
    elif k == "gap":
        r.choice(a.ents).gap_after.append(b"\0" * r.choice([1, 4, 30]))
    elif k == "remove-dir":
        ds = [e for e in a.ents if e.name.endswith(b"/")]
        if ds:
            a.ents.remove(ds[0])
            a.cd.remove(ds[0])
    elif k == "remove-entry":
        e = r.choice(a.ents)
        a.ents.remove(e)
        a.cd.remove(e)
    elif k == "add-unsigned":
        f = evil_ent(r, a.ents[-1], r.choice([b"conf/new.properties", b"x", b"conf/sub/y"]))
        a.ents.append(f)
        a.cd.append(f)
    elif k == "encrypted":
        r.choice(a.ents).flags |= 1
    elif k == "method":
        e = r.choice(a.ents)
        e.method = r.choice([1, 9, 12, 14, 93, 99])
    elif k == "truncate-name":
        e = r.choice(a.ents)
        e.cname = e.name + b"\0x"
        e.lname = e.cname
    else:
        r.choice(a.ents).flags |= 0x800
    return f"edge-{k}"


MUTATIONS = [  # (weight, fn): structure-preserving ones first and heavier
    (8, m_recompress), (4, m_deflate_stored_blocks), (8, m_extra), (6, m_time_attrs),
    (5, m_comment), (6, m_descriptor), (5, m_reorder),
    (10, m_hidden_dir), (8, m_zip64), (6, m_end_records), (4, m_extra_holding),
    (6, m_dir_with_data), (5, m_duplicate), (7, m_meta_inf), (7, m_mismatch),
    (5, m_overlap), (5, m_edges),
]


def _fixups(a):
    """Mutations that shift end-record fields relative to the truth."""
    d = getattr(a, "_cdsize_delta", None)
    o = getattr(a, "_cdoff_delta", None)
    if d is None and o is None:
        return serialize(a)
    _, pos = _emit(a, None)
    if d is not None:
        a.eocd["cd_size"] = pos["cd_end"] - pos["cd_off"] + d
    if o is not None:
        a.eocd["cd_off"] = pos["cd_off"] + o
    return serialize(a)


def raw_flip(r, data):
    """A few random byte changes in the structures (not in the data)."""
    b = bytearray(data)
    cands = [i for i in range(len(b) - 3) if b[i:i + 2] == b"PK"]
    for _ in range(r.randrange(1, 4)):
        i = r.choice(cands) + r.randrange(46) if cands else r.randrange(len(b))
        if i < len(b):
            b[i] = r.randrange(256)
    return bytes(b)


def mutants(base_bytes, count, seed, tag="m"):
    """Yield (name, bytes) for count mutants of base_bytes."""
    base = parse(base_bytes)
    weights = [w for w, _ in MUTATIONS]
    fns = [f for _, f in MUTATIONS]
    for i in range(count):
        r = random.Random(f"{seed}:{tag}:{i}")
        a = copy.deepcopy(base)
        n = r.choices([1, 2, 3], [6, 3, 1])[0]
        tags = []
        for f in r.choices(fns, weights, k=n):
            tags.append(f(r, a))
        try:
            data = _fixups(a)
        except (struct.error, KeyError, ValueError, OverflowError):
            continue
        if r.random() < 0.04:
            data = raw_flip(r, data)
            tags.append("flip")
        elif r.random() < 0.01:
            data = data[:r.randrange(len(data))]
            tags.append("truncate")
        yield f"{tag}-{i:04d}-{'+'.join(tags)}.zip"[:200], data


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", default="12")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("outdir")
    ap.add_argument("bases", nargs="+")
    o = ap.parse_args()
    out = Path(o.outdir)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for b in o.bases:
        for name, data in mutants(Path(b).read_bytes(), o.count, o.seed, Path(b).stem):
            (out / name).write_bytes(data)
            n += 1
    print(f"{n} mutants in {out}")


if __name__ == "__main__":
    sys.exit(main())
