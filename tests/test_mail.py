"""/mail (contract §6, §8): messages written to the mount are checked, durably
queued, S/MIME-signed with the SignEmailDescriptor key on the token and
delivered to a real SMTP relay (aiosmtpd in this process) that records
envelopes and data and answers 4xx/5xx on demand."""
import email
import email.policy
import errno
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import Mount
from helpers import run, wait_for

from aiosmtpd.controller import Controller

SENDER = "sender@example.org"  # the SAN of the default signEmailCertificateV1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """aiosmtpd handler: records (mail_from, rcpt_tos, data); `replies`
    is a list of DATA answers used first (None = accept), `rcpt_replies`
    maps an address to its RCPT answer."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.messages = []
        self.replies = []
        self.rcpt_replies = {}
        self.data_calls = 0
        self.ehlo = 0
        self.tls = []
        self.lock = threading.Lock()
        self.controller = None

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        with self.lock:
            self.ehlo += 1
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.data_calls += 1
            if self.replies:
                r = self.replies.pop(0)
                if r:
                    return r
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                  bytes(envelope.original_content)))
            self.tls.append(server.transport.get_extra_info("ssl_object")
                            is not None)
        return "250 2.0.0 Ok: queued"

    def start(self, **tls):
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port,
                                     ready_timeout=10, **tls)
        self.controller.start()
        return self

    def stop(self):
        if self.controller:
            self.controller.stop()
            self.controller = None

    @property
    def url(self):
        return f"smtp://127.0.0.1:{self.port}"

    def count(self):
        with self.lock:
            return len(self.messages)


@pytest.fixture
def relay():
    r = Relay().start()
    yield r
    r.stop()


def mail_mount(mount_factory, relay=None, port=None, **opts):
    o = {"mail_retry": 1}
    if relay is not None or port is not None:
        o["smtp"] = relay.url if relay is not None else f"smtp://127.0.0.1:{port}"
    o.update(opts)
    return mount_factory(opts=o)


def message(to="alice@example.org", subject="hello", body="Hi.\n", extra=""):
    return (f"From: Sender <{SENDER}>\nTo: {to}\nSubject: {subject}\n{extra}\n"
            f"{body}").encode()


def put(m, name, data):
    with open(m.path("mail", name), "wb") as f:
        f.write(data)


def sent_names(m):
    return sorted(os.listdir(m.path("mail", "sent")))


def queue_entries(m):
    q = os.path.join(m.store, "mail", "queue")
    return sorted(os.listdir(q)) if os.path.isdir(q) else []


def status(m):
    text = open(m.path(".status")).read()
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def verify(hsm, data, tmp_path):
    """openssl smime -verify as a receiver; returns the signed content."""
    p = tmp_path / f"recv-{time.monotonic_ns()}.eml"
    p.write_bytes(data)
    out = run(["openssl", "smime", "-verify", "-CAfile", hsm.ca_cert,
               "-in", str(p), "-binary"], input=b"")
    return out.stdout


