"""Settings from the environment and `.env`, validated before the service starts."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from api.models import FINISHED_OUTCOMES, FinishedOutcome
from api.notify import target_urls

MIN_SECRET_LENGTH = 32
# Environment variables that hold secrets: removed from the process environment once read, so
# that no child process (ansible-runner records its environment in its artifacts) sees them.
# Apprise URLs carry bot tokens and passwords.
SECRET_VARIABLES = ("WEBHOOK_SECRET", "DEPLOY_READ_TOKEN", "DEPLOY_METRICS_TOKEN", "DEPLOY_NOTIFY_URLS")
MIN_READ_TOKEN_LENGTH = 16
# Defaults are the project's own files, wherever the service is started from.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    webhook_secret: SecretStr = Field(description="HMAC-SHA256 key shared with the CI pipeline")
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
    deploy_max_body_bytes: int = Field(64 * 1024, ge=1024, description="Larger request bodies get 413")
    deploy_keep_runs: int = Field(100, ge=1, description="Run directories kept under DEPLOY_STATE_DIR/runs")
    deploy_metrics_token: SecretStr | None = Field(
        None, description="Bearer token Prometheus must send to GET /metrics; unset, /metrics is open"
    )
    deploy_notify_urls: SecretStr | None = Field(
        None,
        description="Apprise URLs to notify, separated by commas or spaces (tgram://, slack://, ntfy://, json://...)",
    )
    deploy_notify_events: Annotated[tuple[FinishedOutcome, ...], NoDecode] = Field(
        FINISHED_OUTCOMES, description="The outcomes that are notified, separated by commas"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text: the reference's lines; json: one JSON object per line (Loki)"
    )
    deploy_host: str = Field("127.0.0.1", description="Address to listen on")
    deploy_port: int = Field(9000, ge=1, le=65535, description="Port to listen on")

    @field_validator("webhook_secret")
    @classmethod
    def secret_is_strong(cls, secret: SecretStr) -> SecretStr:
        if len(secret.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"WEBHOOK_SECRET must be at least {MIN_SECRET_LENGTH} characters; "
                "make one with: python3 -c 'import secrets; print(secrets.token_hex(32))'"
            )
        return secret

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

    @field_validator("deploy_notify_events", mode="before")
    @classmethod
    def events_from_a_list(cls, events: object) -> object:
        if isinstance(events, str):
            names = [name.strip() for name in events.replace(",", " ").split()]
            return tuple(FINISHED_OUTCOMES if names == ["all"] else names)
        return events

    @property
    def history_file(self) -> Path:
        return self.deploy_state_dir / "deployments.sqlite3"


@lru_cache
def get_settings() -> Settings:
    settings = Settings()
    for name in SECRET_VARIABLES:
        os.environ.pop(name, None)
    return settings
