"""An Airtable emulator over real HTTP, for the tests and for trying chatledger without an account.

    python -m daemon.testing.airtable --port 8089 --token patLOCAL --base appLOCAL [--lockout 30]

`EmulatorThread` runs one in a background thread of the current process (tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

from aiohttp import web

from daemon.testing.airtable.model import ApiError, Base, Field, Record, Table
from daemon.testing.airtable.server import Emulator, create_app

__all__ = ["ApiError", "Base", "Emulator", "EmulatorThread", "Field", "Record", "Table", "create_app", "serve"]


async def serve(emulator: Emulator, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(create_app(emulator), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


class EmulatorThread:
    """An emulator on 127.0.0.1 in its own thread and event loop; `call()` runs code beside it."""

    def __init__(self, emulator: Emulator, port: int = 0):
        self.emulator = emulator
        if port == 0:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="airtable-emulator", daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> "EmulatorThread":
        self._thread.start()
        self._runner = self.call(serve(self.emulator, "127.0.0.1", self.port))
        return self

    @classmethod
    def serving(cls, token: str, base_id: str, **limits: Any) -> "EmulatorThread":
        """Started, accepting `token`, with one empty base `base_id`; `limits`: rate, window, lockout."""
        running = cls(Emulator([token], **limits)).start()
        running.run(running.emulator.add_base, base_id)
        return running

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def run(self, function, *args) -> Any:
        """Run a plain function on the emulator's loop (state is only touched from there)."""
        async def wrapper():
            return function(*args)
        return self.call(wrapper())

    def stop(self) -> None:
        if self._runner is not None:
            self.call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
