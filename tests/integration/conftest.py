"""The integration rig: a compose project of its own per test, the real playbook run by the API's own runner."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from xdist.scheduler import LoadScopeScheduling

import api.runner
from tests.support.dockercli import REGISTRY, compose_down, container_of, docker, image_id

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "playbooks" / "deploy.yml"
ROLLBACK_PLAYBOOK = REPO / "playbooks" / "rollback.yml"
# The API's defaults: DEPLOY_TIMEOUT; every run directory of a project is kept, to be read after its run.
RUN_TIMEOUT = 900
KEEP_RUNS = 1000
# A history tag: `<stamp>-<short image id>`, or the older `<short image id>` alone.
HISTORY_TAG = re.compile(r"(?:(?P<stamp>[0-9]{8}T[0-9]{12})-)?(?P<short_id>[0-9a-f]{12})")


# The modules whose tests use the rig's extra engines h1-h3 and its sshd: some stop an engine or sshd, so they all run
# in one worker, one after another, while the other worker runs the rest (pytest -n 2).
RIG_HOSTS_MODULES = (
    "test_environment_secrets.py",
    "test_faults.py",
    "test_fleet.py",
    "test_reconcile.py",
    "test_rig_faults.py",
)
# Modules whose tests read what one module-scoped fixture ran (cases side by side, as test_faults.py's matrix): each
# runs in one worker, or every worker would run the fixture again.
ONE_RUN_MODULES = (
    "test_blue_green_crash.py",
    "test_container.py",
    "test_zero_downtime.py",
)


class RigHostsScheduling(LoadScopeScheduling):
    """Every test a scope of its own, as `--dist load` schedules them, except the RIG_HOSTS_MODULES' (one scope) and
    each of the ONE_RUN_MODULES (a scope each).

    (pytest-xdist's `xdist_group` marks do not group under pytest 9.2: pytest-dev/pytest-xdist#1386.)
    """

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
        if module in RIG_HOSTS_MODULES:
            return "rig_hosts"
        return module if module in ONE_RUN_MODULES else nodeid


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> RigHostsScheduling:
    return RigHostsScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A module that reaches the rig's extra hosts (it imports tests.support.hosts) must be in RIG_HOSTS_MODULES.

    Their tests come first: together they are the longest scope (one worker runs them one after another), so a worker
    starts them at once while the other shares the rest, instead of starting them late and waiting for them at the end.
    (The ONE_RUN_MODULES keep their place, test_zero_downtime.py among the last: it counts failed requests through a
    proxy, and run beside the fault matrices, which load both cores four times over, it once saw Caddy answer two
    requests 502 after its 2 s of retries.)
    """
    for item in items:
        module = getattr(item, "module", None)
        uses_hosts = module is not None and any(
            getattr(value, "__module__", "") == "tests.support.hosts" for value in vars(module).values()
        )
        if uses_hosts and item.path.name not in RIG_HOSTS_MODULES:
            raise pytest.UsageError(f"{item.path.name} uses the rig's hosts h1-h3: add it to RIG_HOSTS_MODULES")
    items.sort(key=lambda item: item.path.name not in RIG_HOSTS_MODULES)


def service(image_ref: str, **extra: Any) -> dict[str, Any]:
    """A compose service as a home server runs one. init: busybox as PID 1 ignores SIGTERM."""
    return {"image": image_ref, "init": True, "restart": "unless-stopped", **extra}


def fingerprint(container: dict[str, Any]) -> tuple[str, str, str]:
    """What changes when a container is touched: its ID, its start time, its image ID."""
    return container["Id"], container["State"]["StartedAt"], container["Image"]


def image_exists(reference: str) -> bool:
    return bool(docker("image", "inspect", "--format", "{{.Id}}", reference, check=False))


@dataclass(frozen=True)
class HistoryTag:
    """One tag of a service's history: deploy-history/<project>/<service>:<stamp>-<short id>."""

    ref: str
    stamp: str  # "" for the older `<short id>` form
    image_id: str


@dataclass
class Deploy:
    """One run of the deploy playbook: its exit code, its published result per host, its stats."""

    rc: int | None
    status: str
    results: dict[str, dict[str, Any]]
    changed: int
    stdout: str
    # The steps the runner's progress announced, in order (api/contract.py, StepProgress).
    announced: list[str] = field(default_factory=list)

    @property
    def result(self) -> dict[str, Any]:
        (only,) = self.results.values()
        return only

    @property
    def steps(self) -> list[str]:
        return [entry["step"] for entry in self.result["steps"]]


class ComposeProject:
    """A compose project in a temporary directory with an inventory that allows its services."""

    def __init__(self, root: Path, services: dict[str, dict[str, Any]], settings: dict[str, dict[str, Any]]):
        self.root = root
        self.name = f"dt-{uuid.uuid4().hex[:10]}"
        self.dir = root / "project"
        self.dir.mkdir()
        self.compose_file = self.dir / "docker-compose.yml"
        self.pin_file = self.dir / "docker-compose.deploy.yml"
        self.compose_file.write_text(yaml.safe_dump({"name": self.name, "services": services}, sort_keys=False))
        self.inventory = root / "inventory.yml"
        self.state_dir = root / "state"
        self.settings = settings
        self.write_inventory({"localhost": {"deploy_compose_dir": str(self.dir), "deploy_services": settings}})

    def write_inventory(self, hosts: dict[str, dict[str, Any]]) -> None:
        local = {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}
        document = {"all": {"hosts": {host: {**local, **host_vars} for host, host_vars in hosts.items()}}}
        self.inventory.write_text(yaml.safe_dump(document, sort_keys=False))

    def compose(self, *args: str, files: tuple[str, ...] = ("docker-compose.yml",)) -> str:
        file_args = [argument for name in files for argument in ("-f", name)]
        return docker("compose", *file_args, *args, cwd=self.dir)

    def up(self, *services: str) -> None:
        self.compose("up", "-d", "--quiet-pull", *services)

    def container(self, service: str, project: str | None = None) -> dict[str, Any] | None:
        return container_of(project or self.name, service)

    def wait_healthy(self, service: str, timeout: float = 30) -> None:
        self.compose("up", "-d", "--wait", "--wait-timeout", str(int(timeout)), service)

    def history(self, service: str) -> list[HistoryTag]:
        """The service's history tags, newest stamp first; each tag's name is checked against the format."""
        repository = f"deploy-history/{self.name}/{service}"
        listing = docker("images", "--no-trunc", "--format", "{{.Tag}} {{.ID}}", repository)
        tags = []
        for line in listing.splitlines():
            tag, full_id = line.split()
            match = HISTORY_TAG.fullmatch(tag)
            assert match and match["short_id"] == full_id[7:19], f"{repository}:{tag} is not a history tag of {full_id}"
            tags.append(HistoryTag(f"{repository}:{tag}", match["stamp"] or "", full_id))
        return sorted(tags, key=lambda entry: entry.stamp, reverse=True)

    def deploy(
        self, service: str, image: str | None = None, *, check: bool = False, limit: str | None = None
    ) -> Deploy:
        """playbooks/deploy.yml through the API's own runner."""
        return self.run_playbook(PLAYBOOK, service, image, check=check, limit=limit)

    def rollback(
        self, service: str, image: str | None = None, *, check: bool = False, limit: str | None = None
    ) -> Deploy:
        """playbooks/rollback.yml through the API's own runner."""
        return self.run_playbook(ROLLBACK_PLAYBOOK, service, image, check=check, limit=limit)

    def run_playbook(
        self, playbook: Path, service: str, image: str | None, *, check: bool, limit: str | None
    ) -> Deploy:
        """`playbook` through api.runner.run_playbook, the function the API runs it with. Its run directory is kept
        (state/runs/<run id>): the whole output and the stats are read from the artifacts ansible-runner wrote there."""
        extravars: dict[str, Any] = {"service": service}
        if image is not None:
            extravars["image"] = image
        run_id = f"{playbook.stem}-{uuid.uuid4().hex[:8]}"
        announced: list[str] = []
        run = api.runner.run_playbook(
            run_id=run_id,
            playbook=playbook,
            extravars=extravars,
            inventory=self.inventory,
            state_dir=self.state_dir,
            timeout=RUN_TIMEOUT,
            keep_runs=KEEP_RUNS,
            cancel=threading.Event(),
            limit=(limit,) if limit else None,
            action="rollback" if playbook == ROLLBACK_PLAYBOOK else "deploy",
            strategy=self.settings.get(service, {}).get("strategy", "recreate"),
            check=check,
            on_step=lambda step, _words: announced.append(step),
        )
        artifacts = self.state_dir / "runs" / run_id / "artifacts" / run_id
        events = [json.loads(path.read_text()) for path in (artifacts / "job_events").glob("*.json")]
        (stats,) = [event["event_data"] for event in events if event.get("event") == "playbook_on_stats"]
        return Deploy(
            rc=run.rc,
            status=run.status,
            results=run.results,
            changed=sum(stats.get("changed", {}).values()),
            stdout=(artifacts / "stdout").read_text(),
            announced=announced,
        )

    def playbook_cli(self, *args: str, playbook: Path = PLAYBOOK) -> subprocess.CompletedProcess[str]:
        """ansible-playbook as an operator runs it by hand."""
        return subprocess.run(
            ["ansible-playbook", "-i", str(self.inventory), str(playbook), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"},
        )

    def tear_down(self) -> None:
        compose_down(self.name)


@pytest.fixture
def compose_project(tmp_path: Path, docker_engine: None) -> Iterator[Any]:
    """Factory: compose_project(services, settings) -> ComposeProject; every project is torn down after the test."""
    projects: list[ComposeProject] = []

    def make(services: dict[str, dict[str, Any]], settings: dict[str, dict[str, Any]] | None = None) -> ComposeProject:
        root = tmp_path / f"p{len(projects)}"
        root.mkdir()
        project = ComposeProject(root, services, settings if settings is not None else {name: {} for name in services})
        projects.append(project)
        return project

    yield make
    for project in projects:
        project.tear_down()


@pytest.fixture(scope="session")
def registry(docker_engine: None) -> str:
    """The loopback registry with the test images (tests/rig/up.sh)."""
    try:
        with urllib.request.urlopen(f"http://{REGISTRY}/v2/deploytest/healthy/tags/list", timeout=5) as answer:
            tags = json.load(answer)["tags"]
    except OSError as error:
        pytest.fail(f"no test registry at {REGISTRY} (run tests/rig/up.sh): {error}", pytrace=False)
    assert "v1" in tags, "test images missing from the registry (run tests/rig/up.sh)"
    return REGISTRY


def push_as(source: str, target: str) -> str:
    """Tag a local image as `target`, push it, and return its image ID."""
    docker("tag", source, target)
    docker("push", "-q", target)
    return image_id(target)


def build_unique(tag: str) -> str:
    """Build a healthy image whose ID no other test shares, push it, and return its ID."""
    dockerfile = (
        "FROM deploytest/base:1\n"
        f"RUN echo {uuid.uuid4().hex} > /www/version\n"
        "HEALTHCHECK --interval=1s --timeout=2s --retries=3 CMD wget -q -O /dev/null http://127.0.0.1:8080/version\n"
        'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n'
    )
    completed = subprocess.run(
        ["docker", "build", "-q", "--network", "host", "-t", tag, "-"],
        input=dockerfile,
        capture_output=True,
        text=True,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    assert completed.returncode == 0, completed.stderr
    docker("push", "-q", tag)
    return image_id(tag)
