"""Reconciliation through the real API, on real engines: faults a deploy cannot undo by itself (its rollback cannot
reach the engine within deploy_engine_wait, ansible-playbook killed with -9, an SSH host that drops mid-run), after
which the API, on its own and while it runs, brings the service back to a known healthy image (or removes what a first
deploy half-started) once the host answers again.

Each case has its own host `prod1` (Docker on engine h1, h2, h3 over SSH, or the rig's own engine), its own compose
project and its own API server; the cases run side by side (the `cases` fixture), each checked afterwards by `docker
inspect` of the service's container and image IDs on its engine, never by our own records alone. The figures (time to
converge) are printed with `pytest -s`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import service

from tests.support.apiserver import ApiServer
from tests.support.dockercli import compose_down, container_of, docker_on, image
from tests.support.hosts import local_vars, rig_hosts, ssh_stopped, ssh_vars, start_engine, stop_engine

# Every test here rests on the `cases` fixture, which stops engines h1 and h2 and the rig's sshd.
pytestmark = pytest.mark.usefixtures("registry")

SERVICE = "web"
HOST = "prod1"
# The v2 images fail this health check, slowly (12 checks a second apart), so that a fault struck while it runs
# strikes before its verdict; v1 passes it at once.
FAILS_ON_V2 = {
    "healthcheck": {
        "test": ["CMD-SHELL", "wget -q -O- http://127.0.0.1:8080/version | grep -qv v2"],
        "interval": "1s",
        "timeout": "2s",
        "retries": 12,
    }
}
# Seconds a step waits for an engine that does not answer: small, so that the rollback gives up while it is down.
ENGINE_WAIT = 3
WAIT = 90  # the longest a case waits for anything


class Site:
    """prod1, its Docker on `docker_host` (None: the rig's own engine), reached locally or over SSH, with a compose
    project of its own there, and an API server of its own (more settings in `settings`)."""

    def __init__(
        self, root: Path, docker_host: str | None, *, ssh: bool = False, settings: dict[str, str] | None = None
    ):
        self.docker_host = docker_host
        self.dir = root / "project"
        self.dir.mkdir(parents=True)
        self.name = f"dt-rc-{root.name}-{os.urandom(3).hex()}"
        compose = {"name": self.name, "services": {SERVICE: service(image("healthy", "v1"), **FAILS_ON_V2)}}
        (self.dir / "docker-compose.yml").write_text(yaml.safe_dump(compose, sort_keys=False))
        connection = ssh_vars(rig_hosts(), docker_host) if ssh else local_vars(docker_host)
        inventory = root / "inventory.yml"
        host_vars = {
            **connection,
            "deploy_compose_dir": str(self.dir),
            "deploy_engine_wait": ENGINE_WAIT,
            "deploy_services": {SERVICE: {"health_timeout": 30}},
        }
        inventory.write_text(yaml.safe_dump({"all": {"hosts": {HOST: host_vars}}}, sort_keys=False))
        (root / "api").mkdir()
        self.server = ApiServer(root / "api", inventory, settings=settings, compose_dir=self.dir)

    def container(self) -> dict[str, Any] | None:
        return container_of(self.name, SERVICE, host=self.docker_host)

    def image_id(self, reference: str) -> str:
        return docker_on(self.docker_host, "image", "inspect", "--format", "{{.Id}}", reference)

    def deploy(self, image_ref: str) -> dict[str, Any]:
        response = self.server.post({"service": SERVICE, "image": image_ref})
        assert response.status_code == 200, response.text
        return response.json()

    def start(self, image_ref: str) -> str:
        response = self.server.post({"service": SERVICE, "image": image_ref}, path="/deploy?wait=false")
        assert response.status_code == 202, response.text
        return str(response.json()["deployment_id"])

    def until(self, deployment_id: str, what: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while not done(record := self.server.record(deployment_id)):
            assert time.monotonic() < deadline, f"{what} did not happen within {WAIT} s: {json.dumps(record)[:2000]}"
            time.sleep(0.1)
        return record

    def in_health_check(self, deployment_id: str) -> dict[str, Any]:
        record = self.until(
            deployment_id,
            "the health check",
            lambda record: record["current_step"] == "health_check" or record["outcome"] != "running",
        )
        assert record["outcome"] == "running", f"the deploy ended before its health check: {record['error']}"
        return record

    def metric(self, name: str, **labels: str) -> float | None:
        return self.server.metric(name, **labels)

    def health(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.server.url}/health", timeout=10)
        assert answer.status_code == 200, answer.text
        document: dict[str, Any] = answer.json()
        return document

    def health_until(self, what: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while not done(health := self.health()):
            assert time.monotonic() < deadline, f"/health never said {what}: {health}"
            time.sleep(0.2)
        return health

    def tear_down(self) -> None:
        self.server.stop()
        compose_down(self.name, host=self.docker_host)


@dataclass
class Seen:
    """What a case saw: the deploy's record while it awaited reconciliation and once reconciled, the reconciliation's
    own deployment, the service's container before the deploy and after reconciliation, the images, and figures."""

    awaiting: dict[str, Any]
    record: dict[str, Any]
    recovery: dict[str, Any] | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    previous_image_id: str | None
    new_image_id: str
    figures: dict[str, float] = field(default_factory=dict)
    observed: dict[str, Any] = field(default_factory=dict)


def awaiting_reconciliation(site: Site, deployment_id: str) -> dict[str, Any]:
    """The record once its run ended and its first check found the host silent."""
    site.until(deployment_id, "the end of the run", lambda record: record["outcome"] != "running")
    return site.until(
        deployment_id,
        "the first reconciliation check",
        lambda record: (
            (record["recovery"] or "").startswith("Awaiting reconciliation:") or not record["awaiting_reconciliation"]
        ),
    )


def reconciled(site: Site, deployment_id: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    record = site.until(deployment_id, "reconciliation", lambda record: not record["awaiting_reconciliation"])
    recovery = site.server.record(record["recovered_by"]) if record["recovered_by"] else None
    return record, recovery


def seen_once_reconciled(
    site: Site,
    deployment_id: str,
    awaiting: dict[str, Any],
    before: dict[str, Any] | None,
    *,
    struck: float,
    ended: float,
    back: float | None = None,
) -> Seen:
    """Wait for the reconciliation, then what the engine and the records say; with when the fault struck, when the
    deploy's run ended and (when it came back during the case) when the host answered again."""
    record, recovery = reconciled(site, deployment_id)
    done = time.monotonic()
    figures = {"run": ended - struck, "converge": done - (back or struck), "total": done - struck}
    if back is not None:
        figures["down"] = back - struck
    return Seen(
        awaiting=awaiting,
        record=record,
        recovery=recovery,
        before=before,
        after=site.container(),
        previous_image_id=before["Image"] if before else None,
        new_image_id=site.image_id(image("healthy", "v2")),
        figures=figures,
    )


def rollback_past_its_bound(root: Path) -> Seen:
    """Engine h1 stops during the health check of an image that fails it, and stays down until the deploy's run has
    ended: the rollback gives up after deploy_engine_wait. The engine watch runs (every 5 s), for /health."""
    site = Site(root, rig_hosts().engine("h1"), settings={"DEPLOY_ENGINE_CHECK_INTERVAL": "5"})
    try:
        site.deploy(image("healthy", "v1"))
        before = site.container()
        assert before is not None
        observed: dict[str, Any] = {"gauge_before": site.metric("deployer_awaiting_reconciliation", service=SERVICE)}
        deployment_id = site.start(image("healthy", "v2"))
        site.in_health_check(deployment_id)
        stop_engine("h1")
        struck = time.monotonic()
        try:
            awaiting = awaiting_reconciliation(site, deployment_id)
            ended = time.monotonic()
            observed["gauge_awaiting"] = site.metric("deployer_awaiting_reconciliation", service=SERVICE)
            observed["health_down"] = site.health_until(
                "the engine down", lambda health: health["engines"].get(HOST) == "unreachable"
            )
            observed["engine_up_down"] = site.metric("deployer_engine_up", host=HOST)
        finally:
            start_engine("h1")
        back = time.monotonic()
        seen = seen_once_reconciled(site, deployment_id, awaiting, before, struck=struck, ended=ended, back=back)
        observed["gauge_after"] = site.metric("deployer_awaiting_reconciliation", service=SERVICE)
        observed["health_up"] = site.health_until("the engine up", lambda health: health["docker"] == "reachable")
        observed["engine_up_up"] = site.metric("deployer_engine_up", host=HOST)
        seen.observed = observed
        return seen
    finally:
        site.tear_down()


def first_deploy_past_its_bound(root: Path) -> Seen:
    """The same on engine h2 for a first deploy: nothing ran before it, so the container it half-started goes."""
    site = Site(root, rig_hosts().engine("h2"))
    try:
        assert site.container() is None
        deployment_id = site.start(image("healthy", "v2"))
        site.in_health_check(deployment_id)
        stop_engine("h2")
        struck = time.monotonic()
        try:
            awaiting = awaiting_reconciliation(site, deployment_id)
            ended = time.monotonic()
        finally:
            start_engine("h2")
        back = time.monotonic()
        return seen_once_reconciled(site, deployment_id, awaiting, None, struck=struck, ended=ended, back=back)
    finally:
        site.tear_down()


def playbook_processes(api_pid: int) -> list[int]:
    """ansible-playbook processes the API started (its children), from /proc."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (proc / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if parent == api_pid and b"ansible-playbook" in command:
            found.append(int(proc.name))
    return found


def playbook_killed(root: Path) -> Seen:
    """ansible-playbook killed with -9 during the health check, on the rig's own engine, while the API lives."""
    site = Site(root, None)
    try:
        site.deploy(image("healthy", "v1"))
        before = site.container()
        assert before is not None
        deployment_id = site.start(image("healthy", "v2"))
        site.in_health_check(deployment_id)
        (playbook,) = playbook_processes(site.server.process.pid)
        os.kill(playbook, signal.SIGKILL)
        struck = time.monotonic()
        awaiting = site.until(deployment_id, "the end of the run", lambda record: record["outcome"] != "running")
        ended = time.monotonic()
        return seen_once_reconciled(site, deployment_id, awaiting, before, struck=struck, ended=ended)
    finally:
        site.tear_down()


def ssh_host_dropped(root: Path) -> Seen:
    """prod1 is reached over SSH (Docker on engine h3); its sshd and sessions go during the health check, and come
    back a few seconds after the run has ended."""
    site = Site(root, rig_hosts().engine("h3"), ssh=True)
    try:
        site.deploy(image("healthy", "v1"))
        before = site.container()
        assert before is not None
        deployment_id = site.start(image("healthy", "v2"))
        site.in_health_check(deployment_id)
        with ssh_stopped():
            struck = time.monotonic()
            awaiting = awaiting_reconciliation(site, deployment_id)
            ended = time.monotonic()
            time.sleep(max(0.0, 4 - (ended - struck)))
        back = time.monotonic()
        return seen_once_reconciled(site, deployment_id, awaiting, before, struck=struck, ended=ended, back=back)
    finally:
        site.tear_down()


CASES: dict[str, Callable[[Path], Seen]] = {
    "rollback_past_its_bound": rollback_past_its_bound,
    "first_deploy_past_its_bound": first_deploy_past_its_bound,
    "playbook_killed": playbook_killed,
    "ssh_host_dropped": ssh_host_dropped,
}


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Seen | str]]:
    """Every case, side by side (each on an engine of its own); a case that raised is its traceback."""
    root = tmp_path_factory.mktemp("reconcile")
    seen: dict[str, Seen | str] = {}

    def run(name: str) -> None:
        began = time.monotonic()
        try:
            seen[name] = outcome = CASES[name](root / name)
        except BaseException:
            seen[name] = traceback.format_exc()
            return
        figures = ", ".join(f"{key} {value:.1f} s" for key, value in outcome.figures.items())
        print(
            f"reconcile case {name}: {outcome.awaiting['outcome']}, then {outcome.record['reconciliation']}; "
            f"{figures}; case {time.monotonic() - began:.1f} s; {outcome.awaiting['error']}"
        )

    with ThreadPoolExecutor(len(CASES)) as pool:
        list(pool.map(run, CASES))
    yield seen
    for engine in ("h1", "h2"):
        start_engine(engine)  # a case that failed half-way must not leave its engine down


