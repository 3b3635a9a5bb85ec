"""A SendPulse WhatsApp API emulator over real HTTP, for the tests and for trying reconciliation offline.

    python -m daemon.testing.sendpulse --port 8090 --client-id ID --client-secret S [--token-ttl 3600]

`EmulatorThread` runs one in a background thread of the current process (tests, benchmarks).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from daemon.testing.running import AppThread, serve_app
from daemon.testing.sendpulse.model import ApiError, Bot, Contact, Message
from daemon.testing.sendpulse.server import Emulator, create_app

__all__ = ["ApiError", "Bot", "Contact", "Emulator", "EmulatorThread", "Message", "create_app", "serve"]


async def serve(emulator: Emulator, host: str, port: int) -> web.AppRunner:
    return await serve_app(create_app(emulator), host, port)


class EmulatorThread(AppThread):
    """An emulator on 127.0.0.1 in its own thread and event loop; `call()` runs code beside it."""

    name = "sendpulse-emulator"
    create_app = staticmethod(create_app)

    @classmethod
    def serving(cls, client_id: str, client_secret: str, **limits: Any) -> EmulatorThread:
        """Started, accepting these credentials; `limits`: token_ttl, rate, window, per_minute, clock."""
        return cls(Emulator(client_id, client_secret, **limits)).start()
