#!/usr/bin/python3
"""Layer graph of the tree: which layer reaches which, and the forbidden edges.

    tests/import_graph.py [--report] [--build DIR] [-v]

A file's layer is its top directory: common, hsm, crypto, store, fs, tool,
tests, bench (store/ does not exist yet: today the store code lives in fs/).
Three kinds of edge are counted, from every .c/.h file in those directories:

  direct      the file itself has `#include "x/y.h"` of another layer;
  transitive  the file reaches a header of another layer only through other
              headers (an fs file including crypto/keyring.h, which includes
              hsm/hsm.h, reaches hsm);
  symbol      an object file of the build (DIR/<layer>/*.p/*.o, default
              ./build; skipped when not built) leaves undefined a symbol that
              an object of another layer defines (`nm`): a call that no
              include line shows.

The stack is common < hsm < crypto < store < {fs, tool} < {tests, bench}.
Forbidden: any edge up the stack (hsm -> anything above it, crypto -> store,
crypto -> fs, store -> fs, ...), and fs -> hsm, tool -> fs, tool -> hsm
(above hsm, keys are reached only through crypto/keyring.h; the tool does
not link the FUSE daemon's code).

Exit status: 0 when no forbidden edge exists, 1 otherwise, 2 on a usage
error. `--report` prints the same and always exits 0.

meson test runs it (suite "lint", test "import-graph"), and so do
tests/run.sh and CI. PENDING (edges printed but not failed while a
branch removes them) is empty: every forbidden edge fails.
"""
import argparse
import os
import re
import subprocess
import sys
from collections import defaultdict

LAYERS = ["common", "hsm", "crypto", "store", "fs", "tool", "tests", "bench"]
RANK = {"common": 0, "hsm": 1, "crypto": 2, "store": 3, "fs": 4, "tool": 4,
        "tests": 5, "bench": 5}
EXTRA_FORBIDDEN = {("fs", "hsm"), ("tool", "fs"), ("tool", "hsm")}
# Empty since issue #15 landed; an entry is a temporary exception.
PENDING = set()
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def forbidden(a, b):
    return a != b and (RANK[b] > RANK[a] or (a, b) in EXTRA_FORBIDDEN)


def layer_of(path):
    top = path.split("/", 1)[0]
    return top if top in RANK else None


def sources(root):
    out = []
    for top in LAYERS:
        for dirpath, _, names in os.walk(os.path.join(root, top)):
            for n in names:
                if n.endswith((".c", ".h")):
                    out.append(os.path.relpath(os.path.join(dirpath, n), root))
    return sorted(out)


def includes(root, path, cache):
    """Repository files named by the #include "..." lines of path."""
    if path in cache:
        return cache[path]
    cache[path] = []
    try:
        text = open(os.path.join(root, path), errors="replace").read()
    except OSError:
        return cache[path]
    found = []
    for name in INCLUDE.findall(text):
        # meson's include_directories('.') first, then the file's own folder
        for cand in (name, os.path.join(os.path.dirname(path), name)):
            cand = os.path.normpath(cand)
            if os.path.isfile(os.path.join(root, cand)):
                found.append(cand)
                break
    cache[path] = found
    return found


def include_edges(root):
    """{(from, to): {"direct": {file: header}, "transitive": {file: chain}}}"""
    cache = {}
    edges = defaultdict(lambda: {"direct": {}, "transitive": {}})
    for f in sources(root):
        a = layer_of(f)
        # breadth first, remembering how each header was reached
        via = {f: None}
        queue = [f]
        while queue:
            cur = queue.pop(0)
            for h in includes(root, cur, cache):
                if h not in via:
                    via[h] = cur
                    queue.append(h)
        for h in via:
            b = layer_of(h)
            if h == f or b is None or b == a:
                continue
            chain = [h]
            while via[chain[-1]] != f:
                chain.append(via[chain[-1]])
            chain.reverse()
            if len(chain) == 1:
                edges[(a, b)]["direct"].setdefault(f, h)
            elif f not in edges[(a, b)]["direct"]:
                # shortest chain kept per file (BFS order)
                edges[(a, b)]["transitive"].setdefault(f, " -> ".join(chain))
    # a file with a direct edge to a layer is not also counted transitive
    for e in edges.values():
        for f in e["direct"]:
            e["transitive"].pop(f, None)
    return edges


