"""PostgreSQL catch-up: how fast the daemon drains a journaled backlog, and how much memory it takes.

    .venv/bin/python bench/catchup.py [--events 100000] [--contacts 5000]

Journals N message events (PostgreSQL down: nothing delivered), starts a durable throwaway PostgreSQL
cluster (fsync on), starts `chatledger run` and times it from ready to "postgres pending 0", reading
the daemon's peak RSS (VmHWM) at the end. In the same run, writes the equivalent rows (events,
interactions, conversation upserts; same batch size) into a fresh schema with plain asyncpg
executemany, and prints the ratio chatledger / bare (goal >= 0.25; peak RSS <= 150 MB at 1M events).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from loguru import logger

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine, wait_drained  # noqa: E402
from daemon.events import normalize  # noqa: E402
from daemon.journal import Journal  # noqa: E402
from daemon.records import map_events, parse_time  # noqa: E402
from daemon.sinks.postgres import BATCH_SIZE, jsonb_text, migrate, quote_ident  # noqa: E402
from daemon.testing.postgres import PgCluster  # noqa: E402
from tests.support import Daemon, write_config  # noqa: E402

T0 = datetime(2026, 11, 1, tzinfo=UTC)
APPEND_CHUNK = 5000


def payload(i: int, contacts: int) -> dict:
    contact = i % contacts
    inbound = i % 3 != 2
    text = f"message {i}: quero saber o status do meu pedido número {i * 7}"
    return {
        "title": "incoming_message" if inbound else "outgoing_message",
        "service": "whatsapp",
        "bot": {"id": "bench-bot"},
        "date": int((T0 + timedelta(seconds=i)).timestamp()),
        "contact": {"id": f"contact-{contact}", "phone": f"5511{contact:09d}", "name": f"Cliente {contact}"},
        "info": {
            "message": {
                "id": f"wamid.bench.{i}",
                "channel_data": {"message": {"type": "text", "text": {"body": text} if inbound else text}},
            }
        },
    }


async def fill_journal(path: Path, events: int, contacts: int) -> None:
    journal = await Journal.open(path, ["postgres"])
    try:
        for start in range(0, events, APPEND_CHUNK):
            batch = [normalize(payload(i, contacts), T0) for i in range(start, min(events, start + APPEND_CHUNK))]
            await journal.append(batch)
    finally:
        await journal.close()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def build_rows(journal_path: Path) -> list[tuple[list, list, list]]:
    """The rows the daemon will write, batch by batch (read while everything is still pending)."""
    journal = await Journal.open(journal_path, ["postgres"])
    batches = []
    try:
        after = 0
        while True:
            page = await journal.pending("postgres", after, BATCH_SIZE)
            if not page:
                return batches
            after = page[-1].id
            records = map_events(page)
            batches.append(
                (
                    [
                        (
                            e.dedup_key,
                            e.title,
                            e.service,
                            e.bot_id,
                            e.contact_id,
                            parse_time(e.received_at),
                            jsonb_text(e.raw),
                        )
                        for e in page
                    ],
                    [
                        (c.conversation_id, c.customer_phone, c.customer_name, c.first_at, c.last_at)
                        for c in records.conversations
                    ],
                    [
                        (
                            i.interaction_id,
                            i.conversation_id,
                            i.message_id,
                            i.direction,
                            i.content,
                            i.status,
                            i.customer_phone,
                            i.occurred_at,
                        )
                        for i in records.interactions
                    ],
                )
            )
    finally:
        await journal.close()


async def bare(dsn: str, batches: list[tuple[list, list, list]], events: int) -> float:
    """Plain asyncpg executemany of the same rows, each batch one transaction; only this is timed."""
    schema = "bare"
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, schema)
        s = quote_ident(schema)
        started = time.perf_counter()
        for event_rows, conversation_rows, interaction_rows in batches:
            async with conn.transaction():
                await conn.executemany(
                    f"INSERT INTO {s}.events (event_id, title, service, bot_id, contact_id, received_at, payload) "
                    f"VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) ON CONFLICT DO NOTHING",
                    event_rows,
                )
                await conn.executemany(
                    f"INSERT INTO {s}.conversations (conversation_id, customer_phone, customer_name, started_at, "
                    f"last_activity) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (conversation_id) DO UPDATE SET "
                    f"last_activity = greatest({s}.conversations.last_activity, excluded.last_activity)",
                    conversation_rows,
                )
                await conn.executemany(
                    f"INSERT INTO {s}.interactions (interaction_id, conversation_id, message_id, direction, content, "
                    f"status, customer_phone, occurred_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                    f"ON CONFLICT DO NOTHING",
                    interaction_rows,
                )
        elapsed = time.perf_counter() - started
        assert await conn.fetchval(f"SELECT count(*) FROM {s}.events") == events
        return events / elapsed
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--contacts", type=int, default=5_000)
    parser.add_argument("--skip-bare", action="store_true", help="only the daemon (for the 1M memory run)")
    args = parser.parse_args()
    logger.remove()  # the journal and migrations log in this process too; only the figures matter here

    work = Path(tempfile.mkdtemp(prefix="chatledger-catchup-"))
    cluster = PgCluster.create(durable=True)
    daemon = None
    try:
        config = write_config(work, extra=f'[postgres]\ndsn = "{cluster.dsn()}"\n')
        journal_path = work / "state" / "journal.sqlite"
        started = time.perf_counter()
        asyncio.run(fill_journal(journal_path, args.events, args.contacts))
        print(f"machine: {machine()}")
        print(
            f"journaled {args.events} events ({args.contacts} conversations) in "
            f"{time.perf_counter() - started:.1f} s; journal {journal_path.stat().st_size / 2**20:.0f} MiB"
        )

        rows = None if args.skip_bare else asyncio.run(build_rows(journal_path))
        cluster.start()
        daemon = Daemon(config).start()
        started = time.perf_counter()
        wait_drained(daemon, work / "run" / "status.sock", "postgres", args.events, poll=0.5)
        elapsed = time.perf_counter() - started
        rss = peak_rss_mb(daemon.process.pid)
        assert daemon.stop(timeout=60) == 0
        daemon = None
        rate = args.events / elapsed
        print(
            f"chatledger drain: {elapsed:.1f} s = {rate:.0f} events/s, peak RSS {rss:.0f} MB "
            f"(goal <= 150 MB at 1M events)"
        )
        if not args.skip_bare:
            bare_rate = asyncio.run(bare(cluster.dsn(), rows, args.events))
            print(f"bare asyncpg executemany: {bare_rate:.0f} events/s")
            print(f"ratio chatledger / bare: {rate / bare_rate:.2f}  (goal >= 0.25)")
    finally:
        if daemon is not None and daemon.process.poll() is None:
            daemon.kill()
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
