"""The status socket: HTTP over a Unix socket, its access checks, and its client (the readable status is
daemon.status_text)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import pwd
import socket
import stat
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from loguru import logger

from daemon import params
from daemon.journal import Requeue, reference_problem
from daemon.params import BadParameter
from daemon.snapshot import Snapshot

Answer = dict[str, Any]  # a route's JSON answer
Emit = Callable[[dict[str, Any]], Awaitable[None]]  # one line of a streamed answer

SNAPSHOT: web.AppKey[Callable[[], Awaitable[Snapshot]]] = web.AppKey("snapshot")
SYNC: web.AppKey[Callable[[], Awaitable[Answer]]] = web.AppKey("sync")
REPLAY: web.AppKey[Callable[[str | None, Requeue | None], Awaitable[Answer]]] = web.AppKey("replay")
# (phone, reference, dry run) -> the report
FORGET: web.AppKey[Callable[[str, str | None, bool], Awaitable[Answer]]] = web.AppKey("forget")
AIRTABLE: web.AppKey[Callable[[str], Awaitable[Answer]]] = web.AppKey("airtable")
# (sink or None, event or None for all, reason, who) -> what was discarded
DISCARD: web.AppKey[Callable[[str | None, str | None, str, str], Awaitable[Answer]]] = web.AppKey("discard")
# (limit, discarded, whole) -> the quarantined elements; (element id or None for all, reason, who) -> discarded
QUARANTINE: web.AppKey[Callable[[int, bool, bool], Awaitable[Answer]]] = web.AppKey("quarantine")
QUARANTINE_DISCARD: web.AppKey[Callable[[int | None, str, str], Awaitable[Answer]]] = web.AppKey("quarantine_discard")
# (selection, options {prefer, dry_run, diff}, emit(line)) -> the final line
RECOVER: web.AppKey[Callable[[Any, dict[str, Any], Emit], Awaitable[Answer]]] = web.AppKey("recover")
# (since, bot or None, emit(line)) -> the final line (`chatledger reconcile` through the daemon)
RECONCILE: web.AppKey[Callable[[Any, str | None, Emit], Awaitable[Answer]]] = web.AppKey("reconcile")
# (conversation, phone, limit) -> what `chatledger show` prints
SHOW: web.AppKey[Callable[[str | None, str | None, int], Awaitable[Answer]]] = web.AppKey("show")

SOCKET_MODE = 0o660
CLIENT_TIMEOUT = 10.0
QUARANTINE_LIMIT, QUARANTINE_LIMIT_MAX = 100, 10000  # elements listed by default, and at most

EXIT_HEALTHY, EXIT_DEGRADED, EXIT_UNREACHABLE = 0, 1, 2


class StatusUnreachable(Exception):
    """No daemon answers on the status socket."""


def _unreachable(socket_path: Path, exc: Exception) -> StatusUnreachable:
    """Nobody answers, said in the operating system's words (aiohttp's own names `ssl:default` for a socket)."""
    error = getattr(exc, "os_error", None) or exc
    reason = getattr(error, "strerror", None) or str(error)
    return StatusUnreachable(
        f"no chatledger answers on {socket_path} ({reason}): is the daemon running with this config?"
    )


class StatusRefused(Exception):
    """The daemon answered, and did not do it: a bad parameter (400), a caller it does not allow (403),
    or a failure of its own (5xx)."""


def create_status_app(
    snapshot: Callable[[], Awaitable[Snapshot]],
    sync: Callable[[], Awaitable[dict[str, Any]]],
    replay: Callable[[str | None, Requeue | None], Awaitable[dict[str, Any]]],
    forget: Callable[[str, str | None, bool], Awaitable[dict[str, Any]]],
    recover: Callable[..., Awaitable[dict[str, Any]]] | None = None,
    airtable: Callable[[str], Awaitable[dict[str, Any]]] | None = None,
    discard: Callable[[str | None, str | None, str, str], Awaitable[dict[str, Any]]] | None = None,
    show: Callable[[str | None, str | None, int], Awaitable[dict[str, Any]]] | None = None,
    quarantine: Callable[[int, bool, bool], Awaitable[dict[str, Any]]] | None = None,
    quarantine_discard: Callable[[int | None, str, str], Awaitable[dict[str, Any]]] | None = None,
    reconcile: Callable[..., Awaitable[dict[str, Any]]] | None = None,
) -> web.Application:
    """Build the status app: GET /status, POST /sync, /replay?sink=NAME&dead=1, /forget?phone=DIGITS&reference=TEXT,
    /discard?event=ID|all=1&reason=TEXT, GET /quarantine, POST /quarantine/discard?id=N|all=1&reason=TEXT,
    /reconcile?since=WHEN&bot=ID."""
    app = web.Application(middlewares=[_owner_only])
    app[SNAPSHOT] = snapshot
    app[SYNC] = sync
    app[REPLAY] = replay
    app[FORGET] = forget
    app.router.add_post("/forget", _handle_forget)
    if recover is not None:
        app[RECOVER] = recover
        app.router.add_post("/recover", _handle_recover)
    if airtable is not None:
        app[AIRTABLE] = airtable
        app.router.add_post("/airtable", _handle_airtable)
    if discard is not None:
        app[DISCARD] = discard
        app.router.add_post("/discard", _handle_discard)
    if show is not None:
        app[SHOW] = show
        app.router.add_get("/show", _handle_show)
    if quarantine is not None and quarantine_discard is not None:
        app[QUARANTINE], app[QUARANTINE_DISCARD] = quarantine, quarantine_discard
        app.router.add_get("/quarantine", _handle_quarantine)
        app.router.add_post("/quarantine/discard", _handle_quarantine_discard)
    if reconcile is not None:
        app[RECONCILE] = reconcile
        app.router.add_post("/reconcile", _handle_reconcile)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/status", _handle_status)
    app.router.add_post("/sync", _handle_sync)
    app.router.add_post("/replay", _handle_replay)
    return app


# Routes that change data (the journal, PostgreSQL, the base): only the daemon's own user and root may
# call them. Whoever can open the socket (0660: its group) may read, sync and check.
OWNER_ONLY = {
    "/replay": "replay",
    "/forget": "forget",
    "/recover": "recover",
    "/discard": "dead --discard",
    "/quarantine/discard": "quarantine --discard",
    "/reconcile": "reconcile",
}
# Reads of personal data (the elements as received, customers' conversations): the same people only, as for
# `dead`, which reads the journal itself (0600). `show` also keeps the group from spending the base's budget.
PERSONAL_READS = {
    "/quarantine": ("quarantine", "reads the journal's personal data"),
    "/show": ("show", "reads personal data (customers' conversations)"),
}


def _owner_command(request: web.Request) -> tuple[str, str] | None:
    """The command a route serves, and why only the daemon's user and root may ask for it; None for anyone."""
    if request.path == "/airtable" and request.query.get("action") == "init":
        return "airtable init", "changes data"
    if request.path == "/forget" and request.query.get("dry_run", "") not in ("", "0", "false", "no"):
        return "forget --dry-run", "reads the journal's personal data"
    if request.path in PERSONAL_READS:
        return PERSONAL_READS[request.path]
    return (OWNER_ONLY[request.path], "changes data") if request.path in OWNER_ONLY else None


