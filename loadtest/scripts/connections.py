#!/usr/bin/env python3
"""Holds many keep-alive HTTP/1.1 connections open against the API and reports
its resident memory.

    python3 loadtest/scripts/connections.py --connections 10000 --url http://127.0.0.1:8080

Opens the connections (each sends GET /health and reads the answer), holds
them for --hold seconds, sends a second request on every one of them (so each
stayed usable, not merely open), and prints the API's RSS (found by --pid or
by the process name `api`) before, while holding and after. Needs a file
descriptor limit above the number of connections (`ulimit -n`).
"""
import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
from urllib.parse import urlparse


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def ask(reader, writer, host):
    writer.write(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--hold", type=float, default=10.0)
    p.add_argument("--pid", type=int)
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.connections + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    pid = a.pid or int(subprocess.check_output(["pgrep", "-xo", "api"]).split()[0])
    u = urlparse(a.url)
    host, port = u.hostname, u.port or 80
    before = rss_kb(pid)
    conns, errors = [], 0
    limit = asyncio.Semaphore(256)

    async def open_one():
        nonlocal errors
        async with limit:
            try:
                r, w = await asyncio.open_connection(host, port)
                if await ask(r, w, host) != 200:
                    errors += 1
                conns.append((r, w))
            except Exception:
                errors += 1

    t = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(a.connections)))
    opened = time.monotonic() - t
    await asyncio.sleep(a.hold)
    holding = rss_kb(pid)

    async def again(r, w):
        nonlocal errors
        async with limit:
            try:
                if await ask(r, w, host) != 200:
                    errors += 1
            except Exception:
                errors += 1

    await asyncio.gather(*(again(r, w) for r, w in conns))
    after = rss_kb(pid)
    for _, w in conns:
        w.close()
    print(f"connections {len(conns)} open of {a.connections} in {opened:.1f} s, held {a.hold:.0f} s")
    print(f"errors      {errors} (first or second request on a connection)")
    print(f"api rss     before {before / 1024:.1f} MB, holding {holding / 1024:.1f} MB, "
          f"after a second request on each {after / 1024:.1f} MB")
    return 0 if errors == 0 and len(conns) == a.connections else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
