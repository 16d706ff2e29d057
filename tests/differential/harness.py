#!/usr/bin/python3
"""Differential zip harness: hsmfs's own reading of a zip against four
independent readers (libzip with and without ZIP_CHECKCONS, Python zipfile,
Info-ZIP unzip, java.util.zip.ZipFile).

Rule: whenever hsmfs says a zip is valid, every reader opens it and sees
exactly hsmfs's entries: the same names in the same (central-directory)
order and, for each, the same bytes (compared as length + SHA-256; a
directory holds no bytes). Anything else is a disagreement.

Library use: check(paths, trust, build) -> Report. Command line:
  tests/differential/harness.py [--build DIR] [--trust PEM] [--parsed]
                                [--readers R,R...] ZIP...
(--parsed also holds every reader to hsmfs's parse for zips that are not
valid but that hsmfs's zip parser accepts with every entry readable: a
stricter, informative rule; only disagreements on valid zips fail.)
Exit status 1 when there is a disagreement.
"""
import argparse
import atexit
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent.parent
EMPTY_SHA = hashlib.sha256(b"").hexdigest()
# java-stream: java.util.zip.ZipInputStream, local headers only (streaming).
READERS = ("libzip", "libzip-checkcons", "python", "unzip", "java", "java-stream")
EXTRA_READERS = ()


@dataclass
class Entry:
    name: str             # hex of the name's bytes (as the reader shows it, UTF-8)
    kind: str             # "bytes", "dir" (hsmfs only) or "error"
    size: int = 0
    sha: str = ""
    error: str = ""

    def show(self):
        nm = bytes.fromhex(self.name).decode("utf-8", "replace") if self.name != "-" else "-"
        if self.kind == "bytes":
            return f"{nm!r} {self.size} bytes sha256={self.sha[:16]}"
        if self.kind == "dir":
            return f"{nm!r} directory"
        return f"{nm!r} error: {self.error}"


@dataclass
class View:
    """One reader's view of one zip (or hsmfs's: verdict and parse too)."""
    ok: bool = False                 # opened (reader) / parse ok (hsmfs)
    error: str = ""
    entries: list = field(default_factory=list)
    valid: bool = False              # hsmfs only
    verdict: str = ""                # hsmfs only


@dataclass
class Disagreement:
    path: str
    reader: str
    what: str

    def __str__(self):
        return f"{self.path}: {self.reader}: {self.what}"


@dataclass
class Report:
    files: int = 0
    valid: int = 0
    parsed: int = 0                  # not valid, parse ok, all entries readable
    disagreements: list = field(default_factory=list)    # on valid zips
    parse_disagreements: list = field(default_factory=list)  # --parsed
    verdicts: dict = field(default_factory=dict)          # path -> verdict


def _parse_lines(text, hsmfs=False):
    out, cur, path = {}, None, None
    for line in text.splitlines():
        tag, _, rest = line.partition(" ")
        if tag == "file":
            path, cur = rest, View()
        elif tag == "verdict":
            cur.valid = rest.startswith("valid ")
            cur.verdict = rest
        elif tag in ("parse", "open"):
            cur.ok = rest == "ok"
            cur.error = rest.partition(" ")[2] if not cur.ok else ""
        elif tag == "entry":
            name, _, r = rest.partition(" ")
            if r == "dir":
                cur.entries.append(Entry(name, "dir"))
            elif r.startswith("error"):
                cur.entries.append(Entry(name, "error", error=r[6:]))
            else:
                size, sha = r.split(" ")
                cur.entries.append(Entry(name, "bytes", int(size), sha))
        elif tag == "end":
            out[path] = cur
    return out


