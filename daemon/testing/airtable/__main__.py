"""Run the Airtable emulator standalone: python -m daemon.testing.airtable --port 8089 ..."""

from __future__ import annotations

import argparse
import sys

from daemon.testing.airtable import Emulator, create_app
from daemon.testing.airtable.bases import DATE_TYPES, documented_base
from daemon.testing.running import serve_until_stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daemon.testing.airtable", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument(
        "--token", action="append", default=[], help="a personal access token it accepts (repeatable; default patLOCAL)"
    )
    parser.add_argument(
        "--base",
        action="append",
        default=[],
        help="an empty base id to create, e.g. appLOCAL0000000000 (repeatable; default appLOCAL)",
    )
    parser.add_argument("--rate", type=int, default=5, help="requests per second per base (default 5)")
    parser.add_argument("--lockout", type=float, default=30.0, help="seconds a base stays locked after a 429")
    parser.add_argument(
        "--max-records",
        type=int,
        default=None,
        help="records each base may hold, across its tables (a plan's cap; default none)",
    )
    parser.add_argument(
        "--documented",
        nargs="?",
        const="date",
        choices=DATE_TYPES,
        help="give each base the operators' documented tables (Reason a single select, dates "
        "without time by default; dateTime or mixed for dates with time)",
    )
    parser.add_argument(
        "--token-without-schema",
        action="append",
        default=[],
        metavar="TOKEN",
        help="a token it accepts for records only: the metadata API answers it 403, as Airtable "
        "does without the scope schema.bases:read (repeatable)",
    )
    args = parser.parse_args(argv)
    emulator = Emulator(args.token or ["patLOCAL"], rate=args.rate, lockout=args.lockout)
    for token in args.token_without_schema:
        emulator.grant(token, {"data.records:read", "data.records:write"})
    for base_id in args.base or ["appLOCAL"]:
        base = emulator.add_base(base_id)
        base.max_records = args.max_records
        if args.documented:
            documented_base(base, args.documented)

    return serve_until_stopped(
        create_app(emulator),
        args.host,
        args.port,
        (
            f"Airtable emulator on http://{args.host}:{args.port} (bases: {', '.join(emulator.bases)}; "
            f"{args.rate} req/s per base, lockout {args.lockout:g} s)"
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
