"""A blue-green deploy killed with -9 (the API and its playbook) while two containers of the service run: the API, once
started again, leaves exactly one - the old one when the new one was never proven, else the new one - and the record
says which and why. Checked on the engine (container and image IDs), through the real API.

The three phases run side by side once (the `settled` fixture), each on its own project and API server; each phase is
a test of its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ComposeProject, service

from tests.support.apiserver import ApiServer, serving
from tests.support.dockercli import containers_of, image, image_id

pytestmark = pytest.mark.usefixtures("registry")

SERVICE = "web"
WAIT = 60
# phase: the service's settings for it, and the container the recovery keeps.
PHASES: dict[str, tuple[dict[str, Any], str]] = {
    # The new container starts listening 4 s after its start: killed before it was healthy.
    "health_check": ({}, "old"),
    # Healthy, but killed within its observation window: never proven.
    "observe": ({"observe_seconds": 30}, "old"),
    # Proven (the record has its health check and observation), killed while the old one drains.
    "drain": ({"drain_seconds": 20}, "new"),
}


@dataclass
class Settled:
    """One phase: the two containers the kill left (old, new), the one left after the restart, the records of the
    killed deploy and of the recovery's settle, and the containers after a plain `compose up` by hand."""

    old: dict[str, Any]
    new: dict[str, Any]
    only: dict[str, Any]
    record: dict[str, Any]
    settling: dict[str, Any]
    after_up: list[str]


def containers(project: ComposeProject) -> list[dict[str, Any]]:
    return containers_of(project.name, SERVICE)


def until(what: str, done) -> Any:
    deadline = time.monotonic() + WAIT
    while not (found := done()):
        assert time.monotonic() < deadline, f"{what} did not happen within {WAIT} s"
        time.sleep(0.1)
    return found


