"""compose_deploy (library/, module_utils/deploy_steps.py): its step records, its stamps, the steps it accepts, and
runs with the Docker work of each step replaced (that work is tested in test_docker_steps.py and on the engine): the
state each round trip passes on, the rollback choice, the rollback itself and the status read."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
from ansible.module_utils import deploy_steps as steps
from ansible.module_utils.deploy_docker import StepError

from api.contract import STATUS_FIELDS

REPO = Path(__file__).resolve().parents[3]
DEPLOY = ("preflight", "capture_state", "pull_image", "compose_up", "health_check", "cleanup")
OLD_ID = "sha256:" + "0123456789ab" + "f" * 52
NEW_ID = "sha256:" + "ba9876543210" + "e" * 52
CONTAINER = "c0ffee123456" + "d" * 52
STAMP = "20260301T120000999999"
# The steps' work is patched out: the docker they get only says it never waited for the engine.
ENGINE = SimpleNamespace(waited=0.0)


def module_spec() -> dict:
    spec = importlib.util.spec_from_file_location("compose_deploy", REPO / "library" / "compose_deploy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ARGUMENT_SPEC


def params(**given: object) -> dict:
    """compose_deploy's options, defaults filled in as AnsibleModule fills them."""
    values = {name: option.get("default") for name, option in module_spec().items()}
    values.update(project_dir="/srv/shop", service="web", stamp=STAMP)
    values.update(steps=list(DEPLOY))
    values.update(given)
    return values


def a_capture(container_id: str = CONTAINER) -> dict:
    return {
        "project": "shop",
        "project_dir": "/srv/shop",
        "compose_file": "docker-compose.yml",
        "file_image": "web:v1",
        "container_id": container_id,
        "container_state": "running" if container_id else "absent",
        "image_id": OLD_ID if container_id else "",
        "image": "web:v1" if container_id else "",
        "history_repository": "deploy-history/shop/web",
        "history_ref": f"deploy-history/shop/web:{STAMP}-{OLD_ID[7:19]}" if container_id else "",
        "history": [],
    }


def test_capture_record():
    assert steps.capture_record(a_capture()) == {
        "step": "capture_state",
        "success": True,
        "image": "web:v1",
        "image_id": OLD_ID,
        "detail": "Running web:v1 (0123456789ab)",
    }
    assert steps.capture_record(a_capture(container_id="")) == {
        "step": "capture_state",
        "success": True,
        "image": None,
        "image_id": None,
        "detail": "No container yet: first deploy",
    }


def test_pull_record_words_with_their_trailing_spaces():
    def detail(pulled: bool, changed: bool, image_id: str = NEW_ID, reason: str = "pull: false") -> str:
        pull = {"image": "web:v2", "image_id": image_id, "changed": changed, "pulled": pulled}
        return steps.pull_record(pull, reason)["detail"]

    assert detail(True, True) == "Pulled web:v2: new image ba9876543210"
    assert detail(True, False) == "Pulled web:v2: already up to date ba9876543210"
    assert detail(False, False) == "Not pulled (pull: false): the host has web:v2 ba9876543210"
    assert detail(False, False, reason="on the host already") == (
        "Not pulled (on the host already): the host has web:v2 ba9876543210"
    )
    # Under check mode a host without the image has no ID yet: the words end where the ID would be.
    assert detail(True, True, image_id="") == "Pulled web:v2: new image "
    record = steps.pull_record({"image": "web:v2", "image_id": "", "changed": True, "pulled": True}, "pull: false")
    assert record == {
        "step": "pull_image",
        "success": True,
        "image": "web:v2",
        "image_id": None,
        "detail": "Pulled web:v2: new image ",
    }


