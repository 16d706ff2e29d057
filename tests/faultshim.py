"""Driving tests/p11shim.c (the fault-injecting PKCS#11 module) from pytest
and tests/soak.sh: control file, counters, and configs whose every key
goes through the shim."""
import os
from pathlib import Path

from conftest import BUILD, DEFAULT_DESCRIPTORS

SHIM = os.environ.get("HSMFS_P11SHIM", str(BUILD / "tests" / "p11shim.so"))


class Shim:
    """One control file and one stats file; the environment variables
    reach every process started afterwards (the daemon inherits them)."""

    def __init__(self, hsm, root):
        self.hsm = hsm
        self.path = SHIM
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.control = str(self.root / "shim.control")
        # One file per process ("%p"): the daemon may check keys in a child
        # before mounting, and tools run beside it; stats() adds them up.
        self.stats_file = str(self.root / "shim.stats.%p")
        self._gen = 0
        assert os.path.exists(self.path), f"p11shim not built: {self.path}"

    def env(self):
        return {"HSMFS_SHIM_MODULE": self.hsm.module,
                "HSMFS_SHIM_CONTROL": self.control,
                "HSMFS_SHIM_STATS": self.stats_file}

    def activate(self, monkeypatch):
        for k, v in self.env().items():
            monkeypatch.setenv(k, v)
        return self

    def set(self, *lines):
        """Replace the faults atomically (new inode: the shim notices)."""
        self._gen += 1
        tmp = f"{self.control}.{self._gen}"
        with open(tmp, "w") as f:
            f.write("".join(line + "\n" for line in lines))
        os.rename(tmp, self.control)

    def clear(self):
        self.set()

    def _stat_files(self):
        return [p for p in self.root.glob("shim.stats.*") if ".tmp." not in p.name]

    def stats(self):
        """Counters summed over every process that loaded the shim."""
        out = {}
        for p in self._stat_files():
            try:
                text = p.read_text()
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                k, _, v = line.strip().partition(" ")
                if v and k != "pid" and int(v):
                    out[k] = out.get(k, 0) + int(v)
        return out

    def reset_stats(self):
        for p in self._stat_files():
            p.unlink(missing_ok=True)

    def config(self, path, descriptors=None, omit=(), keys=None, extra_attrs=None,
               **kw):
        """hsm.config() with every key's module replaced by the shim."""
        names = [d["key"] for d in DEFAULT_DESCRIPTORS if d["name"] not in omit]
        names += [d["key"] for d in descriptors or []] + list(keys or [])
        attrs = {n: {"locationValue": self.path, **(extra_attrs or {})} for n in names}
        return self.hsm.config(path, descriptors=descriptors, omit=omit, keys=keys,
                               key_attrs=attrs, **kw)
