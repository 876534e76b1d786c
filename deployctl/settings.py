"""Where the API is and what opens it: the environment, or `.env` in the current directory (as the API reads it)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_URL = "http://127.0.0.1:9000"


class ClientSettings(BaseSettings):
    # The same `.env` as the API's: on the server, `make run` wrote both values there.
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    webhook_secret: SecretStr | None = Field(
        None,
        description="Signs deploys, rollbacks and reads of one record; during a rotation the API's list "
        "(new,old), of which the first signs",
    )
    deploy_url: str = Field(DEFAULT_URL, description="The API's base URL")
    deploy_read_token: SecretStr | None = Field(None, description="Bearer token for the history")

    @field_validator("webhook_secret", "deploy_read_token")
    @classmethod
    def empty_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @property
    def signing_secret(self) -> bytes | None:
        """The secret that signs: WEBHOOK_SECRET's first entry, None when it holds none. During a rotation the
        API's .env holds "new,old", newest first, and the API accepts either; the new one is the one to use."""
        if self.webhook_secret is None:
            return None
        entries = (entry.strip() for entry in self.webhook_secret.get_secret_value().split(","))
        return next((entry.encode() for entry in entries if entry), None)
