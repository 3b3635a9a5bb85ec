"""The journal's deliveries and elements: replay, dead (and --discard), quarantine (and --discard); through
the running daemon, else on the journal directly."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from daemon.cli.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, current_operator, rich_terminal
from daemon.config import Config
from daemon.journal import JournalError
from daemon.logs import setup_logging
from daemon.status import EXIT_UNREACHABLE, StatusUnreachable, request_status


def replay(config: Config, args: argparse.Namespace) -> int:
    from urllib.parse import urlencode

    from daemon.journal import Requeue

    if not config.enabled_sinks:
        print(
            f"chatledger: no sink is enabled in {args.config} (journal only): nothing to replay; configure "
            "[postgres] or [airtable] first (what the journal holds is delivered at the next start)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if args.sink and args.sink not in config.enabled_sinks:
        print(f"chatledger: sink {args.sink} is not enabled in {args.config}", file=sys.stderr)
        return EXIT_CONFIG
    selection = (
        Requeue(dead_only=args.dead or not (args.since or args.event), since=args.since, event=args.event)
        if (args.dead or args.since or args.event)
        else None
    )
    params = {
        "sink": args.sink,
        "dead": "1" if selection and selection.dead_only else None,
        "since": args.since,
        "event": args.event,
    }
    query = urlencode({k: v for k, v in params.items() if v})
    try:
        answer = asyncio.run(request_status(config.status.socket, "POST", "/replay?" + query))
    except StatusUnreachable as exc:
        if selection is None:
            print(f"chatledger: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
        # No daemon: re-queue in the journal directly; the next start delivers them.
        return _requeue_offline(config, args.sink, selection)
    terminal = rich_terminal(sys.stdout) if selection else None
    if terminal and selection:
        terminal.requeued(
            {sink: answer.get("requeued", {}).get(sink, 0) for sink in answer.get("sinks", [])},
            selection.describe(),
            "replay triggered",
        )
    else:
        for sink in answer.get("sinks", []):
            count = answer.get("requeued", {}).get(sink, 0)
            print(
                f"{sink}: {count} {selection.describe()} re-queued, replay triggered"
                if selection
                else f"{sink}: replay triggered"
            )
    return _requeued_something(selection, answer.get("requeued", {}))


def _requeued_something(selection: Any, counts: dict[str, int]) -> int:
    """A selection that matched nothing is said, and is no success."""
    if selection is None or any(counts.values()):
        return EXIT_OK
    print(
        f"chatledger: nothing re-queued: no {selection.describe()} to re-queue (not in the journal, or already "
        "pending)",
        file=sys.stderr,
    )
    return EXIT_FAILURE


def _requeue_offline(config: Config, sink: str | None, selection: Any) -> int:
    from daemon.operations import offline

    setup_logging("WARNING", config.log.json_)
    try:
        counts = asyncio.run(offline.requeue(config, sink, selection))
    except JournalError as exc:
        print(f"chatledger: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    terminal = rich_terminal(sys.stdout)
    if terminal:
        terminal.requeued(
            counts,
            selection.describe(),
            f"in {config.journal.path} (daemon not running; they are delivered when it starts)",
        )
    else:
        for name, count in counts.items():
            print(
                f"{name}: {count} {selection.describe()} re-queued in {config.journal.path} (daemon not running; "
                "they are delivered when it starts)"
            )
    return _requeued_something(selection, counts)


def dead(config: Config, args: argparse.Namespace) -> int:
    from daemon.journal import read_dead_letters

    if args.discard is not None:
        return _discard(config, args)
    sinks = [args.sink] if args.sink else list(config.enabled_sinks)
    try:
        letters = read_dead_letters(config.journal.path, sinks, args.limit, discarded=args.discarded)
    except JournalError as exc:
        print(f"chatledger: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(letters, indent=2))
        return EXIT_OK
    total = sum(len(rows) for rows in letters.values())
    if not total:
        print(f"no {'discarded ' if args.discarded else ''}dead letters ({', '.join(sinks) or 'no sink enabled'})")
        return EXIT_OK
    terminal = rich_terminal(sys.stdout)
    if terminal:
        terminal.dead(letters, args.discarded)
    else:
        for sink, rows in letters.items():
            for row in rows:
                when = row["updated_at"] or "?"
                if args.discarded:
                    print(
                        f"{sink:<9} event {row['event_id']:<8} {row['title']:<18} discarded {row['discarded_at']} "
                        f"by {row['discarded_by']}  {row['dedup_key']}\n{'':<9} reason: {row['reason']}\n"
                        f"{'':<9} {row['last_error']}"
                    )
                else:
                    print(
                        f"{sink:<9} event {row['event_id']:<8} {row['title']:<18} {when}  {row['dedup_key']}\n"
                        f"{'':<9} {row['last_error']}"
                    )
    if args.discarded:
        print(f"{total} discarded dead letters; `chatledger replay --event ID` delivers one after all")
    else:
        print(
            f"{total} dead letters; after fixing the cause: chatledger replay --dead --config {args.config}; to give "
            f"them up: chatledger dead --discard ID|--all --reason TEXT --config {args.config}"
        )
    return EXIT_OK


def _discard(config: Config, args: argparse.Namespace) -> int:
    """`dead --discard ID|--all --reason TEXT`: through the daemon (owner or root only), else in the journal
    under its lock."""
    from urllib.parse import urlencode

    event = args.discard or None
    query = urlencode(
        {
            k: v
            for k, v in {
                "sink": args.sink,
                "event": event,
                "all": "1" if args.all else None,
                "reason": args.reason,
                "operator": os.environ.get("SUDO_USER"),
            }.items()
            if v
        }
    )
    try:
        answer = asyncio.run(request_status(config.status.socket, "POST", "/discard?" + query, timeout_s=300))
        where = "through the running daemon"
    except StatusUnreachable:
        try:
            answer = _discard_offline(config, args.sink, event, args.reason)
        except JournalError as exc:
            print(f"chatledger: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        where = "daemon not running"
    sinks = args.sink or ", ".join(config.enabled_sinks) or "no sink enabled"
    if args.json:
        print(json.dumps({**answer, "where": where}, indent=2))
    problem = _discard_problem(answer, event, sinks)
    if problem:
        print(f"chatledger: {problem}", file=sys.stderr)
        return EXIT_FAILURE
    if not args.json:
        for letter in answer["discarded"]:
            print(f"{letter['sink']}: event {letter['event_id']} ({letter['title']}, {letter['dedup_key']}) discarded")
        count = len(answer["discarded"])
        print(
            f"{count} dead letter{'' if count == 1 else 's'} discarded by {answer['by']} at {answer['at']} "
            f"({where}): {answer['reason']}; `chatledger dead --discarded` lists them"
        )
    return EXIT_OK


def _discard_problem(answer: dict[str, Any], event: str | None, sinks: str) -> str | None:
    """Why nothing was discarded, or None."""
    if answer["discarded"]:
        return None
    if event is None:
        return f"no dead letters to discard ({sinks})"
    if not answer["found"]:
        return (
            f"no event {event} in the journal (give a journal id, dedup key or SendPulse message id, as "
            "`chatledger dead` lists them)"
        )
    if not answer["others"]:
        return f"event {event} has no delivery for {sinks}"
    states = ", ".join(f"{o['sink']} {o['state']}" for o in answer["others"])
    return f"event {event} is not a dead letter ({states}): nothing discarded"


def _discard_offline(config: Config, sink: str | None, event: str | None, reason: str) -> dict[str, Any]:
    from daemon.operations import offline

    by = current_operator()
    setup_logging("WARNING", config.log.json_)
    return asyncio.run(offline.discard_dead(config, sink, event, reason, by))


def quarantine(config: Config, args: argparse.Namespace) -> int:
    """`quarantine`: through the daemon (its user and root only: the elements are personal data), else from
    the journal read-only; `--discard` through the daemon, else in the journal under its lock."""
    from urllib.parse import urlencode

    from daemon.quarantine import read_quarantine, render_quarantine

    if args.discard is not None:
        return _quarantine_discard(config, args)
    query = urlencode(
        {
            k: v
            for k, v in {
                "limit": args.limit,
                "discarded": "1" if args.discarded else None,
                "whole": "1" if args.json else None,
            }.items()
            if v
        }
    )
    try:
        answer = asyncio.run(request_status(config.status.socket, "GET", "/quarantine?" + query, timeout_s=60))
    except StatusUnreachable:
        try:
            answer = read_quarantine(config.journal.path, args.limit, discarded=args.discarded, whole=args.json)
        except JournalError as exc:
            print(f"chatledger: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(render_quarantine(answer, args.discarded, f"--config {args.config}"))
    return EXIT_OK


def _quarantine_discard(config: Config, args: argparse.Namespace) -> int:
    from urllib.parse import urlencode

    from daemon.quarantine import discard_problem, discarded_text

    element = int(args.discard) if args.discard else None
    query = urlencode(
        {
            k: v
            for k, v in {
                "id": element,
                "all": "1" if args.all else None,
                "reason": args.reason,
                "operator": os.environ.get("SUDO_USER"),
            }.items()
            if v is not None
        }
    )
    try:
        answer = asyncio.run(
            request_status(config.status.socket, "POST", "/quarantine/discard?" + query, timeout_s=300)
        )
        where = "through the running daemon"
    except StatusUnreachable:
        try:
            answer = _quarantine_discard_offline(config, element, args.reason)
        except JournalError as exc:
            print(f"chatledger: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        where = "daemon not running"
    if args.json:
        print(json.dumps({**answer, "where": where}, indent=2))
    problem = discard_problem(answer, element)
    if problem:
        print(f"chatledger: {problem}", file=sys.stderr)
        return EXIT_FAILURE
    if not args.json:
        print(discarded_text(answer, where))
    return EXIT_OK


def _quarantine_discard_offline(config: Config, element: int | None, reason: str) -> dict[str, Any]:
    from daemon.operations import offline

    by = current_operator()
    setup_logging("WARNING", config.log.json_)
    return asyncio.run(offline.discard_quarantine(config, element, reason, by))
