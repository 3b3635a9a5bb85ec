"""The installed `chatledger run` in a subprocess: webhooks, status, signals, kill -9, restart."""

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import TOKEN, Daemon, chatledger_bin, cli, incoming, post, write_config

pytestmark = pytest.mark.acceptance


@pytest.fixture
def config(tmp_path):
    return write_config(tmp_path)


@pytest.fixture
def daemon(config):
    running = Daemon(config).start()
    yield running
    if running.process.poll() is None:
        running.kill()


def journal_rows(config, sql):
    with sqlite3.connect(config.parent / "state" / "journal.sqlite") as conn:
        return conn.execute(sql).fetchall()


def test_webhooks_status_sync_and_clean_stop(daemon, config):
    assert post(daemon.url, [incoming("a"), incoming("b"), 5]) == (200, {"accepted": 2, "duplicates": 0, "rejected": 1})
    assert post(daemon.url, incoming("a")) == (200, {"accepted": 0, "duplicates": 1, "rejected": 0})
    wrong = daemon.url.replace(TOKEN, "nope")
    assert post(wrong, [incoming("c")])[0] == 401

    status = daemon.status()
    assert status["journal"]["events"] == 2
    assert status["webhook"] == {"accepted": 2, "duplicates": 1, "rejected": 1}
    assert status["sinks"]["postgres"]["state"] == "disabled"
    assert status["sinks"]["airtable"]["state"] == "disabled"
    assert status["health"]["status"] == "healthy"
    assert status["version"] and status["uptime_s"] >= 0

    readable = cli(config, "status")
    assert readable.returncode == 0
    assert "HEALTHY" in readable.stdout and "2 accepted, 1 duplicates, 1 rejected" in readable.stdout

    synced = cli(config, "sync")  # journal only: the daemon was asked, and there was nothing to replay
    assert synced.returncode == 78 and "no sink is enabled" in synced.stderr and "triggered" not in synced.stdout

    socket_path = config.parent / "run" / "status.sock"
    assert oct(os.stat(socket_path).st_mode & 0o777) == "0o660"
    assert daemon.stop(timeout=10) == 0
    assert not socket_path.exists()
    assert "chatledger stopped" in daemon.log()


def test_sighup_reloads_log_level_and_keeps_running(daemon, config):
    assert post(daemon.url, incoming("a"))[0] == 200
    assert "webhook: 1 accepted" not in daemon.log()  # that line is DEBUG
    config.write_text(config.read_text().replace('level = "INFO"', 'level = "DEBUG"'))
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_log("log level DEBUG")
    assert "SIGHUP: reloading" in daemon.log()
    assert post(daemon.url, incoming("b"))[0] == 200
    assert daemon.status()["journal"]["events"] == 2
    assert "webhook: 1 accepted" in daemon.log()
    assert daemon.process.poll() is None
    assert daemon.stop() == 0


def test_kill_9_mid_intake_loses_nothing_acknowledged(config):
    daemon = Daemon(config).start()
    acknowledged: list[str] = []
    lock = threading.Lock()

    def send(i: int) -> None:
        try:
            code, _ = post(daemon.url, [incoming(f"m{i}", contact=f"c{i % 7}")], timeout=10)
        except OSError:
            return  # the daemon died under this request: not acknowledged, SendPulse would retry
        if code == 200:
            with lock:
                acknowledged.append(f"m{i}")
                if len(acknowledged) == 150:
                    daemon.process.kill()

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(send, range(600)))
    daemon.process.wait(timeout=10)
    assert daemon.process.returncode == -signal.SIGKILL
    assert len(acknowledged) >= 150

    stored = {row[0] for row in journal_rows(config, "SELECT message_id FROM events")}
    assert set(acknowledged) <= stored
    assert journal_rows(config, "PRAGMA integrity_check") == [("ok",)]

    restarted = Daemon(config).start()  # a stale socket and lock are left behind by kill -9
    try:
        status = restarted.status()
        assert status["journal"]["events"] == len(stored)
        assert status["webhook"]["accepted"] == len(stored)
        # SendPulse resends what was not acknowledged; resends of stored events are duplicates
        resent = [incoming(f"m{i}", contact=f"c{i % 7}") for i in range(600)]
        code, answer = post(restarted.url, resent)
        assert code == 200
        assert answer == {"accepted": 600 - len(stored), "duplicates": len(stored), "rejected": 0}
        assert restarted.status()["journal"]["events"] == 600
        assert restarted.stop() == 0
    finally:
        if restarted.process.poll() is None:
            restarted.kill()
    assert journal_rows(config, "PRAGMA integrity_check") == [("ok",)]


