"""Environments (inventory groups), rollout settings, per-host outcomes and per-host recovery, with a fake runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from fakerunner import FakeRunner, success_result
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from api.inventory import read_inventory
from api.main import create_app
from api.recovery import restore_hosts
from api.runner import RunResult, unsafe_extravars
from api.settings import Settings
from api.signature import sign

REPO = Path(__file__).resolve().parents[3]
SECRET = "unit-test-secret-unit-test-secret-0123456789"
PRODUCTION_SECRET = "production-secret-production-secret-0123456789"


def make_client(tmp_path: Path, **settings) -> TestClient:
    settings = Settings(
        **{
            "webhook_secret": SECRET,
            "service_secrets": {"WEBHOOK_SECRET_PRODUCTION": SecretStr(PRODUCTION_SECRET)},
            "deploy_inventory": REPO / "examples" / "fleet" / "inventory.yml",
            "deploy_state_dir": tmp_path / "var",
            **settings,
        }
    )
    return TestClient(create_app(settings))


@pytest.fixture
def client(tmp_path, fake_runner):
    with make_client(tmp_path) as client:
        yield client


def post(client: TestClient, body: dict, secret: str = SECRET):
    raw = json.dumps(body).encode()
    return client.post("/deploy", content=raw, headers={"X-Hub-Signature-256": sign(secret.encode(), raw)})


def test_the_example_fleet_has_two_environments_each_with_its_services_and_policies():
    view = read_inventory(REPO / "examples" / "fleet" / "inventory.yml")

    assert list(view.environments) == ["production", "staging"]
    assert view.environment("production").hosts == ("web1", "web2", "media")
    assert view.environment("production").services == ("portal",)
    assert view.environment("staging").services == ("portal", "portal-preview")
    production = view.environment("production").policies("portal")
    assert {host: policy.secret_envs for host, policy in production.items()} == dict.fromkeys(
        ("web1", "web2", "media"), ("WEBHOOK_SECRET_PRODUCTION",)
    )
    assert view.environment("staging").policies("portal")["staging-box"].secret_envs == ()
    with pytest.raises(KeyError):
        view.environment("qa")


def test_a_secret_may_deploy_only_where_every_host_it_reaches_allows_it():
    """An intersection over the hosts, never a union: without an environment a request reaches every host, and
    neither staging's secret (WEBHOOK_SECRET) nor production's may deploy portal on all of them."""
    view = read_inventory(REPO / "examples" / "fleet" / "inventory.yml")
    everywhere = view.environment(None)

    assert everywhere.hosts == ("staging-box", "web1", "web2", "media")
    assert not everywhere.signs("portal", {"WEBHOOK_SECRET"})
    assert not everywhere.signs("portal", {"WEBHOOK_SECRET_PRODUCTION"})
    assert everywhere.signs("portal", {"WEBHOOK_SECRET", "WEBHOOK_SECRET_PRODUCTION"})
    assert everywhere.services == ("portal",), "portal-preview runs in staging only"
    assert view.environments_for("portal", {"WEBHOOK_SECRET"}) == ("staging",)
    assert view.environments_for("portal", {"WEBHOOK_SECRET_PRODUCTION"}) == ("production",)
    assert view.environment("production").services_for({"WEBHOOK_SECRET"}) == ()


def test_a_request_deploys_to_its_environment_with_the_rollout_settings(client, fake_runner):
    response = post(client, {"service": "portal", "environment": "staging"})

    assert response.status_code == 200, response.text
    (call,) = fake_runner.calls
    assert call["extravars"]["deploy_environment"] == "staging"
    assert call["extravars"]["deploy_batches"] == [1, "100%"]
    assert call["extravars"]["deploy_rollback_updated"] is True
    # Settings are written as plain YAML values, strings as data: quoted, in a mapping tagged !unsafe.
    written = unsafe_extravars(call["extravars"])
    document = yaml.compose(written, Loader=yaml.SafeLoader)
    assert document.tag == "!unsafe"
    nodes = {key.value: value for key, value in document.value}
    assert (nodes["deploy_environment"].tag, nodes["deploy_environment"].style) == ("tag:yaml.org,2002:str", '"')
    assert [(node.tag, node.value) for node in nodes["deploy_batches"].value] == [
        ("tag:yaml.org,2002:int", "1"),
        ("tag:yaml.org,2002:str", "100%"),
    ]
    assert nodes["deploy_rollback_updated"].tag == "tag:yaml.org,2002:bool"
    loaded = DataLoader().load(written)
    assert loaded["deploy_environment"] == "staging"
    assert loaded["deploy_batches"] == [1, "100%"]
    assert loaded["deploy_rollback_updated"] is True
    record = client.get(f"/deployments/{response.headers['X-Deployment-Id']}", headers=read_headers(response))
    assert record.json()["environment"] == "staging"


def read_headers(response) -> dict[str, str]:
    deployment_id = response.headers["X-Deployment-Id"]
    return {"X-Hub-Signature-256": sign(SECRET.encode(), deployment_id.encode(), "read")}


@pytest.mark.parametrize(
    ("body", "secret", "detail"),
    [
        (
            {"service": "portal", "environment": "qa"},
            SECRET,
            "Environment 'qa' is not in the inventory. Environments: ",
        ),
        (
            {"service": "portal-preview", "environment": "production"},
            PRODUCTION_SECRET,
            "Service 'portal-preview' not allowed in production. Allowed: portal",
        ),
        # The allow-list is not listed to a secret that may deploy nothing there.
        (
            {"service": "portal-preview", "environment": "production"},
            SECRET,
            "Service 'portal-preview' not allowed in production. Allowed: none for the secret that signed this request",
        ),
        # Without an environment, every host: portal-preview is not on production's, and staging is named.
        (
            {"service": "portal-preview"},
            SECRET,
            "Service 'portal-preview' not allowed. Allowed: none for the secret that signed this request; "
            'it may in staging: name one in "environment"',
        ),
    ],
)
def test_an_unknown_environment_or_a_service_it_does_not_allow_is_refused(client, fake_runner, body, secret, detail):
    response = post(client, body, secret)

    assert response.status_code == 400
    assert response.json()["detail"].startswith(detail)
    assert fake_runner.calls == []


def test_the_environments_listed_are_those_the_signer_may_deploy_to(client, fake_runner):
    staging = post(client, {"service": "portal", "environment": "qa"})
    production = post(client, {"service": "portal", "environment": "qa"}, PRODUCTION_SECRET)

    assert staging.json()["detail"] == "Environment 'qa' is not in the inventory. Environments: staging"
    assert production.json()["detail"] == "Environment 'qa' is not in the inventory. Environments: production"


def test_an_environment_that_is_no_group_name_is_a_422(client, fake_runner):
    response = post(client, {"service": "portal", "environment": "all:!web1"})

    assert response.status_code == 422
    assert fake_runner.calls == []


def test_production_takes_only_its_own_secret(client, fake_runner):
    assert post(client, {"service": "portal", "environment": "production"}).status_code == 403
    assert post(client, {"service": "portal", "environment": "staging", "commit": "a"}).status_code == 200
    # The same body again, now signed by the secret that may deploy it: a new request, not a replay.
    granted = post(client, {"service": "portal", "environment": "production"}, PRODUCTION_SECRET)
    assert granted.status_code == 200, granted.text
    assert [call["extravars"]["deploy_environment"] for call in fake_runner.calls] == ["staging", "production"]
    assert [call["limit"] for call in fake_runner.calls] == [("staging-box",), ("web1", "web2", "media")]


@pytest.mark.parametrize("environment", [None, "production"])
def test_staging_secret_gets_nothing_on_production_and_the_playbook_never_runs(client, fake_runner, environment):
    body = {"service": "portal", **({"environment": environment} if environment else {})}
    refused = post(client, body)

    assert refused.status_code == 403
    where = " in production" if environment else ""
    hint = "" if environment else '; it may in staging: name one in "environment"'
    assert refused.json() == {"detail": f"The secret that signed this request may not deploy 'portal'{where}{hint}"}
    assert fake_runner.calls == []


def test_production_secret_without_environment_is_refused_too(client, fake_runner):
    """Production's secret may not deploy on the staging box, which every-host requests reach."""
    refused = post(client, {"service": "portal"}, PRODUCTION_SECRET)

    assert refused.status_code == 403
    assert refused.json()["detail"].endswith('it may in production: name one in "environment"')
    assert fake_runner.calls == []


