"""The Docker work of each step (module_utils/) on a fake docker CLI, without an engine, and the deploy module's
documentation against its argument spec."""

from __future__ import annotations

import http.server
import importlib.util
import json
import threading
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from ansible.module_utils import deploy_docker, deploy_history, deploy_image
from ansible.module_utils import deploy_health as health
from ansible.module_utils.deploy_docker import StepError
from fakedocker import FakeDocker

REPO = Path(__file__).resolve().parents[3]
REPOSITORY = "deploy-history/shop/web"
MODULES = sorted(REPO.glob("library/*.py"))


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tag_row(image_id: str, tag: str, created: str = "2026-01-02 03:04:05 +0000 UTC") -> dict[str, str]:
    """A row of `docker images --format '{{json .}}'`: one per tag."""
    return {"ID": image_id, "Repository": REPOSITORY, "Tag": tag, "CreatedAt": created}


def test_history_repository_is_a_valid_path_component():
    assert (
        deploy_history.history_repository("deploy-history", "shop", "Web_Front--end")
        == "deploy-history/shop/web-front-end"
    )
    assert deploy_history.history_repository("deploy-history", "shop", "_api_") == "deploy-history/shop/api"


def test_cli_time_reads_the_engine_seconds_in_any_zone():
    assert deploy_docker.cli_time("2026-01-02 03:04:05 +0000 UTC") == 1767323045
    assert deploy_docker.cli_time("2026-01-02 04:04:05 +0100 CET") == 1767323045


def test_history_is_one_entry_per_image_newest_stamp_first():
    rows = [
        tag_row("sha256:" + "a" * 64, "20260101T000000000000-aaaaaaaaaaaa"),
        tag_row("sha256:" + "a" * 64, "aaaaaaaaaaaa"),
        tag_row("sha256:" + "b" * 64, "20260301T000000000000-bbbbbbbbbbbb"),
        tag_row("sha256:" + "c" * 64, "cccccccccccc", created="2026-01-01 00:00:00 +0000 UTC"),
        tag_row("sha256:" + "d" * 64, "dddddddddddd", created="2026-02-01 00:00:00 +0000 UTC"),
        tag_row("sha256:" + "e" * 64, "<none>"),
    ]

    history = deploy_history.read_history(rows, REPOSITORY)

    assert [(entry["id"][7], entry["stamp"]) for entry in history] == [
        ("b", "20260301T000000000000"),
        ("a", "20260101T000000000000"),
        ("d", ""),  # the older form reads as the oldest; among those, the image built last first
        ("c", ""),
    ]
    assert history[1]["ref"] == f"{REPOSITORY}:20260101T000000000000-aaaaaaaaaaaa", "an image's newest tag counts"
    assert history[2]["created"] == 1769904000


def test_a_tag_that_only_looks_stamped_reads_as_the_older_form():
    rows = [tag_row("sha256:" + "a" * 64, "20260101T000000000000-not-an-id")]

    assert deploy_history.read_history(rows, REPOSITORY)[0]["stamp"] == ""


def test_newest_container_is_the_one_created_last():
    rows = [
        {"ID": "new", "CreatedAt": "2026-01-02 03:04:06 +0000 UTC"},
        {"ID": "old", "CreatedAt": "2026-01-02 03:04:05 +0000 UTC"},
    ]

    assert deploy_docker.newest_container(rows)["ID"] == "new"
    assert deploy_docker.newest_container([]) == {}


def inspected(status: str = "running", restarts: int = 0, health_status: str | None = None, **state: object) -> dict:
    """What `docker container inspect` says of a container, trimmed to what the verdict reads."""
    started = state.pop("StartedAt", "2026-01-02T03:04:05.123456789Z")
    full_state = {"Status": status, "Running": status == "running", "ExitCode": 0, "Error": "", "StartedAt": started}
    if health_status:
        full_state["Health"] = {"Status": health_status, "FailingStreak": 0, "Log": []}
    full_state.update(state)
    return {"State": full_state, "RestartCount": restarts}


