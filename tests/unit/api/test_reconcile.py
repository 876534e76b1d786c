"""Reconciliation while the API runs, the engine watch and what a run that ended early means, with a fake runner:
the rules one by one (backoff, supersession, the first deploy's removal, a killed run's summary), then the API that
applies them (records, /health, metrics, notifications)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from datetime import datetime
from pathlib import Path

import pytest
from fakerunner import FakeRunner, success_result
from fastapi.testclient import TestClient
from test_history import (
    NEW_ID,
    OLD_ID,
    make_settings,
    read,
    refused_by_preflight,
    signed_post,
    wait_for,
)
from test_metrics import sample, scrape
from test_routes import post

from api.deployer import Deployer
from api.engines import EngineState, Heard, engine_states, health_words
from api.history import History
from api.main import create_app
from api.notify import message_for
from api.reconciler import Reconciler
from api.recovery import (
    Recovery,
    affected_hosts,
    awaiting_line,
    backoff,
    decide,
    read_problem,
    removal_reason,
    superseding,
)
from api.runner import HostEvents, RunResult, one_line
from api.summary import summarize

HOST = "localhost"
V1, V2 = "ghcr.io/acme/portal:1", "ghcr.io/acme/portal:2"


# --- the rules ------------------------------------------------------------------------------------------------------


def test_checks_back_off_from_two_seconds_doubling_up_to_the_interval():
    assert [backoff(checks, 30) for checks in range(1, 8)] == [2, 4, 8, 16, 30, 30, 30]
    assert [backoff(checks, 5) for checks in range(1, 4)] == [2, 4, 5]
    assert backoff(0, 30) == 2, "a record never checked is checked within 2 s"


def steps(*, captured: str | None = OLD_ID, pulled: str | None = NEW_ID, healthy: bool = False) -> list[dict]:
    done = [{"step": "capture_state", "success": True, "detail": "d", **({"image_id": captured} if captured else {})}]
    if pulled:
        done.append({"step": "pull_image", "success": True, "detail": "d", "image_id": pulled})
        done.append({"step": "compose_up", "success": True, "detail": "d"})
        done.append({"step": "health_check", "success": healthy, "detail": "d"})
    return done


def status(image_id: str | None, container: str | None = "c0ffee") -> dict:
    return {"container_id": container if image_id else None, "image_id": image_id, "state": "running"}


def first_deploy(**fields) -> dict:
    return {"old_image_id": None, "new_image_id": NEW_ID, "steps": steps(captured=None), **fields}


def test_a_first_deploy_s_container_that_never_passed_its_health_check_is_removed():
    assert (
        removal_reason(first_deploy(), status(NEW_ID)) == "the first deploy's container never passed its health check"
    )


@pytest.mark.parametrize(
    ("record", "found", "why"),
    [
        (first_deploy(), status(None), "no container: nothing to remove"),
        (first_deploy(), status(OLD_ID), "a container of another image is not the deploy's"),
        (first_deploy(steps=steps(captured=None, healthy=True)), status(NEW_ID), "it passed its health check"),
        (first_deploy(steps=[]), status(NEW_ID), "the capture never finished: what ran before is not known"),
        (first_deploy(new_image_id=None, steps=steps(captured=None, pulled=None)), status(NEW_ID), "nothing pulled"),
        ({"old_image_id": OLD_ID, "new_image_id": NEW_ID, "steps": steps()}, status(NEW_ID), "not a first deploy"),
    ],
)
def test_nothing_else_is_removed(record, found, why):
    assert removal_reason(record, found) is None, why


def test_each_host_is_restored_removed_or_left_alone():
    record = {
        "hosts": {
            "old": {"outcome": "rollback_failed", "old_image_id": OLD_ID, "new_image_id": NEW_ID},
            "new": {"outcome": "rollback_failed", "old_image_id": None, "new_image_id": NEW_ID},
            "fine": {"outcome": "interrupted", "old_image_id": OLD_ID, "new_image_id": NEW_ID},
        },
        "steps": [
            *({**step, "host": "old"} for step in steps()),
            *({**step, "host": "new"} for step in steps(captured=None)),
            *({**step, "host": "fine"} for step in steps()),
        ],
    }

    decisions = decide(record, {"old": status(NEW_ID), "new": status(NEW_ID), "fine": status(OLD_ID)})

    assert {host: decision.action for host, decision in decisions.items()} == {"old": "rollback", "new": "remove"}


def two(old: str = "running", new: str = "running") -> dict:
    """A status with both containers of an unfinished blue-green deploy."""
    return {
        **status(NEW_ID),
        "containers": [
            {"container_id": "new", "image_id": NEW_ID, "state": new},
            {"container_id": "old", "image_id": OLD_ID, "state": old},
        ],
    }


@pytest.mark.parametrize(
    ("done", "found", "keep", "why"),
    [
        (["compose_up"], two(), OLD_ID, "never proven: its health check did not finish"),
        (["compose_up", "health_check"], two(), OLD_ID, "healthy, but the observation did not finish"),
        (["compose_up", "health_check", "observe"], two(), NEW_ID, "proven: the old one drains"),
        (["compose_up", "health_check", "observe"], two(old="exited"), NEW_ID, "the drain stopped the old one"),
    ],
)
def test_a_blue_green_deploy_left_with_two_containers_keeps_the_proven_one(done, found, keep, why):
    record = {
        "old_image_id": OLD_ID,
        "new_image_id": NEW_ID,
        "steps": [{"step": step, "success": True} for step in done],
    }

    decision = decide(record, {"h": found})["h"]

    assert (decision.action, decision.keep_image_id) == ("settle", keep), why
    assert decision.reason.startswith("2 containers of the service were left; ")
    assert decision.keeps_new == (keep == NEW_ID)


def test_a_blue_green_deploy_whose_container_to_keep_does_not_run_is_not_settled():
    record = {"old_image_id": OLD_ID, "new_image_id": NEW_ID, "steps": [{"step": "compose_up", "success": True}]}
    assert all(decision.action != "settle" for decision in decide(record, {"h": two(old="exited")}).values())


def test_the_hosts_to_reconcile_are_those_the_run_left_unsettled():
    record = {
        "targets": ["a", "b", "c", "d", "e"],
        "hosts": {
            "a": {"outcome": "rolled_back"},
            "b": {"outcome": "rollback_failed"},
            "c": {"outcome": "running"},
            "d": {"outcome": "interrupted"},
        },
    }
    assert affected_hosts(record) == ("b", "c", "d", "e"), "e published nothing"


def later(record_id: str, outcome: str, hosts: dict[str, str] | None = None, **fields) -> dict:
    return {
        "id": record_id,
        "outcome": outcome,
        "targets": list(hosts or {HOST: outcome}),
        "hosts": {host: {"outcome": each} for host, each in (hosts or {HOST: outcome}).items()},
        **fields,
    }


def test_a_later_success_on_a_host_supersedes_the_reconciliation_there_and_nothing_else_does():
    record = {"id": "d0", "targets": ["web1", "web2"]}
    found = superseding(
        record,
        ["web1", "web2"],
        [
            later("d1", "rolled_back", {"web1": "rolled_back"}),  # restored what d0 left: d0 still needs a look
            later("d2", "running", {"web1": "running"}),  # not finished: the reconciler waits for its claim instead
            later("d3", "succeeded", {"web2": "succeeded"}),
            later("d4", "succeeded", {"web2": "succeeded"}),
            later("d0", "succeeded", {"web1": "succeeded"}),  # the record itself
        ],
    )
    assert found == {"web2": "d3"}


def test_a_later_deploy_to_other_hosts_supersedes_nothing():
    record = {"id": "d0", "targets": ["web1"]}
    assert superseding(record, ["web1"], [later("d1", "succeeded", {"staging": "succeeded"})]) == {}


def test_why_a_status_read_has_no_answer_is_said_in_a_few_words():
    run = RunResult(
        status="failed",
        rc=2,
        unreachable={"a": "Failed to connect to the host via ssh"},
        failures={"b": "The Docker engine at unix:///x did not answer within 0 s: ...", "c": "Permission denied"},
        engine_unreachable={"b": "The Docker engine at unix:///x did not answer within 0 s: ..."},
    )
    assert read_problem(run, "a") == "a cannot be reached (Failed to connect to the host via ssh)"
    assert read_problem(run, "b") == "the Docker engine of b does not answer"
    assert read_problem(run, "c") == "the status read of c failed: Permission denied"
    assert read_problem(run, "d") == "the status read of d ended failed (exit code 2) without an answer"
    line = awaiting_line(["the Docker engine of b does not answer"], 3, datetime(2026, 1, 2, 12))
    assert line == "Awaiting reconciliation: the Docker engine of b does not answer (3 checks, last 12:00:00 UTC)"


def test_the_runner_reads_unreachable_hosts_failures_and_a_silent_engine_from_the_events():
    passed = []
    events = HostEvents(lambda event: passed.append(event) or True)
    for event in (
        {"event": "runner_on_unreachable", "event_data": {"host": "a", "res": {"msg": "Task failed: Gone\nmore:"}}},
        {"event": "runner_on_failed", "event_data": {"host": "b", "ignore_errors": True, "res": {"msg": "ignored"}}},
        {"event": "runner_on_failed", "event_data": {"host": "c", "res": {"msg": "x", "engine_unreachable": True}}},
        {"event": "runner_on_ok", "event_data": {"host": "d", "res": {}}},
    ):
        events.on_event(event)

    assert (events.unreachable, events.failures, events.engine_unreachable) == ({"a": "Gone"}, {"c": "x"}, {"c": "x"})
    assert len(passed) == 4, "every event goes on to the step progress"
    assert one_line("Task failed: Data could not be sent to remote host:\n  details") == (
        "Data could not be sent to remote host"
    )


# --- what a run that ended early means --------------------------------------------------------------------------


def test_a_run_killed_before_its_host_published_is_interrupted_and_says_so_in_one_line():
    killed = RunResult(status="failed", rc=None, results={})

    summary = summarize("portal", killed, 900, hosts=("prod1",), current_step="health_check")

    assert summary.outcome == "interrupted"
    assert summary.body.error == (
        "The playbook run ended (ansible-playbook was killed by a signal) during health_check before prod1 "
        "published its result"
    )
    assert summary.body.hosts["prod1"].outcome == "interrupted"


def test_a_host_that_dropped_mid_run_is_interrupted_and_named_while_the_others_keep_their_outcome():
    dropped = RunResult(
        status="failed",
        rc=4,
        results={"prod1": {**success_result(), "outcome": "succeeded"}},
        unreachable={"prod2": 'Data could not be sent to remote host "10.0.0.2"'},
    )

    summary = summarize("portal", dropped, 900, hosts=("prod1", "prod2"), current_step="health_check")

    assert summary.outcome == "interrupted"
    assert summary.body.error == (
        "prod2 became unreachable during health_check before it published its result: Data could not be sent to "
        'remote host "10.0.0.2"'
    )
    assert {host: entry.outcome for host, entry in summary.body.hosts.items()} == {
        "prod1": "succeeded",
        "prod2": "interrupted",
    }


def test_a_host_refused_before_its_deploy_began_is_a_plain_failure():
    refused = RunResult(status="failed", rc=2, results={}, failures={"prod1": "Service 'portal' is not allowed"})

    summary = summarize("portal", refused, 900, hosts=("prod1",))

    assert (summary.outcome, summary.body.error) == ("failed", "prod1: Service 'portal' is not allowed")


def test_a_run_that_ended_otherwise_before_a_host_published_names_its_exit_code():
    ended = RunResult(status="failed", rc=1, results={})
    summary = summarize("portal", ended, 900, hosts=("prod1",))
    assert (summary.outcome, summary.body.error) == (
        "interrupted",
        "The playbook run ended (exit code 1) before prod1 published its result",
    )


def test_every_host_that_published_succeeded_is_still_a_success():
    run = RunResult(status="successful", rc=0, results={"a": success_result(), "b": success_result()})
    assert summarize("portal", run, 900, hosts=("a", "b")).outcome == "succeeded"


# --- the engine watch ------------------------------------------------------------------------------------------------


def test_the_engine_check_s_answers_are_read_per_host_and_an_unreachable_host_counts_as_a_silent_engine():
    run = RunResult(
        status="successful",
        rc=0,
        results={
            "up": {"reachable": True, "detail": "Docker 27.1 at unix:///x"},
            "down": {"reachable": False, "detail": "Cannot connect to the Docker daemon"},
            "gone": {"reachable": False, "detail": "Host unreachable: refused"},
        },
        unreachable={"gone": "refused", "lost": "timed out"},
    )

    states = engine_states(run, ["up", "down", "gone", "lost", "never"])

    assert states == {
        "up": Heard(True, "Docker 27.1 at unix:///x"),
        "down": Heard(False, "Cannot connect to the Docker daemon"),
        "gone": Heard(False, "Host unreachable: refused", True),
        "lost": Heard(False, "Host unreachable: timed out", True),
    }


def state(reachable: bool) -> EngineState:
    return EngineState(reachable, "", False, 0.0, None)


def test_health_says_reachable_unreachable_or_unknown():
    assert health_words({}, ["a", "b"]) == ("unknown", {"a": "unknown", "b": "unknown"})
    assert health_words({"a": state(True)}, ["a", "b"]) == ("reachable", {"a": "reachable", "b": "unknown"})
    assert health_words({"a": state(True), "b": state(False)}, ["a", "b"]) == (
        "unreachable",
        {"a": "reachable", "b": "unreachable"},
    )


@pytest.fixture
def watched(tmp_path, fake_runner, monkeypatch):
    """The app with its engine watch on (every 0.05 s) and the engine of localhost silent."""
    monkeypatch.setenv("DEPLOY_ENGINE_CHECK_INTERVAL", "0.05")
    fake_runner.by_playbook["engines.yml"] = engine_answer(False)
    with TestClient(create_app(make_settings(tmp_path))) as client:
        yield client


def engine_answer(reachable: bool) -> RunResult:
    detail = "Docker 27.1 at the default socket" if reachable else "Cannot connect to the Docker daemon"
    return RunResult(status="successful", rc=0, results={HOST: {"reachable": reachable, "detail": detail}})


def wait_until(condition, what: str, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.02)
    return value


def test_health_keeps_the_reference_fields_and_says_whether_each_engine_answers(watched, fake_runner):
    health = wait_until(lambda: (body := watched.get("/health").json())["docker"] != "unknown" and body, "a check")
    assert set(health) == {"status", "timestamp", "compose_dir", "docker", "engines"}
    assert (health["status"], health["docker"], health["engines"]) == ("healthy", "unreachable", {HOST: "unreachable"})
    assert watched.get("/health").status_code == 200, "a silent engine leaves the API itself healthy"
    assert sample(scrape(watched), "deployer_engine_up", host=HOST) == 0

    fake_runner.by_playbook["engines.yml"] = engine_answer(True)

    wait_until(lambda: watched.get("/health").json()["docker"] == "reachable", "the engine answering again")
    assert watched.get("/health").json()["engines"] == {HOST: "reachable"}
    assert sample(scrape(watched), "deployer_engine_up", host=HOST) == 1
    (check, *_) = [call for call in fake_runner.calls if call["playbook"].name == "engines.yml"]
    assert check["stats_key"] == "engine" and check["limit"] is None


def test_without_the_watch_health_says_unknown_and_no_engine_is_asked(tmp_path, fake_runner):
    with TestClient(create_app(make_settings(tmp_path))) as client:
        health = client.get("/health").json()
        samples = scrape(client)
    assert (health["docker"], health["engines"]) == ("unknown", {HOST: "unknown"})
    assert not [key for key in samples if key[0] == "deployer_engine_up"]
    assert fake_runner.calls == []


def test_a_running_deploy_shows_that_it_waits_for_its_engine_until_it_answers_or_the_deploy_ends(tmp_path, fake_runner):
    fake_runner.hold.add("portal")
    fake_runner.by_playbook["engines.yml"] = engine_answer(False)
    with TestClient(create_app(make_settings(tmp_path))) as client:
        deployment_id = signed_post(client, "/deploy?wait=false", {"service": "portal"}).json()["deployment_id"]
        assert fake_runner.entered.wait(10)
        app = client.app
        watch = app.state.engines
        deployer = app.state.deployer
        # The held deploy has announced no step: set the one a probe looks at, just begun.
        deployer._steps[deployment_id] = ("health_check", time.time())
        asyncio.run(watch.probe_deploys())
        assert read(client, f"/deployments/{deployment_id}").json()["waiting"] is None, "a step of 0 s is not probed"

        deployer._steps[deployment_id] = ("health_check", time.time() - 12)  # the step has lasted 12 s
        asyncio.run(watch.probe_deploys())
        record = read(client, f"/deployments/{deployment_id}").json()
        assert re.fullmatch(rf"waiting for the Docker engine on {HOST}, 1[0-9] s", record["waiting"]), record["waiting"]
        asyncio.run(watch.probe_deploys())  # within 3 s of the last probe: none

        fake_runner.by_playbook["engines.yml"] = engine_answer(True)
        watch._probed.clear()  # 3 s later
        asyncio.run(watch.probe_deploys())
        assert read(client, f"/deployments/{deployment_id}").json()["waiting"] is None

        fake_runner.by_playbook["engines.yml"] = engine_answer(False)
        watch._probed.clear()
        asyncio.run(watch.probe_deploys())
        record = read(client, f"/deployments/{deployment_id}").json()
        assert record["waiting"] == f"waiting for the Docker engine on {HOST}, 0 s", "since it last answered"
        fake_runner.release.set()
        record = wait_for(client, deployment_id, lambda record: record["outcome"] != "running")
    assert record["waiting"] is None, "the end of the deploy clears it"
    probes = [call for call in fake_runner.calls if call["playbook"].name == "engines.yml"]
    assert [call["limit"] for call in probes] == [(HOST,)] * 3, "only the deploy's hosts, only past 5 s"


# --- reconciliation through the API ---------------------------------------------------------------------------------


def rollback_failed_result() -> RunResult:
    """A deploy whose rollback could not reach the engine: the host published rollback_failed."""
    published = {
        **success_result(),
        "success": False,
        "outcome": "rollback_failed",
        "old_image": V1,
        "old_image_id": OLD_ID,
        "new_image": V2,
        "new_image_id": NEW_ID,
        "error": "The Docker engine at unix:///run/docker.sock did not answer within 60 s: Cannot connect",
        "steps": [
            *steps(),
            {"step": "rollback", "success": False, "detail": "Rollback to ghcr.io/acme/portal:1 failed: ..."},
        ],
    }
    return RunResult(status="failed", rc=2, results={HOST: published})


def silent_engine() -> RunResult:
    message = "The Docker engine at unix:///run/docker.sock did not answer within 0 s: Cannot connect"
    return RunResult(status="failed", rc=2, failures={HOST: message}, engine_unreachable={HOST: message})


def runs_now(image_id: str) -> RunResult:
    answer = {"service": "portal", "container_id": "c0ffee", "image": V2, "image_id": image_id, "state": "running"}
    return RunResult(status="successful", rc=0, results={HOST: answer})


def restored() -> RunResult:
    return RunResult(status="successful", rc=0, results={HOST: {**success_result(), "new_image_id": OLD_ID}})


def test_a_failed_rollback_waits_for_the_engine_then_is_restored_linked_counted_once_and_notified_twice(
    tmp_path, fake_runner, notified
):
    fake_runner.result = rollback_failed_result()
    fake_runner.by_playbook["status.yml"] = silent_engine()
    fake_runner.by_playbook["rollback.yml"] = restored()
    with TestClient(create_app(make_settings(tmp_path, deploy_reconcile_interval=2))) as client:
        response = post(client, {"service": "portal", "image": V2})
        deployment_id = response.headers["X-Deployment-Id"]
        waiting = wait_for(client, deployment_id, lambda record: record["recovery"])
        assert response.status_code == 500
        assert (waiting["outcome"], waiting["awaiting_reconciliation"]) == ("rollback_failed", True)
        expected = (
            rf"Awaiting reconciliation: the Docker engine of {HOST} does not answer \(1 check, last [0-9:]{{8}} UTC\)"
        )
        assert re.fullmatch(expected, waiting["recovery"]), waiting["recovery"]
        assert sample(scrape(client), "deployer_awaiting_reconciliation", service="portal") == 1
        [first] = notified.wait_for(lambda received: len(received) == 1)
        assert first["title"] == "🔥 Deploy of portal failed, and so did its rollback"
        assert "Recovery: Awaiting reconciliation: the Docker engine of localhost does not answer" in first["message"]

        fake_runner.by_playbook["status.yml"] = runs_now(NEW_ID)  # the engine answers again
        record = wait_for(client, deployment_id, lambda record: not record["awaiting_reconciliation"])
        samples = scrape(client)
        rollback = read(client, f"/deployments/{record['recovered_by']}").json()

    assert (rollback["action"], rollback["source"], rollback["outcome"]) == ("rollback", "recovery", "succeeded")
    assert deployment_id in rollback["message"]
    assert record["outcome"] == "rollback_failed", "the deploy's own outcome and error stay"
    assert record["reconciliation"] == "restored" and record["reconciled_at"]
    assert record["recovery_action"] == f"Rolled back to the previous image by {rollback['id']}"
    assert record["recovery"] == f"Now the service runs the new image {V2}, running"
    assert sample(samples, "deployer_awaiting_reconciliation", service="portal") == 0
    assert (
        sample(samples, "deployer_deployments_total", service="portal", action="deploy", outcome="rollback_failed") == 1
    )
    received = notified.wait_for(lambda received: len(received) == 3)
    (reconciled,) = [message for message in received if message["title"].startswith("🩹")]
    assert reconciled["title"] == "🩹 portal runs its previous image again: reconciled after the deploy rollback failed"
    assert f"Reconciliation: Rolled back to the previous image by {rollback['id']}" in reconciled["message"]
    assert f"Previous image: {V1} (aaaaaaaaaaaa)" in reconciled["message"]
    assert re.search(
        r"^After: \d+ s \(from the end of the deploy to its reconciliation\)$", reconciled["message"], re.M
    )
    assert fake_runner.playbooks().count("status.yml") >= 2


def killed_first_deploy(tmp_path, fake_runner) -> tuple[dict, dict]:
    """A first deploy of portal killed in its health check, pulled and started (what its record says when the run
    ends), and the reconciliation's record of the removal it started: (the deploy's record, the removal's)."""
    with TestClient(create_app(make_settings(tmp_path))) as client:
        deployment_id = signed_post(client, "/deploy?wait=false", {"service": "portal"}).json()["deployment_id"]
        assert fake_runner.entered.wait(10)
        client.app.state.deployer.history.update(
            deployment_id,
            current_step="health_check",
            steps=steps(captured=None),
            hosts={HOST: {"outcome": "running", "new_image_id": NEW_ID}},
            new_image_id=NEW_ID,
        )
        fake_runner.release.set()
        record = wait_for(client, deployment_id, lambda record: record["reconciliation"])
        return record, read(client, f"/deployments/{record['recovered_by']}").json()


