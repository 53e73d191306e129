#!/usr/bin/env python3
"""A redis client that keeps writing through a migration and times the service gap.

    service-gap.py --a HOST:PORT --b HOST:PORT [--after-b N] [--deadline S] [--out FILE]

It SETs unique keys (k:<n> = v:<n>:<salt>) one at a time on A and records every
acknowledged (+OK) write. When A stops answering it keeps the unanswered request
outstanding on its one connection to A (it never opens a second one: a frozen
listener would queue it, and the dump would have to carry it) and tries B. The
first +OK from B ends the gap: gap = first reply on B - last reply on A, on the
monotonic clock. It then writes N more keys on B, and finally GETs every key
acknowledged on either host from B and counts the ones missing or wrong.

Prints "ready" once it has 1000 acknowledged writes on A (the caller waits for
that line, not for a time), and one JSON line at the end. Exit 0 when B holds
every acknowledged key and took the N writes, 1 otherwise, 2 on a usage error.
Standard library only: it speaks RESP itself.
"""
import argparse
import json
import os
import select
import socket
import sys
import time


def command(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    """One RESP connection; replies are parsed from a buffer, never blocking past a deadline."""

    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _line(self, start):
        end = self.buf.find(b"\r\n", start)
        return (None, start) if end < 0 else (self.buf[start:end], end + 2)

    def _parse(self, pos):
        """(reply, next position) or (None, pos) when the buffer holds no whole reply yet."""
        line, nxt = self._line(pos)
        if line is None:
            return None, pos
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b"-", b":"):
            return (kind + rest), nxt
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return b"$nil", nxt
            if len(self.buf) < nxt + n + 2:
                return None, pos
            return b"$" + self.buf[nxt:nxt + n], nxt + n + 2
        raise ValueError("unexpected reply %r" % line[:40])

    def reply(self, timeout):
        """The next reply, None on timeout; raises ConnectionError when the peer is gone."""
        deadline = time.monotonic() + timeout
        while True:
            r, pos = self._parse(0)
            if r is not None:
                self.buf = self.buf[pos:]
                return r
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                return None
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("closed by the peer")
            self.buf += chunk

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def hostport(s):
    host, _, port = s.rpartition(":")
    return host, int(port)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--a", required=True, type=hostport)
    p.add_argument("--b", required=True, type=hostport)
    p.add_argument("--after-b", type=int, default=1000, help="writes on B before the check")
    p.add_argument("--deadline", type=float, default=600, help="give up after S seconds")
    p.add_argument("--out", help="also write the JSON summary here")
    o = p.parse_args()

    salt = os.urandom(4).hex()
    value = lambda n: "v:%d:%s" % (n, salt)
    acked = []          # keys acknowledged (on A or B), in order
    on_a = on_b = 0
    last_a = first_b = None
    unacked = []        # sent, never answered (A froze or went away)
    a = Conn(*o.a, timeout=5)
    b = None
    a_alive = True
    pending = None      # key sent on A, reply outstanding
    n = 0
    start = time.monotonic()
    announced = False

    # Phase 1: write on A until it stops answering and B answers.
    while b is None:
        if time.monotonic() - start > o.deadline:
            print(json.dumps({"error": "no reply from B within %.0f s" % o.deadline, "acked_on_a": on_a}))
            return 1
        if a_alive:
            try:
                if pending is None:
                    a.send(command("SET", "k:%d" % n, value(n)))
                    pending = n
                    n += 1
                r = a.reply(0.05)
                if r is not None:
                    if r != b"+OK":
                        raise ValueError("SET on A answered %r" % r)
                    acked.append(pending)
                    on_a += 1
                    last_a = time.monotonic()
                    pending = None
                    if on_a == 1000 and not announced:
                        print("ready", flush=True)
                        announced = True
                    continue
            except (ConnectionError, OSError):
                a_alive = False
                a.close()
        # A did not answer within 50 ms (or is gone): try B once.
        try:
            b = Conn(*o.b, timeout=0.2)
        except OSError:
            b = None
            if not a_alive:
                time.sleep(0.005)  # A is gone: only B can answer; poll its listener
    if pending is not None:
        unacked.append(pending)

    # Phase 2: the first reply on B ends the gap; then N more writes.
    b.sock.settimeout(None)
    for i in range(o.after_b):
        b.send(command("SET", "k:%d" % n, value(n)))
        r = b.reply(30)
        if r != b"+OK":
            print(json.dumps({"error": "SET on B answered %r" % r, "acked_on_a": on_a, "acked_on_b": on_b}))
            return 1
        if first_b is None:
            first_b = time.monotonic()
        acked.append(n)
        on_b += 1
        n += 1

    # Phase 3: B holds every acknowledged key with its value.
    missing = wrong = 0
    examples = []
    for i in range(0, len(acked), 1000):
        batch = acked[i:i + 1000]
        b.send(b"".join(command("GET", "k:%d" % k) for k in batch))
        for k in batch:
            r = b.reply(30)
            if r is None:
                raise TimeoutError("GET on B timed out")
            if r == b"$nil":
                missing += 1
            elif r != b"$" + value(k).encode():
                wrong += 1
            else:
                continue
            if len(examples) < 5:
                examples.append("k:%d -> %r" % (k, r[:40]))
    gap_ms = (first_b - last_a) * 1000 if last_a is not None else None
    summary = {"gap_ms": gap_ms, "acked_on_a": on_a, "acked_on_b": on_b, "unacked": len(unacked),
               "checked": len(acked), "missing": missing, "wrong": wrong, "examples": examples,
               "a_closed": not a_alive}
    line = json.dumps(summary)
    print(line, flush=True)
    if o.out:
        with open(o.out, "w") as f:
            f.write(line + "\n")
    return 0 if missing == 0 and wrong == 0 and on_b == o.after_b and on_a >= 1000 else 1


if __name__ == "__main__":
    sys.exit(main())
