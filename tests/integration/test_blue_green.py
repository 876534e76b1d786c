"""The blue_green strategy on the real engine: the new container starts beside the old one, which serves until the new
one is proven, and exactly one container is left, on the image the record claims.

A watcher reads the engine every 0.1 s during each deploy, so the tests see what ran side by side, not what the
playbook says it did. The traffic through a real proxy is tests/integration/test_zero_downtime.py's.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from conftest import fingerprint, service

from tests.support.dockercli import containers_of, docker, image, image_id

pytestmark = pytest.mark.usefixtures("registry")

# Which containers run and when is the point here, not a slow boot: the image that is healthy a second after its start.
# (The crash tests and test_zero_downtime.py deploy the slow one.)
APP = "healthy"
BLUE_GREEN = {"strategy": "blue_green", "drain_seconds": 1, "health_url": "http://{address}:8080/version"}
STEPS_OK = ["preflight", "capture_state", "pull_image", "compose_up", "health_check", "observe", "drain", "cleanup"]


@dataclass
class Seen:
    """What the engine ran, sample by sample: each a dict of container ID -> (status, health)."""

    samples: list[dict[str, tuple[str, str]]] = field(default_factory=list)

    def running(self, sample: dict[str, tuple[str, str]]) -> set[str]:
        return {container for container, (status, _) in sample.items() if status == "running"}

    @property
    def most_running(self) -> int:
        return max((len(self.running(sample)) for sample in self.samples), default=0)

    @property
    def ever_down(self) -> bool:
        """Some sample had no running container of the service."""
        return any(not self.running(sample) for sample in self.samples)

    def side_by_side_healthy(self, old: str, new: str) -> bool:
        """A sample where the old one still ran while the new one was healthy: the old one served until then."""
        return any(old in self.running(sample) and sample.get(new, ("", ""))[1] == "healthy" for sample in self.samples)

    def ids(self) -> set[str]:
        return {container for sample in self.samples for container in sample}


@contextmanager
def watching(project: str, service_name: str) -> Iterator[Seen]:
    seen = Seen()
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            seen.samples.append(
                {
                    entry["Id"]: (entry["State"]["Status"], (entry["State"].get("Health") or {}).get("Status", ""))
                    for entry in containers_of(project, service_name)
                }
            )

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def blue_green_project(compose_project, version: str = "v1", **settings):
    project = compose_project(
        {"web": service(image(APP, version), stop_grace_period="2s")}, {"web": {**BLUE_GREEN, **settings}}
    )
    project.up()
    project.wait_healthy("web")
    return project


def pinned(project) -> str | None:
    """The image the pin file names for web; None without a pin (the compose file's image)."""
    if not project.pin_file.exists():
        return None
    return json.loads(project.pin_file.read_text())["services"].get("web", {}).get("image")


def test_the_new_container_starts_beside_the_old_one_which_serves_until_it_is_proven(compose_project):
    project = blue_green_project(compose_project)
    old = project.container("web")

    with watching(project.name, "web") as seen:
        deploy = project.deploy("web", image(APP, "v2"))

    assert deploy.rc == 0, deploy.stdout
    new = project.container("web")  # exactly one container is left
    assert new["Id"] != old["Id"] and new["Image"] == image_id(image(APP, "v2"))
    assert new["State"]["Health"]["Status"] == "healthy"
    assert seen.most_running == 2 and not seen.ever_down
    assert seen.side_by_side_healthy(old["Id"], new["Id"])
    assert seen.ids() == {old["Id"], new["Id"]}, "one new container, nothing else"
    assert docker("ps", "-aq", "--filter", f"id={old['Id']}") == "", "the old container is removed"
    result = deploy.result
    assert result["outcome"] == "succeeded" and result["new_image_id"] == new["Image"]
    assert deploy.steps == deploy.announced == STEPS_OK
    records = {record["step"]: record for record in result["steps"]}
    assert records["compose_up"]["detail"] == f"Started {new['Id'][:12]} beside {old['Id'][:12]}, which keeps serving"
    assert records["drain"]["detail"].startswith(f"Drained {old['Id'][:12]} for 1 s")
    assert records["drain"]["detail"].endswith(f"{new['Id'][:12]} serves alone ({new['Image'][7:19]})")
    assert pinned(project) == image(APP, "v2")
    # The container compose finds is the one the pin names: a plain `up` by hand leaves it alone.
    project.compose("up", "-d", "web", files=("docker-compose.yml", "docker-compose.deploy.yml"))
    assert fingerprint(project.container("web")) == fingerprint(new)


@pytest.mark.parametrize("broken", ["deaf", "crash"])
def test_a_new_container_that_never_becomes_healthy_is_removed_and_the_old_one_never_stopped(compose_project, broken):
    project = blue_green_project(compose_project, health_timeout=8)
    old = project.container("web")

    with watching(project.name, "web") as seen:
        deploy = project.deploy("web", image(broken, "v1"))

    assert deploy.rc != 0
    after = project.container("web")
    assert fingerprint(after) == fingerprint(old), "the old container was never stopped or restarted"
    assert after["State"]["Health"]["Status"] == "healthy"
    assert seen.most_running >= (2 if broken == "deaf" else 1) and not seen.ever_down
    assert len(seen.ids()) == 2, "the new container came and went"
    result = deploy.result
    assert result["outcome"] == "rolled_back"
    rollback = result["steps"][-1]
    assert rollback["step"] == "rollback" and rollback["rolled_back"] is True
    assert "Removed the new container" in rollback["detail"]
    assert f"{old['Id'][:12]} kept serving {image(APP, 'v1')}" in rollback["detail"]
    assert pinned(project) is None, "the pin is dropped: the compose file's image serves again"


def test_a_new_container_that_fails_in_the_observation_window_is_removed(compose_project):
    # No HEALTHCHECK: healthy once it ran a second (deploy_health_settle), then it dies two seconds after its start.
    project = compose_project(
        {"web": service(image("plain", "v1"), stop_grace_period="2s")},
        {"web": {"strategy": "blue_green", "drain_seconds": 0, "observe_seconds": 6}},
    )
    project.up()
    old = project.container("web")

    deploy = project.playbook_cli(
        "-e", "service=web", "-e", f"image={image('dies', 'v1')}", "-e", "deploy_health_settle=1"
    )

    assert deploy.returncode != 0
    assert "into the observation" in deploy.stdout
    assert fingerprint(project.container("web")) == fingerprint(old)


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"ports": ["127.0.0.1:18461:8080"]}, "it publishes host port 127.0.0.1:18461 (container port 8080)"),
        ({"container_name": "bg-fixed-name"}, "it sets container_name 'bg-fixed-name'"),
        ({"deploy": {"replicas": 2}}, "it runs 2 replicas"),
    ],
)
def test_what_cannot_run_twice_is_refused_before_anything_changes(compose_project, extra, reason):
    name = "web"
    project = compose_project({name: service(image("healthy", "v1"), **extra)}, {name: BLUE_GREEN})
    project.up()
    before = sorted(
        docker("ps", "-aq", "--no-trunc", "--filter", f"label=com.docker.compose.project={project.name}").split()
    )
    before_prints = [fingerprint(json.loads(docker("inspect", cid))[0]) for cid in before]

    deploy = project.deploy(name, image("healthy", "v2"))

    assert deploy.rc != 0
    result = deploy.result
    assert result["outcome"] == "failed" and result["steps"][-1]["step"] == "preflight"
    assert reason in result["error"] and "or deploy it with strategy recreate" in result["error"]
    after = sorted(
        docker("ps", "-aq", "--no-trunc", "--filter", f"label=com.docker.compose.project={project.name}").split()
    )
    assert [fingerprint(json.loads(docker("inspect", cid))[0]) for cid in after] == before_prints
    assert not project.pin_file.exists()
    assert project.history(name) == [], "not even the running image was tagged"