def test_a_killed_run_is_interrupted_and_its_first_deploy_s_container_removed(tmp_path, fake_runner):
    fake_runner.result = RunResult(status="failed", rc=None, results={})
    fake_runner.hold.add("portal")
    fake_runner.by_playbook["status.yml"] = runs_now(NEW_ID)
    fake_runner.by_playbook["remove.yml"] = RunResult(status="successful", rc=0, results={HOST: success_result()})
    record, removal = killed_first_deploy(tmp_path, fake_runner)

    assert record["outcome"] == "interrupted"
    assert record["error"] == (
        f"The playbook run ended (ansible-playbook was killed by a signal) during health_check before {HOST} published "
        "its result"
    )
    assert record["reconciliation"] == "removed" and record["reconciled_at"] is None, "done at its first check"
    assert (removal["action"], removal["source"], removal["outcome"]) == ("remove", "recovery", "succeeded")
    assert fake_runner.playbooks() == ["deploy.yml", "status.yml", "remove.yml"]


def test_a_record_still_awaiting_when_the_api_stopped_is_picked_up_at_the_next_start(tmp_path, fake_runner):
    settings = make_settings(tmp_path)
    settings.deploy_state_dir.mkdir()
    left = History(settings.history_file)
    left.create(
        id="20261127T000000-deadbeef",
        action="deploy",
        service="portal",
        outcome="rollback_failed",
        finished_at="2026-11-27T00:01:00.000Z",
        targets=[HOST],
        hosts={HOST: {"outcome": "rollback_failed", "old_image": V1, "old_image_id": OLD_ID, "new_image_id": NEW_ID}},
        steps=steps(),
        to_inspect=1,
        reconcile_checks=4,
        recovery="Awaiting reconciliation: the Docker engine of localhost does not answer (4 checks)",
    )
    left.close()
    fake_runner.by_playbook["status.yml"] = runs_now(NEW_ID)
    fake_runner.by_playbook["rollback.yml"] = restored()

    with TestClient(create_app(settings)) as client:
        record = wait_for(client, "20261127T000000-deadbeef", lambda record: record["reconciliation"])

    assert record["reconciliation"] == "restored" and record["reconciled_at"], "it had waited before the restart"
    assert fake_runner.playbooks() == ["status.yml", "rollback.yml"]


