"""The status socket of the installed daemon: hostile parameters."""

import pytest

from tests.support import AirtableEmulator, Daemon, cli, incoming, post, unix_http, wait_for, write_config

pytestmark = pytest.mark.acceptance


def test_a_formula_injection_over_the_socket_is_refused_before_anything_is_read(tmp_path, pg_cluster, pg_schema):
    emulator = AirtableEmulator(tmp_path).start()
    config = write_config(tmp_path, extra=emulator.config()
                          + f'[postgres]\ndsn = "{pg_cluster.dsn()}"\nschema = "{pg_schema}"\n')
    try:
        assert cli(config, "airtable", "init").returncode == 0
        daemon = Daemon(config).start()
        try:
            assert post(daemon.url, [incoming("m1"), incoming("m2", phone="5511900000002", contact="c2")])[0] == 200
            wait_for(lambda: daemon.status()["sinks"]["airtable"]["delivered"] == 2, "delivered to Airtable")
            before = emulator.stats()["requests"]
            socket_path = tmp_path / "run" / "status.sock"
            for route in ("/recover?phone=x%27%20!%3D%20%27y", "/recover?conversation=a&phone=5511",
                          "/recover?since=x%27)%20%26%20TRUE()", "/recover?all=1&prefer=everything"):
                status, body = unix_http(socket_path, "POST", route)
                assert status == 400, (route, body)
            assert "has no digits" in unix_http(socket_path, "POST", "/recover?phone=x%27%20!%3D%20%27y")[1]
            assert emulator.stats()["requests"] == before  # nothing was read
            assert daemon.stop() == 0
        finally:
            if daemon.process.poll() is None:
                daemon.kill()
    finally:
        emulator.stop()
