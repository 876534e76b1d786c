"""The fault matrix: a fault injected at each phase of a deploy where it can happen, on the rig's extra engines h1-h3
(never the rig's own engine), and the engine inspected afterwards.

Every case ends with the service's one container running the image its record claims (the new one after a success,
the captured one after a rollback, the untouched one after a failure before anything changed), healthy, and a record
whose outcome and steps say what happened. The cases of one engine run one after another, the three engines side by
side: the matrix runs once (the `matrix` fixture) and each cell is a test of its own. docs/engine.md shows the table.

Faults the API itself must survive (a rollback past its bound, ansible-playbook killed, an SSH host lost) are in
test_reconcile.py.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import ComposeProject, Deploy, build_unique

from tests.support.dockercli import compose_down, container_of, docker, image
from tests.support.faultproxy import RegistryProxy
from tests.support.hosts import fill_data_root, rig_hosts, start_engine, stop_engine

SERVICE = "web"
# A service that takes a few seconds before it answers: its HEALTHCHECK fails during start_period without counting.
SLOW_START = {
    "command": ["sh", "-c", "sleep 6; exec httpd -f -p 8080 -h /www"],
    "healthcheck": {
        "test": ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/version"],
        "interval": "1s",
        "timeout": "2s",
        "retries": 2,
        "start_period": "20s",
    },
}
# A service whose HEALTHCHECK fails on the v2 images, five times in a row before it counts (v1 passes).
FAILS_ON_V2 = {
    "healthcheck": {
        "test": ["CMD-SHELL", "wget -q -O- http://127.0.0.1:8080/version | grep -qv v2"],
        "interval": "1s",
        "timeout": "2s",
        "retries": 5,
    }
}
FAULT_WAIT = 60  # the longest a case waits for the phase its fault is injected in


class EngineProject(ComposeProject):
    """A compose project on one of the rig's extra engines, deployed by a local Ansible whose Docker is that engine."""

    made: ClassVar[list[EngineProject]] = []  # every project of the module, taken down after the matrix

    def __init__(self, root: Path, engine: str, web: dict[str, Any], engine_wait: int = 60):
        super().__init__(root, {SERVICE: web}, {SERVICE: {"health_timeout": 20}})
        EngineProject.made.append(self)
        self.engine = engine
        self.docker_host = rig_hosts().engine(engine)
        self.write_inventory(
            {
                "localhost": {
                    "deploy_compose_dir": str(self.dir),
                    "deploy_services": {SERVICE: {"health_timeout": 20}},
                    "docker_host": self.docker_host,
                    "deploy_engine_wait": engine_wait,
                    "deploy_health_settle": 2,
                }
            }
        )

    def compose(self, *args: str, files: tuple[str, ...] = ("docker-compose.yml",)) -> str:
        file_args = [argument for name in files for argument in ("-f", name)]
        return docker("compose", *file_args, *args, cwd=self.dir, host=self.docker_host)

    def container(self, service: str = SERVICE, project: str | None = None) -> dict[str, Any] | None:
        return container_of(project or self.name, service, host=self.docker_host)

    def image_id(self, reference: str) -> str:
        return docker("image", "inspect", "--format", "{{.Id}}", reference, host=self.docker_host)

    def tear_down(self) -> None:
        compose_down(self.name, host=self.docker_host)


@dataclass
class Outcome:
    """What a case saw: the deploy's run, the container before it and after it, and how long the service took to
    converge after the fault (from the fault to the end of the run)."""

    deploy: Deploy
    before: dict[str, Any]
    after: dict[str, Any] | None
    images: dict[str, str]
    converged: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def record(self) -> dict[str, Any]:
        return self.deploy.result

    def step(self, name: str) -> dict[str, Any]:
        found = [step for step in self.record["steps"] if step["step"] == name]
        assert found, f"no {name} step in {[step['step'] for step in self.record['steps']]}"
        return found[-1]


def poll(what: str, predicate: Callable[[], bool], timeout: float = FAULT_WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.1)


def running_v1(root: Path, engine: str, pulled: str = "", **web: Any) -> tuple[EngineProject, dict[str, Any]]:
    """A project whose service runs healthy:v1 on `engine`, healthy, with the image `pulled` on the engine already
    (so that the fault strikes the phase it is meant for, not a pull): the project and its container."""
    project = EngineProject(root, engine, {"image": image("healthy", "v1"), "init": True, **web})
    project.up(SERVICE)
    project.wait_healthy(SERVICE)
    if pulled:
        docker("pull", "-q", pulled, host=project.docker_host)
    before = project.container()
    assert before is not None
    return project, before