def test_a_later_successful_deploy_supersedes_a_waiting_reconciliation_and_nothing_is_undone(tmp_path, fake_runner):
    fake_runner.result = rollback_failed_result()
    fake_runner.by_playbook["status.yml"] = silent_engine()
    with TestClient(create_app(make_settings(tmp_path))) as client:
        first = post(client, {"service": "portal", "image": V2}).headers["X-Deployment-Id"]
        wait_for(client, first, lambda record: record["recovery"])
        fake_runner.result = RunResult(status="successful", rc=0, results={HOST: success_result()})
        second = post(client, {"service": "portal", "image": "ghcr.io/acme/portal:3"})
        assert second.status_code == 200, "a record awaiting reconciliation blocks no deploy"
        # The next check finds the later success.
        record = wait_for(client, first, lambda record: record["reconciliation"])

    assert record["reconciliation"] == "superseded"
    assert record["recovery_action"] == (
        f"Not reconciled: a later deployment of portal superseded it ({second.headers['X-Deployment-Id']} succeeded "
        f"on {HOST})"
    )
    assert "rollback.yml" not in fake_runner.playbooks()


class FakeRecovery:
    """Recovery.attempt's stand-in: each record's answers in turn (True: done), every call noted."""

    def __init__(self, history: History, answers: dict[str, list[bool]]):
        self.history = history
        self.answers = answers
        self.calls: list[tuple[str, float]] = []

    async def attempt(self, deployment_id: str) -> bool:
        self.calls.append((deployment_id, time.monotonic()))
        return self.answers[deployment_id].pop(0)


