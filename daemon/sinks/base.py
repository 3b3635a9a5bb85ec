"""The port every sink implements, and the two kinds of failure the delivery loop tells apart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from daemon.events import StoredEvent

if TYPE_CHECKING:
    from daemon.snapshot import SinkStats

IDLE_CHECK_S = 30.0  # an idle worker checks its sink this often, so status stays true
SETUP_RETRY_CAP = 60.0  # the backoff's cap while a sink is misconfigured


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
    """Delivers batches of events; every delivery is idempotent, so replays are harmless.

    These members are all a sink must have; SinkDefaults names the optional ones (how the delivery loop
    paces the sink, what it tells it besides delivering) and what a sink without them gets.
    """

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


class SinkDefaults:
    """The port's optional members, at what a sink that does not tune them gets. The adapters inherit this
    class and override what they tune (AirtableSink: a sink that pays per request); the delivery loop reads
    the members through `SinkOptions`, so that a plain sink with Sink's members only (a fake) works too."""

    # wait up to linger_s for linger_batch pending events, so that a request carries that many
    linger_s: float = 0.0
    linger_batch: int = 1
    idle_check_s: float | None = IDLE_CHECK_S  # None: an idle sink is checked only when not up, or when asked
    setup_retry_cap: float = SETUP_RETRY_CAP

    def wake(self) -> None:
        """A retry was asked for (sync, SIGHUP, replay): forget what the sink holds about its store."""

    def stats(self) -> SinkStats:
        """What status shows of the sink beside its worker's figures."""
        return {}

    def probe_spacing(self) -> float:
        """Seconds at least between two probes of a store that refuses every write (0: the backoff alone)."""
        return 0.0


_DEFAULTS = SinkDefaults()
T = TypeVar("T")


class SinkOptions:
    """A sink's optional members (SinkDefaults) as the delivery loop reads them: the sink's own where it has
    the member, read at each use (SIGHUP retunes a running sink), the default where it has not."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def _own(self, member: str, default: T) -> T:
        found: T = getattr(self._sink, member, default)
        return found

    @property
    def linger_s(self) -> float:
        return self._own("linger_s", _DEFAULTS.linger_s)

    @property
    def linger_batch(self) -> int:
        return self._own("linger_batch", _DEFAULTS.linger_batch)

    @property
    def idle_check_s(self) -> float | None:
        return self._own("idle_check_s", _DEFAULTS.idle_check_s)

    @property
    def setup_retry_cap(self) -> float:
        return self._own("setup_retry_cap", _DEFAULTS.setup_retry_cap)

    def wake(self) -> None:
        self._own("wake", _DEFAULTS.wake)()

    def stats(self) -> SinkStats:
        return self._own("stats", _DEFAULTS.stats)()

    def probe_spacing(self) -> float:
        return self._own("probe_spacing", _DEFAULTS.probe_spacing)()
