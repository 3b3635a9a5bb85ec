"""Config: TOML, CHATLEDGER_ env overrides, legacy env names, clear errors, hidden secrets."""

from pathlib import Path

import pytest
from asyncpg import connect_utils
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import ConfigError, check_dsn, load_config, without_userinfo

TOKEN = "0123456789abcdef-token"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chatledger.toml"
    path.write_text(text)
    return path


@pytest.fixture
def minimal(tmp_path):
    return write(tmp_path, f'[server]\nwebhook_token = "{TOKEN}"\n')


def test_defaults_with_only_a_token(minimal):
    config = load_config(minimal, {})
    assert config.server.listen == "127.0.0.1:8080"
    assert config.server.webhook_path == "/webhooks/sendpulse"
    assert config.server.max_body_bytes == 1024 * 1024
    assert config.postgres.schema_ == "chatledger"
    assert config.airtable.endpoint_url == "https://api.airtable.com"
    assert (
        config.airtable.conversations_table,
        config.airtable.interactions_table,
        config.airtable.escalations_table,
    ) == ("Conversations", "Interactions", "Escalations")
    assert config.airtable.requests_per_second == 5
    assert config.enabled_sinks == ()
    assert config.log.level == "INFO" and config.log.json_ is False


def test_every_documented_key_is_read(tmp_path):
    path = write(
        tmp_path,
        f"""
[server]
listen = "0.0.0.0:9999"
webhook_path = "/hook"
webhook_token = "{TOKEN}"
max_body_bytes = 2048
[journal]
path = "/srv/j.sqlite"
[postgres]
dsn = "postgresql://u:p@localhost/db"
schema = "ledger"
[airtable]
api_key = "patXYZ"
base_id = "appAAAAAAAAAAAAAA"
endpoint_url = "http://127.0.0.1:9/"
conversations_table = "Conv"
interactions_table = "Int"
escalations_table = "Esc"
requests_per_second = 4.5
[airtable.fields]
"Interactions.Content" = "Message"
"Conversations.CustomerPhone" = "Phone"
[status]
socket = "/run/x.sock"
[log]
level = "debug"
json = true
""",
    )
    config = load_config(path, {})
    assert config.server.listen == "0.0.0.0:9999" and config.server.webhook_path == "/hook"
    assert config.server.max_body_bytes == 2048
    assert config.journal.path == Path("/srv/j.sqlite")
    assert config.postgres.schema_ == "ledger"
    assert config.airtable.endpoint_url == "http://127.0.0.1:9"
    assert config.airtable.conversations_table == "Conv"
    assert config.airtable.requests_per_second == 4.5
    assert config.airtable.fields == {"Interactions.Content": "Message", "Conversations.CustomerPhone": "Phone"}
    assert config.status.socket == Path("/run/x.sock")
    assert config.log.level == "DEBUG" and config.log.json_ is True
    assert config.enabled_sinks == ("postgres", "airtable")


def test_env_overrides_one_key_and_keeps_the_rest(tmp_path):
    path = write(tmp_path, f'[server]\nwebhook_token = "{TOKEN}"\nlisten = "127.0.0.1:1"\n')
    config = load_config(path, {"CHATLEDGER_SERVER__LISTEN": "127.0.0.1:2", "CHATLEDGER_LOG__JSON": "true"})
    assert config.server.listen == "127.0.0.1:2"
    assert config.server.webhook_token.get_secret_value() == TOKEN
    assert config.log.json_ is True


def test_airtable_fields_from_the_environment_replace_the_files(tmp_path):
    path = write(tmp_path, f'[server]\nwebhook_token = "{TOKEN}"\n[airtable.fields]\n"Interactions.Content" = "Body"\n')
    assert load_config(path, {}).airtable.fields == {"Interactions.Content": "Body"}
    env = {"CHATLEDGER_AIRTABLE__FIELDS": '{"Escalations.Reason": "Motivo"}'}
    assert load_config(path, env).airtable.fields == {"Escalations.Reason": "Motivo"}
    assert load_config(path, {"CHATLEDGER_AIRTABLE__FIELDS": "{}"}).airtable.fields == {}


