"""StepProgress: how the runner's events of a deploy become step announcements and each host's finished steps."""

from __future__ import annotations

from api.runner import ANNOUNCEMENTS, StepProgress


def task_start(task: str, role: str = "") -> dict:
    return {"event": "playbook_on_task_start", "event_data": {"task": task, "role": role}}


def module_result(host: str, steps: list[str], ok: bool = True) -> dict:
    done = [{"step": step, "success": True} for step in steps]
    if not ok:
        done[-1]["success"] = False
    return {
        "event": "runner_on_ok" if ok else "runner_on_failed",
        "event_data": {"host": host, "task_action": "compose_deploy", "res": {"steps": done}},
    }


def steps_fact(host: str, steps: list[str]) -> dict:
    facts = {"__deploy_steps": [{"step": step, "success": True} for step in steps]}
    return {"event": "runner_on_ok", "event_data": {"host": host, "res": {"ansible_facts": facts}}}


def follow(*events: dict) -> tuple[list[str], dict[str, list[str]]]:
    announced: list[str] = []
    finished: dict[str, list[str]] = {}
    progress = StepProgress(
        lambda step, words: announced.append(step) or None,
        lambda host, steps: finished.__setitem__(host, [step["step"] for step in steps]),
    )
    for event in events:
        assert progress.on_event(event) is True
    return announced, finished


def test_a_round_trip_announces_the_steps_it_starts_and_the_others_when_done():
    announced, finished = follow(
        task_start("Capture the running state and pull the image"),
        module_result("web1", ["capture_state", "pull_image"]),
        task_start("Start the service"),
        module_result("web1", ["compose_up"]),
        task_start("Check health"),
    )
    assert announced == ["capture_state", "pull_image", "compose_up", "health_check"]
    assert finished == {"web1": ["capture_state", "pull_image", "compose_up"]}
    announced, _ = follow(task_start("Capture the running state and pull the image"))
    assert announced == ["capture_state", "pull_image"], "the pull is announced before it runs"
    announced, _ = follow(task_start("Check health"), module_result("web1", ["health_check", "cleanup"]))
    assert announced == ["health_check", "cleanup"], "cleanup is announced once the health check passed"


def test_an_unchanged_service_finishes_in_one_round_trip_and_every_step_is_announced_once():
    everything = ["capture_state", "pull_image", "compose_up", "health_check", "cleanup"]
    announced, finished = follow(
        task_start("Capture the running state and pull the image"),
        module_result("web1", everything),
        module_result("web2", everything),
    )
    assert announced == everything
    assert finished == {"web1": everything, "web2": everything}


def test_a_failed_round_trip_announces_the_failing_step_and_the_rescue_records_the_steps():
    announced, finished = follow(
        task_start("Capture the running state and pull the image"),
        module_result("web1", ["capture_state", "pull_image"]),
        task_start("Start the service"),
        module_result("web1", ["compose_up"]),
        task_start("Check health"),
        module_result("web1", ["health_check"], ok=False),
        task_start("Roll back to the captured image"),
        steps_fact("web1", ["capture_state", "pull_image", "compose_up", "health_check", "rollback"]),
    )
    assert announced == ["capture_state", "pull_image", "compose_up", "health_check", "rollback"]
    assert finished["web1"][-2:] == ["health_check", "rollback"]


def test_tasks_inside_roles_and_unknown_steps_announce_nothing():
    announced, finished = follow(
        task_start("Start the service", role="rollback"),
        module_result("web1", ["not_a_step"]),
        {"event": "runner_on_ok", "event_data": {"host": "web1", "res": {"changed": False}}},
    )
    assert announced == []
    assert finished == {"web1": ["not_a_step"]}
    assert set(ANNOUNCEMENTS) >= {"capture_state", "pull_image", "compose_up", "health_check", "cleanup", "rollback"}
