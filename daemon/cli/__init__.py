"""The `chatledger` command: argument parsing, then one command module's handler and its exit code.

Each command module translates: it asks the running daemon over the status socket, else runs the same
operation itself (daemon.operations), and prints the answer."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daemon import __version__
from daemon.cli import deliveries, people, reconcile, recover, service
from daemon.cli.common import EXIT_BAD_WHEN, EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from daemon.config import CONFIG_ENV, ConfigError, load_config
from daemon.status import StatusRefused

__all__ = ["EXIT_BAD_WHEN", "EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "config_path", "main"]

DEFAULT_CONFIG = Path("/etc/chatledger/config.toml")


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on EXIT_USAGE rather than 2."""

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def config_path(given: Path | None, environ: Any = os.environ) -> Path | None:
    """--config, else $CHATLEDGER_CONFIG, else /etc/chatledger/config.toml when it exists."""
    if given is not None:
        return given
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="chatledger",
        description="Journal SendPulse webhooks durably and deliver them to PostgreSQL and Airtable.",
    )
    parser.add_argument("--version", action="version", version=f"chatledger {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--config",
            type=Path,
            metavar="PATH",
            help=f"the TOML config file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
        )
        return sub

    command("run", "run the daemon in the foreground (systemd runs this)")
    command("check-config", "validate the config (file and environment) and print it, secrets hidden")
    status = command("status", "show what the running daemon holds; exit 0 healthy, 1 degraded, 2 unreachable")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    top = command(
        "top", "a live view of the running daemon (intake, sinks, backlog, Airtable budget, errors); Ctrl-C quits"
    )
    top.add_argument("--interval", type=float, default=1.0, help="seconds between frames (default 1)")
    top.add_argument("--count", type=int, default=0, help="stop after this many frames (default: until Ctrl-C)")
    command("sync", "ask the running daemon to replay pending deliveries now (same as SIGHUP)")
    command("migrate", "create or upgrade the PostgreSQL schema, then exit")
    replay = command(
        "replay",
        "re-queue deliveries (dead letters, or everything since a date, or one event), "
        "then replay now; works with the daemon running or stopped",
    )
    replay.add_argument("--dead", action="store_true", help="re-queue the dead letters")
    replay.add_argument("--sink", choices=("postgres", "airtable"), help="only this sink (default: all enabled)")
    replay.add_argument(
        "--since",
        type=_since,
        metavar="DATE",
        help="re-queue every delivery of the events received since DATE (ISO 8601, UTC unless an "
        "offset is given), e.g. after restoring a database backup; with --dead, dead letters only",
    )
    replay.add_argument(
        "--event", metavar="ID", help="re-queue this event (journal id, dedup key or SendPulse message id)"
    )
    dead = command(
        "dead",
        "list the dead letters (deliveries no retry can fix) with their reasons, or give them up "
        "(--discard): recorded with who, when and why, no longer counted as a problem",
    )
    dead.add_argument("--sink", choices=("postgres", "airtable"), help="only this sink (default: all enabled)")
    dead.add_argument("--limit", type=int, default=100, help="at most this many per sink (default 100)")
    dead.add_argument("--json", action="store_true", help="print JSON")
    dead.add_argument("--discarded", action="store_true", help="list the discarded ones, with who, when and why")
    dead.add_argument(
        "--discard",
        nargs="?",
        const="",
        metavar="ID",
        help="give up the dead letters of this event (journal id, dedup key or SendPulse message id), "
        "or with --all every one; needs --reason; works with the daemon running or stopped",
    )
    dead.add_argument("--all", action="store_true", help="with --discard: every open dead letter (of --sink)")
    dead.add_argument("--reason", type=_reason, metavar="TEXT", help="why they are given up (kept with them)")
    quarantine = command(
        "quarantine",
        "list the webhook elements kept in the journal's quarantine (rejected: id, "
        "when, why, a preview), or give them up (--discard): recorded with who, when "
        "and why, no longer listed nor counted as open",
    )
    quarantine.add_argument(
        "--limit", type=_limit, default=100, metavar="N", help="at most this many, oldest first (default 100)"
    )
    quarantine.add_argument("--json", action="store_true", help="print JSON, each element whole as received (raw)")
    quarantine.add_argument("--discarded", action="store_true", help="list the discarded ones, with who, when and why")
    quarantine.add_argument(
        "--discard",
        nargs="?",
        const="",
        metavar="ID",
        help="give up this element (its id, as listed), or with --all every open one; needs "
        "--reason; works with the daemon running or stopped",
    )
    quarantine.add_argument("--all", action="store_true", help="with --discard: every open element")
    quarantine.add_argument("--reason", type=_element_reason, metavar="TEXT", help="why it is given up (kept with it)")
    journal = command(
        "journal",
        "`check`: SQLite integrity, schema version, deliveries by sink and state, "
        "rows without events and events without rows; exit 1 on any problem",
    )
    journal.add_argument("action", choices=("check",))
    journal.add_argument(
        "--repair",
        action="store_true",
        help="add missing delivery rows as pending, drop rows whose event is gone (daemon stopped)",
    )
    journal.add_argument("--json", action="store_true", help="print JSON")
    airtable = command(
        "airtable",
        "set up or check the Airtable base: `init` creates missing tables and fields, "
        "`check` prints the differences (exit 1 when delivery is held or a field is "
        "left out)",
    )
    airtable.add_argument("action", choices=("init", "check"))
    recover = command(
        "recover",
        "copy Airtable's rows back into PostgreSQL (rows PostgreSQL lost that the journal no longer holds); idempotent",
    )
    which = recover.add_mutually_exclusive_group(required=True)
    which.add_argument("--conversation", metavar="ID", help="one conversation (its ConversationId)")
    which.add_argument("--phone", metavar="PHONE", help="every conversation of this phone (any formatting)")
    which.add_argument("--since", type=_since, metavar="DATE", help="rows with activity since DATE (ISO 8601)")
    which.add_argument("--all", action="store_true", help="every row of the three tables")
    which.add_argument(
        "--undo",
        metavar="RUN",
        help="put back the PostgreSQL rows recover run RUN replaced "
        "(its report names it), where nothing changed them since",
    )
    recover.add_argument(
        "--prefer",
        choices=("postgres", "airtable"),
        default="postgres",
        help="whose values win when a row is in both and differs (default: postgres); an empty "
        "Airtable field never replaces a value",
    )
    recover.add_argument("--dry-run", action="store_true", help="read and compare, write nothing: what a run would do")
    recover.add_argument(
        "--diff",
        action="store_true",
        help="list each conflicting row with the fields that differ (Airtable | PostgreSQL)",
    )
    recover.add_argument("--json", action="store_true", help="print the summary as JSON")
    forget = command(
        "forget",
        "erase one person's data from the journal, PostgreSQL and Airtable (LGPD), keep an "
        "audit entry (the time, the counts, the last four digits, --reference) and print the "
        "report",
    )
    forget.add_argument("--phone", required=True, metavar="PHONE", help="the phone number (any formatting)")
    forget.add_argument(
        "--reference",
        metavar="TEXT",
        help="kept in the audit entry, e.g. the request's ticket id (at most 100 characters)",
    )
    forget.add_argument("--json", action="store_true", help="print the report as JSON")
    forget.add_argument(
        "--dry-run",
        action="store_true",
        help="say what would be erased in each store; erase nothing, write no audit entry",
    )
    forget.add_argument(
        "--yes", action="store_true", help="do not ask first (on a terminal, forget shows what it would erase and asks)"
    )
    reconcile = command(
        "reconcile",
        "fetch back from SendPulse's API the messages of the window that the journal "
        "lacks (webhooks never sent or lost) and journal them as ordinary events; "
        "exit 0 done, 2 bad WHEN, 78 [sendpulse] not configured, 1 SendPulse unreadable",
    )
    reconcile.add_argument(
        "--since",
        required=True,
        metavar="WHEN",
        help="an ISO 8601 date or date-time (2026-11-30, 2026-11-30T08:00:00-03:00; no offset: "
        "UTC) or a duration back from now (90s, 30m, 2h, 7d)",
    )
    reconcile.add_argument(
        "--bot",
        metavar="ID",
        help="only this WhatsApp bot (default: [sendpulse] bot_ids, else every bot of the account)",
    )
    reconcile.add_argument("--json", action="store_true", help="print the report as JSON")
    show = command(
        "show",
        "one conversation (or each of a phone's) with its interactions and escalations, from "
        "PostgreSQL, else the journal, else Airtable, saying which answered; exit 1 when none knows it",
    )
    shown = show.add_mutually_exclusive_group(required=True)
    shown.add_argument("--conversation", metavar="ID", help="its id (ConversationId)")
    shown.add_argument("--phone", metavar="PHONE", help="every conversation of this phone (any formatting)")
    show.add_argument(
        "--limit",
        default="1000",
        metavar="N",
        help="at most this many interactions and escalations a conversation, oldest first (default "
        "1000, at most 10000)",
    )
    show.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    misuse = _discard_usage(args, DISCARDS[args.command]) if args.command in DISCARDS else None
    if misuse:
        parser.error(misuse)
    args.config = config_path(args.config)
    if args.config is None:
        print(
            f"chatledger {args.command}: no config: give --config PATH, or set {CONFIG_ENV}, or install "
            f"{DEFAULT_CONFIG}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"chatledger: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    handler = {
        "run": service.run,
        "check-config": service.check_config,
        "status": service.status,
        "sync": service.sync,
        "migrate": service.migrate,
        "replay": deliveries.replay,
        "airtable": service.airtable,
        "dead": deliveries.dead,
        "quarantine": deliveries.quarantine,
        "journal": service.journal,
        "recover": recover.recover,
        "top": service.top,
        "forget": people.forget,
        "show": people.show,
        "reconcile": reconcile.reconcile,
    }[args.command]
    try:
        return handler(config, args)
    except StatusRefused as exc:  # a bad parameter or a caller it does not allow: never done offline instead
        print(f"chatledger: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:  # `chatledger status | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _since(text: str) -> str:
    """A DATE argument as journal time text (UTC ISO 8601 with ms and Z)."""
    from daemon.params import BadParameter, since

    try:
        return since(text)
    except BadParameter as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _reason(text: str) -> str:
    from daemon.params import BadParameter, reason

    try:
        return reason(text)
    except BadParameter as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--reason ")) from None


def _element_reason(text: str) -> str:
    from daemon.params import BadParameter, reason

    try:
        return reason(text, "these elements")
    except BadParameter as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--reason ")) from None


def _limit(text: str) -> int:
    from daemon.params import BadParameter, limit
    from daemon.status import QUARANTINE_LIMIT_MAX

    try:
        return limit(text, QUARANTINE_LIMIT_MAX)
    except BadParameter as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--limit ")) from None


DISCARDS = {"dead": "one event ID", "quarantine": "one element id"}  # what `--discard` takes


def _discard_usage(args: argparse.Namespace, takes: str) -> str | None:
    """What is wrong with how `dead`'s or `quarantine`'s options were combined, or None."""
    from daemon.params import BadParameter, element_id

    if args.discard is None:
        return "--all and --reason go with --discard" if args.all or args.reason is not None else None
    if bool(args.discard) == args.all:
        return f"--discard takes {takes}, or --all"
    if args.reason is None:
        return "--discard needs --reason TEXT: why they are given up (kept with them)"
    if args.discarded:
        return "--discarded lists; it does not go with --discard"
    if args.command == "quarantine" and args.discard:
        try:
            element_id(args.discard)
        except BadParameter as exc:
            return str(exc)
    return None
