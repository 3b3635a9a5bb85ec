"""prepare_socket_path on a real filesystem: only a stale socket is ever removed."""

import errno
import socket

import pytest

from daemon.status import prepare_socket_path


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
