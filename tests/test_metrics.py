"""MNT/.metrics (contract §1): the Prometheus text exposition format, parsed
with python3-prometheus-client's parser plus the checks it leaves out
(every family typed, no family twice, histograms cumulative), carrying
the named series, and values that follow operations; `hsmfs-tool status
--format=prometheus|json`."""
import json
import math
import os
import subprocess
import threading
from datetime import datetime, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import SRC, TOOL
from faultshim import Shim
from folderops import append, make_zip, read, write
from helpers import run, wait_for

KEYS = ["encryptedFieldsCertificateV1", "configZipSignerCertificateV1",
        "objectHistorySignerCertificateV1", "signEmailCertificateV1"]
FOLDERS = ["sign-out", "verify-in", "fields", "history", "mail"]


def parse(text):
    """Families by name, after checks stricter than the parser's own."""
    lines = text.splitlines()
    assert text.endswith("\n")
    seen_type = {}
    for ln in lines:
        assert ln.strip() == ln and ln, f"blank or padded line {ln!r}"
        if ln.startswith("# TYPE "):
            _, _, name, typ = ln.split(" ")
            assert name not in seen_type, f"family {name} twice"
            assert typ in ("counter", "gauge", "histogram", "summary")
            seen_type[name] = typ
    fams = {}
    for f in text_string_to_metric_families(text):
        assert f.type != "untyped", f"sample outside its family: {f.name}"
        assert f.name not in fams, f"family {f.name} split"
        fams[f.name] = f
        for s in f.samples:
            assert math.isfinite(s.value), s
            if f.type == "counter":
                assert s.name == f.name + "_total" and s.value >= 0, s
    for f in fams.values():
        if f.type != "histogram":
            continue
        series = {}
        for s in f.samples:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            series.setdefault(key, []).append(s)
        for key, samples in series.items():
            buckets = [s for s in samples if s.name.endswith("_bucket")]
            count = [s.value for s in samples if s.name.endswith("_count")]
            les = [float(s.labels["le"]) for s in buckets]
            assert les == sorted(les) and les[-1] == math.inf, les
            vals = [s.value for s in buckets]
            assert vals == sorted(vals), vals
            assert count == [vals[-1]], (count, vals)
    return fams


