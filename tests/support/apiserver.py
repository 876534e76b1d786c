"""A real API server for the integration tests and the benchmarks: `python -m api` (one uvicorn worker) in a
subprocess, on its own port, inventory and state directory. Its working directory is its own, so no `.env` of the
repository is read."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from api.signature import HEADER, sign

REPO = Path(__file__).resolve().parents[2]
SECRET = "integration-secret-" + "0123456789abcdef" * 3
READ_TOKEN = "integration-read-token-" + "fedcba9876543210"
# The API imports in about a second; on two cores shared with the fault matrices' engines and playbooks, its imports
# alone have taken 30 s.
START_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ApiServer:
    """Started by the constructor, answering /health when it returns; `stop()` ends it.

    `settings` are more of the API's environment (DEPLOY_NOTIFY_URLS="..."); the engine watch is off unless they
    set DEPLOY_ENGINE_CHECK_INTERVAL. With `compose_dir`, the server counts
    as started once /health names that directory: this server, not another test's that took the same free port
    meanwhile.
    """

    def __init__(
        self,
        root: Path,
        inventory: Path,
        secret: str = SECRET,
        settings: dict[str, str] | None = None,
        *,
        state_dir: Path | None = None,
        compose_dir: Path | None = None,
    ):
        self.root = root
        self.secret = secret
        self.state_dir = state_dir or root / "state"
        self.log_file = root / "api.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {
            **os.environ,
            # Without the virtual environment on the PATH: the API finds ansible-playbook beside its own Python.
            "PATH": os.pathsep.join(
                path for path in os.environ["PATH"].split(os.pathsep) if not path.startswith(sys.prefix)
            ),
            "WEBHOOK_SECRET": secret,
            "DEPLOY_READ_TOKEN": READ_TOKEN,
            "DEPLOY_INVENTORY": str(inventory),
            "DEPLOY_STATE_DIR": str(self.state_dir),
            "DEPLOY_PORT": str(self.port),
            "PYTHONPATH": str(REPO),
            # No engine watch unless a test asks for one (DEPLOY_ENGINE_CHECK_INTERVAL in `settings`): its checks are
            # runs of their own, every 30 s by default.
            "DEPLOY_ENGINE_CHECK_INTERVAL": "0",
            **(settings or {}),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "api"],
            cwd=root,
            env=environment,
            stdout=self.log_file.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.answers(compose_dir):
            if self.process.poll() is not None:
                raise RuntimeError(f"the API exited: {self.log_file.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the API did not answer /health in {START_TIMEOUT} s")
            time.sleep(0.1)

    def answers(self, compose_dir: Path | None) -> bool:
        try:
            health = httpx.get(f"{self.url}/health", timeout=1)
        except httpx.TransportError:
            return False
        if health.status_code != 200:
            return False
        return compose_dir is None or str(compose_dir.resolve()) in str(health.json()["compose_dir"])

    def signed(self, document: dict[str, Any] | bytes, purpose: str = "deploy") -> tuple[bytes, dict[str, str]]:
        """The body of POST /deploy (`deploy`) or POST /rollback (`rollback`) and its headers, signed for it."""
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        return body, {"Content-Type": "application/json", HEADER: sign(self.secret.encode(), body, purpose)}

    def post(
        self,
        body: dict[str, Any] | bytes,
        *,
        signature: str | None = "sign",
        timeout: float = 180,
        path: str = "/deploy",
    ) -> httpx.Response:
        """POST `body` to `path`, signed for its action (/deploy or /rollback), with the given `signature` header, or
        with none (None)."""
        raw, headers = self.signed(body, path.strip("/").split("?")[0])
        if signature != "sign":
            del headers[HEADER]
            if signature is not None:
                headers[HEADER] = signature
        return httpx.post(f"{self.url}{path}", content=raw, headers=headers, timeout=timeout)

    def get(self, path: str, *, token: str | None = READ_TOKEN, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"{self.url}{path}", headers=headers, params=params, timeout=10)

    def metric(self, name: str, **labels: str) -> float | None:
        """A sample of /metrics by its name and labels; None when there is none."""
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                    return float(sample.value)
        return None

    def record(self, deployment_id: str) -> dict[str, Any]:
        response = self.get(f"/deployments/{deployment_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def follow(
        self, deployment_id: str, *, until=lambda record: record["outcome"] != "running", timeout: float = 180
    ) -> list[dict[str, Any]]:
        """Poll a deployment's record until `until` holds; every record seen on the way, the last one last."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            seen.append(self.record(deployment_id))
            if until(seen[-1]):
                return seen
            assert time.monotonic() < deadline, seen[-1]
            time.sleep(0.1)

    def cpu_seconds(self, children: bool = False) -> float:
        """User and system CPU time of the API's process so far (Linux /proc); with `children`, of the processes it
        started and waited for instead (ansible-playbook, its modules, the docker CLI they ran)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        first = 13 if children else 11
        return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def serving(tmp_path: Path) -> Iterator:
    """Body of an `api_server` fixture: a factory of servers on a test's compose project, every one stopped
    afterwards."""
    servers: list[ApiServer] = []

    def start(project, state_dir: Path | None = None, **settings: str) -> ApiServer:
        """A server on `project` (tests/integration/conftest.py's ComposeProject); keyword arguments are more
        settings (DEPLOY_NOTIFY_URLS="...")."""
        root = tmp_path / f"api{len(servers)}"
        root.mkdir()
        servers.append(
            ApiServer(root, project.inventory, settings=settings, state_dir=state_dir, compose_dir=project.dir)
        )
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
