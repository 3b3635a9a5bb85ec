"""The port every sink implements, and the two kinds of failure the delivery loop tells apart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from daemon.events import StoredEvent


STATE_WORDS = {"quota": "held at its monthly quota"}  # "airtable is quota" is no sentence


def state_words(state: str) -> str:
    """A sink's state as it reads after "<sink> is"."""
    return STATE_WORDS.get(state, state)


class SinkError(Exception):
    """A delivery failed."""


class TransientError(SinkError):
    """Waiting can fix it (connection refused, timeout, server shutdown, throttling): retry.

    `state` is what status shows meanwhile; `retry_after` (seconds), when the sink knows it, replaces
    the loop's own backoff step.
    """

    state = "down"

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(SinkError):
    """The data itself is refused (a bad value, a constraint): retrying the same batch cannot help.

    The delivery loop splits the batch until the offending event is alone, then parks it as a
    dead letter with this error.
    """


class RefusedError(PermanentError):
    """A write refused for a reason that may be the whole base's rather than the data's (a records cap, a
    plan limit, an error type never seen): the delivery loop dead-letters an event only when it is refused
    alone while records are still being created around it, and otherwise holds the sink as "blocked"."""


class BlockedError(TransientError):
    """The sink refuses every write alike (a records cap, a plan limit): hold everything, retry with backoff.

    Nothing is dead-lettered; the deliveries drain by themselves once the condition ends.
    """

    state = "blocked"


class SetupError(TransientError):
    """The sink is misconfigured (bad credentials, newer schema, missing table): an operator must act.

    Retried like a transient error (the fix happens outside), but reported as "misconfigured".
    """

    state = "misconfigured"


class Sink(Protocol):
    """Delivers batches of events; every delivery is idempotent, so replays are harmless."""

    name: str
    batch_size: int

    async def deliver(self, events: Sequence[StoredEvent]) -> int | None:
        """Write these events and return how many new records that made (None: the sink cannot tell);
        raise TransientError or PermanentError, nothing else."""
        ...

    async def check(self) -> None:
        """Make sure the sink answers and is set up; raise TransientError (or SetupError) if not."""
        ...

    async def close(self) -> None: ...
