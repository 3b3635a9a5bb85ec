"""The journal's one writer: a task that owns the write connection and commits in groups.

Requests that arrive while a commit is running wait in a queue and are committed together by the next
transaction, so many concurrent webhooks share one fsync (WAL, synchronous=FULL). A write that fails on
its own data is set apart and the rest of its group committed; a write the journal cannot make durable
fails its whole group, and intake answers 503 (`writable`) until a commit succeeds again.
"""

from __future__ import annotations

import asyncio
import bisect
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiosqlite
from loguru import logger

from daemon.events import Event, Rejected
from daemon.journal.errors import JournalUnavailable, rollback
from daemon.journal.intake import write_intake

MAX_EVENTS_PER_COMMIT = 5000
GATHER_YIELDS = 2  # event-loop turns the writer gives concurrent requests to join a commit
# While webhooks keep coming, a group short of GROUP_TARGET events waits for the rest as long as the arrival
# rate says they take, at most GROUP_WAIT_SECONDS (PostgreSQL's commit_delay, sized by the traffic): at 2,000
# requests/s one fsync per 11 events instead of 9, the SQLite thread's CPU per event down by a sixth, the
# median acknowledgement 0.7 ms later. A lone request at a quiet time never waits.
GROUP_TARGET = 10
GROUP_WAIT_SECONDS = 0.003
RATE_SMOOTHING = 0.3  # weight of the latest group in the arrival rate's moving average
# Upper bounds (seconds) of the commit-latency histogram's buckets; the last one is +Inf.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# A write that failed on its own data rather than on the journal's ability to write (a lone surrogate,
# an integer too large for SQLite, a constraint): the rest of its group is committed without it.
DATA_ERRORS = (
    ValueError,
    TypeError,
    OverflowError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.IntegrityError,
    sqlite3.DataError,
)


@dataclass(frozen=True)
class AppendResult:
    accepted: int
    duplicates: int
    rejected: int
    event_ids: tuple[int, ...]


@dataclass
class CommitStats:
    commits: int = 0
    events: int = 0
    failures: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_commit_seconds: float = 0.0
    commit_seconds_total: float = 0.0
    commit_buckets: list[int] = field(default_factory=lambda: [0] * (len(COMMIT_BUCKETS) + 1))

    def observe(self, seconds: float) -> None:
        self.last_commit_seconds = seconds
        self.commit_seconds_total += seconds
        self.commit_buckets[bisect.bisect_left(COMMIT_BUCKETS, seconds)] += 1


@dataclass
class _Intake:
    events: Sequence[Event]
    rejected: Sequence[Rejected]
    done: asyncio.Future[AppendResult]


@dataclass
class _Op:
    """A write of another kind (delivery state, probes) run inside the shared transaction."""

    run: Callable[[aiosqlite.Connection], Awaitable[Any]]
    done: asyncio.Future[Any]


@dataclass
class _Ping:
    done: asyncio.Future[None]


_STOP = object()


