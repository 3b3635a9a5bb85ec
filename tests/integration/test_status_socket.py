"""The status socket's routes over a real Unix socket, with fakes of the daemon behind them: who may call
what (peer credentials), and parameters checked exactly as the command line checks them; and
prepare_socket_path on a real filesystem: only a stale socket is ever removed."""

import asyncio
import errno
import os
import pwd
import shutil
import socket
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web

from daemon.cli import main
from daemon.journal import Requeue
from daemon.recover import Selection
from daemon.status import (
    StatusRefused,
    create_status_app,
    prepare_socket_path,
    request_status,
    secure_socket,
    stream_status,
)
from tests.support import as_operator, unix_http, write_config


@pytest.fixture
async def served():
    """The status app on a socket an operator (the socket's group) can reach; the calls it passed on."""
    folder = Path(tempfile.mkdtemp(prefix="chatledger-socket-"))
    folder.chmod(0o711)
    path = folder / "status.sock"
    calls = []

    async def snapshot():
        return {"health": {"status": "healthy"}}

    async def sync():
        calls.append(("sync",))
        return {"replay": "triggered", "sinks": []}

    async def replay(sink, selection):
        calls.append(("replay", sink, selection))
        return {"replay": "triggered", "sinks": [], "requeued": {}}

    async def forget(phone, reference, dry_run=False):
        calls.append(("forget", phone, reference, *(["dry run"] if dry_run else [])))
        return {"stores": {}, "complete": True}

    async def recover(selection, options, emit):
        calls.append(("recover", selection, options))
        return {"report": {}}

    async def airtable(action):
        calls.append(("airtable", action))
        return {"done": [], "problems": [], "notes": []}

    async def discard(sink, event, reason, by):
        calls.append(("discard", sink, event, reason, by))
        return {"discarded": [], "others": [], "found": True}

    async def quarantine(limit, discarded, whole):
        calls.append(("quarantine", limit, discarded, whole))
        return {"open": 0, "discarded": 0, "elements": []}

    async def quarantine_discard(element, reason, by):
        calls.append(("quarantine discard", element, reason, by))
        return {"discarded": [], "found": True}

    runner = web.AppRunner(
        create_status_app(
            snapshot,
            sync,
            replay,
            forget,
            recover,
            airtable,
            discard=discard,
            quarantine=quarantine,
            quarantine_discard=quarantine_discard,
        ),
        access_log=None,
    )
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    secure_socket(path)
    yield SimpleNamespace(path=path, calls=calls)
    await runner.cleanup()
    shutil.rmtree(folder)


ME = pwd.getpwuid(os.geteuid()).pw_name  # who the daemon records as asking, from the socket's peer
READS = [
    ("GET", "/status"),
    ("GET", "/metrics"),
    ("POST", "/sync"),
    ("POST", "/airtable?action=check"),
    ("POST", "/airtable"),
]
# what changes data, and what reads the journal's personal data (as `dead` does: the journal is 0600)
CHANGES = [
    ("POST", "/replay"),
    ("POST", "/replay?dead=1"),
    ("POST", "/forget?phone=5511900000001"),
    ("POST", "/recover?all=1"),
    ("POST", "/airtable?action=init"),
    ("POST", "/discard?all=1&reason=x"),
    ("POST", "/forget?phone=5511900000001&dry_run=1"),
    ("GET", "/quarantine"),
    ("POST", "/quarantine/discard?all=1&reason=x"),
]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
async def test_the_socket_group_reads_and_only_the_daemon_user_or_root_changes(served):
    operator = as_operator(served.path.stat().st_gid)
    for method, route in READS:
        status, body = await asyncio.to_thread(unix_http, served.path, method, route, operator)
        assert status == 200, (route, body)
    assert served.calls == [("sync",), ("airtable", "check"), ("airtable", "check")]
    for method, route in CHANGES:
        status, body = await asyncio.to_thread(unix_http, served.path, method, route, operator)
        assert status == 403, (route, body)
        assert "only the daemon's user (root) or root" in body and "sudo -u root chatledger" in body
    assert len(served.calls) == 3  # nothing refused reached the daemon

    # root (and the daemon's own user, here the same) may
    for method, route in CHANGES:
        status, body = await asyncio.to_thread(unix_http, served.path, method, route)
        assert status == 200, (route, body)
    assert [call[0] for call in served.calls[3:]] == [
        "replay",
        "replay",
        "forget",
        "recover",
        "airtable",
        "discard",
        "forget",
        "quarantine",
        "quarantine discard",
    ]


async def refused(path, route):
    with pytest.raises(StatusRefused) as caught:
        if route.startswith("/recover"):
            async for _ in stream_status(path, route, 10):
                pass
        else:
            await request_status(path, "GET" if route.split("?")[0] == "/quarantine" else "POST", route)
    return str(caught.value)


