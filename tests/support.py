"""Helpers for tests that run the installed `chatledger` as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TOKEN = "acceptance-token-0123456789abcdef"
READY_TIMEOUT = 30.0


def chatledger_bin() -> str:
    """The console script installed next to this interpreter (the venv the tests run in)."""
    beside = Path(sys.executable).parent / "chatledger"
    if beside.exists():
        return str(beside)
    found = shutil.which("chatledger")
    if found is None:
        raise RuntimeError("chatledger is not installed: run the README's install command first")
    return found


def wait_for(condition, what: str, timeout: float = 180.0) -> Any:
    """Poll `condition()` until it returns something true, and return that; the timeout only bounds a
    failure (the tests wait for states, never for durations)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout} s"
        time.sleep(0.1)


async def until(condition, task, what: str = "state", timeout: float = 120.0) -> None:
    """Await `condition()` until true while `task` (a worker under test) keeps running; the
    timeout only bounds a failure."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert not task.done(), task
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not reached"
        await asyncio.sleep(0.02)


class HandClock:
    """A clock the test moves by hand (`clock.now += 60`), so no assertion rests on real time."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def query(cluster: Any, sql: str) -> list[Any]:
    """One statement on a test PostgreSQL cluster, from synchronous test code."""

    async def run() -> list[Any]:
        import asyncpg

        conn = await asyncpg.connect(cluster.dsn())
        try:
            return await conn.fetch(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(folder: Path, *, port: int | None = None, extra: str = "", level: str = "INFO") -> Path:
    port = port or free_port()
    path = folder / "chatledger.toml"
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\nwebhook_token = "{TOKEN}"\n'
        f'[journal]\npath = "state/journal.sqlite"\n'
        f'[status]\nsocket = "run/status.sock"\n'
        f'[log]\nlevel = "{level}"\n{extra}'
    )
    return path


def cli(
    config: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60, run_as: Sequence[str] = ()
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*run_as, chatledger_bin(), *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(env),
    )


OTHER_USER = "nobody"  # any user but root and the daemon's: an operator


def as_operator(group: int) -> list[str]:
    """The prefix that runs a command as another user who is in `group` (the socket's): an operator who
    joined the daemon's group to run `chatledger status`. Needs root."""
    import pwd

    user = pwd.getpwnam(OTHER_USER)
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", f"--groups={group}"]


# An HTTP/1.0 request over a Unix socket (no chunked answer): the response as bytes on stdout.
_UNIX_HTTP = r"""
import socket, sys
path, method, route = sys.argv[1:4]
with socket.socket(socket.AF_UNIX) as unix:
    unix.connect(path)
    unix.sendall(f"{method} {route} HTTP/1.0\r\nHost: chatledger\r\nContent-Length: 0\r\n\r\n".encode())
    while chunk := unix.recv(65536):
        sys.stdout.buffer.write(chunk)
"""


def unix_http(socket_path: Path, method: str, route: str, run_as: Sequence[str] = ()) -> tuple[int, str]:
    """One request to the status socket from a process of its own (of another user with `run_as`)."""
    done = subprocess.run(
        [*run_as, sys.executable, "-c", _UNIX_HTTP, str(socket_path), method, route],
        capture_output=True,
        timeout=120,
        env=_env({"PYTHONDONTWRITEBYTECODE": "1"}),
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHATLEDGER_", "AIRTABLE_", "NOTIFY_SOCKET", "WATCHDOG_", "JOURNAL_STREAM"))
        and k != "DATABASE_URL"
    }
    env.update(extra or {})
    return env