def test_deploy_environment_is_the_default_and_deploy_batches_is_passed_on(tmp_path, fake_runner):
    with make_client(tmp_path, deploy_environment="staging", deploy_batches="1, 50%,100%") as client:
        response = post(client, {"service": "portal-preview"})

    assert response.status_code == 200, response.text
    (call,) = fake_runner.calls
    assert call["extravars"]["deploy_environment"] == "staging"
    assert call["extravars"]["deploy_batches"] == [1, "50%", "100%"]


@pytest.mark.parametrize("batches", ["", "0", "150%", "0%", "one", "1,-2"])
def test_deploy_batches_refuses_what_is_no_batch_size(batches):
    with pytest.raises(ValidationError, match="deploy_batches"):
        Settings(webhook_secret=SECRET, deploy_batches=batches)


def test_each_host_has_its_outcome_and_the_error_names_the_host(client, fake_runner: FakeRunner):
    rolled_back = {
        **success_result(),
        "success": False,
        "outcome": "rolled_back",
        "error": "Container failed to start",
        "steps": [
            {"step": "capture_state", "success": True, "detail": "done"},
            {"step": "health_check", "success": False, "detail": "done"},
        ],
    }
    not_reached = {"success": False, "outcome": "not_reached", "error": "Not deployed: the rollout stopped at web1"}
    fake_runner.result = RunResult(
        status="failed", rc=2, results={"web1": rolled_back, "web2": not_reached, "media": not_reached}
    )

    response = post(client, {"service": "portal", "environment": "production"}, PRODUCTION_SECRET)

    assert response.status_code == 500
    body = response.json()
    assert body["environment"] == "production"
    assert {host: entry["outcome"] for host, entry in body["hosts"].items()} == {
        "web1": "rolled_back",
        "web2": "not_reached",
        "media": "not_reached",
    }
    assert body["error"].startswith("web1: Container failed to start; web2: Not deployed")
    assert {step["host"] for step in body["steps"]} == {"web1"}
    record = client.get(
        f"/deployments/{response.headers['X-Deployment-Id']}", headers=read_headers_production(response)
    )
    assert record.json()["outcome"] == "rolled_back"
    assert record.json()["hosts"]["web2"]["outcome"] == "not_reached"


