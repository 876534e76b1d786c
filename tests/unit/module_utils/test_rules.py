"""module_utils/deploy_rules.py: the API and the playbook take the same decisions from the same cases (the parity
test), and the rules of a deploy's round trips, its rollback choice and its record."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from api.admission import Refused, authorize
from api.inventory import read_inventory
from api.models import DeployRequest
from api.settings import DEFAULT_SIGNER
from module_utils import deploy_rules as rules

REPO = Path(__file__).resolve().parents[3]
FILTERS = REPO / "roles" / "deploy" / "filter_plugins" / "deploy.py"
DIGEST = "@sha256:" + "a" * 64


def role_filters() -> dict[str, Any]:
    """The deploy role's filters, loaded as Ansible loads them (they find deploy_rules.py in ansible.cfg's
    module_utils)."""
    spec = importlib.util.spec_from_file_location("deploy_filters", FILTERS)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FilterModule().filters()


@pytest.fixture(autouse=True)
def module_utils_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    from ansible import constants

    monkeypatch.setattr(constants, "DEFAULT_MODULE_UTILS_PATH", [str(REPO / "module_utils")])


# (services of the host, service, image, allowed)
CASES = [
    ({"web": {}}, "web", "", True),
    ({"web": {}}, "web", "ghcr.io/acme/web:2", True),
    ({"web": {}}, "db", "", False),
    ({"web": None}, "web", "", True),
    ({}, "web", "", False),
    ({"web": {}}, "web", "UPPER/case:1", False),
    ({"web": {}}, "web", "ghcr.io/acme/web:2 ; rm -rf /", False),
    ({"web": {}}, "web", "{{ lookup('pipe', 'id') }}", False),
    ({"web": {"image_repository": "ghcr.io/acme/web"}}, "web", "ghcr.io/acme/web:2", True),
    ({"web": {"image_repository": "ghcr.io/acme/web"}}, "web", "ghcr.io/acme/web" + DIGEST, True),
    ({"web": {"image_repository": "ghcr.io/acme/web"}}, "web", "ghcr.io/acme/web:2" + DIGEST, True),
    ({"web": {"image_repository": "ghcr.io/acme/web"}}, "web", "ghcr.io/acme/web", True),
    ({"web": {"image_repository": "ghcr.io/acme/web"}}, "web", "ghcr.io/evil/web:2", False),
    ({"web": {"image_repository": "ghcr.io/acme/web"}}, "web", "ghcr.io/acme/web-evil:2", False),
    ({"web": {"image_repository": "ghcr.io/acme/web"}}, "web", "ghcr.io/acme/web/sub:2", False),
    ({"web": {"image_repository": "nginx"}}, "web", "docker.io/library/nginx:1", False),
    ({"web": {"image_repository": "nginx"}}, "web", "nginx:1.27", True),
    ({"web": {"image_repository": ["a.io/x", "127.0.0.1:5099/x"]}}, "web", "127.0.0.1:5099/x:v1", True),
    ({"web": {"image_repository": ["a.io/x", "127.0.0.1:5099/x"]}}, "web", "127.0.0.1:5099/y:v1", False),
    ({"web": {"image_repository": ""}}, "web", "anything/at-all:1", True),
    ({"web": {"image_repository": []}}, "web", "anything/at-all:1", True),
]


def api_allows(tmp_path: Path, services: dict[str, Any], service: str, image: str) -> bool:
    """What the API answers the request: the body's validation, then the inventory's allow-list."""
    inventory = tmp_path / "inventory.yml"
    host = {"ansible_connection": "local", "deploy_compose_dir": str(tmp_path), "deploy_services": services}
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"web1": host}}}), encoding="utf-8")
    view = read_inventory(inventory)
    try:
        request = DeployRequest.model_validate({"service": service, **({"image": image} if image else {})})
        authorize(view, view.environment(None), request, frozenset({DEFAULT_SIGNER}))
    except (ValidationError, Refused):
        return False
    return True


@pytest.mark.parametrize(("services", "service", "image", "allowed"), CASES)
def test_the_api_and_the_playbook_take_the_same_decision(tmp_path, services, service, image, allowed):
    playbook_refusal = role_filters()["deploy_refusal"]("deploy", service, services, image)
    assert (playbook_refusal == "") is allowed, playbook_refusal
    assert api_allows(tmp_path, services, service, image) is allowed


def test_each_refusal_names_what_is_refused_in_one_line():
    refuse = role_filters()["deploy_refusal"]
    assert refuse("deploy", "db", {"web": {}, "api": {}}, "") == "Service 'db' not allowed. Allowed: api, web"
    assert refuse("deploy", "web", {"web": {}}, "UPPER/x") == "Image 'UPPER/x' is not a valid image reference"
    assert refuse("deploy", "web", {"web": {"image_repository": ["a/b", "c/d"]}}, "e/f:1") == (
        "Image 'e/f:1' is not allowed for service 'web'. Allowed repositories: a/b, c/d"
    )
    assert refuse("promote", "web", {"web": {}}, "") == "Action 'promote' is neither deploy nor rollback"
    assert refuse("deploy", ["web"], {"web": {}}, "") == "Service '' not allowed. Allowed: web"
    assert all("\n" not in refuse("deploy", "web", {"web": {"image_repository": "x"}}, image) for image in ("a\nb",))


def test_settings_fill_in_the_defaults_and_an_empty_compose_file_means_found_as_compose_finds_it():
    assert rules.service_settings({"web": {"pull": False}}, "web") == {**rules.SERVICE_DEFAULTS, "pull": False}
    assert rules.service_settings({"web": None}, "web")["compose_file"] == ""
    assert rules.service_settings(None, "web") == rules.SERVICE_DEFAULTS


def test_the_rollback_choice_prefers_the_compose_files_repository_and_a_fixed_tag_and_never_a_history_tag():
    tags = [
        "deploy-history/shop/web:20260101T000000000000-0123456789ab",
        "ghcr.io/acme/web:latest",
        "mirror.io/acme/web:1.4",
        "ghcr.io/acme/web:1.4",
        "<none>:<none>",
    ]
    assert rules.ranked_names(tags, "deploy-history", "ghcr.io/acme/web:1.5") == [
        "ghcr.io/acme/web:1.4",
        "ghcr.io/acme/web:latest",
        "mirror.io/acme/web:1.4",
    ]
    # Docker Hub's names are one repository however they are written.
    assert rules.ranked_names(["docker.io/library/nginx:1", "other:1"], "deploy-history", "nginx:latest")[0] == (
        "docker.io/library/nginx:1"
    )
    assert rules.ranked_names([], "deploy-history", "") == []


def record(step: str, success: bool = True) -> dict[str, Any]:
    return {"step": step, "success": success, "detail": "d"}


def test_the_next_round_trip_follows_the_last_step_done_and_only_a_failure_that_changed_the_host_rolls_back():
    assert rules.next_steps({"steps": []}, "deploy") == ["preflight", "capture_state", "pull_image"]
    done = {"steps": [record("preflight"), record("capture_state"), record("pull_image")]}
    assert rules.next_steps(done, "deploy") == ["compose_up"]
    assert rules.next_steps({"steps": [*done["steps"], record("compose_up")]}, "deploy") == ["health_check", "cleanup"]
    every = [record(step) for trip in rules.ROUND_TRIPS["deploy"] for step in trip]
    assert rules.next_steps({"steps": every}, "deploy") == []
    for step, after in [
        ("preflight", []),
        ("capture_state", []),
        ("pull_image", []),
        ("compose_up", ["rollback"]),
        ("health_check", ["rollback"]),
        ("cleanup", ["rollback"]),
        ("choose_image", []),
    ]:
        assert rules.next_steps({"steps": [], "failed_step": step}, "deploy") == after, step
    rolled = {"steps": [], "failed_step": "health_check", "rollback": {"success": True, "rolled_back": True}}
    assert rules.next_steps(rolled, "deploy") == []
    assert rules.next_steps({"steps": [record("capture_state")]}, "rollback") == [
        "preflight",
        "capture_state",
        "choose_image",
        "pull_image",
    ]


def test_a_failure_outside_the_steps_fails_the_first_unfinished_one():
    state = rules.failed_outside({"steps": []}, "deploy", "Host unreachable: ssh: connect refused")
    assert state["failed_step"] == "preflight"
    assert state["steps"] == [
        {"step": "preflight", "success": False, "detail": "Host unreachable: ssh: connect refused"}
    ]
    assert rules.next_steps(state, "deploy") == []
    failed = {"steps": [record("health_check", False)], "failed_step": "health_check", "error": "unhealthy"}
    assert rules.failed_outside(failed, "deploy", "other") is failed


def test_the_record_of_each_outcome_and_the_line_a_failed_run_ends_with():
    capture = {"image": "web:1", "image_id": "sha256:" + "1" * 64}
    pull = {"image": "web:2", "image_id": "sha256:" + "2" * 64, "changed": True}
    every = [record(step) for step in ("capture_state", "pull_image", "compose_up", "health_check", "cleanup")]
    done = rules.host_record({"capture": capture, "pull": pull, "steps": every}, "deploy", "web")
    assert (done["outcome"], done["success"], done["changed"], done["error"]) == ("succeeded", True, True, None)
    assert (done["old_image"], done["new_image"], done["message"]) == ("web:1", "web:2", "Deployment successful")
    assert rules.failure_message({"steps": every}, "deploy", "web") == ""

    failed = {"capture": capture, "pull": pull, "steps": every[:3], "failed_step": "health_check", "error": "unhealthy"}
    rolled = {
        **failed,
        "rollback": {"success": True, "rolled_back": True, "detail": "Rolled back to web:1 (111111111111)"},
    }
    assert rules.host_record(rolled, "deploy", "web")["outcome"] == "rolled_back"
    assert (
        rules.host_record(rolled, "rollback", "web")["message"] == "Rollback failed, restored the image that ran before"
    )
    assert rules.failure_message(rolled, "deploy", "web") == (
        "Deploy of web failed at health_check: unhealthy. Rolled back to web:1 (111111111111)"
    )
    broken = {**failed, "rollback": {"success": False, "rolled_back": False, "detail": "Rollback to web:1 failed: x"}}
    assert rules.host_record(broken, "deploy", "web")["outcome"] == "rollback_failed"
    first = {**failed, "rollback": {"success": True, "rolled_back": False, "detail": "Nothing to roll back to"}}
    assert rules.host_record(first, "deploy", "web")["outcome"] == "failed"
    early = {"capture": capture, "steps": [record("pull_image", False)], "failed_step": "pull_image", "error": "no"}
    assert rules.host_record({**early, "target": "web:9"}, "deploy", "web")["new_image"] == "web:9"
    assert (
        rules.failure_message(early, "deploy", "web") == "Deploy of web failed at pull_image: no. Nothing was changed"
    )
    assert rules.host_record(early, "deploy", "web")["changed"] is False

    stopped = rules.host_record(
        {"not_reached": True, "error": "Not deployed: the rollout stopped at web2"}, "deploy", "web"
    )
    assert (stopped["outcome"], stopped["message"], stopped["changed"]) == ("not_reached", "Not deployed", False)
    undone = {
        **rolled,
        "failed_step": None,
        "stopped_at": "web2",
        "error": "Rolled back because the rollout stopped at web2",
    }
    assert rules.host_record(undone, "deploy", "web")["changed"] is True
    assert rules.failure_message(undone, "deploy", "web").startswith(
        "Deploy of web was undone because the rollout stopped at web2."
    )


# Blue-green.


def test_a_blue_green_service_settings_are_checked_and_its_health_url_probes_the_new_container():
    problem = rules.settings_problem
    assert problem("web", {}) == ""
    assert problem("web", {"strategy": "blue_green", "health_url": "http://{address}:8080/health"}) == ""
    assert (
        problem("web", {"strategy": "canary"}) == "Service 'web': strategy 'canary' is neither recreate nor blue_green"
    )
    assert "drain_seconds must be a whole number" in problem("web", {"drain_seconds": -1})
    assert "observe_seconds must be a whole number" in problem("web", {"observe_seconds": "5"})
    published = problem("web", {"strategy": "blue_green", "health_url": "http://127.0.0.1:8089/health"})
    assert "write its host as {address}" in published and "'http://127.0.0.1:8089/health'" in published
    # A recreate service's URL may name its published port, as before.
    assert problem("web", {"health_url": "http://127.0.0.1:8089/health"}) == ""
    assert rules.refusal("deploy", "web", {"web": {"strategy": "canary"}}, "").startswith("Service 'web': strategy")


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"container_name": "web"}, "it sets container_name 'web', which two containers cannot share"),
        (
            {"ports": [{"target": 8080, "published": "8089", "host_ip": "127.0.0.1", "protocol": "tcp"}]},
            "it publishes host port 127.0.0.1:8089 (container port 8080)",
        ),
        ({"network_mode": "host"}, "it uses network_mode host"),
        ({"deploy": {"replicas": 3}}, "it runs 3 replicas"),
        ({"scale": 2}, "it runs 2 replicas"),
    ],
)
def test_what_makes_two_containers_collide_is_named_with_its_fix(config, words):
    problem = rules.twin_problem("web", config, "/srv/shop/compose.yaml")
    assert problem.startswith("Cannot deploy service web of /srv/shop/compose.yaml blue_green: ")
    assert words in problem and problem.endswith("or deploy it with strategy recreate") and "\n" not in problem


def test_two_containers_that_do_not_collide_pass():
    ephemeral = {"ports": [{"target": 8080, "protocol": "tcp"}], "deploy": {"replicas": 1}, "networks": {"x": None}}
    assert rules.twin_problem("web", ephemeral, "compose.yaml") == ""


def test_a_blue_green_deploy_has_four_round_trips_and_its_last_step_decides_its_outcome():
    assert rules.round_trips("deploy", "blue_green")[-1] == ("drain", "cleanup")
    state = {"strategy": "blue_green", "action": "deploy", "steps": []}
    assert rules.next_steps(state, "deploy") == ["preflight", "capture_state", "pull_image"]
    done = [{"step": step} for trip in rules.round_trips("deploy", "blue_green")[:3] for step in trip]
    assert rules.next_steps({**state, "steps": done}, "deploy") == ["drain", "cleanup"]
    assert rules.outcome_of({**state, "steps": done}) == "failed", "not drained: not done"
    settled = {"action": "settle", "strategy": "blue_green", "steps": [{"step": "capture_state"}, {"step": "drain"}]}
    assert rules.outcome_of(settled) == "succeeded"
    # A settling that fails is not rolled back: the API checks again.
    assert rules.next_steps({**settled, "failed_step": "drain"}, "settle") == []