def test_delivery_signed_bcc_crlf(hsm, mount_factory, relay, tmp_path):
    m = mail_mount(mount_factory, relay)
    body = "Grüße aus dem HSM – ünïcödé\nZweite Zeile = mit Gleichheitszeichen\n"
    msg = (f"From: \"Sender, The\" <{SENDER}>\nTo: Alice <alice@example.org>\n"
           "Cc: bob@example.org\nBcc: hidden@example.org\nSubject: signed test\n"
           f"\n{body}").encode()
    put(m, "first", msg)
    wait_for(lambda: sent_names(m) == ["first"], timeout=30, what="delivery")
    assert relay.count() == 1
    mail_from, rcpts, data = relay.messages[0]
    assert mail_from == SENDER
    assert sorted(rcpts) == ["alice@example.org", "bob@example.org",
                             "hidden@example.org"]
    # Bcc only in the envelope.
    assert b"hidden@example.org" not in data and b"\nBcc:" not in data
    # CRLF everywhere, 7-bit on the wire.
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert all(b < 0x80 for b in data)
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/signed"
    assert parsed.get_param("micalg") == "sha-256"
    assert parsed.get_param("protocol") == "application/pkcs7-signature"
    assert parsed["Message-ID"] and parsed["Date"]
    assert parsed["From"].addresses[0].addr_spec == SENDER
    # A real receiver accepts it and gets the original text back.
    content = verify(hsm, data, tmp_path)
    inner = email.message_from_bytes(content, policy=email.policy.default)
    assert inner.get_content_type() == "text/plain"
    decoded = inner.get_payload(decode=True)
    assert decoded.replace(b"\r\n", b"\n") == body.encode()
    # The signer certificate travels with the signature.
    certs = tmp_path / "signer.pem"
    p = tmp_path / "recv.eml"
    p.write_bytes(data)
    run(["openssl", "smime", "-pk7out", "-in", str(p), "-out",
         str(tmp_path / "p7.pem")])
    run(["openssl", "pkcs7", "-print_certs", "-in", str(tmp_path / "p7.pem"),
         "-out", str(certs)])
    assert "email:sender@example.org" in run(
        ["openssl", "x509", "-in", str(certs), "-noout", "-ext",
         "subjectAltName"]).stdout
    # sent/ holds exactly what the relay received; the queue is empty.
    assert open(m.path("mail", "sent", "first"), "rb").read() == data
    assert "first" not in os.listdir(m.path("mail"))
    assert queue_entries(m) == []


def test_tampered_delivery_fails_verification(hsm, mount_factory, relay, tmp_path):
    m = mail_mount(mount_factory, relay)
    put(m, "t", message(body="pay 100 EUR\n"))
    wait_for(lambda: relay.count() == 1, timeout=30, what="delivery")
    data = relay.messages[0][2].replace(b"pay 100 EUR", b"pay 900 EUR")
    p = tmp_path / "bad.eml"
    p.write_bytes(data)
    r = run(["openssl", "smime", "-verify", "-CAfile", hsm.ca_cert, "-in",
             str(p)], check=False)
    assert r.returncode != 0


BAD = {
    "no-recipient": b"From: sender@example.org\nSubject: x\n\nbody\n",
    "no-from": b"To: alice@example.org\nSubject: x\n\nbody\n",
    "no-blank-line": b"From: sender@example.org\nTo: alice@example.org\nSubject: x\n",
    "binary": bytes(range(256)) * 8,
    "two-from": b"From: a@example.org, b@example.org\nTo: c@example.org\n\nx\n",
    "long-header": b"From: sender@example.org\nTo: alice@example.org\nX-L: "
                   + b"x" * 1200 + b"\n\nbody\n",
    "bad-address": b"From: sender@example.org\nTo: alice at example\n\nx\n",
    "8bit-multipart": b"From: sender@example.org\nTo: alice@example.org\n"
                      b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\n"
                      b"caf\xc3\xa9\n--b--\n",
}


def test_invalid_messages_refused(mount_factory, relay):
    m = mail_mount(mount_factory, relay)
    for name, data in BAD.items():
        with pytest.raises(OSError) as e:
            put(m, name, data)
        assert e.value.errno == errno.EINVAL, name
        assert f"mail/{name}" in m.log(), name
    # An empty message is no error (touch, a redirection's first close):
    # nothing is queued (issue 13).
    put(m, "empty", b"")
    wait_for(lambda: "empty" not in os.listdir(m.path("mail")),
             what="empty writer released")
    assert sorted(os.listdir(m.path("mail"))) == ["failed", "sent"]
    assert queue_entries(m) == []
    time.sleep(1.5)
    assert relay.data_calls == 0
    assert "no recipient" in m.log() and "no From" in m.log()
    # A good message afterwards still goes through.
    put(m, "good", message())
    wait_for(lambda: relay.count() == 1, timeout=30, what="delivery")


