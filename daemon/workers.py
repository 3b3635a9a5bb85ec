"""The daemon's delivery workers: one per enabled sink, each under a task named after it; a sink replaced
under its running worker (SIGHUP); and their stop, which closes every sink exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import TypeVar

from loguru import logger

from daemon.delivery import DeliveryWorker
from daemon.journal import Journal
from daemon.reload import carry_counters
from daemon.sinks.base import Sink

STOP_TIMEOUT = 2.0  # a delivery still running then is cancelled (it is idempotent, it replays)

S = TypeVar("S")


class Workers(Mapping[str, DeliveryWorker]):
    """The running delivery worker of each sink, by sink name; none waits on another."""

    def __init__(self) -> None:
        self._workers: dict[str, DeliveryWorker] = {}
        self.tasks: list[asyncio.Task[None]] = []  # supervised by the daemon: one that ends is a crash
        self._successors: dict[str, tuple[DeliveryWorker, asyncio.Future[bool]]] = {}  # SIGHUP's replacements
        self._stopping = False

    def __getitem__(self, name: str) -> DeliveryWorker:
        return self._workers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._workers)

    def __len__(self) -> int:
        return len(self._workers)

    def sink_of(self, name: str, kind: type[S]) -> S | None:
        """The running sink of that name when it is a `kind` (SIGHUP may have replaced it), else None."""
        worker = self._workers.get(name)
        return worker.sink if worker is not None and isinstance(worker.sink, kind) else None

    def start(self, journal: Journal, sink: Sink) -> None:
        """Deliver `sink`'s pending events from now on, in a task of its own."""
        self._workers[sink.name] = DeliveryWorker(journal, sink)
        self.tasks.append(asyncio.create_task(self._deliver(sink.name), name=f"{sink.name}-delivery"))

    def wake(self) -> None:
        """Every worker replays what is pending now, skipping any backoff."""
        for worker in self._workers.values():
            worker.wake()

    async def quiesce(self) -> None:
        """Wait until no batch read before now is still being sent, by any worker."""
        for worker in self._workers.values():
            await worker.quiesce()

    async def replace(self, sink: Sink) -> bool:
        """Put `sink` in place of the running one of its name: the old worker finishes what it is sending
        (what lingers stays pending for the new one), the old sink is closed, a new worker takes the
        pending deliveries from the journal; nothing is lost or sent twice. False if the daemon stopped
        first."""
        if self._stopping:
            await _close(sink)
            return False
        old = self._workers[sink.name]
        handed_over: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._successors[sink.name] = (DeliveryWorker(old.journal, sink), handed_over)
        old.linger_s = 0  # a lingering batch is the new sink's to send, not flushed to the old one
        old.stop()
        return await handed_over

    async def stop(self) -> None:
        """Stop every worker (a delivery in flight gets STOP_TIMEOUT to finish), then close each sink, once."""
        if self._stopping:
            return
        self._stopping = True
        for worker in self._workers.values():
            worker.stop()
        if self.tasks:
            _, late = await asyncio.wait(self.tasks, timeout=STOP_TIMEOUT)
            for task in late:
                logger.info("{} was mid-delivery at stop; it is replayed at the next start", task.get_name())
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        for worker in self._workers.values():
            await _close(worker.sink)

    async def _deliver(self, name: str) -> None:
        """Run the sink's worker until stop; when SIGHUP replaced it, its successor goes on in this same
        task (so the supervisor sees no task end), once the old sink is closed."""
        while True:
            worker = self._workers[name]
            await worker.run()
            successor, handed_over = self._successors.pop(name, (None, None))
            if successor is None or handed_over is None:
                return
            worker.detach()
            if self._stopping:  # the daemon stops: the successor never starts
                successor.detach()
                await _close(successor.sink)
                if not handed_over.done():
                    handed_over.set_result(False)
                return
            carry_counters(worker, successor)
            self._workers[name] = successor  # API reads, recover and forget use the new sink from now on
            await _close(worker.sink)
            if not handed_over.done():  # cancelled when the SIGHUP task was, at a stop
                handed_over.set_result(True)


async def _close(sink: Sink) -> None:
    try:
        await sink.close()
    except Exception:
        logger.exception("closing the {} sink failed", sink.name)
