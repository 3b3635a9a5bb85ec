"""A light HTTP/1.1 load generator for bench/ingest.py: keep-alive connections over asyncio streams (on uvloop
where installed), requests built from a template, answers read by their Content-Length.

aiohttp's client spends more CPU per request than either server it drives (some 130-180 µs against the bare
app's 90): on a 2-core machine the load generator takes the better part of a core from what it measures, and
at a steady rate its own lag shows in the latencies. SendPulse's servers are not on the VPS; this generator
costs about 30 µs a request (its figure is printed beside the servers'), so the servers set the pace.
`--client light` selects it; aiohttp's client stays the default, the yardstick issue 16's goals were set with.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


class Target:
    """Where to post, and the request's head for a body of a given length."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            "Content-Length: %d\r\n\r\n"
        ).encode()

    def request(self, body: bytes) -> bytes:
        return self.head % len(body) + body

    async def connect(self) -> Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return Connection(reader, writer)


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    async def post(self, request: bytes) -> int:
        """Send one request and read its whole answer; its status code."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        if length:
            await self.reader.readexactly(length)
        if b"connection: close" in head.lower():
            raise ConnectionResetError("the server closed the connection")
        return status

    def close(self) -> None:
        self.writer.close()


async def paced(rate: float, items: Sequence[T], send: Callable[[T, float], Awaitable[None]]) -> float:
    """`send(item, due)` for each item, one every 1/rate s whatever the answers take, then await them all;
    the seconds it took."""
    tasks = []
    begin = time.perf_counter()
    for n, item in enumerate(items):
        due = begin + n / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(send(item, due)))
    await asyncio.gather(*tasks)
    return time.perf_counter() - begin


async def closed_loop(
    url: str, connections: int, seconds: float, body_for: Callable[[], bytes]
) -> tuple[list[float], int, float]:
    """Each of `connections` posts, waits for the answer, posts again: (latencies of the 200s, errors, elapsed)."""
    target = Target(url)
    latencies: list[float] = []
    errors = 0
    opened = await asyncio.gather(*(target.connect() for _ in range(connections)))
    deadline = time.monotonic() + seconds

    async def worker(connection: Connection) -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            request = target.request(body_for())
            started = time.perf_counter()
            try:
                status = await connection.post(request)
            except (OSError, asyncio.IncompleteReadError):
                errors += 1
                connection.close()
                connection = await target.connect()
                continue
            if status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1
        connection.close()

    begin = time.monotonic()
    await asyncio.gather(*(worker(connection) for connection in opened))
    return latencies, errors, time.monotonic() - begin


async def open_loop(
    url: str, rate: float, bodies: list[bytes], warm: int
) -> tuple[list[float], list[float], int, float]:
    """A request every 1/rate s on an idle connection (a new one when none is idle), whatever the answers
    take: (latencies of the 200s from each request's scheduled start, the generator's own lags, errors,
    elapsed)."""
    target = Target(url)
    idle: list[Connection] = list(await asyncio.gather(*(target.connect() for _ in range(warm))))
    opened = len(idle)
    latencies: list[float] = []
    lags: list[float] = []
    errors = 0

    async def send(request: bytes, due: float) -> None:
        nonlocal errors, opened
        lags.append(time.perf_counter() - due)
        if idle:
            connection = idle.pop()
        else:
            opened += 1
            connection = await target.connect()
        try:
            status = await connection.post(request)
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
            connection.close()
            return
        if status == 200:
            latencies.append(time.perf_counter() - due)
        else:
            errors += 1
        idle.append(connection)

    requests = [target.request(body) for body in bodies]  # built before: the rate sets the pace
    elapsed = await paced(rate, requests, send)
    for connection in idle:
        connection.close()
    return latencies, lags, errors, elapsed
