"""Settings from the environment and `.env`, validated before the service starts."""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import limits
from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from api.history import Retention
from api.models import ENVIRONMENT_PATTERN, NOTIFY_EVENTS, NotifyEvent
from api.notify import target_urls
from api.schedules import zone_problem

MIN_SECRET_LENGTH = 32
# A secret's entropy, estimated from how its characters are spread; 32 random hex digits (128 bits) measure 90 or more.
MIN_SECRET_BITS = 80
# Padding such as the reference's XXXX... placeholder: one character is more than this share of the secret.
MAX_SAME_CHARACTER_SHARE = 0.4
MAKE_ONE = "make one with: python3 -c 'import secrets; print(secrets.token_hex(32))'"
# Environment variables that hold secrets: removed from the process environment once read, whatever their letter
# case (settings are read case-insensitively). Apprise URLs carry bot tokens and passwords. Each may be given as
# <NAME>_FILE instead, which holds a path and stays.
SECRET_VARIABLES = ("WEBHOOK_SECRET", "DEPLOY_READ_TOKEN", "DEPLOY_METRICS_TOKEN", "DEPLOY_NOTIFY_URLS")
MIN_READ_TOKEN_LENGTH = 16
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# The secret set that signs for every service whose inventory entry names no secret_env of its own.
DEFAULT_SIGNER = "WEBHOOK_SECRET"
# deploy_services.<name>.secret_env names the variable that holds the service's own secret(s). Never one ending in
# _FILE: that names the file holding a secret (WEBHOOK_SECRET_FILE is WEBHOOK_SECRET's, not a service's).
SECRET_ENV = re.compile(r"WEBHOOK_SECRET_[A-Z0-9_]+(?<!_FILE)")
# Docker's convention for compose `secrets:`: <NAME>_FILE names the file that holds <NAME>'s value, so that the value
# never shows in `docker inspect`.
FILE_SUFFIX = "_FILE"


def secrets_of(value: SecretStr) -> tuple[bytes, ...]:
    """The secrets a setting holds: one, or several separated by commas during a rotation (newest first)."""
    return tuple(part.strip().encode() for part in value.get_secret_value().split(",") if part.strip())


def secret_weakness(secret: bytes) -> str | None:
    """Why a secret is too weak to sign deploys, or None. Length is not enough: "a" * 32 is long."""
    if len(secret) < MIN_SECRET_LENGTH:
        return f"is shorter than {MIN_SECRET_LENGTH} characters"
    if (secret + secret).find(secret, 1) < len(secret):
        return "repeats a shorter string"
    counts = Counter(secret)
    most = max(counts.values()) / len(secret)
    if most > MAX_SAME_CHARACTER_SHARE:
        return f"is {most:.0%} one character"
    bits = -sum(count * math.log2(count / len(secret)) for count in counts.values())
    if bits < MIN_SECRET_BITS:
        return f"has about {bits:.0f} bits of entropy ({MIN_SECRET_BITS} needed)"
    return None


def _strong_secrets(name: str, value: SecretStr) -> SecretStr:
    found = secrets_of(value)
    if not found:
        raise ValueError(f"{name} holds no secret; {MAKE_ONE}")
    for position, secret in enumerate(found, start=1):
        weakness = secret_weakness(secret)
        if weakness:
            which = f"its secret number {position}" if len(found) > 1 else "its secret"
            raise ValueError(f"{name}: {which} {weakness}; {MAKE_ONE}")
    return value


def environment_variables(env_file: Path = Path(".env")) -> dict[str, str]:
    """The variables of `.env` and the environment (which wins), named in capitals: settings are read whatever their
    letter case."""
    found = {**dotenv_values(env_file), **os.environ} if env_file.is_file() else dict(os.environ)
    return {name.upper(): value or "" for name, value in found.items()}