def case(cases: dict[str, Seen | str], name: str) -> Seen:
    outcome = cases[name]
    if isinstance(outcome, str):
        pytest.fail(f"case {name} failed:\n{outcome}", pytrace=False)
    return outcome


def assert_runs_the_previous_image(seen: Seen) -> None:
    """The engine's truth: the service's one container runs the image it ran before the deploy, healthy."""
    after = seen.after
    assert after is not None, f"no container of {SERVICE} is left: {seen.record['recovery']}"
    assert after["Image"] == seen.previous_image_id, f"the service runs {after['Image'][:19]}, not the previous image"
    assert after["Image"] != seen.new_image_id
    assert after["State"]["Running"], after["State"]
    assert after["State"]["Health"]["Status"] == "healthy", after["State"]["Health"]


def assert_restored_by_a_recovery_rollback(seen: Seen) -> None:
    record, recovery = seen.record, seen.recovery
    assert record["reconciliation"] == "restored", record["recovery_action"]
    assert recovery is not None and record["recovered_by"] == recovery["id"]
    assert (recovery["action"], recovery["source"], recovery["outcome"]) == ("rollback", "recovery", "succeeded")
    assert record["id"] in recovery["message"]
    assert recovery["new_image_id"] == seen.previous_image_id
    assert record["recovery_action"] == f"Rolled back to the previous image by {recovery['id']}"
    # The deploy's own error is kept beside what reconciliation did.
    assert record["error"] == seen.awaiting["error"]


