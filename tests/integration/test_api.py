"""The webhook API over HTTP: a real uvicorn server, the real playbook through ansible-runner, the real engine."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from conftest import fingerprint, service

from tests.support.apiserver import READ_TOKEN, SECRET, serving
from tests.support.dockercli import image, image_id

pytestmark = pytest.mark.usefixtures("registry")


@pytest.fixture
def api_server(tmp_path):
    yield from serving(tmp_path)


def test_success_contract(compose_project, api_server):
    project = compose_project({"portal": service(image("healthy", "v1"))})
    project.up()
    server = api_server(project)

    response = server.post(
        {
            "service": "portal",
            "image": image("healthy", "v2"),
            "repository": "acme/portal",
            "commit": "abc123",
            "message": "Update homepage",
        }
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["success", "service", "message", "old_image", "new_image", "steps"]
    assert body["success"] is True and body["service"] == "portal"
    assert body["message"] == "Deployment successful"
    assert (body["old_image"], body["new_image"]) == (image("healthy", "v1"), image("healthy", "v2"))
    assert [step["step"] for step in body["steps"]] == [
        "preflight",
        "capture_state",
        "pull_image",
        "compose_up",
        "health_check",
        "cleanup",
    ]
    assert body["steps"][1]["image"] == image("healthy", "v1")
    assert body["steps"][4]["running"] is True
    assert project.container("portal")["Image"] == image_id(image("healthy", "v2"))
    log = server.log_file.read_text()
    assert "🚀 Deployment Started: portal" in log and "✅ Deployment Successful!" in log


@pytest.mark.parametrize(
    ("broken", "error", "log_line"),
    [
        ("crash", "Container is restarting", "fatal: configuration file /etc/app.conf not found"),
        ("unhealthy", "Container is unhealthy", "waiting for a database that never comes"),
    ],
    ids=["crash", "unhealthy"],
)
def test_failure_rolls_back_with_logs(compose_project, api_server, broken, error, log_line):
    project = compose_project({"portal": service(image("healthy", "v1"))}, {"portal": {"health_timeout": 30}})
    project.up()
    server = api_server(project)

    response = server.post({"service": "portal", "image": image(broken, "v1")})

    assert response.status_code == 500, response.text
    body = response.json()
    assert list(body) == ["success", "service", "error", "logs", "steps"]
    assert body["success"] is False and body["service"] == "portal"
    assert body["error"].startswith(error)
    assert log_line in body["logs"]
    rollback = body["steps"][-1]
    assert rollback["step"] == "rollback" and rollback["success"] is True and rollback["rolled_back"] is True
    container = project.container("portal")
    assert container["Image"] == image_id(image("healthy", "v1"))
    assert container["State"]["Health"]["Status"] == "healthy"
    assert "⏪ Rolled back to the previous image" in server.log_file.read_text()


def test_pull_failure_touches_nothing(compose_project, api_server):
    project = compose_project({"portal": service(image("healthy", "v1"))})
    project.up()
    server = api_server(project)
    before = fingerprint(project.container("portal"))

    response = server.post({"service": "portal", "image": image("healthy", "no-such-tag")})

    assert response.status_code == 500
    assert [step["step"] for step in response.json()["steps"]] == ["preflight", "capture_state", "pull_image"]
    assert response.json()["steps"][-1]["success"] is False
    assert fingerprint(project.container("portal")) == before


def test_rejections_change_nothing(compose_project, api_server):
    project = compose_project({"portal": service(image("healthy", "v1"))})
    project.up()
    server = api_server(project)
    before = fingerprint(project.container("portal"))
    good = {"service": "portal", "image": image("healthy", "v2")}

    assert server.post(good, signature=None).status_code == 403
    assert server.post(good, signature="sha256=" + "0" * 64).json() == {"detail": "Invalid signature"}
    assert server.post(good, signature="sha256=nothex").status_code == 403
    assert server.post({"service": "ghost"}).json() == {"detail": "Service 'ghost' not allowed. Allowed: portal"}
    assert server.post(b"{not json").status_code == 400
    assert server.post({"service": "portal", "image": "Bad:Ref!"}).status_code == 422
    assert server.post({"service": ["portal"]}).status_code == 422
    assert server.post({"service": "portal", "message": "m" * 70_000}).status_code == 413

    assert fingerprint(project.container("portal")) == before
    assert not (server.state_dir / "runs").exists(), "no rejected request reached the runner"


def test_same_service_twice_gets_one_409(compose_project, api_server):
    project = compose_project({"portal": service(image("healthy", "v1"))})
    project.up()
    server = api_server(project)
    responses: list[httpx.Response] = []
    first = threading.Thread(
        target=lambda: responses.append(server.post({"service": "portal", "image": image("healthy", "v2")}))
    )
    first.start()
    while not (server.state_dir / "runs").exists():  # the first deploy has reached the runner
        time.sleep(0.05)

    second = server.post({"service": "portal", "image": image("healthy", "v3")})
    first.join(180)

    assert second.status_code == 409
    assert second.json()["detail"].startswith("A deployment of 'portal' is already running")
    assert responses[0].status_code == 200
    assert project.container("portal")["Image"] == image_id(image("healthy", "v2"))


def test_two_services_deploy_in_parallel_and_health_stays_fast(compose_project, api_server):
    project = compose_project({"portal": service(image("healthy", "v1")), "grafana": service(image("plain", "v1"))})
    project.up()
    server = api_server(project)
    responses: dict[str, httpx.Response] = {}
    workers = [
        threading.Thread(
            target=lambda name=name, ref=ref: responses.update({name: server.post({"service": name, "image": ref})})
        )
        for name, ref in (("portal", image("healthy", "v2")), ("grafana", image("plain", "v2")))
    ]
    for worker in workers:
        worker.start()
    while not (server.state_dir / "runs").exists() or len(list((server.state_dir / "runs").iterdir())) < 2:
        time.sleep(0.05)
    health = httpx.get(f"{server.url}/health", timeout=2)
    forged = httpx.post(f"{server.url}/deploy", json={"service": "portal"}, timeout=2)
    for worker in workers:
        worker.join(180)

    assert health.status_code == 200
    assert forged.status_code == 403
    assert responses["portal"].status_code == responses["grafana"].status_code == 200
    assert project.container("portal")["Image"] == image_id(image("healthy", "v2"))
    assert project.container("grafana")["Image"] == image_id(image("plain", "v2"))
    spans = []
    for run_dir in (server.state_dir / "runs").iterdir():
        events = [json.loads(path.read_text()) for path in run_dir.glob("artifacts/*/job_events/*.json")]
        created = sorted(event["created"] for event in events)
        spans.append((created[0], created[-1]))
    (_, first_end), (second_start, _) = sorted(spans)
    assert second_start < first_end, "the second service started before the first had finished"


def test_request_fields_are_never_evaluated_and_the_secret_is_nowhere(compose_project, api_server, tmp_path):
    project = compose_project({"portal": service(image("healthy", "v1"))})
    project.up()
    server = api_server(project)
    canary = tmp_path / "evaluated"
    template = "{{ lookup('ansible.builtin.pipe', 'touch " + str(canary) + "') }}"

    response = server.post({"service": "portal", "repository": template, "commit": "{% raw %}x", "message": template})

    assert response.status_code == 200, response.text
    assert not canary.exists()
    run_dir = next((server.state_dir / "runs").iterdir())
    published = (run_dir / "env" / "extravars").read_text()
    # Every string is data: the whole mapping is tagged !unsafe, and each string is quoted.
    assert published.startswith("!unsafe\n")
    for field in ("repository", "commit", "message"):
        assert f"  {field}: " + json.dumps(template if field != "commit" else "{% raw %}x") in published
    files = [path for path in server.state_dir.rglob("*") if path.is_file()] + [server.log_file]
    assert len(files) > 5
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), f"the webhook secret is in {path}"
        assert READ_TOKEN.encode() not in path.read_bytes(), f"the read token is in {path}"