def value(fams, name, **labels):
    base = name
    for suffix in ("_total", "_count", "_sum", "_bucket"):
        if base not in fams and base.endswith(suffix):
            base = base[:-len(suffix)]
    fam = fams[base]
    hits = [s.value for s in fam.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


def metrics(m):
    with open(m.path(".metrics")) as f:
        return parse(f.read())


def cert_not_after(pem):
    out = run(["openssl", "x509", "-in", pem, "-noout", "-enddate"]).stdout
    when = out.strip().split("=", 1)[1]
    return datetime.strptime(when, "%b %d %H:%M:%S %Y %Z").replace(
        tzinfo=timezone.utc).timestamp()


def test_metrics_parse_and_carry_the_named_series(hsm, mount):
    assert ".metrics" in os.listdir(mount.mnt)
    fams = metrics(mount)
    assert value(fams, "hsmfs_info") == 1
    for k in KEYS:
        assert value(fams, "hsmfs_cert_not_after_seconds", key=k) == \
            cert_not_after(hsm.keys[k].cert_pem)
        assert value(fams, "hsmfs_token_present", key=k) == 1
        assert value(fams, "hsmfs_token_logged_in", key=k) == 1
        # The key check at start-up ran in a child: nothing counted yet
        # except what the folders did when they started.
        assert value(fams, "hsmfs_hsm_latency_seconds_count", key=k) == \
            value(fams, "hsmfs_hsm_operations_total", key=k)
        assert value(fams, "hsmfs_hsm_errors_total", key=k, kind="hsm") == 0
    assert fams["hsmfs_hsm_latency_seconds"].type == "histogram"
    for f in FOLDERS:
        assert value(fams, "hsmfs_folder_up", folder=f) == 1
        assert value(fams, "hsmfs_folder_state", folder=f, state="ready",
                     reason="") == 1
    st = os.statvfs(mount.store)
    free = value(fams, "hsmfs_store_free_bytes")
    assert abs(free - st.f_bavail * st.f_frsize) < 256 << 20, free
    assert value(fams, "hsmfs_log_messages_total", level="error") == 0
    assert value(fams, "hsmfs_descriptor_version", descriptor="EncryptedFields",
                 key="encryptedFieldsCertificateV1") == 1
    text = open(mount.path(".metrics")).read()
    assert f'"{hsm.pin}"' not in text and "pin=" not in text


def test_metrics_follow_operations(mount):
    zk = "configZipSignerCertificateV1"
    before = metrics(mount)
    assert write(mount.path("sign-out", "a.zip"), make_zip()) is None
    assert write(mount.path("sign-out", "bad.zip"), b"not a zip") is not None
    assert append(mount.path("history", "obj"), b"one\n") is None
    after = metrics(mount)
    assert value(after, "hsmfs_signout_signed_total") == \
        value(before, "hsmfs_signout_signed_total") + 1
    assert value(after, "hsmfs_signout_refused_total") == \
        value(before, "hsmfs_signout_refused_total") + 1
    ops = value(after, "hsmfs_hsm_operations_total", key=zk)
    assert ops > value(before, "hsmfs_hsm_operations_total", key=zk)
    assert value(after, "hsmfs_hsm_latency_seconds_count", key=zk) == ops
    assert value(after, "hsmfs_hsm_latency_seconds_sum", key=zk) > 0
    assert value(after, "hsmfs_hsm_last_operation_timestamp_seconds", key=zk) > 0
    assert value(after, "hsmfs_errors_total", folder="sign-out", kind="invalid") == 1
    assert value(after, "hsmfs_log_messages_total", level="error") >= 1
    assert value(after, "hsmfs_last_error_timestamp_seconds") > 0
    assert value(after, "hsmfs_history_records_total") == \
        value(before, "hsmfs_history_records_total") + 1
    assert value(after, "hsmfs_history_close_seconds_count") == 1
    assert value(after, "hsmfs_history_objects") == 1
    # The human view says the same.
    status = open(mount.path(".status")).read()
    assert "errors.sign-out.invalid: 1" in status
    assert "log.last_error: " in status and "bad.zip" in status
    assert f"key.{zk}.token_state: present, logged in" in status
    assert f"key.{zk}.cert_not_after: " in status


def test_folder_state_reason(hsm, mount_factory, tmp_path):
    cfg = hsm.config(tmp_path / "nomail.xml", omit=("SignEmailDescriptor",))
    m = mount_factory(config=cfg)
    fams = metrics(m)
    assert value(fams, "hsmfs_folder_up", folder="mail") == 0
    [s] = [s for s in fams["hsmfs_folder_state"].samples
           if s.labels["folder"] == "mail"]
    assert s.labels["state"] == "not_configured"
    assert "SignEmailDescriptor" in s.labels["reason"], s.labels
    assert "folder.mail: not configured: " in open(m.path(".status")).read()


def test_token_state_follows_the_token(hsm, mount_factory, tmp_path, monkeypatch):
    shim = Shim(hsm, tmp_path / "shim").activate(monkeypatch)
    m = mount_factory(config=shim.config(tmp_path / "shim.xml"))
    k = "encryptedFieldsCertificateV1"
    assert write(m.path("fields", "pw"), b"s3cret") is None
    fams = metrics(m)
    assert value(fams, "hsmfs_token_present", key=k) == 1
    shim.set("removed")
    with pytest.raises(OSError):
        open(m.path("fields", "pw"), "rb").read()
    fams = metrics(m)
    assert value(fams, "hsmfs_token_present", key=k) == 0
    assert value(fams, "hsmfs_token_logged_in", key=k) == 0
    assert value(fams, "hsmfs_hsm_errors_total", key=k, kind="hsm") >= 1
    assert value(fams, "hsmfs_errors_total", folder="fields", kind="hsm") >= 1
    shim.clear()
    assert open(m.path("fields", "pw"), "rb").read() == b"s3cret"
    fams = metrics(m)
    assert value(fams, "hsmfs_token_present", key=k) == 1
    assert value(fams, "hsmfs_token_logged_in", key=k) == 1


NOT_DONE = object()


class Background(threading.Thread):
    """fn() in a thread; .result once it returned (else NOT_DONE)."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.result = fn, NOT_DONE
        self.start()

    def run(self):
        self.result = self.fn()


def test_metrics_do_not_wait_for_a_token_recovery(hsm, mount_factory, tmp_path,
                                                  monkeypatch):
    """A recovery holds the token lock across module calls (here a C_Login
    that hangs as a remote HSM does): .metrics and .status answer
    meanwhile, and say the token is not logged in."""
    shim = Shim(hsm, tmp_path / "shim").activate(monkeypatch)
    m = mount_factory(config=shim.config(tmp_path / "shim.xml"))
    k = "encryptedFieldsCertificateV1"
    f = m.path("fields", "pw")
    assert write(f, b"s3cret") is None
    logins = shim.stats().get("calls.C_Login", 0)
    shim.set("closeall", "delay C_Login ms=15000")
    op = Background(lambda: read(f))
    wait_for(lambda: shim.stats().get("calls.C_Login", 0) > logins,
             what="the recovery's C_Login")
    during = Background(lambda: (metrics(m), open(m.path(".status")).read()))
    during.join(60)
    assert during.result is not NOT_DONE, ".metrics waited for the recovery"
    assert op.is_alive(), "the recovery ended before .metrics answered"
    fams, text = during.result
    assert value(fams, "hsmfs_token_logged_in", key=k) == 0
    assert f"key.{k}.token_state: present, not logged in" in text
    op.join(120)
    assert op.result == (b"s3cret", None)
    fams = metrics(m)
    assert value(fams, "hsmfs_token_logged_in", key=k) == 1


def test_metrics_do_not_hang_on_a_hanging_module(hsm, mount_factory, tmp_path,
                                                 monkeypatch):
    """C_GetSlotInfo hangs: one reader of .metrics waits for it, the
    others answer with the last known state, and signing goes on (the
    lookup of .metrics, under the kernel's lock of the root directory,
    never asks the module: every path lookup in / would wait)."""
    shim = Shim(hsm, tmp_path / "shim").activate(monkeypatch)
    m = mount_factory(config=shim.config(tmp_path / "shim.xml"))
    k = "configZipSignerCertificateV1"
    asked = shim.stats().get("calls.C_GetSlotInfo", 0)
    shim.set("delay C_GetSlotInfo ms=15000")
    first = Background(lambda: metrics(m))
    wait_for(lambda: shim.stats().get("calls.C_GetSlotInfo", 0) > asked,
             what="a reader in C_GetSlotInfo")
    others = [Background(lambda: metrics(m)) for _ in range(4)]
    signer = Background(lambda: write(m.path("sign-out", "a.zip"), make_zip()))
    for t in others + [signer]:
        t.join(120)
        assert t.result is not NOT_DONE
    # All of that while the first reader is still in its first call.
    assert shim.stats().get("calls.C_GetSlotInfo", 0) == asked + 1
    assert first.is_alive()
    assert signer.result is None, signer.result
    shim.clear()     # the reader asks once per key and per getattr: let it go
    for t in others:
        assert value(t.result, "hsmfs_token_present", key=k) == 1
        assert value(t.result, "hsmfs_token_logged_in", key=k) == 1
    first.join(120)
    assert value(first.result, "hsmfs_token_present", key=k) == 1


def status(mnt, *args):
    return subprocess.run([TOOL, "status", mnt, *args], capture_output=True,
                          text=True, timeout=60)


def test_status_tool_formats(mount):
    r = status(mount.mnt, "--format=prometheus")
    assert r.returncode == 0, r.stderr
    fams = parse(r.stdout)
    assert value(fams, "hsmfs_folder_up", folder="history") == 1
    r = status(mount.mnt, "--format=json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    byname = {f["name"]: f for f in doc["families"]}
    assert set(byname) == {f.name + "_total" if f.type == "counter" else f.name
                           for f in fams.values()}
    cert = byname["hsmfs_cert_not_after_seconds"]
    assert cert["type"] == "gauge" and cert["help"]
    assert {s["labels"]["key"] for s in cert["samples"]} == set(KEYS)
    assert all(isinstance(s["value"], (int, float)) for s in cert["samples"])
    hist = byname["hsmfs_hsm_latency_seconds"]["samples"]
    assert any(s["labels"].get("le") == "+Inf" for s in hist)
    r = status(mount.mnt)
    assert r.returncode == 0 and "folder.history" in r.stdout, r.stderr
    r = status(mount.mnt, "--format=xml")
    assert r.returncode == 2 and "--format=xml" in r.stderr
    r = status("/nonexistent", "--format=json")
    assert r.returncode == 2


# Control characters are refused in key names (config check).
ODD = 'zip "signer" \\ v1,a=b} é'
ODD_XML = 'zip &quot;signer&quot; \\ v1,a=b} é'


def test_odd_key_name_is_escaped(hsm, mount_factory, tmp_path):
    """A key named with a quote, a backslash, a brace: the label value
    is escaped as the exposition format says, round-trips through the
    parser and `status --format=json`, and .status stays one line per
    field."""
    zk = "configZipSignerCertificateV1"
    cfg = tmp_path / "odd.xml"
    hsm.config(cfg)
    text = cfg.read_text()
    text = text.replace(f'<key name="{zk}">', f'<key name="{ODD_XML}">')
    text = text.replace(f'key="{zk}"', f'key="{ODD_XML}"')
    cfg.write_text(text)
    m = mount_factory(config=str(cfg))
    assert write(m.path("sign-out", "a.zip"), make_zip()) is None
    raw = open(m.path(".metrics")).read()
    assert 'key="zip \\"signer\\" \\\\ v1,a=b} é"' in raw
    fams = parse(raw)
    assert value(fams, "hsmfs_hsm_operations_total", key=ODD) >= 1
    assert value(fams, "hsmfs_descriptor_version", descriptor="ConfigZipSigner",
                 key=ODD) == 1
    r = status(m.mnt, "--format=json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    ops = [s for f in doc["families"] if f["name"] == "hsmfs_hsm_operations_total"
           for s in f["samples"]]
    assert ODD in {s["labels"]["key"] for s in ops}
    status_text = open(m.path(".status")).read()
    for line in status_text.splitlines():
        assert ": " in line or not line, line


def series(fams):
    return {(s.name, tuple(sorted(s.labels.items())))
            for f in fams.values() for s in f.samples}


MONOTONIC = ["hsmfs_signout_signed_total", "hsmfs_history_records_total",
             "hsmfs_log_messages_total"]


def test_concurrent_readers_during_signing_load(mount):
    """8 threads read .metrics (and .status) over and over while 4 others
    sign zips, append history and decrypt fields: every read parses, the
    counters never go back between one reader's reads, and the load adds
    no series (the text does not grow with the work done)."""
    zk = "configZipSignerCertificateV1"
    fk = "encryptedFieldsCertificateV1"
    assert write(mount.path("fields", "pw"), b"s3cret") is None
    before = metrics(mount)
    zipdata = make_zip()
    errors = []

    def loader(i):
        for n in range(15):
            if write(mount.path("sign-out", f"l{i}-{n}.zip"), zipdata) is not None:
                errors.append(f"sign {i} {n}")
            if append(mount.path("history", f"o{i}"), b"x\n") is not None:
                errors.append(f"history {i} {n}")
            if read(mount.path("fields", "pw")) != (b"s3cret", None):
                errors.append(f"fields {i} {n}")

    def reader(i):
        last = {}
        for n in range(40):
            try:
                fams = metrics(mount)
                open(mount.path(".status")).read()
            except Exception as e:      # noqa: BLE001 (reported below)
                errors.append(f"reader {i}: {e!r}")
                return
            for name in MONOTONIC + ["hsmfs_hsm_operations_total"]:
                base = name[:-len("_total")]
                for s in fams[base].samples:
                    k = (s.name, tuple(sorted(s.labels.items())))
                    if s.value < last.get(k, 0):
                        errors.append(f"{k} went back: {last[k]} -> {s.value}")
                    last[k] = s.value

    threads = [threading.Thread(target=loader, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not any(t.is_alive() for t in threads)
    assert errors == [], errors[:10]
    after = metrics(mount)
    assert series(after) == series(before), series(after) ^ series(before)
    assert value(after, "hsmfs_signout_signed_total") == \
        value(before, "hsmfs_signout_signed_total") + 60
    assert value(after, "hsmfs_hsm_operations_total", key=zk) >= \
        value(before, "hsmfs_hsm_operations_total", key=zk) + 60
    assert value(after, "hsmfs_hsm_latency_seconds_count", key=fk) == \
        value(after, "hsmfs_hsm_operations_total", key=fk)


def test_textfile_collector_example_of_the_docs(mount, tmp_path):
    """docs/monitoring.md's ExecStart, as systemd runs it ($$ -> $): the
    .prom file parses; with no mount it goes (absent() alerts)."""
    doc = (SRC / "docs" / "monitoring.md").read_text()
    start = doc.index("ExecStart=/bin/sh -c '") + len("ExecStart=/bin/sh -c '")
    script = doc[start:doc.index("fi'\n", start) + 2].replace("\\\n", " ")
    script = script.replace("$$", "$").replace("hsmfs-tool ", f"{TOOL} ")
    d = tmp_path / "textfile"
    d.mkdir()
    script = script.replace("/var/lib/prometheus/node-exporter", str(d))

    def run_it(mnt):
        return subprocess.run(["/bin/sh", "-c", script.replace("/srv/hsmfs", mnt)],
                              capture_output=True, text=True, timeout=60)
    assert run_it(mount.mnt).returncode == 0
    fams = parse((d / "hsmfs.prom").read_text())
    assert value(fams, "hsmfs_info") == 1
    assert os.listdir(d) == ["hsmfs.prom"]
    p = run_it(str(tmp_path / "nomount"))
    assert p.returncode == 1 and os.listdir(d) == [], p.stderr


def test_store_path_not_utf8_and_long(mount_factory, tmp_path):
    """A store path in another encoding (a byte that is not UTF-8) and
    over 1 KiB long: .metrics stays UTF-8 (U+FFFD for the byte), and
    `status --format=json` carries the whole label value."""
    parts = ["caf\udce9"] + ["d" * 250] * 5      # b"caf\xe9" (Latin-1)
    store = os.path.join(str(tmp_path), *parts, "store")
    os.makedirs(os.path.dirname(store))
    # fsname: /proc/self/mounts, which the harness reads as UTF-8.
    m = mount_factory(store=store, opts="fsname=hsmfs")
    with open(m.path(".metrics"), "rb") as f:
        raw = f.read().decode("utf-8")           # strict: valid UTF-8
    shown = store.replace("\udce9", "\ufffd")
    [s] = parse(raw)["hsmfs_info"].samples
    assert s.labels["store"] == shown
    r = subprocess.run([TOOL, "status", m.mnt, "--format=json"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout.decode("utf-8"))
    [info] = [f for f in doc["families"] if f["name"] == "hsmfs_info"]
    assert info["samples"][0]["labels"]["store"] == shown
