"""Webhook intake: the running daemon vs a bare aiohttp app that journals nothing.

    .venv/bin/python bench/ingest.py [--connections 64] [--seconds 10] [--rounds 3] [--events-per-request 1]
    .venv/bin/python bench/ingest.py --rate 2000 [--seconds 10] [--rounds 3]
    ... [--client light]   (the load generator: aiohttp's client by default, the yardstick of issue 16's goals;
                            light: bench/http_load.py's, a tenth of its CPU per request)

Starts `chatledger run` (journal only) and a bare aiohttp app that parses the JSON and answers 200, and
drives each over HTTP in alternating rounds: by default with N concurrent connections for the same time
(closed loop: throughput and the ratio), with --rate at a steady R requests/s whatever the answers take
(open loop: acknowledgement latency, timed from each request's scheduled start). Prints medians of
events/s, p50/p99 acknowledgement latency, the CPU each process spends per event, journal commits and
fsyncs (counted by `perf stat`, when it can attach) per event. Both servers and the load generator run on
uvloop where it is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import http_load  # noqa: E402
from common import machine  # noqa: E402
from daemon.cli.service import event_loop_factory  # noqa: E402
from tests.support import Daemon, free_port, write_config  # noqa: E402

# On the event loop the daemon runs on (uvloop where installed, as `chatledger run` does): the ratio compares
# what the daemon does per webhook, not two event loops.
BARE_APP = """
import json, sys
from aiohttp import web
from daemon.cli.service import event_loop_factory
async def handle(request):
    body = json.loads(await request.read())
    elements = body if isinstance(body, list) else [body]
    return web.json_response({"accepted": len(elements), "duplicates": 0, "rejected": 0})
app = web.Application()
app.router.add_post("/webhooks/sendpulse", handle)
factory = event_loop_factory()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None,
            loop=factory() if factory else None)
"""
FSYNC_EVENTS = "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync"
OPEN_LOOP_CONNECTIONS = 512  # enough that the client never queues a request behind a busy connection
WARM_CONNECTIONS = 64
# One numbering for every request of the run (warm-up and all rounds): each carries a new event, never a
# duplicate of an earlier round's, which the journal would only count.
SEQUENCE = itertools.count()


def _element_template() -> str:
    """An incoming message as SendPulse posts it, as %-format text: what varies by event is filled in."""
    element = {
        "title": "incoming_message",
        "service": "whatsapp",
        "bot": {"id": "68f176502ca6f03a9705c489", "name": "Loja"},
        "contact": {"id": "@contact@", "phone": "@phone@", "name": "Cliente", "variables": {}, "tags": []},
        "info": {
            "message": {
                "id": "@message@",
                "channel_data": {
                    "message": {
                        "from": "@phone@",
                        "id": "@wamid@",
                        "type": "text",
                        "text": {"body": "Olá, gostaria de saber o preço do produto"},
                    }
                },
            }
        },
        "date": 1736092619000,
    }
    text = json.dumps(element).replace("%", "%%").replace("1736092619000", "%(date)d")
    for name in ("contact", "phone", "message", "wamid"):
        text = text.replace(f"@{name}@", f"%({name})s")
    return text


ELEMENT = _element_template()


def payload(n: int, per_request: int) -> bytes:
    """Request n's body: `per_request` new events, each numbered for the whole run."""
    events = []
    for k in range(per_request):
        i = n * per_request + k
        events.append(
            ELEMENT
            % {
                "contact": f"6a4969158278b1482a{i % 500:06d}",
                "phone": f"55829{i % 500:08d}",
                "message": f"bench{os.getpid()}-{i}",
                "wamid": f"wamid.{i}",
                "date": 1736092619000 + i,
            }
        )
    return ("[" + ", ".join(events) + "]").encode()


async def drive_light(url: str, connections: int, seconds: float, per_request: int) -> dict[str, float]:
    """Closed loop with bench/http_load.py's generator."""
    latencies, errors, elapsed = await http_load.closed_loop(
        url, connections, seconds, lambda: payload(next(SEQUENCE), per_request)
    )
    return _figures(latencies, errors, elapsed, per_request)


async def drive_rate_light(url: str, rate: float, seconds: float, per_request: int) -> dict[str, float]:
    """Open loop with bench/http_load.py's generator."""
    bodies = [payload(next(SEQUENCE), per_request) for _ in range(int(rate * seconds))]
    latencies, lags, errors, elapsed = await http_load.open_loop(url, rate, bodies, WARM_CONNECTIONS)
    return _open_loop_figures(latencies, lags, errors, elapsed, per_request)


