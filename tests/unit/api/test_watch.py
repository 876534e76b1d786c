"""The registry watch (a schedule with `watch: true`): its ticks on the epoch grid, its parsing, look() on canned status
reads, and the scheduler's look through the app, with a fake runner answering the status read (status.yml) and the
deploy, and the app's clock in the test's hands: a pass is run with tick(), and the look, a task of its own, is
waited for by polling with a deadline."""

from __future__ import annotations

import time

import pytest
from clock import NOW, Clock
from fakerunner import FakeRunner, success_result
from fastapi.testclient import TestClient
from test_history import make_settings, read, signed_post, wait_for
from test_metrics import sample, scrape
from test_scheduler import deploys, finished, tick
from test_schedules import utc, with_schedule

from api.main import create_app
from api.metrics import SKIP_REASONS
from api.runner import RunResult
from api.schedules import Schedule, parse_schedule
from api.watch import Look, look, short

WATCH = "{watch: true, interval: 60}"
IMAGE = "ghcr.io/acme/portal:latest"
RUNNING_ID = "sha256:1111111111112222222222222222222222222222222222222222222222222222"
NEWER_ID = "sha256:3333333333334444444444444444444444444444444444444444444444444444"
OTHER_ID = "sha256:5555555555556666666666666666666666666666666666666666666666666666"
# NOW is a multiple of 60: the watch's first tick after it is a minute later.
FIRST_TICK = "2027-01-15T08:01:00Z"
SECOND_TICK = "2027-01-15T08:02:00Z"
WHOLE_SECONDS = "schedule: interval must be a whole number of seconds, 1 or more, not "


def status(running: str | None = RUNNING_ID, latest: str = NEWER_ID, image: str = IMAGE) -> dict:
    """A host's published status with deploy_watch: what it runs, and what the registry has under `image` now."""
    return {
        "service": "portal",
        "container_id": "c0ffee",
        "image": image,
        "image_id": running,
        "state": "running",
        "latest_image": image,
        "latest_image_id": latest,
    }


def status_read(**hosts: dict) -> RunResult:
    return RunResult(status="successful", rc=0, results=dict(hosts))


def watch_deploy(outcome: str, new_image_id: str, hosts: dict | None = None) -> dict:
    """The latest finished deploy a watch started, as History.last_watch_deploy returns it (the fields look() reads)."""
    return {
        "id": "20270115T080100Z-abcd",
        "outcome": outcome,
        "old_image_id": RUNNING_ID,
        "new_image_id": new_image_id,
        "hosts": hosts or {},
    }


@pytest.fixture
def settings(tmp_path):
    settings = make_settings(tmp_path)
    with_schedule(settings, WATCH)
    return settings


def status_calls(fake_runner: FakeRunner) -> list[dict]:
    return [call for call in fake_runner.calls if call["playbook"].name == "status.yml"]


def looked(client: TestClient, fake_runner: FakeRunner, reads: int = 1) -> None:
    """Wait until no look runs any more and the runner saw `reads` status reads in all."""
    scheduler = client.app.state.scheduler
    deadline = time.monotonic() + 10
    while scheduler._looking or len(status_calls(fake_runner)) < reads:
        assert time.monotonic() < deadline, (list(scheduler._looking), status_calls(fake_runner))
        time.sleep(0.01)


def first_tick(client: TestClient, fake_runner: FakeRunner, clock: Clock, reads: int = 1) -> None:
    """The pass that remembers the schedule, then the watch's first tick and its look."""
    tick(client)
    clock.now = NOW + 60
    tick(client)
    looked(client, fake_runner, reads)


def watch_records(client: TestClient) -> list[dict]:
    items = read(client, "/deployments", service="portal", limit=100).json()["items"]
    return [item for item in items if item["trigger"] == "watch"]


def skipped(client: TestClient) -> dict[str, float]:
    samples = scrape(client)
    return {
        reason: sample(samples, "deployer_skipped_deployments_total", service="portal", reason=reason)
        for reason in SKIP_REASONS
    }


def counted(**reasons: float) -> dict[str, float]:
    return {reason: reasons.get(reason, 0) for reason in SKIP_REASONS}


