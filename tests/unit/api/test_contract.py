"""api/contract.py: every name the API knows of the playbooks is checked against them, and a run's progress comes from
what the deploy module returned, never from task names."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import yaml

from api import contract
from api.models import DeployRequest
from api.runner import deploy_extravars
from module_utils import deploy_rules

REPO = Path(__file__).resolve().parents[3]
ROLE = REPO / "roles" / "deploy"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def tasks(node: Any) -> list[dict[str, Any]]:
    """Every task of a task list, blocks opened (their block, rescue and always)."""
    found = []
    for task in node or []:
        found.append(task)
        for part in ("block", "rescue", "always"):
            found.extend(tasks(task.get(part)))
    return found


def role_tasks() -> list[dict[str, Any]]:
    return [task for path in sorted((ROLE / "tasks").glob("*.yml")) for task in tasks(load(path))]


def words(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_the_playbooks_exist_where_the_contract_says_and_each_runs_the_deploy_role():
    assert contract.DEPLOY_PLAYBOOK == REPO / "playbooks" / "deploy.yml"
    for action, name in contract.SIBLINGS.items():
        path = contract.playbook(contract.DEPLOY_PLAYBOOK, action)
        assert path.name == name and path.is_file(), action
    for action in ("deploy", "status", "engines"):
        plays = load(contract.playbook(contract.DEPLOY_PLAYBOOK, action))
        roles = [task["ansible.builtin.import_role"]["name"] for play in plays for task in play["tasks"]]
        assert set(roles) == {"deploy"}, action
    rollback = load(contract.playbook(contract.DEPLOY_PLAYBOOK, "rollback"))
    assert rollback[0]["ansible.builtin.import_playbook"] == "deploy.yml"
    assert rollback[0]["vars"] == {"deploy_action": "rollback"}


def test_every_extra_var_the_api_passes_is_read_by_the_playbooks_or_the_role():
    request = DeployRequest(service="web", image="web:v2", environment="prod", message="m")
    passed = deploy_extravars("id-1", request)
    assert set(passed) == set(contract.EXTRA_VARS)
    text = words(REPO / "playbooks" / "deploy.yml") + "".join(words(path) for path in (ROLE / "tasks").glob("*.yml"))
    specs = load(ROLE / "meta" / "argument_specs.yml")["argument_specs"]
    for name in contract.EXTRA_VARS:
        assert name in text or name in specs["finish"]["options"], name
    assert contract.VAR_SERVICE in words(REPO / "playbooks" / "status.yml")
    assert contract.VAR_ENVIRONMENT in words(REPO / "playbooks" / "status.yml")
    # The reconciliation's status reads pass deploy_engine_wait=0: the status entry point takes it.
    assert contract.VAR_ENGINE_WAIT in specs["status"]["options"]
    assert contract.VAR_ENGINE_WAIT in words(ROLE / "tasks" / "status.yml")
    # The registry watch's look is the status read with deploy_watch, and the schedule's image as `image`.
    assert contract.VAR_WATCH in specs["status"]["options"]
    assert contract.VAR_WATCH in words(ROLE / "tasks" / "status.yml")
    assert contract.VAR_IMAGE in words(REPO / "playbooks" / "status.yml")


def test_the_engine_check_publishes_what_the_engine_watch_reads_and_never_fails():
    (check, publish) = load(ROLE / "tasks" / "engine.yml")
    assert check["failed_when"] is False and check["changed_when"] is False and check["check_mode"] is False
    assert check["ignore_unreachable"] is True, "an SSH host that cannot be reached is an answer, not a failure"
    assert check["environment"] == "{{ __deploy_docker_environment }}", "the host's engine, as the deploy's"
    data = publish["ansible.builtin.set_stats"]["data"]
    assert data.startswith("{{ {'" + contract.ENGINE_KEY + "': {inventory_hostname: {")
    assert all(f"'{field}'" in data for field in contract.ENGINE_FIELDS)
    assert publish["ansible.builtin.set_stats"]["aggregate"] is True
    specs = load(ROLE / "meta" / "argument_specs.yml")["argument_specs"]
    assert "engine" in specs
    (play,) = load(REPO / "playbooks" / "engines.yml")
    assert play["hosts"] == "all" and play["gather_facts"] is False
    assert [task["ansible.builtin.import_role"] for task in play["tasks"]] == [
        {"name": "deploy", "tasks_from": "engine"}
    ]


def test_what_the_playbooks_publish_is_under_the_keys_and_with_the_fields_the_contract_names():
    published = [
        task["ansible.builtin.set_stats"]["data"] for task in role_tasks() if "ansible.builtin.set_stats" in task
    ]
    keys = {text.split("{'", 1)[1].split("'", 1)[0] for text in published}
    assert keys == {contract.RESULT_KEY, contract.STATUS_KEY, contract.ENGINE_KEY}
    record = deploy_rules.host_record({}, "deploy", "web")
    assert tuple(record) == contract.RESULT_FIELDS


def module_argument_spec() -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("compose_deploy", REPO / "library" / "compose_deploy.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ARGUMENT_SPEC


def test_the_steps_are_the_modules_and_every_round_trip_runs_in_the_module_the_contract_follows():
    choices = module_argument_spec()["steps"]["choices"]
    assert list(contract.ANNOUNCEMENTS) == list(deploy_rules.STEPS) == choices[:-1]
    assert set(contract.StepRecord.model_fields["step"].annotation.__args__) == set(deploy_rules.STEPS)
    engine = [task for task in role_tasks() if contract.ENGINE_MODULE in task]
    assert len(engine) == 7, "four round trips, the rollback, the undo of a rollout, the status read"
    # A removal (the API's reconciliation of a first deploy) is refused where the deploy runs in the service's own
    # container, then reads, then takes the container away.
    assert deploy_rules.ROUND_TRIPS[deploy_rules.REMOVE] == (("preflight", "capture_state", "rollback"),)
    blue_green_only = ("observe", "drain")
    for strategy in deploy_rules.STRATEGIES:
        for action in deploy_rules.ACTIONS:
            trips = deploy_rules.round_trips(action, strategy)
            assert [step for trip in trips for step in trip] == [
                step
                for step in deploy_rules.STEPS
                if step != "rollback"
                and (action == "rollback" or step != "choose_image")
                and (strategy == deploy_rules.BLUE_GREEN or step not in blue_green_only)
            ]
        assert deploy_rules.round_trips(deploy_rules.REMOVE, strategy) == deploy_rules.ROUND_TRIPS[deploy_rules.REMOVE]


def test_no_task_name_is_part_of_the_contract():
    source = words(REPO / "api" / "contract.py") + words(REPO / "api" / "runner.py")
    for task in role_tasks():
        assert task["name"] not in source, task["name"]


# Progress.


def started(host: str) -> dict[str, Any]:
    return {"event": "runner_on_start", "event_data": {"host": host, "task_action": contract.ENGINE_MODULE}}


def returned(host: str, steps: list[str], next_steps: list[str], ok: bool = True) -> dict[str, Any]:
    done = [{"step": step, "success": True} for step in steps]
    if not ok:
        done[-1]["success"] = False
    return {
        "event": "runner_on_ok" if ok else "runner_on_failed",
        "event_data": {
            "host": host,
            "task_action": contract.ENGINE_MODULE,
            "res": {"state": {"steps": done}, "next_steps": next_steps},
        },
    }


def follow(*events: dict[str, Any], action: str = "deploy") -> tuple[list[str], dict[str, list[str]]]:
    announced: list[str] = []
    finished: dict[str, list[str]] = {}
    progress = contract.StepProgress(
        action,
        lambda step, words: announced.append(step),
        lambda host, steps: finished.__setitem__(host, [step["step"] for step in steps]),
    )
    for event in events:
        assert progress.on_event(event) is True
    return announced, finished


def test_a_change_announces_each_round_trip_when_it_starts():
    announced, finished = follow(
        started("web1"),
        returned("web1", ["preflight", "capture_state", "pull_image"], ["compose_up"]),
        started("web1"),
        returned("web1", ["preflight", "capture_state", "pull_image", "compose_up"], ["health_check", "cleanup"]),
    )
    assert announced == ["preflight", "capture_state", "pull_image", "compose_up", "health_check"]
    assert finished == {"web1": ["preflight", "capture_state", "pull_image", "compose_up"]}
    announced, _ = follow(started("web1"))
    assert announced == ["preflight", "capture_state", "pull_image"], "the pull is announced before it runs"
    announced, _ = follow(started("web1"), action="rollback")
    assert announced == ["preflight", "capture_state", "choose_image", "pull_image"]


def test_cleanup_is_announced_once_the_health_check_passed_and_a_normal_deploy_never_announces_a_rollback():
    every = ["preflight", "capture_state", "pull_image", "compose_up", "health_check", "cleanup"]
    announced, _ = follow(
        started("web1"),
        returned("web1", every[:3], ["compose_up"]),
        started("web1"),
        returned("web1", every[:4], ["health_check", "cleanup"]),
        started("web1"),
        returned("web1", every, []),
    )
    assert announced == every
    assert "rollback" not in announced


def test_an_unchanged_service_finishes_in_one_round_trip_and_every_step_is_announced_once():
    every = ["preflight", "capture_state", "pull_image", "compose_up", "health_check", "cleanup"]
    announced, finished = follow(
        started("web1"), started("web2"), returned("web1", every, []), returned("web2", every, [])
    )
    assert announced == every
    assert finished == {"web1": every, "web2": every}


def test_a_failure_that_changed_the_host_announces_the_rollback_its_module_result_names():
    announced, finished = follow(
        started("web1"),
        returned("web1", ["preflight", "capture_state", "pull_image"], ["compose_up"]),
        returned("web1", ["preflight", "capture_state", "pull_image", "compose_up"], ["health_check", "cleanup"]),
        returned(
            "web1", ["preflight", "capture_state", "pull_image", "compose_up", "health_check"], ["rollback"], ok=False
        ),
        started("web1"),
        returned("web1", ["preflight", "capture_state", "pull_image", "compose_up", "health_check", "rollback"], []),
    )
    assert announced == ["preflight", "capture_state", "pull_image", "compose_up", "health_check", "rollback"]
    assert finished["web1"][-2:] == ["health_check", "rollback"]


def test_other_tasks_and_unknown_steps_announce_nothing():
    announced, finished = follow(
        {"event": "runner_on_ok", "event_data": {"host": "web1", "task_action": "set_fact", "res": {}}},
        {"event": "playbook_on_task_start", "event_data": {"task": "Start the service"}},
        {
            "event": "runner_on_ok",
            "event_data": {
                "host": "web1",
                "task_action": contract.ENGINE_MODULE,
                "res": {"state": {"steps": [{"step": "not_a_step"}]}},
            },
        },
    )
    assert announced == []
    assert finished == {"web1": ["not_a_step"]}


# The HTTP contract as OpenAPI documents it.


def openapi() -> dict[str, Any]:
    from api.main import create_app

    return create_app().openapi()


def test_the_signed_body_documents_at_and_refuses_unknown_fields():
    body = openapi()["paths"]["/deploy"]["post"]["requestBody"]["content"]["application/json"]["schema"]

    assert body["additionalProperties"] is False
    at = body["properties"]["at"]
    assert "RFC 3339" in at["description"] and "DEPLOY_SCHEDULE_HORIZON" in at["description"]
    assert {"type": "string", "format": "date-time", "maxLength": 64} in at["anyOf"]
    assert "a field the API does not know" in openapi()["paths"]["/deploy"]["post"]["responses"]["422"]["description"]


def test_the_202_documents_a_started_and_a_planned_deploy():
    document = openapi()
    for path in ("/deploy", "/rollback"):
        schema = document["paths"][path]["post"]["responses"]["202"]["content"]["application/json"]["schema"]
        assert {option["$ref"].rsplit("/", 1)[1] for option in schema["anyOf"]} == {
            "DeploymentAccepted",
            "DeploymentScheduled",
        }
    scheduled = document["components"]["schemas"]["DeploymentScheduled"]
    assert set(scheduled["properties"]) == {"deployment_id", "service", "status", "at", "status_url"}
    assert scheduled["properties"]["status"]["const"] == "scheduled"


def test_the_cancel_is_documented_with_its_signature_and_answers():
    document = openapi()
    cancel = document["paths"]["/deployments/{deployment_id}"]["delete"]

    assert {"200", "403", "404", "409"} <= set(cancel["responses"])
    assert cancel["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/DeploymentRecord")
    (header,) = [parameter for parameter in cancel["parameters"] if parameter["in"] == "header"]
    assert (header["name"], header["required"]) == ("X-Hub-Signature-256", True)
    assert "cancel:" in header["description"]
    record = document["components"]["schemas"]["DeploymentRecord"]["properties"]
    assert set(record["trigger"]["enum"]) == {"webhook", "schedule", "watch", "cli", "recovery"}
    assert {"scheduled", "cancelled", "missed"} <= set(record["outcome"]["enum"])
    assert "planned_at" in record