class Writer:
    """The writer task and its queue; `start()` it once the connection is ready, `stop()` it before closing."""

    def __init__(self, conn: aiosqlite.Connection, last_id: int):
        self.conn = conn
        self.last_id = last_id
        self.writable = True
        self.stats = CommitStats()
        self.closing = False
        self.task: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._listeners: list[Callable[[int], None]] = []
        self._arrivals = ArrivalRate(time.monotonic)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="journal-writer")

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    async def append(self, events: Sequence[Event], rejected: Sequence[Rejected]) -> AppendResult:
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._submit(_Intake(events, rejected, future))
        return await future

    async def write(self, run: Callable[[aiosqlite.Connection], Awaitable[Any]]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._submit(_Op(run, future))
        return await future

    async def ping(self) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._submit(_Ping(future))
        await future

    def _submit(self, request: Any) -> None:
        if self.closing or not self.alive:
            raise JournalUnavailable("journal is closed")
        self._queue.put_nowait(request)

    def add_listener(self, listener: Callable[[int], None]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[int], None]) -> None:
        self._listeners.remove(listener)

    def notify(self) -> None:
        for listener in self._listeners:
            try:
                listener(self.last_id)
            except Exception:
                logger.exception("journal listener failed")

    async def stop(self) -> None:
        """Commit everything already submitted, end the task, fail what it never reached."""
        self.closing = True
        if self.task is not None and not self.task.done():
            self._queue.put_nowait(_STOP)
            try:
                await self.task
            except Exception:
                logger.exception("journal writer ended with an error")
        while not self._queue.empty():  # anything the writer never reached
            item = self._queue.get_nowait()
            if item is not _STOP and not item.done.done():
                item.done.set_exception(JournalUnavailable("journal is closed"))

    # -- the hot path: queue -> batch -> insert -> commit (the fsync) -> answers -------------------

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is _STOP:
                break
            batch, stopping = await self._gather(first)
            await self._commit(batch)

    async def _gather(self, first: Any) -> tuple[list[Any], bool]:
        """The batch the next commit takes, and whether the stop sentinel came after it."""
        batch = [first]
        for _ in range(GATHER_YIELDS):
            # Let handlers that are already runnable reach the queue: they share this commit.
            await asyncio.sleep(0)
            if self._drain(batch):
                return batch, True
        events = _events_in(batch)
        wait = group_wait(events, self._arrivals.took(events))
        if wait:
            await asyncio.sleep(wait)
            return batch, self._drain(batch)
        return batch, False

    def _drain(self, batch: list[Any]) -> bool:
        """Move queued requests into the batch; True when the stop sentinel was reached."""
        events = _events_in(batch)
        while events < MAX_EVENTS_PER_COMMIT and not self._queue.empty():
            item = self._queue.get_nowait()
            if item is _STOP:
                return True  # commit what came before the stop, then leave
            batch.append(item)
            events += len(getattr(item, "events", ()))
        return False

    async def _commit(self, batch: list[Any]) -> None:
        intakes = [item for item in batch if isinstance(item, _Intake)]
        ops = [item for item in batch if isinstance(item, _Op)]
        pings = [item for item in batch if isinstance(item, _Ping)]
        outcomes: list[tuple[bool, Any]] = []  # per op: (succeeded, its result or its exception)
        started = time.monotonic()
        new_ids: list[tuple[int, str]] = []
        if intakes or ops:
            try:
                new_ids, outcomes = await self._transaction(intakes, ops)
            except (sqlite3.Error, OSError) as exc:
                self._fail(batch, exc)
                return
            except Exception as exc:  # a bug: fail this group loudly, keep the writer alive
                logger.exception("journal commit failed unexpectedly")
                self._fail(batch, exc)
                return
        self._succeed(intakes, new_ids, time.monotonic() - started, wrote=bool(intakes or ops))
        _answer(ops, outcomes, pings)

    async def _transaction(
        self, intakes: list[_Intake], ops: list[_Op]
    ) -> tuple[list[tuple[int, str]], list[tuple[bool, Any]]]:
        """The group in one transaction: new events' (id, dedup key), and each op's outcome."""
        try:
            # isolation_level IMMEDIATE: the first write opens the transaction, saving a trip
            try:
                # a group of intake alone commits (the fsync: WAL, synchronous=FULL) in the same trip
                new_ids = await write_intake(
                    self.conn,
                    [event for intake in intakes for event in intake.events],
                    [item for intake in intakes for item in intake.rejected],
                    commit=not ops,
                )
                if ops:
                    outcomes = [(True, await op.run(self.conn)) for op in ops]
                    await self.conn.commit()
                else:
                    outcomes = []
            except BaseException:
                await rollback(self.conn)
                raise
        except DATA_ERRORS as exc:
            # One request's data, not the journal: commit the others without it.
            logger.warning(
                "journal: a write in a group of {} failed on its data ({}: {}); committing "
                "the group again with that write set apart",
                len(intakes) + len(ops),
                type(exc).__name__,
                exc,
            )
            return await self._commit_isolated(intakes, ops)
        return new_ids, outcomes

    # -- a group with a write the journal refuses on its data; the answers ---------------------

    async def _commit_isolated(
        self, intakes: list[_Intake], ops: list[_Op]
    ) -> tuple[list[tuple[int, str]], list[tuple[bool, Any]]]:
        """The group again in one transaction, each write in a savepoint: a request whose data the
        journal refuses is retried event by event, and what still fails is quarantined with the reason
        (its request answers with it as rejected); an op that fails gets its exception. One fsync."""
        conn = self.conn
        new_ids: list[tuple[int, str]] = []
        outcomes: list[tuple[bool, Any]] = []
        try:
            await conn.execute("BEGIN IMMEDIATE")
            for intake in intakes:
                succeeded, outcome = await self._savepoint(lambda: write_intake(conn, intake.events, intake.rejected))
                if succeeded:
                    new_ids += outcome
                    continue
                kept, refused = [], list(intake.rejected)
                for event in intake.events:
                    succeeded, outcome = await self._savepoint(lambda: write_intake(conn, [event], ()))
                    if succeeded:
                        kept.append(event)
                        new_ids += outcome
                    else:
                        logger.error(
                            "journal: event {} cannot be stored ({}: {}); quarantined instead",
                            event.dedup_key[:80],
                            type(outcome).__name__,
                            outcome,
                        )
                        refused.append(
                            Rejected(
                                f"the journal could not store it: {type(outcome).__name__}: {outcome}"[:300],
                                event.original or event.raw,
                                event.received_at,
                            )
                        )
                intake.events, intake.rejected = kept, refused
                await write_intake(conn, (), refused)
            for op in ops:
                outcomes.append(await self._savepoint(lambda: op.run(conn)))
            await conn.commit()
        except BaseException:
            await rollback(conn)
            raise
        new_ids.sort()
        return new_ids, outcomes

    async def _savepoint(self, work: Callable[[], Awaitable[Any]]) -> tuple[bool, Any]:
        """Run `work()` inside a savepoint; on a data error undo just it: (False, the error)."""
        await self.conn.execute("SAVEPOINT isolated")
        try:
            result = await work()
        except DATA_ERRORS as exc:
            await self.conn.execute("ROLLBACK TO isolated")
            await self.conn.execute("RELEASE isolated")
            return False, exc
        await self.conn.execute("RELEASE isolated")
        return True, result

    def _succeed(self, intakes: list[_Intake], new_ids: list[tuple[int, str]], elapsed: float, wrote: bool) -> None:
        if not wrote:
            return
        if not self.writable:
            logger.success("journal writes again; intake resumed")
        self.writable = True
        if intakes:
            unclaimed = {key: event_id for event_id, key in new_ids}
            for intake in intakes:
                ids = []
                for event in intake.events:
                    event_id = unclaimed.pop(event.dedup_key, None)
                    if event_id is not None:
                        ids.append(event_id)
                result = AppendResult(
                    accepted=len(ids),
                    duplicates=len(intake.events) - len(ids),
                    rejected=len(intake.rejected),
                    event_ids=tuple(ids),
                )
                if not intake.done.done():
                    intake.done.set_result(result)
        self.stats.commits += 1
        self.stats.events += len(new_ids)
        self.stats.observe(elapsed)
        if new_ids:
            self.last_id = new_ids[-1][0]
            self.notify()

    def _fail(self, batch: list[Any], exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        if self.writable:
            logger.error("journal write failed, intake answers 503 until it recovers: {}", reason)
        self.writable = False
        self.stats.failures += 1
        self.stats.last_error = reason
        self.stats.last_error_at = time.time()
        for item in batch:
            if not item.done.done():
                if isinstance(item, _Ping):
                    item.done.set_result(None)  # the writer is alive, even if the disk is not
                else:
                    item.done.set_exception(JournalUnavailable(reason))


def _answer(ops: list[_Op], outcomes: list[tuple[bool, Any]], pings: list[_Ping]) -> None:
    for op, (succeeded, outcome) in zip(ops, outcomes):
        if not op.done.done():
            if succeeded:
                op.done.set_result(outcome)
            else:
                op.done.set_exception(outcome)
    for ping in pings:
        if not ping.done.done():
            ping.done.set_result(None)


class ArrivalRate:
    """Events per second reaching the writer: a moving average over the groups it takes."""

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._taken_at = clock()
        self.per_second = 0.0

    def took(self, events: int) -> float:
        """A group of `events` was taken (all that came since the last); the rate now."""
        now = self._clock()
        elapsed, self._taken_at = now - self._taken_at, now
        self.per_second += RATE_SMOOTHING * (events / max(elapsed, 1e-4) - self.per_second)
        return self.per_second


def group_wait(events: int, per_second: float) -> float:
    """How long a group of `events` waits for more, webhooks arriving at `per_second`: what GROUP_TARGET
    needs, at most GROUP_WAIT_SECONDS; nothing when it has enough or not one more is due within that."""
    if events >= GROUP_TARGET or per_second * GROUP_WAIT_SECONDS < 1:
        return 0.0
    return min((GROUP_TARGET - events) / per_second, GROUP_WAIT_SECONDS)


def _events_in(batch: list[Any]) -> int:
    return sum(len(getattr(item, "events", ())) for item in batch)
