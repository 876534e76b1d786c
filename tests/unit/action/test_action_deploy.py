"""The GitHub Action: action.yml's shape, and action/deploy.py against a fake API on loopback."""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from fakeapi import (
    DEPLOYMENT_ID,
    HOSTILE,
    HOSTILE_ESCAPED,
    SECRET,
    STEPS,
    FakeApi,
    hostile_record,
    progressing,
    record,
    serving,
    unprintable,
)

import api.signature
from api.signature import is_valid

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "action" / "deploy.py"
ACTION = yaml.safe_load((REPO / "action.yml").read_text())
WORKFLOW = yaml.safe_load((REPO / "docs" / "github-actions-deployment-api.yml").read_text())


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("action_deploy", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


action_deploy = load_script()


@pytest.fixture
def fake_api(monkeypatch) -> Iterator[FakeApi]:
    monkeypatch.setattr(action_deploy, "POLL_INTERVAL", 0.01)
    yield from serving()


@pytest.fixture
def runner(tmp_path, fake_api):
    """The environment action.yml gives the script, with $GITHUB_OUTPUT and $GITHUB_STEP_SUMMARY files."""
    environ = {
        "INPUT_URL": fake_api.url,
        "INPUT_SECRET": SECRET,
        "INPUT_SERVICE": "portal",
        "INPUT_IMAGE": "acme/portal:1.4.2",
        "INPUT_REPOSITORY": "acme/portal",
        "INPUT_COMMIT": "abc123",
        "INPUT_MESSAGE": "Update homepage\n\nWith a body.\n",
        "INPUT_WAIT": "true",
        "INPUT_TIMEOUT": "900",
        "GITHUB_OUTPUT": str(tmp_path / "output"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"),
    }

    def run(**inputs: str) -> tuple[int, str, dict[str, str]]:
        stream = io.StringIO()
        code = action_deploy.main({**environ, **inputs}, stream)
        log = stream.getvalue()
        output_file = tmp_path / "output"
        lines = output_file.read_text().splitlines() if output_file.exists() else []
        output_file.unlink(missing_ok=True)
        shown = [line for line in log.splitlines() if SECRET in line]
        assert shown in ([], [f"::add-mask::{SECRET}"]), "only masked"
        return code, log, dict(line.split("=", 1) for line in lines)

    return run


def test_a_successful_deploy_signs_starts_asynchronously_and_follows_each_step_as_a_group(runner, fake_api, tmp_path):
    fake_api.timeline = progressing(record())

    code, log, outputs = runner()

    assert code == 0
    assert outputs == {"deployment-id": DEPLOYMENT_ID, "outcome": "succeeded"}
    (start,) = fake_api.requests("POST")
    assert (start.path, start.query) == ("/deploy", {"wait": ["false"]})
    assert start.body == (
        b'{"service":"portal","image":"acme/portal:1.4.2","repository":"acme/portal","commit":"abc123",'
        b'"message":"Update homepage\\n\\nWith a body.","timestamp":%d}' % start.timestamp
    )
    assert is_valid(SECRET.encode(), start.body, start.headers["X-Hub-Signature-256"], "deploy")
    assert start.headers["User-Agent"].startswith("deploy-action/")
    for read in fake_api.requests("GET"):
        assert read.path == f"/deployments/{DEPLOYMENT_ID}"
        assert is_valid(SECRET.encode(), DEPLOYMENT_ID.encode(), read.headers["X-Hub-Signature-256"], "read")
        assert not is_valid(SECRET.encode(), DEPLOYMENT_ID.encode(), read.headers["X-Hub-Signature-256"], "deploy")
    assert log.startswith(f"::add-mask::{SECRET}\nDeployment {DEPLOYMENT_ID} of portal started\n")
    groups = re.findall(r"^::group::(.*)$", log, flags=re.MULTILINE)
    assert groups == [
        "✓ capture_state: Running acme/portal:1.4.1 (803b769d63c8)",
        "✓ pull_image: Pulled acme/portal:1.4.2: new image 99a472288b48",
        "✓ compose_up: Container recreated",
        "✓ health_check: Container is healthy",
        "✓ cleanup: Kept 1 previous image",
    ]
    assert log.count("::endgroup::") == 5
    assert log.rstrip().endswith("::notice title=Deployed portal::portal runs acme/portal:1.4.2 in 11.8 s")
    summary = (tmp_path / "summary").read_text()
    assert summary.startswith("### deploy of portal: succeeded\n")
    assert "| health_check | ✓ | Container is healthy |" in summary


def test_a_rolled_back_deploy_fails_the_step_with_the_error_and_the_log_tail(runner, fake_api):
    steps = [*STEPS[:3], {"step": "health_check", "success": False, "detail": "Container is restarting"}]
    logs = "starting\n::error::forged by the container\nfatal: configuration file /etc/app.conf not found"
    fake_api.timeline = progressing(
        record("rolled_back", steps, error="Container is restarting: it stopped 1 time(s)", logs=logs)
    )

    code, log, outputs = runner()

    assert code == 1
    assert outputs == {"deployment-id": DEPLOYMENT_ID, "outcome": "rolled_back"}
    assert "::group::✗ health_check: Container is restarting\n" in log
    assert (
        "::error title=Deploy of portal%3A rolled_back::The deploy of portal failed and was rolled back: the "
        "service runs the previous image again in 11.8 s: Container is restarting: it stopped 1 time(s)\n"
    ) in log
    assert "::group::Container logs (last 3 of 3 lines)\n" in log
    # What the container wrote is never read as a workflow command.
    before, after = log.split("\n::error::forged by the container\n")
    token = re.findall(r"^::stop-commands::(\w+)$", before, flags=re.MULTILINE)[-1]
    assert f"::{token}::" not in before and f"\n::{token}::\n" in after


@pytest.mark.parametrize(
    ("inputs", "answer", "message"),
    [
        ({"INPUT_SERVICE": "ghost"}, (400, {"detail": "Service 'ghost' not allowed. Allowed: portal"}), "400: Service"),
        ({"INPUT_SECRET": "wrong-" + "x" * 40}, None, "403: Invalid signature (the secret is not the API's"),
        ({}, (409, {"detail": "A deployment of 'portal' is already running"}), "409: A deployment of 'portal'"),
        ({}, (422, {"detail": ["image: not a valid Docker image reference"]}), "422: image: not a valid Docker"),
        ({}, (403, {"detail": "This signed request was already received: sign a new one"}), "403: This signed req"),
    ],
    ids=["not-allowed", "wrong-secret", "conflict", "validation", "replayed"],
)
def test_a_refusal_fails_the_step_with_exit_3(runner, fake_api, inputs, answer, message):
    fake_api.start_answer = answer

    code, log, outputs = runner(**inputs)

    assert code == 3
    assert outputs == {"outcome": "rejected"}
    assert re.search(r"^::error title=The deployment API refused \w+::" + re.escape(message), log, re.MULTILINE)
    if message.startswith("403: This"):
        assert "the secret is not" not in log, "only an invalid signature blames the secret"
    assert fake_api.requests("GET") == []


def test_an_unreachable_api_fails_the_step_with_exit_4(runner, fake_api):
    code, log, outputs = runner(INPUT_URL=fake_api.url.rsplit(":", 1)[0] + ":9")

    assert code == 4
    assert outputs == {}
    assert "::error title=The deployment API did not answer::POST http" in log


def test_a_redirect_is_not_followed_and_fails_the_step_with_exit_4(runner, fake_api):
    fake_api.start_answer = (301, {})
    fake_api.extra_headers = {"Location": "https://deploy.example.com/deploy"}

    code, log, _ = runner()

    assert code == 4
    assert "redirects to https://deploy.example.com/deploy: set the url input to where it points" in log
    assert len(fake_api.seen) == 1


def test_a_deploy_still_running_at_the_timeout_fails_the_step_with_exit_4(runner, fake_api):
    fake_api.timeline = [record("running", STEPS[:2], current_step="compose_up")]

    code, log, outputs = runner(INPUT_TIMEOUT="0.2")

    assert code == 4
    assert outputs == {"deployment-id": DEPLOYMENT_ID, "outcome": "running"}
    assert "was still running when the timeout ran out; it goes on" in log


def test_a_moment_without_answers_is_a_warning_then_the_deploy_is_followed(runner, fake_api):
    fake_api.timeline = progressing(record())
    fake_api.unavailable_reads = 3

    code, log, _ = runner()

    assert code == 0
    assert log.count("::warning::No answer from the deployment API") == 1


def test_wait_false_returns_once_started(runner, fake_api):
    code, _, outputs = runner(INPUT_WAIT="false")

    assert code == 0
    assert outputs == {"deployment-id": DEPLOYMENT_ID, "outcome": "running"}
    assert fake_api.requests("GET") == []


def scheduled_answer(at: str = "2026-12-09T01:00:00Z") -> tuple[int, dict[str, Any]]:
    url = f"/deployments/{DEPLOYMENT_ID}"
    return 202, {
        "deployment_id": DEPLOYMENT_ID,
        "service": "portal",
        "status": "scheduled",
        "at": at,
        "status_url": url,
    }


def test_at_is_signed_and_a_planned_deploy_ends_the_step_scheduled_without_following(runner, fake_api):
    fake_api.start_answer = scheduled_answer()

    code, log, outputs = runner(INPUT_AT="2026-12-09T02:00:00+01:00", INPUT_MESSAGE="", INPUT_REPOSITORY="")

    assert code == 0
    assert outputs == {"deployment-id": DEPLOYMENT_ID, "outcome": "scheduled", "at": "2026-12-09T01:00:00Z"}
    (start,) = fake_api.requests("POST")
    assert start.body == (
        b'{"service":"portal","image":"acme/portal:1.4.2","commit":"abc123","at":"2026-12-09T02:00:00+01:00",'
        b'"timestamp":%d}' % start.timestamp
    )
    assert is_valid(SECRET.encode(), start.body, start.headers["X-Hub-Signature-256"], "deploy")
    assert fake_api.requests("GET") == [], "nothing to follow before its time"
    assert log.rstrip().endswith(
        f"::notice title=Deploy of portal scheduled::Deployment {DEPLOYMENT_ID} of portal planned for "
        f"2026-12-09T01:00:00Z; cancel it until then with: deployctl cancel {DEPLOYMENT_ID}"
    )


def test_queue_is_signed_and_a_deploy_queued_to_its_window_ends_the_step_scheduled(runner, fake_api):
    fake_api.start_answer = scheduled_answer()

    code, _, outputs = runner(
        INPUT_QUEUE="true", INPUT_IMAGE="", INPUT_MESSAGE="", INPUT_REPOSITORY="", INPUT_COMMIT=""
    )

    assert (code, outputs["outcome"], outputs["at"]) == (0, "scheduled", "2026-12-09T01:00:00Z")
    (start,) = fake_api.requests("POST")
    assert start.body == b'{"service":"portal","queue":true,"timestamp":%d}' % start.timestamp


def test_a_deploy_outside_its_window_fails_the_step_with_exit_3_and_says_how_to_queue(runner, fake_api):
    detail = "'portal' deploys only in its deploy window * 2-5 * * * (UTC); it opens next at 2026-12-09T02:00:00Z"
    fake_api.start_answer = (423, {"detail": detail})

    code, log, outputs = runner()

    assert (code, outputs) == (3, {"outcome": "rejected"})
    assert log.rstrip().endswith(
        f"::error title=The deployment API refused portal::423: {detail} (outside the service's deploy window: "
        "queue: true plans the deploy for its opening)"
    )


def test_an_api_that_ignored_at_and_started_the_deploy_fails_the_step(runner, fake_api):
    started = {"deployment_id": DEPLOYMENT_ID, "service": "portal", "status": "running", "status_url": "/x"}
    fake_api.start_answer = (202, started)

    code, log, outputs = runner(INPUT_AT="2026-12-09T02:00:00+01:00")

    assert (code, outputs) == (4, {"deployment-id": DEPLOYMENT_ID, "outcome": "running"})
    assert "it does not know `at`" in log
    assert fake_api.requests("GET") == []


def test_empty_optional_inputs_are_left_out_of_the_body(runner, fake_api):
    runner(INPUT_IMAGE="", INPUT_REPOSITORY="", INPUT_COMMIT="", INPUT_MESSAGE="  ")

    (start,) = fake_api.requests("POST")
    assert start.body == b'{"service":"portal","timestamp":%d}' % start.timestamp


def test_the_environment_input_is_sent(runner, fake_api):
    runner(INPUT_IMAGE="", INPUT_REPOSITORY="", INPUT_COMMIT="", INPUT_MESSAGE="", INPUT_ENVIRONMENT="production")

    (start,) = fake_api.requests("POST")
    assert start.body == b'{"service":"portal","environment":"production","timestamp":%d}' % start.timestamp


def test_each_start_signs_the_time_it_is_sent_and_a_clock_far_off_is_refused(fake_api):
    inputs = action_deploy.Inputs.from_environment(
        {"INPUT_URL": fake_api.url, "INPUT_SECRET": SECRET, "INPUT_SERVICE": "portal"}
    )
    now = time.time()
    clock = iter([now, now + 1, now - 3600])

    assert action_deploy.start(inputs, clock=lambda: next(clock))["deployment_id"] == DEPLOYMENT_ID
    assert action_deploy.start(inputs, clock=lambda: next(clock))["deployment_id"] == DEPLOYMENT_ID
    with pytest.raises(action_deploy.Refused) as refusal:
        action_deploy.start(inputs, clock=lambda: next(clock))

    first, second, stale = fake_api.requests("POST")
    assert (first.timestamp, second.timestamp, stale.timestamp) == (int(now), int(now + 1), int(now - 3600))
    assert first.body != second.body, "the same deploy asked for again is a new request, signed anew"
    assert refusal.value.status == 403 and "not within 5 s of now" in str(refusal.value.detail)
    assert len(fake_api.problems) == 1, "the fake refused the stale one, as the API would"
    fake_api.problems.clear()


def test_a_secret_list_signs_with_its_first_entry_and_masks_every_entry(runner, fake_api):
    old = "old-secret-" + "9" * 32
    fake_api.timeline = progressing(record())

    code, log, _ = runner(INPUT_SECRET=f" {SECRET} , {old} ")

    assert code == 0
    assert log.startswith(f"::add-mask::{SECRET}\n::add-mask::{old}\nDeployment {DEPLOYMENT_ID}")
    assert log.count(old) == 1
    (start,) = fake_api.requests("POST")
    assert is_valid(SECRET.encode(), start.body, start.headers["X-Hub-Signature-256"])
    for read in fake_api.requests("GET"):
        assert is_valid(SECRET.encode(), DEPLOYMENT_ID.encode(), read.headers["X-Hub-Signature-256"], "read")

    code, log, _ = runner(INPUT_SECRET=f"{old},{SECRET}")
    assert code == 3, "only the first entry signs"
    assert "403: Invalid signature (the secret is not the API's WEBHOOK_SECRET)" in log


@pytest.mark.parametrize(
    ("headers", "printed"),
    [({"Retry-After": "120"}, "(too many requests: try again in 120 s)"), ({}, "(too many requests: try again later)")],
    ids=["retry-after", "without-retry-after"],
)
def test_too_many_requests_fail_the_step_with_exit_3_and_the_seconds_to_wait(runner, fake_api, headers, printed):
    fake_api.start_answer = (429, {"detail": "Too many deploys of 'portal' (30 per 1 hour); retry in 120 s"})
    fake_api.extra_headers = headers

    code, log, outputs = runner()

    assert code == 3
    assert outputs == {"outcome": "rejected"}
    assert (
        "::error title=The deployment API refused portal::429: Too many deploys of 'portal' (30 per 1 hour); "
        f"retry in 120 s {printed}\n"
    ) in log
    assert len(fake_api.seen) == 1, "not tried again"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"INPUT_URL": ""}, "the input 'url' is required"),
        ({"INPUT_URL": "deploy.example.com"}, "the input 'url' must start with https://"),
        ({"INPUT_SECRET": ""}, "the input 'secret' is required"),
        ({"INPUT_SECRET": " , "}, "the input 'secret' is required"),
        ({"INPUT_SERVICE": " "}, "the input 'service' is required"),
        ({"INPUT_WAIT": "sometimes"}, "the input 'wait' must be true or false"),
        ({"INPUT_QUEUE": "later"}, "the input 'queue' must be true or false"),
        ({"INPUT_TIMEOUT": "soon"}, "the input 'timeout' must be a number of seconds"),
    ],
)
def test_a_missing_or_malformed_input_exits_2(runner, fake_api, inputs, message):
    code, log, _ = runner(**inputs)

    assert code == 2
    assert f"::error title=Deploy::{message}" in log
    assert fake_api.seen == []


