"""Many hosts: environments, canary and rolling deploys through the real API, on three real Docker engines (one of
them reached over real SSH) and the rig's own engine, each host with its own compose directory."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import fingerprint, service

from tests.support.apiserver import serving
from tests.support.dockercli import docker_on, image
from tests.support.hosts import RigHosts, local_vars, rig_hosts, ssh_vars, state_dir

PRODUCTION = ("prod1", "prod2", "prod3")
SERVICE = "web"


class Fleet:
    """staging: stage1 on the rig's engine. production: prod1 on engine h1, prod2 on h2, prod3 on h3 over SSH.

    prod2's compose file checks health its own way: the v2 images are unhealthy there, and only there.
    """

    def __init__(self, root: Path, rig: RigHosts):
        self.name = f"dt-{uuid.uuid4().hex[:10]}"
        # The API's /health lists the compose directories; they are all under this one.
        self.dir = root / "hosts"
        self.docker_hosts = {
            "stage1": None,
            "prod1": rig.engine("h1"),
            "prod2": rig.engine("h2"),
            "prod3": rig.engine("h3"),
            # edge: edge1 on the rig's engine (a project of its own there), edge2 an SSH host that cannot be reached.
            "edge1": None,
            "edge2": None,
        }
        self.projects = {host: f"{self.name}-edge" if host == "edge1" else self.name for host in self.docker_hosts}
        host_vars: dict[str, dict[str, Any]] = {}
        for host, docker_host in self.docker_hosts.items():
            compose_dir = self.dir / host
            compose_dir.mkdir(parents=True)
            web = service(image("healthy", "v1"))
            if host == "prod2":
                web["healthcheck"] = {
                    "test": ["CMD-SHELL", "wget -q -O- http://127.0.0.1:8080/version | grep -v v2"],
                    "interval": "1s",
                    "timeout": "2s",
                    "retries": 2,
                }
            document = {"name": self.projects[host], "services": {SERVICE: web}}
            (compose_dir / "docker-compose.yml").write_text(yaml.safe_dump(document, sort_keys=False))
            connection = ssh_vars(rig, docker_host) if host in ("prod3", "edge2") else local_vars(docker_host)
            if host == "edge2":
                connection["ansible_port"] = 1  # nothing listens there
            host_vars[host] = {**connection, "deploy_compose_dir": str(compose_dir)}
        services = {SERVICE: {"health_timeout": 30}}
        self.inventory = root / "inventory.yml"
        self.inventory.write_text(
            yaml.safe_dump(
                {
                    "all": {
                        "children": {
                            "staging": {
                                "hosts": {"stage1": host_vars["stage1"]},
                                # A service only staging runs.
                                "vars": {"deploy_services": {**services, "preview": {}}},
                            },
                            "production": {
                                "hosts": {host: host_vars[host] for host in PRODUCTION},
                                "vars": {"deploy_services": services},
                            },
                            "edge": {
                                "hosts": {host: host_vars[host] for host in ("edge1", "edge2")},
                                "vars": {"deploy_services": services},
                            },
                        }
                    }
                },
                sort_keys=False,
            )
        )

    def docker(self, host: str, *args: str) -> str:
        return docker_on(self.docker_hosts[host], *args)

    def container(self, host: str) -> dict[str, Any] | None:
        ids = self.docker(
            host,
            "ps",
            "-aq",
            "--filter",
            f"label=com.docker.compose.project={self.projects[host]}",
            "--filter",
            f"label=com.docker.compose.service={SERVICE}",
        ).split()
        assert len(ids) <= 1, f"{host} has {len(ids)} containers of {SERVICE}"
        return json.loads(self.docker(host, "inspect", ids[0]))[0] if ids else None

    def image_id(self, host: str, reference: str) -> str:
        return self.docker(host, "image", "inspect", "--format", "{{.Id}}", reference)

    def runs(self, host: str, reference: str) -> bool:
        """The host's container runs the image `reference` names on that engine, and is healthy."""
        container = self.container(host)
        return (
            container is not None
            and container["Image"] == self.image_id(host, reference)
            and container["State"]["Health"]["Status"] == "healthy"
        )

    def down(self) -> None:
        for host in self.docker_hosts:
            docker_on(
                self.docker_hosts[host], "compose", "-p", self.projects[host], "down", "--remove-orphans", check=False
            )


@pytest.fixture
def api_server(tmp_path):
    yield from serving(tmp_path)


@pytest.fixture
def fleet(tmp_path, docker_engine):
    made = Fleet(tmp_path, rig_hosts())
    yield made
    made.down()


def ssh_logins() -> int:
    """Key logins the rig's sshd accepted so far (its own log)."""
    log = state_dir() / "ssh" / "sshd.log"
    return log.read_text().count("Accepted publickey for") if log.exists() else 0


def outcomes(body: dict[str, Any]) -> dict[str, str]:
    return {host: entry["outcome"] for host, entry in body["hosts"].items()}


