"""Helpers the benchmarks share: the docker CLI, a real API server (`python -m api`), signing, medians, results."""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from api import signature  # noqa: E402

REGISTRY = os.environ.get("DEPLOY_TEST_REGISTRY", "127.0.0.1:5099")
RESULTS = REPO / "bench" / "results"


def image(version: str, kind: str = "healthy") -> str:
    """A test image of the rig's registry (tests/rig/images): healthy about one second after start."""
    return f"{REGISTRY}/deploytest/{kind}:{version}"


def docker(*args: str, check: bool = True) -> str:
    completed = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and completed.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {completed.stderr.strip()}")
    return completed.stdout.strip()


def image_id(reference: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", reference)


def container_of(project: str, service: str) -> dict[str, Any] | None:
    """The one container of a compose service, as `docker inspect` shows it; None when there is none."""
    ids = docker(
        "ps",
        "-aq",
        "--filter",
        f"label=com.docker.compose.project={project}",
        "--filter",
        f"label=com.docker.compose.service={service}",
    ).split()
    if not ids:
        return None
    if len(ids) != 1:
        raise RuntimeError(f"{project}/{service} has {len(ids)} containers")
    return json.loads(docker("inspect", ids[0]))[0]


def compose_down(project: str) -> None:
    """Remove a compose project's containers and network, and the history tags the deploy playbook kept for it."""
    subprocess.run(["docker", "compose", "-p", project, "down", "--timeout", "1"], capture_output=True)
    for tag in docker("images", "--format", "{{.Repository}}:{{.Tag}}", f"deploy-history/{project}/*").split():
        docker("rmi", tag, check=False)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sign(secret: str, payload: bytes, purpose: str = "deploy") -> str:
    """X-Hub-Signature-256 of a body for POST /deploy or /rollback (`deploy`, `rollback`), or of a deployment id for
    GET /deployments/{id} (`read`): api.signature's scheme."""
    return signature.sign(secret.encode(), payload, purpose)


class ApiServer:
    """`python -m api` (one uvicorn worker) in a subprocess, on its own port, inventory and state directory,
    as tests/integration/apiserver.py starts one. Its working directory is `root`, so no `.env` of the
    repository is read."""

    def __init__(self, root: Path, inventory: Path, secret: str, settings: dict[str, str] | None = None):
        self.root = root
        self.secret = secret
        self.state_dir = root / "state"
        self.log_file = root / "api.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {
            **os.environ,
            # The API finds ansible-playbook beside its own Python, not on the PATH.
            "PATH": os.pathsep.join(
                path for path in os.environ["PATH"].split(os.pathsep) if not path.startswith(sys.prefix)
            ),
            "WEBHOOK_SECRET": secret,
            "DEPLOY_INVENTORY": str(inventory),
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
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"the API exited: {self.log_file.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the API did not answer /health in 30 s")
            time.sleep(0.1)

    def signed(self, document: dict[str, Any], purpose: str = "deploy") -> tuple[bytes, dict[str, str]]:
        """The body of POST /deploy (`deploy`) or POST /rollback (`rollback`) and its headers, signed for it."""
        body = json.dumps(document).encode()
        return body, {"Content-Type": "application/json", signature.HEADER: sign(self.secret, body, purpose)}

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


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rounded(values: Sequence[float], digits: int = 3) -> list[float]:
    return [round(value, digits) for value in values]


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / name
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


class ForeignLoad:
    """CPU time of the processes that are neither this program's (itself and its descendants) nor the container
    engine's, sampled twice a second: tests run by someone else, say. A figure measured meanwhile shows it."""

    ENGINE = re.compile(r"dockerd|containerd|runc|docker-proxy|docker-init|docker-registry")

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.tick = os.sysconf("SC_CLK_TCK")
        self.baseline: dict[tuple[int, int], float] = {}  # (pid, start time) -> CPU seconds when first seen
        self.latest: dict[tuple[int, int], tuple[str, float]] = {}
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.sample(first=True)
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def sample(self, first: bool = False) -> None:
        processes = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            name = text[text.index("(") + 1 : text.rindex(")")]
            fields = text[text.rindex(")") + 2 :].split()
            # ppid, utime + stime, start time; kernel threads (children of kthreadd, pid 2) are left out.
            processes[int(stat.parent.name)] = (
                name,
                int(fields[1]),
                int(fields[11]) + int(fields[12]),
                int(fields[19]),
            )
        ours = {os.getpid()}
        grew = True
        while grew:
            found = {pid for pid, (_, ppid, _, _) in processes.items() if ppid in ours} - ours
            grew = bool(found)
            ours |= found
        with self.lock:
            for pid, (name, ppid, ticks, started) in processes.items():
                if pid in ours or ppid == 2 or pid == 2 or self.ENGINE.search(name):
                    continue
                key = (pid, started)
                if key not in self.baseline:
                    self.baseline[key] = ticks / self.tick if first else 0.0
                self.latest[key] = (name, ticks / self.tick)

    def loop(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.sample()

    def seconds(self) -> float:
        with self.lock:
            return sum(cpu - self.baseline[key] for key, (_, cpu) in self.latest.items())

    def busiest(self, count: int = 3) -> list[tuple[str, float]]:
        by_name: dict[str, float] = {}
        with self.lock:
            for key, (name, cpu) in self.latest.items():
                by_name[name] = by_name.get(name, 0.0) + cpu - self.baseline[key]
        ranked = sorted(by_name.items(), key=lambda item: -item[1])[:count]
        return [(name, round(cpu, 1)) for name, cpu in ranked if cpu >= 0.05]

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join()
