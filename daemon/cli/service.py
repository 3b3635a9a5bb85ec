"""The daemon itself and its set-up: run, check-config, migrate, airtable init|check, status, top, sync,
journal check."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
from collections.abc import Callable

from loguru import logger

from daemon.cli.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, rich_terminal
from daemon.config import Config
from daemon.journal import JournalError
from daemon.logs import setup_logging
from daemon.status import EXIT_UNREACHABLE, StatusUnreachable, exit_code_for, request_snapshot, request_status
from daemon.status_text import render


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (a dependency on Linux): webhooks cost less CPU each."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# The youngest generation is collected every 10,000 allocations rather than 700: nearly all a webhook allocates
# is freed by reference counting, and each collection costs the event loop time.
GC_THRESHOLDS = (10_000, 20, 20)


def settle_garbage_collector() -> None:
    """What the imports built lives as long as the process: frozen, no collection walks it again (a full one
    took 40-55 ms at 64 connections, ten times in 20 s of load, every webhook waiting)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(config: Config, args: argparse.Namespace) -> int:
    from daemon.app import Daemon  # the daemon's imports are not needed by the quick commands

    setup_logging(config.log.level, config.log.json_)
    settle_garbage_collector()
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(Daemon(config, args.config).run())
    except JournalError as exc:
        logger.error("{}", exc)
        return EXIT_FAILURE
    except OSError as exc:
        logger.error("cannot start: {}", exc)
        return EXIT_FAILURE


def check_config(config: Config, args: argparse.Namespace) -> int:
    print(f"{args.config}: OK")
    print(json.dumps(config.redacted(), indent=2))
    sinks = ", ".join(config.enabled_sinks) or "none (journal only)"
    print(f"sinks enabled: {sinks}")
    for warning in config.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def migrate(config: Config, args: argparse.Namespace) -> int:
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


def airtable(config: Config, args: argparse.Namespace) -> int:
    """`airtable init` / `airtable check`: through the running daemon (its budget for the base), or on
    a budget of its own when no daemon answers."""
    from daemon.operations import offline

    if not config.airtable.enabled:
        print("chatledger: [airtable] api_key is empty (or AIRTABLE_API_KEY unset): nothing to do", file=sys.stderr)
        return EXIT_CONFIG
    try:
        result = asyncio.run(
            request_status(config.status.socket, "POST", f"/airtable?action={args.action}", timeout_s=300)
        )
        where = "through the running daemon"
    except StatusUnreachable:
        setup_logging("WARNING", config.log.json_)
        result = asyncio.run(offline.airtable_base(config, args.action))
        where = "daemon not running"
    if "error" in result:
        print(f"chatledger: {result['error']}", file=sys.stderr)
        return EXIT_FAILURE
    for line in result["done"]:
        print(line)
    if result.get("fields", config.airtable.fields) != config.airtable.fields:
        print(
            f"note: the running daemon reads [airtable.fields] as {result['fields']}, this config as "
            f"{config.airtable.fields}: SIGHUP the daemon to apply the file's"
        )
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


def status(config: Config, args: argparse.Namespace) -> int:
    try:
        snapshot = asyncio.run(request_snapshot(config.status.socket))
    except StatusUnreachable as exc:
        print(f"chatledger: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    terminal = None if args.json else rich_terminal(sys.stdout)
    if terminal:
        terminal.status(snapshot)
    else:
        print(json.dumps(snapshot, indent=2) if args.json else render(snapshot))
    return exit_code_for(snapshot)


def top(config: Config, args: argparse.Namespace) -> int:
    import time

    from daemon.top import Frame, TopView

    view = TopView()
    terminal = rich_terminal(sys.stdout)
    screen = terminal.top() if terminal else None  # drawn in place; else plain frames one after the other
    frames = 0
    code = EXIT_OK  # of the last frame: no daemon is not a success
    shown: Frame | str  # a frame, or on a terminal the message saying why there is none
    try:
        while True:
            try:
                snapshot = asyncio.run(request_snapshot(config.status.socket))
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


def sync(config: Config, args: argparse.Namespace) -> int:
    try:
        answer = asyncio.run(request_status(config.status.socket, "POST", "/sync"))
    except StatusUnreachable as exc:
        print(f"chatledger: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not answer.get("sinks"):
        print("chatledger: no sink is enabled in the running daemon (journal only): nothing to replay", file=sys.stderr)
        return EXIT_CONFIG
    print(f"replay triggered ({', '.join(answer['sinks'])})")
    return EXIT_OK


def journal(config: Config, args: argparse.Namespace) -> int:
    from daemon.journal import check_journal

    try:
        report = check_journal(config.journal.path, list(config.enabled_sinks), repair=args.repair)
    except JournalError as exc:
        print(f"chatledger: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(
            f"journal {report.path}: schema v{report.schema_version}, {report.events} events, "
            f"integrity {'ok' if report.integrity == ['ok'] else 'FAILED'}"
        )
        for sink, states in sorted(report.states.items()):
            print(f"  {sink:<9} " + ", ".join(f"{n} {state}" for state, n in sorted(states.items())))
        for line in report.repaired:
            print(f"repaired: {line}")
        for problem in report.problems:
            print(f"problem: {problem}")
        if not report.problems:
            print("no problems found")
    return EXIT_FAILURE if report.problems else EXIT_OK