def _run_batch(cmd, paths):
    """Run a batch reader over paths (fed on stdin, one per line)."""
    p = subprocess.run(cmd + ["-"], input="".join(f"{x}\n" for x in paths),
                       capture_output=True, text=True, errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({p.returncode}): {p.stderr[-2000:]}")
    return p.stdout


def build_dir(build=None):
    return Path(build or os.environ.get("HSMFS_BUILD") or SRC / "build")


def hsmfs_views(paths, trust=None, build=None):
    exe = os.environ.get("HSMFS_ZIPDUMP") or str(
        build_dir(build) / "tests" / "differential" / "hsmfs-zipdump")
    cmd = [exe] + (["--trust", str(trust)] if trust else [])
    return _parse_lines(_run_batch(cmd, paths), hsmfs=True)


def libzip_views(paths, checkcons, build=None):
    exe = os.environ.get("HSMFS_LIBZIP_READ") or str(
        build_dir(build) / "tests" / "differential" / "libzip-read")
    return _parse_lines(_run_batch([exe] + (["--checkcons"] if checkcons else []), paths))


_java_dir = None


def java_views(paths, stream=False):
    """java.util.zip.ZipFile (or ZipInputStream with stream): ZipRead.java
    compiled once per process."""
    global _java_dir
    if not paths:
        return {}
    if _java_dir is None:
        d = tempfile.mkdtemp(prefix="hsmfs-zipread-")
        atexit.register(shutil.rmtree, d, True)
        subprocess.run(["javac", "-d", d, str(HERE / "ZipRead.java")], check=True,
                       capture_output=True)
        _java_dir = d
    with tempfile.NamedTemporaryFile("w", suffix=".list", delete=False) as f:
        f.write("".join(f"{x}\n" for x in paths))
        lst = f.name
    try:
        p = subprocess.run(["java", "-Xshare:auto", "-XX:TieredStopAtLevel=1",
                            "-cp", _java_dir, "ZipRead", lst] +
                           (["--stream"] if stream else []),
                           capture_output=True, text=True, errors="replace")
    finally:
        os.unlink(lst)
    if p.returncode != 0:
        raise RuntimeError(f"java ZipRead failed: {p.stderr[-2000:]}")
    return _parse_lines(p.stdout)


def python_view(path):
    v = View()
    try:
        zf = zipfile.ZipFile(path)
    except Exception as e:      # noqa: BLE001 -- any failure is the reader's answer
        v.error = f"{type(e).__name__}: {e}"
        return v
    v.ok = True
    with zf:
        for info in zf.infolist():
            name = info.filename.encode("utf-8", "surrogateescape").hex()
            try:
                with zf.open(info) as f:
                    h, n = hashlib.sha256(), 0
                    while chunk := f.read(65536):
                        h.update(chunk)
                        n += len(chunk)
                v.entries.append(Entry(name, "bytes", n, h.hexdigest()))
            except Exception as e:  # noqa: BLE001
                v.entries.append(Entry(name, "error", error=f"{type(e).__name__}: {e}"))
    return v


def unzip_view(path):
    """Info-ZIP: names from `unzip -Z1`, bytes from what `unzip` extracts
    (a directory extracts as a directory, no bytes; an entry extracted as a
    symbolic link is not the bytes hsmfs read: a disagreement)."""
    v = View()
    env = dict(os.environ, LC_ALL="C.UTF-8")
    p = subprocess.run(["unzip", "-Z1", path], capture_output=True, env=env)
    if p.returncode not in (0, 1):
        v.error = " ".join((p.stderr or p.stdout).decode("utf-8", "replace").split())[:300]
        return v
    names = [n for n in p.stdout.split(b"\n") if n]
    v.ok = True
    with tempfile.TemporaryDirectory(prefix="hsmfs-unzip-") as d:
        x = subprocess.run(["unzip", "-qq", "-o", "-d", d, path], capture_output=True,
                           env=env)
        msg = (x.stderr or x.stdout).decode("utf-8", "replace").strip().replace("\n", " ")
        for raw in names:
            e = Entry(raw.hex(), "error")
            f = os.path.join(d.encode(), raw)
            try:
                if os.path.islink(f):
                    # what a consumer opening the file gets is another file
                    e.error = f"extracted as a symbolic link to {os.readlink(f)[:60]!r}"
                    v.entries.append(e)
                    continue
                if os.path.isdir(f):
                    data = b""
                elif raw.endswith(b"/"):
                    e.error = "a file, not a directory, where the directory should be"
                    v.entries.append(e)
                    continue
                else:
                    data = Path(os.fsdecode(f)).read_bytes()
                e = Entry(raw.hex(), "bytes", len(data), hashlib.sha256(data).hexdigest())
            except OSError as err:
                e.error = f"not extracted ({err.strerror}; unzip rc={x.returncode}: {msg[:200]})"
            v.entries.append(e)
    return v


def compare(hv, rv):
    """What the reader view rv disagrees on with hsmfs's view hv ([] if none)."""
    if not rv.ok:
        return [f"cannot open the zip: {rv.error}"]
    out = []
    hn = [e.name for e in hv.entries]
    rn = [e.name for e in rv.entries]
    if hn != rn:
        def show(ns):
            return [bytes.fromhex(n).decode("utf-8", "replace") if n != "-" else "-"
                    for n in ns]
        out.append(f"names differ: hsmfs {show(hn)} reader {show(rn)}")
        return out
    for he, re_ in zip(hv.entries, rv.entries):
        if he.kind == "error":
            out.append(f"hsmfs vouches for an entry it cannot read: {he.show()}")
        elif re_.kind == "error":
            out.append(f"cannot read {he.show()}: {re_.error}")
        elif he.kind == "dir":
            if re_.size != 0 or re_.sha != EMPTY_SHA:
                out.append(f"directory {he.show()} holds {re_.size} bytes for the reader")
        elif (he.size, he.sha) != (re_.size, re_.sha):
            out.append(f"bytes differ: hsmfs {he.show()}, reader {re_.show()}")
    return out


def _readable(hv):
    return hv.ok and all(e.kind != "error" for e in hv.entries)


def check(paths, trust=None, build=None, parsed=False, readers=READERS):
    """Run hsmfs and the readers over paths; see the module docstring."""
    paths = [str(p) for p in paths]
    rep = Report(files=len(paths))
    hv = hsmfs_views(paths, trust, build)
    missing = [p for p in paths if p not in hv]
    if missing:
        raise RuntimeError(f"hsmfs-zipdump gave no answer for {missing[:3]}")
    todo = []
    for p in paths:
        rep.verdicts[p] = hv[p].verdict
        if hv[p].valid:
            rep.valid += 1
            todo.append(p)
        elif parsed and _readable(hv[p]):
            rep.parsed += 1
            todo.append(p)
    views = {r: {} for r in readers}
    if todo:
        if "libzip" in readers:
            views["libzip"] = libzip_views(todo, False, build)
        if "libzip-checkcons" in readers:
            views["libzip-checkcons"] = libzip_views(todo, True, build)
        if "java" in readers:
            views["java"] = java_views(todo)
        if "java-stream" in readers:
            views["java-stream"] = java_views(todo, stream=True)
        if "python" in readers:
            for p in todo:
                views["python"][p] = python_view(p)
        if "unzip" in readers:
            # two processes per zip: overlap their start-up
            with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as ex:
                views["unzip"] = dict(zip(todo, ex.map(unzip_view, todo)))
    for p in todo:
        sink = rep.disagreements if hv[p].valid else rep.parse_disagreements
        for r in readers:
            rv = views[r].get(p)
            if rv is None:
                sink.append(Disagreement(p, r, "no answer from the reader"))
                continue
            for what in compare(hv[p], rv):
                sink.append(Disagreement(p, r, what))
    return rep


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", help="meson build dir (default: $HSMFS_BUILD or ./build)")
    ap.add_argument("--trust", help="PEM certificates trusted as signers (default: "
                    "tests/data/jar/fixture-signer.pem and differential-signer.pem)")
    ap.add_argument("--parsed", action="store_true",
                    help="also compare zips hsmfs parses but does not find valid")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every verdict")
    ap.add_argument("--readers", default=",".join(READERS),
                    help="comma-separated, from " + ", ".join(READERS + EXTRA_READERS) +
                    " (default: all)")
    ap.add_argument("zips", nargs="+")
    a = ap.parse_args()
    tmp = None
    if a.trust is None:
        with tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False) as tmp:
            tmp.write((SRC / "tests" / "data" / "jar" / "fixture-signer.pem").read_bytes() +
                      (HERE / "differential-signer.pem").read_bytes())
        a.trust = tmp.name
    try:
        readers = tuple(a.readers.split(","))
        if set(readers) - set(READERS + EXTRA_READERS):
            ap.error(f"unknown reader in {a.readers}")
        rep = check(a.zips, a.trust, a.build, a.parsed, readers)
    finally:
        if tmp is not None:
            os.unlink(tmp.name)
    if a.verbose:
        for p, v in rep.verdicts.items():
            print(f"{p}: {v}")
    for d in rep.disagreements:
        print(f"DISAGREE {d}")
    for d in rep.parse_disagreements:
        print(f"parse-disagree {d}")
    print(f"files {rep.files}, valid {rep.valid}, disagreements on valid zips "
          f"{len(rep.disagreements)}" +
          (f"; parsed-not-valid {rep.parsed}, disagreements there "
           f"{len(rep.parse_disagreements)}" if a.parsed else ""))
    return 1 if rep.disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