def test_permanent_failure_goes_to_failed(mount_factory, relay):
    m = mail_mount(mount_factory, relay)
    relay.replies = ["550 5.7.1 Message rejected by policy"]
    put(m, "nope", message())
    wait_for(lambda: "nope" in os.listdir(m.path("mail", "failed")), timeout=30,
             what="failed/")
    assert sorted(os.listdir(m.path("mail", "failed"))) == ["nope", "nope.error"]
    err = open(m.path("mail", "failed", "nope.error")).read()
    assert "550 5.7.1 Message rejected by policy" in err
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", err)
    assert open(m.path("mail", "failed", "nope"), "rb").read() == message()
    assert "nope" not in os.listdir(m.path("mail"))
    assert relay.count() == 0 and relay.data_calls == 1
    assert status(m)["mail.failed"] == "1"
    # Queue it again: the relay now accepts it.
    os.rename(m.path("mail", "failed", "nope"), m.path("mail", "nope"))
    wait_for(lambda: sent_names(m) == ["nope"], timeout=30, what="requeued delivery")
    assert relay.count() == 1
    assert os.listdir(m.path("mail", "failed")) == []


def test_rejected_recipient_fails_whole_message(mount_factory, relay):
    m = mail_mount(mount_factory, relay)
    relay.rcpt_replies["nobody@example.org"] = "550 5.1.1 <nobody@example.org>: no such user"
    put(m, "r", message(to="alice@example.org, nobody@example.org"))
    wait_for(lambda: "r.error" in os.listdir(m.path("mail", "failed")), timeout=30,
             what="failed/")
    assert "550 5.1.1 <nobody@example.org>: no such user" in \
        open(m.path("mail", "failed", "r.error")).read()
    assert relay.count() == 0   # all or none: alice did not get it either
    os.unlink(m.path("mail", "failed", "r"))
    assert os.listdir(m.path("mail", "failed")) == []


def test_temporary_failures_retried_once_delivered(mount_factory, relay):
    m = mail_mount(mount_factory, relay)
    relay.replies = ["451 4.3.0 Try again later", "451 4.3.0 Try again later"]
    put(m, "retry", message())
    # While queued: visible, read-only, schedule in the xattr and .status.
    wait_for(lambda: relay.data_calls >= 1, timeout=30, what="first attempt")
    if "retry" in os.listdir(m.path("mail")):
        assert open(m.path("mail", "retry"), "rb").read() == message()
        with pytest.raises(OSError) as e:
            open(m.path("mail", "retry"), "wb")
        assert e.value.errno == errno.EACCES
    wait_for(lambda: sent_names(m) == ["retry"], timeout=30, what="delivery")
    time.sleep(2.5)
    assert relay.count() == 1 and relay.data_calls == 3
    assert "451 4.3.0 Try again later" in m.log()


def test_relay_down_then_up(mount_factory, hsm):
    relay = Relay()
    m = mail_mount(mount_factory, port=relay.port)
    put(m, "later", message())
    wait_for(lambda: "Connection refused" in status(m).get("mail.last_error", "")
             or "connect" in status(m).get("mail.last_error", "").lower(),
             timeout=20, what="a failed attempt")
    st = status(m)
    assert st["mail.queued"] == "1"
    assert "later" in os.listdir(m.path("mail"))
    assert open(m.path("mail", "later"), "rb").read() == message()
    with pytest.raises(OSError) as e:
        open(m.path("mail", "later"), "r+b")
    assert e.value.errno == errno.EACCES
    x = os.getxattr(m.path("mail", "later"), "user.hsmfs.mail").decode()
    assert "state=queued" in x and "attempts=" in x and "next=" in x
    with pytest.raises(OSError) as e:
        os.unlink(m.path("mail", "later"))
    assert e.value.errno == errno.EBUSY
    relay.start()
    try:
        wait_for(lambda: sent_names(m) == ["later"], timeout=40, what="delivery")
        assert relay.count() == 1
        assert status(m)["mail.queued"] == "0"
    finally:
        relay.stop()


def test_no_relay_waits_then_restart_delivers(mount_factory, relay):
    m = mail_mount(mount_factory)
    put(m, "wait", message())
    st = status(m)
    assert st["mail.queued"] == "1" and "none" in st["mail.relay"]
    assert "no smtp= relay" in m.log()
    time.sleep(1)
    assert relay.data_calls == 0
    m.remount(opts={"mail_retry": 1, "smtp": relay.url})
    wait_for(lambda: sent_names(m) == ["wait"], timeout=30, what="delivery")