def imported_modules(path: Path) -> set[str]:
    """The modules a file imports, as written (`api.signature`, `json`): Python 3.9's grammar, or SyntaxError."""
    tree = ast.parse(path.read_text(), feature_version=(3, 9))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return imported | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


def test_the_script_needs_python_3_9_s_standard_library_and_two_api_modules_that_need_nothing_more():
    """A runner's python3 runs it: the standard library, api.signature (one signing scheme, the API's) and api.text,
    which need nothing but the standard library themselves."""
    standard = sys.stdlib_module_names | {"__future__"}
    ours = {name for name in imported_modules(SCRIPT) if name.split(".")[0] not in standard}
    assert ours == {"api.signature", "api.text"}
    for path in (REPO / "api" / "__init__.py", REPO / "api" / "signature.py", REPO / "api" / "text.py"):
        outside = {name for name in imported_modules(path) if name.split(".")[0] not in standard}
        assert outside == set(), f"{path.name} imports {outside}"
    assert action_deploy.sign is api.signature.sign


def test_the_script_finds_the_repository_s_modules_beside_it_with_nothing_else_on_the_path(tmp_path):
    """As a runner starts it: python3 <checkout>/action/deploy.py from another directory, no site-packages."""
    completed = subprocess.run(
        [sys.executable, "-I", "-S", str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True, env={}
    )
    assert (completed.returncode, completed.stdout) == (2, "::error title=Deploy::the input 'url' is required\n")


def test_action_yml_inputs_outputs_and_a_step_that_takes_inputs_only_from_its_environment():
    inputs = ACTION["inputs"]
    assert set(inputs) == {
        "url",
        "secret",
        "service",
        "image",
        "environment",
        "repository",
        "commit",
        "message",
        "wait",
        "timeout",
        "at",
        "queue",
    }
    assert {name for name, spec in inputs.items() if spec.get("required")} == {"url", "secret", "service"}
    assert inputs["repository"]["default"] == "${{ github.repository }}"
    assert inputs["commit"]["default"] == "${{ github.sha }}"
    assert (inputs["wait"]["default"], inputs["timeout"]["default"]) == ("true", "900")
    assert (inputs["at"]["default"], inputs["queue"]["default"]) == ("", "false")
    assert set(ACTION["outputs"]) == {"deployment-id", "outcome", "at"}
    assert ACTION["runs"]["using"] == "composite"
    (step,) = ACTION["runs"]["steps"]
    assert "${{" not in step["run"], "inputs reach the shell through env, never inside the script"
    assert step["env"] == {f"INPUT_{name.upper()}": f"${{{{ inputs.{name} }}}}" for name in inputs}
    for output in ACTION["outputs"].values():
        assert output["value"].startswith(f"${{{{ steps.{step['id']}.outputs.")


def deploy_step(workflow: dict[str, Any]) -> dict[str, Any]:
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    (step,) = [step for step in steps if "with" in step and "secret" in step["with"]]
    return step


def test_the_documented_workflow_builds_pushes_and_deploys_with_the_action():
    step = deploy_step(WORKFLOW)
    assert set(step["with"]) <= set(ACTION["inputs"])
    assert step["with"]["url"] == "${{ secrets.DEPLOY_URL }}"
    assert step["with"]["secret"] == "${{ secrets.DEPLOY_WEBHOOK_SECRET }}"
    assert {"service", "image"} <= set(step["with"])
    text = (REPO / "docs" / "github-actions-deployment-api.yml").read_text()
    assert "ghcr.io" in text and "docker/build-push-action" in text and "packages: write" in text


def test_what_the_api_and_the_containers_wrote_is_printed_escaped(runner, fake_api, tmp_path):
    final = hostile_record()
    fake_api.timeline = progressing(final)

    code, log, outputs = runner()

    assert code == 1
    summary = (tmp_path / "summary").read_text()
    assert unprintable(log) == [] and unprintable(summary) == [], "no control character but the line break"
    assert unprintable("".join(outputs.values())) == []
    groups = re.findall(r"^::group::(.*)$", log, flags=re.MULTILINE)
    assert (
        groups[3] == f"✓ [{HOSTILE_ESCAPED}web-1] {HOSTILE_ESCAPED}health_check: {HOSTILE_ESCAPED}Container is healthy"
    )
    # Each step's JSON, inside its group, reads back to the step.
    bodies = re.findall(r"^::stop-commands::(\w+)\n(.*?)\n::\1::$", log, flags=re.MULTILINE | re.DOTALL)
    assert [json.loads(body) for _, body in bodies[:5]] == final["steps"]
    assert (
        f"::error title=Deploy of {HOSTILE_ESCAPED}portal%3A rolled_back::The deploy of {HOSTILE_ESCAPED}portal failed "
        f"and was rolled back: the service runs the previous image again in 11.8 s: {HOSTILE_ESCAPED}Container is "
        "restarting\n"
    ) in log
    assert bodies[5][1].splitlines() == [f"{HOSTILE_ESCAPED}log line {number}" for number in (1, 2, 3)]
    assert f"| {HOSTILE_ESCAPED}health_check | ✓ | {HOSTILE_ESCAPED}Container is healthy |" in summary
    assert f"**Error:** {HOSTILE_ESCAPED}Container is restarting" in summary


def test_refusals_and_inputs_are_printed_escaped(runner, fake_api):
    fake_api.start_answer = (422, {"detail": [f"message: {HOSTILE}"]})

    code, log, _ = runner(INPUT_SERVICE=f"portal{HOSTILE}\n::error::forged")

    assert code == 3
    assert unprintable(log) == []
    assert (
        f"::error title=The deployment API refused portal{HOSTILE_ESCAPED}\\n%3A%3Aerror%3A%3Aforged::422: message: "
        f"{HOSTILE_ESCAPED}\n"
    ) in log
    assert not re.search(r"^::error::forged", log, flags=re.MULTILINE), "an input's line break makes no command"
