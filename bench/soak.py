"""The long chaos soak: N events (default 20,000) through PostgreSQL stops, kill -9 and Airtable 503s.

    .venv/bin/python bench/soak.py [--events 20000] [--senders 8] [--contacts 200] [--rate 250]

Same driver as tests/acceptance/test_chaos.py (tests/soak.py): concurrent senders, resent duplicates,
malformed elements; PostgreSQL stopped and started three times, the daemon killed with -9 and
restarted three times, the Airtable emulator (real limits) answering 503 for 10 s twice, each at a
share of the acknowledged events. Prints what was verified and the figures for README.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine  # noqa: E402
from tests.soak import Soak  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--contacts", type=int, default=200)
    parser.add_argument("--rate", type=float, default=250.0, help="events/s over all senders (0: unpaced)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="chatledger-soak-"))
    print(machine())
    report = Soak(work, args.events, senders=args.senders, contacts=args.contacts, rate=args.rate).run()
    print(
        f"events: {args.events} sent by {args.senders} senders at up to {args.rate:.0f} events/s "
        f"in {report.posts} posts "
        f"({report.refused} refused or unreachable and retried), {report.duplicates_sent} duplicate elements, "
        f"{report.malformed_sent} malformed elements"
    )
    print("chaos: " + ", ".join(f"{a} at {n} acknowledged ({t} s)" for a, n, t in report.actions))
    print(f"all sent and acknowledged after {report.sent_s:.1f} s; both sinks drained after {report.drained_s:.1f} s")
    print(f"figures: {report.figures}")
    if report.problems:
        print("PROBLEMS:\n  " + "\n  ".join(report.problems))
        return 1
    print(
        f"verified: all {len(report.acknowledged)} acknowledged events exactly once in PostgreSQL and in "
        "Airtable, every conversation's message count right in both, no 429, journal check clean"
    )
    print(f"(work folder {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
