"""The `chatledger` command: argument parsing, one asyncio.run(), exit codes."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from loguru import logger

from daemon import __version__
from daemon.config import CONFIG_ENV, Config, ConfigError, load_config
from daemon.journal import JournalError
from daemon.logs import setup_logging
from daemon.status import (
    EXIT_UNREACHABLE,
    StatusRefused,
    StatusUnreachable,
    exit_code_for,
    render,
    request_status,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h; systemd's RestartPreventExitStatus names it
EXIT_USAGE = 64  # EX_USAGE: a bad command line (2 is `status`'s "no daemon answers")
EXIT_BAD_WHEN = 2  # `reconcile --since`: the contract
DEFAULT_CONFIG = Path("/etc/chatledger/config.toml")


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on EXIT_USAGE rather than 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _terminal(stream: Any) -> Any:
    """daemon.terminal's rich output when `stream` is a terminal; None: plain text, as scripts and logs read it."""
    if not stream.isatty():
        return None
    from daemon.terminal import Terminal  # rich's import is not needed off a terminal

    return Terminal.on(stream)


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
        sub.add_argument("--config", type=Path, metavar="PATH",
                         help=f"the TOML config file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})")
        return sub

    command("run", "run the daemon in the foreground (systemd runs this)")
    command("check-config", "validate the config (file and environment) and print it, secrets hidden")
    status = command("status", "show what the running daemon holds; exit 0 healthy, 1 degraded, 2 unreachable")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    top = command("top", "a live view of the running daemon (intake, sinks, backlog, Airtable budget, errors); "
                         "Ctrl-C quits")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between frames (default 1)")
    top.add_argument("--count", type=int, default=0, help="stop after this many frames (default: until Ctrl-C)")
    command("sync", "ask the running daemon to replay pending deliveries now (same as SIGHUP)")
    command("migrate", "create or upgrade the PostgreSQL schema, then exit")
    replay = command("replay", "re-queue deliveries (dead letters, or everything since a date, or one event), "
                               "then replay now; works with the daemon running or stopped")
    replay.add_argument("--dead", action="store_true", help="re-queue the dead letters")
    replay.add_argument("--sink", choices=("postgres", "airtable"), help="only this sink (default: all enabled)")
    replay.add_argument("--since", type=_since, metavar="DATE",
                        help="re-queue every delivery of the events received since DATE (ISO 8601, UTC unless an "
                             "offset is given), e.g. after restoring a database backup; with --dead, dead letters only")
    replay.add_argument("--event", metavar="ID", help="re-queue this event (journal id, dedup key or SendPulse message id)")
    dead = command("dead", "list the dead letters (deliveries no retry can fix) with their reasons, or give them up "
                           "(--discard): recorded with who, when and why, no longer counted as a problem")
    dead.add_argument("--sink", choices=("postgres", "airtable"), help="only this sink (default: all enabled)")
    dead.add_argument("--limit", type=int, default=100, help="at most this many per sink (default 100)")
    dead.add_argument("--json", action="store_true", help="print JSON")
    dead.add_argument("--discarded", action="store_true", help="list the discarded ones, with who, when and why")
    dead.add_argument("--discard", nargs="?", const="", metavar="ID",
                      help="give up the dead letters of this event (journal id, dedup key or SendPulse message id), "
                           "or with --all every one; needs --reason; works with the daemon running or stopped")
    dead.add_argument("--all", action="store_true", help="with --discard: every open dead letter (of --sink)")
    dead.add_argument("--reason", type=_reason, metavar="TEXT", help="why they are given up (kept with them)")
    quarantine = command("quarantine", "list the webhook elements kept in the journal's quarantine (rejected: id, "
                                       "when, why, a preview), or give them up (--discard): recorded with who, when "
                                       "and why, no longer listed nor counted as open")
    quarantine.add_argument("--limit", type=_limit, default=100, metavar="N",
                            help="at most this many, oldest first (default 100)")
    quarantine.add_argument("--json", action="store_true", help="print JSON, each element whole as received (raw)")
    quarantine.add_argument("--discarded", action="store_true", help="list the discarded ones, with who, when and why")
    quarantine.add_argument("--discard", nargs="?", const="", metavar="ID",
                            help="give up this element (its id, as listed), or with --all every open one; needs "
                                 "--reason; works with the daemon running or stopped")
    quarantine.add_argument("--all", action="store_true", help="with --discard: every open element")
    quarantine.add_argument("--reason", type=_element_reason, metavar="TEXT", help="why it is given up (kept with it)")
    journal = command("journal", "`check`: SQLite integrity, schema version, deliveries by sink and state, "
                                 "rows without events and events without rows; exit 1 on any problem")
    journal.add_argument("action", choices=("check",))
    journal.add_argument("--repair", action="store_true",
                         help="add missing delivery rows as pending, drop rows whose event is gone (daemon stopped)")
    journal.add_argument("--json", action="store_true", help="print JSON")
    airtable = command("airtable", "set up or check the Airtable base: `init` creates missing tables and fields, "
                                   "`check` prints the differences (exit 1 when delivery is held or a field is "
                                   "left out)")
    airtable.add_argument("action", choices=("init", "check"))
    recover = command("recover", "copy Airtable's rows back into PostgreSQL (rows PostgreSQL lost that the journal "
                                 "no longer holds); idempotent")
    which = recover.add_mutually_exclusive_group(required=True)
    which.add_argument("--conversation", metavar="ID", help="one conversation (its ConversationId)")
    which.add_argument("--phone", metavar="PHONE", help="every conversation of this phone (any formatting)")
    which.add_argument("--since", type=_since, metavar="DATE", help="rows with activity since DATE (ISO 8601)")
    which.add_argument("--all", action="store_true", help="every row of the three tables")
    which.add_argument("--undo", metavar="RUN", help="put back the PostgreSQL rows recover run RUN replaced "
                                                     "(its report names it), where nothing changed them since")
    recover.add_argument("--prefer", choices=("postgres", "airtable"), default="postgres",
                         help="whose values win when a row is in both and differs (default: postgres); an empty "
                              "Airtable field never replaces a value")
    recover.add_argument("--dry-run", action="store_true", help="read and compare, write nothing: what a run would do")
    recover.add_argument("--diff", action="store_true",
                         help="list each conflicting row with the fields that differ (Airtable | PostgreSQL)")
    recover.add_argument("--json", action="store_true", help="print the summary as JSON")
    forget = command("forget", "erase one person's data from the journal, PostgreSQL and Airtable (LGPD), keep an "
                               "audit entry (the time, the counts, the last four digits, --reference) and print the "
                               "report")
    forget.add_argument("--phone", required=True, metavar="PHONE", help="the phone number (any formatting)")
    forget.add_argument("--reference", metavar="TEXT",
                        help="kept in the audit entry, e.g. the request's ticket id (at most 100 characters)")
    forget.add_argument("--json", action="store_true", help="print the report as JSON")
    forget.add_argument("--dry-run", action="store_true",
                        help="say what would be erased in each store; erase nothing, write no audit entry")
    forget.add_argument("--yes", action="store_true",
                        help="do not ask first (on a terminal, forget shows what it would erase and asks)")
    reconcile = command("reconcile", "fetch back from SendPulse's API the messages of the window that the journal "
                                     "lacks (webhooks never sent or lost) and journal them as ordinary events; "
                                     "exit 0 done, 2 bad WHEN, 78 [sendpulse] not configured, 1 SendPulse unreadable")
    reconcile.add_argument("--since", required=True, metavar="WHEN",
                           help="an ISO 8601 date or date-time (2026-11-30, 2026-11-30T08:00:00-03:00; no offset: "
                                "UTC) or a duration back from now (90s, 30m, 2h, 7d)")
    reconcile.add_argument("--bot", metavar="ID", help="only this WhatsApp bot (default: [sendpulse] bot_ids, else "
                                                       "every bot of the account)")
    reconcile.add_argument("--json", action="store_true", help="print the report as JSON")
    show = command("show", "one conversation (or each of a phone's) with its interactions and escalations, from "
                           "PostgreSQL, else the journal, else Airtable, saying which answered; exit 1 when none knows it")
    shown = show.add_mutually_exclusive_group(required=True)
    shown.add_argument("--conversation", metavar="ID", help="its id (ConversationId)")
    shown.add_argument("--phone", metavar="PHONE", help="every conversation of this phone (any formatting)")
    show.add_argument("--limit", default="1000", metavar="N",
                      help="at most this many interactions and escalations a conversation, oldest first (default "
                           "1000, at most 10000)")
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
        print(f"chatledger {args.command}: no config: give --config PATH, or set {CONFIG_ENV}, or install "
              f"{DEFAULT_CONFIG}", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"chatledger: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    handler = {
        "run": _run,
        "check-config": _check_config,
        "status": _status,
        "sync": _sync,
        "migrate": _migrate,
        "replay": _replay,
        "airtable": _airtable,
        "dead": _dead,
        "quarantine": _quarantine,
        "journal": _journal,
        "recover": _recover,
        "top": _top,
        "forget": _forget,
        "show": _show,
        "reconcile": _reconcile,
    }[args.command]
    try:
        return handler(config, args)
    except StatusRefused as exc:  # a bad parameter or a caller it does not allow: never done offline instead
        print(f"chatledger: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:  # `chatledger status | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (a dependency on Linux): webhooks cost less CPU each."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _run(config: Config, args: argparse.Namespace) -> int:
    from daemon.app import Daemon  # the daemon's imports are not needed by the quick commands

    setup_logging(config.log.level, config.log.json_)
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(Daemon(config, args.config).run())
    except JournalError as exc:
        logger.error("{}", exc)
        return EXIT_FAILURE
    except OSError as exc:
        logger.error("cannot start: {}", exc)
        return EXIT_FAILURE


def _check_config(config: Config, args: argparse.Namespace) -> int:
    print(f"{args.config}: OK")
    print(json.dumps(config.redacted(), indent=2))
    sinks = ", ".join(config.enabled_sinks) or "none (journal only)"
    print(f"sinks enabled: {sinks}")
    for warning in config.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _status(config: Config, args: argparse.Namespace) -> int:
    try:
        snapshot = asyncio.run(request_status(config.status.socket))
    except StatusUnreachable as exc:
        print(f"chatledger: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    terminal = None if args.json else _terminal(sys.stdout)
    if terminal:
        terminal.status(snapshot)
    else:
        print(json.dumps(snapshot, indent=2) if args.json else render(snapshot))
    return exit_code_for(snapshot)


def _sync(config: Config, args: argparse.Namespace) -> int:
    try:
        answer = asyncio.run(request_status(config.status.socket, "POST", "/sync"))
    except StatusUnreachable as exc:
        print(f"chatledger: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not answer.get("sinks"):
        print("chatledger: no sink is enabled in the running daemon (journal only): nothing to replay",
              file=sys.stderr)
        return EXIT_CONFIG
    print(f"replay triggered ({', '.join(answer['sinks'])})")
    return EXIT_OK


def _migrate(config: Config, args: argparse.Namespace) -> int:
    if not config.postgres.enabled:
        print("chatledger: [postgres] dsn is empty (or DATABASE_URL unset): nothing to migrate", file=sys.stderr)
        return EXIT_CONFIG
    from daemon.sinks.base import SinkError
    from daemon.sinks.postgres import migrate_database

    schema = config.postgres.schema_
    try:
        before, after = asyncio.run(migrate_database(config.postgres.dsn.get_secret_value(), schema))
    except SinkError as exc:
        print(f"chatledger: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    change = "already up to date" if before == after else f"migrated from version {before}"
    print(f"PostgreSQL schema {schema} at version {after} ({change})")
    return EXIT_OK


def _since(text: str) -> str:
    """A DATE argument as journal time text (UTC ISO 8601 with ms and Z)."""
    from daemon.params import BadParameter, since

    try:
        return since(text)
    except BadParameter as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _replay(config: Config, args: argparse.Namespace) -> int:
    from urllib.parse import urlencode

    from daemon.journal import Requeue

    if not config.enabled_sinks:
        print(f"chatledger: no sink is enabled in {args.config} (journal only): nothing to replay; configure "
              "[postgres] or [airtable] first (what the journal holds is delivered at the next start)", file=sys.stderr)
        return EXIT_CONFIG
    if args.sink and args.sink not in config.enabled_sinks:
        print(f"chatledger: sink {args.sink} is not enabled in {args.config}", file=sys.stderr)
        return EXIT_CONFIG
    selection = (Requeue(dead_only=args.dead or not (args.since or args.event), since=args.since, event=args.event)
                 if (args.dead or args.since or args.event) else None)
    params = {"sink": args.sink, "dead": "1" if selection and selection.dead_only else None,
              "since": args.since, "event": args.event}
    query = urlencode({k: v for k, v in params.items() if v})
    try:
        answer = asyncio.run(request_status(config.status.socket, "POST", "/replay?" + query))
    except StatusUnreachable as exc:
        if selection is None:
            print(f"chatledger: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
        # No daemon: re-queue in the journal directly; the next start delivers them.
        return _requeue_offline(config, args.sink, selection)
    terminal = _terminal(sys.stdout) if selection else None
    if terminal:
        terminal.requeued({sink: answer.get("requeued", {}).get(sink, 0) for sink in answer.get("sinks", [])},
                          selection.describe(), "replay triggered")
    else:
        for sink in answer.get("sinks", []):
            count = answer.get("requeued", {}).get(sink, 0)
            print(f"{sink}: {count} {selection.describe()} re-queued, replay triggered" if selection
                  else f"{sink}: replay triggered")
    return _requeued_something(selection, answer.get("requeued", {}))


def _requeued_something(selection: Any, counts: dict[str, int]) -> int:
    """A selection that matched nothing is said, and is no success."""
    if selection is None or any(counts.values()):
        return EXIT_OK
    print(f"chatledger: nothing re-queued: no {selection.describe()} to re-queue (not in the journal, or already "
          "pending)", file=sys.stderr)
    return EXIT_FAILURE


def _requeue_offline(config: Config, sink: str | None, selection: Any) -> int:
    from daemon.journal import Journal

    async def requeue() -> dict[str, int]:
        journal = await Journal.open(config.journal.path, config.enabled_sinks)
        try:
            return {name: await journal.requeue(name, selection) for name in ([sink] if sink else config.enabled_sinks)}
        finally:
            await journal.close()

    setup_logging("WARNING", config.log.json_)
    try:
        counts = asyncio.run(requeue())
    except JournalError as exc:
        print(f"chatledger: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    terminal = _terminal(sys.stdout)
    if terminal:
        terminal.requeued(counts, selection.describe(),
                          f"in {config.journal.path} (daemon not running; they are delivered when it starts)")
    else:
        for name, count in counts.items():
            print(f"{name}: {count} {selection.describe()} re-queued in {config.journal.path} (daemon not running; "
                  "they are delivered when it starts)")
    return _requeued_something(selection, counts)


def _airtable(config: Config, args: argparse.Namespace) -> int:
    """`airtable init` / `airtable check`: through the running daemon (its budget for the base), or on
    a budget of its own when no daemon answers."""
    from daemon.sinks.airtable import AirtableSink, set_up_base
    from daemon.sinks.base import SinkError

    if not config.airtable.enabled:
        print("chatledger: [airtable] api_key is empty (or AIRTABLE_API_KEY unset): nothing to do", file=sys.stderr)
        return EXIT_CONFIG

    async def offline() -> dict[str, Any]:
        sink = AirtableSink.from_config(config.airtable, None)
        try:
            return await set_up_base(sink.client, sink.tables, create=args.action == "init")
        except SinkError as exc:
            return {"error": str(exc)}
        finally:
            await sink.close()

    try:
        result = asyncio.run(request_status(config.status.socket, "POST", f"/airtable?action={args.action}",
                                            timeout_s=300))
        where = "through the running daemon"
    except StatusUnreachable:
        setup_logging("WARNING", config.log.json_)
        result = asyncio.run(offline())
        where = "daemon not running"
    if "error" in result:
        print(f"chatledger: {result['error']}", file=sys.stderr)
        return EXIT_FAILURE
    for line in result["done"]:
        print(line)
    if result.get("fields", config.airtable.fields) != config.airtable.fields:
        print(f"note: the running daemon reads [airtable.fields] as {result['fields']}, this config as "
              f"{config.airtable.fields}: SIGHUP the daemon to apply the file's")
    for note in result["notes"]:
        print(f"note: {note}")
    for warning in result.get("warnings", []):
        print(f"warning: {warning}")
    for problem in result["problems"]:
        print(f"difference: {problem}")
    if result["problems"]:
        print(f"base {config.airtable.base_id}: Airtable delivery is held until the differences are fixed ({where})")
        return EXIT_FAILURE
    if result.get("warnings"):
        print(f"base {config.airtable.base_id}: chatledger delivers, leaving out what the warnings name ({where})")
        return EXIT_FAILURE
    if result["notes"]:
        print(f"base {config.airtable.base_id}: chatledger writes every field, as the notes say ({where})")
    else:
        print(f"base {config.airtable.base_id}: tables and fields match what chatledger writes ({where})")
    return EXIT_OK


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


def _dead(config: Config, args: argparse.Namespace) -> int:
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
    terminal = _terminal(sys.stdout)
    if terminal:
        terminal.dead(letters, args.discarded)
    else:
        for sink, rows in letters.items():
            for row in rows:
                when = row["updated_at"] or "?"
                if args.discarded:
                    print(f"{sink:<9} event {row['event_id']:<8} {row['title']:<18} discarded {row['discarded_at']} "
                          f"by {row['discarded_by']}  {row['dedup_key']}\n{'':<9} reason: {row['reason']}\n"
                          f"{'':<9} {row['last_error']}")
                else:
                    print(f"{sink:<9} event {row['event_id']:<8} {row['title']:<18} {when}  {row['dedup_key']}\n"
                          f"{'':<9} {row['last_error']}")
    if args.discarded:
        print(f"{total} discarded dead letters; `chatledger replay --event ID` delivers one after all")
    else:
        print(f"{total} dead letters; after fixing the cause: chatledger replay --dead --config {args.config}; to give "
              f"them up: chatledger dead --discard ID|--all --reason TEXT --config {args.config}")
    return EXIT_OK


def _discard(config: Config, args: argparse.Namespace) -> int:
    """`dead --discard ID|--all --reason TEXT`: through the daemon (owner or root only), else in the journal
    under its lock."""
    from urllib.parse import urlencode

    event = args.discard or None
    query = urlencode({k: v for k, v in {"sink": args.sink, "event": event, "all": "1" if args.all else None,
                                          "reason": args.reason, "operator": os.environ.get("SUDO_USER")}.items()
                       if v})
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
        print(f"{count} dead letter{'' if count == 1 else 's'} discarded by {answer['by']} at {answer['at']} "
              f"({where}): {answer['reason']}; `chatledger dead --discarded` lists them")
    return EXIT_OK


def _discard_problem(answer: dict[str, Any], event: str | None, sinks: str) -> str | None:
    """Why nothing was discarded, or None."""
    if answer["discarded"]:
        return None
    if event is None:
        return f"no dead letters to discard ({sinks})"
    if not answer["found"]:
        return (f"no event {event} in the journal (give a journal id, dedup key or SendPulse message id, as "
                "`chatledger dead` lists them)")
    if not answer["others"]:
        return f"event {event} has no delivery for {sinks}"
    states = ", ".join(f"{o['sink']} {o['state']}" for o in answer["others"])
    return f"event {event} is not a dead letter ({states}): nothing discarded"


def _operator() -> str:
    """Who runs this command, as the daemon would record them from its socket's peer."""
    import pwd

    from daemon.params import operator_name

    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = f"uid {os.geteuid()}"
    return operator_name(user, os.environ.get("SUDO_USER"))


def _discard_offline(config: Config, sink: str | None, event: str | None, reason: str) -> dict[str, Any]:
    from daemon.journal import Journal

    by = _operator()

    async def discard() -> dict[str, Any]:
        journal = await Journal.open(config.journal.path, config.enabled_sinks)
        try:
            return (await journal.discard([sink] if sink else list(config.enabled_sinks), event, reason, by)).as_dict()
        finally:
            await journal.close()

    setup_logging("WARNING", config.log.json_)
    return asyncio.run(discard())


def _quarantine(config: Config, args: argparse.Namespace) -> int:
    """`quarantine`: through the daemon (its user and root only: the elements are personal data), else from
    the journal read-only; `--discard` through the daemon, else in the journal under its lock."""
    from urllib.parse import urlencode

    from daemon.quarantine import read_quarantine, render_quarantine

    if args.discard is not None:
        return _quarantine_discard(config, args)
    query = urlencode({k: v for k, v in {"limit": args.limit, "discarded": "1" if args.discarded else None,
                                          "whole": "1" if args.json else None}.items() if v})
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
    query = urlencode({k: v for k, v in {"id": element, "all": "1" if args.all else None, "reason": args.reason,
                                          "operator": os.environ.get("SUDO_USER")}.items() if v is not None})
    try:
        answer = asyncio.run(request_status(config.status.socket, "POST", "/quarantine/discard?" + query,
                                            timeout_s=300))
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
    from daemon.journal import Journal
    from daemon.quarantine import discard_quarantined

    by = _operator()

    async def discard() -> dict[str, Any]:
        journal = await Journal.open(config.journal.path, config.enabled_sinks)
        try:
            return await discard_quarantined(journal, element, reason, by)
        finally:
            await journal.close()

    setup_logging("WARNING", config.log.json_)
    return asyncio.run(discard())


def _journal(config: Config, args: argparse.Namespace) -> int:
    from daemon.journal import check_journal

    try:
        report = check_journal(config.journal.path, list(config.enabled_sinks), repair=args.repair)
    except JournalError as exc:
        print(f"chatledger: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"journal {report.path}: schema v{report.schema_version}, {report.events} events, "
              f"integrity {'ok' if report.integrity == ['ok'] else 'FAILED'}")
        for sink, states in sorted(report.states.items()):
            print(f"  {sink:<9} " + ", ".join(f"{n} {state}" for state, n in sorted(states.items())))
        for line in report.repaired:
            print(f"repaired: {line}")
        for problem in report.problems:
            print(f"problem: {problem}")
        if not report.problems:
            print("no problems found")
    return EXIT_FAILURE if report.problems else EXIT_OK


def _stores_needed(config: Config, *stores: str) -> str | None:
    """Why the command cannot run with this config (a store it needs is not configured), or None."""
    for store in stores:
        if store == "postgres" and not config.postgres.enabled:
            return "[postgres] dsn is empty (or DATABASE_URL unset)"
        if store == "airtable" and not config.airtable.enabled:
            return "[airtable] api_key is empty (or AIRTABLE_API_KEY unset)"
    return None


def _progress_line(stream: Any) -> Any:
    """`recover`'s progress on a terminal, a line per table (fed each report as JSON data; stop() ends it);
    None otherwise."""
    terminal = _terminal(stream)
    return terminal.progress() if terminal else None


RECOVER_TIMEOUT = 24 * 3600.0
RECONCILE_TIMEOUT = 24 * 3600.0  # a window of weeks over a busy account pages for hours at 5 requests/s


def _recover(config: Config, args: argparse.Namespace) -> int:
    from urllib.parse import urlencode

    from daemon.recover import Selection

    if args.undo is not None:
        return _recover_undo(config, args)
    missing = _stores_needed(config, "postgres", "airtable")
    if missing:
        print(f"chatledger: recover reads Airtable and writes PostgreSQL: {missing}", file=sys.stderr)
        return EXIT_CONFIG
    phone = _phone_digits(args.phone) if args.phone else None
    if args.phone and not phone:
        return EXIT_USAGE
    try:
        selection = Selection(conversation=args.conversation, phone=phone, since=args.since, everything=args.all)
    except ValueError as exc:  # an empty --conversation: no selection is not "everything"
        print(f"chatledger: {exc}", file=sys.stderr)
        return EXIT_USAGE
    progress = _progress_line(sys.stderr)
    options = {"prefer": args.prefer, "dry_run": args.dry_run, "diff": args.diff}
    query = urlencode({k: v for k, v in {"conversation": args.conversation, "phone": phone, "since": args.since,
                                          "all": "1" if args.all else None, "prefer": args.prefer,
                                          "dry_run": "1" if args.dry_run else None,
                                          "diff": "1" if args.diff else None}.items() if v})

    async def through_daemon() -> dict[str, Any]:
        """With the daemon running, it recovers with its own Airtable budget: no second client competes
        for the base's 5 requests/s."""
        from daemon.status import stream_status

        last: dict[str, Any] = {}
        async for line in stream_status(config.status.socket, "/recover?" + query, RECOVER_TIMEOUT):
            if "progress" in line:
                if progress:
                    progress(line["progress"])
            else:
                last = line
        return last

    try:
        answer = asyncio.run(through_daemon())
        where = "through the running daemon"
    except StatusUnreachable:
        answer = _recover_offline(config, selection, options, progress)
        where = "daemon not running"
    finally:
        if progress:
            progress.stop()
    if answer.get("refused"):  # nothing was read or written: the reason says what to do
        print(f"chatledger: {answer['error']}", file=sys.stderr)
        return EXIT_FAILURE
    if "error" in answer or "report" not in answer:
        print(f"chatledger: recover stopped: {answer.get('error', 'no report')}; nothing written is lost, "
              "run it again to go on", file=sys.stderr)
        return EXIT_FAILURE
    report = answer["report"]
    nothing = all(t["read"] == 0 for t in report["tables"].values())
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_FAILURE if report["problems"] or nothing else EXIT_OK
    if nothing:
        for problem in report["problems"]:
            print(f"problem: {problem}")
        print(f"chatledger: nothing found in Airtable for {selection.describe()}: nothing was recovered",
              file=sys.stderr)
        return EXIT_FAILURE
    _print_recovered(report, selection.describe(), where, args.prefer, config.postgres.schema_)
    return EXIT_FAILURE if report["problems"] else EXIT_OK


def _print_recovered(report: dict[str, Any], what: str, where: str, prefer: str, schema: str) -> None:
    from daemon.sinks.postgres import quote_ident

    winner = "Airtable" if prefer == "airtable" else "PostgreSQL"
    dry = bool(report.get("dry_run"))
    if dry:
        print(f"dry run, nothing written: what recovering {what} from Airtable into PostgreSQL would do ({where}; "
              f"{winner} would win where they differ)")
    else:
        print(f"recovered {what} from Airtable into PostgreSQL ({where}; {winner} wins where they differ)")
    inserted, replaced = ("would insert", "would replace") if dry else ("inserted", "replaced")
    terminal = _terminal(sys.stdout)
    if terminal:
        terminal.recovered(report["tables"], inserted, replaced)
    else:
        print(f"  {'':<14}{'read':>8}{inserted:>{len(inserted) + 2}}{'present':>9}{'conflicting':>13}"
              f"{replaced:>{len(replaced) + 2}}{'unusable':>10}")
        for kind, t in report["tables"].items():
            print(f"  {kind:<14}{t['read']:>8}{t['inserted']:>{len(inserted) + 2}}{t['present']:>9}"
                  f"{t['conflicting']:>13}{t['replaced']:>{len(replaced) + 2}}{t['unusable']:>10}")
    built = report["tables"]["conversations"]["built"]
    if built:
        print(f"  {built} conversations were in neither store: {'would be ' if dry else ''}built from their "
              "interactions and escalations")
    if report.get("diffs"):
        print("differences (Airtable | PostgreSQL):")
        for diff in report["diffs"]:
            fields = "; ".join(f"{column} {_quoted(a)} | {_quoted(p)}" for column, (a, p) in diff["fields"].items())
            print(f"  {diff['table']} {diff['key']}: {fields}")
        if report.get("diffs_left_off"):
            print(f"  … and {report['diffs_left_off']} more rows (--json lists the same first rows)")
    if report.get("run_id"):
        print(f"the rows replaced are kept in {quote_ident(schema)}.recover_backup as run {report['run_id']}: "
              f"`chatledger recover --undo {report['run_id']}` puts them back")
    for problem in report["problems"]:
        print(f"problem: {problem}")


def _quoted(value: str | None) -> str:
    return "(empty)" if value is None else json.dumps(value, ensure_ascii=False)


def _recover_offline(config: Config, selection: Any, options: dict[str, Any], progress: Any) -> dict[str, Any]:
    from daemon.recover import Recovery, Unselectable
    from daemon.sinks.airtable import AirtableSink
    from daemon.sinks.base import SinkError
    from daemon.sinks.postgres_rows import PostgresRows

    setup_logging("WARNING", config.log.json_)

    async def run() -> dict[str, Any]:
        sink = AirtableSink.from_config(config.airtable, None)
        show = (lambda report: progress(report.as_dict(diffs=False))) if progress else None
        try:
            async with PostgresRows.open(config.postgres.dsn.get_secret_value(), config.postgres.schema_) as pg:
                report = await Recovery(sink.client, sink.tables, pg, progress=show, **options).run(selection)
            return {"report": report.as_dict()}
        except Unselectable as exc:
            return {"error": str(exc), "refused": True}
        except SinkError as exc:
            return {"error": str(exc)}
        finally:
            await sink.close()

    return asyncio.run(run())


def _recover_undo(config: Config, args: argparse.Namespace) -> int:
    """`recover --undo RUN`: in PostgreSQL alone, whether the daemon runs or not."""
    from daemon.sinks.base import SinkError
    from daemon.sinks.postgres import quote_ident
    from daemon.sinks.postgres_rows import PostgresRows

    given = [option for option, value in (("--dry-run", args.dry_run), ("--diff", args.diff),
                                          ("--prefer", args.prefer != "postgres")) if value]
    if given:
        print(f"chatledger recover: argument {given[0]}: not allowed with argument --undo", file=sys.stderr)
        return EXIT_USAGE
    missing = _stores_needed(config, "postgres")
    if missing:
        print(f"chatledger: recover --undo writes PostgreSQL: {missing}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging("WARNING", config.log.json_)
    backup = f"{quote_ident(config.postgres.schema_)}.recover_backup"

    async def run() -> dict[str, Any] | None:
        async with PostgresRows.open(config.postgres.dsn.get_secret_value(), config.postgres.schema_) as pg:
            return await pg.undo(args.undo)

    try:
        done = asyncio.run(run())
    except SinkError as exc:
        print(f"chatledger: recover --undo failed: {exc}; nothing was put back", file=sys.stderr)
        return EXIT_FAILURE
    if done is None:
        print(f"chatledger: nothing found: no recover run {args.undo!r} in {backup}", file=sys.stderr)
        return EXIT_FAILURE
    if done["undone_at"]:
        print(f"chatledger: recover run {args.undo} was undone already ({done['undone_at']}): nothing to put back",
              file=sys.stderr)
        return EXIT_FAILURE
    restored = done["restored"]
    if args.json:
        print(json.dumps(done, indent=2))
        return EXIT_OK if any(restored.values()) else EXIT_FAILURE
    if not any(restored.values()):
        print(f"chatledger: recover --undo {args.undo}: nothing put back: every value the run replaced was changed "
              "since (or its row is gone); the run stays undoable", file=sys.stderr)
        for left in done["left"]:
            print(f"  {left['table']} {left['key']}: {', '.join(left['columns'])} {left['why']}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"undid recover run {args.undo}: {sum(restored.values())} rows put back ("
          + ", ".join(f"{kind} {n}" for kind, n in restored.items()) + ")")
    for left in done["left"]:
        print(f"  {left['table']} {left['key']}: {', '.join(left['columns'])} {left['why']}, left as it is")
    return EXIT_OK


FORGET_TIMEOUT = 3600.0  # Airtable at 5 requests/s: a long history takes a while


def _phone_digits(text: str) -> str | None:
    """--phone as its digits; None, having said why, when they cannot be a phone number."""
    from daemon.params import BadParameter, phone_digits

    try:
        return phone_digits(text)
    except BadParameter as exc:
        print(f"chatledger: {exc}", file=sys.stderr)
        return None


def _forget(config: Config, args: argparse.Namespace) -> int:
    """`forget`: on a terminal, what would be erased is shown first and the operator asked (unless --yes);
    elsewhere (scripts) it erases at once, as it always did."""
    from daemon.journal import reference_problem

    phone = _phone_digits(args.phone)
    if not phone:
        return EXIT_USAGE
    problem = reference_problem(args.reference, phone) if args.reference is not None else None
    if problem:
        print(f"chatledger: --reference {problem}", file=sys.stderr)
        return EXIT_USAGE
    # Someone at a terminal is asked, even when the report goes to a pipe or is JSON (the likeliest runs
    # to keep a record); a script (stdin not a terminal) never is.
    ask = not (args.yes or args.dry_run) and sys.stdin.isatty()
    if args.dry_run or ask:
        answer = _forget_answer(config, phone, args.reference, dry_run=True)
        if args.json and args.dry_run:
            print(json.dumps(answer, indent=2))
        if answer.get("error"):
            print(f"chatledger: forget: {answer['error']}", file=sys.stderr)
            return EXIT_FAILURE
        if not (args.json and args.dry_run):
            out = sys.stdout if args.dry_run else sys.stderr  # the question's preview never mixes into the report
            print(f"dry run: nothing was erased; forget --phone ...{phone[-4:]} would erase:" if args.dry_run
                  else f"forget --phone ...{phone[-4:]} erases:", file=out)
            _print_stores(answer["stores"], out)
        for note in answer.get("notes") or ():
            print(f"chatledger: forget: {note}", file=sys.stderr)
        if args.dry_run:
            return EXIT_OK
        if not _confirmed("erase? [y/N] "):
            print("chatledger: forget: aborted: nothing was erased", file=sys.stderr)
            return EXIT_FAILURE
    answer = _forget_answer(config, phone, args.reference)
    if args.json:
        print(json.dumps(answer, indent=2))
    if answer.get("error") and not answer.get("stores"):
        print(f"chatledger: forget: {answer['error']}", file=sys.stderr)
        return EXIT_FAILURE
    if not args.json:
        reference = f", reference {args.reference}" if args.reference is not None else ""
        print(f"forgot phone ...{phone[-4:]} (audit entry at {answer['audit']['at']}{reference})")
        _print_stores(answer["stores"])
    for note in answer.get("notes") or ():
        print(f"chatledger: forget: {note}", file=sys.stderr)
    if not answer.get("complete", True):
        print(f"chatledger: forget is incomplete: {answer.get('error')}; run the same command again to finish",
              file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _forget_answer(config: Config, phone: str, reference: str | None, dry_run: bool = False) -> dict[str, Any]:
    """The report of `forget` (or of its dry run): through the daemon, else done here on the journal."""
    from urllib.parse import urlencode

    query = urlencode({"phone": phone} | ({"reference": reference} if reference is not None else {})
                      | ({"dry_run": "1"} if dry_run else {}))
    try:
        return asyncio.run(request_status(config.status.socket, "POST", f"/forget?{query}", timeout_s=FORGET_TIMEOUT))
    except StatusUnreachable:
        return _forget_offline(config, phone, reference, dry_run)  # no daemon: the journal is ours to open


def _print_stores(stores: dict[str, Any], out: Any = None) -> None:
    for store, counts in stores.items():
        text = counts if isinstance(counts, str) else ", ".join(f"{n} {what}" for what, n in counts.items())
        print(f"  {store:<9} {text}", file=out or sys.stdout)


def _confirmed(question: str) -> bool:
    """The operator's answer on the terminal (asked on stderr): y or yes; anything else (an empty line, Ctrl-D,
    Ctrl-C) is no."""
    sys.stderr.write(question)
    sys.stderr.flush()
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        answer = ""
    if not answer.endswith("\n"):
        sys.stderr.write("\n")
    return answer.strip().lower() in ("y", "yes")


def _forget_offline(config: Config, phone: str, reference: str | None, dry_run: bool = False) -> dict[str, Any]:
    from daemon.app import erasure_stores
    from daemon.forget import forget_phone
    from daemon.journal import Journal
    from daemon.sinks.base import SinkError

    setup_logging("WARNING", config.log.json_)

    async def run() -> dict[str, Any]:
        sink = None
        if config.airtable.enabled:
            from daemon.sinks.airtable import AirtableSink

            sink = AirtableSink.from_config(config.airtable, None)
        journal = await Journal.open(config.journal.path, config.enabled_sinks)
        try:
            return (await forget_phone(phone, journal, **erasure_stores(config, sink), reference=reference,
                                       dry_run=dry_run)).as_dict()
        except SinkError as exc:
            return {"error": f"{exc}; nothing was erased", "dry_run": dry_run}
        finally:
            await journal.close()
            if sink is not None:
                await sink.close()

    try:
        return asyncio.run(run())
    except JournalError as exc:
        return {"error": f"{exc}; nothing was erased", "dry_run": dry_run}


SHOW_TIMEOUT = 600.0  # Airtable at 5 requests/s, 100 records a request: 10,000 interactions take 20 s and more


def _show(config: Config, args: argparse.Namespace) -> int:
    from urllib.parse import urlencode

    from daemon import params
    from daemon.show import MAX_LIMIT, render

    try:
        conversation = params.conversation_id(args.conversation) if args.conversation is not None else None
        phone = params.phone_digits(args.phone) if args.phone is not None else None
        limit = params.limit(args.limit, MAX_LIMIT)
    except params.BadParameter as exc:
        print(f"chatledger show: {exc}", file=sys.stderr)
        return EXIT_USAGE
    query = urlencode({k: v for k, v in {"conversation": conversation, "phone": phone, "limit": limit}.items()
                       if v is not None})
    try:
        answer = asyncio.run(request_status(config.status.socket, "GET", "/show?" + query, timeout_s=SHOW_TIMEOUT))
        where = "read through the running daemon"
    except StatusUnreachable:
        answer = _show_offline(config, conversation, phone, limit)
        where = "read directly (daemon not running)"
    if args.json:
        print(json.dumps(answer, indent=2))
    if not answer["conversations"]:
        print(f"chatledger: {answer['error']}", file=sys.stderr)
        return EXIT_FAILURE
    if not args.json:
        print(f"{render(answer)}\n{where}")
    return EXIT_OK


def _show_offline(config: Config, conversation: str | None, phone: str | None, limit: int) -> dict[str, Any]:
    """The reads without a daemon: the journal read-only (no lock: a daemon may start meanwhile), PostgreSQL
    and Airtable from the config."""
    from daemon.app import postgres_rows
    from daemon.journal import JournalReader
    from daemon.reads import Stores
    from daemon.show import show

    setup_logging("WARNING", config.log.json_)

    async def run() -> dict[str, Any]:
        down: dict[str, str] = {}
        journal = sink = None
        try:
            journal = await JournalReader.open(config.journal.path)
        except JournalError as exc:
            down["journal"] = f"journal: {exc}"
        if config.airtable.enabled:
            from daemon.sinks.airtable import AirtableSink

            sink = AirtableSink.from_config(config.airtable, None)
        try:
            stores = Stores(journal, postgres_rows(config, migrate_schema=False),
                            lambda: (sink.client, sink.tables) if sink else None)
            return await show(stores, conversation=conversation, phone=phone, limit=limit, down=down)
        finally:
            if journal is not None:
                await journal.close()
            if sink is not None:
                await sink.close()

    return asyncio.run(run())


def _top(config: Config, args: argparse.Namespace) -> int:
    import time

    from daemon.top import TopView

    view = TopView()
    terminal = _terminal(sys.stdout)
    screen = terminal.top() if terminal else None  # drawn in place; else plain frames one after the other
    frames = 0
    code = EXIT_OK  # of the last frame: no daemon is not a success
    try:
        while True:
            try:
                snapshot = asyncio.run(request_status(config.status.socket))
            except StatusUnreachable as exc:
                shown, code = f"chatledger: {exc} (retrying; Ctrl-C quits)", EXIT_UNREACHABLE
            else:
                shown, code = (view.update(snapshot) if screen else view.frame(snapshot)), EXIT_OK
            if screen:
                screen.show(shown)
            else:
                sys.stdout.write(f"{shown}\n\n")
                sys.stdout.flush()
            frames += 1
            if args.count and frames >= args.count:
                return code
            time.sleep(max(0.1, args.interval))
    except KeyboardInterrupt:
        return code
    finally:
        if screen:
            screen.close()


def _reconcile(config: Config, args: argparse.Namespace) -> int:
    """`reconcile`: directly on the journal (the daemon must not hold it)."""
    from datetime import datetime, timezone

    from daemon.params import BadParameter, reconcile_since

    try:
        since = reconcile_since(args.since, datetime.now(timezone.utc))
    except BadParameter as exc:
        print(f"chatledger: {exc}", file=sys.stderr)
        return EXIT_BAD_WHEN
    if not config.sendpulse.enabled:
        print(f"chatledger: [sendpulse] client_id is empty (or SENDPULSE_CLIENT_ID unset) in {args.config}: "
              "reconciliation is not configured", file=sys.stderr)
        return EXIT_CONFIG
    progress = _reconcile_progress(sys.stderr)
    bot_ids = [args.bot] if args.bot else config.sendpulse.bot_ids
    try:
        try:
            answer = asyncio.run(_reconcile_through_daemon(config, since, args.bot, progress))
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
        print(f"chatledger: reconcile stopped: {answer.get('error', 'no report')}; what was added stays, run it "
              "again to go on", file=sys.stderr)
        return EXIT_FAILURE
    report = answer["report"]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"reconciled {report['since']} to {report['until']} in {config.journal.path}: "
              f"{report['bots']} bot(s), {report['chats']} chat(s), {report['seen']} message(s) seen, "
              f"{report['added']} added, {report['present']} already present, "
              f"{report.get('statuses', 0)} delivery status(es) learned")
        if report["skipped_contacts"]:
            print(f"{report['skipped_contacts']} contact(s) gone from SendPulse since they were listed: skipped")
        if report["unreadable"]:
            print(f"{report['unreadable']} message(s) without an id or a direction: not journaled")
    if report["error"]:
        print(f"chatledger: SendPulse could not be read ({report['state']}): {report['error']}; the "
              f"{report['added']} message(s) added stay, run it again to go on", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


async def _reconcile_through_daemon(config: Config, since: Any, bot: str | None, progress: Any) -> dict[str, Any]:
    """With the daemon running, it reconciles with its own journal and SendPulse budget: no second client
    competes for the account's requests."""
    from urllib.parse import urlencode

    from daemon.records import iso
    from daemon.status import stream_status

    query = urlencode({k: v for k, v in {"since": iso(since), "bot": bot}.items() if v})
    last: dict[str, Any] = {}
    async for line in stream_status(config.status.socket, "/reconcile?" + query, RECONCILE_TIMEOUT):
        if "progress" in line:
            if progress:
                progress(SimpleNamespace(**line["progress"]))
        else:
            last = line
    return last


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
    from daemon.journal import Journal
    from daemon.ratelimit import RequestBudget
    from daemon.reconcile import reconcile
    from daemon.sendpulse import SendPulseClient

    setup_logging("ERROR", config.log.json_)
    settings = config.sendpulse

    async def run() -> Any:
        journal = await Journal.open(config.journal.path, config.enabled_sinks)
        try:
            # start_empty: a daemon just stopped may have spent this second's requests
            budget = RequestBudget(settings.requests_per_second, start_empty=True)
            async with SendPulseClient(settings.api_url, settings.client_id,
                                       settings.client_secret.get_secret_value(), budget) as client:
                return await reconcile(client, journal, since, bot_ids=bot_ids, progress=progress)
        finally:
            await journal.close()

    return asyncio.run(run())
