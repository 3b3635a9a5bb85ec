"""How long hostile webhooks hold up the others: probe latency while each hostile request runs.

    .venv/bin/python bench/hostile.py [--repeats 5] [--chatledger PATH]

Starts `chatledger run` (journal only, log level INFO) and probes it throughout with two kinds of
request, each every 10 ms, open loop: a probe is sent when it is due whether or not the earlier ones
were answered (up to 64 connections per kind), and its latency counts from when it was due, so a
stall shows in every probe it delays. The webhook probe is a one-element incoming_message with a new
message id (answered after its commit); the loop probe is a GET of a path the daemon does not serve
(a 404 straight from the event loop: it shows how long the loop itself was held). After a quiet
baseline a second client sends each hostile request in turn, the rounds interleaved, waiting between
two until the log has stopped growing and the held-up probes are answered:

    (a) [{},{},...]: 300,000 elements in 900 KB (under the default 1 MiB max_body_bytes)
    (b) 1,000 realistic SendPulse elements of ~1 KB each (a body near max_body_bytes)
    (c) 1,000 elements that need cleaning: lone surrogate escapes, \\u0000, 1e400, far dates
    (d) 1,000 {} (all quarantined)

Prints, per scenario, the hostile request's answer and time, the latency (p50 / p99 / max) of the
probes in flight while it ran beside the baseline's, and how much the daemon's log grew per hostile
request; medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import machine  # noqa: E402
from tests.support import Daemon, chatledger_bin, incoming, write_config  # noqa: E402

HEADERS = {"Content-Type": "application/json"}
SCENARIOS = {
    "a": "300k {} in 900 KB",
    "b": "1000 realistic, ~1 KB each",
    "c": "1000 needing cleaning",
    "d": "1000 {}",
}
ELEMENT_BYTES = 1000  # (b): 1000 of them stay under the default max_body_bytes (1 MiB)
SETTLE = 0.5  # after an answer, the log must stay this long unchanged before the next request
CAUGHT_UP = 0.2  # ... and the probes a stall held up must have been answered, so no window sees another's


def hostile_body(scenario: str, round_: int) -> bytes:
    """The hostile request's body; message ids are new in every round, so nothing is a duplicate."""
    if scenario == "a":
        return b"[" + b",".join([b"{}"] * 300_000) + b"]"
    if scenario == "d":
        return b"[" + b",".join([b"{}"] * 1000) + b"]"
    tag = f"{os.getpid()}-{round_}"
    element = _realistic if scenario == "b" else _needs_cleaning
    return ("[" + ",".join(element(f"{tag}-{i}", i) for i in range(1000)) + "]").encode()


def _realistic(message_id: str, i: int) -> str:
    phone = f"55829{i % 500:08d}"
    event = {
        "title": "incoming_message",
        "service": "whatsapp",
        "bot": {"id": "68f176502ca6f03a9705c489", "name": "Loja Exemplo", "external_id": "5582930001234"},
        "contact": {
            "id": f"6a4969158278b1482a{i % 500:06d}",
            "phone": phone,
            "name": "Maria Cliente",
            "last_message": "Olá, gostaria de saber o preço do produto",
            "tags": ["lead", "whatsapp"],
            "variables": {"email": "maria@example.com", "cidade": "Maceió", "origem": "anúncio"},
        },
        "info": {
            "message": {
                "id": f"bench-b-{message_id}",
                "channel_data": {
                    "message": {
                        "from": phone,
                        "id": f"wamid.HBgMNTU4Mjk{message_id}",
                        "timestamp": "1736092619",
                        "type": "text",
                        "text": {"body": ""},
                    }
                },
            }
        },
        "date": 1736092619000 + i,
    }
    text = event["info"]["message"]["channel_data"]["message"]["text"]
    text["body"] = ("Quero saber o preco e o prazo de entrega. " * 30)[: ELEMENT_BYTES - len(json.dumps(event))]
    return json.dumps(event)


def _needs_cleaning(message_id: str, i: int) -> str:
    # Written as JSON text: \ud800 and \udfff are lone surrogate escapes, 1e400 overflows a double,
    # the dates are past year 9999 in UTC and before the year 1.
    return (
        '{"title":"incoming_message","service":"whats\\u0000app","bot":{"id":"bot\\ud800"},'
        f'"contact":{{"id":"c{i % 50}\\u0000","phone":1e400,"name":"Ana \\udfff\\u0000",'
        '"variables":{"score":1e400,"since":"0001-01-01T00:00:00+05:00","tiny":1e-20000}},'
        f'"info":{{"message":{{"id":"bench-c-{message_id}","channel_data":{{"message":{{"type":"text",'
        '"from":"+55 11 98765-4321","text":{"body":"oi \\ud83d \\u0000 fim"}}}}},'
        '"date":"9999-12-31T23:59:59-05:00"}'
    )


