"""Shared fixtures: throwaway PostgreSQL clusters (one for the session, one per outage test)."""

import uuid

import asyncpg
import pytest

from daemon.testing.postgres import PgCluster


@pytest.fixture(scope="session")
def pg_cluster():
    """A running cluster shared by the tests that never stop it; each test gets its own schema."""
    cluster = PgCluster.create()
    cluster.start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def own_pg():
    """A cluster of this test's own, to stop, kill and restart at will."""
    cluster = PgCluster.create()
    cluster.start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_schema():
    return "t_" + uuid.uuid4().hex[:12]


@pytest.fixture
async def pg_conn(pg_cluster):
    conn = await asyncpg.connect(pg_cluster.dsn())
    yield conn
    await conn.close()
