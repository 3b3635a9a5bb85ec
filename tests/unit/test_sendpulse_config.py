"""[sendpulse]: reconciliation's credentials, bots, interval, request budget and first window."""

from pathlib import Path

import pytest

from daemon.config import ConfigError, load_config

TOKEN = "0123456789abcdef-token"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chatledger.toml"
    path.write_text(f'[server]\nwebhook_token = "{TOKEN}"\n' + text)
    return path


def test_absent_section_disables_reconciliation_with_safe_defaults(tmp_path):
    config = load_config(write(tmp_path, ""), {})
    sendpulse = config.sendpulse
    assert not sendpulse.enabled
    assert sendpulse.api_url == "https://api.sendpulse.com"
    assert sendpulse.bot_ids == []
    assert sendpulse.reconcile_interval_s == 300
    assert sendpulse.requests_per_second == 5  # half the account's 10/s: the bot shares it
    assert sendpulse.first_window_h == 24


def test_file_keys_are_read(tmp_path):
    config = load_config(
        write(
            tmp_path,
            '[sendpulse]\nclient_id = "id1"\nclient_secret = "s3cret"\n'
            'api_url = "http://127.0.0.1:8090/"\nbot_ids = ["b1", "b2"]\n'
            "reconcile_interval_s = 0\nrequests_per_second = 2\n"
            "first_window_h = 6\n",
        ),
        {},
    )
    sendpulse = config.sendpulse
    assert sendpulse.enabled and sendpulse.client_id == "id1"
    assert sendpulse.client_secret.get_secret_value() == "s3cret"
    assert sendpulse.api_url == "http://127.0.0.1:8090"
    assert sendpulse.bot_ids == ["b1", "b2"]
    assert (sendpulse.reconcile_interval_s, sendpulse.requests_per_second, sendpulse.first_window_h) == (0, 2, 6)


def test_env_names_override_the_file(tmp_path):
    path = write(tmp_path, '[sendpulse]\nclient_id = "file"\nclient_secret = "file-secret"\n')
    config = load_config(
        path,
        {
            "SENDPULSE_CLIENT_ID": "env-id",
            "SENDPULSE_CLIENT_SECRET": "env-secret",
            "CHATLEDGER_SENDPULSE__BOT_IDS": "b1, b2",
        },
    )
    assert config.sendpulse.client_id == "env-id"
    assert config.sendpulse.client_secret.get_secret_value() == "env-secret"
    assert config.sendpulse.bot_ids == ["b1", "b2"]
    config = load_config(path, {"CHATLEDGER_SENDPULSE__BOT_IDS": '["b3"]'})
    assert config.sendpulse.bot_ids == ["b3"]


@pytest.mark.parametrize(
    "text, complaint",
    [
        ('client_id = "id"\n', "[sendpulse] client_secret: is required when client_id is set"),
        ("requests_per_second = 11\n", "[sendpulse] requests_per_second"),
        ("requests_per_second = 0\n", "[sendpulse] requests_per_second"),
        ("reconcile_interval_s = -1\n", "[sendpulse] reconcile_interval_s"),
        ("first_window_h = 0\n", "[sendpulse] first_window_h"),
        ('api_url = "ftp://x"\n', "[sendpulse] api_url: must start with http:// or https://"),
        ('bot_ids = [""]\n', "[sendpulse] bot_ids"),
        ('colour = "red"\n', "[sendpulse] colour: unknown key"),
    ],
)
def test_bad_values_are_named(tmp_path, text, complaint):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "[sendpulse]\n" + text), {})
    assert complaint in str(caught.value)


def test_client_secret_never_appears(tmp_path):
    config = load_config(
        write(
            tmp_path,
            '[sendpulse]\nclient_id = "id1"\nclient_secret = "sp-SECRET-value"\n'
            'api_url = "https://u:hunter2@proxy.example"\n',
        ),
        {},
    )
    text = repr(config) + str(config.redacted())
    assert "sp-SECRET-value" not in text
    assert "hunter2" not in str(config.redacted())
    assert config.redacted()["sendpulse"]["client_secret"] == "(set)"
    assert config.redacted()["sendpulse"]["client_id"] == "id1"


def test_the_example_files_section_loads_as_the_defaults():
    example = Path(__file__).parents[2] / "config.example.toml"
    config = load_config(example, {})
    assert "[sendpulse]" in example.read_text()
    assert config.sendpulse.model_dump() == load_config(example, {}).sendpulse.__class__().model_dump()
