"""Fixtures the acceptance tests share."""

import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def folder():
    """The daemon's folder, which the socket's group may enter (pytest's tmp folders are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="chatledger-acceptance-"))
    path.chmod(0o750)
    yield path
    shutil.rmtree(path, ignore_errors=True)
