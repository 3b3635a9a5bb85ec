"""One person's conversations: `show` reads them, `forget` erases them (asking first on a terminal)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from daemon.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from daemon.config import Config
from daemon.journal import JournalError
from daemon.logs import setup_logging
from daemon.status import StatusUnreachable, request_status

FORGET_TIMEOUT = 3600.0  # Airtable at 5 requests/s: a long history takes a while
SHOW_TIMEOUT = 600.0  # Airtable at 5 requests/s, 100 records a request: 10,000 interactions take 20 s and more


def _phone_digits(text: str) -> str | None:
    """--phone as its digits; None, having said why, when they cannot be a phone number."""
    from daemon.params import BadParameter, phone_digits

    try:
        return phone_digits(text)
    except BadParameter as exc:
        print(f"chatledger: {exc}", file=sys.stderr)
        return None


def forget(config: Config, args: argparse.Namespace) -> int:
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
            print(
                f"dry run: nothing was erased; forget --phone ...{phone[-4:]} would erase:"
                if args.dry_run
                else f"forget --phone ...{phone[-4:]} erases:",
                file=out,
            )
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
        print(
            f"chatledger: forget is incomplete: {answer.get('error')}; run the same command again to finish",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


def _forget_answer(config: Config, phone: str, reference: str | None, dry_run: bool = False) -> dict[str, Any]:
    """The report of `forget` (or of its dry run): through the daemon, else done here on the journal."""
    from urllib.parse import urlencode

    query = urlencode(
        {"phone": phone}
        | ({"reference": reference} if reference is not None else {})
        | ({"dry_run": "1"} if dry_run else {})
    )
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
    from daemon.operations import offline

    setup_logging("WARNING", config.log.json_)
    try:
        return asyncio.run(offline.forget(config, phone, reference, dry_run))
    except JournalError as exc:
        return {"error": f"{exc}; nothing was erased", "dry_run": dry_run}


def show(config: Config, args: argparse.Namespace) -> int:
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
    query = urlencode(
        {k: v for k, v in {"conversation": conversation, "phone": phone, "limit": limit}.items() if v is not None}
    )
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
    from daemon.operations import offline

    setup_logging("WARNING", config.log.json_)
    return asyncio.run(offline.show(config, conversation, phone, limit))
