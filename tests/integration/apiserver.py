"""A real API server for integration tests: `python -m api` in a subprocess, on its own port and state directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from conftest import REPO, free_port

from api.signature import sign

SECRET = "integration-secret-" + "0123456789abcdef" * 3
READ_TOKEN = "integration-read-token-" + "fedcba9876543210"


class ApiServer:
    def __init__(self, project, root: Path, state_dir: Path | None = None, settings: dict[str, str] | None = None):
        self.project = project
        self.state_dir = state_dir or root / "state"
        self.log_file = root / "api.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {
            **os.environ,
            # Without the virtual environment on the PATH: the API finds ansible-playbook beside its Python.
            "PATH": os.pathsep.join(
                path for path in os.environ["PATH"].split(os.pathsep) if not path.startswith(sys.prefix)
            ),
            "WEBHOOK_SECRET": SECRET,
            "DEPLOY_READ_TOKEN": READ_TOKEN,
            "DEPLOY_INVENTORY": str(project.inventory),
            "DEPLOY_STATE_DIR": str(self.state_dir),
            "DEPLOY_PORT": str(self.port),
            "PYTHONPATH": str(REPO),
            **(settings or {}),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "api"],
            cwd=root,
            env=environment,
            stdout=self.log_file.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"{self.url}/health", timeout=1)
                # Its own compose directory: not another test's server that took the same free port meanwhile.
                if health.status_code == 200 and str(project.dir.resolve()) in str(health.json()["compose_dir"]):
                    return
            except httpx.TransportError:
                pass
            assert self.process.poll() is None, self.log_file.read_text()
            assert time.monotonic() < deadline, "the API did not answer /health in 30 s"
            time.sleep(0.1)

    def post(
        self, body: dict | bytes, *, signature: str | None = "sign", timeout: float = 180, path: str = "/deploy"
    ) -> httpx.Response:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if signature == "sign":
            # Signed for the action of the path: /deploy or /rollback.
            signature = sign(SECRET.encode(), raw, path.strip("/").split("?")[0])
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
        return httpx.post(f"{self.url}{path}", content=raw, headers=headers, timeout=timeout)

    def get(self, path: str, *, token: str | None = READ_TOKEN, **params) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"{self.url}{path}", headers=headers, params=params, timeout=10)

    def record(self, deployment_id: str) -> dict:
        response = self.get(f"/deployments/{deployment_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def follow(self, deployment_id: str, *, until=lambda record: record["outcome"] != "running", timeout: float = 180):
        """Poll a deployment's record until `until` holds; every record seen on the way, the last one last."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            seen.append(self.record(deployment_id))
            if until(seen[-1]):
                return seen
            assert time.monotonic() < deadline, seen[-1]
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(40)


def serving(tmp_path: Path) -> Iterator:
    """Body of an `api_server` fixture: a factory of servers, every one stopped afterwards."""
    servers: list[ApiServer] = []

    def start(project, state_dir: Path | None = None, **settings: str) -> ApiServer:
        """A server on `project`; keyword arguments are more settings (DEPLOY_NOTIFY_URLS="...")."""
        root = tmp_path / f"api{len(servers)}"
        root.mkdir()
        servers.append(ApiServer(project, root, state_dir, settings))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
