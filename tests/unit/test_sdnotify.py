"""sd_notify datagrams reach a real Unix datagram socket."""

import os
import socket

import pytest

from daemon.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_ready_status_watchdog_stopping(listener):
    path, sock = listener
    notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    assert notifier.watchdog_interval == 2.0
    notifier.ready("up")
    notifier.watchdog()
    notifier.stopping()
    assert sock.recv(1024) == b"READY=1\nSTATUS=up"
    assert sock.recv(1024) == b"WATCHDOG=1"
    assert sock.recv(1024) == b"STOPPING=1\nSTATUS=stopping"


def test_without_systemd_nothing_is_sent():
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.ready("up")  # no socket, no error


def test_watchdog_for_another_pid_is_ignored(listener):
    path, _ = listener
    notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"})
    assert notifier.watchdog_interval is None


def test_abstract_socket_address():
    name = f"chatledger-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).status("hello")
        assert sock.recv(1024) == b"STATUS=hello"
    finally:
        sock.close()