def test_a_rollback_past_its_engine_bound_is_reconciled_once_the_engine_answers(cases):
    seen = case(cases, "rollback_past_its_bound")
    awaiting, record = seen.awaiting, seen.record

    assert (awaiting["outcome"], awaiting["awaiting_reconciliation"]) == ("rollback_failed", True)
    (rollback_step,) = [step for step in awaiting["steps"] if step["step"] == "rollback"]
    assert not rollback_step["success"]
    # The bound, and what the last ping after it took.
    assert re.search(r"did not answer within [3-9] s", rollback_step["detail"]), rollback_step["detail"]
    assert awaiting["recovery"].startswith(f"Awaiting reconciliation: the Docker engine of {HOST} does not answer (")
    assert seen.observed["gauge_before"] == 0
    assert seen.observed["gauge_awaiting"] == 1
    assert seen.observed["health_down"]["docker"] == "unreachable"
    assert seen.observed["health_down"]["status"] == "healthy", "the API itself is fine"
    assert seen.observed["engine_up_down"] == 0

    assert_runs_the_previous_image(seen)
    assert_restored_by_a_recovery_rollback(seen)
    assert record["outcome"] == "rollback_failed", "the deploy's outcome stays what it was"
    assert record["reconciled_at"] is not None, "it had to wait"
    assert seen.observed["gauge_after"] == 0
    assert seen.observed["health_up"]["engines"] == {HOST: "reachable"}
    assert seen.observed["engine_up_up"] == 1


