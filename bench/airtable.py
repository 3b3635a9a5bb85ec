"""Airtable delivery throughput under the real limits: records/s, requests/s and 429s.

    .venv/bin/python bench/airtable.py [--events 1000] [--contacts 10]

Starts the Airtable emulator (5 requests/s per base, 30 s lockout) and the installed daemon
(Airtable only), creates the tables with `chatledger airtable init`, waits for the daemon to report
Airtable up (its start-up check done), posts N message events as SendPulse webhooks, and times from
the first post until the daemon reports nothing pending for Airtable. Goal: >= 47.5 interaction records/s
(95 % of the 50/s ceiling: 5 requests of 10), 0 x 429.
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
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--contacts", type=int, default=10)
    parser.add_argument("--per-request", type=int, default=50, help="events per webhook request")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="chatledger-airtable-bench-"))
    emulator = AirtableEmulator(work).start()
    daemon = None
    try:
        before = emulator.stats()
        daemon, socket = airtable_daemon(work, emulator)
        events = [
            incoming(f"wamid.bench.{i}", contact=f"c{i % args.contacts}", phone=f"55119{i % args.contacts:08d}")
            for i in range(args.events)
        ]
        started = time.perf_counter()
        for i in range(0, len(events), args.per_request):
            status, _ = post(daemon.url, events[i : i + args.per_request])
            assert status == 200
        intake = time.perf_counter() - started
        wait_drained(daemon, socket, "airtable", args.events, poll=0.05)
        elapsed = time.perf_counter() - started
        after = emulator.stats()
        assert daemon.stop() == 0
        daemon = None
        interactions = emulator.records("Interactions")
        conversations = emulator.records("Conversations")
        assert Counter(r["MessageId"] for r in interactions) == Counter(e["info"]["message"]["id"] for e in events)
        assert sum(r["MessageCount"] for r in conversations) == args.events
        requests = after["requests"] - before["requests"]
        rate_limited = after["rate_limited"] - before["rate_limited"]
        print(f"machine: {machine()}")
        print(f"{args.events} message events from {args.contacts} contacts, posted in {intake:.2f} s")
        print(
            f"delivered to Airtable in {elapsed:.1f} s: {args.events / elapsed:.1f} interaction records/s, "
            f"{requests} requests = {requests / elapsed:.2f} requests/s, {rate_limited} x 429"
        )
        print(
            f"goal: >= 47.5 records/s and 0 x 429 -> "
            f"{'met' if args.events / elapsed >= 47.5 and not rate_limited else 'NOT met'}"
        )
    finally:
        if daemon is not None and daemon.process.poll() is None:
            daemon.kill()
        emulator.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