@web.middleware
async def _owner_only(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    guarded = _owner_command(request)
    if guarded is None:
        return await handler(request)
    command, does = guarded
    uid = peer_uid(request)
    if uid in (0, os.geteuid()):
        return await handler(request)
    owner = _user_name(os.geteuid())
    logger.warning("status socket: {} refused to uid {}: only {} or root may", command, uid, owner)
    return web.json_response(
        {
            "error": f"{command} {does}: only the daemon's user ({owner}) or root may ask "
            f"for it; run the command as that user, e.g. `sudo -u {owner} chatledger "
            f"{command} --config ...`, or as root"
        },
        status=403,
        dumps=_dumps,
    )


def peer_uid(request: web.Request) -> int | None:
    """The uid of the process at the other end of the Unix socket (SO_PEERCRED); None when unknown."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return int(uid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


async def _handle_status(request: web.Request) -> web.Response:
    return web.json_response(await request.app[SNAPSHOT](), dumps=_dumps)


async def _handle_sync(request: web.Request) -> web.Response:
    return web.json_response(await request.app[SYNC](), dumps=_dumps)


async def _handle_replay(request: web.Request) -> web.Response:
    """POST /replay?sink=NAME&dead=1&since=ISO&event=ID: re-queue what is selected, then replay."""
    try:
        query = _query(request, ("sink", "dead", "since", "event"))
        sink = params.choice("--sink", query["sink"], params.SINKS) if query.get("sink") else None
        dead = _flag("dead", query.get("dead", ""))
        since = params.since(query["since"]) if query.get("since") else None
    except BadParameter as exc:
        return _bad(exc)
    event = query.get("event") or None
    selection = Requeue(dead_only=dead, since=since, event=event) if (dead or since or event) else None
    try:
        answer = await request.app[REPLAY](sink, selection)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400, dumps=_dumps)
    return web.json_response(answer, dumps=_dumps)


async def _handle_discard(request: web.Request) -> web.Response:
    """POST /discard?event=ID|all=1&reason=TEXT&sink=NAME&operator=SUDO_USER: give dead letters up, recorded
    as asked by the socket's peer."""
    try:
        query = _query(request, ("sink", "event", "all", "reason", "operator"))
        sink = params.choice("--sink", query["sink"], params.SINKS) if query.get("sink") else None
        everything = _flag("all", query.get("all", ""))
        event = query.get("event") or None
        if (event is None) == (not everything):
            raise BadParameter("--discard takes one event ID, or --all")
        reason = params.reason(query.get("reason", ""))
    except BadParameter as exc:
        return _bad(exc)
    uid = peer_uid(request)
    who = params.operator_name(_user_name(uid) if uid is not None else "unknown", query.get("operator"))
    try:
        answer = await request.app[DISCARD](sink, event, reason, who)
    except ValueError as exc:
        return _bad(exc)
    return web.json_response(answer, dumps=_dumps)


def create_metrics_app(snapshot: Callable[[], Awaitable[Snapshot]]) -> web.Application:
    """GET /metrics alone, for the optional [metrics] listen TCP address."""
    app = web.Application()
    app[SNAPSHOT] = snapshot
    app.router.add_get("/metrics", handle_metrics)
    return app


async def handle_metrics(request: web.Request) -> web.Response:
    from daemon.metrics import CONTENT_TYPE
    from daemon.metrics import render as render_metrics

    body = render_metrics(await request.app[SNAPSHOT]())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _handle_forget(request: web.Request) -> web.Response:
    """POST /forget?phone=DIGITS&reference=TEXT&dry_run=1: erase one person (or count what that would erase)."""
    try:
        query = _query(request, ("phone", "reference", "dry_run"))
        phone = params.phone_digits(query.get("phone", ""))
        dry_run = _flag("dry_run", query.get("dry_run", ""))
    except BadParameter as exc:
        return _bad(exc)
    reference = query.get("reference")
    problem = reference_problem(reference, phone) if reference is not None else None
    if problem:
        return _bad(BadParameter(f"--reference {problem}"))
    return web.json_response(await request.app[FORGET](phone, reference, dry_run), dumps=_dumps)


async def _handle_show(request: web.Request) -> web.Response:
    """GET /show?conversation=ID|phone=DIGITS&limit=N: what `chatledger show` prints, read by the daemon (its
    journal, its Airtable budget); personal data, so the daemon's user and root only (PERSONAL_READS)."""
    from daemon.show import DEFAULT_LIMIT, MAX_LIMIT

    try:
        query = _query(request, ("conversation", "phone", "limit"))
        if ("conversation" in query) == ("phone" in query):
            raise BadParameter("give one of conversation and phone")
        conversation = params.conversation_id(query["conversation"]) if "conversation" in query else None
        phone = params.phone_digits(query["phone"]) if "phone" in query else None
        limit = params.limit(query.get("limit", str(DEFAULT_LIMIT)), MAX_LIMIT)
    except BadParameter as exc:
        return _bad(exc)
    return web.json_response(await request.app[SHOW](conversation, phone, limit), dumps=_dumps)


async def _handle_quarantine(request: web.Request) -> web.Response:
    """GET /quarantine?limit=N&discarded=1&whole=1: the quarantined elements (with `whole`, each as received)."""
    try:
        query = _query(request, ("limit", "discarded", "whole"))
        limit = params.limit(query.get("limit", str(QUARANTINE_LIMIT)), QUARANTINE_LIMIT_MAX)
        discarded, whole = _flag("discarded", query.get("discarded", "")), _flag("whole", query.get("whole", ""))
    except BadParameter as exc:
        return _bad(exc)
    answer = await request.app[QUARANTINE](limit, discarded, whole)
    # elements kept whole can be large: the answer is encoded beside the event loop, never on it
    return web.json_response(text=await asyncio.to_thread(_dumps, answer))


async def _handle_quarantine_discard(request: web.Request) -> web.Response:
    """POST /quarantine/discard?id=N|all=1&reason=TEXT&operator=SUDO_USER: give quarantined elements up,
    recorded as asked by the socket's peer."""
    try:
        query = _query(request, ("id", "all", "reason", "operator"))
        everything = _flag("all", query.get("all", ""))
        if ("id" in query) == everything:
            raise BadParameter("--discard takes one element id, or --all")
        element = None if everything else params.element_id(query["id"])
        reason = params.reason(query.get("reason", ""), "these elements")
    except BadParameter as exc:
        return _bad(exc)
    uid = peer_uid(request)
    who = params.operator_name(_user_name(uid) if uid is not None else "unknown", query.get("operator"))
    return web.json_response(await request.app[QUARANTINE_DISCARD](element, reason, who), dumps=_dumps)


async def _handle_airtable(request: web.Request) -> web.Response:
    """POST /airtable?action=init|check: set up or check the base with the daemon's own budget."""
    action = request.query.get("action", "check")
    if action not in ("init", "check"):
        return web.json_response({"error": "action must be init or check"}, status=400, dumps=_dumps)
    return web.json_response(await request.app[AIRTABLE](action), dumps=_dumps)


async def _handle_recover(request: web.Request) -> web.StreamResponse:
    """POST /recover?all=1|since=|phone=|conversation=&prefer=&dry_run=1&diff=1: one JSON line per progress
    step, then the report (or an error) as the last line."""
    from daemon.operations import recover_selection

    try:
        query = _query(request, ("conversation", "phone", "since", "all", "prefer", "dry_run", "diff"))
        selection = recover_selection(
            query.get("conversation"), query.get("phone"), query.get("since"), _flag("all", query.get("all", ""))
        )
        options = {
            "prefer": params.choice("--prefer", query.get("prefer") or "postgres", params.PREFER),
            "dry_run": _flag("dry_run", query.get("dry_run", "")),
            "diff": _flag("diff", query.get("diff", "")),
        }
    except ValueError as exc:  # BadParameter, or a selection that is not exactly one thing
        return _bad(exc)
    return await _streamed(request, "recover", lambda emit: request.app[RECOVER](selection, options, emit))


async def _handle_reconcile(request: web.Request) -> web.StreamResponse:
    """POST /reconcile?since=ISO|DURATION&bot=ID: one JSON line per chat read ({"progress": report}), then
    {"report": ...} (or {"error": ...}) as the last line."""
    from datetime import datetime

    try:
        query = _query(request, ("since", "bot"))
        since = params.reconcile_since(query.get("since", ""), datetime.now(UTC))
    except BadParameter as exc:
        return _bad(exc)
    bot = query.get("bot") or None
    return await _streamed(request, "reconcile", lambda emit: request.app[RECONCILE](since, bot, emit))


async def _streamed(
    request: web.Request, what: str, work: Callable[[Emit], Awaitable[dict[str, Any]]]
) -> web.StreamResponse:
    """NDJSON: each line `work` emits as it goes, then its answer (or why it failed) as the last line."""
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)

    async def emit(line: dict[str, Any]) -> None:
        await response.write((json.dumps(line) + "\n").encode())

    try:
        last = await work(emit)
    except Exception as exc:
        logger.exception("{} failed", what)
        last = {"error": f"{what} failed in the daemon: {type(exc).__name__} (see its log)"}
    await emit(last)
    await response.write_eof()
    return response


