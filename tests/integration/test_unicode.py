"""Any Unicode in a request's metadata is data: it deploys, is recorded, and reaches the playbook as validated."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from conftest import PLAYBOOK, service
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from api.models import DeployRequest
from api.runner import deploy_extravars, run_playbook
from tests.support.apiserver import serving
from tests.support.dockercli import image, image_id

pytestmark = pytest.mark.usefixtures("registry")

# Emoji (beyond the BMP), a line separator, NEL, DEL, a byte order mark and a lone surrogate, which JSON can carry
# ("\ud800") and which is kept as its escape, the six characters \ud800.
MESSAGE = "\U0001f680 release\u2028second line\x85third\x7f \ufeffbom lone\ud800 end"
KEPT_MESSAGE = "\U0001f680 release\u2028second line\x85third\x7f \ufeffbom lone\\ud800 end"


@pytest.fixture
def api_server(tmp_path):
    yield from serving(tmp_path)


def published_request(run_dir: Path, deployment_id: str) -> dict:
    """The request metadata the playbook published (set_stats `deploy`), from the run's job events."""
    events = [
        json.loads(path.read_text(encoding="utf-8"))
        for path in (run_dir / "artifacts" / deployment_id / "job_events").glob("*.json")
    ]
    (stats,) = [event for event in events if event.get("event") == "playbook_on_stats"]
    (result,) = stats["event_data"]["artifact_data"]["deploy"].values()
    return result["request"]


def test_a_deploy_whose_metadata_has_any_unicode_runs_and_keeps_it(compose_project, api_server):
    project = compose_project({"portal": service(image("healthy", "v1"))})
    project.up()
    server = api_server(project)
    body = {
        "service": "portal",
        "image": image("healthy", "v2"),
        "repository": "acme/portal-\U0001f680",
        "commit": "\U0001f389abc123",
        "message": MESSAGE,
    }
    # ASCII-escaped JSON, as most clients send it: the emoji as a surrogate pair, the lone surrogate as "\ud800".
    raw = json.dumps(body, ensure_ascii=True).encode()
    assert b"\\ud83d\\ude80 release" in raw and b"lone\\ud800 end" in raw

    response = server.post(raw)

    assert response.status_code == 200, response.text
    assert project.container("portal")["Image"] == image_id(image("healthy", "v2"))
    deployment_id = response.headers["X-Deployment-Id"]
    record = server.record(deployment_id)
    assert record["outcome"] == "succeeded"
    assert (record["repository"], record["commit"], record["message"]) == (
        "acme/portal-\U0001f680",
        "\U0001f389abc123",
        KEPT_MESSAGE,
    )
    assert published_request(server.state_dir / "runs" / deployment_id, deployment_id) == {
        "id": deployment_id,
        "repository": "acme/portal-\U0001f680",
        "commit": "\U0001f389abc123",
        "message": KEPT_MESSAGE,
    }


# The whole of Unicode, lone surrogates included (drawn on purpose: the whole range seldom gives one).
any_text = st.text(st.characters(exclude_categories=()) | st.characters(categories=["Cs"]), min_size=1, max_size=20)


def test_generated_metadata_reaches_the_playbook_as_it_was_validated(compose_project, tmp_path):
    """A sample of generated metadata through real runs of the deploy playbook (each a redeploy of what runs)."""
    project = compose_project({"portal": service(image("healthy", "v1"))})
    project.up()
    runs = 0

    # Each example is a real run of a few seconds: no shrinking, a failure shows the example as it was drawn.
    @settings(
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=3,
        phases=[Phase.generate],
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(repository=any_text, commit=any_text, message=any_text)
    def deploy(repository: str, commit: str, message: str) -> None:
        nonlocal runs
        runs += 1
        run_id = f"sample-{runs}"
        document = {"service": "portal", "repository": repository, "commit": commit, "message": message}
        request = DeployRequest.model_validate(document)

        run = run_playbook(
            run_id=run_id,
            playbook=PLAYBOOK,
            extravars=deploy_extravars(run_id, request),
            inventory=project.inventory,
            state_dir=tmp_path / "state",
            timeout=120,
            keep_runs=10,
            cancel=threading.Event(),
        )

        assert run.status == "successful", run.output_tail
        (result,) = run.results.values()
        assert result["outcome"] == "succeeded", result
        assert result["request"] == {
            "id": run_id,
            "repository": request.repository,
            "commit": request.commit,
            "message": request.message,
        }

    deploy()

    assert runs == 3