def test_legacy_env_names(minimal):
    config = load_config(
        minimal,
        {
            "AIRTABLE_API_KEY": "patLEGACY",
            "AIRTABLE_BASE_ID": "appLEGACY",
            "AIRTABLE_CONVERSATIONS_TABLE": "C",
            "AIRTABLE_INTERACTIONS_TABLE": "I",
            "AIRTABLE_ESCALATIONS_TABLE": "E",
            "DATABASE_URL": "postgresql://legacy/db",
        },
    )
    assert config.airtable.api_key.get_secret_value() == "patLEGACY"
    assert (
        config.airtable.base_id,
        config.airtable.conversations_table,
        config.airtable.interactions_table,
        config.airtable.escalations_table,
    ) == ("appLEGACY", "C", "I", "E")
    assert config.postgres.dsn.get_secret_value() == "postgresql://legacy/db"


def test_chatledger_env_beats_legacy_beats_file(tmp_path):
    path = write(tmp_path, f'[server]\nwebhook_token = "{TOKEN}"\n[postgres]\ndsn = "postgresql://file/db"\n')
    assert load_config(path, {}).postgres.dsn.get_secret_value() == "postgresql://file/db"
    assert (
        load_config(path, {"DATABASE_URL": "postgresql://legacy/db"}).postgres.dsn.get_secret_value()
        == "postgresql://legacy/db"
    )
    both = {"DATABASE_URL": "postgresql://legacy/db", "CHATLEDGER_POSTGRES__DSN": "postgresql://env/db"}
    assert load_config(path, both).postgres.dsn.get_secret_value() == "postgresql://env/db"


def test_token_from_env_alone(tmp_path):
    path = write(tmp_path, "")
    assert (
        load_config(path, {"CHATLEDGER_SERVER__WEBHOOK_TOKEN": TOKEN}).server.webhook_token.get_secret_value() == TOKEN
    )


