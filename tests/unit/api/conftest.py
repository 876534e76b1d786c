"""The API's unit tests run the app with a fake runner in place of ansible-runner."""

from __future__ import annotations

import pytest
from fakerunner import FakeRunner
from receiver import Receiver

from api import deployer as deployer_module
from api import engines as engines_module
from api import recovery as recovery_module
from api import scheduler as scheduler_module


@pytest.fixture
def fake_runner(monkeypatch) -> FakeRunner:
    runner = FakeRunner()
    monkeypatch.setattr(deployer_module, "run_playbook", runner)
    monkeypatch.setattr(recovery_module, "run_playbook", runner)
    monkeypatch.setattr(engines_module, "run_playbook", runner)
    monkeypatch.setattr(scheduler_module, "run_playbook", runner)
    return runner


@pytest.fixture(autouse=True)
def no_engine_watch(monkeypatch) -> None:
    """The engine watch is off unless a test turns it on: its checks would be runs of their own."""
    monkeypatch.setenv("DEPLOY_ENGINE_CHECK_INTERVAL", "0")


@pytest.fixture
def notified(monkeypatch) -> Receiver:
    """A notification receiver the app sends to (DEPLOY_NOTIFY_URLS)."""
    receiver = Receiver()
    monkeypatch.setenv("DEPLOY_NOTIFY_URLS", receiver.url)
    yield receiver
    receiver.close()