def test_the_reconciler_checks_until_done_backs_off_and_wakes_for_a_host_that_answers(tmp_path):
    history = History(tmp_path / "h.sqlite3")
    history.create(
        id="d1", action="deploy", service="portal", outcome="rollback_failed", targets=["web1"], to_inspect=1
    )
    recovery = FakeRecovery(history, {"d1": [False, False, True], "d2": [True]})

    async def scenario() -> None:
        reconciler = Reconciler(recovery, interval=30)  # type: ignore[arg-type]
        reconciler.start(["d1"])
        while len(recovery.calls) < 2:
            await asyncio.sleep(0.01)
        # The second check is due 2 s after the first (it left the record waiting); the host answers meanwhile.
        await asyncio.sleep(0.2)
        assert len(recovery.calls) == 2
        await asyncio.to_thread(reconciler.host_answers, "web1")
        while len(recovery.calls) < 3:
            await asyncio.sleep(0.01)
        reconciler.add("d2")
        while len(recovery.calls) < 4:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert reconciler.pending() == []
        await reconciler.stop(1)

    asyncio.run(scenario())
    history.close()
    (first, second, third, _) = recovery.calls
    assert [call[0] for call in recovery.calls] == ["d1", "d1", "d1", "d2"]
    assert 1.8 < second[1] - first[1] < 3, "the first retry within about 2 s"
    assert third[1] - second[1] < 1, "a host that answers again wakes its record at once"


