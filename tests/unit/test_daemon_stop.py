"""A normal stop, in the daemon's fixed order: each sink closed once, the journal closed, the socket gone."""

import asyncio

from daemon.app import Daemon
from daemon.config import load_config
from tests.support import until

FAIL_BOUND = 30.0


class CountingSink:
    """A sink that answers and counts how often it is closed."""

    batch_size = 8

    def __init__(self, name, journal_open):
        self.name = name
        self.closes = 0
        self.journal_open = journal_open
        self.closed_before_the_journal = None

    async def deliver(self, events):
        assert not self.closes, "delivered through a closed sink"

    async def check(self):
        assert not self.closes, "checked through a closed sink"

    async def close(self):
        self.closes += 1
        self.closed_before_the_journal = self.journal_open()


async def test_a_normal_stop_closes_each_sink_once_then_the_journal_and_removes_the_socket(tmp_path):
    path = tmp_path / "chatledger.toml"
    path.write_text(
        '[server]\nlisten = "127.0.0.1:0"\nwebhook_token = "stop-token-0123456789abcdef"\n'
        '[journal]\npath = "journal.sqlite"\n[status]\nsocket = "status.sock"\n'
        '[postgres]\ndsn = "postgresql://ledger@127.0.0.1:1/ledger"\n'
        '[airtable]\napi_key = "patSTOP0000000000.secret"\nbase_id = "appSTOP0000000000"\n'
    )
    config = load_config(path, {})
    sinks = {}

    def make_sink(name, *_):
        sinks[name] = CountingSink(name, lambda: daemon.journal.writer_alive)
        return sinks[name]

    daemon = Daemon(config, path, make_sink=make_sink)
    running = asyncio.create_task(daemon.run())

    async def up():
        return set(sinks) == {"postgres", "airtable"} and all(
            worker.state == "up" for worker in daemon.workers.values()
        )

    await until(up, running, "both sinks up", FAIL_BOUND)
    assert config.status.socket.exists()

    daemon.stop()
    assert await asyncio.wait_for(running, FAIL_BOUND) == 0
    assert {name: sink.closes for name, sink in sinks.items()} == {"postgres": 1, "airtable": 1}
    assert all(sink.closed_before_the_journal for sink in sinks.values())
    assert not daemon.journal.writer_alive and not config.status.socket.exists()