def secrets_from_files(variables: Mapping[str, str]) -> dict[str, str]:
    """The secret variables given as <NAME>_FILE, by <NAME>: each file's content without its trailing newline.
    A problem is a ValidationError, so that it is reported as any setting's; it names the path, never a secret."""
    found: dict[str, str] = {}
    problems: dict[str, str] = {}
    for reference, path in variables.items():
        name = reference.removesuffix(FILE_SUFFIX)
        if name == reference or not is_secret_variable(name):
            continue
        if name in variables:
            problems[reference] = f"{name} is set too; set only one of the two"
            continue
        try:
            found[name] = Path(path).read_text(encoding="utf-8").rstrip()
        except OSError as error:
            problems[reference] = f"cannot read {path}: {error.strerror}"
        except UnicodeDecodeError:
            problems[reference] = f"{path} is not UTF-8 text; {MAKE_ONE}"
    if problems:
        raise ValidationError.from_exception_data(
            "Settings",
            [
                InitErrorDetails(
                    type=PydanticCustomError("secret_file", problem), loc=(reference,), input=variables[reference]
                )
                for reference, problem in problems.items()
            ],
        )
    return found


def service_secrets_from_environment(env_file: Path = Path(".env")) -> dict[str, SecretStr]:
    """Every WEBHOOK_SECRET_<NAME> of `.env` and the environment (which wins), given as a variable or as a file
    (WEBHOOK_SECRET_<NAME>_FILE), named in capitals, as the inventory's secret_env names them."""
    variables = environment_variables(env_file)
    given = {**variables, **secrets_from_files(variables)}
    return {name: SecretStr(value) for name, value in given.items() if SECRET_ENV.fullmatch(name)}


def is_secret_variable(name: str) -> bool:
    """Whether an environment variable holds a secret setting, in whatever letter case."""
    upper = name.upper()
    return upper in SECRET_VARIABLES or bool(SECRET_ENV.fullmatch(upper))


class SecretFilesSource(PydanticBaseSettingsSource):
    """The secret settings (SECRET_VARIABLES) given as <NAME>_FILE, in `.env` or the environment: the files'
    contents, validated as the variables' would be."""

    def __call__(self) -> dict[str, Any]:
        from_files = secrets_from_files(environment_variables())
        return {name.lower(): from_files[name] for name in SECRET_VARIABLES if name in from_files}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self().get(field_name), field_name, False


