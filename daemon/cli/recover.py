"""`recover`: Airtable's rows back into PostgreSQL, through the running daemon (its budget for the base)
or on a budget of its own; `recover --undo` in PostgreSQL alone."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from daemon.cli.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, rich_terminal, through_daemon
from daemon.config import Config
from daemon.logs import setup_logging
from daemon.status import StatusUnreachable

RECOVER_TIMEOUT = 24 * 3600.0


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
    terminal = rich_terminal(stream)
    return terminal.progress() if terminal else None


def recover(config: Config, args: argparse.Namespace) -> int:
    from daemon.operations import offline, recover_query, recover_selection

    if args.undo is not None:
        return _recover_undo(config, args)
    missing = _stores_needed(config, "postgres", "airtable")
    if missing:
        print(f"chatledger: recover reads Airtable and writes PostgreSQL: {missing}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        selection = recover_selection(args.conversation, args.phone, args.since, args.all)
    except ValueError as exc:  # a phone that is none, an empty --conversation: no selection is not "everything"
        print(f"chatledger: {exc}", file=sys.stderr)
        return EXIT_USAGE
    progress = _progress_line(sys.stderr)
    options = {"prefer": args.prefer, "dry_run": args.dry_run, "diff": args.diff}
    try:
        # with the daemon running, it recovers with its own Airtable budget: no second client competes for
        # the base's 5 requests/s
        answer = through_daemon(config, "/recover?" + recover_query(selection, **options), RECOVER_TIMEOUT, progress)
        where = "through the running daemon"
    except StatusUnreachable:
        setup_logging("WARNING", config.log.json_)
        answer = asyncio.run(offline.recover(config, selection, options, progress))
        where = "daemon not running"
    finally:
        if progress:
            progress.stop()
    if answer.get("refused"):  # nothing was read or written: the reason says what to do
        print(f"chatledger: {answer['error']}", file=sys.stderr)
        return EXIT_FAILURE
    if "error" in answer or "report" not in answer:
        print(
            f"chatledger: recover stopped: {answer.get('error', 'no report')}; nothing written is lost, "
            "run it again to go on",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    report = answer["report"]
    nothing = all(t["read"] == 0 for t in report["tables"].values())
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_FAILURE if report["problems"] or nothing else EXIT_OK
    if nothing:
        for problem in report["problems"]:
            print(f"problem: {problem}")
        print(
            f"chatledger: nothing found in Airtable for {selection.describe()}: nothing was recovered", file=sys.stderr
        )
        return EXIT_FAILURE
    _print_recovered(report, selection.describe(), where, args.prefer, config.postgres.schema_)
    return EXIT_FAILURE if report["problems"] else EXIT_OK


def _print_recovered(report: dict[str, Any], what: str, where: str, prefer: str, schema: str) -> None:
    from daemon.sinks.postgres import quote_ident

    winner = "Airtable" if prefer == "airtable" else "PostgreSQL"
    dry = bool(report.get("dry_run"))
    if dry:
        print(
            f"dry run, nothing written: what recovering {what} from Airtable into PostgreSQL would do ({where}; "
            f"{winner} would win where they differ)"
        )
    else:
        print(f"recovered {what} from Airtable into PostgreSQL ({where}; {winner} wins where they differ)")
    inserted, replaced = ("would insert", "would replace") if dry else ("inserted", "replaced")
    terminal = rich_terminal(sys.stdout)
    if terminal:
        terminal.recovered(report["tables"], inserted, replaced)
    else:
        print(
            f"  {'':<14}{'read':>8}{inserted:>{len(inserted) + 2}}{'present':>9}{'conflicting':>13}"
            f"{replaced:>{len(replaced) + 2}}{'unusable':>10}"
        )
        for kind, t in report["tables"].items():
            print(
                f"  {kind:<14}{t['read']:>8}{t['inserted']:>{len(inserted) + 2}}{t['present']:>9}"
                f"{t['conflicting']:>13}{t['replaced']:>{len(replaced) + 2}}{t['unusable']:>10}"
            )
    built = report["tables"]["conversations"]["built"]
    if built:
        print(
            f"  {built} conversations were in neither store: {'would be ' if dry else ''}built from their "
            "interactions and escalations"
        )
    if report.get("diffs"):
        print("differences (Airtable | PostgreSQL):")
        for diff in report["diffs"]:
            fields = "; ".join(f"{column} {_quoted(a)} | {_quoted(p)}" for column, (a, p) in diff["fields"].items())
            print(f"  {diff['table']} {diff['key']}: {fields}")
        if report.get("diffs_left_off"):
            print(f"  … and {report['diffs_left_off']} more rows (--json lists the same first rows)")
    if report.get("run_id"):
        print(
            f"the rows replaced are kept in {quote_ident(schema)}.recover_backup as run {report['run_id']}: "
            f"`chatledger recover --undo {report['run_id']}` puts them back"
        )
    for problem in report["problems"]:
        print(f"problem: {problem}")


def _quoted(value: str | None) -> str:
    return "(empty)" if value is None else json.dumps(value, ensure_ascii=False)


def _recover_undo(config: Config, args: argparse.Namespace) -> int:
    """`recover --undo RUN`: in PostgreSQL alone, whether the daemon runs or not."""
    from daemon.operations import undo_recover
    from daemon.sinks.base import SinkError
    from daemon.sinks.postgres import quote_ident

    given = [
        option
        for option, value in (
            ("--dry-run", args.dry_run),
            ("--diff", args.diff),
            ("--prefer", args.prefer != "postgres"),
        )
        if value
    ]
    if given:
        print(f"chatledger recover: argument {given[0]}: not allowed with argument --undo", file=sys.stderr)
        return EXIT_USAGE
    missing = _stores_needed(config, "postgres")
    if missing:
        print(f"chatledger: recover --undo writes PostgreSQL: {missing}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging("WARNING", config.log.json_)
    backup = f"{quote_ident(config.postgres.schema_)}.recover_backup"
    try:
        done = asyncio.run(undo_recover(config, args.undo))
    except SinkError as exc:
        print(f"chatledger: recover --undo failed: {exc}; nothing was put back", file=sys.stderr)
        return EXIT_FAILURE
    if done is None:
        print(f"chatledger: nothing found: no recover run {args.undo!r} in {backup}", file=sys.stderr)
        return EXIT_FAILURE
    if done["undone_at"]:
        print(
            f"chatledger: recover run {args.undo} was undone already ({done['undone_at']}): nothing to put back",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    restored = done["restored"]
    if args.json:
        print(json.dumps(done, indent=2))
        return EXIT_OK if any(restored.values()) else EXIT_FAILURE
    if not any(restored.values()):
        print(
            f"chatledger: recover --undo {args.undo}: nothing put back: every value the run replaced was changed "
            "since (or its row is gone); the run stays undoable",
            file=sys.stderr,
        )
        for left in done["left"]:
            print(f"  {left['table']} {left['key']}: {', '.join(left['columns'])} {left['why']}", file=sys.stderr)
        return EXIT_FAILURE
    print(
        f"undid recover run {args.undo}: {sum(restored.values())} rows put back ("
        + ", ".join(f"{kind} {n}" for kind, n in restored.items())
        + ")"
    )
    for left in done["left"]:
        print(f"  {left['table']} {left['key']}: {', '.join(left['columns'])} {left['why']}, left as it is")
    return EXIT_OK
