"""An Airtable emulator over real HTTP, for the tests and for trying chatledger without an account.

    python -m daemon.testing.airtable --port 8089 --token patLOCAL --base appLOCAL [--lockout 30]

`EmulatorThread` runs one in a background thread of the current process (tests, benchmarks).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from daemon.testing.airtable.model import ApiError, Base, Field, Record, Table
from daemon.testing.airtable.server import Emulator, create_app
from daemon.testing.running import AppThread, serve_app

__all__ = ["ApiError", "Base", "Emulator", "EmulatorThread", "Field", "Record", "Table", "create_app", "serve"]


async def serve(emulator: Emulator, host: str, port: int) -> web.AppRunner:
    return await serve_app(create_app(emulator), host, port)


class EmulatorThread(AppThread):
    """An emulator on 127.0.0.1 in its own thread and event loop; `call()` runs code beside it."""

    name = "airtable-emulator"
    create_app = staticmethod(create_app)

    @classmethod
    def serving(cls, token: str, base_id: str, **limits: Any) -> EmulatorThread:
        """Started, accepting `token`, with one empty base `base_id`; `limits`: rate, window, lockout."""
        running = cls(Emulator([token], **limits)).start()
        running.run(running.emulator.add_base, base_id)
        return running
