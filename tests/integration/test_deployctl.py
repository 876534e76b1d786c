"""deployctl as an operator runs it (the installed command, in a process of its own) against the real API,
the real playbook and the real engine; what it says is checked against what the engine runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import httpx
import pytest
from conftest import fingerprint, service

from tests.support.apiserver import READ_TOKEN, SECRET, ApiServer, free_port, serving
from tests.support.dockercli import image, image_id

pytestmark = pytest.mark.usefixtures("registry")

DEPLOYCTL = Path(sys.executable).parent / "deployctl"
STEPS = ["preflight", "capture_state", "pull_image", "compose_up", "health_check", "cleanup"]
# A commit message as a signer may write it: an OSC 52 clipboard write, a CSI, a carriage return, a C1 CSI, NEL and a
# right-to-left override; and as deployctl shows it.
HOSTILE = "Update\x1b]52;c;cm0gLXJmIH4K\x07\x1b[2J\rforged\x9b0m\x85next \u202eevil"
HOSTILE_ESCAPED = r"Update\x1b]52;c;cm0gLXJmIH4K\x07\x1b[2J\rforged\x9b0m\x85next \u202eevil"
BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


@pytest.fixture
def api_server(tmp_path):
    yield from serving(tmp_path)


@pytest.fixture
def deployctl(tmp_path):
    """Run the installed deployctl against a server, from an empty directory (no .env), with only the
    settings given; the secret must appear in nothing it prints."""
    workdir = tmp_path / "operator"
    workdir.mkdir()

    def run(
        server: ApiServer,
        *args: str,
        secret: str | None = SECRET,
        read_token: str | None = None,
        url: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        environment = {
            name: value
            for name, value in os.environ.items()
            if name not in ("WEBHOOK_SECRET", "DEPLOY_URL", "DEPLOY_READ_TOKEN")
        }
        environment["DEPLOY_URL"] = url or server.url
        if secret is not None:
            environment["WEBHOOK_SECRET"] = secret
        if read_token is not None:
            environment["DEPLOY_READ_TOKEN"] = read_token
        completed = subprocess.run(
            [str(DEPLOYCTL), *args], cwd=workdir, env=environment, capture_output=True, text=True, timeout=300
        )
        assert SECRET not in completed.stdout + completed.stderr
        return completed

    return run


def unprintable(text: str) -> list[str]:
    """What a terminal acts on instead of showing, but the line break: C0, DEL, C1, separators, bidi controls."""
    return [
        char
        for char in text
        if char != "\n" and (unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") or char in BIDI_CONTROLS)
    ]


def step_lines(output: str) -> list[str]:
    """The step names of deployctl's step lines ("  ✓ capture_state ..."), in the order printed."""
    return [line.split()[1] for line in output.splitlines() if line.startswith(("  ✓ ", "  ✗ "))]