BAD = [
    ("/recover?phone=x' != 'y", "--phone \"x' != 'y\" is not a phone number"),
    ("/recover?phone=x%27%20!%3D%20%27y", "--phone \"x' != 'y\" is not a phone number"),
    ("/recover", "one of the arguments --conversation --phone --since --all is required"),
    ("/recover?conversation=", "one of the arguments --conversation --phone --since --all is required"),
    ("/recover?all=1&phone=5511900000001", "argument --all: not allowed with argument --phone"),
    ("/recover?since=yesterday", "not an ISO 8601 date: 'yesterday'"),
    ("/recover?all=1&prefer=mine", "argument --prefer: invalid choice: 'mine' (choose from 'postgres', 'airtable')"),
    ("/recover?al=1", "unknown parameter al"),
    ("/recover?phone=5511&phone=x", "parameter phone given more than once"),
    ("/recover?all=maybe", "all must be 1 or 0"),
    ("/recover?all=1&dry_run=perhaps", "dry_run must be 1 or 0"),
    ("/recover?all=1&diff=2", "diff must be 1 or 0"),
    ("/replay?sink=mysql", "argument --sink: invalid choice: 'mysql'"),
    ("/replay?since=2026-13-01", "not an ISO 8601 date: '2026-13-01'"),
    ("/replay?since=0001-01-01T00:00:00%2B05:00", "out of range in UTC"),
    ("/recover?since=9999-12-31T23:59:59-05:00", "out of range in UTC"),
    ("/replay?dead=maybe", "dead must be 1 or 0"),
    ("/forget?phone=abc", "--phone 'abc' is not a phone number (7 to 20 digits; it has none)"),
    ("/forget", "--phone '' is not a phone number"),
    ("/forget?phone=1", "--phone '1' is not a phone number (7 to 20 digits; it has 1)"),
    ("/forget?phone=123456789012345678901", "is not a phone number (7 to 20 digits; it has 21)"),
    ("/forget?phone=5511988887777&reference=a%00b", "--reference must not hold a control character"),
    ("/forget?phone=5511988887777&reference=5511988887777", "--reference must not hold the phone number"),
    ("/forget?phone=5511&everyone=1", "unknown parameter everyone"),
    ("/discard?all=1", "--reason is empty"),
    ("/discard?event=7&reason=%20%20", "--reason is empty"),
    ("/discard?reason=why", "--discard takes one event ID, or --all"),
    ("/discard?event=7&all=1&reason=why", "--discard takes one event ID, or --all"),
    ("/discard?event=7&reason=a%07b", "--reason must not hold a control character"),
    ("/discard?event=7&reason=" + "x" * 501, "--reason must be at most 500 characters"),
    ("/discard?all=1&reason=x&sink=mysql", "argument --sink: invalid choice: 'mysql'"),
    ("/discard?all=1&reason=x&everything=1", "unknown parameter everything"),
    ("/forget?phone=5511988887777&dry_run=maybe", "dry_run must be 1 or 0"),
    ("/quarantine?limit=0", "--limit must be a whole number from 1 to 10000, not '0'"),
    ("/quarantine?limit=x", "--limit must be a whole number from 1 to 10000, not 'x'"),
    ("/quarantine?discarded=maybe", "discarded must be 1 or 0"),
    ("/quarantine?all=1", "unknown parameter all"),
    ("/quarantine/discard?id=7", "--reason is empty: say why these elements are given up"),
    ("/quarantine/discard?reason=why", "--discard takes one element id, or --all"),
    ("/quarantine/discard?id=7&all=1&reason=why", "--discard takes one element id, or --all"),
    (
        "/quarantine/discard?id=x7&reason=why",
        "--discard takes an element's id (a whole number, as `chatledger quarantine` lists it), not 'x7'",
    ),
    ("/quarantine/discard?id=7&reason=a%07b", "--reason must not hold a control character"),
    ("/quarantine/discard?all=1&reason=x&sink=postgres", "unknown parameter sink"),
]


@pytest.mark.parametrize("route, message", BAD)
async def test_a_bad_parameter_is_refused_with_the_command_line_message(served, route, message):
    assert message in await refused(served.path, route)
    assert served.calls == []


