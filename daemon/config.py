"""Configuration: a TOML file, overridden by CHATLEDGER_<SECTION>__<KEY> and legacy env names."""

from __future__ import annotations

import json
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from daemon.sinks.airtable_schema import parse_field_mapping

ENV_PREFIX = "CHATLEDGER_"
CONFIG_ENV = "CHATLEDGER_CONFIG"  # names the file when --config is not given: not a setting

# Names the previous TypeScript deployment used; still honoured so an existing .env keeps working.
LEGACY_ENV = {
    "AIRTABLE_API_KEY": ("airtable", "api_key"),
    "AIRTABLE_BASE_ID": ("airtable", "base_id"),
    "AIRTABLE_CONVERSATIONS_TABLE": ("airtable", "conversations_table"),
    "AIRTABLE_INTERACTIONS_TABLE": ("airtable", "interactions_table"),
    "AIRTABLE_ESCALATIONS_TABLE": ("airtable", "escalations_table"),
    "DATABASE_URL": ("postgres", "dsn"),
    "SENDPULSE_CLIENT_ID": ("sendpulse", "client_id"),
    "SENDPULSE_CLIENT_SECRET": ("sendpulse", "client_secret"),
}

DSN_SCHEMES = ("postgresql", "postgres")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
SUN_PATH_MAX = 107  # bytes a Unix socket path may hold (sockaddr_un.sun_path minus the NUL)


