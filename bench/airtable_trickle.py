"""Airtable requests per message at ordinary traffic: what a plan's monthly API calls buy.

    .venv/bin/python bench/airtable_trickle.py [--seconds 60] [--rate 2] [--contacts 20] [--linger S]

Starts the Airtable emulator (real limits) and the installed daemon (Airtable only), creates the
tables with `chatledger airtable init`, then posts one-message webhook bodies at --rate per second
for --seconds (contacts taking turns), waits until Airtable holds every message, and counts the
requests the daemon sent to the base meanwhile (the emulator's count, so nothing is missed).
Goal (issue 13): at most 0.3 requests per message at 2 bodies/s with the defaults. --linger sets
[airtable] linger_s when the daemon knows it; without it the daemon's default is measured.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import airtable_daemon, machine, wait_drained  # noqa: E402
from tests.support import AirtableEmulator, incoming, post  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=2.0, help="webhook bodies per second, one message each")
    parser.add_argument("--contacts", type=int, default=20)
    parser.add_argument("--linger", type=float, default=None, help="[airtable] linger_s (default: the daemon's)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="chatledger-trickle-bench-"))
    emulator = AirtableEmulator(work).start()
    daemon = None
    try:
        daemon, socket = airtable_daemon(work, emulator, f"linger_s = {args.linger}\n" if args.linger is not None else "")
        before = emulator.stats()
        count = int(args.seconds * args.rate)
        events = [incoming(f"wamid.trickle.{i}", contact=f"c{i % args.contacts}",
                           phone=f"55119{i % args.contacts:08d}") for i in range(count)]
        started = time.perf_counter()
        for i, event in enumerate(events):
            delay = started + i / args.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            status, _ = post(daemon.url, [event])
            assert status == 200
        sent = time.perf_counter() - started
        wait_drained(daemon, socket, "airtable", count, poll=0.2)
        drained = time.perf_counter() - started
        after = emulator.stats()
        assert daemon.stop() == 0
        daemon = None
        interactions = emulator.records("Interactions")
        assert Counter(r["MessageId"] for r in interactions) == Counter(e["info"]["message"]["id"] for e in events)
        assert sum(r["MessageCount"] for r in emulator.records("Conversations")) == count
        requests = after["requests"] - before["requests"]
        rate_limited = after["rate_limited"] - before["rate_limited"]
        print(f"machine: {machine()}")
        print(f"{count} messages from {args.contacts} contacts, one per body, {args.rate:g} bodies/s for {sent:.0f} s;"
              f" all in Airtable {drained - sent:.1f} s after the last")
        print(f"{requests} requests to the base = {requests / count:.2f} per message, {rate_limited} x 429")
        print(f"goal: <= 0.3 requests per message -> {'met' if requests / count <= 0.3 else 'NOT met'}")
    finally:
        if daemon is not None and daemon.process.poll() is None:
            daemon.kill()
        emulator.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
