"""The chaos soak shared by tests/acceptance/test_chaos.py (short) and bench/soak.py (long).

Concurrent senders post SendPulse batches (with resent duplicates and malformed elements) to the
installed daemon, retrying each batch until it is answered 200, as SendPulse does. Meanwhile, at
points set by progress (acknowledged events), never by the clock: PostgreSQL is stopped and started
three times, the daemon is killed with -9 and restarted three times, and the Airtable emulator
answers 503 for 10 s twice. Then the backlog drains and `verify()` says what does not hold.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from daemon.testing.postgres import PgCluster
from tests.support import AirtableEmulator, Daemon, cli, wait_for, write_config

ACTIONS = (
    "pg_stop",
    "pg_start",
    "kill",
    "airtable_503",
    "pg_stop",
    "kill",
    "pg_start",
    "airtable_503",
    "pg_stop",
    "pg_start",
    "kill",
)


def message(i: int, contacts: int) -> dict[str, Any]:
    contact = i % contacts
    title = "incoming_message" if i % 3 else "outgoing_message"
    body = {"text": {"body": f"message {i}"}} if title == "incoming_message" else {"text": f"reply {i}"}
    return {
        "title": title,
        "service": "whatsapp",
        "bot": {"id": "bot1"},
        "date": 1_790_000_000 + i,
        "contact": {"id": f"soak{contact}", "phone": f"+55 11 9{contact:08d}", "name": f"Contact {contact}"},
        "info": {"message": {"id": f"wamid.soak.{i}", "channel_data": {"message": {"type": "text", **body}}}},
    }


MALFORMED = (7, "text", None, {"title": ""}, {"no": "title"}, [1, 2])


@dataclass
class SoakReport:
    events: int
    acknowledged: set[str] = field(default_factory=set)
    posts: int = 0
    refused: int = 0  # answers other than 200, and connections refused (daemon down): retried
    duplicates_sent: int = 0
    malformed_sent: int = 0
    actions: list[tuple[str, int, float]] = field(default_factory=list)  # action, acknowledged then, at (s)
    sent_s: float = 0.0
    drained_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


class Soak:
    def __init__(
        self, work: Path, events: int, *, senders: int = 8, contacts: int = 40, rate: float = 250.0, seed: int = 7
    ):
        self.work = work
        self.events = events
        self.senders = senders
        self.rate = rate  # events/s over all senders (0: as fast as answered), so outages span deliveries
        self._next_at = 0.0
        self.contacts = contacts
        self.random = random.Random(seed)
        self.report = SoakReport(events)
        self._lock = threading.Lock()
        self._batches: list[list[Any]] = []
        self._next = 0
        self.daemon: Daemon | None = None

    # -- set-up ----------------------------------------------------------------------------------

    def _plan(self) -> None:
        """Batches of 1-10 messages; some carry a malformed element or an element sent before."""
        i = 0
        while i < self.events:
            size = min(self.random.randint(1, 10), self.events - i)
            batch: list[Any] = [message(j, self.contacts) for j in range(i, i + size)]
            if self.random.random() < 0.2:
                batch.insert(self.random.randrange(len(batch) + 1), self.random.choice(MALFORMED))
                self.report.malformed_sent += 1
            if i and self.random.random() < 0.2:
                batch.append(message(self.random.randrange(i), self.contacts))
                self.report.duplicates_sent += 1
            self._batches.append(batch)
            i += size

    def run(self) -> SoakReport:
        self._plan()
        cluster = PgCluster.create()
        cluster.start()
        emulator = AirtableEmulator(self.work).start()
        self.cluster, self.emulator = cluster, emulator
        try:
            self.config = write_config(
                self.work, extra=emulator.config() + f'[postgres]\ndsn = "{cluster.dsn()}"\n', level="WARNING"
            )
            assert cli(self.config, "airtable", "init").returncode == 0
            self.daemon = Daemon(self.config).start()
            started = time.monotonic()
            threads = [threading.Thread(target=self._sender, name=f"sender-{n}") for n in range(self.senders)]
            for thread in threads:
                thread.start()
            self._chaos(started)
            for thread in threads:
                thread.join()
            self.report.sent_s = time.monotonic() - started
            wait_for(self._drained, "both sinks drained", timeout=900)
            self.report.drained_s = time.monotonic() - started
            self._verify()
        finally:
            if self.daemon is not None and self.daemon.process.poll() is None:
                self.daemon.kill()
            emulator.stop()
            cluster.destroy()
        return self.report

    # -- traffic ---------------------------------------------------------------------------------

    def _take(self) -> list[Any] | None:
        with self._lock:
            if self._next >= len(self._batches):
                return None
            batch = self._batches[self._next]
            self._next += 1
            return batch

    def _pace(self, size: int) -> None:
        if not self.rate:
            return
        with self._lock:
            at = max(time.monotonic(), self._next_at)
            self._next_at = at + size / self.rate
        time.sleep(max(0.0, at - time.monotonic()))

    def _sender(self) -> None:
        while (batch := self._take()) is not None:
            self._pace(len(batch))
            while not self._post(batch):
                time.sleep(0.05)  # SendPulse retries too; the daemon may be restarting
            ids = {
                element["info"]["message"]["id"]
                for element in batch
                if isinstance(element, dict) and element.get("info")
            }
            with self._lock:
                self.report.acknowledged |= ids

    def _post(self, batch: list[Any]) -> bool:
        daemon = self.daemon
        request = urllib.request.Request(
            daemon.url, data=json.dumps(batch).encode(), headers={"Content-Type": "application/json"}
        )
        with self._lock:
            self.report.posts += 1
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            with self._lock:
                self.report.refused += 1
            return False

    # -- chaos -----------------------------------------------------------------------------------

    def _acked(self) -> int:
        with self._lock:
            return len(self.report.acknowledged)

    def _chaos(self, started: float) -> None:
        """Each action when the next share of the events is acknowledged (or sending has ended)."""
        for n, action in enumerate(ACTIONS, start=1):
            target = self.events * n // (len(ACTIONS) + 1)
            while self._acked() < target and self._next < len(self._batches):
                time.sleep(0.02)
            self.report.actions.append((action, self._acked(), round(time.monotonic() - started, 1)))
            if action == "pg_stop":
                self.cluster.stop("immediate")
                # the outage must be felt: deliveries fail while webhooks keep being answered
                wait_for(
                    lambda: self.daemon.status()["sinks"]["postgres"]["state"] == "down",
                    "the daemon sees PostgreSQL down",
                    timeout=60,
                )
            elif action == "pg_start":
                self.cluster.start()
            elif action == "kill":
                self.daemon.kill()
                self.daemon = Daemon(self.config).start()
            elif action == "airtable_503":
                self.emulator.faults(status=503, seconds=10)

    # -- the end ---------------------------------------------------------------------------------

    def _drained(self) -> bool:
        sinks = self.daemon.status()["sinks"]
        return all(sinks[name]["pending"] == 0 and sinks[name]["state"] == "up" for name in ("postgres", "airtable"))

    def _verify(self) -> None:
        report, problems = self.report, self.report.problems
        expected = {f"wamid.soak.{i}" for i in range(self.events)}
        if report.acknowledged != expected:
            problems.append(f"{len(expected - report.acknowledged)} events never acknowledged")

        async def postgres() -> tuple[Counter, dict[str, int], dict[str, int]]:
            conn = await asyncpg.connect(self.cluster.dsn())
            try:
                ids = Counter(r[0] for r in await conn.fetch("SELECT message_id FROM chatledger.interactions"))
                counts = dict(await conn.fetch("SELECT customer_phone, message_count FROM chatledger.conversations"))
                actual = dict(
                    await conn.fetch(
                        "SELECT c.customer_phone, count(i.*)::int FROM chatledger.conversations c "
                        "LEFT JOIN chatledger.interactions i USING (conversation_id) GROUP BY 1"
                    )
                )
                return ids, counts, actual
            finally:
                await conn.close()

        pg_ids, pg_counts, pg_actual = asyncio.run(postgres())
        self._exactly_once("PostgreSQL", pg_ids, report.acknowledged)
        if pg_counts != pg_actual:
            problems.append(
                "PostgreSQL message_count differs from the interactions for "
                f"{sum(1 for k in pg_counts if pg_counts[k] != pg_actual.get(k))} conversations"
            )
        at_ids = Counter(r.get("MessageId") for r in self.emulator.records("Interactions"))
        self._exactly_once("Airtable", at_ids, report.acknowledged)
        at_counts = {r.get("CustomerPhone"): r.get("MessageCount") for r in self.emulator.records("Conversations")}
        if at_counts != pg_counts:
            problems.append(f"Airtable MessageCount differs from PostgreSQL: {at_counts} vs {pg_counts}")
        stats = self.emulator.stats()
        if stats["rate_limited"]:
            problems.append(f"{stats['rate_limited']} x 429 from Airtable")
        status = self.daemon.status()
        report.figures = {
            "airtable_requests": stats["requests"],
            "airtable_429": stats["rate_limited"],
            "journal_events": status["journal"]["events"],
            "quarantined": status["journal"]["quarantined"],
            "conversations": len(pg_counts),
        }
        if self.daemon.stop() != 0:
            problems.append("the daemon did not stop cleanly")
        check = cli(self.config, "journal", "check")
        if check.returncode != 0:
            problems.append(f"journal check: {check.stdout}")

    def _exactly_once(self, store: str, found: Counter, acknowledged: set[str]) -> None:
        missing = acknowledged - set(found)
        twice = [k for k, n in found.items() if n > 1]
        unknown = set(found) - {f"wamid.soak.{i}" for i in range(self.events)}
        if missing:
            self.report.problems.append(
                f"{store}: {len(missing)} acknowledged events missing, e.g. {sorted(missing)[:3]}"
            )
        if twice:
            self.report.problems.append(f"{store}: {len(twice)} events more than once, e.g. {twice[:3]}")
        if unknown:
            self.report.problems.append(f"{store}: {len(unknown)} events nobody sent")