def test_health_verdicts_and_their_words():
    start = inspected(health_status="starting")

    def verdict(poll: dict | None) -> tuple[bool, str, str]:
        judged = health.judge("web-1", start, poll, 5, 30)
        return judged["healthy"], judged["status"], judged["detail"]

    assert verdict(None) == (False, "missing", "Container web-1 does not exist")
    assert verdict(inspected("exited", ExitCode=1)) == (
        False,
        "exited",
        "Container failed to start: exited with code 1",
    )
    assert verdict(inspected("dead", ExitCode=137, Error="OOM")) == (
        False,
        "dead",
        "Container failed to start: exited with code 137 (OOM)",
    )
    assert verdict(inspected("restarting", ExitCode=2)) == (
        False,
        "restarting",
        "Container is restarting: it stopped 1 time(s) since it was started (last exit code 2)",
    )
    assert verdict(inspected(restarts=3)) == (
        False,
        "restarting",
        "Container is restarting: it stopped 3 time(s) since it was started",
    )
    assert verdict(inspected(health_status="healthy")) == (True, "healthy", "Container is healthy")
    unhealthy = inspected(health_status="unhealthy")
    unhealthy["State"]["Health"].update(FailingStreak=3, Log=[{"Output": "no database\n"}])
    assert verdict(unhealthy) == (
        False,
        "unhealthy",
        "Container is unhealthy: its HEALTHCHECK failed 3 time(s) in a row (no database)",
    )
    assert verdict(inspected(health_status="starting")) == (
        False,
        "starting",
        "Container not healthy after 30 s (health: starting)",
    )
    assert verdict(inspected(StartedAt="2999-01-01T00:00:00Z")) == (
        False,
        "running",
        "Container not healthy after 30 s (health: no HEALTHCHECK, running)",
    )
    assert verdict(inspected(StartedAt="2000-01-01T00:00:00Z")) == (
        True,
        "running",
        "Container has no HEALTHCHECK and ran 5 s without a restart",
    )


def test_polling_stops_once_the_verdict_is_known():
    start = inspected(health_status="starting")

    assert not health.settled(start, inspected(health_status="starting"), 5)
    assert health.settled(start, inspected(health_status="healthy"), 5)
    assert health.settled(start, inspected(health_status="unhealthy"), 5)
    assert health.settled(start, inspected(health_status="starting", restarts=1), 5)
    assert health.settled(start, inspected("removing"), 5)
    assert health.settled(start, None, 5)
    assert not health.settled(start, inspected(StartedAt="2999-01-01T00:00:00Z"), 5)
    assert health.settled(start, inspected(StartedAt="2000-01-01T00:00:00Z"), 5)


def test_logs_of_both_streams_come_back_in_the_containers_order():
    stdout = "2026-01-02T03:04:05.000000001Z starting\n2026-01-02T03:04:05.000000003Z waiting\n"
    stderr = "2026-01-02T03:04:05.000000002Z warning: slow disk\n2026-01-02T03:04:05.000000004Z fatal: no db\n"

    assert health.merge_logs(stdout, stderr) == "starting\nwarning: slow disk\nwaiting\nfatal: no db"
    assert health.merge_logs("", "") == ""


def test_a_url_that_does_not_answer_2xx_is_described_in_a_few_words():
    assert health.probe("http://127.0.0.1:9/", 1) == (-1, "connection refused")
    assert health.probe("not a url", 1) == (-1, "unknown url type: 'not a url'")


