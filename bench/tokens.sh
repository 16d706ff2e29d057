#!/bin/sh
# Latency per HSM operation on each PKCS#11 implementation the tests know
# (tests/tokens/: softhsm in-process, remote = SoftHSM behind p11-kit
# server over a unix socket, tpm2 = tpm2-pkcs11 on swtpm + tpm2-abrmd):
# RSA-2048 key generation, sign (CKM_SHA256_RSA_PKCS) and OAEP-SHA-384
# unwrap (native where the token has it, else the raw-RSA fallback)
# through hsm/ (hsmprobe), 1 and 2 threads. Prints ms per operation.
#   usage: bench/tokens.sh [BUILD_DIR] [SECONDS] [TOKEN...]
set -eu
cd "$(dirname "$0")/.."
BUILD=$(realpath "${1:-build}")
SECS=${2:-3}
[ $# -gt 0 ] && shift
[ $# -gt 0 ] && shift
KINDS=${*:-softhsm remote tpm2}
[ -x "$BUILD/tests/hsmprobe" ] || { echo "build first: ninja -C $BUILD" >&2; exit 2; }
T=$(mktemp -d /tmp/hsmfs-bench-tokens.XXXXXX)
trap 'rm -rf "$T"' EXIT
PROBE="$BUILD/tests/hsmprobe" SECS="$SECS" T="$T" KINDS="$KINDS" \
PYTHONPATH="$PWD/tests" /usr/bin/python3 - <<'PY'
import os, re, subprocess, time
import tokens
probe, secs, root = os.environ["PROBE"], os.environ["SECS"], os.environ["T"]
print(f"{'token':8} {'operation':24} {'1 thread ms':>12} {'2 threads ms':>13}")
for kind in os.environ["KINDS"].split():
    tok = tokens.make(f"{root}/{kind}", kind)
    try:
        env = dict(os.environ, **tok.env, HSMFS_PIN=tok.pin)
        base = [probe, "--module", tok.module, "--token-label", tok.token_label,
                "--alias", "bench", "--no-cert"]
        t0 = time.monotonic()
        subprocess.run(base + ["--keygen", "2048", "info"], env=env, check=True,
                       capture_output=True)
        print(f"{kind:8} {'keygen RSA-2048':24} {(time.monotonic() - t0) * 1000:12.1f}")
        native = tok.native_oaep_sha384
        ops = [("sign SHA256-RSA-PKCS", ["bench-sign"]),
               ("unwrap OAEP-SHA384 " + ("native" if native else "raw"),
                (["--no-raw-rsa"] if native else []) +
                ["bench-unwrap", "--md", "sha384"])]
        for name, args in ops:
            ms = []
            for th in ("1", "2"):
                out = subprocess.run(base + args + ["--threads", th, "--seconds", secs],
                                     env=env, capture_output=True, text=True)
                m = re.findall(r"ops_per_s=([0-9.]+)", out.stdout + out.stderr)
                ms.append(f"{1000 / float(m[-1]):.2f}" if m and float(m[-1]) else
                          "fail")
            print(f"{kind:8} {name:24} {ms[0]:>12} {ms[1]:>13}")
    finally:
        tok.close()
PY
