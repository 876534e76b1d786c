"""Zero-downtime deploys through a real proxy: examples/blue-green as a user copies it (its compose file, its
Caddyfile, its inventory's settings for `web`), with 100 requests a second through Caddy while the playbook deploys.

blue_green loses no request, over four deploys in a row (make bench runs ten) and over a deploy whose image never
becomes healthy. recreate, on the same example and proxy, leaves the service without an answer while the new
container boots (the slow image listens four seconds after its start): that gap is what makes blue_green's figures
mean something. Each test prints its figures.
"""

from __future__ import annotations

import shutil
import statistics
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import REPO, ComposeProject, Deploy, image_exists

from tests.support.apiserver import free_port
from tests.support.dockercli import containers_of, image, image_id
from tests.support.load import LoadReport, SteadyLoad

pytestmark = pytest.mark.usefixtures("registry")

EXAMPLE = REPO / "examples" / "blue-green"
# Built by tests/rig/up.sh with the example's build-proxy.sh: Debian's caddy 2.6.
PROXY_IMAGE = "deploytest/caddy:2.6"
RATE = 100
# The example's settings of `web` with a shorter drain than its 3 s: the proxy re-resolves every second, so one is
# enough, and the deploys stay short.
TEST_SETTINGS = {"drain_seconds": 1, "health_timeout": 20}
# How long the load goes on after a deploy returned, to see who answers once it is over.
SETTLE_SECONDS = 0.5


def version_of(reference: str) -> str:
    """What a test image answers on /version: `slow-v2` for .../deploytest/slow:v2."""
    repository, _, tag = reference.rpartition(":")
    return f"{repository.rsplit('/', 1)[-1]}-{tag}"


class ExampleProject(ComposeProject):
    """A copy of examples/blue-green under a project name, images and proxy port of its own (in a `.env` file, which
    compose reads), and an inventory with the example's settings of `web`, TEST_SETTINGS and `strategy` over them."""

    def __init__(self, root: Path, strategy: str):
        self.root = root
        self.name = f"zd-{uuid.uuid4().hex[:10]}"
        self.dir = root / "project"
        shutil.copytree(EXAMPLE, self.dir)
        self.compose_file = self.dir / "compose.yaml"
        self.pin_file = self.dir / "compose.deploy.yml"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/version"
        variables = {
            "COMPOSE_PROJECT_NAME": self.name,
            "PROXY_IMAGE": PROXY_IMAGE,
            "PROXY_PORT": str(self.port),
            "WEB_IMAGE": image("slow", "v1"),
        }
        (self.dir / ".env").write_text("".join(f"{name}={value}\n" for name, value in variables.items()))
        self.inventory = root / "inventory.yml"
        self.state_dir = root / "state"
        example = yaml.safe_load((EXAMPLE / "inventory.yml").read_text())
        web = example["all"]["hosts"]["localhost"]["deploy_services"]["web"]
        self.settings = {"web": {**web, **TEST_SETTINGS, "strategy": strategy}}
        self.write_inventory({"localhost": {"deploy_compose_dir": str(self.dir), "deploy_services": self.settings}})

    def compose(self, *args: str, files: tuple[str, ...] = ("compose.yaml",)) -> str:
        return super().compose(*args, files=files)

    def start(self) -> None:
        """The proxy and web up, web healthy, and the proxy answering with web's version."""
        self.compose("up", "-d", "--quiet-pull", "--wait", "--wait-timeout", "30")
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(self.url, timeout=1).text.strip() == version_of(image("slow", "v1")):
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the proxy does not answer on {self.url}"
            time.sleep(0.1)

    def web_containers(self) -> list[dict[str, Any]]:
        """Every container of `web`, running or not, as `docker inspect` shows it."""
        return containers_of(self.name, "web")


@dataclass
class Measured:
    """One deploy under load: its run, the requests that started while it ran, those of the SETTLE_SECONDS after,
    each failed request of both as (seconds from the deploy's start, what came back), to be read beside the run's
    steps when one fails, and the service's containers once it was over (`docker inspect`)."""

    deploy: Deploy
    during: LoadReport
    after: LoadReport
    failed_at: list[tuple[float, str]]
    containers: list[dict[str, Any]]


@dataclass
class Strategy:
    """What one strategy's project went through: the image it served first, its deploys under one load and what
    that load saw over all of them."""

    project: ExampleProject
    serving: list[dict[str, Any]]
    runs: list[Measured]
    whole: LoadReport


def deploy_under_load(project: ExampleProject, load: SteadyLoad, reference: str) -> Measured:
    began = load.mark()
    deploy = project.deploy("web", reference)
    ended = load.mark()
    time.sleep(SETTLE_SECONDS)
    failed_at = [
        (round(sample.started - began, 2), sample.answer)
        for sample in list(load.samples)
        if sample.started >= began and not sample.ok
    ]
    return Measured(deploy, load.report(began, ended), load.report(ended), failed_at, project.web_containers())


def under_load(project: ExampleProject, references: list[str]) -> Strategy:
    serving = project.web_containers()
    with SteadyLoad(project.url, rate=RATE) as load:
        began = load.mark()
        runs = [deploy_under_load(project, load, reference) for reference in references]
        return Strategy(project, serving, runs, load.report(began))


