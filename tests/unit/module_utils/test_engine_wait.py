"""An engine that does not answer is a pause, not a verdict: Docker.run_argv waits for it within its bound and runs the
command again; a real failure is returned as it is. The engine and the clock are fakes here; tests/integration/
test_faults.py restarts real engines."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from ansible.module_utils import deploy_docker
from ansible.module_utils import deploy_health as health
from ansible.module_utils.deploy_docker import ENGINE_LOST, Docker, StepError
from fakedocker import FakeDocker

GONE = "Cannot connect to the Docker daemon at unix:///run/h1.sock. Is the docker daemon running?\n"


class Module:
    """run_command answers from a script, one answer a call."""

    def __init__(self, answers: list[tuple[int, str, str]]):
        self.answers = iter(answers)
        self.calls = 0

    def run_command(self, argv: list[str], cwd: str | None = None) -> tuple[int, str, str]:
        self.calls += 1
        return next(self.answers)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Clock, list[bool]]]:
    """A clock that moves one second a ping, and the answers of the pings in order (True: the engine answers)."""
    clock, pings = Clock(), []

    def engine_answers(self: Docker) -> bool:
        clock.now += 1
        return pings.pop(0)

    monkeypatch.setattr(Docker, "engine_answers", engine_answers)
    monkeypatch.setattr(Docker, "binary", "docker")
    monkeypatch.setattr(deploy_docker.time, "sleep", lambda seconds: None)
    yield clock, pings


@pytest.mark.parametrize(
    "stderr",
    [
        GONE,
        'error during connect: Get "http://%2Frun%2Fh1.sock/v1.47/containers/json": EOF',
        "unexpected EOF",
        "Error response from daemon: context canceled",
        "Error response from daemon: transport is closing: unavailable",
        "dial unix /run/deploytest-h1.sock: connect: no such file or directory",
    ],
)
def test_what_a_lost_engine_says_is_known(stderr: str) -> None:
    assert ENGINE_LOST.search(stderr)


@pytest.mark.parametrize(
    "stderr",
    [
        "Error: No such container: c0ffee",
        'Error response from daemon: Get "http://127.0.0.1:5999/v2/": dial tcp 127.0.0.1:5999: connect: connection '
        "refused",
        "Error response from daemon: manifest for 127.0.0.1:5099/deploytest/healthy:v9 not found: manifest unknown",
        "write /var/lib/docker/tmp/GetImageBlob1: no space left on device",
    ],
)
def test_a_registry_or_a_command_failing_is_not_a_lost_engine(stderr: str) -> None:
    assert not ENGINE_LOST.search(stderr)


def test_a_command_waits_for_the_engine_and_runs_again(engine: tuple[Clock, list[bool]]) -> None:
    clock, pings = engine
    pings.extend([False, False, False, True])
    module = Module([(1, "", GONE), (0, "ok", "")])
    docker = Docker(module, engine_wait=60, clock=clock)  # type: ignore[arg-type]
    assert docker.run("ps") == (0, "ok", "")
    assert module.calls == 2
    assert docker.waited == 4


def test_past_its_bound_the_step_fails_naming_the_engine(
    engine: tuple[Clock, list[bool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, pings = engine
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/h1.sock")
    pings.extend([False] * 10)
    docker = Docker(Module([(1, "", GONE)]), engine_wait=3, clock=clock)  # type: ignore[arg-type]
    with pytest.raises(StepError) as failed:
        docker.run("ps")
    assert failed.value.msg.startswith("The Docker engine at unix:///run/h1.sock did not answer within 3 s: Cannot")
    assert failed.value.extra["engine_unreachable"] is True
    assert docker.waited == 3


def test_an_engine_back_at_once_gets_one_more_try_then_the_failure_is_the_commands(
    engine: tuple[Clock, list[bool]],
) -> None:
    clock, pings = engine
    pings.extend([True, True])
    module = Module([(1, "", "unexpected EOF"), (1, "", "unexpected EOF")])
    docker = Docker(module, engine_wait=60, clock=clock)  # type: ignore[arg-type]
    assert docker.run("pull", "web:v2") == (1, "", "unexpected EOF")
    assert module.calls == 2
    assert docker.waited == 0


def test_a_real_failure_asks_the_engine_nothing(engine: tuple[Clock, list[bool]]) -> None:
    clock, _ = engine
    module = Module([(1, "", "Error: No such image: web:v9")])
    docker = Docker(module, engine_wait=60, clock=clock)  # type: ignore[arg-type]
    assert docker.run("image", "inspect", "web:v9")[0] == 1
    assert module.calls == 1 and clock.now == 0


def test_a_container_the_engine_took_down_is_said_to_have_gone_down_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The health check's inspect waited for the engine (a daemon restart), and the container, without a restart
    policy, is exited afterwards: the verdict names the engine, and the wait moved the deadline."""
    states = iter(
        [
            {"Status": "running", "Running": True, "Health": {"Status": "starting"}},
            {"Status": "exited", "Running": False, "ExitCode": 143, "Error": ""},
        ]
    )

    def inspect(args: tuple[str, ...]) -> tuple[int, str, str]:
        state = next(states)
        if state["Status"] == "exited":
            docker.waited += 4  # this inspect waited for the engine
        return 0, json.dumps([{"State": {"StartedAt": "2026-01-02T03:04:05Z", **state}, "RestartCount": 0}]), ""

    docker = FakeDocker({("container", "inspect"): inspect, ("logs",): (0, "", "")})
    monkeypatch.setattr(health.time, "sleep", lambda seconds: None)
    checked = health.container_health(
        docker, container="c0ffee", timeout=5, url="", settle=5, interval=1, log_lines=5, check_mode=False
    )
    assert checked["verdict"] == {
        "healthy": False,
        "status": "exited",
        "detail": "The Docker engine did not answer for 4 s during the deploy, and the container did not run again "
        "after it came back (exited with code 143)",
    }