def nm(objs, *flags):
    """{object: [symbols]} from one nm call over every object."""
    out = {o: [] for o in objs}
    if not objs:
        return out
    try:
        text = subprocess.run(["nm", "-g", "-A", *flags, *objs],
                              capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return out
    for line in text.splitlines():
        # "path/x.o:0000000000000000 T name" or "path/x.o:   U name"
        obj, sep, rest = line.rpartition(".o:")
        if sep and rest.split():
            out.setdefault(obj + ".o", []).append(rest.split()[-1])
    return out


def symbol_edges(build):
    """{(from, to): {object: {symbols}}} from nm over DIR/<layer>/*.p/*.o"""
    objs = []
    for top in LAYERS:
        d = os.path.join(build, top)
        for dirpath, _, names in os.walk(d):
            if ".p" not in os.path.basename(dirpath):
                continue
            objs += [(top, os.path.join(dirpath, n)) for n in names if n.endswith(".o")]
    if not objs:
        return None
    defined = defaultdict(set)
    undefined = {}
    paths = [o for _, o in objs]
    defs = nm(paths, "--defined-only")
    undefs = nm(paths, "--undefined-only")
    for top, o in objs:
        for s in defs.get(o, []):
            defined[s].add(top)
        undefined[(top, o)] = undefs.get(o, [])
    edges = defaultdict(lambda: defaultdict(set))
    for (a, o), syms in undefined.items():
        name = os.path.relpath(o, build)
        for s in syms:
            owners = defined.get(s, set()) - {a}
            # a symbol defined in several layers (a test's stub of a library
            # function) counts for the lowest one
            if not owners or a in defined.get(s, set()):
                continue
            b = min(owners, key=lambda x: RANK[x])
            edges[(a, b)][name].add(s)
    return edges


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--report", action="store_true",
                    help="print the edges and exit 0 even with forbidden ones")
    ap.add_argument("--build", default=None,
                    help="build directory for the nm pass (default ./build)")
    ap.add_argument("-v", action="store_true",
                    help="list every file of every edge, not only forbidden ones")
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    build = os.path.abspath(args.build) if args.build else os.path.join(root, "build")

    inc = include_edges(root)
    sym = symbol_edges(build) if os.path.isdir(build) else None
    pairs = set(inc) | (set(sym) if sym else set())
    order = sorted(pairs, key=lambda p: (LAYERS.index(p[0]), LAYERS.index(p[1])))

    print("# layer edges: files with a direct include / reached only transitively"
          " / objects with symbol references" + ("" if sym is not None else
          " (no build at %s: symbols not checked)" % build))
    bad = []
    for a, b in order:
        d = inc.get((a, b), {}).get("direct", {})
        t = inc.get((a, b), {}).get("transitive", {})
        s = (sym or {}).get((a, b), {})
        no = forbidden(a, b)
        if no and (a, b) not in PENDING:
            bad.append((a, b))
        print("%-6s -> %-6s direct %3d  transitive %3d  symbol %3s%s"
              % (a, b, len(d), len(t), len(s) if sym is not None else "-",
                 "" if not no else "   FORBIDDEN (pending, #15)"
                 if (a, b) in PENDING else "   FORBIDDEN"))
        if no or args.v:
            for f, h in sorted(d.items()):
                print("    direct      %s includes %s" % (f, h))
            for f, chain in sorted(t.items()):
                print("    transitive  %s: %s" % (f, chain))
            for o, names in sorted(s.items()):
                print("    symbol      %s uses %s" % (o, " ".join(sorted(names))))
    pend = sorted(p for p in pairs if forbidden(*p) and p in PENDING)
    if pend:
        print("# pending (other parts of #15): %s"
              % ", ".join("%s -> %s" % p for p in pend))
    if bad:
        print("# %d forbidden edge(s): %s" % (len(bad), ", ".join("%s -> %s" % p for p in bad)))
    else:
        print("# no forbidden edge")
    return 0 if args.report or not bad else 1


if __name__ == "__main__":
    sys.exit(main())