def test_kill9_with_20_queued(mount_factory):
    relay = Relay()
    m = mail_mount(mount_factory, port=relay.port)
    for i in range(20):
        put(m, f"k{i:02d}", message(subject=f"kill {i}"))
    assert status(m)["mail.queued"] == "20"
    m.kill9()
    relay.start()
    try:
        m.start()
        wait_for(lambda: len(sent_names(m)) == 20, timeout=60, what="20 deliveries")
        subjects = sorted(email.message_from_bytes(d)["Subject"]
                          for _, _, d in relay.messages)
        assert subjects == sorted(f"kill {i}" for i in range(20))
        assert queue_entries(m) == []
    finally:
        relay.stop()


def test_100_messages_from_4_writers(mount_factory, relay):
    m = mail_mount(mount_factory, relay)
    errors = []

    def writer(w):
        try:
            for i in range(25):
                put(m, f"w{w}-{i:02d}", message(subject=f"w{w} {i}"))
        except Exception as e:  # reported below
            errors.append(e)

    ts = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    wait_for(lambda: relay.count() >= 100 and len(sent_names(m)) == 100,
             timeout=90, what="100 deliveries")
    time.sleep(1)
    assert relay.count() == 100
    ids = {email.message_from_bytes(d)["Message-ID"] for _, _, d in relay.messages}
    subjects = {email.message_from_bytes(d)["Subject"] for _, _, d in relay.messages}
    assert len(ids) == 100 and len(subjects) == 100
    # One sender, consecutive messages over a reused connection.
    assert relay.ehlo < 20, relay.ehlo


def test_existing_headers_kept_and_names(mount_factory, relay, tmp_path, hsm):
    m = mail_mount(mount_factory, relay)
    body = "7-bit text\n.\n..leading dots survive dot-stuffing\n.\n"
    msg = message(extra="Date: Mon, 01 Jan 2024 10:00:00 +0000\n"
                  "Message-ID: <fixed-1@example.org>\n", body=body)
    put(m, "keep", msg)
    wait_for(lambda: relay.count() == 1, timeout=30, what="delivery")
    data = relay.messages[0][2]
    parsed = email.message_from_bytes(data)
    assert parsed["Message-ID"] == "<fixed-1@example.org>"
    assert parsed["Date"] == "Mon, 01 Jan 2024 10:00:00 +0000"
    content = verify(hsm, data, tmp_path)
    assert content.endswith(body.replace("\n", "\r\n").encode())
    wait_for(lambda: sent_names(m) == ["keep"], timeout=10, what="sent/")
    assert open(m.path("mail", "sent", "keep"), "rb").read() == data
    assert "is not an address of key" not in m.log()
    # A From the certificate does not name is signed, with a warning.
    put(m, "other", message().replace(SENDER.encode(), b"other@example.org"))
    wait_for(lambda: relay.count() == 2, timeout=30, what="delivery")
    assert "From other@example.org is not an address of key" in m.log()
    for bad in ("a b", "x" * 256):
        with pytest.raises(OSError) as e:
            put(m, bad, msg)
        assert e.value.errno in (errno.EINVAL, errno.ENAMETOOLONG), bad
    # A dot name is a writer's temporary (issue 13): never listed or sent.
    put(m, ".hidden", msg)
    assert ".hidden" not in os.listdir(m.path("mail")) and relay.count() == 2


def test_binary_body_base64_verifies(mount_factory, relay, hsm, tmp_path):
    m = mail_mount(mount_factory, relay)
    payload = bytes(range(256)) * 4
    msg = (f"From: {SENDER}\nTo: alice@example.org\nSubject: blob\n"
           "Content-Type: application/octet-stream\n\n").encode() + payload
    put(m, "blob", msg)
    wait_for(lambda: relay.count() == 1, timeout=30, what="delivery")
    content = verify(hsm, relay.messages[0][2], tmp_path)
    inner = email.message_from_bytes(content)
    assert inner["Content-Transfer-Encoding"] == "base64"
    assert inner.get_payload(decode=True) == payload


