"""The API in its own container, as the reference runs it: the image built from the Dockerfile (tests/rig/image.sh,
from bases made here), started with deployment.yml (host networking, the Docker socket and the compose directory
mounted, the secrets as compose secrets, the history on a volume), deploying on the host's engine.

One API container serves the whole module (ONE_RUN_MODULES); each test reads the engine, not the API's word."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import REPO, service

from api.signature import HEADER, sign
from tests.support.apiserver import free_port
from tests.support.dockercli import compose_down, container_of, docker, image, image_id

IMAGE = "deploy-api:test"
HEALTHY_WITHIN = 90  # the HEALTHCHECK's first run is 10 s after the start; an API's imports take seconds on a busy rig


@dataclass
class ApiContainer:
    """deployment.yml's API, up: its compose project, its directory (the compose directory it deploys from), its
    secrets and its address."""

    project: str
    dir: Path
    secret: str
    read_token: str
    url: str

    def compose(self, *args: str) -> str:
        return docker("compose", "-p", self.project, "-f", "deployment.yml", *args, cwd=self.dir)

    def container(self) -> dict[str, Any]:
        found = container_of(self.project, "deployment-api")
        assert found is not None, f"no container of deployment-api in {self.project}"
        return found

    def wait_healthy(self) -> dict[str, Any]:
        """The API's container once its own HEALTHCHECK says healthy."""
        deadline = time.monotonic() + HEALTHY_WITHIN
        while True:
            state = self.container()
            health = state["State"].get("Health", {})
            if health.get("Status") == "healthy":
                return state
            assert state["State"]["Running"], docker("logs", state["Id"], check=False)
            assert time.monotonic() < deadline, f"not healthy in {HEALTHY_WITHIN} s: {json.dumps(health)[-1500:]}"
            time.sleep(0.5)

    def post(self, path: str, document: dict[str, Any]) -> httpx.Response:
        body = json.dumps(document).encode()
        headers = {"Content-Type": "application/json", HEADER: sign(self.secret.encode(), body, path.strip("/"))}
        return httpx.post(f"{self.url}{path}", content=body, headers=headers, timeout=180)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {self.read_token}"}, timeout=10)