# The schedule: ticks on the epoch grid, its rule, its parsing.


def test_a_watch_ticks_at_the_multiples_of_its_interval_since_the_epoch():
    schedule = Schedule(None, "UTC", watch=True, interval=300)

    assert utc(schedule.next_tick(NOW)) == "2027-01-15T08:05:00Z", "strictly after a tick"
    assert utc(schedule.next_tick(NOW - 0.5)) == "2027-01-15T08:00:00Z"
    assert utc(schedule.next_tick(NOW + 299.9)) == "2027-01-15T08:05:00Z"
    assert utc(schedule.latest_tick(NOW - 1, NOW + 899)) == "2027-01-15T08:10:00Z"
    assert utc(schedule.latest_tick(NOW - 1, NOW)) == "2027-01-15T08:00:00Z", "the end is included"
    assert schedule.latest_tick(NOW, NOW + 299) is None, "the start is not"
    assert schedule.latest_tick(NOW + 300, NOW + 300.9) is None


def test_a_watch_s_rule_says_its_interval_or_cron_and_that_it_watches():
    assert Schedule(None, "UTC", watch=True, interval=300).rule == "every 300 s, watch"
    assert Schedule("0 3 * * *", "UTC", watch=True).rule == "0 3 * * *, watch"
    assert Schedule("0 3 * * *", "UTC").rule == "0 3 * * *"


def test_watch_alone_is_a_schedule_polling_at_the_default_interval_given():
    assert parse_schedule({"watch": True}, "Europe/Berlin", 120) == Schedule(None, "Europe/Berlin", None, True, 120)
    assert parse_schedule({"watch": True, "interval": 60}, "UTC", 120) == Schedule(None, "UTC", None, True, 60)
    assert parse_schedule({"watch": True, "cron": "0 3 * * *"}, "UTC").cron == "0 3 * * *"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (
            {"cron": "0 3 * * *", "interval": 60},
            "schedule: interval is for a watch without cron; with cron, its ticks are the polls",
        ),
        (
            {"watch": True, "cron": "0 3 * * *", "interval": 60},
            "schedule: interval is for a watch without cron; with cron, its ticks are the polls",
        ),
        ({"watch": True, "interval": 0}, WHOLE_SECONDS + "0"),
        ({"watch": True, "interval": "5"}, WHOLE_SECONDS + "'5'"),
        ({"watch": True, "interval": True}, WHOLE_SECONDS + "True"),
        ({"watch": "yes"}, "schedule: watch must be true or false, not 'yes'"),
        ({"watch": False}, "schedule needs cron, a 5-field cron expression"),
        ({"interval": 60}, "schedule needs cron, a 5-field cron expression"),
    ],
    ids=["interval-with-cron", "watch-interval-with-cron", "zero", "text", "bool", "watch-yes", "no-cron", "no-watch"],
)
def test_a_wrong_watch_schedule_is_refused_naming_what_is_wrong(value, problem):
    with pytest.raises(ValueError) as refusal:
        parse_schedule(value, "UTC")
    assert str(refusal.value) == problem


# look(): what a status read says.


def test_a_look_at_the_same_image_deploys_nothing_naming_it():
    found = look(status_read(localhost=status(latest=RUNNING_ID)), ("localhost",), None)

    assert found == Look(False, "unchanged", f"{IMAGE} is 111111111111; localhost runs it")
    assert short(RUNNING_ID) == "111111111111" and short(None) == "nothing"


def test_a_look_at_a_newer_image_deploys_naming_both_ids():
    found = look(status_read(localhost=status()), ("localhost",), None)

    assert found == Look(True, None, f"watch: {IMAGE} is 333333333333 in the registry; localhost runs 111111111111")


def test_a_look_at_a_host_running_nothing_deploys():
    found = look(status_read(localhost=status(running=None)), ("localhost",), None)

    assert found == Look(True, None, f"watch: {IMAGE} is 333333333333 in the registry; localhost runs nothing")