def test_compose_up_record():
    def record(changed: bool, captured_container: str) -> dict:
        return steps.up_record({"container_id": CONTAINER, "changed": changed, "beside": ""}, captured_container)

    assert record(True, "") == {
        "step": "compose_up",
        "success": True,
        "container_id": "c0ffee123456",
        "detail": "Container created",
    }
    assert record(True, CONTAINER)["detail"] == "Container recreated"
    assert record(False, CONTAINER)["detail"] == "Container already up to date"
    assert record(False, "")["detail"] == "Container already up to date"
    beside = {"container_id": CONTAINER, "changed": True, "beside": "ab" * 32}
    assert steps.up_record(beside, "ab" * 32)["detail"] == (
        "Started c0ffee123456 beside abababababab, which keeps serving"
    )
    assert steps.up_record(beside, "ab" * 32, check_mode=True)["detail"] == (
        "Would start a second container beside abababababab, which keeps serving"
    )


def test_health_and_cleanup_records_and_their_check_mode_words():
    verdict = {"healthy": True, "status": "healthy", "detail": "Container is healthy"}
    assert steps.health_record(verdict) == {
        "step": "health_check",
        "success": True,
        "running": True,
        "detail": "Container is healthy",
    }
    assert steps.health_record(None)["detail"] == "Skipped in check mode"
    assert steps.cleanup_record({"removed": ["a", "b"], "kept": ["c"]}) == {
        "step": "cleanup",
        "success": True,
        "detail": "Removed 2 previous image(s), kept 1",
    }
    assert steps.cleanup_record(None) == {"step": "cleanup", "success": True, "detail": "Skipped in check mode"}
    assert steps.failure_record("pull_image", "Error pulling image web:v9 - manifest unknown") == {
        "step": "pull_image",
        "success": False,
        "detail": "Error pulling image web:v9 - manifest unknown",
    }


def test_the_cleanup_stamp_is_the_controllers_plus_the_time_elapsed_on_the_host_and_always_later():
    assert steps.later_stamp("20260301T120000000000", 1.5) == "20260301T120001500000"
    assert steps.later_stamp("20261231T235959999999", 0.25) == "20270101T000000249999"
    # No time measured (a coarse clock) still makes a later stamp: the capture's is the controller's own.
    assert steps.later_stamp(STAMP, 0.0) == "20260301T120001000000"
    assert steps.later_stamp(STAMP, 0.0) > STAMP
    # Stamps compare as strings in the history, so they keep their fixed width.
    assert len(steps.later_stamp("20260301T120000000000", 0.000001)) == len(STAMP)


@pytest.mark.parametrize("stamp", ["", "2026-03-01T12:00:00", "20260301T1200001234567", "20260301T120000"])
def test_a_stamp_in_another_form_is_refused(stamp):
    with pytest.raises(StepError, match="stamp must be the UTC time as %Y%m%dT%H%M%S%f"):
        steps.check_stamp(stamp)


def test_steps_run_in_the_deploys_order_whatever_the_order_given():
    shuffled = ["cleanup", "pull_image", "health_check", "capture_state", "compose_up", "preflight"]

    assert steps.ordered_steps(shuffled, "", {}) == list(DEPLOY)
    assert steps.ordered_steps(["capture_state"], "", {}) == ["capture_state"]
    assert steps.ordered_steps(["pull_image", "choose_image", "capture_state"], "", {}) == [
        "capture_state",
        "choose_image",
        "pull_image",
    ]


@pytest.mark.parametrize(
    ("requested", "message"),
    [
        (["capture_state", "pull_image", "health_check"], "Step health_check needs compose_up in the same call, or"),
        (["health_check"], "Step health_check needs compose_up in the same call, or the state of an earlier call"),
        (["capture_state", "cleanup"], "Step cleanup needs pull_image in the same call, or the state"),
        (["compose_up"], "Step compose_up needs a capture: add capture_state to the steps, or pass the state"),
        (["rollback"], "Step rollback needs a capture"),
        (["choose_image"], "Step choose_image needs a capture"),
        (["pull_image", "pull_image"], "Steps may be named once each: pull_image is repeated"),
        (["status", "capture_state"], "Step status runs alone"),
    ],
)
def test_a_step_that_lacks_what_it_reads_is_refused(requested, message):
    with pytest.raises(StepError, match=message):
        steps.ordered_steps(requested, "web:v2", {})


