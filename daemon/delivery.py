"""One delivery worker per sink: streams pending events from the journal, retries, parks poison.

Each worker reads its own pending deliveries in id order, a page at a time (the backlog is never
loaded whole), and hands them to its sink. Success marks them delivered in the journal; a
transient failure keeps them pending and waits (exponential backoff with jitter, capped); a
permanent failure splits the batch until the event at fault is alone, and parks only that one as a
dead letter. Workers never wait on each other: a failing sink cannot hold back the other.

A refusal that may be the base's rather than the data's (`RefusedError`: an Airtable records cap, a
plan limit, an error type never seen) is split the same way, left half first, so that the part of
the batch that still fits is written, in order. But an event refused alone is only a suspect: under
a records cap every event that creates a record is refused alike while updates still pass, so
neither its own refusal nor an update delivered after it says whose fault it is. Suspects are set
aside (later batches go without them) and tried alone again each time records are created after
them; refused at two such times, a suspect becomes a dead letter (it fails alone while its neighbours
succeed, twice, which a cap with room left for a smaller event cannot fake). When REFUSED_IN_A_ROW
suspects gather with no record created after them, one more event decides: if it creates records they
are judged as above, if it is refused too (or the pass ends first) the condition is the base's: the
pass stops (what was delivered stays delivered), nothing is parked, and the sink is held "blocked"
with the refusal as its last error, noted on the held events, retried with backoff (capped at an
hour, further spaced by a sink that counts its month's requests). Held, every retry is a probe, one
event (its creating write alone, one request), whatever a 429 or an outage meanwhile shows as the
state: the oldest that is not a suspect, then each suspect in turn, so that an event refused for its
own value cannot stand for the base. A probe that creates records ends the hold; one that only
updates is no verdict, and the next event is probed at once.
A pass costs its batch's own requests plus a few per halving level (log2 of the batch) and per
suspect, never one attempt per event.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence

from loguru import logger

from daemon.events import StoredEvent
from daemon.journal import Journal, JournalUnavailable
from daemon.records import parse_time
from daemon.sinks.base import (
    IDLE_CHECK_S,
    BlockedError,
    PermanentError,
    RefusedError,
    SetupError,
    Sink,
    SinkOptions,
    TransientError,
    state_words,
)
from daemon.snapshot import WorkerStatus

BACKOFF_FIRST = 0.5
BACKOFF_CAP = 60.0
JOURNAL_RETRY = 1.0  # when the journal itself cannot record a result
IDLE_CHECK_INTERVAL = IDLE_CHECK_S  # an idle worker waits for events this long at most between checks
REFUSED_IN_A_ROW = 2  # events refused alone with no record created after them: one more decides
REFUSED_TIMES = 2  # a suspect refused alone right after records were created this often is a dead letter
BLOCKED_RETRY_CAP = 3600.0  # a cap lifts when an operator acts (then `sync` retries at once): probe gently


def backoff_delay(
    failures: int, rand: Callable[[], float] = random.random, first: float = BACKOFF_FIRST, cap: float = BACKOFF_CAP
) -> float:
    """Seconds to wait after `failures` consecutive failures: doubling, capped, half of it jittered."""
    ceiling = min(cap, first * 2.0 ** min(max(0, failures - 1), 64))  # no overflow after days of failures
    return ceiling / 2 + rand() * ceiling / 2


class DeliveryWorker:
    """Delivers one sink's pending events until stopped; wake() skips the backoff."""

    def __init__(
        self,
        journal: Journal,
        sink: Sink,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self.journal = journal
        self.sink = sink
        self.options = SinkOptions(sink)
        self.name = sink.name
        self._clock = clock
        self._wall = wall
        # A sink that pays per request (Airtable) may linger: wait until a batch is worth a request
        self.linger_s = self.options.linger_s
        self.linger_batch = self.options.linger_batch
        self._flush = False  # sync, SIGHUP or stop: deliver what lingers now
        self._check_now = False
        self.lingering = False  # waiting for a batch worth a request (status; the tests wait for it)
        self._new_events = asyncio.Event()
        self._woken = asyncio.Event()
        self._stopping = False
        self._attempt = asyncio.Lock()  # held from reading a batch to the end of sending it
        self._cursor = 0
        self._checked_at = 0.0
        self.failures = 0
        self.state = "starting"
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_delivery_at: float | None = None
        self.retry_at: float | None = None
        self.delivered_since_start = 0
        self.dead_since_start = 0
        self.failed_attempts = 0  # since start, for the metrics (failures counts consecutive ones)
        self._suspects: dict[int, _Suspect] = {}  # event id -> an event refused alone, set aside
        self._held = False  # held by refusal: retries probe, whatever state a 429 or an outage shows meanwhile
        self._probes = 0  # refused probes of this hold: each probe takes the next of the held events in turn
        journal.add_listener(self._on_new_events)

    # -- control ---------------------------------------------------------------------------------

    def _on_new_events(self, last_event_id: int) -> None:
        self._new_events.set()

    def wake(self) -> None:
        """Replay now: rescan from the oldest pending event and skip any backoff."""
        self.options.wake()
        self._cursor = 0
        self._flush = True
        self._check_now = True  # an idle sink is checked at once (Airtable reads its schema again)
        self._woken.set()
        self._new_events.set()

    def retry_now(self) -> None:
        """Skip the backoff only (retention made room in a blocked base): no re-check, no flush."""
        self._cursor = 0
        self._woken.set()
        self._new_events.set()

    @property
    def sending(self) -> bool:
        """Whether a batch is being read or sent now (background work on the sink's budget waits for it)."""
        return self._attempt.locked()

    def detach(self) -> None:
        """Stop listening to the journal: this worker was replaced (SIGHUP) and will not run again."""
        self.journal.remove_listener(self._on_new_events)

    def stop(self) -> None:
        self._stopping = True
        self._flush = True
        self._woken.set()
        self._new_events.set()

    async def quiesce(self) -> None:
        """Wait until no batch read before now is still being sent (an erasure must not race a
        delivery of what it erased)."""
        async with self._attempt:
            pass

    def live_status(self) -> WorkerStatus:
        """An enabled sink's entry in status, as this worker and its sink see it."""
        status: WorkerStatus = {
            "state": self.state,
            "last_error": self.last_error,
            "last_error_at": _wall(self.last_error_at),
            "last_delivery_at": _wall(self.last_delivery_at),
            "consecutive_failures": self.failures,
            "delivered_since_start": self.delivered_since_start,
            "dead_since_start": self.dead_since_start,
            "failed_attempts_since_start": self.failed_attempts,
        }
        if self.retry_at is not None:
            status["retry_in_s"] = round(max(0.0, self.retry_at - self._clock()), 1)
        return {**status, **self.options.stats()}

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until stop(); returns normally. Exceptions here are bugs and end the daemon."""
        logger.info("{} delivery started", self.name)
        while not self._stopping:
            self._new_events.clear()
            if await self._linger():
                continue
            async with self._attempt:
                batch = await self._next_batch()
                outcome = await self._attempt_send(batch) if batch else None
            if batch:
                await self._settle(batch, outcome)
            elif self._cursor:
                self._cursor = 0  # end of a pass: the next one starts from the oldest pending again
            else:
                self._flush = False
                await self._idle()
        if self.linger_s > 0 and self.state == "up":
            await self._flush_at_stop()
        logger.info("{} delivery stopped", self.name)

    async def _linger(self) -> bool:
        """With linger_s, wait while fewer than linger_batch events are pending and the oldest is younger
        than linger_s (new events arriving meanwhile join the batch); True when it waited. A backlog, a
        retry, a flush (sync, SIGHUP, stop) never waits."""
        if self.linger_s <= 0 or self._flush or self._cursor or self.state != "up":
            return False
        waiting = await self._pending(0, self.linger_batch)
        if not waiting or len(waiting) >= self.linger_batch:
            return False
        age = self._wall() - parse_time(waiting[0].received_at).timestamp()
        left = min(self.linger_s, self.linger_s - age)  # a clock stepped back never makes it longer
        if left <= 0:
            return False
        self.lingering = True
        try:
            await asyncio.wait_for(self._new_events.wait(), left)
        except TimeoutError:
            pass
        finally:
            self.lingering = False
        return True

    async def _flush_at_stop(self) -> None:
        """Deliver what was lingering, once, as the daemon stops (it is bounded by the stop's own timeout)."""
        async with self._attempt:
            batch = await self._pending(0, self.sink.batch_size)
            if not batch:
                return
            outcome = await self._attempt_send(batch)
        if outcome is None:
            logger.info("{}: {} lingering events delivered at stop", self.name, len(batch))
        else:
            logger.info("{}: lingering events stay pending for the next start ({})", self.name, outcome)

    async def _idle(self) -> None:
        """Nothing pending: make sure the sink answers (so status is true), then wait for events. A sink
        whose checks cost what it pays for (Airtable's requests) sets idle_check_s = None: checked only
        while it is not up, or when an operator asks (sync, SIGHUP)."""
        interval = self.options.idle_check_s
        due = interval is not None and self._clock() - self._checked_at >= interval
        if self.state != "up" or due or self._check_now:
            self._check_now = False
            try:
                await self.sink.check()
            except TransientError as exc:
                await self._failed((), exc)
                return
            self._recovered()
            self._checked_at = self._clock()
        try:
            await asyncio.wait_for(self._new_events.wait(), IDLE_CHECK_INTERVAL)
        except TimeoutError:
            pass

    def _recovered(self) -> None:
        if self.failures:
            logger.success("{} is reachable again after {} failed attempts", self.name, self.failures)
        elif self.state != "up":
            logger.info("{} is up", self.name)
        self.failures = 0
        self.retry_at = None
        self.state = "up"

    async def _next_batch(self) -> list[StoredEvent]:
        """What to send now: a batch after the cursor, or while held by refusal one event to probe with."""
        if not self._held:
            return await self._pending(self._cursor, self.sink.batch_size)
        # The oldest event not set aside first, then each suspect in turn: one refused for its own value
        # must not stand for the base for ever (the suspects' keys are already looked up: one request each).
        candidates = await self._pending(0, 1) + await self._reread(list(self._suspects))
        if not candidates:
            self._held = False  # nothing left to hold (erased)
            return []
        return [candidates[self._probes % len(candidates)]]

    async def _pending(self, after_id: int, limit: int) -> list[StoredEvent]:
        """The next pending events without the suspects, which wait aside for records to be created."""
        events = await self.journal.pending(self.name, after_id, limit + len(self._suspects))
        return [event for event in events if event.id not in self._suspects][:limit]

    async def _reread(self, event_ids: Sequence[int]) -> list[StoredEvent]:
        """These events as the journal has them now, if still pending (an erasure may have taken one)."""
        found = []
        for event_id in event_ids:
            events = await self.journal.pending(self.name, event_id - 1, 1)
            if events and events[0].id == event_id:
                found.append(events[0])
            else:
                self._suspects.pop(event_id, None)
        return found

    async def _attempt_send(self, batch: Sequence[StoredEvent]) -> Exception | None:
        """Send a batch; the failure the caller must wait out, if any (waiting happens outside the lock)."""
        try:
            await self._send(batch)
        except (TransientError, JournalUnavailable) as exc:
            return exc
        return None

    async def _settle(self, batch: Sequence[StoredEvent], outcome: Exception | None) -> None:
        if isinstance(outcome, TransientError):
            await self._failed(batch, outcome)
            return
        if isinstance(outcome, JournalUnavailable):
            # Delivered but not yet recorded: it stays pending and a later pass re-sends it (idempotent).
            logger.warning("{}: cannot record delivery in the journal ({}); retrying", self.name, outcome)
            self._cursor = 0
            await self._pause(JOURNAL_RETRY)
            return
        if self._held:  # the probe only updated, or was parked: no verdict yet, the next event is probed now
            self._cursor = 0
            self.state = BlockedError.state  # the base answers (a 429 or an outage before may show otherwise)
            return
        # A short batch ends the pass: what arrived while it was sent starts a new one, which may linger
        # (else one slow request after another would each carry what came meanwhile, one by one).
        self._cursor = batch[-1].id if len(batch) >= self.sink.batch_size else 0
        self._checked_at = self._clock()
        self._check_now = False  # the delivery showed the sink answers (and re-read what wake() asked)
        self._recovered()

    async def _send(self, batch: Sequence[StoredEvent]) -> None:
        """Deliver, isolating what the sink refuses: a poison event is parked, a base-wide refusal held."""
        if self._held:
            await self._probe(batch[0])
            return
        await self._isolate(batch)
        if len(batch) < self.sink.batch_size and self._in_a_row():
            raise self._block()  # the pass ends on suspects: nothing after them can judge them yet

    async def _probe(self, event: StoredEvent) -> None:
        """While held: does the base take new records again?"""
        try:
            created = await self._deliver([event])
        except RefusedError as exc:
            self._probes += 1
            raise self._block(exc) from None
        except PermanentError as exc:
            self._suspects.pop(event.id, None)
            await self._park(event, exc)
            return
        self._suspects.pop(event.id, None)
        if created is None or created > 0:
            # Room appeared since the suspects were refused, and this probe may have taken the last of
            # it: their refusals now say nothing about them, and the retests below count no strike.
            await self._judge(strike=False)

    async def _isolate(self, batch: Sequence[StoredEvent]) -> None:
        try:
            created = await self._deliver(batch)
        except RefusedError as exc:
            if len(batch) == 1:
                self._suspect(batch[0], exc)
                return
            logger.warning(
                "{} refused a batch of {} events ({}); splitting to write what it takes", self.name, len(batch), exc
            )
        except PermanentError as exc:
            if len(batch) == 1:
                await self._park(batch[0], exc)
                return
            logger.warning(
                "{} refused a batch of {} events ({}); splitting to isolate the cause", self.name, len(batch), exc
            )
        else:
            if created is None or created > 0:  # the base still takes new records
                await self._judge()
            return
        middle = len(batch) // 2
        await self._isolate(batch[:middle])
        await self._isolate(batch[middle:])

    def _in_a_row(self) -> int:
        """Events refused alone (for the first time) since records were last created."""
        return sum(1 for suspect in self._suspects.values() if suspect.in_a_row)

    def _suspect(self, event: StoredEvent, exc: RefusedError) -> None:
        """Set an event refused alone aside; hold the base when it is one more beyond REFUSED_IN_A_ROW."""
        in_a_row = self._in_a_row()
        self._suspects[event.id] = _Suspect(exc)
        if in_a_row >= REFUSED_IN_A_ROW:
            raise self._block(exc)

    def _block(self, exc: RefusedError | None = None) -> BlockedError:
        if not self._held:
            self._held, self._probes = True, 0
        last = exc or list(self._suspects.values())[-1].error
        return BlockedError(
            f"{last}; held, nothing dead-lettered: events refused alone in a row with no record "
            "created after them (a condition of the base, not of the events)"
        )

    async def _judge(self, strike: bool = True) -> None:
        """Records were just created: the base takes them, so each suspect is tried alone again; one
        refused now as it was the last time records were created is parked."""
        self._held = False
        for suspect in self._suspects.values():
            suspect.in_a_row = False
        for event in await self._reread(list(self._suspects)):
            suspect = self._suspects[event.id]
            try:
                await self._deliver([event])
            except RefusedError as again:
                suspect.error = again
                suspect.strikes += strike
                if suspect.strikes >= REFUSED_TIMES:
                    del self._suspects[event.id]
                    await self._park(event, again, "refused alone each time records were created around it")
                continue
            except PermanentError as again:
                del self._suspects[event.id]
                await self._park(event, again)
                continue
            del self._suspects[event.id]

    async def _deliver(self, batch: Sequence[StoredEvent]) -> int | None:
        """One attempt; on success the batch is marked delivered. How many records it created."""
        created = await self.sink.deliver(batch)
        await self.journal.mark_delivered(self.name, [event.id for event in batch])
        self.delivered_since_start += len(batch)
        self.last_delivery_at = time.time()
        return created

    async def _park(self, event: StoredEvent, exc: PermanentError, why: str = "") -> None:
        error = f"{exc} ({why})" if why else str(exc)
        logger.error(
            "{} refused event {} ({} {}) for good; parked as a dead letter "
            "(`chatledger replay --dead --sink {}` retries it): {}",
            self.name,
            event.id,
            event.title,
            event.dedup_key,
            self.name,
            error,
        )
        await self.journal.mark_dead(self.name, event.id, error)
        self.dead_since_start += 1

    async def _failed(self, batch: Sequence[StoredEvent], exc: TransientError) -> None:
        """Record a transient failure (on the batch's first event, or on what a block holds) and back off."""
        self.failures += 1
        self.failed_attempts += 1
        noted = [event.id for event in batch[:1]]
        if exc.retry_after is not None:
            delay = exc.retry_after
        elif isinstance(exc, BlockedError):
            # a sink that counts its month's requests spaces its probes further
            delay = max(backoff_delay(self.failures, cap=BLOCKED_RETRY_CAP), self.options.probe_spacing())
            # the held events, not batch[0], which the pass may have delivered before the block
            noted = sorted({*self._suspects, *(event.id for event in batch if len(batch) == 1)})
        elif isinstance(exc, SetupError):
            delay = backoff_delay(self.failures, cap=self.options.setup_retry_cap)
        else:
            delay = backoff_delay(self.failures)
        error = str(exc)
        was = self.state
        self.state = exc.state
        self.last_error, self.last_error_at = error, time.time()
        log = logger.error if was != self.state or self.failures in (1, 10) else logger.debug
        log(
            "{} is {} (attempt {}), retrying in {:.1f} s: {}",
            self.name,
            state_words(self.state),
            self.failures,
            delay,
            error,
        )
        # Armed before the journal write below: status shows the retry at once, and a wake()
        # (sync, SIGHUP) arriving during that write is not lost.
        self._arm_retry(delay)
        if noted:
            try:
                await self.journal.note_failure(self.name, noted, error, time.time() + delay)
            except JournalUnavailable:
                pass  # the journal's own state is reported separately; the retry goes on
        await self._wait_retry()

    async def _pause(self, delay: float) -> None:
        """Sleep `delay` seconds unless woken (sync, SIGHUP) or stopped."""
        self._arm_retry(delay)
        await self._wait_retry()

    def _arm_retry(self, delay: float) -> None:
        self.retry_at = self._clock() + delay
        self._woken.clear()

    async def _wait_retry(self) -> None:
        assert self.retry_at is not None
        try:
            await asyncio.wait_for(self._woken.wait(), max(0.0, self.retry_at - self._clock()))
            if not self._stopping:
                logger.info("{}: replay requested, retrying now", self.name)
                self.failures = 0
        except TimeoutError:
            pass
        self.retry_at = None


class _Suspect:
    """An event refused alone: its last refusal, whether no record was created since its first one, and
    how often it was refused again right after records were created (each time, it is tried again)."""

    def __init__(self, error: RefusedError) -> None:
        self.error = error
        self.in_a_row = True
        self.strikes = 0


def _wall(moment: float | None) -> str | None:
    if moment is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