def test_a_first_deploy_past_its_engine_bound_has_its_half_started_container_removed(cases):
    seen = case(cases, "first_deploy_past_its_bound")
    awaiting, record, recovery = seen.awaiting, seen.record, seen.recovery

    assert (awaiting["outcome"], awaiting["awaiting_reconciliation"]) == ("rollback_failed", True)
    assert awaiting["old_image_id"] is None and awaiting["new_image_id"] == seen.new_image_id
    assert seen.after is None, f"the half-started container is still there: {seen.after and seen.after['State']}"
    assert record["reconciliation"] == "removed", record["recovery_action"]
    assert recovery is not None and record["recovered_by"] == recovery["id"]
    assert (recovery["action"], recovery["source"], recovery["outcome"]) == ("remove", "recovery", "succeeded")
    assert record["recovery_action"] == f"Removed what the first deploy half-started by {recovery['id']}"


def test_a_playbook_killed_during_the_health_check_ends_on_the_previous_image_by_itself(cases):
    seen = case(cases, "playbook_killed")
    awaiting = seen.awaiting

    assert awaiting["outcome"] == "interrupted"
    assert awaiting["error"] == (
        "The playbook run ended (ansible-playbook was killed by a signal) during health_check before "
        f"{HOST} published its result"
    )
    assert awaiting["hosts"][HOST]["outcome"] == "interrupted"
    assert awaiting["hosts"][HOST]["old_image_id"] == seen.previous_image_id, "the images its steps named are kept"
    assert_runs_the_previous_image(seen)
    assert_restored_by_a_recovery_rollback(seen)


def test_an_ssh_host_that_drops_mid_run_ends_on_a_known_healthy_image(cases):
    seen = case(cases, "ssh_host_dropped")
    awaiting = seen.awaiting

    assert awaiting["outcome"] == "interrupted"
    assert awaiting["error"].startswith(f"{HOST} became unreachable during health_check before it published its result")
    assert awaiting["recovery"].startswith(f"Awaiting reconciliation: {HOST} cannot be reached (")
    assert_runs_the_previous_image(seen)
    assert_restored_by_a_recovery_rollback(seen)