def test_deploy_crash_history_show_then_rollback(compose_project, api_server, deployctl):
    """A deploy succeeds, a crash rolls back, history and show tell both, and a rollback goes back one more."""
    project = compose_project({"portal": service(image("healthy", "v1"))}, {"portal": {"health_timeout": 30}})
    project.up()
    server = api_server(project)

    ok = deployctl(server, "deploy", "portal", image("healthy", "v2"), "--commit", "c2", "--message", "Update")

    assert ok.returncode == 0, ok.stdout + ok.stderr
    first, *_ = ok.stdout.splitlines()
    assert first.startswith("deploy of portal started: deployment ")
    ok_id = first.rsplit(" ", 1)[-1]
    assert step_lines(ok.stdout) == STEPS, "each step printed once, in order"
    assert "✓ deploy of portal succeeded (" in ok.stdout
    assert f"  now runs  {image('healthy', 'v2')} ({image_id(image('healthy', 'v2'))[7:19]})" in ok.stdout
    assert project.container("portal")["Image"] == image_id(image("healthy", "v2"))

    crashed = deployctl(server, "deploy", "portal", image("crash", "v1"), "--json")

    assert crashed.returncode == 1, crashed.stdout + crashed.stderr
    record = json.loads(crashed.stdout)
    assert (record["outcome"], record["http_status"], record["trigger"]) == ("rolled_back", 500, "cli")
    assert record["steps"][-1]["step"] == "rollback" and record["steps"][-1]["rolled_back"] is True
    assert "fatal: configuration file /etc/app.conf not found" in record["logs"]
    assert project.container("portal")["Image"] == image_id(image("healthy", "v2")), "the engine agrees"

    history = deployctl(server, "history", "--service", "portal", read_token=READ_TOKEN)

    assert history.returncode == 0, history.stderr
    header, newest, oldest, footer = history.stdout.splitlines()
    assert header.split() == ["ID", "ACTION", "SERVICE", "OUTCOME", "STARTED", "(UTC)", "DURATION", "NEW", "IMAGE"]
    assert newest.split()[:4] == [record["id"], "deploy", "portal", "rolled_back"]
    assert newest.endswith(image("crash", "v1"))
    assert oldest.split()[:4] == [ok_id, "deploy", "portal", "succeeded"]
    assert footer == "1-2 of 2, newest first"

    shown = deployctl(server, "show", ok_id, read_token=READ_TOKEN)

    assert shown.returncode == 0, shown.stderr
    assert f"deployment   {ok_id}\n" in shown.stdout and "outcome      succeeded\n" in shown.stdout
    assert "commit       c2\n" in shown.stdout and "message      Update\n" in shown.stdout
    assert step_lines(shown.stdout) == STEPS
    # Without the read token, signed over read: and the id with the webhook secret: the same record.
    signed = deployctl(server, "show", record["id"], "--json")
    assert signed.returncode == 0, signed.stderr
    assert json.loads(signed.stdout) == server.record(record["id"])

    # The crash left v2 running; the previous image of the service's history is v1.
    back = deployctl(server, "rollback", "portal", "--message", "v2 breaks logins")

    assert back.returncode == 0, back.stdout + back.stderr
    assert "✓ rollback of portal succeeded" in back.stdout
    container = project.container("portal")
    assert container["Image"] == image_id(image("healthy", "v1"))
    assert container["State"]["Health"]["Status"] == "healthy"
    newest = json.loads(deployctl(server, "history", "--limit", "1", "--json", read_token=READ_TOKEN).stdout)
    (rollback,) = newest["items"]
    assert (rollback["action"], rollback["outcome"]) == ("rollback", "succeeded")
    assert rollback["message"] == "v2 breaks logins"
    assert (rollback["old_image_id"], rollback["new_image_id"]) == (
        image_id(image("healthy", "v2")),
        image_id(image("healthy", "v1")),
    )


def test_refusals_exit_3_and_an_unreachable_api_exits_4(compose_project, api_server, deployctl):
    project = compose_project({"portal": service(image("healthy", "v1"))})
    project.up()
    before = fingerprint(project.container("portal"))
    server = api_server(project)

    unknown = deployctl(server, "deploy", "ghost", image("healthy", "v2"))
    forged = deployctl(server, "deploy", "portal", image("healthy", "v2"), secret="not-the-secret-" + "x" * 32)
    invalid = deployctl(server, "deploy", "portal", "Not An Image!")
    unreachable = deployctl(server, "deploy", "portal", url=f"http://127.0.0.1:{free_port()}")
    wrong_token = deployctl(server, "history", read_token="not-the-read-token-0000")

    assert (unknown.returncode, unknown.stdout) == (3, ""), unknown.stderr
    assert "refused by the API (400): Service 'ghost' not allowed. Allowed: portal" in unknown.stderr
    assert forged.returncode == 3
    assert "refused by the API (403): Invalid signature" in forged.stderr
    assert invalid.returncode == 3
    assert "refused by the API (422):\n  - image: Value error, not a valid Docker image reference" in invalid.stderr
    assert unreachable.returncode == 4
    assert "the API did not answer: http://127.0.0.1:" in unreachable.stderr
    assert wrong_token.returncode == 3
    assert "refused by the API (401)" in wrong_token.stderr
    assert fingerprint(project.container("portal")) == before, "nothing ran"