def test_a_check_that_raised_is_tried_again(tmp_path):
    history = History(tmp_path / "h.sqlite3")
    calls = []

    class Broken:
        def __init__(self):
            self.history = history

        async def attempt(self, deployment_id: str) -> bool:
            calls.append(deployment_id)
            if len(calls) == 1:
                raise RuntimeError("boom")
            return True

    async def scenario() -> None:
        reconciler = Reconciler(Broken(), interval=2)  # type: ignore[arg-type]
        reconciler.start(["d1"])
        while len(calls) < 2:
            await asyncio.sleep(0.01)
        await reconciler.stop(1)

    asyncio.run(asyncio.wait_for(scenario(), 10))
    history.close()
    assert calls == ["d1", "d1"]


def test_an_attempt_for_a_record_that_awaits_nothing_does_nothing(tmp_path, fake_runner):
    settings = make_settings(tmp_path)
    history = History(tmp_path / "h.sqlite3")
    history.create(id="d1", action="deploy", service="portal", outcome="succeeded")
    recovery = Recovery(Deployer(settings, history))

    assert asyncio.run(recovery.attempt("d1")) is True
    assert asyncio.run(recovery.attempt("missing")) is True
    assert fake_runner.calls == []
    history.close()


def test_the_reconciled_notification_says_what_was_done_and_after_how_long():
    record = {
        "id": "d1",
        "action": "deploy",
        "service": "portal",
        "outcome": "interrupted",
        "finished_at": "2026-11-27T00:00:00.000Z",
        "reconciled_at": "2026-11-27T00:01:12.500Z",
        "reconciliation": "removed",
        "recovery_action": "Removed what the first deploy half-started by d2",
        "recovered_by": "d2",
        "new_image": V2,
        "new_image_id": NEW_ID,
    }

    message = message_for(record)

    assert message.title == (
        "🩹 What the first deploy of portal half-started is removed: reconciled after the deploy interrupted"
    )
    assert "After: 1 min 12 s (from the end of the deploy to its reconciliation)" in message.body.splitlines()
    assert "Reconciled by: d2" in message.body.splitlines()
    failed = message_for({**record, "reconciliation": "failed", "recovery_action": "The automatic rollback d2 ended"})
    assert failed.title == "❌ Reconciliation of portal failed: it needs a look"