def test_what_a_step_reads_may_come_from_the_state_of_an_earlier_call():
    later = ["pull_image", "compose_up", "health_check", "cleanup"]
    pulled = {"image": "web:v2", "image_id": NEW_ID, "changed": True, "pulled": True}

    assert steps.ordered_steps(later, "web:v2", {"capture": a_capture()}) == later
    assert steps.ordered_steps(["compose_up"], "web:v2", {"capture": a_capture()}) == ["compose_up"]
    state = {"capture": a_capture(), "pull": pulled, "up": {"container_id": "f"}}
    assert steps.ordered_steps(["health_check", "cleanup"], "", state) == ["health_check", "cleanup"]
    with pytest.raises(StepError, match="its capture lacks history_repository"):
        steps.ordered_steps(later, "web:v2", {"capture": {key: "" for key in steps.CAPTURE_KEYS[:-1]}})
    with pytest.raises(StepError, match="Step cleanup needs pull_image"):
        steps.ordered_steps(["cleanup"], "", {**state, "pull": {"image": "web:v2"}})
    # Pulling a named image alone reads nothing of a capture; pulling the compose file's image does.
    assert steps.ordered_steps(["pull_image"], "web:v2", {}) == ["pull_image"]
    with pytest.raises(StepError, match="Step pull_image needs a capture"):
        steps.ordered_steps(["pull_image"], "", {})
    assert steps.ordered_steps(["status"], "", {}) == ["status"]


def test_the_service_runs_the_pulled_image_only_when_its_running_container_has_that_id_and_nothing_was_new():
    pull = {"image": "web:v1", "image_id": OLD_ID, "changed": False, "pulled": True}

    assert steps.runs_pulled_image(a_capture(), pull)
    assert not steps.runs_pulled_image(a_capture(), {**pull, "changed": True})
    assert not steps.runs_pulled_image(a_capture(), {**pull, "image_id": NEW_ID})
    assert not steps.runs_pulled_image({**a_capture(), "container_state": "exited"}, pull)
    # A first deploy under check mode: no container, and the host lacks the image, so both IDs are empty.
    assert not steps.runs_pulled_image(a_capture(container_id=""), {**pull, "image_id": ""})


