#!/usr/bin/python3
"""A minimal, fast SMTP sink for bench/mail.sh: accepts every message,
keeps nothing, counts messages. Speaks just enough SMTP for libcurl, curl
and smtplib (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT). The count is
written to --count-file on SIGTERM.
  usage: smtp_sink.py --port N [--count-file F]
  or:    smtp_sink.py --client N --port P   (send N messages over one
         connection with smtplib: measures the sink alone)"""
import argparse
import asyncio
import signal
import smtplib
import sys
import time

count = 0


class Sink(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t
        self.buf = b""
        self.data = False
        t.write(b"220 sink ESMTP\r\n")

    def data_received(self, d):
        global count
        self.buf += d
        while True:
            if self.data:
                i = self.buf.find(b"\r\n.\r\n")
                if self.buf.startswith(b".\r\n"):
                    i, skip = 0, 3
                elif i < 0:
                    # keep a tail that could start the terminator
                    return
                else:
                    skip = 5
                self.buf = self.buf[i + skip:]
                self.data = False
                count += 1
                self.t.write(b"250 2.0.0 queued\r\n")
                continue
            i = self.buf.find(b"\r\n")
            if i < 0:
                return
            line, self.buf = self.buf[:i], self.buf[i + 2:]
            cmd = line[:4].upper()
            if cmd == b"EHLO":
                self.t.write(b"250-sink\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n")
            elif cmd == b"DATA":
                self.data = True
                self.t.write(b"354 go ahead\r\n")
            elif cmd == b"QUIT":
                self.t.write(b"221 bye\r\n")
                self.t.close()
                return
            else:
                self.t.write(b"250 OK\r\n")


async def serve(port, count_file):
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(Sink, "127.0.0.1", port, reuse_address=True)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    loop.add_signal_handler(signal.SIGINT, stop.set_result, None)
    print("ready", flush=True)
    await stop
    srv.close()
    if count_file:
        with open(count_file, "w") as f:
            f.write(f"{count}\n")


def client(port, n):
    msg = ("From: a@example.org\r\nTo: b@example.org\r\nSubject: x\r\n\r\n"
           + "line of text for the sink benchmark\r\n" * 60)
    s = smtplib.SMTP("127.0.0.1", port)
    t0 = time.monotonic()
    for _ in range(n):
        s.sendmail("a@example.org", ["b@example.org"], msg)
    dt = time.monotonic() - t0
    s.quit()
    print(f"{n / dt:.0f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count-file")
    ap.add_argument("--client", type=int)
    a = ap.parse_args()
    if a.client:
        client(a.port, a.client)
    else:
        asyncio.run(serve(a.port, a.count_file))


if __name__ == "__main__":
    sys.exit(main())