def test_the_history_keeps_the_hosts_a_run_was_for_and_the_awaiting_records(tmp_path):
    history = History(tmp_path / "h.sqlite3")
    history.create(id="a", action="deploy", service="portal", outcome="rollback_failed", targets=["x"], to_inspect=1)
    history.create(id="b", action="deploy", service="portal", outcome="succeeded", targets=["x"])
    history.create(id="c", action="deploy", service="other", outcome="interrupted", to_inspect=1)

    assert [record["id"] for record in history.awaiting()] == ["a", "c"]
    assert history.awaiting()[0]["targets"] == ["x"]
    assert history.awaiting_by_service() == {"portal": 1, "other": 1}
    assert history.get("a")["awaiting_reconciliation"] is True
    assert "targets" not in history.get("a") and history.get("a", internal=True)["targets"] == ["x"]
    history.close()


def test_a_waiting_record_shows_the_seconds_it_has_waited(tmp_path):
    history = History(tmp_path / "h.sqlite3")
    since = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - 7))
    history.create(id="a", action="deploy", service="portal", outcome="running")
    history.update("a", waiting="waiting for the Docker engine on prod1", waiting_since=since)

    assert re.fullmatch(r"waiting for the Docker engine on prod1, [78] s", history.get("a")["waiting"])
    history.close()


