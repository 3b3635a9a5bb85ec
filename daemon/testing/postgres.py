"""A throwaway PostgreSQL cluster for tests and benchmarks: initdb, start, stop, kill, destroy.

initdb and postgres refuse to run as root, so as root the cluster belongs to the `postgres` OS
user (run through runuser) and lives in a temp folder that user owns. It listens on 127.0.0.1 on
a free port, with its Unix socket inside that folder.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PG_USER = "postgres"


def find_bindir() -> Path:
    """The folder of initdb/pg_ctl: $PG_BINDIR, Debian's newest /usr/lib/postgresql/N/bin, or PATH."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise RuntimeError("PostgreSQL server binaries not found (install the postgresql package, or set PG_BINDIR)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PgCluster:
    """One cluster; `PgCluster.create()` runs initdb, then start()/stop()/kill() as a test needs."""

    def __init__(self, root: Path, port: int, bindir: Path, as_postgres: bool, durable: bool):
        self.root = root
        self.port = port
        self.bindir = bindir
        self.as_postgres = as_postgres
        self.durable = durable
        self.data = root / "data"
        self.log = root / "postgres.log"

    @classmethod
    def create(cls, *, durable: bool = False) -> PgCluster:
        """initdb a new cluster in a fresh temp folder. durable=False turns fsync off (tests only: a killed
        server loses nothing it acknowledged, a crashed machine might)."""
        bindir = find_bindir()
        as_postgres = os.geteuid() == 0
        root = Path(tempfile.mkdtemp(prefix="chatledger-pg-"))
        if as_postgres:
            shutil.chown(root, PG_USER, PG_USER)
        cluster = cls(root, free_port(), bindir, as_postgres, durable)
        cluster._run(
            "initdb",
            "-D",
            str(cluster.data),
            "-U",
            PG_USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        return cluster

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", PG_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
                f"\n{self.log_tail()}"
            )
        return result

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> None:
        options = [
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"port={self.port}",
            "-c",
            f"unix_socket_directories={self.root}",
            "-c",
            "max_connections=50",
        ]
        if not self.durable:
            # fsync off: only a machine crash could lose data. synchronous_commit stays on: with it off
            # a commit is acknowledged before its WAL is written, and stop("immediate"), which the
            # outage tests use as a crash, would lose acknowledged commits.
            options += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        self._run(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log), "-o", " ".join(options)
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; mode "immediate" is a crash as far as clients can tell."""
        self._run("pg_ctl", "stop", "-w", "-t", "60", "-D", str(self.data), "-m", mode, check=False)

    def kill(self) -> None:
        self.stop("immediate")

    @property
    def running(self) -> bool:
        return self._run("pg_ctl", "status", "-D", str(self.data), check=False).returncode == 0

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def destroy(self) -> None:
        if self.data.exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