def restart_engine(engine: str, between: Callable[[], None] = lambda: None) -> None:
    """A daemon restart, as `systemctl restart docker` does it; `between` runs while the engine is down."""
    stop_engine(engine)
    between()
    start_engine(engine)


def run_with_fault(project: EngineProject, image_ref: str, fault: Callable[[], None]) -> Outcome:
    """Deploy `image_ref` while `fault` runs in a thread (it waits for its phase, then strikes), and inspect."""
    before = project.container()
    assert before is not None and before["State"]["Running"]
    struck: dict[str, float] = {}
    errors: list[str] = []

    def inject() -> None:
        try:
            fault()
            struck["at"] = time.monotonic()
        except BaseException:  # the test reads it; the thread must not die silently
            errors.append(traceback.format_exc())

    injector = threading.Thread(target=inject, name=f"fault-{project.engine}")
    injector.start()
    deploy = project.deploy(SERVICE, image_ref)
    ended = time.monotonic()
    injector.join(FAULT_WAIT * 2)
    assert not errors, errors[0]
    assert "at" in struck, "the fault never struck"
    return Outcome(
        deploy=deploy,
        before=before,
        after=project.container(),
        images={"old": before["Image"]},
        converged=round(ended - struck["at"], 1),
    )


def containers(project: EngineProject) -> list[dict[str, Any]]:
    """Every container of the service, as `docker inspect` shows it: while compose recreates it there are two."""
    ids = docker(
        "ps", "-aq", "--filter", f"label=com.docker.compose.project={project.name}", host=project.docker_host
    ).split()
    return json.loads(docker("inspect", *ids, host=project.docker_host, check=False) or "[]") if ids else []


def started_ago(container: dict[str, Any]) -> float:
    """Seconds since the container started, by the engine's clock (this machine's)."""
    started = datetime.fromisoformat(container["State"]["StartedAt"][:26].rstrip("Z") + "+00:00")
    return (datetime.now(UTC) - started).total_seconds()


def new_container(
    project: EngineProject, before: dict[str, Any], image_id: str, health: str | None = None
) -> Callable[[], bool]:
    """Whether a container of the service other than `before` runs `image_id` (with that health status)."""

    def seen() -> bool:
        return any(
            container["Id"] != before["Id"]
            and container["Image"] == image_id
            and (health is None or (container["State"].get("Health") or {}).get("Status") == health)
            for container in containers(project)
        )

    return seen


# --- the cases: each makes its project, strikes, and returns what it saw -------------------------------------------


def daemon_restart_during_pull(root: Path, engine: str) -> Outcome:
    with RegistryProxy() as proxy:
        project, _ = running_v1(root, engine)
        target = f"{proxy.address}/deploytest/healthy:v2"
        proxy.hold()

        def fault() -> None:
            assert proxy.holding.wait(FAULT_WAIT), "the pull never reached the registry"

            def let_pulls_through() -> None:
                proxy.forward()
                proxy.release()

            restart_engine(engine, between=let_pulls_through)

        outcome = run_with_fault(project, target, fault)
        outcome.images["new"] = project.image_id(target)
        return outcome


def daemon_restart_after_compose_up(root: Path, engine: str) -> Outcome:
    target = image("healthy", "v2")
    project, before = running_v1(root, engine, target, **SLOW_START)

    def fault() -> None:
        poll("the new container", new_container(project, before, project.image_id(target)))
        restart_engine(engine)

    outcome = run_with_fault(project, target, fault)
    outcome.images["new"] = project.image_id(target)
    return outcome


def daemon_restart_during_health_check(
    root: Path, engine: str, restart: str = "no", checked: dict[str, Any] = SLOW_START
) -> Outcome:
    """The engine restarts while the new container's health check runs (its image answers only after 6 s, or its
    check fails on v2 after five tries: `checked`)."""
    target = image("healthy", "v2")
    project, before = running_v1(root, engine, target, restart=restart, **checked)

    def in_the_check() -> bool:
        # Starting for a second and a half: compose up has returned, the health check polls it.
        return new_container(project, before, project.image_id(target), "starting")() and any(
            container["Id"] != before["Id"] and started_ago(container) >= 1.5 for container in containers(project)
        )

    def fault() -> None:
        poll("the new container's health check", in_the_check)
        restart_engine(engine)

    outcome = run_with_fault(project, target, fault)
    outcome.images["new"] = project.image_id(target)
    return outcome


def daemon_restart_during_rollback(root: Path, engine: str) -> Outcome:
    target = image("crash", "v2")
    project, before = running_v1(root, engine, target)

    def fault() -> None:
        # The rollback's container: the captured image again, in a container other than the one captured.
        poll("the rollback's container", new_container(project, before, before["Image"]))
        restart_engine(engine)

    outcome = run_with_fault(project, target, fault)
    outcome.images["new"] = project.image_id(target)
    return outcome