def test_the_metrics_name_the_awaiting_services_and_each_engine(tmp_path, fake_runner):
    settings = make_settings(tmp_path)
    settings.deploy_state_dir.mkdir()
    left = History(settings.history_file)
    left.create(id="d1", action="deploy", service="portal", outcome="rollback_failed", to_inspect=1, targets=[HOST])
    left.close()
    fake_runner.by_playbook["status.yml"] = silent_engine()
    with TestClient(create_app(settings)) as client:
        wait_for(client, "d1", lambda record: record["recovery"])
        samples = scrape(client)
    assert sample(samples, "deployer_awaiting_reconciliation", service="portal") == 1
    assert sample(samples, "deployer_awaiting_reconciliation", service="hello-world") == 0
    assert sample(samples, "deployer_engine_up", host=HOST) == 0, "the status read heard the engine's silence"


def test_a_probe_answer_after_the_deploy_ended_writes_nothing(tmp_path):
    history = History(tmp_path / "h.sqlite3")
    settings = make_settings(tmp_path)
    deployer = Deployer(settings, history)
    history.create(id="gone", action="deploy", service="portal", outcome="succeeded")

    deployer.set_waiting("gone", "waiting for the Docker engine on prod1", "2026-01-01T00:00:00.000Z")

    assert history.get("gone")["waiting"] is None
    history.close()


