"""Per-environment secrets through the real API, the real playbook and two real engines: staging's secret gets
nothing on production, with or without naming an environment, and production's secret deploys production."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import fingerprint, service

from api.signature import sign
from tests.support.apiserver import serving
from tests.support.dockercli import docker_on, image
from tests.support.hosts import local_vars, rig_hosts

pytestmark = pytest.mark.usefixtures("registry")

STAGING_SECRET = "integration-staging-" + "7c1e9b3d5f0a2c4e6b8d1f3a5c7e9b0d"
PRODUCTION_SECRET = "integration-production-" + "2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f1a"
SERVICE = "portal"


class TwoEnvironments:
    """staging: stage1 on the rig's engine; production: prod1 on engine h1. Each group names its own secret."""

    def __init__(self, root: Path):
        self.name = f"dt-{uuid.uuid4().hex[:10]}"
        self.dir = root / "hosts"
        self.engines = {"stage1": None, "prod1": rig_hosts().engine("h1")}
        groups: dict[str, Any] = {}
        for group, host, secret_env in (
            ("staging", "stage1", "WEBHOOK_SECRET_STAGING"),
            ("production", "prod1", "WEBHOOK_SECRET_PRODUCTION"),
        ):
            compose_dir = self.dir / host
            compose_dir.mkdir(parents=True)
            document = {"name": self.name, "services": {SERVICE: service(image("healthy", "v1"))}}
            (compose_dir / "docker-compose.yml").write_text(yaml.safe_dump(document, sort_keys=False))
            groups[group] = {
                "hosts": {host: {**local_vars(self.engines[host]), "deploy_compose_dir": str(compose_dir)}},
                "vars": {"deploy_services": {SERVICE: {"secret_env": secret_env, "health_timeout": 30}}},
            }
        self.inventory = root / "inventory.yml"
        self.inventory.write_text(yaml.safe_dump({"all": {"children": groups}}, sort_keys=False))

    def up(self) -> None:
        for host, engine in self.engines.items():
            docker_on(engine, "compose", "-f", str(self.dir / host / "docker-compose.yml"), "up", "-d", "--wait")

    def container(self, host: str) -> dict[str, Any]:
        engine = self.engines[host]
        labels = [f"label=com.docker.compose.project={self.name}", f"label=com.docker.compose.service={SERVICE}"]
        (container_id,) = docker_on(engine, "ps", "-aq", "--filter", labels[0], "--filter", labels[1]).split()
        return json.loads(docker_on(engine, "inspect", container_id))[0]

    def runs(self, host: str, reference: str) -> bool:
        container = self.container(host)
        wanted = docker_on(self.engines[host], "image", "inspect", "--format", "{{.Id}}", reference)
        return container["Image"] == wanted and container["State"]["Health"]["Status"] == "healthy"

    def down(self) -> None:
        for engine in self.engines.values():
            docker_on(engine, "compose", "-p", self.name, "down", "--timeout", "1", check=False)


@pytest.fixture
def environments(tmp_path, docker_engine):
    made = TwoEnvironments(tmp_path)
    yield made
    made.down()


@pytest.fixture
def api_server(tmp_path):
    yield from serving(tmp_path)


def test_staging_secret_gets_nothing_on_production_and_production_secret_deploys_production(environments, api_server):
    environments.up()
    server = api_server(
        environments, WEBHOOK_SECRET_STAGING=STAGING_SECRET, WEBHOOK_SECRET_PRODUCTION=PRODUCTION_SECRET
    )
    untouched = {host: fingerprint(environments.container(host)) for host in ("stage1", "prod1")}

    def post(secret: str, **fields: str):
        raw = json.dumps({"service": SERVICE, "image": image("healthy", "v2"), **fields}).encode()
        return server.post(raw, signature=sign(secret.encode(), raw))

    # Staging's secret, without an environment (every host: production's too) and naming production: nothing runs.
    everywhere = post(STAGING_SECRET)
    production_by_staging = post(STAGING_SECRET, environment="production")
    everywhere_by_production = post(PRODUCTION_SECRET, commit="every host")
    assert (everywhere.status_code, production_by_staging.status_code) == (403, 403)
    assert everywhere.json()["detail"] == (
        "The secret that signed this request may not deploy 'portal'; it may in staging: name one in \"environment\""
    )
    assert production_by_staging.json()["detail"] == (
        "The secret that signed this request may not deploy 'portal' in production"
    )
    assert everywhere_by_production.status_code == 403, "production's secret may not deploy on the staging box"
    assert {host: fingerprint(environments.container(host)) for host in untouched} == untouched
    assert not (server.state_dir / "runs").exists(), "the playbook never ran"

    # Production's secret deploys production, and only production.
    production = post(PRODUCTION_SECRET, environment="production")
    assert production.status_code == 200, production.text
    assert environments.runs("prod1", image("healthy", "v2"))
    assert fingerprint(environments.container("stage1")) == untouched["stage1"], "staging is left alone"

    # Staging's secret deploys staging.
    staging = post(STAGING_SECRET, environment="staging")
    assert staging.status_code == 200, staging.text
    assert environments.runs("stage1", image("healthy", "v2"))
    records = server.get("/deployments").json()["items"]
    assert [(record["environment"], record["outcome"]) for record in records[:2]] == [
        ("staging", "succeeded"),
        ("production", "succeeded"),
    ]
