"""Per-environment secrets, with a fake runner: a secret deploys only where every host it reaches takes it, and the
deploy budget and the one-deploy-at-a-time lock belong to the hosts a deploy touches."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fakerunner import FakeRunner
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.main import create_app
from api.settings import Settings
from api.signature import sign

OPERATOR_SECRET = "operator-secret-5e0c2b7f9a1d4e8c6b3a0f2d7e9c1b5a"
STAGING_SECRET = "staging-secret-8d2f4b6a0c9e1d3f5a7b9c2e4f6a8b0d"
PRODUCTION_SECRET = "production-secret-1a9c7e5b3d0f2a4c6e8b1d3f5a7c9e0b"
# Two environments, each with its own secret for portal; grafana takes WEBHOOK_SECRET everywhere.
INVENTORY = """
all:
  children:
    staging:
      hosts:
        stage1: {ansible_connection: local}
      vars:
        deploy_services:
          portal: {secret_env: WEBHOOK_SECRET_STAGING}
          grafana: {}
    production:
      hosts:
        prod1: {ansible_connection: local}
        prod2: {ansible_connection: local}
      vars:
        deploy_services:
          portal: {secret_env: WEBHOOK_SECRET_PRODUCTION}
          grafana: {}
"""


def make_client(tmp_path: Path, **overrides) -> TestClient:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(INVENTORY)
    settings = Settings(
        **{
            "webhook_secret": OPERATOR_SECRET,
            "service_secrets": {
                "WEBHOOK_SECRET_STAGING": SecretStr(STAGING_SECRET),
                "WEBHOOK_SECRET_PRODUCTION": SecretStr(PRODUCTION_SECRET),
            },
            "deploy_inventory": inventory,
            "deploy_state_dir": tmp_path / "var",
            **overrides,
        }
    )
    return TestClient(create_app(settings))


@pytest.fixture
def client(tmp_path, fake_runner):
    with make_client(tmp_path) as client:
        yield client


def post(client: TestClient, secret: str, wait: bool = True, **fields: str):
    raw = json.dumps(fields).encode()
    return client.post(
        "/deploy",
        params={"wait": str(wait).lower()},
        content=raw,
        headers={"X-Hub-Signature-256": sign(secret.encode(), raw)},
    )


@pytest.mark.parametrize("environment", [None, "production"])
def test_the_staging_secret_gets_nothing_on_production(client, fake_runner, environment):
    named = {"environment": environment} if environment else {}
    refused = post(client, STAGING_SECRET, service="portal", **named)

    assert refused.status_code == 403
    if environment:
        assert refused.json()["detail"] == "The secret that signed this request may not deploy 'portal' in production"
    else:
        # Every host: production's too. The secret may deploy portal in staging, and is told so.
        assert refused.json()["detail"] == (
            "The secret that signed this request may not deploy 'portal'; it may in staging: "
            'name one in "environment"'
        )
    assert fake_runner.calls == [], "the playbook never runs"


def test_each_environment_secret_deploys_its_own_environment_and_the_playbook_is_limited_to_it(client, fake_runner):
    staging = post(client, STAGING_SECRET, service="portal", environment="staging")
    production = post(client, PRODUCTION_SECRET, service="portal", environment="production")
    crossed = post(client, PRODUCTION_SECRET, service="portal", environment="staging", commit="x")
    everywhere = post(client, PRODUCTION_SECRET, service="portal")

    assert (staging.status_code, production.status_code) == (200, 200)
    assert (crossed.status_code, everywhere.status_code) == (403, 403)
    assert [(call["extravars"]["deploy_environment"], call["limit"]) for call in fake_runner.calls] == [
        ("staging", ("stage1",)),
        ("production", ("prod1", "prod2")),
    ]


def test_a_service_every_host_gives_to_one_secret_deploys_everywhere(client, fake_runner):
    """grafana names no secret of its own on any host: WEBHOOK_SECRET deploys it on all of them at once."""
    response = post(client, OPERATOR_SECRET, service="grafana")

    assert response.status_code == 200, response.text
    (call,) = fake_runner.calls
    assert "deploy_environment" not in call["extravars"]
    assert call["limit"] == ("stage1", "prod1", "prod2")


def test_the_budget_belongs_to_the_hosts_a_deploy_touches_and_a_409_spends_none(tmp_path, fake_runner: FakeRunner):
    with make_client(tmp_path, deploy_service_rate_limit="2/hour") as client:
        fake_runner.hold.add("staging")
        held = post(client, STAGING_SECRET, wait=False, service="portal", environment="staging", commit="1")
        assert fake_runner.entered.wait(10)
        conflict = post(client, STAGING_SECRET, service="portal", environment="staging", commit="2")
        # Production neither waits for staging nor pays for it.
        production = [
            post(client, PRODUCTION_SECRET, service="portal", environment="production", commit=str(number))
            for number in range(2)
        ]
        fake_runner.release.set()
        finished = wait_until_finished(client, held.json()["deployment_id"])
        fake_runner.hold.clear()
        # The 409 spent nothing: staging has one deploy left of its two.
        second = post(client, STAGING_SECRET, service="portal", environment="staging", commit="3")
        third = post(client, STAGING_SECRET, service="portal", environment="staging", commit="4")
        production_third = post(client, PRODUCTION_SECRET, service="portal", environment="production", commit="5")

    assert held.status_code == 202
    assert conflict.status_code == 409
    assert conflict.json()["detail"].startswith("A deployment of 'portal' is already running")
    assert [response.status_code for response in production] == [200, 200]
    assert finished == "succeeded"
    assert second.status_code == 200
    assert third.status_code == production_third.status_code == 429
    assert third.json()["detail"].startswith("Too many deploys of 'portal' (2 per 1 hour on each host)")


def test_a_deploy_to_every_host_waits_for_none_but_conflicts_with_each_environment(tmp_path, fake_runner):
    with make_client(tmp_path) as client:
        fake_runner.hold.add("production")
        held = post(client, OPERATOR_SECRET, wait=False, service="grafana", environment="production")
        assert fake_runner.entered.wait(10)
        staging = post(client, OPERATOR_SECRET, service="grafana", environment="staging")
        everywhere = post(client, OPERATOR_SECRET, service="grafana")
        fake_runner.release.set()
        wait_until_finished(client, held.json()["deployment_id"])

    assert (held.status_code, staging.status_code) == (202, 200)
    assert everywhere.status_code == 409, "every host includes production's, where grafana is deploying"


def wait_until_finished(client: TestClient, deployment_id: str) -> str:
    history = client.app.state.deployer.history
    deadline = time.monotonic() + 10
    while (outcome := history.get(deployment_id)["outcome"]) == "running":
        assert time.monotonic() < deadline, f"{deployment_id} still running"
        time.sleep(0.01)
    return outcome