def test_without_descriptor_writes_refused(hsm, mount_factory, relay, tmp_path):
    cfg = hsm.config(tmp_path / "nomail.xml", omit=("SignEmailDescriptor",))
    m = mount_factory(config=cfg, opts={"smtp": relay.url})
    with pytest.raises(OSError) as e:
        put(m, "x", message())
    assert e.value.errno == errno.EOPNOTSUPP
    assert "SignEmailDescriptor" in m.log()


def test_max_age_gives_up(mount_factory):
    port = free_port()
    m = mail_mount(mount_factory, port=port, mail_max_age=2)
    put(m, "old", message())
    wait_for(lambda: "old.error" in os.listdir(m.path("mail", "failed")),
             timeout=30, what="give up")
    err = open(m.path("mail", "failed", "old.error")).read()
    assert "gave up after" in err and "127.0.0.1" in err
    assert status(m)["mail.queued"] == "0"


def test_starttls_required_never_plaintext(mount_factory, relay):
    # The relay offers no STARTTLS: nothing may be sent in the clear.
    m = mount_factory(opts={"mail_retry": 1,
                            "smtp": f"smtp+starttls://127.0.0.1:{relay.port}"})
    put(m, "tls", message())
    wait_for(lambda: status(m).get("mail.last_error"), timeout=20,
             what="a failed attempt")
    time.sleep(1.5)
    assert relay.data_calls == 0 and relay.count() == 0
    assert "tls" in os.listdir(m.path("mail"))
    assert "STARTTLS" in status(m)["mail.last_error"] or \
        "SSL" in status(m)["mail.last_error"]


def test_damaged_queue_entry_not_sent(mount_factory, relay):
    m = mail_mount(mount_factory, relay)
    put(m, "ok", message())
    wait_for(lambda: relay.count() == 1, timeout=30, what="delivery")
    m.unmount()
    with open(os.path.join(m.store, "mail", "queue", "junk"), "wb") as f:
        f.write(b"not an entry\n")
    m.start()
    wait_for(lambda: "junk.error" in os.listdir(m.path("mail", "failed")),
             timeout=20, what="damaged entry in failed/")
    assert "damaged" in open(m.path("mail", "failed", "junk.error")).read()
    time.sleep(1)
    assert relay.data_calls == 1
    # sent/ survives the restart and can be cleaned up.
    assert sent_names(m) == ["ok"]
    os.unlink(m.path("mail", "sent", "ok"))
    assert sent_names(m) == []


def test_hsm_failure_at_close_queues_unsigned_then_signs(hsm, mount_factory, relay,
                                                        tmp_path, monkeypatch):
    """contract §8: a failing HSM loses no mail. close() still queues the
    message (unsigned); the sender signs it once the token works again
    (tests/p11shim injects CKR_DEVICE_ERROR in front of SoftHSM)."""
    from conftest import BUILD
    shim = os.environ.get("HSMFS_P11SHIM", str(BUILD / "tests" / "p11shim.so"))
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    monkeypatch.setenv("P11SHIM_REAL", hsm.module)
    monkeypatch.setenv("P11SHIM_CTL", str(ctl))
    cfg = hsm.config(tmp_path / "shim.xml", key_attrs={
        "signEmailCertificateV1": {"locationValue": shim}})
    m = mount_factory(config=cfg, opts={"mail_retry": 1, "smtp": relay.url})
    (ctl / "fail_ops").touch()
    put(m, "hsmdown", message(body="while the HSM was down\n"))
    assert "signing failed, queued unsigned" in m.log()
    wait_for(lambda: "signing with key signEmailCertificateV1 failed" in m.log(),
             timeout=20, what="a failed signing attempt by the sender")
    assert relay.data_calls == 0 and "hsmdown" in os.listdir(m.path("mail"))
    (ctl / "fail_ops").unlink()
    wait_for(lambda: sent_names(m) == ["hsmdown"], timeout=30, what="delivery")
    content = verify(hsm, relay.messages[0][2], tmp_path)
    assert b"while the HSM was down" in content


