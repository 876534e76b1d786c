"""What every deployctl test runs against: a fake API of its own, and an environment with only its URL and secret."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fakeapi import SECRET, FakeApi, serving

import deployctl.follow


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    yield from serving()


@pytest.fixture(autouse=True)
def environment(monkeypatch, tmp_path, fake_api) -> None:
    """Only what each test sets: no `.env` (the working directory is empty), no variables from the shell."""
    for name in ("WEBHOOK_SECRET", "DEPLOY_URL", "DEPLOY_READ_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("DEPLOY_URL", fake_api.url)
    monkeypatch.setattr(deployctl.follow, "POLL_INTERVAL", 0.01)
