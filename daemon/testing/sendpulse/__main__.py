"""Run the SendPulse emulator standalone: python -m daemon.testing.sendpulse --port 8090 ..."""

from __future__ import annotations

import argparse
import sys

from daemon.testing.running import serve_until_stopped
from daemon.testing.sendpulse import Emulator, create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daemon.testing.sendpulse", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--client-id", default="sp-local-id", help="the API client id it accepts")
    parser.add_argument("--client-secret", default="sp-local-secret", help="the API client secret it accepts")
    parser.add_argument(
        "--token-ttl",
        type=float,
        default=3600.0,
        help="seconds an access token lives (its expires_in; default 3600, as SendPulse)",
    )
    parser.add_argument("--rate", type=int, default=10, help="requests per second per account (default 10)")
    parser.add_argument("--per-minute", type=int, default=None, help="requests per minute, a plan's cap (default none)")
    parser.add_argument(
        "--bot",
        action="append",
        default=[],
        metavar="ID",
        help="a WhatsApp bot to create at start, a 24-hex id (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.token_ttl <= 0:
        parser.error("--token-ttl must be positive")
    emulator = Emulator(
        args.client_id, args.client_secret, token_ttl=args.token_ttl, rate=args.rate, per_minute=args.per_minute
    )
    for bot_id in args.bot:
        emulator.add_bot(bot_id)

    return serve_until_stopped(
        create_app(emulator),
        args.host,
        args.port,
        (
            f"SendPulse emulator on http://{args.host}:{args.port} (bots: {', '.join(emulator.bots) or 'none'}; "
            f"{args.rate} req/s, tokens live {args.token_ttl:g} s)"
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