class Probes:
    """One kind of probe sent every `interval` seconds, open loop; `send` answers its status."""

    def __init__(self, send, interval: float, connections: int):
        self.send = send
        self.interval = interval
        self.connections = connections
        self.done: list[tuple[float, float, int]] = []  # (due, answered, status)
        self.outstanding: dict[int, float] = {}  # due times of the probes not yet answered
        self.stop = asyncio.Event()

    async def run(self, offset: float = 0.0) -> None:
        connector = aiohttp.TCPConnector(limit=self.connections)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            pending: set[asyncio.Task] = set()
            due = time.perf_counter() + offset
            for n in itertools.count():
                await asyncio.sleep(max(due - time.perf_counter(), 0))
                if self.stop.is_set():
                    break
                task = asyncio.create_task(self._probe(session, n, due))
                pending.add(task)
                task.add_done_callback(pending.discard)
                due += self.interval
            await asyncio.gather(*pending)

    async def _probe(self, session: aiohttp.ClientSession, n: int, due: float) -> None:
        self.outstanding[n] = due
        try:
            status = await self.send(session, n)
        except aiohttp.ClientError:
            status = 0
        self.done.append((due, time.perf_counter(), status))
        del self.outstanding[n]

    def caught_up(self) -> bool:
        """No probe due more than CAUGHT_UP seconds ago is still waiting for its answer."""
        return all(due > time.perf_counter() - CAUGHT_UP for due in self.outstanding.values())

    def between(self, start: float, end: float) -> list[tuple[float, float, int]]:
        """The probes in flight at some moment between `start` and `end`."""
        return [probe for probe in self.done if probe[0] < end and probe[1] > start]


def webhook_probe(url: str):
    """A one-element incoming_message with a new message id: journaled, answered after the commit."""

    async def send(session: aiohttp.ClientSession, n: int) -> int:
        body = json.dumps([incoming(f"probe-{os.getpid()}-{n}", contact=f"p{n % 20}")]).encode()
        async with session.post(url, data=body, headers=HEADERS) as response:
            await response.read()
            return response.status

    return send


def loop_probe(url: str):
    """A GET of a path the daemon does not serve: a 404 from the event loop, nothing journaled or logged."""

    async def send(session: aiohttp.ClientSession, n: int) -> int:
        async with session.get(url) as response:
            await response.read()
            return 200 if response.status == 404 else response.status

    return send


class LogMeter:
    """The daemon log's size in bytes and lines, read on from where it was last read."""

    def __init__(self, path: Path):
        self.path = path
        self.bytes = 0
        self.lines = 0

    def read(self) -> tuple[int, int]:
        with open(self.path, "rb") as log:
            log.seek(self.bytes)
            while chunk := log.read(1 << 20):
                self.bytes += len(chunk)
                self.lines += chunk.count(b"\n")
        return self.bytes, self.lines


async def settle(meter: LogMeter) -> None:
    """Return once the log has not grown for SETTLE seconds (nothing is still being written)."""
    size = (await asyncio.to_thread(meter.read))[0]
    while True:
        await asyncio.sleep(SETTLE)
        grown = (await asyncio.to_thread(meter.read))[0]
        if grown == size:
            return
        size = grown


async def session_run(daemon: Daemon, args: argparse.Namespace, bodies: dict[str, list[bytes]]) -> dict:
    probes = {
        "webhook": Probes(webhook_probe(daemon.url), args.interval, args.probe_connections),
        "loop": Probes(
            loop_probe(f"http://127.0.0.1:{daemon.port}/bench-loop-probe"), args.interval, args.probe_connections
        ),
    }
    runners = [asyncio.create_task(probe.run(offset=k * args.interval / 2)) for k, probe in enumerate(probes.values())]
    meter = LogMeter(daemon.log_path)
    rounds: list[dict] = []
    try:
        await asyncio.sleep(1.0)  # warm up: connections open, the first commits done
        await settle(meter)
        log_before = await asyncio.to_thread(meter.read)
        baseline = (time.perf_counter(), time.perf_counter() + args.baseline)
        await asyncio.sleep(args.baseline)
        log_after = await asyncio.to_thread(meter.read)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            for round_ in range(args.repeats):  # rounds interleave the scenarios, so drift hits all alike
                for scenario in bodies:
                    before = await asyncio.to_thread(meter.read)
                    start = time.perf_counter()
                    async with session.post(daemon.url, data=bodies[scenario][round_], headers=HEADERS) as response:
                        answer = await response.text()
                        status = response.status
                    end = time.perf_counter()
                    await settle(meter)
                    after = meter.read()
                    while not all(probe.caught_up() for probe in probes.values()):
                        await asyncio.sleep(0.05)
                    rounds.append(
                        {
                            "scenario": scenario,
                            "status": status,
                            "answer": answer,
                            "start": start,
                            "end": end,
                            "log_bytes": after[0] - before[0],
                            "log_lines": after[1] - before[1],
                        }
                    )
                    await asyncio.sleep(args.gap)
    finally:
        for probe in probes.values():
            probe.stop.set()
        await asyncio.gather(*runners)
    for entry in rounds:
        entry["probes"] = {name: probe.between(entry["start"], entry["end"]) for name, probe in probes.items()}
    return {
        "baseline": {
            name: [p for p in probe.done if baseline[0] <= p[0] < baseline[1]] for name, probe in probes.items()
        },
        "baseline_log": (log_after[0] - log_before[0], log_after[1] - log_before[1]),
        "rounds": rounds,
        "probes": {name: probe.done for name, probe in probes.items()},
    }