def disk_full_during_pull(root: Path, engine: str) -> Outcome:
    project, _ = running_v1(root, engine)
    tag = f"disk-{uuid.uuid4().hex[:8]}"
    build_unique(f"{image('healthy', 'v1').rsplit(':', 1)[0]}:{tag}")
    with RegistryProxy() as proxy, contextlib.ExitStack() as filled:
        proxy.hold()

        def fault() -> None:
            # The pull has started: the disk fills now, after the capture, before the image's layers are written.
            assert proxy.holding.wait(FAULT_WAIT), "the pull never reached the registry"
            filled.enter_context(fill_data_root(engine))
            proxy.release()

        return run_with_fault(project, f"{proxy.address}/deploytest/healthy:{tag}", fault)


def registry_down_during_pull(root: Path, engine: str) -> Outcome:
    with RegistryProxy() as proxy:
        target = f"{proxy.address}/deploytest/healthy:v2"
        proxy.close()
        project, _ = running_v1(root, engine)
        return run_with_fault(project, target, lambda: None)


def missing_manifest_during_pull(root: Path, engine: str) -> Outcome:
    with RegistryProxy() as proxy:
        target = f"{proxy.address}/deploytest/healthy:v2"
        proxy.missing()
        project, _ = running_v1(root, engine)
        return run_with_fault(project, target, lambda: None)


CASES: dict[str, tuple[str, Callable[[Path, str], Outcome]]] = {
    "restart_during_pull": ("h1", daemon_restart_during_pull),
    "restart_after_compose_up": ("h1", daemon_restart_after_compose_up),
    "registry_down": ("h1", registry_down_during_pull),
    "restart_during_health_check": ("h2", daemon_restart_during_health_check),
    "restart_during_health_check_with_restart_policy": (
        "h2",
        lambda root, engine: daemon_restart_during_health_check(root, engine, restart="unless-stopped"),
    ),
    "missing_manifest": ("h2", missing_manifest_during_pull),
    "restart_during_rollback": ("h3", daemon_restart_during_rollback),
    "restart_during_a_failing_health_check_with_restart_policy": (
        "h3",
        lambda root, engine: daemon_restart_during_health_check(
            root, engine, restart="unless-stopped", checked=FAILS_ON_V2
        ),
    ),
    "disk_full_during_pull": ("h3", disk_full_during_pull),
}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory, registry: str) -> Iterator[dict[str, Outcome | str]]:
    """Every case, each engine's cases in order, the engines side by side; a case that raised is its traceback."""
    root = tmp_path_factory.mktemp("faults")
    outcomes: dict[str, Outcome | str] = {}

    def run_engine(engine: str) -> None:
        for name, (where, case) in CASES.items():
            if where != engine:
                continue
            case_root = root / name
            case_root.mkdir()
            began = time.monotonic()
            try:
                outcomes[name] = case(case_root, engine)
            except BaseException:
                outcomes[name] = traceback.format_exc()
            outcome = outcomes[name]
            if isinstance(outcome, Outcome):
                # The figures of docs/engine.md's fault matrix, seen with `pytest -s`.
                waits = {step["step"]: step["engine_wait"] for step in outcome.record["steps"] if "engine_wait" in step}
                print(
                    f"fault case {name} on {engine}: {outcome.record['outcome']}, converged {outcome.converged} s "
                    f"after the fault, engine waits {waits}, case {time.monotonic() - began:.1f} s; "
                    f"{outcome.record['error']}"
                )

    engines = sorted({engine for engine, _ in CASES.values()})
    with ThreadPoolExecutor(len(engines)) as pool:
        list(pool.map(run_engine, engines))
    yield outcomes
    for engine in engines:
        start_engine(engine)  # a case that failed half-way must not leave its engine down
    for project in EngineProject.made:
        project.tear_down()


def seen(matrix: dict[str, Outcome | str], name: str) -> Outcome:
    outcome = matrix[name]
    if isinstance(outcome, str):
        pytest.fail(f"case {name} failed:\n{outcome}", pytrace=False)
    return outcome


