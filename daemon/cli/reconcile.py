"""`reconcile`: fetch back from SendPulse what the journal lacks, through the running daemon (its client and
budget), else with a client of its own."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC
from types import SimpleNamespace
from typing import Any

from daemon.cli.common import EXIT_BAD_WHEN, EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, through_daemon
from daemon.config import Config
from daemon.journal import JournalError
from daemon.logs import setup_logging
from daemon.status import StatusUnreachable

RECONCILE_TIMEOUT = 24 * 3600.0  # a window of weeks over a busy account pages for hours at 5 requests/s


def reconcile(config: Config, args: argparse.Namespace) -> int:
    """`reconcile`: through the running daemon, else directly on the journal."""
    from datetime import datetime
    from urllib.parse import urlencode

    from daemon.params import BadParameter, reconcile_since
    from daemon.records import iso

    try:
        since = reconcile_since(args.since, datetime.now(UTC))
    except BadParameter as exc:
        print(f"chatledger: {exc}", file=sys.stderr)
        return EXIT_BAD_WHEN
    if not config.sendpulse.enabled:
        print(
            f"chatledger: [sendpulse] client_id is empty (or SENDPULSE_CLIENT_ID unset) in {args.config}: "
            "reconciliation is not configured",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    progress = _reconcile_progress(sys.stderr)
    bot_ids = [args.bot] if args.bot else config.sendpulse.bot_ids
    query = urlencode({k: v for k, v in {"since": iso(since), "bot": args.bot}.items() if v})
    try:
        try:
            # with the daemon running, it reconciles with its own journal and SendPulse budget: no second
            # client competes for the account's requests
            answer = through_daemon(
                config,
                "/reconcile?" + query,
                RECONCILE_TIMEOUT,
                (lambda line: progress(SimpleNamespace(**line))) if progress else None,
            )
        except StatusUnreachable:
            answer = {"report": _reconcile_offline(config, since, bot_ids, progress).as_dict()}
    except JournalError as exc:
        print(f"chatledger: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        if progress:
            progress(None)
    if answer.get("not_configured"):
        print(f"chatledger: {answer['error']}", file=sys.stderr)
        return EXIT_CONFIG
    if "report" not in answer:
        print(
            f"chatledger: reconcile stopped: {answer.get('error', 'no report')}; what was added stays, run it "
            "again to go on",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    report = answer["report"]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"reconciled {report['since']} to {report['until']} in {config.journal.path}: "
            f"{report['bots']} bot(s), {report['chats']} chat(s), {report['seen']} message(s) seen, "
            f"{report['added']} added, {report['present']} already present, "
            f"{report.get('statuses', 0)} delivery status(es) learned"
        )
        if report["skipped_contacts"]:
            print(f"{report['skipped_contacts']} contact(s) gone from SendPulse since they were listed: skipped")
        if report["unreadable"]:
            print(f"{report['unreadable']} message(s) without an id or a direction: not journaled")
    if report["error"]:
        print(
            f"chatledger: SendPulse could not be read ({report['state']}): {report['error']}; the "
            f"{report['added']} message(s) added stay, run it again to go on",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


def _reconcile_progress(stream: Any) -> Any:
    """A line on a terminal, rewritten after each chat (called with None at the end); None off a terminal."""
    if not stream.isatty():
        return None

    def show(report: Any) -> None:
        if report is None:
            stream.write("\r\x1b[K")
        else:
            stream.write(f"\r\x1b[K{report.chats} chat(s), {report.seen} seen, {report.added} added")
        stream.flush()

    return show


def _reconcile_offline(config: Config, since: Any, bot_ids: Sequence[str], progress: Any) -> Any:
    from daemon.operations import offline

    setup_logging("ERROR", config.log.json_)
    return asyncio.run(offline.reconcile(config, since, bot_ids, progress))
