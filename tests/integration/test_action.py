"""The GitHub Action's step as a runner runs it: action.yml's `run:` in bash, with the environment its `env:`
gives from the inputs, a python3 without our packages, a $GITHUB_OUTPUT file, against the real API and engine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from conftest import REPO, fingerprint, service

from tests.support.apiserver import SECRET, ApiServer, serving
from tests.support.dockercli import image, image_id

pytestmark = pytest.mark.usefixtures("registry")

ACTION = yaml.safe_load((REPO / "action.yml").read_text())
EXPRESSION = re.compile(r"\$\{\{\s*([\w.-]+)\s*\}\}")
GITHUB = {"github.repository": "acme/portal", "github.sha": "4d3c2b1a" * 5}


@pytest.fixture
def api_server(tmp_path):
    yield from serving(tmp_path)


@pytest.fixture
def run_action(tmp_path):
    """Run the composite action's step with `with:` inputs; (exit code, log, outputs)."""

    def run(server: ApiServer, **given: str) -> tuple[int, str, dict[str, str]]:
        inputs: dict[str, str] = {}

        def evaluate(text: str) -> str:
            def value(match: re.Match[str]) -> str:
                name = match.group(1)
                if name.startswith("inputs."):
                    return inputs[name.removeprefix("inputs.")]
                return GITHUB[name]

            return EXPRESSION.sub(value, str(text))

        for name, spec in ACTION["inputs"].items():
            inputs[name] = given.pop(name) if name in given else evaluate(spec.get("default", ""))
        assert not given, f"not inputs of action.yml: {given}"
        (step,) = ACTION["runs"]["steps"]
        assert step["shell"] == "bash"
        script = tmp_path / "step.sh"
        script.write_text(step["run"])
        output_file = tmp_path / "github_output"
        output_file.write_text("")
        environment = {
            # A runner's python3, not this virtual environment's: the script needs the standard library only.
            "PATH": os.pathsep.join(
                path for path in os.environ["PATH"].split(os.pathsep) if not path.startswith(sys.prefix)
            ),
            "HOME": os.environ.get("HOME", "/root"),
            "GITHUB_ACTION_PATH": str(REPO),
            "GITHUB_OUTPUT": str(output_file),
            "GITHUB_STEP_SUMMARY": str(tmp_path / "step_summary"),
            **{name: evaluate(value) for name, value in step["env"].items()},
        }
        completed = subprocess.run(
            # How GitHub runs `shell: bash`.
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
        log = completed.stdout + completed.stderr
        secret = inputs["secret"]
        assert log.count(secret) == 1 and log.startswith(f"::add-mask::{secret}\n"), "the secret is only masked"
        outputs = dict(line.split("=", 1) for line in output_file.read_text().splitlines())
        return completed.returncode, log, outputs

    return run


def test_a_successful_deploy_passes_with_its_id_and_outcome(compose_project, api_server, run_action):
    project = compose_project({"portal": service(image("healthy", "v1"))})
    project.up()
    server = api_server(project)

    code, log, outputs = run_action(
        server, url=server.url, secret=SECRET, service="portal", image=image("healthy", "v2"), message="Ship it"
    )

    assert code == 0, log
    assert outputs["outcome"] == "succeeded"
    record = server.record(outputs["deployment-id"])
    assert (record["outcome"], record["new_image_id"]) == ("succeeded", image_id(image("healthy", "v2")))
    # repository and commit: the action's defaults, the workflow's own repository and commit.
    assert (record["repository"], record["commit"]) == (GITHUB["github.repository"], GITHUB["github.sha"])
    assert record["message"] == "Ship it"
    groups = re.findall(r"^::group::[✓✗] (\w+): ", log, flags=re.MULTILINE)
    assert groups == ["preflight", "capture_state", "pull_image", "compose_up", "health_check", "cleanup"]
    assert f"::notice title=Deployed portal::portal runs {image('healthy', 'v2')} in " in log
    assert project.container("portal")["Image"] == image_id(image("healthy", "v2"))


def test_a_rolled_back_deploy_fails_the_step(compose_project, api_server, run_action):
    project = compose_project({"portal": service(image("healthy", "v1"))}, {"portal": {"health_timeout": 30}})
    project.up()
    server = api_server(project)

    code, log, outputs = run_action(server, url=server.url, secret=SECRET, service="portal", image=image("crash", "v1"))

    assert code == 1, log
    assert outputs["outcome"] == "rolled_back"
    assert server.record(outputs["deployment-id"])["outcome"] == "rolled_back"
    assert "::group::✗ health_check: Container is restarting" in log
    assert "::error title=Deploy of portal%3A rolled_back::The deploy of portal failed and was rolled back" in log
    assert "fatal: configuration file /etc/app.conf not found" in log
    assert project.container("portal")["Image"] == image_id(image("healthy", "v1"))


def test_a_refused_deploy_fails_the_step_and_changes_nothing(compose_project, api_server, run_action):
    project = compose_project({"portal": service(image("healthy", "v1"))})
    project.up()
    before = fingerprint(project.container("portal"))
    server = api_server(project)

    not_allowed = run_action(server, url=server.url, secret=SECRET, service="ghost")
    forged = run_action(server, url=server.url, secret="not-the-secret-" + "x" * 32, service="portal")

    assert not_allowed[0] == 3 and not_allowed[2] == {"outcome": "rejected"}
    assert "::error title=The deployment API refused ghost::400: Service 'ghost' not allowed" in not_allowed[1]
    assert forged[0] == 3
    assert "403: Invalid signature (the secret is not the API's WEBHOOK_SECRET)" in forged[1]
    assert fingerprint(project.container("portal")) == before


def test_a_deploy_outside_its_window_is_refused_or_queued_and_at_plans_one(compose_project, api_server, run_action):
    # A window two hours from now: closed at this minute, whatever the time of the run.
    opening = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    window = f"* {opening.hour} * * *"
    project = compose_project({"portal": service(image("healthy", "v1"))}, {"portal": {"deploy_window": window}})
    project.up()
    before = fingerprint(project.container("portal"))
    server = api_server(project)
    common = {"url": server.url, "secret": SECRET, "service": "portal", "image": image("healthy", "v2")}

    refused = run_action(server, **common)
    queued = run_action(server, **common, queue="true")
    planned = run_action(server, **common, at=(opening + timedelta(minutes=5)).isoformat())

    assert refused[0] == 3 and refused[2] == {"outcome": "rejected"}, refused[1]
    assert f"423: 'portal' deploys only in its deploy window {window} (UTC)" in refused[1]
    assert "queue: true plans the deploy for its opening" in refused[1]
    for code, log, outputs in (queued, planned):
        assert (code, outputs["outcome"]) == (0, "scheduled"), log
        record = server.record(outputs["deployment-id"])
        assert (record["outcome"], record["trigger"], record["planned_at"]) == ("scheduled", "webhook", outputs["at"])
    assert queued[2]["at"] == opening.strftime("%Y-%m-%dT%H:%M:%SZ"), "queued to the window's opening"
    assert planned[2]["at"] == (opening + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert fingerprint(project.container("portal")) == before, "nothing ran"