def test_the_fake_runner_stands_a_canned_record_in_for_each_host_of_the_limit():
    runner = FakeRunner()
    result = runner(playbook=Path("deploy.yml"), extravars={"service": "portal"}, limit=("a", "b"))
    assert set(result.results) == {"a", "b"}
    assert dataclasses.asdict(runner.result)["results"].keys() == {"localhost"}


def test_a_host_that_left_the_inventory_is_waited_for_no_more(tmp_path, fake_runner):
    settings = make_settings(tmp_path)
    settings.deploy_state_dir.mkdir()
    left = History(settings.history_file)
    left.create(id="d1", action="deploy", service="portal", outcome="interrupted", targets=["retired"], to_inspect=1)
    left.close()

    with TestClient(create_app(settings)) as client:
        record = wait_for(client, "d1", lambda record: record["reconciliation"])

    assert record["recovery_action"] == "Not reconciled: retired left the inventory"
    assert fake_runner.calls == []


def test_a_reconciliation_rollback_a_dead_process_left_running_does_not_wait_itself(tmp_path, fake_runner):
    settings = make_settings(tmp_path)
    settings.deploy_state_dir.mkdir()
    left = History(settings.history_file)
    left.create(id="d1", action="rollback", service="portal", outcome="running", source="recovery", targets=[HOST])
    left.close()

    with TestClient(create_app(settings)) as client:
        record = wait_for(client, "d1", lambda record: record["outcome"] != "running")
        awaiting = client.app.state.deployer.history.awaiting()

    assert (record["outcome"], record["awaiting_reconciliation"]) == ("interrupted", False)
    assert awaiting == [], "the record it acted for waits, if it still must"


def test_a_host_that_left_the_inventory_counts_no_more_for_health():
    assert health_words({"gone": state(False), "a": state(True)}, ["a"]) == ("reachable", {"a": "reachable"})


def test_a_deploy_refused_at_preflight_answers_400_and_nothing_else_does():
    refusal = "Cannot deploy service portal of /srv/compose.yaml blue_green: it publishes host port 8089 (...)"
    refused = {
        "outcome": "failed",
        "error": refusal,
        "steps": [{"step": "preflight", "success": False, "detail": refusal}],
    }
    run = RunResult("failed", 2, {"prod1": refused, "prod2": {"outcome": "not_reached", "steps": []}})
    summary = summarize("portal", run, 900, hosts=("prod1", "prod2"))
    assert (summary.status_code, summary.outcome) == (400, "failed")
    assert refusal in summary.body.error

    unhealthy = {"outcome": "failed", "steps": [{"step": "health_check", "success": False, "detail": "unhealthy"}]}
    mixed = RunResult("failed", 2, {"prod1": refused, "prod2": unhealthy})
    assert summarize("portal", mixed, 900, hosts=("prod1", "prod2")).status_code == 500


def test_a_host_that_was_not_asked_refused_nothing_whichever_step_its_failure_is_recorded_at():
    # The deploy role records a failure outside the module at the first step not done: preflight.
    unreachable = refused_by_preflight("deploy", "portal", "Host unreachable: ssh: connect to host prod1: refused")
    run = RunResult("failed", 2, {"prod1": unreachable}, unreachable={"prod1": "ssh: connect to host prod1: refused"})
    assert summarize("portal", run, 900, hosts=("prod1",)).status_code == 500

    silent = "The Docker engine at unix:///var/run/docker.sock did not answer within 60 s: connection refused"
    run = RunResult(
        "failed", 2, {"prod1": refused_by_preflight("deploy", "portal", silent)}, engine_unreachable={"prod1": silent}
    )
    assert summarize("portal", run, 900, hosts=("prod1",)).status_code == 500


def test_a_reconciliation_the_playbook_refuses_ends_as_it_would_be_refused_again(tmp_path, fake_runner):
    # The removal of what a first deploy of the API's own service half-started (a deploy from before the refusal).
    refusal = (
        "Refusing to remove portal: its container 3f2a9c1b7d4e runs this removal, and removing it would stop the "
        "removal midway. Update it from the host instead: docker compose -f /srv/homeserver/compose.yaml up -d "
        "--pull always portal"
    )
    fake_runner.result = RunResult(status="failed", rc=None, results={})
    fake_runner.hold.add("portal")
    fake_runner.by_playbook["status.yml"] = runs_now(NEW_ID)
    fake_runner.by_playbook["remove.yml"] = RunResult(
        status="failed", rc=2, results={HOST: refused_by_preflight("remove", "portal", refusal)}
    )
    record, removal = killed_first_deploy(tmp_path, fake_runner)

    assert (removal["outcome"], removal["http_status"]) == ("failed", 400)
    assert record["reconciliation"] == "failed" and not record["awaiting_reconciliation"]
    assert record["recovery_action"] == f"Not reconciled: {removal['id']} was refused: {refusal}"
    assert fake_runner.playbooks() == ["deploy.yml", "status.yml", "remove.yml"]