def test_the_answer_of_a_url_is_its_status_and_reason():
    class Answers(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/ok" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert health.probe(f"{base}/ok", 1) == (200, "HTTP 200 OK")
        assert health.probe(f"{base}/down", 1) == (503, "HTTP 503 Service Unavailable")
    finally:
        server.shutdown()


def test_cleanup_keeps_the_newest_previous_images_and_never_one_in_use():
    rows = [
        tag_row("sha256:" + "c" * 64, "20260301T000000000000-cccccccccccc"),  # running
        tag_row("sha256:" + "b" * 64, "20260201T000000000000-bbbbbbbbbbbb"),
        tag_row("sha256:" + "a" * 64, "20260101T000000000000-aaaaaaaaaaaa"),
        tag_row("sha256:" + "u" * 64, "uuuuuuuuuuuu"),
    ]
    history = deploy_history.read_history(rows, REPOSITORY, "")
    current = "sha256:" + "c" * 64

    assert deploy_history.plan(history, current, 1, set()) == (False, ["sha256:" + "a" * 64, "sha256:" + "u" * 64])
    assert deploy_history.plan(history, current, 1, {"sha256:" + "a" * 64}) == (False, ["sha256:" + "u" * 64])
    assert deploy_history.plan(history, current, 3, set()) == (False, [])
    # The running image is stamped again when another image became current after it, or it has no stamp.
    assert deploy_history.plan(history, "sha256:" + "b" * 64, 5, set())[0]
    assert deploy_history.plan(history, "sha256:" + "u" * 64, 5, set())[0]
    assert deploy_history.plan(history, "sha256:" + "n" * 64, 5, set())[0]


def test_cleanup_removes_older_tags_and_spares_images_another_service_keeps():
    kept, shared, alone, current = ("sha256:" + letter * 64 for letter in "ebdc")
    rows = [
        tag_row(current, "cccccccccccc"),
        tag_row(kept, "20260201T000000000000-eeeeeeeeeeee"),
        tag_row(kept, "eeeeeeeeeeee"),
        tag_row(shared, "20260102T000000000000-bbbbbbbbbbbb"),
        tag_row(alone, "20260101T000000000000-dddddddddddd"),
    ]
    history = deploy_history.read_history(rows, REPOSITORY, "")
    restamp, going = deploy_history.plan(history, current, 1, set())
    going_images = [
        {"Id": shared, "RepoTags": [f"{REPOSITORY}:20260102T000000000000-bbbbbbbbbbbb", "deploy-history/other/web:x"]},
        {"Id": alone, "RepoTags": [f"{REPOSITORY}:20260101T000000000000-dddddddddddd", "web:1"]},
    ]

    actions = deploy_history.removals(history, current, restamp, going, going_images, set(), REPOSITORY)

    assert restamp and going == [shared, alone]
    assert actions == [
        (f"{REPOSITORY}:eeeeeeeeeeee", False),  # a kept image keeps only its newest tag
        (f"{REPOSITORY}:cccccccccccc", False),  # the running image's old tag: it has a new stamp now
        (f"{REPOSITORY}:20260102T000000000000-bbbbbbbbbbbb", False),  # another service keeps it
        (alone, True),
    ]
    # A tag a container was created from stays.
    in_use_refs = {f"{REPOSITORY}:cccccccccccc"}
    assert (f"{REPOSITORY}:cccccccccccc", False) not in deploy_history.removals(
        history, current, restamp, going, going_images, in_use_refs, REPOSITORY
    )


def test_among_equal_stamps_the_replaced_image_comes_first():
    older_form = [tag_row("sha256:" + letter * 64, letter * 12) for letter in "ab"]

    history = deploy_history.read_history(older_form, REPOSITORY, "sha256:" + "b" * 64)

    assert [entry["id"][7] for entry in history] == ["b", "a"]


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.stem)
def test_each_modules_documentation_says_what_its_argument_spec_takes(path):
    module = load(path)
    options = yaml.safe_load(module.DOCUMENTATION)["options"]

    assert sorted(options) == sorted(module.ARGUMENT_SPEC)
    for name, spec in module.ARGUMENT_SPEC.items():
        documented = options[name]
        assert documented["type"] == spec["type"], name
        assert documented.get("default") == spec.get("default"), name
        assert documented.get("required", False) == spec.get("required", False), name
        assert documented.get("choices") == spec.get("choices"), name
        assert documented.get("elements") == spec.get("elements"), name


RUNNING = "sha256:" + "r" * 64
STAMP = "20260301T120000123456"


def capture_docker(history_rows: list[dict], compose_rc: int = 0) -> FakeDocker:
    project = {"name": "shop", "services": {"web": {"image": "web:v1"}}}
    container = {"ID": "c" * 64, "CreatedAt": "2026-01-02 03:04:05 +0000 UTC", "State": "running", "Image": "web:v1"}
    return FakeDocker(
        {
            ("compose",): (compose_rc, json.dumps(project), "no such file" if compose_rc else ""),
            ("ps",): (0, json.dumps(container) + "\n", ""),
            ("images",): (0, "".join(json.dumps(row) + "\n" for row in history_rows), ""),
            ("inspect", "--type", "container"): (0, RUNNING + "\n", ""),
            ("tag",): (0, "", ""),
        }
    )


def capture(docker: FakeDocker, project_dir: Path, check_mode: bool = False, service: str = "web") -> dict:
    """capture_state on a project directory with a docker-compose.yml (the fake docker answers its config)."""
    (project_dir / "docker-compose.yml").touch()
    return deploy_history.capture_state(
        docker, str(project_dir), "docker-compose.yml", service, "deploy-history", STAMP, check_mode=check_mode
    )


def test_capture_protects_a_running_image_the_history_lacks_and_reports_the_history_as_found(tmp_path):
    older_ref = f"{REPOSITORY}:20260101T000000000000-aaaaaaaaaaaa"
    older = tag_row("sha256:" + "a" * 64, older_ref.split(":")[1])
    docker = capture_docker([older, tag_row("sha256:" + "a" * 64, "aaaaaaaaaaaa")])

    result = capture(docker, tmp_path)

    history_ref = f"{REPOSITORY}:{STAMP}-{RUNNING[7:19]}"
    assert result["changed"]
    assert docker.ran("tag") == [("tag", RUNNING, history_ref)]
    assert result["capture"] == {
        "project": "shop",
        "project_dir": str(tmp_path),
        "compose_file": "docker-compose.yml",
        "file_image": "web:v1",
        "container_id": "c" * 64,
        "container_state": "running",
        "image_id": RUNNING,
        "image": "web:v1",
        "history_repository": REPOSITORY,
        "history_ref": history_ref,
        # One read of the history, shared with cleanup; the capture keeps these four keys of each entry.
        "history": [
            {"id": "sha256:" + "a" * 64, "stamp": "20260101T000000000000", "ref": older_ref, "created": 1767323045}
        ],
    }