def test_systemd_notify_ready_watchdog_stopping(config, tmp_path):
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(20)
    daemon = Daemon(config, env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"})
    try:
        daemon.start()
        messages = []
        while not any(m.startswith(b"WATCHDOG=1") for m in messages):
            messages.append(listener.recv(4096))
        assert messages[0].startswith(b"READY=1\nSTATUS=")
        assert daemon.stop() == 0
        while not messages[-1].startswith(b"STOPPING=1"):
            messages.append(listener.recv(4096))
    finally:
        listener.close()
        if daemon.process.poll() is None:
            daemon.kill()


def test_second_daemon_on_the_same_journal_is_refused(daemon, config):
    (config.parent / "other").mkdir()
    other = write_config(config.parent / "other")
    other.write_text(
        other.read_text().replace(
            'path = "state/journal.sqlite"', f'path = "{config.parent / "state" / "journal.sqlite"}"'
        )
    )
    second = Daemon(other).start(wait=False)
    assert second.process.wait(timeout=30) == 1
    assert "in use by another chatledger" in second.log()
    assert post(daemon.url, incoming("still-up"))[0] == 200


def test_bad_config_has_its_own_exit_code_and_hides_secrets(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        '[server]\nwebhook_token = "0123456789abcdef-secret"\nlisten = "nowhere"\n'
        '[postgres]\ndsn = "postgresql://u:hunter2@h/db"\n'
    )
    for command in ("run", "check-config", "status"):
        result = cli(path, command)
        assert result.returncode == 78
        assert "[server] listen" in result.stderr
        assert "hunter2" not in result.stderr + result.stdout
        assert "0123456789abcdef-secret" not in result.stderr + result.stdout


def test_check_config_prints_settings_without_secrets(config):
    result = cli(config, "check-config", env={"CHATLEDGER_POSTGRES__DSN": "postgresql://u:hunter2@h/db"})
    assert result.returncode == 0
    assert "hunter2" not in result.stdout and TOKEN not in result.stdout
    assert "sinks enabled: postgres" in result.stdout


@pytest.mark.parametrize("dsn", ["mysql://u:hunter2@h/db", "postgresql://u:hunter2@h:notaport/db"])
def test_a_dsn_asyncpg_cannot_use_is_a_config_error(config, dsn):
    for env in ({"CHATLEDGER_POSTGRES__DSN": dsn}, {"DATABASE_URL": dsn}):
        for command in ("check-config", "run"):
            result = cli(config, command, env=env)
            assert result.returncode == 78
            assert "[postgres] dsn" in result.stderr
            assert "hunter2" not in result.stderr + result.stdout


def test_check_config_hides_the_endpoint_userinfo(config):
    result = cli(config, "check-config", env={"CHATLEDGER_AIRTABLE__ENDPOINT_URL": "https://u:hunter2@proxy.example"})
    assert result.returncode == 0
    assert "hunter2" not in result.stdout
    assert '"endpoint_url": "https://***@proxy.example"' in result.stdout


def test_status_and_sync_without_a_daemon_exit_2(config):
    assert cli(config, "status").returncode == 2
    assert cli(config, "status", "--json").returncode == 2
    assert cli(config, "sync").returncode == 2


def test_json_logs(tmp_path):
    config = write_config(tmp_path, extra="json = true\n")
    daemon = Daemon(config).start()
    try:
        post(daemon.url, [incoming("a", phone="+55 11 98765-4321"), 1])
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
    lines = [json.loads(line) for line in daemon.log().splitlines() if line.strip()]
    assert any("quarantined" in line["message"] for line in lines)
    assert all({"time", "level", "message"} <= set(line) for line in lines)
    assert "98765-4321" not in daemon.log() and "5511987654321" not in daemon.log()


def test_journal_check_command(config):
    daemon = Daemon(config).start()
    assert post(daemon.url, [incoming("a"), incoming("b")])[0] == 200
    beside = cli(config, "journal", "check")
    assert beside.returncode == 0 and "no problems found" in beside.stdout and "2 events" in beside.stdout
    assert cli(config, "journal", "check", "--repair").returncode == 1  # refused: the daemon holds the journal
    assert daemon.stop() == 0
    with sqlite3.connect(config.parent / "state" / "journal.sqlite") as conn:
        conn.execute("INSERT INTO deliveries (sink, event_id, state) VALUES ('postgres', 999, 'pending')")
    found = cli(config, "journal", "check", "--json")
    assert found.returncode == 1
    assert json.loads(found.stdout)["orphan_deliveries"] == {"postgres": 1}
    fixed = cli(config, "journal", "check", "--repair")
    assert fixed.returncode == 0 and "repaired: 1 delivery rows without an event removed" in fixed.stdout


def test_prometheus_metrics_on_the_socket_and_a_tcp_listener(tmp_path):
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from tests.support import free_port

    port = free_port()
    config = write_config(tmp_path, extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    daemon = Daemon(config).start()
    try:
        for i in range(5):
            assert post(daemon.url, [incoming(f"m{i}"), incoming(f"n{i}")])[0] == 200
        assert post(daemon.url, [incoming("m0"), "not an object"])[0] == 200

        def scrape(text):
            return {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
            }

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            assert answer.headers["Content-Type"].startswith("text/plain")
            tcp = scrape(answer.read().decode())
        assert tcp[("chatledger_events_accepted_total", ())] == 10
        assert tcp[("chatledger_events_duplicates_total", ())] == 1
        assert tcp[("chatledger_events_rejected_total", ())] == 1
        commits = tcp[("chatledger_journal_commits_total", ())]
        assert commits >= 6 and tcp[("chatledger_journal_commit_seconds_count", ())] == commits
        assert tcp[("chatledger_sink_state", (("sink", "postgres"), ("state", "disabled")))] == 1

        with socket.socket(socket.AF_UNIX) as unix:
            unix.connect(str(config.parent / "run" / "status.sock"))
            unix.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            raw = b""
            while chunk := unix.recv(65536):
                raw += chunk
        over_socket = scrape(raw.split(b"\r\n\r\n", 1)[1].decode())
        assert over_socket[("chatledger_events_accepted_total", ())] == 10
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()


def test_top_shows_intake_and_sinks(daemon, config):
    for i in range(3):
        assert post(daemon.url, [incoming(f"top{i}")])[0] == 200
    shown = cli(config, "top", "--count", "2", "--interval", "0.2")
    assert shown.returncode == 0, shown.stderr
    frames = shown.stdout.split("\n\nchatledger ")
    assert len(frames) == 2, shown.stdout
    first, second = frames
    assert "HEALTHY" in first and "3 accepted, 0 duplicates, 0 rejected" in first
    assert "postgres  disabled" in first and "no errors seen" in first
    assert "/s accepted" in second  # the second frame has a rate
    assert "\x1b[" not in shown.stdout  # no screen control when not on a terminal


def test_check_config_and_the_start_warn_while_the_webhook_token_is_the_examples(config):
    example = "example-token-replace-me-0123456789"  # config.example.toml's, public
    assert example in (Path(__file__).parents[2] / "config.example.toml").read_text()
    result = cli(config, "check-config", env={"CHATLEDGER_SERVER__WEBHOOK_TOKEN": example})
    assert result.returncode == 0  # it works, but anyone who read the example can post to it
    assert "[server] webhook_token is the example's" in result.stderr and "openssl rand -hex 24" in result.stderr
    assert "webhook_token is the example" not in cli(config, "check-config").stderr


def test_the_readmes_example_webhook_is_accepted(config):
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    body = re.search(r"-d '(\[.*?\])'\n# (\{.*?\})\n", readme, re.S)
    url = re.search(r"curl -s '(http://127\.0\.0\.1:8080(/webhooks/sendpulse)\?token=([^']+))'", readme)
    assert body and url and url.group(3) == "example-token-replace-me-0123456789"
    daemon = Daemon(config).start()
    try:
        assert post(daemon.url, json.loads(body.group(1))) == (200, json.loads(body.group(2)))
        assert daemon.status()["journal"]["events"] == 1
    finally:
        daemon.stop()


def test_top_without_a_daemon_does_not_exit_0(config):
    result = cli(config, "top", "--count", "1")
    assert result.returncode == 2 and "retrying" in result.stdout


def test_usage_errors_have_their_own_exit_code_and_the_config_has_defaults(tmp_path, config):
    def bare(*args, env=None):
        return subprocess.run(
            [chatledger_bin(), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **(env or {})}
            if env
            else {k: v for k, v in os.environ.items() if k != "CHATLEDGER_CONFIG"},
            cwd=tmp_path,
        )

    missing = bare("status")  # no --config, no CHATLEDGER_CONFIG, no /etc/chatledger/config.toml here
    if not Path("/etc/chatledger/config.toml").exists():
        assert missing.returncode == 64
        assert "CHATLEDGER_CONFIG" in missing.stderr and "/etc/chatledger/config.toml" in missing.stderr
    assert bare("replay", "--bogus", "--config", str(config)).returncode == 64
    assert bare("no-such-command").returncode == 64
    by_env = bare("check-config", env={"CHATLEDGER_CONFIG": str(config)})
    assert by_env.returncode == 0 and f"{config}: OK" in by_env.stdout
    gone = bare("check-config", env={"CHATLEDGER_CONFIG": str(tmp_path / "nope.toml")})
    assert gone.returncode == 78 and "nope.toml" in gone.stderr


def test_replay_without_any_sink_says_there_is_nothing_to_replay(config):
    result = cli(config, "replay", "--dead")
    assert result.returncode == 78 and "no sink is enabled" in result.stderr
    assert cli(config, "replay").returncode == 78