async def stream_status(socket_path: Path, route: str, timeout_s: float) -> AsyncIterator[dict[str, Any]]:
    """POST to the daemon and yield the JSON lines it streams; StatusUnreachable when nobody answers
    (or the daemon does not know the route), StatusRefused when it refuses."""
    connector = aiohttp.UnixConnector(path=str(socket_path))
    try:
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as session:
            async with session.post(f"http://chatledger{route}") as response:
                if response.status != 200:
                    raise await _not_ok(response, route)
                async for line in response.content:
                    if line.strip():
                        yield json.loads(line)
    except aiohttp.ClientPayloadError as exc:  # the daemon stopped (or broke) half-way through its answer
        raise StatusRefused(f"the daemon's answer on {route} was cut short: {exc}") from None
    except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionRefusedError) as exc:
        raise _unreachable(socket_path, exc) from None


def _query(request: web.Request, known: Sequence[str]) -> dict[str, str]:
    """The query's parameters; one the route does not know, or one given twice, is refused (a typo must
    not widen what a command selects)."""
    unknown = sorted(set(request.query) - set(known))
    if unknown:
        raise BadParameter(f"unknown parameter {', '.join(unknown)} (this route takes {', '.join(known)})")
    twice = sorted(name for name in set(request.query) if len(request.query.getall(name)) > 1)
    if twice:
        raise BadParameter(f"parameter {', '.join(twice)} given more than once")
    return dict(request.query)