@pytest.mark.parametrize(
    ("run", "detail"),
    [
        (
            RunResult(status="failed", rc=2, failures={"localhost": "Pulling x failed: manifest unknown"}),
            "localhost: Pulling x failed: manifest unknown",
        ),
        (
            RunResult(status="failed", rc=4, unreachable={"localhost": "ssh: connect timed out"}),
            "localhost: host unreachable: ssh: connect timed out",
        ),
        (
            RunResult(status="failed", rc=2, engine_unreachable={"localhost": "Cannot connect to the Docker daemon"}),
            "localhost: Cannot connect to the Docker daemon",
        ),
        (RunResult(status="timeout", rc=None), "localhost: no answer (the run ended timeout)"),
        (
            status_read(localhost={**status(), "latest_image_id": None}),
            "localhost: no answer (the run ended successful)",
        ),
    ],
    ids=["failure", "unreachable", "engine", "timeout", "no-latest-id"],
)
def test_a_host_without_an_answer_fails_the_look_naming_host_and_cause(run, detail):
    assert look(run, ("localhost",), None) == Look(False, "watch_failed", detail)


def test_one_silent_host_of_two_fails_the_look_even_when_the_other_has_news():
    run = RunResult(status="failed", rc=2, results={"web1": status()}, failures={"web2": "manifest unknown"})

    assert look(run, ("web1", "web2"), None) == Look(False, "watch_failed", "web2: manifest unknown")


def test_the_image_a_watch_deploy_rolled_back_is_not_deployed_again():
    last = watch_deploy("rolled_back", NEWER_ID)

    found = look(status_read(localhost=status()), ("localhost",), last)

    assert found == Look(
        False,
        "failed_before",
        f"{IMAGE} is 333333333333 in the registry, which the watch's deploy 20270115T080100Z-abcd rolled back: "
        "waiting for another push",
    )


@pytest.mark.parametrize("outcome", ["failed", "rollback_failed"])
def test_an_image_a_watch_deploy_failed_with_is_not_deployed_again_either(outcome):
    found = look(status_read(localhost=status()), ("localhost",), watch_deploy(outcome, NEWER_ID))

    assert (found.deploy, found.reason) == (False, "failed_before")
    assert f"deploy 20270115T080100Z-abcd {outcome.replace('_', ' ')}: waiting" in found.detail


def test_another_push_after_a_rolled_back_watch_deploy_is_deployed():
    found = look(status_read(localhost=status()), ("localhost",), watch_deploy("rolled_back", OTHER_ID))

    assert found == Look(True, None, f"watch: {IMAGE} is 333333333333 in the registry; localhost runs 111111111111")


def test_after_a_watch_deploy_that_succeeded_a_newer_image_is_deployed():
    found = look(status_read(localhost=status()), ("localhost",), watch_deploy("succeeded", NEWER_ID))

    assert found.deploy is True and found.reason is None


def test_one_host_of_two_with_a_newer_image_makes_the_look_deploy():
    run = status_read(web1=status(latest=RUNNING_ID), web2=status())

    found = look(run, ("web1", "web2"), None)

    assert found == Look(True, None, f"watch: {IMAGE} is 333333333333 in the registry; web2 runs 111111111111")
    unchanged = status_read(web1=status(latest=RUNNING_ID), web2=status(latest=RUNNING_ID))
    assert look(unchanged, ("web1", "web2"), None) == Look(
        False, "unchanged", f"{IMAGE} is 111111111111; every host runs it"
    )


def test_the_failed_id_is_read_per_host_of_the_last_watch_deploy():
    # web1 rolled the new image back, web2 kept it: only web1 is behind, with the image that failed there.
    last = watch_deploy(
        "rolled_back",
        NEWER_ID,
        hosts={
            "web1": {"outcome": "rolled_back", "new_image_id": NEWER_ID},
            "web2": {"outcome": "succeeded", "new_image_id": NEWER_ID},
        },
    )
    run = status_read(web1=status(), web2=status(running=NEWER_ID))

    assert look(run, ("web1", "web2"), last).reason == "failed_before"
    assert look(status_read(web1=status(latest=OTHER_ID), web2=status(latest=OTHER_ID)), ("web1", "web2"), last) == (
        Look(True, None, f"watch: {IMAGE} is 555555555555 in the registry; web1 runs 111111111111")
    )