def show(capsys: pytest.CaptureFixture[str], strategy: str, measured: Strategy) -> None:
    """The figures on the terminal, captured or not: what the test measured is worth reading when it passes."""
    whole, gaps = measured.whole, [run.during.longest_gap for run in measured.runs]
    with capsys.disabled():
        print(
            f"\n{strategy}: {len(measured.runs)} deploys, {whole.requests} requests at {whole.rate:.0f}/s,"
            f" {whole.failed} failed {dict(whole.failures)}, longest gap {max(gaps):.2f} s"
            f" (median {statistics.median(gaps):.2f} s)"
        )


# What each strategy's project goes through; blue_green's second load is a deploy that never becomes healthy, on the
# project its deploys left. Four in a row are each version replacing the other twice; bench/zero_downtime.py runs ten.
BLUE_GREEN_DEPLOYS = [image("slow", version) for version in ["v2", "v3"] * 2]
NEVER_HEALTHY = [image("deaf", "v1")]
RECREATE_DEPLOYS = [image("slow", "v2")]


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory, registry: str) -> Iterator[dict[str, Strategy | str]]:
    """blue_green and recreate in one run, each on its own copy of the example, proxy and load; a strategy whose
    run raised is its traceback."""
    if not image_exists(PROXY_IMAGE):
        pytest.fail(f"no {PROXY_IMAGE} image (run tests/rig/up.sh)", pytrace=False)
    root = tmp_path_factory.mktemp("zero-downtime")
    projects: list[ExampleProject] = []
    outcomes: dict[str, Strategy | str] = {}

    def run(strategy: str, *loads: list[str]) -> None:
        names = [strategy, f"{strategy}, rolled back"][: len(loads)]
        (root / strategy).mkdir()
        try:
            projects.append(project := ExampleProject(root / strategy, strategy))
            project.start()
            for name, references in zip(names, loads, strict=True):
                outcomes[name] = under_load(project, references)
        except BaseException:
            for name in names:
                outcomes.setdefault(name, traceback.format_exc())

    # One after the other: run side by side, on two cores already busy with the other worker's tests, blue_green's
    # first deploy twice took over 30 s and Caddy answered a request 502 after its 2 s of retries.
    run("blue_green", BLUE_GREEN_DEPLOYS, NEVER_HEALTHY)
    run("recreate", RECREATE_DEPLOYS)
    yield outcomes
    for project in projects:
        project.tear_down()


def strategy(measured: dict[str, Strategy | str], name: str) -> Strategy:
    outcome = measured[name]
    if isinstance(outcome, str):
        pytest.fail(f"{name} failed:\n{outcome}", pytrace=False)
    return outcome


def test_blue_green_deploys_in_a_row_through_the_proxy_lose_no_request(measured, capsys):
    blue_green = strategy(measured, "blue_green")
    show(capsys, "blue_green", blue_green)

    serving = version_of(image("slow", "v1"))
    for reference, run in zip(BLUE_GREEN_DEPLOYS, blue_green.runs, strict=True):
        assert run.deploy.rc == 0, run.deploy.stdout
        assert run.deploy.result["outcome"] == "succeeded"
        assert len(run.containers) == 1, [container["Name"] for container in run.containers]
        assert run.containers[0]["Image"] == image_id(reference)
        # Both answered while the deploy ran, and only the new one once it was over.
        assert set(run.during.answers) == {serving, version_of(reference)}, run.during.answers
        assert set(run.after.answers) == {version_of(reference)}, run.after.answers
        serving = version_of(reference)
    whole = blue_green.whole
    assert whole.requests >= 0.9 * RATE * whole.seconds, "the load did not keep its rate"
    assert whole.failed == 0, [(run.failed_at, run.deploy.result["steps"]) for run in blue_green.runs if run.failed_at]


def test_a_blue_green_deploy_that_never_becomes_healthy_is_rolled_back_without_a_failed_request(measured, capsys):
    rolled_back = strategy(measured, "blue_green, rolled back")
    show(capsys, "blue_green, rolled back", rolled_back)

    (run,) = rolled_back.runs
    (old,) = rolled_back.serving
    assert run.deploy.rc != 0
    assert run.deploy.result["outcome"] == "rolled_back"
    assert [container["Id"] for container in run.containers] == [old["Id"]]
    assert rolled_back.whole.failed == 0, (run.failed_at, run.deploy.result["steps"])
    assert set(rolled_back.whole.answers) == {version_of(BLUE_GREEN_DEPLOYS[-1])}, rolled_back.whole.answers


def test_recreate_through_the_same_proxy_leaves_no_answer_while_the_new_container_boots(measured, capsys):
    recreate = strategy(measured, "recreate")
    show(capsys, "recreate", recreate)

    for reference, run in zip(RECREATE_DEPLOYS, recreate.runs, strict=True):
        assert run.deploy.rc == 0, run.deploy.stdout
        assert [container["Image"] for container in run.containers] == [image_id(reference)]
    # The slow image listens four seconds after its start: longer than the proxy retries (lb_try_duration 2s).
    assert min(run.during.longest_gap for run in recreate.runs) > 2.0