EXAMPLE_WEBHOOK_TOKEN = "example-token-replace-me-0123456789"  # config.example.toml's, public


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the key and the problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ServerConfig(_Section):
    listen: str = "127.0.0.1:8080"
    webhook_path: str = "/webhooks/sendpulse"
    webhook_token: SecretStr = SecretStr("")
    api_token: SecretStr = SecretStr("")  # the bot-facing API (/api/v1); empty: the API answers 401
    max_body_bytes: int = Field(default=1024 * 1024, gt=0, le=256 * 1024 * 1024)
    # SendPulse batches a handful of events; more than this in one request is answered 413.
    max_elements_per_request: int = Field(default=1000, gt=0, le=100_000)
    # A connection whose request line and headers, or whose body, take longer than this is closed.
    read_timeout_s: float = Field(default=15.0, gt=0, le=600)
    # Connections open at once (webhooks and the API); one more is answered 503 and closed.
    max_connections: int = Field(default=512, gt=0, le=60_000)

    @field_validator("listen")
    @classmethod
    def _listen_is_host_port(cls, value: str) -> str:
        split_listen(value)
        return value

    @field_validator("webhook_path")
    @classmethod
    def _path_is_absolute(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() for c in value) or "?" in value:
            raise ValueError("must be a URL path starting with '/' (no spaces, no query)")
        return value

    @field_validator("api_token")
    @classmethod
    def _api_token_long_enough(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value() and len(value.get_secret_value()) < 16:
            raise ValueError("is too short: use at least 16 characters (e.g. `openssl rand -hex 24`)")
        return value

    @field_validator("webhook_token")
    @classmethod
    def _token_is_set(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if not secret.strip():
            raise ValueError(
                "is required: SendPulse does not sign webhooks, so the token in the URL "
                "is the only thing keeping strangers out"
            )
        if len(secret) < 16:
            raise ValueError("is too short: use at least 16 characters (e.g. `openssl rand -hex 24`)")
        return value


class JournalConfig(_Section):
    path: Path = Path("/var/lib/chatledger/journal.sqlite")
    # Events delivered to every enabled sink and older than this are purged; 0 keeps everything.
    retention_days: int = Field(default=30, ge=0)


class PostgresConfig(_Section):
    dsn: SecretStr = SecretStr("")
    schema_: str = Field(default="chatledger", alias="schema")

    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)

    @field_validator("dsn")
    @classmethod
    def _dsn_is_usable(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value().strip():
            check_dsn(value.get_secret_value())
        return value

    @field_validator("schema_")
    @classmethod
    def _schema_is_identifier(cls, value: str) -> str:
        if not value or not (value[0].isalpha() or value[0] == "_") or not all(c.isalnum() or c == "_" for c in value):
            raise ValueError("must be a plain SQL identifier (letters, digits, underscore)")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.dsn.get_secret_value().strip())


class AirtableConfig(_Section):
    api_key: SecretStr = SecretStr("")
    base_id: str = ""
    endpoint_url: str = "https://api.airtable.com"
    conversations_table: str = "Conversations"
    interactions_table: str = "Interactions"
    escalations_table: str = "Escalations"
    requests_per_second: float = Field(default=5.0, ge=1, le=50)
    # The plan's API calls per month (Free 1,000, Team 100,000); 0: not counted against a limit.
    monthly_request_limit: int = Field(default=0, ge=0)
    # Deliveries wait up to this long for a request to carry 10 records (sync, SIGHUP, a stop: at once).
    linger_s: float = Field(default=10.0, ge=0, le=3600)
    # The plan's records per base, across its tables (Free 1,000; Team 50,000; Business 125,000); 0: not
    # counted. Counted at start and on sync, then from the upserts; alerted at 80 % and 95 %.
    max_records: int = Field(default=0, ge=0)
    # Interactions older than this that PostgreSQL holds are deleted from the base, then escalations and
    # conversations with nothing newer; daily, on spare budget. 0 keeps everything.
    retention_days: int = Field(default=0, ge=0)
    # [airtable.fields]: "Interactions.Content" = "Message" when the operators renamed a column.
    fields: dict[str, str] = Field(default_factory=dict)

    @field_validator("fields", mode="before")
    @classmethod
    def _fields_from_environment(cls, value: Any) -> Any:
        """CHATLEDGER_AIRTABLE__FIELDS holds the table as a JSON object."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError(
                    'must be a table; in the environment a JSON object such as {"Interactions.Content": "Message"}'
                ) from None
            if not isinstance(value, dict):
                raise ValueError(
                    'must be a table; in the environment a JSON object such as {"Interactions.Content": "Message"}'
                )
        return value

    @field_validator("fields")
    @classmethod
    def _fields_are_ours(cls, value: dict[str, str]) -> dict[str, str]:
        parse_field_mapping(value)
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_http(cls, value: str) -> str:
        return _http_url(value, "https://api.airtable.com")

    @field_validator("conversations_table", "interactions_table", "escalations_table")
    @classmethod
    def _table_named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _base_when_enabled(self) -> AirtableConfig:
        if self.enabled and not self.base_id.strip():
            raise ValueError("base_id: is required when api_key is set (the app... id of your base)")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.api_key.get_secret_value().strip())


def _http_url(value: str, example: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    try:
        parsed = urllib.parse.urlsplit(value)
        parsed.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
    except ValueError:
        raise ValueError("must be a valid URL (check the host and port)") from None
    if not parsed.hostname:
        raise ValueError(f"must name a host, e.g. {example}")
    return value.rstrip("/")


class SendPulseConfig(_Section):
    """Reconciliation: what SendPulse's API holds that the webhooks did not bring."""

    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    api_url: str = "https://api.sendpulse.com"
    bot_ids: list[str] = Field(default_factory=list)  # empty: every WhatsApp bot of the account
    reconcile_interval_s: float = Field(default=300.0, ge=0)  # 0: only at start and on demand
    # The account allows 10 requests/s and the bot spends from the same allowance: stay well under.
    requests_per_second: int = Field(default=5, ge=1, le=10)
    # How far back a start reconciles when the journal holds no event to start from.
    first_window_h: float = Field(default=24.0, gt=0, le=24 * 90)
    # Each run also reads again the contacts sent a message this recently that is not known read or failed
    # (delivered and read come later than the message); 0: only the statuses of each run's window.
    status_window_h: float = Field(default=24.0, ge=0, le=24 * 30)

    @field_validator("bot_ids", mode="before")
    @classmethod
    def _bot_ids_from_environment(cls, value: Any) -> Any:
        """CHATLEDGER_SENDPULSE__BOT_IDS: a JSON array or ids separated by commas."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except ValueError:
                    raise ValueError(
                        "must be a list of bot ids; in the environment a JSON array or ids separated by commas"
                    ) from None
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("bot_ids")
    @classmethod
    def _bot_ids_named(cls, value: list[str]) -> list[str]:
        if any(not bot.strip() or any(c.isspace() for c in bot) for bot in value):
            raise ValueError("must hold bot ids (as GET /whatsapp/bots lists them), none empty")
        return value

    @field_validator("api_url")
    @classmethod
    def _api_url_is_http(cls, value: str) -> str:
        return _http_url(value, "https://api.sendpulse.com")

    @model_validator(mode="after")
    def _secret_when_enabled(self) -> SendPulseConfig:
        if self.enabled and not self.client_secret.get_secret_value().strip():
            raise ValueError("client_secret: is required when client_id is set (or SENDPULSE_CLIENT_SECRET)")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.client_id.strip())


class MetricsConfig(_Section):
    # Prometheus text at GET /metrics is always on the status socket; this adds a TCP listener.
    listen: str = ""

    @field_validator("listen")
    @classmethod
    def _listen_is_host_port(cls, value: str) -> str:
        if value:
            split_listen(value)
        return value


class AlertsConfig(_Section):
    # Run with the alert as JSON on stdin (split like a shell would, not run by one), and/or POSTed.
    command: str = ""
    webhook_url: SecretStr = SecretStr("")  # chat webhooks carry their secret in the URL
    pending_age_threshold_s: float = Field(default=600.0, gt=0)
    min_interval_s: float = Field(default=300.0, ge=0)

    @field_validator("webhook_url")
    @classmethod
    def _url_is_http(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value() and not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


class StatusConfig(_Section):
    socket: Path = Path("/run/chatledger/status.sock")

    @field_validator("socket")
    @classmethod
    def _fits_sun_path(cls, value: Path) -> Path:
        if len(os.fsencode(str(value))) > SUN_PATH_MAX:
            raise ValueError(f"is longer than the {SUN_PATH_MAX} bytes a Unix socket path may have")
        return value


class LogConfig(_Section):
    level: str = "INFO"
    json_: bool = Field(default=False, alias="json")

    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)

    @field_validator("level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return upper


_toml_path: ContextVar[Path | None] = ContextVar("chatledger_toml_path", default=None)
_environ: ContextVar[Mapping[str, str] | None] = ContextVar("chatledger_environ", default=None)


class _TomlSource(PydanticBaseSettingsSource):
    """The --config file; missing sections fall back to defaults."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        path = _toml_path.get()
        if path is None:
            return {}
        try:
            with open(path, "rb") as handle:
                return tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config file {path}: not found") from None
        except PermissionError:
            raise ConfigError(f"config file {path}: permission denied") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path}: is a directory") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None


