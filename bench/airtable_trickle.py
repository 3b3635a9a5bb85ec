"""Airtable requests per message at ordinary traffic: what a plan's monthly API calls buy.

    .venv/bin/python bench/airtable_trickle.py [--seconds 60] [--rate 2] [--contacts 20] [--linger S]
                                               [--latency S] [--poisson]

Starts the Airtable emulator (real limits) and the installed daemon (Airtable only), creates the
tables with `chatledger airtable init`, then posts one-message webhook bodies at --rate per second
for --seconds (contacts taking turns), waits until Airtable holds every message, and counts the
requests the daemon sent to the base meanwhile (the emulator's count, so nothing is missed).
Goal (issue 13): at most 0.3 requests per message at 2 bodies/s with the defaults. --linger sets
[airtable] linger_s when the daemon knows it; without it the daemon's default is measured.
--latency adds that many seconds to every answer of the emulator (real Airtable upserts take 0.3-1 s);
--poisson spaces the bodies at random (exponential gaps of the same mean, seeded) instead of evenly.
"""

from __future__ import annotations

import argparse
import random
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
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each Airtable answer")
    parser.add_argument("--poisson", action="store_true", help="random (exponential) gaps between bodies")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="chatledger-trickle-bench-"))
    emulator = AirtableEmulator(work).start()
    daemon = None
    try:
        daemon, socket = airtable_daemon(
            work, emulator, f"linger_s = {args.linger}\n" if args.linger is not None else ""
        )
        if args.latency:
            emulator.faults(latency=args.latency)
        before = emulator.stats()
        count = int(args.seconds * args.rate)
        rng = random.Random(13)
        at = [0.0]
        for _ in range(count - 1):
            at.append(at[-1] + (rng.expovariate(args.rate) if args.poisson else 1 / args.rate))
        events = [
            incoming(f"wamid.trickle.{i}", contact=f"c{i % args.contacts}", phone=f"55119{i % args.contacts:08d}")
            for i in range(count)
        ]
        started = time.perf_counter()
        for i, event in enumerate(events):
            delay = started + at[i] - time.perf_counter()
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
        print(
            f"{count} messages from {args.contacts} contacts, one per body, {args.rate:g} bodies/s"
            f"{' (Poisson)' if args.poisson else ''} for {sent:.0f} s, Airtable answering in +{args.latency:g} s;"
            f" all in Airtable {drained - sent:.1f} s after the last"
        )
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