def test_environments_canary_and_rolling_deploys_on_three_engines_and_over_ssh(fleet, api_server):
    server = api_server(fleet)

    # Refusals first: nothing runs, nothing is touched.
    unknown = server.post({"service": SERVICE, "environment": "qa"})
    assert unknown.status_code == 400
    assert (
        unknown.json()["detail"] == "Environment 'qa' is not in the inventory. Environments: edge, production, staging"
    )
    elsewhere = server.post({"service": "preview", "environment": "production"})
    assert elsewhere.status_code == 400
    assert elsewhere.json()["detail"] == f"Service 'preview' not allowed in production. Allowed: {SERVICE}"

    # Staging only: the rig's own engine gets the service, no production engine does.
    staging = server.post({"service": SERVICE, "image": image("healthy", "v1"), "environment": "staging"})
    assert staging.status_code == 200, staging.text
    assert staging.json()["environment"] == "staging"
    assert outcomes(staging.json()) == {"stage1": "succeeded"}
    assert fleet.runs("stage1", image("healthy", "v1"))
    assert [fleet.container(host) for host in PRODUCTION] == [None, None, None]
    staged = fingerprint(fleet.container("stage1"))

    # Production, across three engines, prod3 over SSH: one host first, then the other two.
    logins = ssh_logins()
    production = server.post({"service": SERVICE, "image": image("healthy", "v1"), "environment": "production"})
    assert production.status_code == 200, production.text
    assert outcomes(production.json()) == dict.fromkeys(PRODUCTION, "succeeded")
    assert all(fleet.runs(host, image("healthy", "v1")) for host in PRODUCTION)
    assert {step["host"] for step in production.json()["steps"]} == set(PRODUCTION)
    assert ssh_logins() > logins, "prod3 was reached over SSH"
    engines = {fleet.docker(host, "info", "--format", "{{.ID}}") for host in PRODUCTION}
    assert len(engines) == 3, "three hosts, three engines"
    record = server.record(production.headers["X-Deployment-Id"])
    assert (record["environment"], record["outcome"]) == ("production", "succeeded")
    assert fingerprint(fleet.container("stage1")) == staged, "a production deploy leaves staging alone"
    before = {host: fingerprint(fleet.container(host)) for host in PRODUCTION}

    # Canary: the first host fails and is rolled back; the rollout stops there.
    canary = server.post({"service": SERVICE, "image": image("crash", "v1"), "environment": "production"})
    assert canary.status_code == 500, canary.text
    assert outcomes(canary.json()) == {"prod1": "rolled_back", "prod2": "not_reached", "prod3": "not_reached"}
    assert fleet.runs("prod1", image("healthy", "v1"))
    assert {host: fingerprint(fleet.container(host)) for host in ("prod2", "prod3")} == {
        host: before[host] for host in ("prod2", "prod3")
    }, "hosts the rollout did not reach are untouched"
    assert "not_reached" in canary.json()["error"] or "prod1:" in canary.json()["error"]
    record = server.record(canary.headers["X-Deployment-Id"])
    assert (record["environment"], record["outcome"]) == ("production", "rolled_back")
    assert outcomes(record) == outcomes(canary.json())

    # The second batch fails on prod2: prod2 rolls back, and so do prod1 (first batch) and prod3 (same batch),
    # so that production does not end on mixed versions.
    rolling = server.post({"service": SERVICE, "image": image("healthy", "v2"), "environment": "production"})
    assert rolling.status_code == 500, rolling.text
    assert outcomes(rolling.json()) == dict.fromkeys(PRODUCTION, "rolled_back")
    assert all(fleet.runs(host, image("healthy", "v1")) for host in PRODUCTION)
    hosts = rolling.json()["hosts"]
    assert "unhealthy" in hosts["prod2"]["error"]
    assert hosts["prod1"]["error"] == hosts["prod3"]["error"] == "Rolled back because the rollout stopped at prod2"
    assert hosts["prod1"]["new_image_id"] == fleet.image_id("prod1", image("healthy", "v2"))
    assert fingerprint(fleet.container("stage1")) == staged

    listed = server.get("/deployments", environment="production").json()
    assert [item["outcome"] for item in listed["items"]] == ["rolled_back", "rolled_back", "succeeded"]

    # A host that cannot be reached fails like any other host: edge1, updated in the first batch, is rolled back.
    docker_on(None, "compose", "-f", str(fleet.dir / "edge1" / "docker-compose.yml"), "up", "-d", "--wait")
    unreachable = server.post({"service": SERVICE, "image": image("healthy", "v2"), "environment": "edge"})
    assert unreachable.status_code == 500, unreachable.text
    assert outcomes(unreachable.json()) == {"edge1": "rolled_back", "edge2": "failed"}
    assert unreachable.json()["hosts"]["edge2"]["error"].startswith("Host unreachable")
    assert unreachable.json()["hosts"]["edge1"]["new_image_id"] == fleet.image_id("edge1", image("healthy", "v2"))
    assert fleet.runs("edge1", image("healthy", "v1"))


def test_with_rollback_of_updated_hosts_off_the_hosts_already_updated_keep_the_new_image(fleet, api_server):
    server = api_server(fleet, DEPLOY_ROLLBACK_UPDATED_HOSTS="false")
    first = server.post({"service": SERVICE, "image": image("healthy", "v1"), "environment": "production"})
    assert first.status_code == 200, first.text

    # prod2 fails in the second batch and is rolled back; prod1 (first batch) and prod3 (beside prod2) stay on v2.
    rolling = server.post({"service": SERVICE, "image": image("healthy", "v2"), "environment": "production"})
    assert rolling.status_code == 500, rolling.text
    assert outcomes(rolling.json()) == {"prod1": "succeeded", "prod2": "rolled_back", "prod3": "succeeded"}
    assert fleet.runs("prod1", image("healthy", "v2"))
    assert fleet.runs("prod3", image("healthy", "v2"))
    assert fleet.runs("prod2", image("healthy", "v1"))
    assert "unhealthy" in rolling.json()["hosts"]["prod2"]["error"]
    record = server.record(rolling.headers["X-Deployment-Id"])
    assert (record["outcome"], outcomes(record)) == ("rolled_back", outcomes(rolling.json()))