def test_restart_keeps_the_schedule(mount_factory):
    relay = Relay()
    m = mail_mount(mount_factory, port=relay.port, mail_retry=60)
    put(m, "sched", message())
    wait_for(lambda: status(m).get("mail.last_error"), timeout=20,
             what="a failed attempt")
    before = os.getxattr(m.path("mail", "sched"), "user.hsmfs.mail").decode()
    assert "attempts=1" in before
    left = int(re.search(r"\(in (\d+) s\)", status(m)["mail.next_retry"]).group(1))
    assert 45 <= left <= 60, left                    # mail_retry after attempt 1
    m.unmount()
    relay.start()
    try:
        m.start()
        after = os.getxattr(m.path("mail", "sched"), "user.hsmfs.mail").decode()
        # Same next attempt time and count: the backoff survives restarts
        # (RFC 5321 4.5.4.1), the relay is not hit at once.
        assert after.split("next=")[1].split()[0] == before.split("next=")[1].split()[0]
        assert "attempts=1" in after
        time.sleep(1.5)
        assert relay.data_calls == 0 and "sched" in os.listdir(m.path("mail"))
    finally:
        relay.stop()


def server_tls(hsm, tmp_path):
    """A relay certificate for 127.0.0.1 issued by the test CA."""
    key, csr, crt, ext = (tmp_path / n for n in ("srv.key", "srv.csr", "srv.pem",
                                                  "srv.ext"))
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
                   "basicConstraints=CA:FALSE\n")
    run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout",
         str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1"])
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", hsm.ca_cert, "-CAkey",
         hsm.ca_key, "-set_serial", "77", "-days", "2", "-extfile", str(ext),
         "-out", str(crt)])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(crt), str(key))
    return ctx


@pytest.mark.parametrize("mode", ["starttls", "smtps"])
def test_tls_delivery(hsm, mount_factory, tmp_path, mode):
    ctx = server_tls(hsm, tmp_path)
    relay = Relay()
    if mode == "starttls":
        relay.start(tls_context=ctx, require_starttls=True)
        url = f"smtp+starttls://127.0.0.1:{relay.port}"
    else:
        relay.start(ssl_context=ctx)
        url = f"smtps://127.0.0.1:{relay.port}"
    try:
        m = mount_factory(opts={"mail_retry": 1, "smtp": url,
                                "smtp_ca": hsm.ca_cert})
        put(m, "tls", message())
        wait_for(lambda: sent_names(m) == ["tls"], timeout=30, what="delivery")
        assert relay.count() == 1 and relay.tls == [True]
        verify(hsm, relay.messages[0][2], tmp_path)
        m.unmount()
        # Without the relay's CA the certificate is not trusted: nothing
        # is sent, the message waits.
        m2 = mount_factory(opts={"mail_retry": 1, "smtp": url})
        put(m2, "untrusted", message())
        wait_for(lambda: status(m2).get("mail.last_error"), timeout=20,
                 what="a failed attempt")
        assert "certificate" in status(m2)["mail.last_error"].lower()
        assert relay.count() == 1 and "untrusted" in os.listdir(m2.path("mail"))
    finally:
        relay.stop()