async def drive(url: str, connections: int, seconds: float, per_request: int) -> dict[str, float]:
    """Closed loop (aiohttp's client): each of `connections` workers posts, waits for the answer, posts again."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            body = payload(next(SEQUENCE), per_request)
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
    return _figures(latencies, errors, elapsed, per_request)


async def drive_rate(url: str, rate: float, seconds: float, per_request: int) -> dict[str, float]:
    """Open loop (aiohttp's client): a request starts every 1/rate s whatever the answers take; latency from
    its scheduled start."""
    latencies: list[float] = []
    lags: list[float] = []
    errors = 0
    total = int(rate * seconds)
    bodies = [payload(next(SEQUENCE), per_request) for _ in range(total)]  # built before: the rate sets the pace

    async def send(session: aiohttp.ClientSession, body: bytes, due: float) -> None:
        nonlocal errors
        lags.append(time.perf_counter() - due)
        try:
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                await response.read()
                ok = response.status == 200
        except aiohttp.ClientError:
            ok = False
        if ok:
            latencies.append(time.perf_counter() - due)
        else:
            errors += 1

    connector = aiohttp.TCPConnector(limit=OPEN_LOOP_CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Open the connections first: a burst of connects mid-run would time the listen backlog, not the answers.
        warm = [payload(next(SEQUENCE), per_request) for _ in range(WARM_CONNECTIONS)]
        await asyncio.gather(*(_post(session, url, body) for body in warm))
        elapsed = await http_load.paced(rate, bodies, lambda body, due: send(session, body, due))
    return _open_loop_figures(latencies, lags, errors, elapsed, per_request)


def _open_loop_figures(
    latencies: list[float], lags: list[float], errors: int, elapsed: float, per_request: int
) -> dict[str, float]:
    figures = _figures(latencies, errors, elapsed, per_request)
    figures["max_ms"] = max(latencies) * 1000
    lags.sort()
    figures["lag_p99_ms"] = lags[int(len(lags) * 0.99) - 1] * 1000
    return figures


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> None:
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        await response.read()


def _figures(latencies: list[float], errors: int, elapsed: float, per_request: int) -> dict[str, float]:
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "events_per_s": len(latencies) * per_request / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) each thread of `pid` has used."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the thread ended meanwhile
        used[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return used


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measured(run, pid: int) -> dict[str, float]:
    """Run one round; its figures and the CPU (µs per event) of the server's main thread, its other
    threads, and this load generator."""
    server_before, client_before = thread_cpu(pid), own_cpu()
    figures = run()
    server_after, client_after = thread_cpu(pid), own_cpu()
    events = figures["requests"] * figures.get("per_request", 1)
    spent = {tid: seconds - server_before.get(tid, 0.0) for tid, seconds in server_after.items()}
    per_event = 1e6 / max(events, 1)
    figures["main_us"] = spent.get(pid, 0.0) * per_event
    figures["threads_us"] = sum(seconds for tid, seconds in spent.items() if tid != pid) * per_event
    figures["client_us"] = (client_after - client_before) * per_event
    return figures


class FsyncCounter:
    """`perf stat` counting a process's fsync and fdatasync calls; None when perf cannot attach."""

    def __init__(self, pid: int):
        self.process: subprocess.Popen | None = None
        if shutil.which("perf") is None:
            return
        self.process = subprocess.Popen(
            ["perf", "stat", "-x", ",", "-e", FSYNC_EVENTS, "-p", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.3)  # attached (or failed) by then
        if self.process.poll() is not None:
            self.process = None

    def stop(self) -> int | None:
        if self.process is None:
            return None
        self.process.send_signal(signal.SIGINT)
        _, err = self.process.communicate(timeout=10)
        counts = [line.split(",")[0] for line in err.splitlines() if "sys_enter_f" in line]
        return sum(int(count) for count in counts) if counts and all(c.isdigit() for c in counts) else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rate", type=float, help="requests/s, open loop (instead of --connections)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per server; medians are reported")
    parser.add_argument("--events-per-request", type=int, default=1)
    parser.add_argument(
        "--client", choices=("aiohttp", "light"), default="aiohttp", help="the load generator (bench/http_load.py)"
    )
    args = parser.parse_args()
    per_request = args.events_per_request
    closed, opened = (drive_light, drive_rate_light) if args.client == "light" else (drive, drive_rate)

    def on_loop(work: Any) -> dict[str, float]:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(work)

    def round_of(url: str) -> dict[str, float]:
        if args.rate:
            figures = on_loop(opened(url, args.rate, args.seconds, per_request))
        else:
            figures = on_loop(closed(url, args.connections, args.seconds, per_request))
        figures["per_request"] = per_request
        return figures

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
            on_loop(closed(url, 8, 1.0, per_request))
        status = daemon.status()
        before, duplicates_before = status["journal"], status["webhook"]["duplicates"]
        fsyncs = FsyncCounter(daemon.process.pid)
        for _ in range(args.rounds):  # alternate, so drift on the machine hits both alike
            ours.append(measured(lambda: round_of(daemon.url), daemon.process.pid))
            baseline.append(measured(lambda: round_of(bare_url), bare.pid))
        fsynced = fsyncs.stop()
        status = daemon.status()
        after, duplicates = status["journal"], status["webhook"]["duplicates"] - duplicates_before
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
    if args.rate:
        print(
            f"load ({args.client} client): {args.rate:.0f} requests/s open loop, "
            f"{args.rounds} alternating rounds of {args.seconds:.0f} s, "
            f"{per_request} event(s) per request; medians; latency from each request's scheduled start"
        )
    else:
        print(
            f"load ({args.client} client): {args.connections} connections, "
            f"{args.rounds} alternating rounds of {args.seconds:.0f} s, "
            f"{per_request} event(s) per request; medians"
        )
    print(
        f"{'':<14}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'CPU µs/event: main':>20}{'threads':>9}{'client':>8}   rounds (events/s; p99 ms)"
    )
    for name, median, runs in (("chatledger", ours_median, ours), ("bare aiohttp", bare_median, baseline)):
        print(
            f"{name:<14}{median['events_per_s']:>10.0f}{median['p50_ms']:>9.1f}{median['p99_ms']:>9.1f}"
            f"{sum(r['errors'] for r in runs):>8.0f}{median['main_us']:>20.0f}{median['threads_us']:>9.0f}"
            f"{median['client_us']:>8.0f}   {_rounds(runs)}"
        )
    if args.rate:
        print(
            f"chatledger: max ack {max(r['max_ms'] for r in ours):.1f} ms; the client's own lag p99 "
            f"{ours_median['lag_p99_ms']:.1f} ms (bare: {bare_median['lag_p99_ms']:.1f} ms)"
        )
    fsync_text = (
        f"{fsynced} fsyncs = {fsynced / max(events, 1):.3f} fsyncs/event"
        if fsynced is not None
        else "fsyncs not counted (perf stat could not attach)"
    )
    print(
        f"journal: {commits} commits for {events} events = {commits / max(events, 1):.3f} commits/event; {fsync_text}"
        + (f"; {duplicates} duplicates (every event should be new)" if duplicates else "")
    )
    print(
        f"ratio chatledger / bare: {ratio:.2f}  (goals: >= 0.65 at 64 connections; p99 <= 10 ms at 2,000 "
        "requests/s; <= 0.1 fsyncs/event)"
    )
    if not args.rate:
        ours_ceiling, bare_ceiling = _ceiling(ours_median), _ceiling(bare_median)
        print(
            f"CPU ceiling ({os.cpu_count()} cores all busy at the CPU per event above, server and load generator): "
            f"chatledger {ours_ceiling:.0f} events/s = {ours_ceiling / bare_median['events_per_s']:.2f} of the bare "
            f"app's measured {bare_median['events_per_s']:.0f}; the bare app's own ceiling {bare_ceiling:.0f}"
        )
    return 0


def _ceiling(figures: dict[str, float]) -> float:
    """Events/s the machine could carry were every core busy: cores over the CPU all processes spend per event
    (the event loop and any other thread cannot use more than one core each, which this ignores)."""
    spent = figures["main_us"] + figures["threads_us"] + figures["client_us"]
    return (os.cpu_count() or 1) * 1e6 / spent


def _rounds(runs: list[dict[str, float]]) -> str:
    return ", ".join(f"{run['events_per_s']:.0f}; {run['p99_ms']:.1f}" for run in runs)


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