def _flag(name: str, value: str) -> bool:
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise BadParameter(f"{name} must be 1 or 0, not {value!r}")


def _bad(exc: Exception) -> web.Response:
    return web.json_response({"error": str(exc)}, status=400, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False)


def prepare_socket_path(path: Path) -> None:
    """Create the folder and clear a stale socket; refuse if a live daemon answers there, or if
    anything but a socket is there (a mistaken path must never cost a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(
            errno.EEXIST,
            f"the status socket path {path} is {_file_kind(mode)}, not a socket: chatledger only ever removes "
            "a stale socket there, so it leaves it alone; move it away or set [status] socket to a path of its own",
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        path.unlink(missing_ok=True)  # left behind by a daemon that was killed
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another chatledger answers on the status socket {path}")


def _file_kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def secure_socket(path: Path) -> None:
    os.chmod(path, SOCKET_MODE)


async def request_status(
    socket_path: Path, method: str = "GET", route: str = "/status", timeout_s: float = CLIENT_TIMEOUT
) -> dict[str, Any]:
    """Ask the daemon over its socket; raise StatusUnreachable when nobody answers, StatusRefused when it
    refuses."""
    connector = aiohttp.UnixConnector(path=str(socket_path))
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            async with session.request(method, f"http://chatledger{route}") as response:
                if response.status != 200:
                    raise await _not_ok(response, route)
                answer: dict[str, Any] = await response.json()
                return answer
    except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionRefusedError) as exc:
        raise _unreachable(socket_path, exc) from None
    except TimeoutError:
        raise StatusUnreachable(f"chatledger on {socket_path} did not answer in {timeout_s:.0f} s") from None


async def request_snapshot(socket_path: Path) -> Snapshot:
    """GET /status: the daemon's snapshot as it sent it (a daemon older than this command may lack keys)."""
    answer: Any = await request_status(socket_path)
    snapshot: Snapshot = answer
    return snapshot


async def _not_ok(response: aiohttp.ClientResponse, route: str) -> Exception:
    """A refusal or a failure carries the daemon's reason, never to be mistaken for no daemon (a command
    would then do the work itself beside it); a 404 is a daemon that does not know the route."""
    if response.status == 404:
        return StatusUnreachable(f"daemon answered HTTP {response.status} on {route}")
    try:
        error = (await response.json(content_type=None)).get("error")
    except (ValueError, AttributeError, aiohttp.ClientError):
        error = None
    return StatusRefused(
        f"the daemon refused: {error}" if error else f"daemon answered HTTP {response.status} on {route}"
    )


def exit_code_for(snapshot: Snapshot) -> int:
    """`chatledger status`'s exit code: 0 healthy, 1 degraded."""
    return EXIT_HEALTHY if snapshot.get("health", {}).get("status") == "healthy" else EXIT_DEGRADED
