"""Reconciliation at start: how soon a backlog SendPulse never posted reaches PostgreSQL, and what it costs.

    .venv/bin/python bench/reconcile.py [--rounds 3] [--messages 1000] [--contacts 100] [--idle-contacts 0]
        [--requests-per-second 5] [--latency 0]

Each round: a SendPulse emulator (the real 10 requests/s, 429 beyond) whose history holds N messages
from C contacts spread over the last --down-minutes, none of them posted; a journal whose newest event
is older than all of them (the last webhook before the daemon went down), so the start window covers
them; a durable throwaway PostgreSQL. `chatledger run` is started and timed from READY until every
backlog message is in PostgreSQL. The emulator counts the requests of that start run; then one
periodic run (`reconcile_interval_s` = --interval) over the same contacts, nothing new, is counted too.
Both counts are checked against the formula README gives. Medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
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

from common import machine  # noqa: E402
from daemon.events import normalize  # noqa: E402
from daemon.journal import Journal  # noqa: E402
from daemon.reconciler import MARGIN  # noqa: E402
from daemon.sendpulse import PAGE_SIZE, parse_time  # noqa: E402
from daemon.status import request_status  # noqa: E402
from daemon.testing.postgres import PgCluster  # noqa: E402
from tests.support import Daemon, SendPulseEmulator, incoming, write_config  # noqa: E402

ADD_CHUNK = 500  # messages per control request to the emulator
POLL_S = 0.1


def run_requests(times: dict[str, list[datetime]], idle: int, since: datetime, token: bool) -> int:
    """What README says a run costs: a token (when none is held), the bots, every chat page of the bot
    (the API's chat order is undocumented, so all are read), and for each contact active since `since`
    one page per 100 of its messages in the window, the page that reaches past it included."""
    chats = len(times) + idle
    active = [sum(1 for t in stamps if t >= since) for stamps in times.values() if max(stamps) >= since]
    return int(token) + 1 + (chats // PAGE_SIZE + 1) + sum(n // PAGE_SIZE + 1 for n in active)


def fill_sendpulse(
    emulator: SendPulseEmulator, args: argparse.Namespace, now: datetime
) -> tuple[dict[str, list[datetime]], list[str]]:
    """The backlog in the emulator's history (no webhook): each contact's message times, the message ids."""
    down = timedelta(minutes=args.down_minutes)
    long_ago = now - down - timedelta(days=2)
    contacts = [
        emulator.add_contact(f"5511{c:09d}", f"Cliente {c}", created_at=long_ago.isoformat())["id"]
        for c in range(args.contacts)
    ]
    for c in range(args.idle_contacts):  # chats no one wrote to lately: listed, never read
        emulator.add_contact(f"5521{c:09d}", f"Antigo {c}", created_at=long_ago.isoformat())
    times: dict[str, list[datetime]] = {contact: [] for contact in contacts}
    specs = []
    for i in range(args.messages):
        at = now - down + down * (i + 0.5) / args.messages
        contact = contacts[i % len(contacts)]
        specs.append(
            {
                "contact_id": contact,
                "direction": "in" if i % 3 else "out",
                "text": f"backlog {i}",
                "created_at": at.isoformat(),
            }
        )
    ids = []
    for start in range(0, len(specs), ADD_CHUNK):
        for message in emulator.add_messages(*specs[start : start + ADD_CHUNK]):
            ids.append(message["id"])
            times[message["contact_id"]].append(parse_time(message["created_at"]))
    return times, ids


async def seed_journal(path: Path, received_at: datetime) -> None:
    """The last webhook journaled before the daemon went down."""
    journal = await Journal.open(path, ["postgres"])
    try:
        await journal.append([normalize(incoming("wamid.bench.last-before-down", contact="seed"), received_at)])
    finally:
        await journal.close()


async def watch(
    daemon: Daemon, socket: Path, emulator: SendPulseEmulator, dsn: str, schema: str, ids: list[str], ready: float
) -> dict:
    """Poll until the backlog is in PostgreSQL and the periodic run is done; when each thing happened."""
    seen: dict = {}
    conn = await asyncpg.connect(dsn)
    try:
        while True:
            if daemon.process.poll() is not None:
                raise RuntimeError(f"daemon exited:\n{daemon.log()[-2000:]}")
            now = time.perf_counter()
            if "in_postgres_s" not in seen:
                try:
                    held = await conn.fetchval(
                        f"SELECT count(*) FROM {schema}.interactions WHERE message_id = ANY($1::text[])", ids
                    )
                except asyncpg.UndefinedTableError:
                    held = 0
                if held == len(ids):
                    seen["in_postgres_s"] = now - ready
            source = (await request_status(socket))["sources"]["sendpulse"]
            if source["runs"] >= 1 and not source["running"] and "start" not in seen:
                if source["runs"] != 1:
                    raise RuntimeError("the periodic run began before the start run was counted: raise --interval")
                seen["start_run_s"] = now - ready
                seen["start"] = {**source, "emulator": await asyncio.to_thread(emulator.stats)}
            if source["runs"] >= 2 and not source["running"]:
                seen["periodic"] = {**source, "emulator": await asyncio.to_thread(emulator.stats)}
            if "in_postgres_s" in seen and "periodic" in seen:
                total = await conn.fetchval(f"SELECT count(*) FROM {schema}.interactions")
                counted = await conn.fetchval(f"SELECT sum(message_count) FROM {schema}.conversations")
                seen["interactions"], seen["message_count"] = total, counted
                return seen
            await asyncio.sleep(POLL_S)
    finally:
        await conn.close()


def one_round(args: argparse.Namespace, cluster: PgCluster, number: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="chatledger-reconcile-bench-"))
    emulator = SendPulseEmulator(work).start()
    daemon = None
    try:
        now = datetime.now(UTC)
        times, ids = fill_sendpulse(emulator, args, now)
        if args.latency:
            emulator.faults(latency=args.latency)
        last_webhook = now - timedelta(minutes=args.down_minutes, seconds=30)
        asyncio.run(seed_journal(work / "state" / "journal.sqlite", last_webhook))
        schema = f"bench_round_{number}"
        config = write_config(
            work,
            extra=f'[postgres]\ndsn = "{cluster.dsn()}"\nschema = "{schema}"\n'
            + emulator.config()
            + f"reconcile_interval_s = {args.interval}\n"
            f"requests_per_second = {args.requests_per_second}\n",
        )
        daemon = Daemon(config).start()
        ready = time.perf_counter()
        seen = asyncio.run(watch(daemon, work / "run" / "status.sock", emulator, cluster.dsn(), schema, ids, ready))
        assert daemon.stop(timeout=60) == 0
        daemon = None
    finally:
        if daemon is not None and daemon.process.poll() is None:
            daemon.kill()
        emulator.stop()
        shutil.rmtree(work, ignore_errors=True)

    start, periodic = seen["start"], seen["periodic"]
    expected = len(ids) + 1  # and the event journaled before the outage
    assert (seen["interactions"], seen["message_count"]) == (expected, expected), seen
    assert (start["added"], start["seen"], start["failed_runs"]) == (len(ids), len(ids), 0), start
    assert (periodic["added"], periodic["failed_runs"]) == (0, 0), periodic
    start_since = parse_time(start["window"]["since"])
    assert abs(start_since - (last_webhook - MARGIN)) < timedelta(seconds=1), (start_since, last_webhook)
    start_requests = start["emulator"]["requests"]
    periodic_requests = periodic["emulator"]["requests"] - start_requests
    return {
        "in_postgres_s": seen["in_postgres_s"],
        "start_run_s": seen["start_run_s"],
        "start_requests": start_requests,
        "start_predicted": run_requests(times, args.idle_contacts, start_since, token=True),
        "start_daemon_requests": start["requests_total"],
        "periodic_requests": periodic_requests,
        "periodic_predicted": run_requests(
            times, args.idle_contacts, parse_time(periodic["window"]["since"]), token=False
        ),
        "periodic_daemon_requests": periodic["requests_total"] - start["requests_total"],
        "periodic_seen": periodic["seen"],
        "periodic_chats": sum(1 for stamps in times.values() if max(stamps) >= parse_time(periodic["window"]["since"])),
        "rate_limited": periodic["emulator"]["rate_limited"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh daemon, journal and emulator each; medians")
    parser.add_argument("--messages", type=int, default=1000, help="the backlog SendPulse holds and never posted")
    parser.add_argument("--contacts", type=int, default=100, help="who wrote them (each active in the window)")
    parser.add_argument("--idle-contacts", type=int, default=0, help="more chats of the bot, inactive for days")
    parser.add_argument("--down-minutes", type=float, default=30.0, help="the backlog's span (the outage)")
    parser.add_argument("--requests-per-second", type=int, default=5, help="[sendpulse] requests_per_second")
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="seconds SendPulse takes to answer each request (the emulator answers at once)",
    )
    parser.add_argument(
        "--interval", type=float, default=5.0, help="reconcile_interval_s: the periodic run counted after the start run"
    )
    args = parser.parse_args()
    if args.messages < args.contacts:
        parser.error("--messages must be at least --contacts (every contact wrote)")
    logger.remove()  # the journal logs in this process too; only the figures matter here

    cluster = PgCluster.create(durable=True)
    cluster.start()
    rounds = []
    try:
        print(f"machine: {machine()}")
        for number in range(args.rounds):
            result = one_round(args, cluster, number)
            rounds.append(result)
            print(
                f"round {number + 1}: in PostgreSQL {result['in_postgres_s']:.1f} s after READY (start run done "
                f"{result['start_run_s']:.1f} s); start run {result['start_requests']} requests "
                f"(formula {result['start_predicted']}, daemon {result['start_daemon_requests']}); periodic run, "
                f"{result['periodic_chats']} chats active, {result['periodic_seen']} messages seen, 0 new: "
                f"{result['periodic_requests']} requests (formula {result['periodic_predicted']}, daemon "
                f"{result['periodic_daemon_requests']}); {result['rate_limited']} x 429",
                flush=True,
            )
    finally:
        cluster.destroy()

    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    spread = f"{min(r['in_postgres_s'] for r in rounds):.1f}-{max(r['in_postgres_s'] for r in rounds):.1f}"
    formula_holds = all(
        r["start_requests"] == r["start_predicted"] and r["periodic_requests"] == r["periodic_predicted"]
        for r in rounds
    )
    print(
        f"backlog: {args.messages} messages from {args.contacts} contacts over {args.down_minutes:g} min"
        f"{f', {args.idle_contacts} idle chats' if args.idle_contacts else ''}; "
        f"requests_per_second = {args.requests_per_second}"
        f"{f', SendPulse answering in {args.latency:g} s' if args.latency else ''}; {args.rounds} rounds, medians"
    )
    limited = sum(r["rate_limited"] for r in rounds)
    verdict = "the formula holds in every round" if formula_holds else "the formula MISSED a count (see the rounds)"
    print(
        f"figure: {args.messages:,} messages from {args.contacts} contacts in PostgreSQL "
        f"{median['in_postgres_s']:.1f} s after READY ({spread}; goal <= 90 s), "
        f"start run {median['start_requests']:.0f} requests, periodic run with {median['periodic_chats']:.0f} "
        f"chats active and nothing new {median['periodic_requests']:.0f} requests, {limited} x 429; {verdict}"
    )
    return 0 if formula_holds else 1


if __name__ == "__main__":
    sys.exit(main())