# Defaults are the project's own files, wherever the service is started from.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    webhook_secret: SecretStr = Field(
        description="HMAC-SHA256 key shared with the CI pipeline; several separated by commas during a rotation"
    )
    service_secrets: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="WEBHOOK_SECRET_<NAME> variables: the secrets of services whose inventory entry names one",
    )
    deploy_replay_window: int = Field(
        300, ge=10, le=86400, description="Seconds a request's `timestamp` may be away from now; each is used once"
    )
    deploy_require_timestamp: bool = Field(False, description="Refuse a request whose body has no `timestamp`")
    deploy_signature_failure_limit: str = Field(
        "10/minute", description="Invalid signatures allowed per client address before 429 (limits notation)"
    )
    deploy_service_rate_limit: str = Field(
        "30/hour", description="Deploys and rollbacks allowed per service before 429 (limits notation)"
    )
    deploy_trusted_proxies: Annotated[tuple[IpNetwork, ...], NoDecode] = Field(
        (),
        description="Addresses (or networks) whose CF-Connecting-IP and X-Forwarded-For are believed; "
        "127.0.0.1 when cloudflared runs on the host",
    )
    deploy_inventory: Path = Field(
        PROJECT_ROOT / "inventory", description="Ansible inventory: hosts and the allow-list"
    )
    deploy_playbook: Path = Field(PROJECT_ROOT / "playbooks" / "deploy.yml", description="The deploy playbook")
    deploy_state_dir: Path = Field(
        PROJECT_ROOT / "var", description="The deployment history (deployments.sqlite3) and run directories"
    )
    deploy_read_token: SecretStr | None = Field(
        None, description="Bearer token for GET /deployments; unset, the history is readable only by signed id"
    )
    deploy_timeout: int = Field(900, ge=10, description="Seconds a deploy may run before it is stopped")
    deploy_recover_interrupted: Literal["rollback", "report"] = Field(
        "rollback",
        description="After a deploy was interrupted (crash, timeout) with an unverified image running: roll back "
        "to the previous image, or only report what runs",
    )
    deploy_reconcile_interval: float = Field(
        30,
        ge=2,
        le=3600,
        description="Seconds at most between two checks of a record awaiting reconciliation (the first comes within "
        "2 s, each next one twice as late)",
    )
    deploy_engine_check_interval: float = Field(
        30,
        ge=0,
        le=86400,
        description="Seconds between two checks of every host's Docker engine (/health, metrics); 0: no engine "
        "checks at all, nor probes of a running deploy's hosts (its `waiting`)",
    )
    deploy_max_body_bytes: int = Field(64 * 1024, ge=1024, description="Larger request bodies get 413")
    deploy_keep_runs: int = Field(100, ge=1, description="Run directories kept under DEPLOY_STATE_DIR/runs")
    deploy_history_retention: Annotated[Retention, NoDecode] = Field(
        Retention(days=365, records=5000),
        description="History kept: records younger than <N>d, at most <N> of them, or both (365d,5000); "
        "unfinished records are always kept",
    )
    deploy_metrics_token: SecretStr | None = Field(
        None, description="Bearer token Prometheus must send to GET /metrics; unset, /metrics is open"
    )
    deploy_notify_urls: SecretStr | None = Field(
        None,
        description="Apprise URLs to notify, separated by commas or spaces (tgram://, slack://, ntfy://, json://...)",
    )
    deploy_notify_events: Annotated[tuple[NotifyEvent, ...], NoDecode] = Field(
        NOTIFY_EVENTS,
        description="The outcomes that are notified, separated by commas: a deploy's finished outcomes, and missed "
        "(a planned deploy that could not run in its grace); all: every one",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text: the reference's lines; json: one JSON object per line (Loki)"
    )
    deploy_environment: str | None = Field(
        None,
        pattern=ENVIRONMENT_PATTERN,
        description="The inventory group a request without `environment` deploys to; unset: every host",
    )
    deploy_batches: Annotated[tuple[int | str, ...], NoDecode] = Field(
        (1, "100%"),
        description="Hosts per batch of a rollout, separated by commas (Ansible's serial): 1,100% is one host, "
        "then the rest; 1,50%,100% adds a half; 100% is every host at once",
    )
    deploy_rollback_updated_hosts: bool = Field(
        True, description="When a batch fails, roll back the hosts earlier batches updated (no mixed versions)"
    )
    deploy_schedule_grace: int = Field(
        600,
        ge=0,
        description="Seconds a planned deploy (`at`) may start late: after the API was down at its time, or while "
        "its service is busy with another deploy; later, it is missed",
    )
    deploy_schedule_timezone: str = Field(
        "UTC",
        description="IANA time zone (e.g. Europe/Berlin) of the cron expressions of deploy_services.<name>.schedule "
        "and deploy_window that name none",
    )
    deploy_watch_interval: int = Field(
        300,
        ge=1,
        description="Seconds between two looks at the registry for a schedule with watch: true and no cron (the "
        "schedule's interval overrides it)",
    )
    deploy_schedule_horizon: int = Field(
        7_776_000, gt=0, description="Seconds ahead a deploy may be planned (`at`); 90 days by default"
    )
    deploy_host: str = Field("127.0.0.1", description="Address to listen on")
    deploy_port: int = Field(9000, ge=1, le=65535, description="Port to listen on")

    @field_validator("deploy_schedule_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        problem = zone_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("webhook_secret")
    @classmethod
    def secret_is_strong(cls, secret: SecretStr) -> SecretStr:
        return _strong_secrets("WEBHOOK_SECRET", secret)

    @field_validator("service_secrets")
    @classmethod
    def service_secrets_are_strong(cls, secrets: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, secret in secrets.items():
            if not SECRET_ENV.fullmatch(name):
                raise ValueError(f"{name} is not a WEBHOOK_SECRET_<NAME> variable")
            _strong_secrets(name, secret)
        return secrets

    @field_validator("deploy_signature_failure_limit", "deploy_service_rate_limit")
    @classmethod
    def limit_is_readable(cls, value: str) -> str:
        try:
            limits.parse(value)
        except ValueError:
            raise ValueError(f"'{value}' is not a rate limit such as 10/minute or 30 per hour") from None
        return value

    @field_validator("deploy_trusted_proxies", mode="before")
    @classmethod
    def networks_from_a_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(ipaddress.ip_network(part, strict=False) for part in value.replace(",", " ").split())
        return value

    @field_validator("deploy_read_token", "deploy_metrics_token")
    @classmethod
    def token_is_strong(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value()) < MIN_READ_TOKEN_LENGTH:
            raise ValueError(f"must be at least {MIN_READ_TOKEN_LENGTH} characters")
        return token or None

    @field_validator("deploy_notify_urls")
    @classmethod
    def apprise_can_use_each(cls, urls: SecretStr | None) -> SecretStr | None:
        if urls is None or not urls.get_secret_value().strip():
            return None
        try:
            target_urls(urls.get_secret_value())
        except ValueError as error:
            raise ValueError(f"{error}; see https://appriseit.com/services/") from None
        return urls

    @field_validator("deploy_batches", mode="before")
    @classmethod
    def batches_from_a_list(cls, value: object) -> object:
        parts = [part.strip() for part in value.replace(",", " ").split()] if isinstance(value, str) else value
        if not isinstance(parts, list | tuple) or not parts:
            raise ValueError("give one batch size or more, such as 1,100%")
        batches: list[int | str] = []
        for part in parts:
            text = str(part)
            if re.fullmatch(r"[1-9][0-9]{0,5}", text):
                batches.append(int(text))
            elif re.fullmatch(r"(?:[1-9][0-9]?|100)%", text):
                batches.append(text)
            else:
                raise ValueError(f"'{text}' is neither a number of hosts nor a percentage from 1% to 100%")
        return tuple(batches)

    @field_validator("deploy_history_retention", mode="before")
    @classmethod
    def retention_from_text(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        days = records = None
        for part in value.replace(",", " ").split():
            if re.fullmatch(r"[1-9][0-9]{0,5}d", part) and days is None:
                days = int(part[:-1])
            elif re.fullmatch(r"[1-9][0-9]{0,8}", part) and records is None:
                records = int(part)
            else:
                raise ValueError(f"'{part}' is neither a number of days (365d) nor of records (5000)")
        if days is None and records is None:
            raise ValueError("give a number of days (365d), of records (5000), or both (365d,5000)")
        return Retention(days=days, records=records)

    @field_validator("deploy_notify_events", mode="before")
    @classmethod
    def events_from_a_list(cls, events: object) -> object:
        if isinstance(events, str):
            names = [name.strip() for name in events.replace(",", " ").split()]
            return tuple(NOTIFY_EVENTS if names == ["all"] else names)
        return events

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, dotenv_settings, SecretFilesSource(settings_cls), file_secret_settings

    @model_validator(mode="before")
    @classmethod
    def service_secrets_from_the_environment(cls, values: object) -> object:
        if isinstance(values, dict) and "service_secrets" not in values:
            return {**values, "service_secrets": service_secrets_from_environment()}
        return values

    @property
    def history_file(self) -> Path:
        return self.deploy_state_dir / "deployments.sqlite3"

    def secret_sets(self) -> dict[str, tuple[bytes, ...]]:
        """The secrets that may sign, by who holds them: DEFAULT_SIGNER for every service without its own."""
        return {
            DEFAULT_SIGNER: secrets_of(self.webhook_secret),
            **{name: secrets_of(secret) for name, secret in self.service_secrets.items()},
        }


@lru_cache
def get_settings() -> Settings:
    settings = Settings()
    for name in [name for name in os.environ if is_secret_variable(name)]:
        os.environ.pop(name, None)
    return settings
