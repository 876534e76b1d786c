"""The API's unit tests run the app with a fake runner in place of ansible-runner."""

from __future__ import annotations

import pytest
from fakerunner import FakeRunner

from api import deployer as deployer_module
from api import recovery as recovery_module


@pytest.fixture
def fake_runner(monkeypatch) -> FakeRunner:
    runner = FakeRunner()
    monkeypatch.setattr(deployer_module, "run_playbook", runner)
    monkeypatch.setattr(recovery_module, "run_playbook", runner)
    return runner