def latencies(probes: list[tuple[float, float, int]]) -> dict[str, float]:
    """p50, p99 (nearest rank) and max latency in ms, counted from when each probe was due."""
    values = sorted((answered - due) * 1000 for due, answered, _ in probes)
    if not values:
        return {"n": 0, "p50": math.nan, "p99": math.nan, "max": math.nan}
    return {
        "n": len(values),
        "p50": statistics.median(values),
        "p99": values[math.ceil(len(values) * 0.99) - 1],
        "max": values[-1],
    }


def report(result: dict, args: argparse.Namespace, binary: str) -> None:
    print(f"machine: {machine()}")
    print(f"chatledger: {binary}")
    print(
        f"probes, each every {args.interval * 1000:g} ms, open loop (latency from when due), up to "
        f"{args.probe_connections} connections:"
    )
    print(
        "  webhook: a one-element incoming_message, answered after its commit; "
        "loop: GET of an unserved path, a 404 from the event loop"
    )
    for name, done in result["probes"].items():
        failed = sum(1 for *_, status in done if status != 200)
        base = latencies(result["baseline"][name])
        print(
            f"  {name}: {len(done)} sent, {failed} not answered as expected; baseline ({args.baseline:g} s quiet, "
            f"{base['n']} probes): p50 {base['p50']:.1f} ms, p99 {base['p99']:.1f} ms, max {base['max']:.1f} ms"
        )
    print(f"  log during the baseline: {result['baseline_log'][0]} bytes, {result['baseline_log'][1]} lines")
    print(
        f"hostile requests: {args.repeats} rounds; medians; probe figures are over the probes in flight while "
        "the hostile request ran"
    )
    print(
        f"{'':<31}{'answer':>7}{'ms':>7} |{'webhook':>7}{'p50':>7}{'p99':>7}{'max':>7} |{'loop':>5}{'p50':>7}"
        f"{'p99':>7}{'max':>7} |{'log bytes':>10}{'lines':>7}"
    )
    for scenario in args.scenarios:
        title = SCENARIOS[scenario]
        runs = [entry for entry in result["rounds"] if entry["scenario"] == scenario]
        statuses = "/".join(str(status) for status in sorted({entry["status"] for entry in runs}))
        line = f"({scenario}) {title:<27}{statuses:>7}{_median((e['end'] - e['start']) * 1000 for e in runs):>7.0f} |"
        for name, width in (("webhook", 7), ("loop", 5)):
            figures = [latencies(entry["probes"][name]) for entry in runs]
            line += (
                f"{_median(f['n'] for f in figures):>{width}.0f}"
                + "".join(f"{_median(f[key] for f in figures):>7.0f}" for key in ("p50", "p99", "max"))
                + " |"
            )
        line += f"{_median(e['log_bytes'] for e in runs):>10.0f}{_median(e['log_lines'] for e in runs):>7.0f}"
        print(line)
    print("per round (hostile ms / webhook probe max ms / loop probe max ms):")
    for scenario in args.scenarios:
        runs = [entry for entry in result["rounds"] if entry["scenario"] == scenario]
        print(
            f"  ({scenario}) "
            + ", ".join(
                f"{(e['end'] - e['start']) * 1000:.0f}/{latencies(e['probes']['webhook'])['max']:.0f}"
                f"/{latencies(e['probes']['loop'])['max']:.0f}"
                for e in runs
            )
        )
    print("answers (first round):")
    for scenario in args.scenarios:
        entry = next(e for e in result["rounds"] if e["scenario"] == scenario)
        print(f"  ({scenario}) {entry['status']} {entry['answer'][:160]}")


def _median(values) -> float:
    return statistics.median(list(values))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--chatledger", default=None, help="the chatledger executable to run (default: the one beside this interpreter)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the four hostile requests")
    parser.add_argument("--baseline", type=float, default=5.0, help="seconds of quiet probing first")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between two probes")
    parser.add_argument("--probe-connections", type=int, default=64)
    parser.add_argument("--scenarios", default="abcd", help="which hostile requests to send, in this order")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between hostile requests")
    args = parser.parse_args()
    if not args.scenarios or set(args.scenarios) - set(SCENARIOS):
        parser.error(f"--scenarios takes letters from {''.join(SCENARIOS)}")
    args.scenarios = "".join(dict.fromkeys(args.scenarios))

    binary = args.chatledger or chatledger_bin()
    bodies = {scenario: [hostile_body(scenario, r) for r in range(args.repeats)] for scenario in args.scenarios}
    workdir = Path(tempfile.mkdtemp(prefix="chatledger-bench-"))
    daemon = Daemon(write_config(workdir, level="INFO"), binary=binary).start()
    try:
        result = asyncio.run(session_run(daemon, args, bodies))
        if daemon.process.poll() is not None:
            raise RuntimeError(f"daemon exited:\n{daemon.log()[-2000:]}")
    finally:
        daemon.stop(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
    report(result, args, binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