class Daemon:
    """`chatledger run` (`binary`, else chatledger_bin()) in a subprocess, its output in a log file."""

    def __init__(self, config: Path, env: dict[str, str] | None = None, binary: str | None = None):
        self.config = config
        self.env = env
        self.binary = binary
        self.log_path = config.parent / "daemon.log"
        self.process: subprocess.Popen | None = None
        text = config.read_text()
        self.port = int(text.split('listen = "127.0.0.1:')[1].split('"')[0])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/sendpulse?token={TOKEN}"

    def start(self, wait: bool = True) -> Daemon:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [self.binary or chatledger_bin(), "run", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(self.env),
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"chatledger exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"chatledger not ready after {READY_TIMEOUT} s:\n{self.log()}")

    def wait_for_log(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code (raises if it does not exit in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def status(self) -> dict[str, Any]:
        result = cli(self.config, "status", "--json", env=self.env)
        assert result.returncode in (0, 1), result.stderr
        return json.loads(result.stdout)


def post(url: str, body: Any, timeout: float = 30) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def incoming(message_id: str, phone: str = "5511987654321", text: str = "oi", contact: str = "c1") -> dict[str, Any]:
    return {
        "title": "incoming_message",
        "service": "whatsapp",
        "bot": {"id": "bot1"},
        "contact": {"id": contact, "phone": phone, "name": "Cliente"},
        "info": {"message": {"id": message_id, "channel_data": {"message": {"type": "text", "text": {"body": text}}}}},
    }


AIRTABLE_TOKEN = "patLOCAL0000000001.0123456789abcdef"
AIRTABLE_BASE = "appLOCAL000000001"


class _EmulatorProcess:
    """An emulator module (`python -m MODULE`) in a subprocess on a free port, its output in a log file."""

    module = ""
    control_timeout = 10.0

    def __init__(self, folder: Path, log_name: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / log_name
        self.process: subprocess.Popen | None = None

    def _launch(self, *args: str) -> None:
        """Start it and wait until its control routes answer."""
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, "--port", str(self.port), *args], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                self._control("/_emulator/stats")
                return
            except OSError:
                assert self.process.poll() is None, self.log_path.read_text()
                assert time.monotonic() < deadline, "emulator not ready"
                time.sleep(0.05)

    def _control(self, route: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + route, data=data, method="POST" if data else "GET")
        with urllib.request.urlopen(request, timeout=self.control_timeout) as answer:
            return json.loads(answer.read())

    def faults(self, **settings: Any) -> None:
        self._control("/_emulator/faults", settings)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class AirtableEmulator(_EmulatorProcess):
    """`python -m daemon.testing.airtable` in a subprocess, with the real limits unless told."""

    module = "daemon.testing.airtable"

    def __init__(self, folder: Path, *, lockout: float = 30.0, documented: str | None = None):
        super().__init__(folder, "airtable-emulator.log")
        self.lockout = lockout
        self.documented = documented  # the operators' documented base: "date", "dateTime" or "mixed"

    def start(self) -> AirtableEmulator:
        documented = ["--documented", self.documented] if self.documented else []
        self._launch("--token", AIRTABLE_TOKEN, "--base", AIRTABLE_BASE, "--lockout", str(self.lockout), *documented)
        return self

    def config(self) -> str:
        return f'[airtable]\napi_key = "{AIRTABLE_TOKEN}"\nbase_id = "{AIRTABLE_BASE}"\nendpoint_url = "{self.url}"\n'

    def stats(self) -> dict[str, Any]:
        return self._control("/_emulator/stats").get(AIRTABLE_BASE, {})

    def records(self, table: str) -> list[dict[str, Any]]:
        return self._control(f"/_emulator/records?base={AIRTABLE_BASE}&table={table}")["records"]

    def plan(self, **settings: Any) -> dict[str, Any]:
        """The base's records cap: max_records=N (None lifts it), error={...}."""
        return self._control("/_emulator/plan", {"base": AIRTABLE_BASE, **settings})

    def add_record(self, table: str, fields: dict[str, Any]) -> dict[str, Any]:
        """A record typed in by hand (no key uniqueness, no cap)."""
        return self._control("/_emulator/records", {"base": AIRTABLE_BASE, "table": table, "fields": fields})

    def rename_field(self, table: str, field: str, name: str) -> None:
        self._control("/_emulator/rename-field", {"base": AIRTABLE_BASE, "table": table, "field": field, "name": name})


class LoopThread:
    """An event loop of its own in a thread: async servers for synchronous callers (hypothesis examples)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine, timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def cli_on_terminal(
    config: Path,
    *args: str,
    env: dict[str, str] | None = None,
    columns: int = 100,
    interrupt_when: str | None = None,
    stderr_too: bool = False,
    timeout: float = 60,
) -> tuple[int, str, str]:
    """Run a command with its stdout (and with `stderr_too` its stderr) on a pseudo-terminal of `columns`:
    its exit code, what the terminal received (newlines as \\n) and its stderr when piped. With
    `interrupt_when`, Ctrl-C (SIGINT) once the screen shows that text."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    environ = {
        k: v
        for k, v in _env(None).items()
        if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES", "TTY_COMPATIBLE", "TTY_INTERACTIVE")
    }
    environ.update({"TERM": "xterm-256color", **(env or {})})
    process = subprocess.Popen(
        [chatledger_bin(), *args, "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave if stderr_too else subprocess.PIPE,
        env=environ,
    )
    os.close(slave)
    screen, deadline, interrupted = b"", time.monotonic() + timeout, False
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not chunk:
                    break
                screen += chunk
            if interrupt_when and not interrupted and interrupt_when.encode() in screen:
                process.send_signal(signal.SIGINT)
                interrupted = True
        else:
            raise AssertionError(f"{args} did not end within {timeout} s:\n{screen.decode(errors='replace')}")
        code = process.wait(timeout=timeout)
        errors = process.stderr.read().decode() if process.stderr else ""
        return code, screen.decode(errors="replace").replace("\r\n", "\n"), errors
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()
        os.close(master)


SENDPULSE_CLIENT_ID = "sp-acceptance-id"
SENDPULSE_CLIENT_SECRET = "sp-acceptance-secret-0123456789"
SENDPULSE_BOT = "68f176502ca6f03a9705c489"


class SendPulseEmulator(_EmulatorProcess):
    """`python -m daemon.testing.sendpulse` in a subprocess, with one bot and the real limits unless told."""

    module = "daemon.testing.sendpulse"
    control_timeout = 60.0  # adding messages posts their webhooks before it answers

    def __init__(self, folder: Path, *, token_ttl: float = 3600.0, rate: int = 10):
        super().__init__(folder, "sendpulse-emulator.log")
        self.token_ttl = token_ttl
        self.rate = rate

    def start(self) -> SendPulseEmulator:
        self._launch(
            "--client-id",
            SENDPULSE_CLIENT_ID,
            "--client-secret",
            SENDPULSE_CLIENT_SECRET,
            "--token-ttl",
            str(self.token_ttl),
            "--rate",
            str(self.rate),
            "--bot",
            SENDPULSE_BOT,
        )
        return self

    def config(self) -> str:
        return (
            f'[sendpulse]\nclient_id = "{SENDPULSE_CLIENT_ID}"\nclient_secret = "{SENDPULSE_CLIENT_SECRET}"\n'
            f'api_url = "{self.url}"\n'
        )

    def stats(self) -> dict[str, Any]:
        return self._control("/_emulator/stats")

    def add_contact(self, phone: str, name: str = "Cliente", **details: Any) -> dict[str, Any]:
        return self._control("/_emulator/contacts", {"bot_id": SENDPULSE_BOT, "phone": phone, "name": name, **details})

    def add_messages(self, *specs: dict[str, Any], background: bool = False) -> list[dict[str, Any]]:
        """Messages in the history (see the README for a spec's keys); each spec's webhook posted once."""
        return self._control("/_emulator/messages", {"messages": list(specs), "background": background})["messages"]

    def set_status(self, message_id: str, status: int) -> dict[str, Any]:
        return self._control("/_emulator/messages/status", {"id": message_id, "status": status})

    def history(self, contact_id: str) -> list[dict[str, Any]]:
        return self._control(f"/_emulator/messages?contact_id={contact_id}")["messages"]

    def webhooks(self) -> list[dict[str, Any]]:
        return self._control("/_emulator/webhooks")["webhooks"]