def read_headers_production(response) -> dict[str, str]:
    deployment_id = response.headers["X-Deployment-Id"]
    return {"X-Hub-Signature-256": sign(PRODUCTION_SECRET.encode(), deployment_id.encode(), "read")}


def test_a_single_host_keeps_the_reference_body(tmp_path, fake_runner):
    with make_client(tmp_path, deploy_inventory=REPO / "inventory") as client:
        response = post(client, {"service": "hello-world"})

    assert response.status_code == 200
    assert set(response.json()) == {"success", "service", "message", "old_image", "new_image", "steps"}


OLD, NEW = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def test_after_a_crash_only_hosts_left_on_an_unproven_image_are_restored():
    steps = [
        {"step": "capture_state", "success": True, "detail": "done", "host": "web1"},
        {"step": "health_check", "success": True, "detail": "done", "host": "web1"},
        {"step": "capture_state", "success": True, "detail": "done", "host": "web2"},
    ]
    record = {
        "old_image_id": OLD,
        "steps": steps,
        "hosts": {
            "web1": {"old_image_id": OLD, "new_image_id": NEW},
            "web2": {"old_image_id": OLD, "new_image_id": NEW},
        },
    }
    statuses = {
        "web1": {"image_id": NEW},  # passed its health check: kept
        "web2": {"image_id": NEW},  # never did: restored
        "media": {"image_id": OLD},  # never reached
    }

    assert restore_hosts(record, statuses) == {"web2": "the service runs an image that never passed its health check"}
    assert restore_hosts(record, None) == {}


def test_a_running_record_shows_each_host_as_it_goes(tmp_path, monkeypatch):
    """While a deploy runs, the record holds each host's images as its steps finish (what a restart needs)."""
    import threading

    from api import deployer as deployer_module

    reported, release = threading.Event(), threading.Event()
    steps = [
        {"step": "capture_state", "success": True, "detail": "done", "image": "ghcr.io/acme/portal:1", "image_id": OLD}
    ]

    def runner(**kwargs):
        kwargs["on_steps"]("web1", steps)
        reported.set()
        assert release.wait(10)
        return RunResult(status="successful", rc=0, results={"web1": success_result()})

    monkeypatch.setattr(deployer_module, "run_playbook", runner)
    with make_client(tmp_path) as client:
        raw = json.dumps({"service": "portal", "environment": "staging"}).encode()
        started = client.post(
            "/deploy",
            params={"wait": "false"},
            content=raw,
            headers={"X-Hub-Signature-256": sign(SECRET.encode(), raw)},
        )
        assert started.status_code == 202, started.text
        assert reported.wait(10)
        running = client.get(f"/deployments/{started.json()['deployment_id']}", headers=read_headers(started))
        release.set()

    assert running.status_code == 200, running.text
    assert running.json()["outcome"] == "running"
    assert running.json()["hosts"] == {
        "web1": {
            "outcome": "running",
            "old_image": "ghcr.io/acme/portal:1",
            "old_image_id": OLD,
            "new_image": None,
            "new_image_id": None,
            "error": None,
        }
    }
    assert running.json()["old_image_id"] == OLD