def assert_truth(outcome: Outcome) -> None:
    """The engine is in the state the record claims: one container, running and healthy, on the image the record
    says runs now (the new one after a success, the captured one otherwise)."""
    record, after = outcome.record, outcome.after
    assert after is not None, f"no container of {SERVICE} is left: {record['error']}"
    assert after["State"]["Running"], f"the service is {after['State']['Status']}: {record['error']}"
    health = (after["State"].get("Health") or {}).get("Status")
    assert health in (None, "healthy"), f"the service is {health}: {record['error']}"
    expected = outcome.images["new"] if record["outcome"] == "succeeded" else outcome.images["old"]
    assert after["Image"] == expected, f"{record['outcome']} but the service runs {after['Image'][:19]}"
    if record["outcome"] == "succeeded":
        assert record["new_image_id"] == expected
    else:
        assert record["old_image_id"] == expected


def waited(outcome: Outcome) -> list[str]:
    return [step["step"] for step in outcome.record["steps"] if step.get("engine_wait")]


def test_a_daemon_restart_during_the_pull_is_waited_out(matrix: dict[str, Outcome | str]) -> None:
    outcome = seen(matrix, "restart_during_pull")
    assert_truth(outcome)
    assert outcome.record["outcome"] == "succeeded", outcome.record["error"]
    assert "pull_image" in waited(outcome)
    assert "after waiting" in outcome.step("pull_image")["detail"]


def test_a_daemon_restart_after_compose_up_ends_on_a_checked_image(matrix: dict[str, Outcome | str]) -> None:
    outcome = seen(matrix, "restart_after_compose_up")
    assert_truth(outcome)
    assert outcome.record["outcome"] in ("succeeded", "rolled_back"), outcome.record["error"]
    assert waited(outcome), "no step says it waited for the engine"


def test_a_daemon_restart_during_the_health_check_rolls_back_by_itself(matrix: dict[str, Outcome | str]) -> None:
    """The issue's case: no restart policy, so the new container stays down after the restart; the deploy puts the
    previous image back, running and healthy, and says why."""
    outcome = seen(matrix, "restart_during_health_check")
    assert_truth(outcome)
    assert outcome.record["outcome"] == "rolled_back", outcome.record["error"]
    check = outcome.step("health_check")
    assert not check["success"] and check["engine_wait"] > 0
    assert "The Docker engine did not answer for" in check["detail"], check["detail"]
    assert outcome.step("rollback")["rolled_back"] is True
    assert outcome.after is not None and outcome.after["Image"] == outcome.before["Image"]


def test_with_a_restart_policy_the_restarted_container_is_checked_before_it_counts(
    matrix: dict[str, Outcome | str],
) -> None:
    outcome = seen(matrix, "restart_during_health_check_with_restart_policy")
    assert_truth(outcome)
    assert outcome.record["outcome"] == "succeeded", outcome.record["error"]
    check = outcome.step("health_check")
    assert check["engine_wait"] > 0 and check["detail"].startswith("Container is healthy")


def test_with_a_restart_policy_a_restarted_container_that_fails_its_check_is_rolled_back(
    matrix: dict[str, Outcome | str],
) -> None:
    outcome = seen(matrix, "restart_during_a_failing_health_check_with_restart_policy")
    assert_truth(outcome)
    assert outcome.record["outcome"] == "rolled_back", outcome.record["error"]
    check = outcome.step("health_check")
    assert check["engine_wait"] > 0 and "unhealthy" in check["detail"], check
    assert outcome.step("rollback")["rolled_back"] is True


def test_a_daemon_restart_during_the_rollback_is_waited_out(matrix: dict[str, Outcome | str]) -> None:
    outcome = seen(matrix, "restart_during_rollback")
    assert_truth(outcome)
    assert outcome.record["outcome"] == "rolled_back", outcome.record["error"]
    assert "rollback" in waited(outcome)


def assert_untouched(outcome: Outcome, cause: str) -> None:
    assert_truth(outcome)
    record = outcome.record
    assert record["outcome"] == "failed"
    assert [step["step"] for step in record["steps"]] == ["preflight", "capture_state", "pull_image"]
    assert cause in outcome.step("pull_image")["detail"], outcome.step("pull_image")["detail"]
    assert outcome.after is not None and outcome.after["Id"] == outcome.before["Id"]
    assert outcome.after["State"]["StartedAt"] == outcome.before["State"]["StartedAt"]
    assert not waited(outcome), "a registry's failure is not the engine's"


def test_a_registry_that_is_down_changes_nothing(matrix: dict[str, Outcome | str]) -> None:
    assert_untouched(seen(matrix, "registry_down"), "connection refused")


def test_a_missing_manifest_changes_nothing(matrix: dict[str, Outcome | str]) -> None:
    assert_untouched(seen(matrix, "missing_manifest"), "manifest unknown")


def test_a_full_disk_during_the_pull_changes_nothing(matrix: dict[str, Outcome | str]) -> None:
    assert_untouched(seen(matrix, "disk_full_during_pull"), "no space left on device")
