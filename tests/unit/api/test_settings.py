"""Settings: a strong secret or no start, and the secret out of the environment once read; a secret may be given as
a file (<NAME>_FILE)."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from api.settings import SECRET_ENV, Settings, get_settings

REPO = Path(__file__).resolve().parents[3]
STRONG = "6f1c0e9a4b7d2f8e3a5c1b9d7e2f4a6c8b0d1e3f"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.upper().startswith(("WEBHOOK_SECRET", "DEPLOY_")):
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


def secret_file(directory: Path, content: str, name: str = "webhook_secret") -> Path:
    """A file as compose mounts a secret at /run/secrets/<name>."""
    path = directory / name
    path.write_text(content)
    return path


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WEBHOOK_SECRET", STRONG),
        ("DEPLOY_READ_TOKEN", "r" + STRONG),
        ("DEPLOY_METRICS_TOKEN", "m" + STRONG),
        ("DEPLOY_NOTIFY_URLS", "json://deployer:hunter2secret@127.0.0.1:8001/notify"),
    ],
)
def test_a_secret_setting_may_be_given_as_a_file(monkeypatch, tmp_path, variable, value):
    if variable != "WEBHOOK_SECRET":
        monkeypatch.setenv("WEBHOOK_SECRET", STRONG[::-1])
    monkeypatch.setenv(f"{variable}_FILE", str(secret_file(tmp_path, value)))

    settings = get_settings()

    assert getattr(settings, variable.lower()).get_secret_value() == value
    # It holds a path, not the secret: it may stay.
    assert os.environ[f"{variable}_FILE"] == str(tmp_path / "webhook_secret")


@pytest.mark.parametrize("content", [f"{STRONG}\n", STRONG, f"{STRONG}\r\n", f"{STRONG} \t\n\n"])
def test_a_file_is_read_without_its_trailing_newline(monkeypatch, tmp_path, content):
    """`echo ... >` and `openssl rand -hex 32 >` end the file with a newline, which is no part of the secret."""
    monkeypatch.setenv("WEBHOOK_SECRET_FILE", str(secret_file(tmp_path, content)))

    assert Settings().webhook_secret.get_secret_value() == STRONG


def test_dotenv_may_name_the_file(tmp_path):
    (tmp_path / ".env").write_text(f"webhook_secret_file={secret_file(tmp_path, STRONG)}\n")

    assert Settings().webhook_secret.get_secret_value() == STRONG


def test_the_environment_names_the_file_over_dotenv(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text(f"WEBHOOK_SECRET_FILE={secret_file(tmp_path, STRONG, 'from_dotenv')}\n")
    monkeypatch.setenv("WEBHOOK_SECRET_FILE", str(secret_file(tmp_path, STRONG[::-1], "from_environment")))

    assert Settings().webhook_secret.get_secret_value() == STRONG[::-1]


@pytest.mark.parametrize("variable_in_dotenv", [False, True])
def test_a_variable_and_its_file_together_refuse(monkeypatch, tmp_path, variable_in_dotenv):
    if variable_in_dotenv:
        (tmp_path / ".env").write_text(f"WEBHOOK_SECRET={STRONG}\n")
    else:
        monkeypatch.setenv("WEBHOOK_SECRET", STRONG)
    monkeypatch.setenv("WEBHOOK_SECRET_FILE", str(secret_file(tmp_path, STRONG[::-1])))

    with pytest.raises(ValidationError, match="WEBHOOK_SECRET_FILE\n  WEBHOOK_SECRET is set too") as refused:
        Settings()

    assert STRONG not in str(refused.value)
    assert STRONG[::-1] not in str(refused.value)


@pytest.mark.parametrize(("name", "reason"), [("missing", "No such file or directory"), (".", "Is a directory")])
def test_a_file_that_cannot_be_read_refuses_naming_the_variable_and_the_path(monkeypatch, tmp_path, name, reason):
    path = tmp_path / name
    monkeypatch.setenv("WEBHOOK_SECRET", STRONG)
    monkeypatch.setenv("DEPLOY_READ_TOKEN_FILE", str(path))

    with pytest.raises(
        ValidationError, match=f"DEPLOY_READ_TOKEN_FILE\n  cannot read {re.escape(str(path))}: {reason}"
    ):
        Settings()


def test_an_empty_file_holds_no_secret(monkeypatch, tmp_path):
    monkeypatch.setenv("WEBHOOK_SECRET_FILE", str(secret_file(tmp_path, "\n")))

    with pytest.raises(ValidationError, match="WEBHOOK_SECRET holds no secret"):
        Settings()


def test_a_weak_secret_from_a_file_refuses_without_showing_it(monkeypatch, tmp_path):
    monkeypatch.setenv("WEBHOOK_SECRET_FILE", str(secret_file(tmp_path, "changeme" * 4)))

    with pytest.raises(ValidationError, match="WEBHOOK_SECRET: its secret repeats a shorter string") as refused:
        Settings()

    assert "changeme" not in str(refused.value)


def test_a_service_secret_may_be_given_as_a_file(monkeypatch, tmp_path):
    """In whatever letter case, as every setting, and named in capitals as the inventory's secret_env names it."""
    monkeypatch.setenv("WEBHOOK_SECRET", STRONG)
    monkeypatch.setenv("webhook_secret_portal_file", str(secret_file(tmp_path, f"{STRONG[::-1]}\n", "portal")))

    settings = get_settings()

    assert {name: secret.get_secret_value() for name, secret in settings.service_secrets.items()} == {
        "WEBHOOK_SECRET_PORTAL": STRONG[::-1]
    }


def test_a_weak_service_secret_from_a_file_refuses(monkeypatch, tmp_path):
    monkeypatch.setenv("WEBHOOK_SECRET", STRONG)
    monkeypatch.setenv("WEBHOOK_SECRET_PORTAL_FILE", str(secret_file(tmp_path, "a" * 32, "portal")))

    with pytest.raises(ValidationError, match="WEBHOOK_SECRET_PORTAL: its secret repeats a shorter string"):
        Settings()


def test_webhook_secret_file_is_the_file_of_webhook_secret_not_a_service_secret(monkeypatch, tmp_path):
    """WEBHOOK_SECRET_FILE has the shape of WEBHOOK_SECRET_<NAME>: a name ending in _FILE is always a file's."""
    monkeypatch.setenv("WEBHOOK_SECRET_FILE", str(secret_file(tmp_path, STRONG)))

    settings = Settings()

    assert settings.webhook_secret.get_secret_value() == STRONG
    assert settings.service_secrets == {}
    assert not SECRET_ENV.fullmatch("WEBHOOK_SECRET_FILE")
    assert not SECRET_ENV.fullmatch("WEBHOOK_SECRET_PORTAL_FILE")
    assert SECRET_ENV.fullmatch("WEBHOOK_SECRET_PROFILE")


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


def test_python_m_api_names_an_unreadable_secret_file_in_one_line(tmp_path):
    missing = tmp_path / "run" / "secrets" / "webhook_secret"
    environment = {key: value for key, value in os.environ.items() if not key.upper().startswith("WEBHOOK_SECRET")}
    completed = subprocess.run(
        [sys.executable, "-m", "api"],
        cwd=tmp_path,
        env={**environment, "PYTHONPATH": str(REPO), "WEBHOOK_SECRET_FILE": str(missing)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert completed.stderr == (
        f"deploy API: refusing to start: WEBHOOK_SECRET_FILE: cannot read {missing}: No such file or directory\n"
    )