# Through the app: the scheduler's look at each tick.


def test_a_look_that_finds_the_same_image_records_nothing_and_is_counted(client, fake_runner, clock):
    fake_runner.by_playbook["status.yml"] = status_read(localhost=status(latest=RUNNING_ID))

    first_tick(client, fake_runner, clock)

    (call,) = fake_runner.calls
    assert call["playbook"].name == "status.yml"
    assert call["extravars"] == {"service": "portal", "deploy_watch": True, "deploy_engine_wait": 0}
    assert call["limit"] == ("localhost",)
    assert "-watch-portal-" in call["run_id"]
    assert watch_records(client) == []
    assert skipped(client) == counted(unchanged=1)
    assert client.app.state.scheduler.history.schedule_state("portal") == ("every 60 s, watch", "UTC", FIRST_TICK)


def test_the_same_tick_is_looked_at_once(client, fake_runner, clock):
    fake_runner.by_playbook["status.yml"] = status_read(localhost=status(latest=RUNNING_ID))
    first_tick(client, fake_runner, clock)

    clock.now = NOW + 119
    tick(client)
    looked(client, fake_runner)

    assert len(status_calls(fake_runner)) == 1
    assert skipped(client) == counted(unchanged=1)


def test_a_look_that_finds_a_newer_image_records_a_watch_deploy_of_the_tick_which_runs(client, fake_runner, clock):
    fake_runner.by_playbook["status.yml"] = status_read(localhost=status())

    first_tick(client, fake_runner, clock)
    (planned,) = watch_records(client)
    tick(client)
    record = wait_for(client, planned["id"], finished)

    assert (record["trigger"], record["planned_at"], record["outcome"]) == ("watch", FIRST_TICK, "succeeded")
    assert record["message"] == f"watch: {IMAGE} is 333333333333 in the registry; localhost runs 111111111111"
    assert record["image"] is None, "the compose file's image"
    assert deploys(fake_runner) == ["portal"]
    (deploy,) = [call for call in fake_runner.calls if call["playbook"].name == "deploy.yml"]
    assert "image" not in deploy["extravars"]
    assert deploy["run_id"] == planned["id"]
    assert skipped(client) == counted()


def test_the_schedule_s_image_is_the_one_looked_at_and_deployed(settings, fake_runner, clock):
    stable = "ghcr.io/acme/portal:stable"
    with_schedule(settings, f'{{watch: true, interval: 60, image: "{stable}"}}')
    fake_runner.by_playbook["status.yml"] = status_read(localhost=status(image=stable))
    with TestClient(create_app(settings, clock=clock)) as client:
        first_tick(client, fake_runner, clock)
        (planned,) = watch_records(client)
        tick(client)
        record = wait_for(client, planned["id"], finished)

    (read_call,) = status_calls(fake_runner)
    assert read_call["extravars"] == {
        "service": "portal",
        "deploy_watch": True,
        "deploy_engine_wait": 0,
        "image": stable,
    }
    assert (record["outcome"], record["image"]) == ("succeeded", stable)
    (deploy,) = [call for call in fake_runner.calls if call["playbook"].name == "deploy.yml"]
    assert deploy["extravars"]["image"] == stable


def test_the_image_a_watch_deploy_rolled_back_is_skipped_at_the_next_look(client, fake_runner, clock):
    fake_runner.by_playbook["status.yml"] = status_read(localhost=status())
    rolled_back = {
        **success_result(),
        "success": False,
        "outcome": "rolled_back",
        "message": "Deployment failed, rolled back",
        "error": "health check failed",
        "old_image_id": RUNNING_ID,
        "new_image_id": NEWER_ID,
    }
    fake_runner.result = RunResult(status="failed", rc=2, results={"localhost": rolled_back})
    first_tick(client, fake_runner, clock)
    (planned,) = watch_records(client)
    tick(client)
    crashed = wait_for(client, planned["id"], finished)

    clock.now = NOW + 120
    tick(client)
    looked(client, fake_runner, reads=2)

    assert (crashed["outcome"], crashed["new_image_id"]) == ("rolled_back", NEWER_ID)
    assert deploys(fake_runner) == ["portal"]
    assert [record["id"] for record in watch_records(client)] == [planned["id"]]
    assert skipped(client) == counted(failed_before=1)
    assert client.app.state.scheduler.history.schedule_state("portal")[2] == SECOND_TICK


