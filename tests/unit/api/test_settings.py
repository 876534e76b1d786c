"""Settings: a strong secret or no start, and the secret out of the environment once read."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from api.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[3]
STRONG = "6f1c0e9a4b7d2f8e3a5c1b9d7e2f4a6c8b0d1e3f"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name == "WEBHOOK_SECRET" or name.startswith("DEPLOY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_missing_secret_refuses():
    with pytest.raises(ValidationError, match="webhook_secret"):
        Settings()


def test_short_secret_refuses(monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", STRONG[:31])
    with pytest.raises(ValidationError, match="WEBHOOK_SECRET: its secret is shorter than 32 characters"):
        Settings()


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("a" * 32, "repeats a shorter string"),
        ("changeme" * 4, "repeats a shorter string"),
        # The reference document's placeholder: padded with X.
        ("REDACTED_WEBHOOK_SECRET_64_CHARS_" + "X" * 31, "is 48% one character"),
        ("abc" * 11 + "d", "has about 59 bits of entropy (80 needed)"),
        ("abcdabcdabcdabcdabcdabcdabcdabcdx", "has about 70 bits of entropy (80 needed)"),
    ],
)
def test_a_long_but_weak_secret_refuses(monkeypatch, secret, why):
    monkeypatch.setenv("WEBHOOK_SECRET", f"{STRONG},{secret}")
    with pytest.raises(ValidationError, match=f"WEBHOOK_SECRET: its secret number 2 {re.escape(why)}"):
        Settings()


def test_every_secret_made_as_the_message_says_is_strong():
    """The message tells how to make a secret; what it makes must always pass, and so must a 128-bit one."""
    for _ in range(2000):
        Settings(webhook_secret=f"{secrets.token_hex(32)},{secrets.token_hex(16)},{secrets.token_urlsafe(24)}")


def test_defaults(monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", STRONG)
    settings = Settings()
    assert settings.deploy_port == 9000
    assert settings.deploy_inventory == REPO / "inventory"
    assert settings.deploy_playbook == REPO / "playbooks" / "deploy.yml"
    assert settings.deploy_state_dir == REPO / "var"
    assert settings.deploy_max_body_bytes == 64 * 1024
    assert STRONG not in repr(settings)


def test_dotenv_is_read(tmp_path):
    (tmp_path / ".env").write_text(f"WEBHOOK_SECRET={STRONG}\nDEPLOY_PORT=9100\n")
    settings = Settings()
    assert settings.webhook_secret.get_secret_value() == STRONG
    assert settings.deploy_port == 9100


def test_secret_leaves_the_environment_once_read(monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", STRONG)
    assert get_settings().webhook_secret.get_secret_value() == STRONG
    assert "WEBHOOK_SECRET" not in os.environ


def test_secrets_leave_the_environment_whatever_their_letter_case(monkeypatch):
    """Settings are read case-insensitively, so `webhook_secret` is the webhook secret too, and must go as well."""
    monkeypatch.setenv("webhook_secret", STRONG)
    monkeypatch.setenv("Deploy_Read_Token", "r" + STRONG)
    monkeypatch.setenv("webhook_secret_portal", STRONG[::-1])
    settings = get_settings()

    assert settings.webhook_secret.get_secret_value() == STRONG
    assert settings.service_secrets["WEBHOOK_SECRET_PORTAL"].get_secret_value() == STRONG[::-1]
    leftover = [name for name, value in os.environ.items() if STRONG in value or STRONG[::-1] in value]
    assert leftover == []


def test_python_m_api_refuses_to_start_with_a_clear_message(tmp_path):
    environment = {key: value for key, value in os.environ.items() if key != "WEBHOOK_SECRET"}
    completed = subprocess.run(
        [sys.executable, "-m", "api"],
        cwd=tmp_path,
        env={**environment, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "refusing to start: WEBHOOK_SECRET" in completed.stderr