async def test_good_parameters_reach_the_daemon_as_the_command_line_sends_them(served):
    await request_status(served.path, "POST", "/forget?phone=%2B55%2011%2090000-0001")
    await request_status(served.path, "POST", "/forget?phone=5511900000001&reference=T-1")
    await request_status(served.path, "POST", "/replay?since=2026-11-20&sink=postgres")
    await request_status(served.path, "POST", "/replay?dead=1")
    await request_status(served.path, "POST", "/discard?event=wamid.7&sink=airtable&reason=test%20data&operator=alice")
    await request_status(served.path, "POST", "/discard?all=1&reason=%20fixed%20")
    await request_status(served.path, "POST", "/forget?phone=5511900000001&dry_run=1")
    await request_status(served.path, "GET", "/quarantine")
    await request_status(served.path, "GET", "/quarantine?limit=5&discarded=1&whole=1")
    await request_status(served.path, "POST", "/quarantine/discard?id=7&reason=a%20test&operator=alice")
    await request_status(served.path, "POST", "/quarantine/discard?all=1&reason=seen")
    async for _ in stream_status(served.path, "/recover?phone=%2B55%2011%2090000-0001&prefer=airtable", 10):
        pass
    async for _ in stream_status(served.path, "/recover?conversation=it%27s%20%5C", 10):
        pass
    async for _ in stream_status(served.path, "/recover?all=1&dry_run=1&diff=1", 10):
        pass
    assert served.calls == [
        ("forget", "5511900000001", None),
        ("forget", "5511900000001", "T-1"),
        ("replay", "postgres", Requeue(dead_only=False, since="2026-11-20T00:00:00.000Z")),
        ("replay", None, Requeue(dead_only=True)),
        ("discard", "airtable", "wamid.7", "test data", f"{ME} (sudo from alice)"),
        ("discard", None, None, "fixed", ME),
        ("forget", "5511900000001", None, "dry run"),
        ("quarantine", 100, False, False),
        ("quarantine", 5, True, True),
        ("quarantine discard", 7, "a test", f"{ME} (sudo from alice)"),
        ("quarantine discard", None, "seen", ME),
        ("recover", Selection(phone="5511900000001"), {"prefer": "airtable", "dry_run": False, "diff": False}),
        ("recover", Selection(conversation="it's \\"), {"prefer": "postgres", "dry_run": False, "diff": False}),
        ("recover", Selection(everything=True), {"prefer": "postgres", "dry_run": True, "diff": True}),
    ]


def test_the_command_line_says_the_same(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["forget", "--phone", "abc", "--config", str(config)]) == 64
    assert capsys.readouterr().err.strip() == (
        "chatledger: --phone 'abc' is not a phone number (7 to 20 digits; it has none)"
    )
    with pytest.raises(SystemExit):
        main(["replay", "--since", "2026-13-01", "--config", str(config)])
    assert "argument --since: not an ISO 8601 date: '2026-13-01'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["replay", "--since", "0001-01-01T00:00:00+05:00", "--config", str(config)])
    assert "argument --since: not a date chatledger can use" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["replay", "--sink", "mysql", "--config", str(config)])
    assert "argument --sink: invalid choice: 'mysql' (choose from 'postgres', 'airtable')" in capsys.readouterr().err


# -- prepare_socket_path ------------------------------------------------------------------------


def bound_socket(path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    return listener


def test_the_folder_is_created(tmp_path):
    path = tmp_path / "run" / "deeper" / "status.sock"
    prepare_socket_path(path)
    assert path.parent.is_dir() and not path.exists()


def test_a_stale_socket_is_removed(tmp_path):
    path = tmp_path / "status.sock"
    bound_socket(path).close()  # what a killed daemon leaves behind: nobody listens
    prepare_socket_path(path)
    assert not path.exists()


def test_a_live_socket_is_refused_and_kept(tmp_path):
    path = tmp_path / "status.sock"
    listener = bound_socket(path)
    listener.listen()
    try:
        with pytest.raises(OSError) as caught:
            prepare_socket_path(path)
        assert caught.value.errno == errno.EADDRINUSE
        assert path.is_socket()
    finally:
        listener.close()


@pytest.mark.parametrize("kind", ["regular file", "symlink to a file", "symlink to a stale socket", "directory"])
def test_anything_but_a_socket_is_refused_untouched(tmp_path, kind):
    path = tmp_path / "status.sock"
    target = tmp_path / "journal.sqlite"
    target.write_bytes(b"SQLite format 3\x00 precious")
    if kind == "regular file":
        path.write_bytes(b"precious")
    elif kind == "symlink to a file":
        path.symlink_to(target)
    elif kind == "symlink to a stale socket":
        bound_socket(tmp_path / "other.sock").close()
        path.symlink_to(tmp_path / "other.sock")
    else:
        path.mkdir()
        (path / "inside").write_bytes(b"precious")
    with pytest.raises(OSError, match=r"status socket path .* is a .*not a socket"):
        prepare_socket_path(path)
    assert target.read_bytes() == b"SQLite format 3\x00 precious"
    if kind == "regular file":
        assert path.read_bytes() == b"precious"
    elif kind == "directory":
        assert (path / "inside").read_bytes() == b"precious"
    else:
        assert path.is_symlink()


async def test_a_daemon_that_fails_is_not_taken_for_no_daemon(tmp_path):
    """A 500 must not send a command to do the work itself beside the running daemon."""

    async def failing(*args):
        raise RuntimeError("broken")

    async def snapshot():
        return {}

    folder = Path(tempfile.mkdtemp(prefix="chatledger-socket-"))
    path = folder / "status.sock"
    runner = web.AppRunner(create_status_app(snapshot, failing, failing, failing, failing, failing), access_log=None)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    try:
        with pytest.raises(StatusRefused, match="HTTP 500"):
            await request_status(path, "POST", "/replay?dead=1")
        lines = [line async for line in stream_status(path, "/recover?all=1", 10)]
        assert lines == [{"error": "recover failed in the daemon: RuntimeError (see its log)"}]
    finally:
        await runner.cleanup()
        shutil.rmtree(folder)