@pytest.fixture(scope="module")
def api_image(docker_engine: None) -> str:
    """The API's image, built as `make test` builds it before the integration tests (then this only checks)."""
    built = subprocess.run([REPO / "tests" / "rig" / "image.sh", IMAGE], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    return IMAGE


@pytest.fixture(scope="module")
def api(api_image: str, tmp_path_factory: pytest.TempPathFactory, registry: str) -> Iterator[ApiContainer]:
    """deployment.yml in a compose directory of its own beside a service `portal`, its inventory listing portal and
    the API's own service; the API up and healthy."""
    directory = tmp_path_factory.mktemp("homeserver")
    project = f"dt-api-{uuid.uuid4().hex[:8]}"
    (directory / "deployment.yml").write_text(
        (REPO / "deployment.yml").read_text().replace("name: deployment\n", f"name: {project}\n")
    )
    (directory / "docker-compose.yml").write_text(
        yaml.safe_dump({"name": f"{project}-apps", "services": {"portal": service(image("healthy", "v1"))}})
    )
    (directory / "inventory").mkdir()
    local = {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}
    services = {"portal": {"health_timeout": 30}, "deployment-api": {"compose_file": "deployment.yml", "pull": False}}
    inventory = {"all": {"hosts": {"localhost": {**local, "deploy_compose_dir": str(directory)}}}}
    inventory["all"]["hosts"]["localhost"]["deploy_services"] = services
    (directory / "inventory" / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (directory / "secrets").mkdir(mode=0o700)
    secret, read_token = secrets.token_hex(32), secrets.token_hex(32)
    (directory / "secrets" / "webhook_secret").write_text(secret + "\n")
    (directory / "secrets" / "deploy_read_token").write_text(read_token + "\n")
    port = free_port()
    environment = {
        "DEPLOY_API_IMAGE": api_image,
        "DEPLOY_API_CONTAINER": project,
        "DEPLOY_PORT": str(port),
        "DEPLOY_COMPOSE_DIR": str(directory),
    }
    (directory / ".env").write_text("".join(f"{name}={value}\n" for name, value in environment.items()))
    running = ApiContainer(project, directory, secret, read_token, f"http://127.0.0.1:{port}")
    docker("compose", "up", "-d", "--quiet-pull", cwd=directory)
    try:
        running.compose("up", "-d", "--no-build")
        running.wait_healthy()
        yield running
    finally:
        print(docker("logs", "--tail", "40", project, check=False))
        running.compose("down", "--volumes", "--timeout", "3")
        compose_down(f"{project}-apps")


def test_the_secrets_are_files_not_in_docker_inspect(api):
    state = api.container()
    inspected = docker("inspect", state["Id"])
    assert api.secret not in inspected and api.read_token not in inspected
    environment = dict(item.split("=", 1) for item in state["Config"]["Env"])
    assert environment["WEBHOOK_SECRET_FILE"] == "/run/secrets/webhook_secret"
    assert "WEBHOOK_SECRET" not in environment
    mounts = {mount["Destination"]: mount for mount in state["Mounts"]}
    assert {"/var/run/docker.sock", str(api.dir), "/run/secrets/webhook_secret", "/var/lib/deploy"} <= set(mounts)
    assert mounts["/var/lib/deploy"]["Type"] == "volume"


def test_health_reports_the_engine(api):
    deadline = time.monotonic() + 60
    while (body := httpx.get(f"{api.url}/health", timeout=5).json())["docker"] == "unknown":
        assert time.monotonic() < deadline, body
        time.sleep(0.5)
    assert body["status"] == "healthy" and body["docker"] == "reachable", body
    assert body["compose_dir"] == str(api.dir)


def test_a_deploy_from_the_container_runs_on_the_hosts_engine_and_a_crash_rolls_back(api):
    new, crash = image("healthy", "v2"), image("crash", "v1")

    deployed = api.post("/deploy", {"service": "portal", "image": new})

    assert deployed.status_code == 200, deployed.text
    assert container_of(f"{api.project}-apps", "portal")["Image"] == image_id(new)

    failed = api.post("/deploy", {"service": "portal", "image": crash})

    assert failed.status_code == 500, failed.text
    body = failed.json()
    assert body["error"].startswith("Container is restarting"), body["error"]
    assert body["steps"][-1]["step"] == "rollback" and body["steps"][-1]["rolled_back"] is True
    portal = container_of(f"{api.project}-apps", "portal")
    assert portal["Image"] == image_id(new) and portal["State"]["Health"]["Status"] == "healthy"

    logs = subprocess.run(["docker", "logs", api.project], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in (
        "[INFO] 🚀 Deployment Started: portal",
        f"[INFO] 🖼️  Image: {new}",
        "[INFO] ✅ Deployment Successful!",
        "[ERROR] ❌ Deployment Failed: Container is restarting",
        "[ERROR] ⏪ Rolled back to the previous image",
    ):
        assert line in logs.stdout, f"{line!r} not in docker logs:\n{logs.stdout[-3000:]}"


def test_the_api_refuses_to_deploy_itself_and_keeps_running(api):
    before = api.container()

    refused = api.post("/deploy", {"service": "deployment-api"})

    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert "deployment-api" in error and before["Id"][:12] in error, error
    assert "docker compose" in error, "the refusal says how to update the API"
    after = api.container()
    assert (after["Id"], after["State"]["StartedAt"]) == (before["Id"], before["State"]["StartedAt"])
    assert httpx.get(f"{api.url}/health", timeout=5).status_code == 200


def test_the_history_survives_a_recreated_container(api):
    deployed = api.post("/deploy", {"service": "portal", "image": image("healthy", "v3")})
    assert deployed.status_code == 200, deployed.text
    before = api.get("/deployments").json()["items"]
    old_id = api.container()["Id"]

    api.compose("up", "-d", "--no-build", "--force-recreate")
    state = api.wait_healthy()

    assert state["Id"] != old_id
    after = api.get("/deployments")
    assert after.status_code == 200, after.text
    assert [item["id"] for item in after.json()["items"]] == [item["id"] for item in before]
    assert [item["outcome"] for item in before][:1] == ["succeeded"]
