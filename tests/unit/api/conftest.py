"""The API's unit tests run the app with a fake runner in place of ansible-runner."""

from __future__ import annotations

import pytest
from clock import Clock
from fakerunner import FakeRunner
from fastapi.testclient import TestClient
from receiver import Receiver

from api import deployer as deployer_module
from api import engines as engines_module
from api import recovery as recovery_module
from api import scheduler as scheduler_module
from api.main import create_app


@pytest.fixture
def fake_runner(monkeypatch) -> FakeRunner:
    runner = FakeRunner()
    monkeypatch.setattr(deployer_module, "run_playbook", runner)
    monkeypatch.setattr(recovery_module, "run_playbook", runner)
    monkeypatch.setattr(engines_module, "run_playbook", runner)
    monkeypatch.setattr(scheduler_module, "run_playbook", runner)
    return runner


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(settings, fake_runner: FakeRunner, clock: Clock):
    """The app on the module's `settings`, with the fake runner and the test's clock; modules that need no clock
    define their own."""
    with TestClient(create_app(settings, clock=clock)) as test_client:
        yield test_client


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
