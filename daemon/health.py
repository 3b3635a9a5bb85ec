"""The health verdict of a status snapshot: healthy, or degraded with each problem in words and what to do.

`chatledger status` exits non-zero on degraded, and `/metrics` says it as chatledger_healthy.
"""

from __future__ import annotations

from daemon.alerts import source_problem
from daemon.sinks.base import state_words
from daemon.snapshot import Health, Observed

TROUBLED_STATES = ("down", "misconfigured", "blocked", "quota")


def judge(snapshot: Observed) -> Health:
    """What is wrong now: the journal, each sink, SendPulse reconciliation."""
    problems = []
    journal = snapshot["journal"]
    if not journal["writer_alive"]:
        problems.append("journal writer is not running")
    if not journal["writable"]:
        problems.append(f"journal cannot write, webhooks get 503: {journal['last_error']}")
    if journal.get("read_error"):
        problems.append(f"journal cannot be read, the counts shown are the last read: {journal['read_error']}")
    for name, sink in snapshot["sinks"].items():
        if sink["state"] in TROUBLED_STATES:
            reason = f": {sink['last_error']}" if sink.get("last_error") else ""
            problems.append(f"{name} is {state_words(sink['state'])}{reason}")
        if sink["dead"]:
            problems.append(
                f"{name} has {sink['dead']} dead letters: `chatledger dead` lists them and why; fix the "
                "cause and `chatledger replay --dead`, or give them up with `chatledger dead --discard "
                "ID|--all --reason TEXT`"
            )
    source = source_problem(snapshot.get("sources", {}).get("sendpulse"))
    if source:
        problems.append(source)
    return {"status": "degraded" if problems else "healthy", "problems": problems}
