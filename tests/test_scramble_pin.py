# hsmfs-tool scramble-pin: stdin handling, exit codes, no echo on a
# terminal, and the output decoded by an independent implementation of
# the pin.encrypted format documented in docs/engine.md.
import base64
import hashlib
import os
import pty
import re
import select
import struct
import subprocess
import time

import pytest

TOOL = os.environ.get("HSMFS_TOOL") or os.path.join(
    os.environ.get("HSMFS_BUILD", "build"), "tool", "hsmfs-tool")


def unscramble(value):
    """docs/engine.md: "S1:" base64(salt8 || (pin || check4) XOR keystream)."""
    assert value.startswith("S1:")
    raw = base64.b64decode(value[3:], validate=True)
    salt, body = raw[:8], raw[8:]
    ks = b"".join(
        hashlib.sha256(b"hsmfs pin.encrypted v1 keystream" + salt +
                       struct.pack(">I", i)).digest()
        for i in range((len(body) + 31) // 32))
    data = bytes(a ^ b for a, b in zip(body, ks))
    pin, check = data[:-4], data[-4:]
    want = hashlib.sha256(b"hsmfs pin.encrypted v1 check" + salt + pin).digest()[:4]
    assert check == want, "check value does not match"
    return pin


def run(stdin, *args):
    return subprocess.run([TOOL, "scramble-pin", *args], input=stdin,
                          capture_output=True, timeout=30)


@pytest.mark.parametrize("given,pin", [
    (b"1234\n", b"1234"),
    (b"abc\r\n", b"abc"),
    (b"no-newline", b"no-newline"),
    (b" spaces kept \n", b" spaces kept "),
    (b"first\nsecond\n", b"first"),
    (b"p" * 256 + b"\n", b"p" * 256),
])
def test_scramble_pin_pipe(given, pin):
    p = run(given)
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert re.fullmatch(r"S1:[A-Za-z0-9+/]+=*\n", out), out
    assert unscramble(out.strip()) == pin
    assert pin not in p.stdout and pin not in p.stderr


def test_scramble_pin_salted():
    a, b = run(b"1234\n"), run(b"1234\n")
    assert a.returncode == b.returncode == 0
    assert a.stdout != b.stdout
    assert unscramble(a.stdout.decode().strip()) == b"1234"
    assert unscramble(b.stdout.decode().strip()) == b"1234"


@pytest.mark.parametrize("given", [b"", b"\n", b"\r\n", b"x" * 257 + b"\n"])
def test_scramble_pin_refused(given):
    p = run(given)
    assert p.returncode == 2
    assert p.stdout == b""
    assert p.stderr.strip()


def test_scramble_pin_usage():
    p = run(b"1234\n", "extra")
    assert p.returncode == 2 and p.stdout == b""
    p = run(b"", "--help")
    assert p.returncode == 0 and b"scramble-pin" in p.stdout


def _read_until(fd, needle, timeout=10):
    buf = b""
    end = time.monotonic() + timeout
    while needle not in buf:
        left = end - time.monotonic()
        assert left > 0, "timed out waiting for %r, got %r" % (needle, buf)
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def _tty_session(first, second):
    """Run scramble-pin with stdin on a pty; returns (rc, stdout, echoed)."""
    master, slave = pty.openpty()
    p = subprocess.Popen([TOOL, "scramble-pin"], stdin=slave,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(slave)
    echoed = b""
    try:
        _read_until(p.stderr.fileno(), b"PIN: ")
        os.write(master, first + b"\n")
        _read_until(p.stderr.fileno(), b"PIN again: ")
        os.write(master, second + b"\n")
        out, _ = p.communicate(timeout=30)
        # Whatever the terminal echoed back.
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            echoed += chunk
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    return p.returncode, out, echoed


def test_scramble_pin_terminal_no_echo():
    rc, out, echoed = _tty_session(b"tty-secret-42", b"tty-secret-42")
    assert rc == 0
    assert unscramble(out.decode().strip()) == b"tty-secret-42"
    assert b"tty-secret-42" not in echoed


def test_scramble_pin_terminal_mismatch():
    rc, out, echoed = _tty_session(b"tty-secret-42", b"tty-secret-43")
    assert rc == 2
    assert out == b""
    assert b"tty-secret" not in echoed
