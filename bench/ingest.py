"""Webhook intake throughput: the running daemon vs a bare aiohttp app that journals nothing.

    .venv/bin/python bench/ingest.py [--connections 64] [--seconds 10] [--events-per-request 1]

Starts `chatledger run` (journal only) and a bare aiohttp app that parses the JSON and answers 200,
drives each over HTTP with N concurrent connections for the same time, and prints events/s,
p50/p99 acknowledgement latency, journal commits per event, and the throughput ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import machine  # noqa: E402
from tests.support import Daemon, free_port, write_config  # noqa: E402

BARE_APP = """
import json, sys
from aiohttp import web
async def handle(request):
    body = json.loads(await request.read())
    elements = body if isinstance(body, list) else [body]
    return web.json_response({"accepted": len(elements), "duplicates": 0, "rejected": 0})
app = web.Application()
app.router.add_post("/webhooks/sendpulse", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def payload(n: int, per_request: int) -> bytes:
    events = []
    for k in range(per_request):
        i = n * per_request + k
        events.append({
            "title": "incoming_message", "service": "whatsapp",
            "bot": {"id": "68f176502ca6f03a9705c489", "name": "Loja"},
            "contact": {"id": f"6a4969158278b1482a{i % 500:06d}", "phone": f"55829{i % 500:08d}",
                        "name": "Cliente", "variables": {}, "tags": []},
            "info": {"message": {"id": f"bench{os.getpid()}-{i}", "channel_data": {"message": {
                "from": f"55829{i % 500:08d}", "id": f"wamid.{i}", "type": "text",
                "text": {"body": "Olá, gostaria de saber o preço do produto"}}}}},
            "date": 1736092619000 + i,
        })
    return json.dumps(events).encode()


async def drive(url: str, connections: int, seconds: float, per_request: int) -> dict[str, float]:
    latencies: list[float] = []
    counter = iter(range(10**9))
    errors = 0
    deadline = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            body = payload(next(counter), per_request)
            started = time.perf_counter()
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
                    continue
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        begin = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        elapsed = time.monotonic() - begin
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "events_per_s": len(latencies) * per_request / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per server; medians are reported")
    parser.add_argument("--events-per-request", type=int, default=1)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="chatledger-bench-"))
    config = write_config(workdir, level="WARNING")
    daemon = Daemon(config).start()
    bare_port = free_port()
    bare_url = f"http://127.0.0.1:{bare_port}/webhooks/sendpulse"
    bare = subprocess.Popen([sys.executable, "-c", BARE_APP, str(bare_port)])
    ours: list[dict[str, float]] = []
    baseline: list[dict[str, float]] = []
    try:
        _wait_listening(bare_port)
        for url in (daemon.url, bare_url):  # warm up both
            asyncio.run(drive(url, 8, 1.0, args.events_per_request))
        before = daemon.status()["journal"]
        for _ in range(args.rounds):  # alternate, so drift on the machine hits both alike
            ours.append(asyncio.run(drive(daemon.url, args.connections, args.seconds, args.events_per_request)))
            baseline.append(asyncio.run(drive(bare_url, args.connections, args.seconds, args.events_per_request)))
        after = daemon.status()["journal"]
    finally:
        bare.send_signal(signal.SIGINT)
        bare.wait(timeout=10)
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    commits = after["commits"] - before["commits"]
    events = after["committed_events"] - before["committed_events"]
    ours_median, bare_median = _median(ours), _median(baseline)
    ratio = ours_median["events_per_s"] / bare_median["events_per_s"]
    print(f"machine: {machine()}")
    print(f"load: {args.connections} connections, {args.rounds} alternating rounds of {args.seconds:.0f} s, "
          f"{args.events_per_request} event(s) per request; medians")
    print(f"{'':<14}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}   rounds (events/s)")
    for name, median, runs in (("chatledger", ours_median, ours), ("bare aiohttp", bare_median, baseline)):
        print(f"{name:<14}{median['events_per_s']:>10.0f}{median['p50_ms']:>9.1f}{median['p99_ms']:>9.1f}"
              f"{sum(r['errors'] for r in runs):>8.0f}   {_rounds(runs)}")
    print(f"journal commits: {commits} for {events} events = {commits / max(events, 1):.3f} commits/event")
    print(f"ratio chatledger / bare: {ratio:.2f}  (goal >= 0.65, and <= 0.1 commits/event)")
    return 0


def _rounds(runs: list[dict[str, float]]) -> str:
    return ", ".join(f"{run['events_per_s']:.0f}" for run in runs)


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def _wait_listening(port: int) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("bare app did not start")


if __name__ == "__main__":
    sys.exit(main())
