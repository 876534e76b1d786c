"""compose_deploy (library/, module_utils/deploy_steps.py): its step records in the playbook's words, its stamps,
the steps it accepts, and a run with the steps themselves replaced (the steps are tested in test_role_modules)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from ansible.module_utils import deploy_steps as steps
from ansible.module_utils.deploy_docker import StepError

REPO = Path(__file__).resolve().parents[2]
OLD_ID = "sha256:" + "0123456789ab" + "f" * 52
NEW_ID = "sha256:" + "ba9876543210" + "e" * 52
CONTAINER = "c0ffee123456" + "d" * 52
STAMP = "20260301T120000999999"


def module_spec() -> dict:
    spec = importlib.util.spec_from_file_location("compose_deploy", REPO / "library" / "compose_deploy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ARGUMENT_SPEC


def params(**given: object) -> dict:
    """compose_deploy's options, defaults filled in as AnsibleModule fills them."""
    values = {name: option.get("default") for name, option in module_spec().items()}
    values.update(project_dir="/srv/shop", service="web", pin_file="docker-compose.deploy.yml", stamp=STAMP)
    values.update(steps=list(steps.STEPS))
    values.update(given)
    return values


def a_capture(container_id: str = CONTAINER) -> dict:
    return {
        "project": "shop",
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
        return steps.up_record({"container_id": CONTAINER, "changed": changed}, captured_container)

    assert record(True, "") == {
        "step": "compose_up",
        "success": True,
        "container_id": "c0ffee123456",
        "detail": "Container created",
    }
    assert record(True, CONTAINER)["detail"] == "Container recreated"
    assert record(False, CONTAINER)["detail"] == "Container already up to date"
    assert record(False, "")["detail"] == "Container already up to date"


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


def test_steps_run_in_the_canonical_order_whatever_the_order_given():
    shuffled = ["cleanup", "pull_image", "health_check", "capture_state", "compose_up"]

    assert steps.ordered_steps(shuffled, "", {}, {}, {}) == list(steps.STEPS)
    assert steps.ordered_steps(["capture_state"], "", {}, {}, {}) == ["capture_state"]
    assert steps.ordered_steps(["compose_up", "pull_image", "capture_state"], "", {}, {}, {}) == [
        "capture_state",
        "pull_image",
        "compose_up",
    ]


@pytest.mark.parametrize(
    ("requested", "message"),
    [
        (["capture_state", "pull_image", "health_check"], "Step health_check needs compose_up in the same call, or"),
        (["health_check"], "Step health_check needs compose_up in the same call, or started"),
        (["capture_state", "cleanup"], "Step cleanup needs pull_image in the same call, or pulled"),
        (["compose_up"], "Step compose_up needs a capture: add capture_state to the steps, or pass captured"),
        (["pull_image", "pull_image"], "Steps may be named once each: pull_image is repeated"),
    ],
)
def test_a_step_that_lacks_what_it_reads_is_refused(requested, message):
    with pytest.raises(StepError, match=message):
        steps.ordered_steps(requested, "web:v2", {}, {}, {})


def test_what_a_step_reads_may_come_from_an_earlier_call():
    later = ["pull_image", "compose_up", "health_check", "cleanup"]
    pulled = {"image": "web:v2", "image_id": NEW_ID, "changed": True, "pulled": True}

    assert steps.ordered_steps(later, "web:v2", a_capture(), {}, {}) == later
    assert steps.ordered_steps(["compose_up"], "web:v2", a_capture(), {}, {}) == ["compose_up"]
    assert steps.ordered_steps(["health_check", "cleanup"], "", a_capture(), pulled, {"container_id": "f"}) == [
        "health_check",
        "cleanup",
    ]
    with pytest.raises(StepError, match="it lacks history_repository"):
        steps.ordered_steps(later, "web:v2", {key: "" for key in steps.CAPTURE_KEYS[:-1]}, {}, {})
    with pytest.raises(StepError, match=r"or pulled \(the pull of an earlier call; it lacks image_id\)"):
        steps.ordered_steps(["health_check", "cleanup"], "", a_capture(), {"image": "web:v2"}, {"container_id": "f"})
    # Pulling a named image alone reads nothing of a capture; pulling the compose file's image does.
    assert steps.ordered_steps(["pull_image"], "web:v2", {}, {}, {}) == ["pull_image"]
    with pytest.raises(StepError, match="Step pull_image needs a capture"):
        steps.ordered_steps(["pull_image"], "", {}, {}, {})


def test_the_service_runs_the_pulled_image_only_when_its_running_container_has_that_id_and_nothing_was_new():
    pull = {"image": "web:v1", "image_id": OLD_ID, "changed": False, "pulled": True}

    assert steps.runs_pulled_image(a_capture(), pull)
    assert not steps.runs_pulled_image(a_capture(), {**pull, "changed": True})
    assert not steps.runs_pulled_image(a_capture(), {**pull, "image_id": NEW_ID})
    assert not steps.runs_pulled_image({**a_capture(), "container_state": "exited"}, pull)
    # A first deploy under check mode: no container, and the host lacks the image, so both IDs are empty.
    assert not steps.runs_pulled_image(a_capture(container_id=""), {**pull, "image_id": ""})


class Steps:
    """The five step functions, replaced: what each was called with, and the answers given."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        captured: dict,
        healthy: bool = True,
        pulled: dict | None = None,
    ):
        self.calls: dict[str, dict] = {}
        self.captured = captured
        self.healthy = healthy
        self.pulled = pulled or {"changed": True, "image_id": NEW_ID}
        for name in ("capture_state", "pull_image", "compose_service", "container_health", "cleanup"):
            monkeypatch.setattr(steps, name, self.recorder(name))

    def recorder(self, name: str):
        def step(docker: object, **given: object) -> dict:
            self.calls[name] = given
            return getattr(self, name)(**given)

        return step

    def capture_state(self, **_: object) -> dict:
        return {"changed": True, "capture": self.captured}

    def pull_image(self, **_: object) -> dict:
        return self.pulled

    def compose_service(self, **_: object) -> dict:
        return {"changed": True, "container_id": "f" * 64, "diff": {"before": "", "after": "{}"}}

    def container_health(self, **_: object) -> dict:
        if self.healthy:
            return {
                "changed": False,
                "verdict": {"healthy": True, "status": "healthy", "detail": "Container is healthy"},
            }
        verdict = {"healthy": False, "status": "unhealthy", "detail": "Container is unhealthy: its HEALTHCHECK failed"}
        return {"changed": False, "verdict": verdict, "logs": "fatal: no database"}

    def cleanup(self, **_: object) -> dict:
        return {"changed": True, "removed": [], "kept": [OLD_ID]}


def ticking() -> object:
    """A monotonic clock that moves half a second each time it is read."""
    now = iter(index * 0.5 for index in range(1000))
    return lambda: next(now)


def test_a_deploy_runs_every_step_with_what_the_earlier_steps_found(monkeypatch):
    fake = Steps(monkeypatch, a_capture())

    result = steps.run_steps(object(), params(image="web:v2", keep_images=2), check_mode=False, clock=ticking())

    assert "failed_step" not in result
    assert fake.calls["pull_image"] == {"name": "web:v2", "pull": True, "platform": "", "check_mode": False}
    assert fake.calls["compose_service"]["image"] == "web:v2"
    assert fake.calls["compose_service"]["file_image"] == "web:v1"
    assert fake.calls["compose_service"]["state"] == "present"
    assert fake.calls["container_health"]["container"] == "f" * 64
    assert fake.calls["cleanup"]["current_image_id"] == NEW_ID
    assert fake.calls["cleanup"]["previous_image_id"] == OLD_ID
    assert fake.calls["cleanup"]["keep_images"] == 2
    # The clock read 0 when the run started and 5 s when cleanup stamped: the controller's stamp plus those 5 s.
    assert fake.calls["capture_state"]["stamp"] == STAMP
    assert fake.calls["cleanup"]["stamp"] == "20260301T120005999999"
    assert [record["step"] for record in result["steps"]] == list(steps.STEPS)
    assert [record["detail"] for record in result["steps"]] == [
        "Running web:v1 (0123456789ab)",
        "Pulled web:v2: new image ba9876543210",
        "Container recreated",
        "Container is healthy",
        "Removed 0 previous image(s), kept 1",
    ]
    assert result["pull"] == {"image": "web:v2", "image_id": NEW_ID, "changed": True, "pulled": True}
    assert result["up"] == {"container_id": "f" * 64, "changed": True}
    assert result["health"]["healthy"] and result["logs"] == ""
    assert result["cleanup"] == {"removed": [], "kept": [OLD_ID]}
    assert result["timings"] == {**dict.fromkeys(steps.STEPS, 0.5), "cleanup": 1.0}
    # Each step's record says how long it took on the host.
    assert [record["seconds"] for record in result["steps"]] == [0.5, 0.5, 0.5, 0.5, 1.0]
    assert result["changed"] and result["finished"]


def test_without_an_image_the_compose_files_image_is_deployed(monkeypatch):
    fake = Steps(monkeypatch, a_capture())

    result = steps.run_steps(object(), params(pull=False), check_mode=False)

    assert fake.calls["pull_image"]["name"] == "web:v1"
    assert fake.calls["compose_service"]["image"] == "web:v1"
    assert result["steps"][1]["detail"] == "Not pulled (pull: false): the host has web:v1 ba9876543210"


def test_a_failed_health_check_ends_the_run_with_the_verdict_the_logs_and_the_capture(monkeypatch):
    fake = Steps(monkeypatch, a_capture(), healthy=False)

    result = steps.run_steps(object(), params(image="web:v2"), check_mode=False)

    assert result["failed_step"] == "health_check"
    assert result["msg"] == "Container is unhealthy: its HEALTHCHECK failed"
    assert result["logs"] == "fatal: no database"
    assert result["health"]["status"] == "unhealthy"
    assert result["capture"] == a_capture()
    assert result["steps"][-1] == {"step": "health_check", "success": False, "detail": result["msg"], "seconds": 0.0}
    assert [record["step"] for record in result["steps"]] == [
        "capture_state",
        "pull_image",
        "compose_up",
        "health_check",
    ]
    assert "cleanup" not in fake.calls and "cleanup" not in result["timings"]
    assert result["cleanup"] == {} and not result["finished"]


def test_a_failed_step_keeps_its_modules_extra_keys_but_not_over_the_results_own(monkeypatch):
    Steps(monkeypatch, a_capture())

    def failing_pull(docker: object, **_: object) -> dict:
        raise StepError("Error pulling image web:v9 - manifest unknown", rc=1, stderr="manifest unknown", steps="no")

    monkeypatch.setattr(steps, "pull_image", failing_pull)

    result = steps.run_steps(object(), params(image="web:v9"), check_mode=False)

    assert result["failed_step"] == "pull_image"
    assert result["msg"] == "Error pulling image web:v9 - manifest unknown"
    assert (result["rc"], result["stderr"]) == (1, "manifest unknown")
    assert result["steps"][-1] == {"step": "pull_image", "success": False, "detail": result["msg"], "seconds": 0.0}
    assert result["pull"] == {} and result["up"] == {}


def test_an_unexpected_error_still_names_its_step(monkeypatch):
    Steps(monkeypatch, a_capture())
    monkeypatch.setattr(steps, "compose_service", lambda docker, **_: {}["container_id"])

    result = steps.run_steps(object(), params(), check_mode=False)

    assert result["failed_step"] == "compose_up"
    assert result["msg"] == "'container_id'"
    assert "KeyError" in result["exception"]


def test_check_mode_skips_the_health_check_and_the_cleanup(monkeypatch):
    fake = Steps(monkeypatch, a_capture(container_id=""))

    result = steps.run_steps(object(), params(image="web:v2"), check_mode=True)

    assert "failed_step" not in result
    assert "container_health" not in fake.calls and "cleanup" not in fake.calls
    assert all(call["check_mode"] for call in fake.calls.values())
    assert [record["detail"] for record in result["steps"]][2:] == [
        "Container created",
        "Skipped in check mode",
        "Skipped in check mode",
    ]
    assert result["health"] == {} and result["cleanup"] == {}
    assert result["finished"], "the last step is done, skipped as the roles skip it"


def test_later_steps_take_the_capture_of_an_earlier_call(monkeypatch):
    fake = Steps(monkeypatch, a_capture())
    earlier = a_capture()
    later = ["pull_image", "compose_up", "health_check", "cleanup"]

    result = steps.run_steps(object(), params(steps=later, captured=earlier), check_mode=False)

    assert "capture_state" not in fake.calls
    assert fake.calls["pull_image"]["name"] == "web:v1"
    assert fake.calls["cleanup"]["previous_image_id"] == OLD_ID
    assert result["capture"] == earlier
    assert result["steps"][0]["step"] == "pull_image"


def test_refused_options_run_nothing(monkeypatch):
    fake = Steps(monkeypatch, a_capture())

    refused = steps.run_steps(object(), params(steps=["capture_state", "health_check"]), check_mode=False)
    no_pin_file = steps.run_steps(object(), params(pin_file=""), check_mode=False)
    bad_stamp = steps.run_steps(object(), params(stamp="now"), check_mode=False)

    assert fake.calls == {}
    assert refused["failed_step"] is None and refused["steps"] == []
    assert refused["msg"].startswith("Step health_check needs compose_up")
    assert no_pin_file["msg"] == "Step compose_up needs pin_file"
    assert bad_stamp["msg"].startswith("stamp must be")


def test_a_deploy_split_over_three_calls_passes_each_calls_result_to_the_next(monkeypatch):
    fake = Steps(monkeypatch, a_capture())

    prepare = steps.run_steps(object(), params(steps=["capture_state", "pull_image"], image="web:v2"), False)
    start = steps.run_steps(
        object(), params(steps=["compose_up"], captured=prepare["capture"], image=prepare["pull"]["image"]), False
    )
    check = steps.run_steps(
        object(),
        params(
            steps=["health_check", "cleanup"], captured=prepare["capture"], pulled=prepare["pull"], started=start["up"]
        ),
        False,
    )

    assert not prepare["finished"] and not start["finished"] and check["finished"]
    assert fake.calls["compose_service"]["image"] == "web:v2"
    assert fake.calls["container_health"]["container"] == "f" * 64
    assert fake.calls["cleanup"]["current_image_id"] == NEW_ID
    assert fake.calls["cleanup"]["previous_image_id"] == OLD_ID
    assert [record["step"] for record in check["steps"]] == ["health_check", "cleanup"]
    assert (check["capture"], check["pull"], check["up"]) == (prepare["capture"], prepare["pull"], start["up"])
    # Each call's records, one after the other, are the records of one call running every step.
    whole = steps.run_steps(object(), params(image="web:v2"), False)
    assert prepare["steps"] + start["steps"] + check["steps"] == whole["steps"]


def test_finish_unchanged_finishes_a_redeploy_that_changes_nothing_in_the_same_call(monkeypatch):
    unchanged = {"changed": False, "image_id": OLD_ID}
    fake = Steps(monkeypatch, a_capture(), pulled=unchanged)
    prepare = ["capture_state", "pull_image"]

    result = steps.run_steps(object(), params(steps=prepare, finish_unchanged=True), check_mode=False)

    assert result["finished"]
    assert [record["step"] for record in result["steps"]] == list(steps.STEPS)
    assert fake.calls["compose_service"]["image"] == "web:v1"
    assert result["up"] == {"container_id": "f" * 64, "changed": True}

    fake.calls.clear()
    without = steps.run_steps(object(), params(steps=prepare), check_mode=False)
    assert not without["finished"] and "compose_service" not in fake.calls


def test_finish_unchanged_stops_after_the_pull_when_there_is_something_to_change(monkeypatch):
    fake = Steps(monkeypatch, a_capture())  # a new image was pulled
    prepare = ["capture_state", "pull_image"]

    result = steps.run_steps(object(), params(steps=prepare, finish_unchanged=True), check_mode=False)

    assert not result["finished"] and "compose_service" not in fake.calls
    assert [record["step"] for record in result["steps"]] == prepare