def test_capture_tags_nothing_in_check_mode_nor_when_the_history_has_the_image(tmp_path):
    assert capture(capture_docker([]), tmp_path, check_mode=True)["changed"]
    docker = capture_docker([])
    capture(docker, tmp_path, check_mode=True)
    assert docker.ran("tag") == []

    docker = capture_docker([tag_row(RUNNING, "20260101T000000000000-rrrrrrrrrrrr")])
    result = capture(docker, tmp_path)
    assert not result["changed"] and docker.ran("tag") == []
    assert result["capture"]["history_ref"] == f"{REPOSITORY}:20260101T000000000000-rrrrrrrrrrrr"


def test_capture_fails_in_one_line_that_names_the_compose_file(tmp_path):
    compose_file = tmp_path / "docker-compose.yml"
    with pytest.raises(StepError) as refused:
        capture(capture_docker([]), tmp_path, service="db")
    assert refused.value.msg == f"Service 'db' is not defined in {compose_file}"

    with pytest.raises(StepError) as failed:
        capture(capture_docker([], compose_rc=1), tmp_path)
    assert failed.value.msg == f"docker compose config failed for {compose_file}: no such file"
    assert failed.value.extra["cmd"] == ["docker", "compose", "-f", "docker-compose.yml", "config", "--format", "json"]
    assert failed.value.extra["rc"] == 1


def test_cleanup_stamps_the_running_image_with_the_stamp_given_and_removes_what_goes():
    kept, going = "sha256:" + "k" * 64, "sha256:" + "g" * 64
    older = f"{REPOSITORY}:20260101T000000000000-gggggggggggg"
    rows = [tag_row(kept, "20260201T000000000000-kkkkkkkkkkkk"), tag_row(going, older.split(":")[1])]
    docker = FakeDocker(
        {
            ("images",): (0, "".join(json.dumps(row) + "\n" for row in rows), ""),
            ("ps",): (0, "", ""),
            ("inspect", "--type", "image"): (0, json.dumps({"Id": going, "RepoTags": [older]}) + "\n", ""),
            ("tag",): (0, "", ""),
            ("rmi",): (0, "", ""),
        }
    )

    result = deploy_history.cleanup(docker, REPOSITORY, RUNNING, kept, 1, STAMP, check_mode=False)

    assert result == {"changed": True, "removed": [going], "kept": [kept]}
    assert docker.ran("tag") == [("tag", RUNNING, f"{REPOSITORY}:{STAMP}-{RUNNING[7:19]}")]
    assert docker.ran("rmi") == [("rmi", "--force", going)]

    docker.calls.clear()
    assert deploy_history.cleanup(docker, REPOSITORY, RUNNING, kept, 1, STAMP, check_mode=True)["changed"]
    assert docker.ran("tag") == [] and docker.ran("rmi") == []


def test_pull_asks_the_registry_but_not_in_check_mode_and_refuses_a_missing_image_when_pulling_is_off():
    ids = iter(["sha256:old\n", "sha256:new\n"])
    docker = FakeDocker({("image", "inspect"): lambda _: (0, next(ids), ""), ("pull",): (0, "", "")})

    assert deploy_image.pull_image(docker, "web:v2", True, "linux/arm64", check_mode=False) == {
        "changed": True,
        "image_id": "sha256:new",
    }
    assert docker.ran("pull") == [("pull", "--quiet", "--platform", "linux/arm64", "web:v2")]

    docker = FakeDocker({("image", "inspect"): (0, "sha256:old\n", "")})
    assert deploy_image.pull_image(docker, "web:v2", True, "", check_mode=True) == {
        "changed": True,
        "image_id": "sha256:old",
    }
    assert docker.ran("pull") == []

    docker = FakeDocker({("image", "inspect"): (1, "", "Error: No such image: web:v9")})
    with pytest.raises(StepError, match=r"^Image web:v9 is not on the host, and pulling is off for this service$"):
        deploy_image.pull_image(docker, "web:v9", False, "", check_mode=False)