def test_a_status_read_that_fails_records_nothing_and_is_counted(client, fake_runner, clock):
    fake_runner.by_playbook["status.yml"] = RunResult(
        status="failed", rc=2, results={}, failures={"localhost": "Pulling x failed: manifest unknown"}
    )

    first_tick(client, fake_runner, clock)

    assert watch_records(client) == []
    assert deploys(fake_runner) == []
    assert skipped(client) == counted(watch_failed=1)


def test_a_busy_service_is_not_looked_at_and_its_next_tick_looks_again(client, fake_runner, clock):
    fake_runner.by_playbook["status.yml"] = status_read(localhost=status(latest=RUNNING_ID))
    tick(client)
    fake_runner.hold.add("portal")
    running = signed_post(client, "/deploy?wait=false", {"service": "portal"}).json()["deployment_id"]
    assert fake_runner.entered.wait(10)

    clock.now = NOW + 60
    tick(client)
    looked(client, fake_runner, reads=0)

    assert status_calls(fake_runner) == []
    assert watch_records(client) == []
    assert skipped(client) == counted(), "a tick a running deploy takes is no skip"
    assert client.app.state.scheduler.history.schedule_state("portal")[2] == FIRST_TICK, "the tick is gone"

    fake_runner.hold.clear()
    fake_runner.release.set()
    wait_for(client, running, finished)
    clock.now = NOW + 120
    tick(client)
    looked(client, fake_runner)

    assert len(status_calls(fake_runner)) == 1
    assert skipped(client) == counted(unchanged=1)


def test_a_tick_that_comes_during_a_look_is_looked_at_right_after_it(client, fake_runner, clock):
    fake_runner.by_playbook["status.yml"] = status_read(localhost=status(latest=RUNNING_ID))
    tick(client)
    fake_runner.hold.add("portal")  # the status read of the first look waits for the registry
    clock.now = NOW + 60
    tick(client)
    assert fake_runner.entered.wait(10)

    clock.now = NOW + 120
    tick(client)
    assert len(status_calls(fake_runner)) == 1, "one look at a time"
    fake_runner.release.set()
    looked(client, fake_runner, reads=2)

    assert len(status_calls(fake_runner)) == 2
    assert skipped(client) == counted(unchanged=2)
    assert client.app.state.scheduler.history.schedule_state("portal")[2] == SECOND_TICK


def test_a_schedule_changed_from_cron_to_watch_starts_its_ticks_afresh(settings, fake_runner, clock):
    with_schedule(settings, '{cron: "0 3 * * *", timezone: UTC}')
    fake_runner.by_playbook["status.yml"] = status_read(localhost=status(latest=RUNNING_ID))
    with TestClient(create_app(settings, clock=clock)) as client:
        history = client.app.state.scheduler.history
        tick(client)
        assert history.schedule_state("portal") == ("0 3 * * *", "UTC", "2027-01-15T08:00:00Z")

        with_schedule(settings, WATCH, at_time=NOW + 10)
        clock.now = NOW + 90
        tick(client)
        looked(client, fake_runner, reads=0)
        # The watch's tick of 08:01 came after the cron schedule's last, but before the watch was seen.
        assert status_calls(fake_runner) == []
        assert history.schedule_state("portal") == ("every 60 s, watch", "UTC", "2027-01-15T08:01:30Z")

        clock.now = NOW + 120
        tick(client)
        looked(client, fake_runner)
        assert history.schedule_state("portal") == ("every 60 s, watch", "UTC", SECOND_TICK)
        assert skipped(client) == counted(unchanged=1)
    assert len(status_calls(fake_runner)) == 1


def test_the_next_pass_is_due_at_the_watch_s_next_tick(client, clock):
    clock.now = NOW + 15

    assert tick(client) == pytest.approx(45)