def test_smtp_auth_over_starttls(hsm, mount_factory, tmp_path):
    from aiosmtpd.smtp import AuthResult, LoginPassword
    seen = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == b"idm"
              and auth_data.password == b"s3cret pass")
        seen.append((mechanism, auth_data.login, ok))
        return AuthResult(success=ok, handled=False)

    ctx = server_tls(hsm, tmp_path)
    relay = Relay()
    relay.start(tls_context=ctx, require_starttls=True, auth_required=True,
                authenticator=authenticator)
    url = f"smtp+starttls://127.0.0.1:{relay.port}"
    good = tmp_path / "auth"
    good.write_text("idm\ns3cret pass\n")
    good.chmod(0o600)
    bad = tmp_path / "badauth"
    bad.write_text("idm\nwrong\n")
    bad.chmod(0o600)
    try:
        m = mount_factory(opts={"mail_retry": 1, "smtp": url,
                                "smtp_ca": hsm.ca_cert, "smtp_auth": str(good)})
        put(m, "authed", message())
        wait_for(lambda: sent_names(m) == ["authed"], timeout=30, what="delivery")
        assert seen and seen[-1][1:] == (b"idm", True)
        assert "s3cret" not in m.log()
        m.unmount()
        # A refused login keeps the mail queued: it is not the message's fault.
        m2 = mount_factory(opts={"mail_retry": 1, "smtp": url,
                                 "smtp_ca": hsm.ca_cert, "smtp_auth": str(bad)})
        put(m2, "waits", message())
        wait_for(lambda: "SMTP AUTH refused" in status(m2).get("mail.last_error", ""),
                 timeout=20, what="refused login")
        assert "waits" in os.listdir(m2.path("mail"))
        assert os.listdir(m2.path("mail", "failed")) == []
        assert relay.count() == 1
    finally:
        relay.stop()


def test_smtp_auth_refused_without_tls(hsm, mount_factory, relay, tmp_path):
    auth = tmp_path / "auth"
    auth.write_text("idm\npw\n")
    auth.chmod(0o600)
    # Checked before mounting (issue 14): refused, nothing mounted.
    m = mount_factory(opts={"smtp": relay.url, "smtp_auth": str(auth)},
                      start=False)
    assert m.start(expect_fail=True) != 0
    assert "needs TLS" in m.log()
    assert not os.path.ismount(m.mnt)


def as_nobody(*cmd):
    return run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                *cmd], check=False)


def test_views_owner_only_with_allow_other(hsm, relay):
    """With allow_other every local user reaches the mount: queued and
    failed messages (Bcc still in them), their reasons and sent messages
    are 0400, readable by the mount's owner only; a message being written
    is 0600. Control: another user does read the 0444 .status, so the
    mount is open to others and only the modes keep them out."""
    base = Path(tempfile.mkdtemp(prefix="hsmfs-mailmodes-"))
    os.chmod(base, 0o755)
    m = Mount(hsm, base, hsm.config(base / "engineSignEncrypt.xml"),
              opts={"mail_retry": 1, "smtp": relay.url, "allow_other": True})
    try:
        m.start()
        bcc = message(extra="Bcc: hidden@example.org\n")
        relay.replies = ["550 5.7.1 Message rejected by policy"]
        put(m, "f", bcc)
        wait_for(lambda: "f.error" in os.listdir(m.path("mail", "failed")),
                 timeout=30, what="failed/")
        put(m, "s", message())
        wait_for(lambda: sent_names(m) == ["s"], timeout=30, what="delivery")
        relay.replies = ["451 4.3.0 try again later"] * 1000
        with open(m.path("mail", "q"), "wb") as w:
            w.write(bcc)
            w.flush()
            assert stat.S_IMODE(os.stat(m.path("mail", "q")).st_mode) == 0o600
        assert status(m)["mail.queued"] == "1"
        out = as_nobody("cat", m.path(".status"))
        assert out.returncode == 0 and "mail.queued: 1" in out.stdout, out.stderr
        views = {"q": bcc, "failed/f": bcc, "sent/s": None, "failed/f.error": None}
        for v, content in views.items():
            p = m.path("mail", *v.split("/"))
            # (the kernel may show the writer's 0600 for attr_timeout)
            wait_for(lambda: stat.S_IMODE(os.stat(p).st_mode) == 0o400,
                     timeout=10, what=f"mode of {v}")
            assert os.stat(p).st_uid == os.getuid(), v
            data = Path(p).read_bytes()        # the owner reads it
            if content is not None:
                assert data == content and b"Bcc: hidden@example.org" in data
            out = as_nobody("cat", p)
            assert out.returncode != 0 and "Permission denied" in out.stderr, v
            assert "hidden@example.org" not in out.stdout
    finally:
        m.cleanup()
        shutil.rmtree(base, ignore_errors=True)
