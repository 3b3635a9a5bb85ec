"""`recover --all` and `forget --phone` against Airtable's real limits: records/s, requests, 429s.

    .venv/bin/python bench/recover.py [--events 5000] [--contacts 50]

Fills an emulated base (5 requests/s per base, 30 s lockout; filled with the limit lifted, which
is not timed) and a throwaway PostgreSQL cluster with the same N message events, empties
PostgreSQL's interactions, then times `Recovery(--all)` at 5 requests/s and a budget that starts
empty, as a new process does. Then times forgetting one contact's phone (N / contacts messages).
The ceiling is 500 records/s (5 requests of 100 records).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine  # noqa: E402
from daemon.events import normalize  # noqa: E402
from daemon.forget import forget_phone  # noqa: E402
from daemon.journal import Journal  # noqa: E402
from daemon.ratelimit import RequestBudget  # noqa: E402
from daemon.recover import Recovery, Selection  # noqa: E402
from daemon.sinks.airtable import AirtableClient, AirtableSink, init_base  # noqa: E402
from daemon.sinks.postgres import PostgresSink  # noqa: E402
from daemon.sinks.postgres_rows import PostgresRows  # noqa: E402
from daemon.testing.airtable import EmulatorThread  # noqa: E402
from daemon.testing.postgres import PgCluster  # noqa: E402
from tests.support import incoming  # noqa: E402

TOKEN = "patBENCH0000000001.0123456789abcdef"
BASE = "appBENCH000000001"
NAMES = {"conversations": "Conversations", "interactions": "Interactions", "escalations": "Escalations"}


async def run(args: argparse.Namespace, emulator: EmulatorThread, dsn: str, work: Path) -> None:
    journal = await Journal.open(work / "journal.sqlite", ["postgres", "airtable"])
    payloads = [
        incoming(
            f"wamid.{i}", contact=f"c{i % args.contacts}", phone=f"55119{i % args.contacts:08d}", text=f"message {i}"
        )
        for i in range(args.events)
    ]
    await journal.append([normalize(p, datetime.now(UTC)) for p in payloads])
    events = await journal.pending("postgres", 0, args.events + 1)
    fast = AirtableClient(TOKEN, BASE, emulator.url, RequestBudget(1000))
    await init_base(fast, NAMES)
    emulator.run(setattr, emulator.emulator, "rate", 1000)
    filler = AirtableSink(fast, NAMES, journal.conversations)
    postgres = PostgresSink(dsn, "chatledger")
    for start in range(0, len(events), 500):
        await filler.deliver(events[start : start + 500])
        await postgres.deliver(events[start : start + 500])
    await postgres.close()
    emulator.run(setattr, emulator.emulator, "rate", 5)
    async with PostgresRows.open(dsn, "chatledger") as pg:
        await pg._conn.execute("DELETE FROM chatledger.interactions")
    before = emulator.run(emulator.emulator.stats)[BASE]

    client = AirtableClient(TOKEN, BASE, emulator.url, RequestBudget(5, start_empty=True))
    started = time.monotonic()
    async with PostgresRows.open(dsn, "chatledger") as pg:
        report = await Recovery(client, NAMES, pg).run(Selection(everything=True))
    elapsed = time.monotonic() - started
    after = emulator.run(emulator.emulator.stats)[BASE]
    read = sum(t.read for t in report.tallies.values())
    requests = after["requests"] - before["requests"]
    print(
        f"recover --all: {read} records read ({report.tallies['interactions'].inserted} interactions "
        f"inserted) in {elapsed:.1f} s = {read / elapsed:.0f} records/s, {requests} requests "
        f"= {requests / elapsed:.2f} requests/s, {after['rate_limited'] - before['rate_limited']} x 429"
    )

    phone = f"55119{1:08d}"
    started = time.monotonic()
    result = await forget_phone(
        phone, journal, postgres=partial(PostgresRows.open, dsn, "chatledger"), airtable=(client, NAMES)
    )
    elapsed = time.monotonic() - started
    final = emulator.run(emulator.emulator.stats)[BASE]
    print(
        f"forget --phone ({result.stores['airtable']['interactions']} interactions in Airtable): "
        f"{elapsed:.1f} s, {final['requests'] - after['requests']} requests, "
        f"{final['rate_limited'] - after['rate_limited']} x 429, complete={result.complete}"
    )
    client.close()
    fast.close()
    await journal.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--contacts", type=int, default=50)
    args = parser.parse_args()
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="chatledger-recover-bench-"))
    emulator = EmulatorThread.serving(TOKEN, BASE, rate=5, lockout=30.0)
    cluster = PgCluster.create()
    cluster.start()
    try:
        print(machine())
        asyncio.run(run(args, emulator, cluster.dsn(), work))
    finally:
        cluster.destroy()
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