def test_a_second_deploy_while_one_runs_is_refused_with_exit_3(compose_project, api_server, deployctl):
    project = compose_project({"portal": service(image("healthy", "v1"))})
    project.up()
    server = api_server(project)

    started = deployctl(server, "deploy", "portal", image("healthy", "v2"), "--no-follow", "--json")
    second = deployctl(server, "deploy", "portal", image("healthy", "v3"))

    assert started.returncode == 0, started.stderr
    deployment_id = json.loads(started.stdout)["deployment_id"]
    assert second.returncode == 3
    assert f"refused by the API (409): A deployment of 'portal' is already running (deployment {deployment_id}" in (
        second.stderr
    )
    assert server.follow(deployment_id)[-1]["outcome"] == "succeeded"
    assert project.container("portal")["Image"] == image_id(image("healthy", "v2"))


def test_what_a_signer_wrote_is_recorded_as_sent_and_printed_escaped(compose_project, api_server, deployctl):
    project = compose_project({"portal": service(image("healthy", "v1"))})
    project.up()
    server = api_server(project)

    deployed = deployctl(server, "deploy", "portal", image("healthy", "v2"), "--message", HOSTILE, "--commit", HOSTILE)

    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    deployment_id = deployed.stdout.splitlines()[0].rsplit(" ", 1)[-1]
    assert server.record(deployment_id)["message"] == HOSTILE, "the API keeps the text as it was signed"
    shown = deployctl(server, "show", deployment_id)
    as_json = deployctl(server, "show", deployment_id, "--json")
    history = deployctl(server, "history", "--json", read_token=READ_TOKEN)
    for completed in (deployed, shown, as_json, history):
        assert completed.returncode == 0, completed.stderr
        assert unprintable(completed.stdout + completed.stderr) == []
    assert f"message      {HOSTILE_ESCAPED}\n" in shown.stdout and f"commit       {HOSTILE_ESCAPED}\n" in shown.stdout
    assert json.loads(as_json.stdout) == server.record(deployment_id)
    assert json.loads(history.stdout)["items"][0]["message"] == HOSTILE
    # As the help's `deployctl show ID --json | jq` reads it (the rig installs jq).
    jq = subprocess.run(["jq", "-c", "."], input=as_json.stdout, capture_output=True, text=True, check=True)
    assert json.loads(jq.stdout) == server.record(deployment_id), "jq reads the same values back"


def test_sign_makes_the_signature_the_api_checks_for_each_purpose_and_no_other(
    compose_project, api_server, deployctl, tmp_path
):
    """deployctl sign --for, as a script sends what it signs with curl: each signature is accepted where it was made
    for, and refused elsewhere with what it was made for."""
    server = api_server(compose_project({"portal": service(image("healthy", "v1"))}))

    def signed(purpose: str, payload: bytes) -> str:
        (tmp_path / "payload").write_bytes(payload)
        completed = deployctl(server, "sign", str(tmp_path / "payload"), "--for", purpose, "--value")
        assert completed.returncode == 0, completed.stderr
        return completed.stdout.strip()

    def body(message: str) -> bytes:
        # A service the inventory does not have: a signature accepted is answered 400, and nothing runs.
        return json.dumps({"service": "ghost", "message": message, "timestamp": int(time.time())}).encode()

    def post(path: str, payload: bytes, signature: str) -> httpx.Response:
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature}
        return httpx.post(f"{server.url}{path}", content=payload, headers=headers, timeout=30)

    def read(deployment_id: str, signature: str) -> httpx.Response:
        return httpx.get(f"{server.url}/deployments/{deployment_id}", headers={"X-Hub-Signature-256": signature})

    rollback, deploy = body("rollback"), body("deploy")
    unknown = "20251127T000000-00000000"
    accepted_rollback = post("/rollback", rollback, signed("rollback", rollback))
    refused_rollback = post("/rollback", deploy, signed("deploy", deploy))
    accepted_read = read(unknown, signed("read", unknown.encode()))
    refused_read = read(unknown, signed("deploy", unknown.encode()))

    assert accepted_rollback.status_code == 400, accepted_rollback.text
    assert "Service 'ghost' not allowed" in accepted_rollback.json()["detail"]
    assert refused_rollback.status_code == 403
    assert refused_rollback.json()["detail"] == (
        "Invalid signature: it was made for POST /deploy, not for POST /rollback"
    )
    assert accepted_read.status_code == 404, accepted_read.text
    assert refused_read.status_code == 401, refused_read.text
