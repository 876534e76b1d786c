"""Settings: a strong secret or no start, and the secret out of the environment once read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from api.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[3]
STRONG = "k" * 40


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
    monkeypatch.setenv("WEBHOOK_SECRET", "k" * 31)
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings()


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