@pytest.mark.parametrize(
    "text, env, message",
    [
        ("", {}, r"\[server\] webhook_token: is required"),
        ('[server]\nwebhook_token = ""\n', {}, r"\[server\] webhook_token: is required"),
        ('[server]\nwebhook_token = "short"\n', {}, r"\[server\] webhook_token: is too short"),
        (f'[server]\nwebhook_token = "{TOKEN}"\nlisten = "8080"\n', {}, r"\[server\] listen: must be \"host:port\""),
        (f'[server]\nwebhook_token = "{TOKEN}"\nlisten = "h:99999"\n', {}, r"\[server\] listen: port '99999'"),
        (
            f'[server]\nwebhook_token = "{TOKEN}"\nwebhook_path = "hook"\n',
            {},
            r"\[server\] webhook_path: must be a URL path",
        ),
        (
            f'[server]\nwebhook_token = "{TOKEN}"\nmax_body_bytes = 0\n',
            {},
            r"\[server\] max_body_bytes: Input should be greater than 0",
        ),
        (f'[server]\nwebhook_token = "{TOKEN}"\nport = 1\n', {}, r"\[server\] port: unknown key"),
        (f'[server]\nwebhook_token = "{TOKEN}"\n[nope]\na = 1\n', {}, r"nope: unknown key"),
        (f'[server]\nwebhook_token = "{TOKEN}"\n[log]\nlevel = "loud"\n', {}, r"\[log\] level: must be one of"),
        (
            f'[server]\nwebhook_token = "{TOKEN}"\n[postgres]\nschema = "x; drop"\n',
            {},
            r"\[postgres\] schema: must be a plain SQL identifier",
        ),
        (
            f'[server]\nwebhook_token = "{TOKEN}"\n[airtable]\napi_key = "pat"\n',
            {},
            r"\[airtable\] base_id: is required when api_key is set",
        ),
        (
            f'[server]\nwebhook_token = "{TOKEN}"\n[airtable]\nrequests_per_second = 0\n',
            {},
            r"\[airtable\] requests_per_second",
        ),
        (
            f'[server]\nwebhook_token = "{TOKEN}"\n[airtable]\nrequests_per_second = 0.5\n',
            {},
            r"\[airtable\] requests_per_second: Input should be greater than or equal to 1",
        ),  # the budget's floor
        (
            f'[server]\nwebhook_token = "{TOKEN}"\n[airtable]\nendpoint_url = "ftp://x"\n',
            {},
            r"\[airtable\] endpoint_url: must start with http",
        ),
        (
            f'[server]\nwebhook_token = "{TOKEN}"\n[airtable.fields]\n"Content" = "Message"\n',
            {},
            r"\[airtable\] fields: 'Content': a key is Table.Field with Table one of Conversations",
        ),
        (
            f'[server]\nwebhook_token = "{TOKEN}"\n[airtable.fields]\n"Messages.Content" = "Message"\n',
            {},
            r"\[airtable\] fields: 'Messages.Content': a key is Table.Field",
        ),
        (
            f'[server]\nwebhook_token = "{TOKEN}"\n[airtable.fields]\n"Interactions.Body" = "Message"\n',
            {},
            r"\[airtable\] fields: 'Interactions.Body': Interactions has no field 'Body' \(its fields: InteractionId",
        ),
        (
            f'[server]\nwebhook_token = "{TOKEN}"\n[airtable.fields]\n"Interactions.Content" = " "\n',
            {},
            r"\[airtable\] fields: 'Interactions.Content': the field name in the base must not be empty",
        ),
        (
            f'[server]\nwebhook_token = "{TOKEN}"\n[airtable.fields]\n"Interactions.Content" = "response"\n',
            {},
            r"\[airtable\] fields: Interactions.Content and Interactions.Response would both be written to the "
            r"field 'Response'",
        ),
        (
            f'[server]\nwebhook_token = "{TOKEN}"\n[airtable.fields]\n"Interactions.Content" = 3\n',
            {},
            r"\[airtable\] fields.Interactions.Content: Input should be a valid string",
        ),
        (
            f'[server]\nwebhook_token = "{TOKEN}"\n',
            {"CHATLEDGER_AIRTABLE__FIELDS": "Content=Message"},
            r"\[airtable\] fields: must be a table; in the environment a JSON object",
        ),
        ("[server\n", {}, r"not valid TOML"),
        (
            f'[server]\nwebhook_token = "{TOKEN}"\n',
            {"CHATLEDGER_SERVER__MAX_BODY_BYTES": "lots"},
            r"\[server\] max_body_bytes",
        ),
        (
            f'[server]\nwebhook_token = "{TOKEN}"\n',
            {"CHATLEDGER_TYPO": "1"},
            r"CHATLEDGER_TYPO: not a chatledger setting",
        ),
        (
            f'[server]\nwebhook_token = "{TOKEN}"\n',
            {"CHATLEDGER_SERVER__WEBHOOK_TOKN": "1"},
            r"environment variable CHATLEDGER_SERVER__WEBHOOK_TOKN: \[server\] has no key webhook_tokn",
        ),
        (
            f'[server]\nwebhook_token = "{TOKEN}"\n[status]\nsocket = "/{"x" * 120}"\n',
            {},
            r"\[status\] socket: .*107 bytes",
        ),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env)


def test_chatledger_config_names_the_file_and_is_no_setting(tmp_path):
    config = load_config(write(tmp_path, f'[server]\nwebhook_token = "{TOKEN}"\n'), {"CHATLEDGER_CONFIG": "x.toml"})
    assert config.server.webhook_token.get_secret_value() == TOKEN


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml", {})


def test_relative_paths_are_relative_to_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "c.toml"
    path.write_text(
        f'[server]\nwebhook_token = "{TOKEN}"\n[journal]\npath = "data/j.sqlite"\n[status]\nsocket = "run/s.sock"\n'
    )
    monkeypatch.chdir(tmp_path)
    config = load_config("etc/c.toml", {})
    assert config.journal.path == folder / "data" / "j.sqlite"
    assert config.status.socket == folder / "run" / "s.sock"


def test_secrets_never_appear_in_redacted_or_repr(tmp_path):
    path = write(
        tmp_path,
        f'[server]\nwebhook_token = "{TOKEN}"\n[postgres]\ndsn = "postgresql://u:hunter2@h/db"\n'
        '[airtable]\napi_key = "patSECRETSECRET"\nbase_id = "appX"\n',
    )
    config = load_config(path, {})
    text = repr(config) + str(config.redacted())
    for secret in (TOKEN, "hunter2", "patSECRETSECRET"):
        assert secret not in text
    assert config.redacted()["postgres"]["dsn"] == "(set)"


GOOD_DSNS = [
    "postgresql://u:p@localhost/db",
    "postgres://u@127.0.0.1:5432/db",
    "POSTGRESQL://h/db",
    "postgresql:///chatledger",  # the local socket, peer authentication
    "postgresql://u:p%40ss@h:1/db",
    "postgresql://u@h1:5432,h2:5433/db?target_session_attrs=read-write",
    "postgresql://u@h1,h2:5433/db",
    "postgresql://u@[::1]:65535/db",
    "postgresql://u@%2Frun%2Fpostgresql/db",
    "postgresql:///db?host=/run/postgresql&port=5433",
    "postgresql:///db?host=h1,h2&port=5432,5433&sslmode=require",
    "postgresql://u@h:/db",  # an empty port is the default port, as libpq reads it
]


def asyncpg_hosts(dsn: str, monkeypatch) -> list[tuple[str, int]]:
    """What asyncpg makes of a DSN (host, port pairs), or its exception; nothing from the environment."""
    for name in ("PGHOST", "PGPORT", "PGSSLMODE", "PGSERVICE", "PGSERVICEFILE", "PGPASSFILE"):
        monkeypatch.delenv(name, raising=False)
    addrs, _ = connect_utils._parse_connect_dsn_and_args(
        dsn=dsn,
        host=None,
        port=None,
        user=None,
        password=None,
        passfile=None,
        database=None,
        ssl=None,
        service=None,
        servicefile=None,
        direct_tls=None,
        server_settings=None,
        target_session_attrs=None,
        krbsrvname=None,
        gsslib=None,
    )
    return [addr if isinstance(addr, tuple) else (addr, 0) for addr in addrs]


@pytest.mark.parametrize("dsn", GOOD_DSNS)
def test_dsns_asyncpg_can_use_are_accepted(tmp_path, monkeypatch, dsn):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert asyncpg_hosts(dsn, monkeypatch)  # the oracle agrees these are usable
    path = write(tmp_path, f'[server]\nwebhook_token = "{TOKEN}"\n[postgres]\ndsn = "{dsn}"\n')
    assert load_config(path, {}).postgres.dsn.get_secret_value() == dsn
    assert load_config(
        write(tmp_path, f'[server]\nwebhook_token = "{TOKEN}"\n'), {"DATABASE_URL": dsn}
    ).postgres.enabled


@pytest.mark.parametrize(
    "dsn, message",
    [
        ("mysql://u:hunter2@h/db", "must start with postgresql:// or postgres://"),
        ("host=h user=u password=hunter2 dbname=db", "must start with postgresql:// or postgres://"),
        ("u:hunter2@h/db", "must start with postgresql:// or postgres://"),
        ("postgresql://u:hunter2@h:notaport/db", "port .*1 to 65535"),
        ("postgresql://u:hunter2@h:0/db", "port .*1 to 65535"),
        ("postgresql://u:hunter2@h:65536/db", "port .*1 to 65535"),
        ("postgresql://u:hunter2@h:+5432/db", "port .*1 to 65535"),
        ("postgresql://u:hunter2@h1:5432,h2:x/db", "port .*1 to 65535"),
        ("postgresql://u:hunter2@h1,/db", "empty host"),
        ("postgresql://u:hunter2@:5432/db", "empty host"),
        ("postgresql://u:hunter2@[::1/db", "not a valid URL"),
        ("postgresql://u:hunter2@[::1]x/db", "IPv6"),
        ("postgresql://u:hunt@r2@h/db", "percent-encoded"),
        ("postgresql://u:hunter/2@h/db", "port .*1 to 65535.*percent-encoded"),
        ("postgresql://u:hunter2@h/db?port=99999", "port .*1 to 65535"),
        ("postgresql://u:hunter2@h/db?sslmode", "query"),
        ("postgresql://u:hunter2@h/db?sslmode=sometimes", "sslmode"),
        ("postgresql:///db?host=h1,h2,h3&port=1,2", "3 hosts"),
    ],
)
def test_dsns_asyncpg_cannot_use_name_the_key_and_hide_the_password(tmp_path, dsn, message):
    path = write(tmp_path, f'[server]\nwebhook_token = "{TOKEN}"\n[postgres]\ndsn = "{dsn}"\n')
    with pytest.raises(ConfigError, match=rf"\[postgres\] dsn: .*{message}") as raised:
        load_config(path, {})
    assert "hunt" not in str(raised.value)
    with pytest.raises(ConfigError, match=rf"\[postgres\] dsn: .*{message}") as raised:
        load_config(write(tmp_path, f'[server]\nwebhook_token = "{TOKEN}"\n'), {"DATABASE_URL": dsn})
    assert "hunt" not in str(raised.value)


DSN_PARTS = st.sampled_from(
    [
        "postgresql://",
        "postgres://",
        "u",
        ":",
        "@",
        "h",
        "[::1]",
        "/",
        "db",
        ",",
        "?",
        "&",
        "=",
        "port",
        "host",
        "sslmode",
        "prefer",
        "5432",
        "0",
        "70000",
        "%2F",
        "#",
        " ",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(DSN_PARTS, max_size=12).map("".join))
def test_every_accepted_dsn_is_one_asyncpg_parses(dsn):
    try:
        check_dsn(dsn)
    except ValueError:
        return
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("HOME", "/nonexistent")
        hosts = asyncpg_hosts(dsn, monkeypatch)
    assert hosts and all(host and (host.startswith("/") or 1 <= port <= 65535) for host, port in hosts), hosts


@pytest.mark.parametrize("url", ["http://", "https://:443", "http://h:notaport", "http://h:70000", "file:///x"])
def test_endpoint_url_needs_http_and_a_host(tmp_path, url):
    path = write(tmp_path, f'[server]\nwebhook_token = "{TOKEN}"\n[airtable]\nendpoint_url = "{url}"\n')
    with pytest.raises(ConfigError, match=r"\[airtable\] endpoint_url: must"):
        load_config(path, {})


def test_endpoint_userinfo_is_hidden_in_redacted(tmp_path):
    path = write(
        tmp_path,
        f'[server]\nwebhook_token = "{TOKEN}"\n[airtable]\n'
        'endpoint_url = "https://proxyuser:hunter2@proxy.example:8443/airtable/"\n',
    )
    config = load_config(path, {})
    assert config.airtable.endpoint_url == "https://proxyuser:hunter2@proxy.example:8443/airtable"
    assert config.redacted()["airtable"]["endpoint_url"] == "https://***@proxy.example:8443/airtable"
    assert "hunter2" not in str(config.redacted())


@pytest.mark.parametrize(
    "url, shown",
    [
        ("https://api.airtable.com", "https://api.airtable.com"),
        ("http://u@h", "http://***@h"),
        ("http://u:p@ss@h/x", "http://***@h/x"),
    ],
)
def test_without_userinfo(url, shown):
    assert without_userinfo(url) == shown


@pytest.mark.parametrize(
    "socket, what",
    [
        ("state/journal.sqlite", "the journal"),
        ("state/./journal.sqlite-wal", "the journal's WAL"),
        ("state/../state/journal.sqlite-shm", "the journal's shared-memory file"),
        ("state/journal.sqlite.lock", "the journal's lock file"),
        ("chatledger.toml", "the config file"),
        ("linked/journal.sqlite", "the journal"),  # the same file through a symlinked folder
    ],
)
def test_a_status_socket_on_a_file_chatledger_keeps_is_refused(tmp_path, socket, what):
    (tmp_path / "state").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "state")
    path = write(
        tmp_path,
        f'[server]\nwebhook_token = "{TOKEN}"\n[journal]\npath = "state/journal.sqlite"\n'
        f'[status]\nsocket = "{socket}"\n',
    )
    with pytest.raises(ConfigError, match=rf"\[status\] socket: is {what} .*would delete it"):
        load_config(path, {})


def test_a_status_socket_hard_linked_to_the_journal_is_refused(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "journal.sqlite").write_bytes(b"data")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "status.sock").hardlink_to(tmp_path / "state" / "journal.sqlite")
    path = write(
        tmp_path,
        f'[server]\nwebhook_token = "{TOKEN}"\n[journal]\npath = "state/journal.sqlite"\n'
        '[status]\nsocket = "run/status.sock"\n',
    )
    with pytest.raises(ConfigError, match=r"\[status\] socket: is the journal "):
        load_config(path, {})


def test_a_status_socket_beside_the_journal_is_fine(tmp_path):
    path = write(
        tmp_path,
        f'[server]\nwebhook_token = "{TOKEN}"\n[journal]\npath = "state/journal.sqlite"\n'
        '[status]\nsocket = "state/journal.sock"\n',
    )
    assert load_config(path, {}).status.socket == tmp_path / "state" / "journal.sock"