def process_tree(root: int) -> list[int]:
    """`root` and every process below it (ansible-playbook, the module on the host, the docker CLI)."""
    children: dict[int, list[int]] = {}
    for line in subprocess.run(
        ["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True
    ).stdout.splitlines():
        pid, ppid = map(int, line.split())
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def kill_everything(server: ApiServer) -> None:
    """kill -9 of the API and of everything it runs at once, as when the machine or the API's container dies."""
    for pid in process_tree(server.process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.process.wait(10)


def kill_in(phase: str, root: Path, made: list[ComposeProject | ApiServer]) -> Settled:
    """Deploy v2 of the slow image through the API, kill everything in `phase`, start the API again and wait until
    the recovery left one container."""
    project = ComposeProject(
        root,
        {SERVICE: service(image("slow", "v1"), stop_grace_period="2s")},
        {SERVICE: {"strategy": "blue_green", "drain_seconds": 1, "health_timeout": 30, **PHASES[phase][0]}},
    )
    made.append(project)
    project.up()
    project.wait_healthy(SERVICE)
    (old,) = containers(project)

    def api(name: str, state_dir: Path | None = None) -> ApiServer:
        (root / name).mkdir()
        server = ApiServer(root / name, project.inventory, state_dir=state_dir, compose_dir=project.dir)
        made.append(server)
        return server

    server = api("api")
    response = server.post({"service": SERVICE, "image": image("slow", "v2")}, path="/deploy?wait=false")
    assert response.status_code == 202, response.text
    deployment_id = response.json()["deployment_id"]
    step = "health_check" if phase == "observe" else phase
    server.follow(deployment_id, until=lambda record: record["current_step"] == step)
    if phase == "observe":
        # Its health check passed on the engine; the round trip (health check, observation) has not returned.
        until(
            "the new container's health",
            lambda: any(
                entry["Id"] != old["Id"] and (entry["State"].get("Health") or {}).get("Status") == "healthy"
                for entry in containers(project)
            ),
        )
    kill_everything(server)
    left = containers(project)
    assert len(left) == 2 and all(entry["State"]["Running"] for entry in left), "the kill left two containers running"
    (new,) = [entry for entry in left if entry["Id"] != old["Id"]]
    if phase == "drain":
        # The recovery drains for the inventory's drain_seconds as they are when the API starts again: one second
        # now, not the twenty that held the deploy in its drain.
        settings = {SERVICE: {**project.settings[SERVICE], "drain_seconds": 1}}
        project.write_inventory({"localhost": {"deploy_compose_dir": str(project.dir), "deploy_services": settings}})

    restarted = api("api-restarted", state_dir=server.state_dir)
    record = restarted.follow(deployment_id, until=lambda record: record["recovery_action"])[-1]
    (only,) = until("one container", lambda: found if len(found := containers(project)) == 1 else None)
    settling = restarted.record(record["recovered_by"])
    files = ("docker-compose.yml", *(["docker-compose.deploy.yml"] if project.pin_file.exists() else []))
    project.compose("up", "-d", SERVICE, files=files)
    return Settled(old, new, only, record, settling, [entry["Id"] for entry in containers(project)])


@pytest.fixture(scope="module")
def settled(tmp_path_factory: pytest.TempPathFactory, registry: str) -> Iterator[dict[str, Settled | str]]:
    """Every phase, side by side; a phase that raised is its traceback."""
    root = tmp_path_factory.mktemp("crash")
    made: list[ComposeProject | ApiServer] = []

    def run(phase: str) -> Settled | str:
        (root / phase).mkdir()
        try:
            return kill_in(phase, root / phase, made)
        except BaseException:
            return traceback.format_exc()

    with ThreadPoolExecutor(len(PHASES)) as pool:
        outcomes = dict(zip(PHASES, pool.map(run, PHASES), strict=True))
    yield outcomes
    for thing in made:
        if isinstance(thing, ApiServer):
            thing.stop()
        else:
            thing.tear_down()


@pytest.mark.parametrize("phase", PHASES)
def test_a_blue_green_deploy_killed_with_two_containers_is_settled_on_one(settled, phase):
    outcome = settled[phase]
    if isinstance(outcome, str):
        pytest.fail(f"phase {phase} failed:\n{outcome}", pytrace=False)
    kept = PHASES[phase][1]
    expected = outcome.old if kept == "old" else outcome.new
    only, record = outcome.only, outcome.record
    assert only["Id"] == expected["Id"], f"the {kept} container is the one left"
    assert only["Image"] == image_id(image("slow", "v1" if kept == "old" else "v2"))
    assert only["State"]["Running"] and only["State"]["StartedAt"] == expected["State"]["StartedAt"]
    assert record["outcome"] == "interrupted"
    assert record["reconciliation"] == ("restored" if kept == "old" else "completed")
    why = "the new one was never proven" if kept == "old" else "the new one passed its health check and the observation"
    assert why in record["recovery_action"] and record["recovered_by"] in record["recovery_action"], record
    settling = outcome.settling
    assert (settling["action"], settling["source"], settling["outcome"]) == ("settle", "recovery", "succeeded")
    # What compose finds is what runs: a plain `up` by hand with the pin file leaves it alone.
    assert outcome.after_up == [expected["Id"]]


@pytest.fixture
def api_server(tmp_path):
    yield from serving(tmp_path)


def test_the_api_answers_400_to_what_cannot_run_twice_and_changes_nothing(compose_project, api_server):
    project = compose_project(
        {
            SERVICE: service(image("healthy", "v1"), ports=["127.0.0.1:18462:8080"]),
            "other": service(image("plain", "v1")),
        },
        {SERVICE: {"strategy": "blue_green"}, "other": {"strategy": "blue_green", "health_url": "http://127.0.0.1:1/"}},
    )
    project.up()
    (before,) = containers(project)
    server = api_server(project)

    refused = server.post({"service": SERVICE, "image": image("healthy", "v2")})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert "publishes host port 127.0.0.1:18462 (container port 8080)" in error and "strategy recreate" in error
    (after,) = containers(project)
    assert (after["Id"], after["State"]["StartedAt"]) == (before["Id"], before["State"]["StartedAt"])

    misconfigured = server.post({"service": "other", "image": image("plain", "v2")})
    assert misconfigured.status_code == 400
    assert "its health_url must probe the new container itself: write its host as {address}" in misconfigured.text
