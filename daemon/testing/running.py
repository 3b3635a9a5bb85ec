"""Running an emulator's aiohttp app: served on a host and port, or in a background thread of this process."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any, Self

from aiohttp import web


async def serve_app(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


class AppThread:
    """An emulator on 127.0.0.1 in its own thread and event loop; `call()` runs code beside it. Subclasses
    name the thread and give `create_app(emulator)`."""

    name = "emulator"
    create_app: Callable[[Any], web.Application]

    def __init__(self, emulator: Any, port: int = 0):
        self.emulator = emulator
        if port == 0:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=self.name, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> Self:
        self._thread.start()
        self._runner = self.call(serve_app(type(self).create_app(self.emulator), "127.0.0.1", self.port))
        return self

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a plain function on the emulator's loop (state is only touched from there)."""

        async def wrapper() -> Any:
            return function(*args, **kwargs)

        return self.call(wrapper())

    def stop(self) -> None:
        if self._runner is not None:
            self.call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def serve_until_stopped(app: web.Application, host: str, port: int, banner: str) -> int:
    """`python -m daemon.testing.…`: serve `app` until SIGINT or SIGTERM; `banner` once it listens."""

    async def run() -> None:
        runner = await serve_app(app, host, port)
        print(banner, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(run())
    return 0