class Steps:
    """The Docker work of each step, replaced: what each was called with, and the answers given."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        captured: dict,
        healthy: bool | list[bool] = True,
        pulled: dict | None = None,
        images: dict[str, dict] | None = None,
        runs: str = OLD_ID,
    ):
        self.calls: dict[str, list[dict]] = {}
        self.captured = captured
        self.healthy = [healthy] if isinstance(healthy, bool) else list(healthy)
        self.pulled = pulled or {"changed": True, "image_id": NEW_ID}
        self.images = images or {}
        self.runs = runs
        for name in (
            "capture_state",
            "pull_image",
            "compose_service",
            "container_health",
            "cleanup",
            "inspect",
            "rollback_image",
            "service_containers",
        ):
            monkeypatch.setattr(steps, name, self.recorder(name))
        # Wherever the tests run, the deploy runs in no container (test_self.py tests the refusal).
        monkeypatch.setattr(steps, "own_container_id", lambda mountinfo: None)

    def recorder(self, name: str):
        def step(docker: object, *args: object, **given: object) -> dict:
            self.calls.setdefault(name, []).append({**dict(enumerate(args)), **given})
            return getattr(self, name)(*args, **given)

        return step

    def last(self, name: str) -> dict:
        return self.calls[name][-1]

    def capture_state(self, **_: object) -> dict:
        return {"changed": True, "capture": self.captured}

    def pull_image(self, **_: object) -> dict:
        return self.pulled

    def compose_service(self, **given: object) -> dict:
        container = "" if given["state"] == "absent" else "f" * 64
        beside = bool(given.get("beside")) and bool(self.captured["container_id"])
        return {"changed": True, "container_id": container, "beside": beside, "diff": {"before": "", "after": "{}"}}

    def container_health(self, **_: object) -> dict:
        healthy = self.healthy.pop(0) if len(self.healthy) > 1 else self.healthy[0]
        if healthy:
            return {
                "changed": False,
                "verdict": {"healthy": True, "status": "healthy", "detail": "Container is healthy"},
            }
        verdict = {"healthy": False, "status": "unhealthy", "detail": "Container is unhealthy: its HEALTHCHECK failed"}
        return {"changed": False, "verdict": verdict, "logs": "fatal: no database"}

    def cleanup(self, **_: object) -> dict:
        return {"changed": True, "removed": [], "kept": [OLD_ID]}

    def service_containers(self, project: str, service: str) -> list[dict]:
        return [{"ID": self.captured["container_id"]}] if self.captured["container_id"] else []

    def inspect(self, kind: str, name: str) -> dict | None:
        if kind == "container":
            state = {"Status": "running", "Running": True, "Health": {"Status": "healthy"}}
            return {"Id": name, "Image": OLD_ID, "State": state}
        return self.images.get(name)

    def rollback_image(self, image: str, tag: str, container: str, check_mode: bool) -> dict:
        return {"changed": bool(tag), "images": [], "container_exists": True, "container_image_id": self.runs}


def ticking() -> object:
    """A monotonic clock that moves half a second each time it is read."""
    now = iter(index * 0.5 for index in range(1000))
    return lambda: next(now)


def stopped() -> float:
    """A clock that does not move: every step takes 0.0 s."""
    return 0.0


def records(result: dict) -> list[str]:
    return [record["step"] for record in result["state"]["steps"]]


def test_a_deploy_runs_every_step_with_what_the_earlier_steps_found(monkeypatch):
    fake = Steps(monkeypatch, a_capture())

    result = steps.run_steps(ENGINE, params(image="web:v2", keep_images=2), check_mode=False, clock=ticking())

    assert "failed_step" not in result
    assert fake.last("pull_image") == {"name": "web:v2", "pull": True, "platform": "", "check_mode": False}
    up = fake.last("compose_service")
    assert (up["image"], up["file_image"], up["state"]) == ("web:v2", "web:v1", "present")
    assert up["before"] == {"ID": CONTAINER, "State": "running"}, "the capture's container: no second docker ps"
    assert (up["project_dir"], up["compose_file"], up["pin_file"]) == (
        "/srv/shop",
        "docker-compose.yml",
        "docker-compose.deploy.yml",
    )
    assert fake.last("container_health")["container"] == "f" * 64
    assert fake.last("cleanup")["current_image_id"] == NEW_ID
    assert fake.last("cleanup")["previous_image_id"] == OLD_ID
    assert fake.last("cleanup")["keep_images"] == 2
    # The clock read 0 when the run started and 6 s when cleanup stamped: the controller's stamp plus those 6 s.
    assert fake.last("capture_state")["stamp"] == STAMP
    assert fake.last("cleanup")["stamp"] == "20260301T120006999999"
    assert records(result) == list(DEPLOY)
    assert [record["detail"] for record in result["state"]["steps"]] == [
        "The deploy runs in no container of web",
        "Running web:v1 (0123456789ab)",
        "Pulled web:v2: new image ba9876543210",
        "Container recreated",
        "Container is healthy",
        "Removed 0 previous image(s), kept 1",
    ]
    state = result["state"]
    assert state["pull"] == {"image": "web:v2", "image_id": NEW_ID, "changed": True, "pulled": True}
    assert state["up"] == {"container_id": "f" * 64, "changed": True, "beside": ""}
    assert state["health"]["healthy"] and result["logs"] == ""
    assert state["cleanup"] == {"removed": [], "kept": [OLD_ID]}
    assert result["timings"] == {**dict.fromkeys(DEPLOY, 0.5), "cleanup": 1.0}
    # Each step's record says how long it took on the host.
    assert [record["seconds"] for record in state["steps"]] == [0.5, 0.5, 0.5, 0.5, 0.5, 1.0]
    assert result["changed"] and result["finished"] and result["next_steps"] == []


def test_without_an_image_the_compose_files_image_is_deployed(monkeypatch):
    fake = Steps(monkeypatch, a_capture())

    result = steps.run_steps(ENGINE, params(pull=False), check_mode=False)

    assert fake.last("pull_image")["name"] == "web:v1"
    assert fake.last("compose_service")["image"] == "web:v1"
    assert result["state"]["steps"][2]["detail"] == "Not pulled (pull: false): the host has web:v1 ba9876543210"


def test_a_compose_yaml_gets_its_pin_file_beside_it(monkeypatch):
    fake = Steps(monkeypatch, {**a_capture(), "compose_file": "compose.yaml"})

    steps.run_steps(ENGINE, params(image="web:v2"), check_mode=False)

    assert fake.last("compose_service")["pin_file"] == "compose.deploy.yml"


def test_a_failed_health_check_ends_the_run_with_the_verdict_the_logs_and_a_rollback_to_come(monkeypatch):
    fake = Steps(monkeypatch, a_capture(), healthy=False)

    result = steps.run_steps(ENGINE, params(image="web:v2"), check_mode=False, clock=stopped)

    assert result["failed_step"] == "health_check"
    assert result["msg"] == "Container is unhealthy: its HEALTHCHECK failed"
    assert result["logs"] == result["state"]["logs"] == "fatal: no database"
    state = result["state"]
    assert state["health"]["status"] == "unhealthy"
    assert state["capture"] == a_capture()
    assert (state["failed_step"], state["error"]) == ("health_check", result["msg"])
    assert state["steps"][-1] == {"step": "health_check", "success": False, "detail": result["msg"], "seconds": 0.0}
    assert records(result) == ["preflight", "capture_state", "pull_image", "compose_up", "health_check"]
    assert "cleanup" not in fake.calls and "cleanup" not in result["timings"]
    assert "cleanup" not in state and not result["finished"]
    assert result["next_steps"] == ["rollback"]


def test_a_failed_step_keeps_its_extra_keys_but_not_over_the_results_own_and_needs_no_rollback(monkeypatch):
    Steps(monkeypatch, a_capture())

    def failing_pull(docker: object, **_: object) -> dict:
        raise StepError("Pulling web:v9 failed: manifest unknown", rc=1, stderr="manifest unknown", state="no")

    monkeypatch.setattr(steps, "pull_image", failing_pull)

    result = steps.run_steps(ENGINE, params(image="web:v9"), check_mode=False, clock=stopped)

    assert result["failed_step"] == "pull_image"
    assert result["msg"] == "Pulling web:v9 failed: manifest unknown"
    assert (result["rc"], result["stderr"]) == (1, "manifest unknown")
    assert result["state"]["steps"][-1] == {
        "step": "pull_image",
        "success": False,
        "detail": result["msg"],
        "seconds": 0.0,
    }
    assert "pull" not in result["state"] and "up" not in result["state"]
    assert result["state"]["target"] == "web:v9", "the record still names the image it was to deploy"
    assert result["next_steps"] == [], "nothing on the host changed before the pull"


def test_an_unexpected_error_still_names_its_step(monkeypatch):
    Steps(monkeypatch, a_capture())
    monkeypatch.setattr(steps, "compose_service", lambda docker, **_: {}["container_id"])

    result = steps.run_steps(ENGINE, params(), check_mode=False)

    assert result["failed_step"] == "compose_up"
    assert result["msg"] == "'container_id'"
    assert "KeyError" in result["exception"]


def test_check_mode_skips_the_health_check_and_the_cleanup(monkeypatch):
    fake = Steps(monkeypatch, a_capture(container_id=""))

    result = steps.run_steps(ENGINE, params(image="web:v2"), check_mode=True)

    assert "failed_step" not in result
    assert "container_health" not in fake.calls and "cleanup" not in fake.calls
    assert all(call["check_mode"] for calls in fake.calls.values() for call in calls)
    assert [record["detail"] for record in result["state"]["steps"]][3:] == [
        "Container created",
        "Skipped in check mode",
        "Skipped in check mode",
    ]
    assert "health" not in result["state"] and "cleanup" not in result["state"]
    assert result["finished"], "the last step is done, skipped"


def test_refused_options_run_nothing(monkeypatch):
    fake = Steps(monkeypatch, a_capture())

    refused = steps.run_steps(ENGINE, params(steps=["capture_state", "health_check"]), check_mode=False)
    bad_stamp = steps.run_steps(ENGINE, params(stamp="now"), check_mode=False)
    bad_action = steps.run_steps(ENGINE, params(action="promote"), check_mode=False)

    assert fake.calls == {}
    assert refused["failed_step"] is None and refused["state"]["steps"] == []
    assert refused["msg"].startswith("Step health_check needs compose_up")
    assert bad_stamp["msg"].startswith("stamp must be")
    assert bad_action["msg"] == "action must be one of deploy, rollback, remove, settle, not 'promote'"


def test_a_deploy_in_three_round_trips_passes_each_state_on_and_ends_with_every_record(monkeypatch):
    fake = Steps(monkeypatch, a_capture())

    prepare = steps.run_steps(
        ENGINE, params(steps=["preflight", "capture_state", "pull_image"], image="web:v2"), False, clock=stopped
    )
    start = steps.run_steps(
        ENGINE, params(steps=["compose_up"], state=prepare["state"], image="web:v2"), False, clock=stopped
    )
    check = steps.run_steps(
        ENGINE, params(steps=["health_check", "cleanup"], state=start["state"]), False, clock=stopped
    )

    assert not prepare["finished"] and not start["finished"] and check["finished"]
    assert (prepare["next_steps"], start["next_steps"], check["next_steps"]) == (
        ["compose_up"],
        ["health_check", "cleanup"],
        [],
    )
    assert fake.last("compose_service")["image"] == "web:v2"
    assert fake.last("container_health")["container"] == "f" * 64
    assert fake.last("cleanup")["current_image_id"] == NEW_ID
    assert fake.last("cleanup")["previous_image_id"] == OLD_ID
    assert len(fake.calls["capture_state"]) == 1
    # The last state holds every record: those of one call running every step.
    whole = steps.run_steps(ENGINE, params(image="web:v2"), False, clock=stopped)
    assert check["state"]["steps"] == whole["state"]["steps"]
    assert (check["state"]["capture"], check["state"]["pull"]) == (
        prepare["state"]["capture"],
        prepare["state"]["pull"],
    )
    # The state given is not changed in place: Ansible passes it as the earlier call's registered result.
    assert records(prepare) == ["preflight", "capture_state", "pull_image"]


def test_finish_unchanged_finishes_a_redeploy_that_changes_nothing_in_the_same_call(monkeypatch):
    unchanged = {"changed": False, "image_id": OLD_ID}
    fake = Steps(monkeypatch, a_capture(), pulled=unchanged)
    prepare = ["preflight", "capture_state", "pull_image"]

    result = steps.run_steps(ENGINE, params(steps=prepare, finish_unchanged=True), check_mode=False)

    assert result["finished"] and result["next_steps"] == []
    assert records(result) == list(DEPLOY)
    assert fake.last("compose_service")["image"] == "web:v1"
    assert result["state"]["up"] == {"container_id": "f" * 64, "changed": True, "beside": ""}

    fake.calls.clear()
    without = steps.run_steps(ENGINE, params(steps=prepare), check_mode=False)
    assert not without["finished"] and "compose_service" not in fake.calls


def test_finish_unchanged_stops_after_the_pull_when_there_is_something_to_change(monkeypatch):
    fake = Steps(monkeypatch, a_capture())  # a new image was pulled
    prepare = ["preflight", "capture_state", "pull_image"]

    result = steps.run_steps(ENGINE, params(steps=prepare, finish_unchanged=True), check_mode=False)

    assert not result["finished"] and "compose_service" not in fake.calls
    assert records(result) == prepare


# A rollback's choice.

V1 = {"Id": OLD_ID, "RepoTags": ["deploy-history/shop/web:20260101T000000000000-0123456789ab", "web:v1", "web:latest"]}


def a_history() -> list[dict]:
    return [
        {"id": NEW_ID, "stamp": "20260201T000000000000", "ref": "deploy-history/shop/web:x", "created": 2},
        {"id": OLD_ID, "stamp": "20260101T000000000000", "ref": "deploy-history/shop/web:y", "created": 1},
    ]


def running_new() -> dict:
    return {**a_capture(), "image_id": NEW_ID, "image": "web:v2", "history": a_history()}


def test_a_rollback_brings_back_the_newest_previous_image_under_its_own_name_without_pulling_it(monkeypatch):
    fake = Steps(monkeypatch, running_new(), images={OLD_ID: V1}, pulled={"changed": False, "image_id": OLD_ID})
    first = ["preflight", "capture_state", "choose_image", "pull_image"]

    result = steps.run_steps(ENGINE, params(action="rollback", steps=first), check_mode=False, clock=stopped)

    choice = result["state"]["steps"][2]
    assert choice == {
        "step": "choose_image",
        "success": True,
        "image": "web:v1",
        "image_id": OLD_ID,
        "detail": "The newest previous image: web:v1 (0123456789ab, on the host)",
        "seconds": 0.0,
    }
    assert fake.last("pull_image") == {"name": "web:v1", "pull": False, "platform": "", "check_mode": False}
    assert result["state"]["steps"][3]["detail"] == "Not pulled (on the host already): the host has web:v1 0123456789ab"
    assert result["next_steps"] == ["compose_up"]


def test_a_rollback_to_an_image_the_host_lacks_pulls_it_and_one_without_a_previous_image_is_refused(monkeypatch):
    Steps(monkeypatch, running_new())
    first = ["preflight", "capture_state", "choose_image", "pull_image"]

    asked = steps.run_steps(ENGINE, params(action="rollback", steps=first, image="web:v0"), check_mode=False)
    assert asked["state"]["choice"] == {
        "image": "web:v0",
        "image_id": "",
        "pull": True,
        "detail": "Requested web:v0, not on the host: pulling it",
    }

    Steps(monkeypatch, {**running_new(), "history": a_history()[:1]})
    nothing = steps.run_steps(ENGINE, params(action="rollback", steps=first), check_mode=False)
    assert nothing["failed_step"] == "choose_image"
    assert nothing["msg"] == "No previous image of web is kept on the host"
    named = steps.run_steps(ENGINE, params(action="rollback", steps=first, host="web1"), check_mode=False)
    assert named["msg"] == "No previous image of web is kept on web1"
    assert nothing["next_steps"] == []


# The rollback after a failure.


def failed_state() -> dict:
    return {
        "capture": a_capture(),
        "pull": {"image": "web:v2", "image_id": NEW_ID, "changed": True, "pulled": True},
        "up": {"container_id": "f" * 64, "changed": True},
        "steps": [{"step": "health_check", "success": False, "detail": "unhealthy"}],
        "failed_step": "health_check",
        "error": "unhealthy",
    }


def test_the_rollback_points_the_captured_reference_back_starts_it_checks_it_and_its_image_id(monkeypatch):
    fake = Steps(monkeypatch, a_capture())

    result = steps.run_steps(ENGINE, params(steps=["rollback"], state=failed_state()), check_mode=False)

    assert "failed_step" not in result, "a rollback's outcome is its record, not a failed module"
    assert fake.calls["rollback_image"][0] == {0: OLD_ID, 1: "web:v1", 2: "", 3: False}
    assert fake.last("compose_service")["image"] == "web:v1"
    assert fake.last("rollback_image")[2] == "f" * 64, "the restored container's image ID is read"
    assert result["state"]["rollback"] == {
        "success": True,
        "rolled_back": True,
        "image": "web:v1",
        "image_id": OLD_ID,
        "detail": "Rolled back to web:v1 (0123456789ab): Container is healthy",
    }
    assert result["state"]["steps"][-1]["step"] == "rollback"
    assert "cleanup" not in fake.calls, "the history is stamped by a rollback only when a rollout stopped"
    assert result["next_steps"] == []


def test_a_rollback_whose_container_is_not_healthy_or_runs_another_image_failed(monkeypatch):
    Steps(monkeypatch, a_capture(), healthy=False)
    unhealthy = steps.run_steps(ENGINE, params(steps=["rollback"], state=failed_state()), check_mode=False)
    assert unhealthy["state"]["rollback"]["detail"] == (
        "Rollback to web:v1 failed: Container is unhealthy: its HEALTHCHECK failed"
    )
    assert not unhealthy["state"]["rollback"]["success"] and unhealthy["logs"] == "fatal: no database"

    Steps(monkeypatch, a_capture(), runs=NEW_ID)
    other = steps.run_steps(ENGINE, params(steps=["rollback"], state=failed_state()), check_mode=False)
    assert other["state"]["rollback"]["detail"] == (
        "Rollback to web:v1 failed: the restored container runs ba9876543210, not the captured 0123456789ab"
    )


def test_a_first_deploy_that_failed_has_its_container_removed_and_an_image_id_reference_comes_back_by_history(
    monkeypatch,
):
    fake = Steps(monkeypatch, a_capture(container_id=""))
    first = {**failed_state(), "capture": a_capture(container_id="")}
    result = steps.run_steps(ENGINE, params(steps=["rollback"], state=first), check_mode=False)
    assert fake.last("compose_service")["state"] == "absent"
    assert result["state"]["rollback"]["detail"] == steps.NO_PREVIOUS_CONTAINER
    assert "rollback_image" not in fake.calls

    fake = Steps(monkeypatch, a_capture())
    by_id = {**failed_state(), "capture": {**a_capture(), "image": OLD_ID}}
    result = steps.run_steps(ENGINE, params(steps=["rollback"], state=by_id), check_mode=False)
    assert fake.last("compose_service")["image"] == a_capture()["history_ref"]
    assert len(fake.calls["rollback_image"]) == 1, "an ID cannot be tagged: only the container is read"


def test_a_host_undone_because_the_rollout_stopped_elsewhere_makes_its_image_the_newest_again(monkeypatch):
    fake = Steps(monkeypatch, a_capture())
    succeeded = {**failed_state(), "steps": [], "failed_step": None, "error": None}

    result = steps.run_steps(ENGINE, params(steps=["rollback"], state=succeeded, stopped_at="web2"), check_mode=False)

    assert fake.last("cleanup")["current_image_id"] == OLD_ID
    assert fake.last("cleanup")["previous_image_id"] == NEW_ID
    state = result["state"]
    assert state["rollback"]["detail"].startswith("Rollout stopped at web2: Rolled back to web:v1")
    assert (state["stopped_at"], state["error"]) == ("web2", "Rolled back because the rollout stopped at web2")


# The status read.


def test_the_status_says_what_runs_and_changes_nothing(monkeypatch):
    fake = Steps(monkeypatch, a_capture())

    result = steps.run_steps(ENGINE, params(steps=["status"]), check_mode=False)

    assert fake.last("capture_state")["check_mode"] is True
    assert result["status"] == {
        "service": "web",
        "container_id": CONTAINER[:12],
        "image": "web:v1",
        "image_id": OLD_ID,
        "state": "running, healthy",
        "containers": [{"container_id": CONTAINER[:12], "image_id": OLD_ID, "state": "running"}],
    }
    assert result["state"]["steps"] == [] and result["next_steps"] == []
    assert tuple(result["status"]) == STATUS_FIELDS, "what the API reads of a status (api/contract.py)"


@pytest.mark.parametrize(("image", "pulled_name"), [("", "web:v1"), ("registry.example/web:stable", None)])
def test_a_watch_pulls_the_image_the_service_is_deployed_from_and_reports_its_id(monkeypatch, image, pulled_name):
    fake = Steps(monkeypatch, a_capture(), pulled={"changed": True, "image_id": NEW_ID})

    result = steps.run_steps(ENGINE, params(steps=["status"], watch=True, image=image), check_mode=False)

    pulled = fake.last("pull_image")
    assert (pulled["name"], pulled["pull"], pulled["check_mode"]) == (pulled_name or image, True, False)
    assert result["status"]["image_id"] == OLD_ID, "what runs"
    assert (result["status"]["latest_image"], result["status"]["latest_image_id"]) == (pulled_name or image, NEW_ID)
    assert result["changed"] is True, "the pull moved the tag: the watch's one change"
    assert result["state"]["steps"] == [] and result["next_steps"] == []


def test_a_status_read_pulls_nothing(monkeypatch):
    fake = Steps(monkeypatch, a_capture())

    result = steps.run_steps(ENGINE, params(steps=["status"]), check_mode=True)

    assert "pull_image" not in fake.calls and "latest_image_id" not in result["status"]
    assert result["changed"] is False