class _EnvSource(PydanticBaseSettingsSource):
    """CHATLEDGER_<SECTION>__<KEY> first, then the legacy names; unknown CHATLEDGER_ names are errors."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError

    def __call__(self) -> dict[str, Any]:
        environ = _environ.get()
        if environ is None:
            environ = os.environ
        values: dict[str, dict[str, Any]] = {}
        for name, (section, key) in LEGACY_ENV.items():
            if name in environ:
                values.setdefault(section, {})[key] = environ[name]
        for name, value in environ.items():
            if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
                continue
            section, sep, key = name[len(ENV_PREFIX) :].lower().partition("__")
            if not sep or not key or section not in Config.model_fields:
                raise ConfigError(
                    f"environment variable {name}: not a chatledger setting "
                    f"(expected {ENV_PREFIX}<SECTION>__<KEY>, e.g. {ENV_PREFIX}SERVER__LISTEN)"
                )
            fields = Config.model_fields[section].annotation.model_fields  # type: ignore[union-attr]
            if not any(key in (field, info.alias) for field, info in fields.items()):
                keys = ", ".join(info.alias or field for field, info in fields.items())
                raise ConfigError(f"environment variable {name}: [{section}] has no key {key} (its keys: {keys})")
            values.setdefault(section, {})[key] = value
        return values


def _deep_merge(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    merged = dict(low)
    for key, value in high.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _LayeredSource(PydanticBaseSettingsSource):
    """Merge section by section, so an env override of one key keeps the file's other keys."""

    def __init__(self, settings_cls: type[BaseSettings], *sources: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self._sources = sources  # lowest priority first

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError

    def __call__(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for source in self._sources:
            merged = _deep_merge(merged, source())
        return merged


class Config(BaseSettings):
    server: ServerConfig = ServerConfig.model_construct()
    journal: JournalConfig = JournalConfig()
    postgres: PostgresConfig = PostgresConfig()
    airtable: AirtableConfig = AirtableConfig()
    sendpulse: SendPulseConfig = SendPulseConfig()
    status: StatusConfig = StatusConfig()
    metrics: MetricsConfig = MetricsConfig()
    alerts: AlertsConfig = AlertsConfig()
    log: LogConfig = LogConfig()

    model_config = SettingsConfigDict(extra="forbid", validate_default=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        layered = _LayeredSource(settings_cls, _TomlSource(settings_cls), _EnvSource(settings_cls))
        return (init_settings, layered)

    @property
    def enabled_sinks(self) -> tuple[str, ...]:
        sinks = []
        if self.postgres.enabled:
            sinks.append("postgres")
        if self.airtable.enabled:
            sinks.append("airtable")
        return tuple(sinks)

    def warnings(self) -> list[str]:
        """What works but should not stay so (check-config prints it, the daemon logs it at start)."""
        warnings = []
        if self.server.webhook_token.get_secret_value() == EXAMPLE_WEBHOOK_TOKEN:
            warnings.append(
                "[server] webhook_token is the example's, which anyone can read: replace it "
                "(openssl rand -hex 24) and update the URL in SendPulse"
            )
        return warnings

    def redacted(self) -> dict[str, Any]:
        """The effective settings as plain data, every secret replaced by whether it is set."""
        data = self.model_dump(mode="json", by_alias=True)
        for section, key in (
            ("server", "webhook_token"),
            ("server", "api_token"),
            ("airtable", "api_key"),
            ("postgres", "dsn"),
            ("alerts", "webhook_url"),
            ("sendpulse", "client_secret"),
        ):
            secret: SecretStr = getattr(getattr(self, section), key)
            data[section][key] = "(set)" if secret.get_secret_value() else "(empty)"
        data["airtable"]["endpoint_url"] = without_userinfo(self.airtable.endpoint_url)
        data["sendpulse"]["api_url"] = without_userinfo(self.sendpulse.api_url)
        return data


def without_userinfo(url: str) -> str:
    """The URL with any user:password@ shown as ***@, for output and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    _, at, host = rest[:end].rpartition("@")
    return f"{scheme}://***@{host}{rest[end:]}" if at else url


_IPV6_HOST = re.compile(r"\[[^\]]+\](?::(.*))?")
_PERCENT_HINT = " (a password with @ / ? # : in it must be percent-encoded, e.g. @ as %40)"


def _check_port(text: str) -> None:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise ValueError("has a port that is not a number from 1 to 65535" + _PERCENT_HINT)


def _check_hosts(hostlist: str) -> int:
    """Check asyncpg's comma-separated host[:port] list; return how many hosts it names."""
    specs = hostlist.split(",")
    for spec in specs:
        if spec.startswith("["):
            match = _IPV6_HOST.fullmatch(spec)
            if match is None:
                raise ValueError("has an IPv6 host that is not [address] or [address]:port")
            port = match.group(1) or ""
        elif spec.startswith("/"):
            port = ""
        else:
            host, _, port = spec.partition(":")
            if not host:
                raise ValueError("has an empty host in its host list")
        if port:
            _check_port(port)
    return len(specs)


def check_dsn(dsn: str) -> None:
    """Raise ValueError unless asyncpg can connect with this DSN; the message never quotes it (the password)."""
    try:
        parsed = urllib.parse.urlsplit(dsn)
    except ValueError:
        raise ValueError("is not a valid URL (check the brackets of an IPv6 host)") from None
    if parsed.scheme not in DSN_SCHEMES or not dsn[len(parsed.scheme) :].startswith("://"):
        raise ValueError(
            "must start with postgresql:// or postgres:// (asyncpg reads no other form, e.g. not host=... dbname=...)"
        )
    hostlist = parsed.netloc.partition("@")[2] if "@" in parsed.netloc else parsed.netloc
    if "@" in hostlist:
        raise ValueError("has more than one @" + _PERCENT_HINT)
    hosts = _check_hosts(hostlist) if hostlist else 0
    try:
        query = urllib.parse.parse_qs(parsed.query, strict_parsing=True) if parsed.query else {}
    except ValueError:
        raise ValueError("has a malformed query string (expected ?key=value&key=value)") from None
    options = {key: values[-1] for key, values in query.items()}
    if options.get("sslmode", "prefer") not in SSL_MODES:
        raise ValueError(f"has an unknown sslmode (one of {', '.join(SSL_MODES)})")
    ports = options["port"].split(",") if options.get("port") else []
    for port in ports:
        _check_port(port)
    if options.get("host") and not hosts:  # asyncpg ignores ?host= when the URL names a host
        hosts = _check_hosts(options["host"])
        if len(ports) > 1 and len(ports) != hosts:
            raise ValueError(f"has {len(ports)} ports in ?port= for {hosts} hosts in ?host=")


def split_listen(listen: str) -> tuple[str, int]:
    """Split "host:port" (IPv6 in brackets) into its parts, or raise ValueError."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        raise ValueError('must be "host:port", e.g. "127.0.0.1:8080"')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 0 to 65535")
    return host, int(port_text)


def _describe(error: Mapping[str, Any]) -> str:
    section, *rest = [str(part) for part in error["loc"]]
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if not rest:
        return f"[{section}] {message}" if section in Config.model_fields else f"{section}: {message}"
    return f"[{section}] {'.'.join(rest)}: {message}"


def _resolve(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path)


def load_config(path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file and the environment; relative paths are relative to the file's folder."""
    toml_path = Path(path).resolve() if path is not None else None
    tokens = (_toml_path.set(toml_path), _environ.set(environ))
    try:
        config = Config()
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from None
    finally:
        _toml_path.reset(tokens[0])
        _environ.reset(tokens[1])
    if not config.server.webhook_token.get_secret_value():
        # The section was absent altogether, so its validators never ran on the default.
        raise ConfigError("invalid configuration: [server] webhook_token: is required")
    base = toml_path.parent if toml_path is not None else Path.cwd()
    config.journal.path = _resolve(config.journal.path, base)
    config.status.socket = _resolve(config.status.socket, base)
    try:
        StatusConfig(socket=config.status.socket)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: [status] socket: {exc.errors()[0]['msg']}") from None
    clobbered = _kept_file_at(config.status.socket, config.journal.path, toml_path)
    if clobbered:
        raise ConfigError(
            f"invalid configuration: [status] socket: is {clobbered}; chatledger removes a stale socket at "
            "start, so it would delete it: give the socket a path of its own (e.g. /run/chatledger/status.sock)"
        )
    return config


def _kept_file_at(socket: Path, journal: Path, config_file: Path | None) -> str | None:
    """Which file chatledger keeps (the journal, its siblings, the config) `socket` names, if any."""
    kept = {
        journal: "the journal",
        journal.with_name(journal.name + "-wal"): "the journal's WAL",
        journal.with_name(journal.name + "-shm"): "the journal's shared-memory file",
        journal.with_name(journal.name + ".lock"): "the journal's lock file",
    }
    if config_file is not None:
        kept[config_file] = "the config file"
    for path, what in kept.items():
        if os.path.realpath(socket) == os.path.realpath(path):
            return f"{what} {path}"
        try:
            if os.path.samefile(socket, path):  # a hard link or a bind mount of it
                return f"{what} {path}"
        except OSError:
            pass  # one of them does not exist (yet): realpath was the whole answer
    return None