def test_check_mode_says_a_second_container_would_start_and_an_unchanged_image_starts_nothing(compose_project):
    project = blue_green_project(compose_project)
    old = project.container("web")

    dry = project.deploy("web", image(APP, "v2"), check=True)
    assert dry.rc == 0, dry.stdout
    up = next(record for record in dry.result["steps"] if record["step"] == "compose_up")
    assert up["detail"] == f"Would start a second container beside {old['Id'][:12]}, which keeps serving"
    assert fingerprint(project.container("web")) == fingerprint(old)

    with watching(project.name, "web") as seen:
        # The first deploy tags the running image for the history; the second changes nothing at all.
        assert project.deploy("web", image(APP, "v1")).rc == 0
        again = project.deploy("web", image(APP, "v1"))
    assert again.rc == 0 and again.changed == 0, again.stdout
    assert seen.ids() == {old["Id"]} and fingerprint(project.container("web")) == fingerprint(old)
    records = {record["step"]: record["detail"] for record in again.result["steps"]}
    assert records["drain"] == "Nothing to drain: no container was started beside"


def test_a_manual_rollback_is_blue_green_too(compose_project):
    project = blue_green_project(compose_project)
    assert project.deploy("web", image(APP, "v2")).rc == 0
    current = project.container("web")

    with watching(project.name, "web") as seen:
        back = project.rollback("web")

    assert back.rc == 0, back.stdout
    restored = project.container("web")
    assert restored["Image"] == image_id(image(APP, "v1"))
    assert seen.side_by_side_healthy(current["Id"], restored["Id"]) and not seen.ever_down
    assert back.steps == [
        "preflight",
        "capture_state",
        "choose_image",
        "pull_image",
        "compose_up",
        "health_check",
        "observe",
        "drain",
        "cleanup",
    ]


def test_several_hosts_deploy_blue_green_in_batches_and_a_failure_undoes_the_hosts_already_updated(compose_project):
    first, second = blue_green_project(compose_project), blue_green_project(compose_project)
    hosts = {"h1": first, "h2": second}

    def inventory(h2_url: str) -> None:
        first.write_inventory(
            {
                name: {
                    "deploy_compose_dir": str(project.dir),
                    "deploy_services": {
                        "web": {**BLUE_GREEN, "health_timeout": 8, **({"health_url": h2_url} if name == "h2" else {})}
                    },
                }
                for name, project in hosts.items()
            }
        )

    inventory(BLUE_GREEN["health_url"])
    olds = {name: project.container("web") for name, project in hosts.items()}
    deploy = first.deploy("web", image(APP, "v2"))
    assert deploy.rc == 0, deploy.stdout
    for name, project in hosts.items():
        now = project.container("web")
        assert now["Id"] != olds[name]["Id"] and now["Image"] == image_id(image(APP, "v2")), name
        assert [step["step"] for step in deploy.results[name]["steps"]] == STEPS_OK

    # h2's health URL never answers: h2 is rolled back (its old container served throughout), and h1, updated in the
    # batch before, is undone.
    inventory("http://{address}:9/never")
    updated = {name: project.container("web") for name, project in hosts.items()}
    failed = first.playbook_cli("-e", "service=web", "-e", f"image={image(APP, 'v3')}", "-e", "deploy_batches=[1]")
    assert failed.returncode != 0
    assert fingerprint(second.container("web")) == fingerprint(updated["h2"]), "h2's old container never stopped"
    assert first.container("web")["Image"] == image_id(image(APP, "v2")), "h1 runs what it ran before the rollout"
