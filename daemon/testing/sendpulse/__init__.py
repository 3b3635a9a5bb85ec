"""A SendPulse WhatsApp API emulator over real HTTP, for the tests and for trying reconciliation offline.

    python -m daemon.testing.sendpulse --port 8090 --client-id ID --client-secret S [--token-ttl 3600]

`EmulatorThread` runs one in a background thread of the current process (tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

from aiohttp import web

from daemon.testing.sendpulse.model import ApiError, Bot, Contact, Message
from daemon.testing.sendpulse.server import Emulator, create_app

__all__ = ["ApiError", "Bot", "Contact", "Emulator", "EmulatorThread", "Message", "create_app", "serve"]


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
        self._thread = threading.Thread(target=self._loop.run_forever, name="sendpulse-emulator", daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> "EmulatorThread":
        self._thread.start()
        self._runner = self.call(serve(self.emulator, "127.0.0.1", self.port))
        return self

    @classmethod
    def serving(cls, client_id: str, client_secret: str, **limits: Any) -> "EmulatorThread":
        """Started, accepting these credentials; `limits`: token_ttl, rate, window, per_minute, clock."""
        return cls(Emulator(client_id, client_secret, **limits)).start()

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def run(self, function, *args, **kwargs) -> Any:
        """Run a plain function on the emulator's loop (state is only touched from there)."""
        async def wrapper():
            return function(*args, **kwargs)
        return self.call(wrapper())

    def stop(self) -> None:
        if self._runner is not None:
            self.call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
