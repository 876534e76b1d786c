"""The compose steps of module_utils against the real engine, compose v2 and the loopback registry: a project found
without a compose file setting, `changed` checked against the container IDs the engine reports, and failures that
name their cause, and what failed, in one line.

The steps run as an Ansible module runs them: a `Docker` around AnsibleModule's run_command and warn (here
subprocess.run), with the real docker CLI.
"""

from __future__ import annotations

import importlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ansible.module_utils
import pytest
import yaml
from conftest import service

from tests.support.dockercli import REGISTRY, docker, image

pytestmark = pytest.mark.usefixtures("registry")

REPO = Path(__file__).resolve().parents[2]
STAMP = "20260301T120000000000"


class Module:
    """What the steps use of an AnsibleModule: run_command (an argument list, never a shell) and warn."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def run_command(self, args: list[str], cwd: str | None = None) -> tuple[int, str, str]:
        completed = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
        return completed.returncode, completed.stdout, completed.stderr

    def warn(self, text: str) -> None:
        self.warnings.append(text)


@pytest.fixture(scope="module")
def steps() -> SimpleNamespace:
    """module_utils imported as Ansible imports it, `ansible.module_utils.<name>` (ansible.cfg's module_utils)."""
    if str(REPO / "module_utils") not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(str(REPO / "module_utils"))
    names = ("deploy_compose", "deploy_docker", "deploy_history", "deploy_image")
    return SimpleNamespace(**{name: importlib.import_module(f"ansible.module_utils.{name}") for name in names})


@pytest.fixture
def engine(steps: SimpleNamespace) -> Any:
    return steps.deploy_docker.Docker(Module())


def only_compose_yaml(compose_project: Any, services: dict[str, dict[str, Any]]) -> Any:
    """A project whose one compose file is compose.yaml, the name compose looks for first."""
    project = compose_project(services)
    project.compose_file.rename(project.dir / "compose.yaml")
    project.compose_file = project.dir / "compose.yaml"
    project.pin_file = project.dir / "compose.deploy.yml"
    return project


def container_id(project: Any, service_name: str) -> str:
    """The service's container as the engine reports it (`docker inspect`), or "" for none."""
    found = project.container(service_name)
    return found["Id"] if found else ""


def assert_one_line(message: str) -> None:
    assert "\n" not in message and "\r" not in message, message
    assert "non-zero return code" not in message.lower() and "is non-zero" not in message, message


def test_a_project_with_only_compose_yaml_is_found_captured_and_brought_up(compose_project, steps, engine):
    project = only_compose_yaml(compose_project, {"app": service(image("plain", "v1"))})

    captured = steps.deploy_history.capture_state(engine, str(project.dir), "", "app", "deploy-history", STAMP, False)
    capture = captured["capture"]
    assert (capture["compose_file"], capture["project_dir"]) == ("compose.yaml", str(project.dir))
    assert (capture["project"], capture["file_image"], capture["container_id"]) == (project.name, image("plain"), "")

    def up(target: str = "", check_mode: bool = False) -> dict:
        return steps.deploy_compose.compose_service(
            engine,
            project_dir=capture["project_dir"],
            compose_file=capture["compose_file"],
            pin_file=steps.deploy_compose.pin_file_for(capture["compose_file"]),
            service="app",
            image=target,
            file_image=capture["file_image"],
            stop_timeout=1,
            state="present",
            check_mode=check_mode,
            project=capture["project"],
        )

    created = up()
    first_id = container_id(project, "app")
    assert created["changed"] and first_id and created["container_id"] == first_id
    assert not project.pin_file.exists(), "the compose file's own image needs no pin"

    again = up()
    assert not again["changed"]
    assert again["container_id"] == container_id(project, "app") == first_id

    assert up(image("plain", "v2"), check_mode=True)["changed"]
    assert container_id(project, "app") == first_id and not project.pin_file.exists(), "check mode touches nothing"
    assert not up(check_mode=True)["changed"]

    recreated = up(image("plain", "v2"))
    second_id = container_id(project, "app")
    assert recreated["changed"] and second_id != first_id and recreated["container_id"] == second_id
    assert project.container("app")["Config"]["Image"] == image("plain", "v2")
    assert yaml.safe_load(project.pin_file.read_text())["services"] == {"app": {"image": image("plain", "v2")}}

    assert not up(image("plain", "v2"))["changed"]
    assert not up(image("plain", "v2"), check_mode=True)["changed"]
    assert container_id(project, "app") == second_id


def test_compose_service_finds_the_file_itself_and_counts_a_start_as_a_change(compose_project, steps, engine):
    project = only_compose_yaml(compose_project, {"app": service(image("plain", "v1"))})

    def up(state: str = "present", check_mode: bool = False) -> dict:
        return steps.deploy_compose.compose_service(
            engine, str(project.dir), "", "", "app", "", "", 1, state, check_mode
        )

    assert up()["changed"]
    running_id = container_id(project, "app")
    docker("stop", "--time", "1", running_id)

    assert up(check_mode=True)["changed"], "compose would start it"
    started = up()
    assert started["changed"] and started["container_id"] == container_id(project, "app") == running_id
    assert project.container("app")["State"]["Running"]

    assert up("absent", check_mode=True)["changed"] and container_id(project, "app") == running_id
    assert up("absent")["changed"] and container_id(project, "app") == ""
    assert not up("absent")["changed"]


def test_a_missing_or_broken_compose_file_is_named_in_one_line(compose_project, steps, engine, tmp_path):
    project = only_compose_yaml(compose_project, {"app": service(image("plain", "v1"))})

    def capture(project_dir: Path, compose_file: str) -> str:
        with pytest.raises(steps.deploy_docker.StepError) as failed:
            steps.deploy_history.capture_state(engine, str(project_dir), compose_file, "app", "h", STAMP, False)
        assert_one_line(failed.value.msg)
        return failed.value.msg

    assert capture(project.dir, "prod.yaml") == f"Compose file {project.dir / 'prod.yaml'} does not exist"

    project.compose_file.write_text("services:\n  app:\n    image: [\n")
    broken = capture(project.dir, "")
    assert (
        broken
        == f"docker compose config failed for {project.compose_file}: yaml: line 3: did not find expected node content"
    )

    project.compose_file.write_text("services:\n  app:\n    image: ${APP_IMAGE:?set APP_IMAGE}\n")
    assert capture(project.dir, "compose.yaml") == (
        f"docker compose config failed for {project.compose_file}: error while interpolating services.app.image: "
        "required variable APP_IMAGE is missing a value: set APP_IMAGE"
    )


def test_a_pull_of_a_missing_image_names_the_image(steps, engine):
    missing = f"{REGISTRY}/deploytest/plain:v404"

    with pytest.raises(steps.deploy_docker.StepError) as failed:
        steps.deploy_image.pull_image(engine, missing, True, "", False)

    assert failed.value.msg == (
        f"Pulling {missing} failed: Error response from daemon: manifest for {missing} not found: "
        "manifest unknown: manifest unknown"
    )
    assert failed.value.extra["rc"] == 1 and failed.value.extra["cmd"][-3:] == ["pull", "--quiet", missing]
    assert_one_line(failed.value.msg)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_a_failed_up_names_its_cause_in_one_line(compose_project, steps, engine, taken_port):
    missing = f"{REGISTRY}/deploytest/plain:v404"
    project = only_compose_yaml(
        compose_project,
        {
            "app": service(image("plain", "v1"), ports=[f"127.0.0.1:{taken_port}:8080"]),
            "gone": service(missing),
        },
    )

    def up(service_name: str) -> str:
        with pytest.raises(steps.deploy_docker.StepError) as failed:
            steps.deploy_compose.compose_service(
                engine, str(project.dir), "", "", service_name, "", "", 1, "present", False
            )
        assert failed.value.extra["rc"] != 0 and failed.value.extra["stderr"]
        assert failed.value.extra["cmd"][1:3] == ["compose", "--ansi"]
        assert_one_line(failed.value.msg)
        return failed.value.msg

    port_taken = up("app")
    assert port_taken.startswith(f"docker compose up failed for service app of {project.compose_file}: Error ")
    assert port_taken.endswith(f"127.0.0.1:{taken_port}: bind: address already in use")

    image_missing = up("gone")
    assert image_missing == (
        f"docker compose up failed for service gone of {project.compose_file}: Error response from daemon: "
        f"manifest for {missing} not found: manifest unknown: manifest unknown"
    )
