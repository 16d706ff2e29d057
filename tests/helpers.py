"""Shared helpers for the hsmfs pytest suite (no fixtures here)."""
import errno
import os
import subprocess
import time

MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def run(cmd, check=True, input=None, env=None, timeout=120, cwd=None):
    """Run a command, capture text output, raise with both streams on failure."""
    p = subprocess.run(cmd, input=input, capture_output=True, env=env,
                       timeout=timeout, cwd=cwd,
                       text=not isinstance(input, bytes))
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd!r} exited {p.returncode}\n"
                             f"stdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def wait_for(pred, timeout=20.0, step=0.05, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mounts", errors="surrogateescape") as f:
        return any(line.split()[1] == path for line in f)


def pkcs11(hsm, *args, login=True, check=True):
    cmd = ["pkcs11-tool", "--module", hsm.module, "--token-label", hsm.token_label]
    if login:
        cmd += ["--login", "--pin", hsm.pin]
    return run(cmd + list(args), check=check)


def visible(path):
    """Directory listing without dot names (like plain `ls`)."""
    return sorted(n for n in os.listdir(path) if not n.startswith("."))


def fill(path):
    """Write a ballast file until the file system is full."""
    chunk = b"\0" * 65536
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[:len(chunk) // 2]
    finally:
        os.close(fd)
