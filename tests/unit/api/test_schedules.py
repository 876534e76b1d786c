"""Recurring schedules (deploy_services.<name>.schedule), with a fake runner and the app's clock in the test's hands:
a pass of the scheduler is run with tick(), in the app's own event loop."""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from clock import NOW
from fastapi.testclient import TestClient
from test_history import make_settings, read, signed_post, wait_for
from test_metrics import sample, scrape
from test_scheduler import deploys, finished, tick

from api.inventory import Inventory, InventoryError
from api.main import create_app
from api.schedules import Schedule, parse_schedule

# 03:00 in Berlin every day; the first tick after NOW (2027-01-15T08:00:00Z) is 2027-01-16T03:00+01:00.
NIGHTLY = '{cron: "0 3 * * *", timezone: Europe/Berlin}'
TICK = "2027-01-16T02:00:00Z"
TICK_EPOCH = datetime.fromisoformat(TICK).timestamp()


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def utc(schedule_tick: datetime | None) -> str | None:
    return None if schedule_tick is None else schedule_tick.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def with_schedule(settings, schedule: str = NIGHTLY, at_time: float = NOW) -> None:
    inventory = settings.deploy_inventory
    text = inventory.read_text().split("    deploy_services:")[0]
    services = f"    deploy_services:\n      portal: {{schedule: {schedule}}}\n      hello-world: {{}}\n"
    inventory.write_text(text + services)
    os.utime(inventory, (at_time, at_time))


@pytest.fixture
def settings(tmp_path: Path):
    settings = make_settings(tmp_path)
    with_schedule(settings)
    return settings


def schedule_records(client: TestClient) -> list[dict]:
    items = read(client, "/deployments", service="portal", limit=100).json()["items"]
    return [item for item in items if item["trigger"] == "schedule"]


# Time: the next tick in the schedule's zone, and DST as Debian cron has it.


def test_the_next_tick_is_computed_in_the_schedule_s_zone(client):
    assert tick(client) == pytest.approx(TICK_EPOCH - NOW)
    assert Schedule("0 3 * * *", "UTC").next_tick(NOW) == datetime(2027, 1, 16, 3, tzinfo=UTC)


def test_a_tick_in_the_hour_the_clocks_skip_runs_once_just_after_the_change():
    schedule = Schedule("30 2 * * *", "Europe/Berlin")
    first = schedule.next_tick(at("2027-03-27T12:00:00+01:00"))
    second = schedule.next_tick(first.timestamp())

    assert utc(first) == "2027-03-28T01:00:00Z", "03:00 CEST, when 02:30 does not exist"
    assert utc(second) == "2027-03-29T00:30:00Z"
    assert utc(schedule.latest_tick(at("2027-03-27T12:00:00Z"), at("2027-03-28T12:00:00Z"))) == utc(first)


def test_a_tick_in_the_hour_the_clocks_repeat_runs_once():
    schedule = Schedule("30 2 * * *", "Europe/Berlin")
    first = schedule.next_tick(at("2027-10-30T12:00:00+02:00"))
    second = schedule.next_tick(first.timestamp())

    assert utc(first) == "2027-10-31T00:30:00Z", "02:30 CEST, the first of the two"
    assert utc(second) == "2027-11-01T01:30:00Z", "not 02:30 CET again"
    assert schedule.latest_tick(first.timestamp(), at("2027-10-31T02:00:00Z")) is None


def test_the_scheduler_runs_the_repeated_hour_s_tick_once(settings, fake_runner, clock):
    with_schedule(settings, '{cron: "30 2 * * *", timezone: Europe/Berlin}')
    clock.now = at("2027-10-30T12:00:00Z")
    with TestClient(create_app(settings, clock=clock)) as client:
        tick(client)
        for moment in ("2027-10-31T00:30:00Z", "2027-10-31T01:00:00Z", "2027-10-31T01:30:00Z", "2027-10-31T01:45:00Z"):
            clock.now = at(moment)
            tick(client)
        records = schedule_records(client)
        wait_for(client, records[0]["id"], finished)

    assert [record["planned_at"] for record in records] == ["2027-10-31T00:30:00Z"]
    assert deploys(fake_runner) == ["portal"]


# A tick: recorded and run once, through the planned deploys' path.


def test_a_tick_runs_once_and_is_recorded(client, fake_runner, clock):
    tick(client)
    clock.now = TICK_EPOCH
    tick(client)
    (record,) = schedule_records(client)
    record = wait_for(client, record["id"], finished)
    clock.now = TICK_EPOCH + 30
    tick(client)

    assert (record["outcome"], record["trigger"], record["planned_at"]) == ("succeeded", "schedule", TICK)
    assert record["message"] == "schedule 0 3 * * * (Europe/Berlin)"
    assert deploys(fake_runner) == ["portal"]
    assert len(schedule_records(client)) == 1


def test_a_tick_deploys_the_image_the_schedule_names(settings, fake_runner, clock):
    with_schedule(settings, '{cron: "0 3 * * *", timezone: Europe/Berlin, image: "ghcr.io/acme/portal:stable"}')
    with TestClient(create_app(settings, clock=clock)) as client:
        tick(client)
        clock.now = TICK_EPOCH
        tick(client)
        (record,) = schedule_records(client)
        wait_for(client, record["id"], finished)

    (call,) = fake_runner.calls
    assert call["extravars"]["image"] == "ghcr.io/acme/portal:stable"


def test_two_passes_at_the_same_tick_create_one_record(settings, client, fake_runner, clock):
    tick(client)
    clock.now = TICK_EPOCH
    tick(client)
    # As if the schedule's latest tick had not been kept: the record of the tick is still unique.
    with sqlite3.connect(settings.history_file) as raw:
        raw.execute("UPDATE schedules SET last_tick = '2027-01-15T08:00:00Z'")
    tick(client)
    (record,) = schedule_records(client)
    wait_for(client, record["id"], finished)

    assert deploys(fake_runner) == ["portal"]


def test_a_schedule_seen_for_the_first_time_does_not_run_its_past_ticks(settings, fake_runner, clock):
    clock.now = TICK_EPOCH + 60
    with TestClient(create_app(settings, clock=clock)) as client:
        tick(client)
        assert schedule_records(client) == []
    assert deploys(fake_runner) == []


def test_a_busy_service_makes_the_tick_wait(client, fake_runner, clock):
    tick(client)
    fake_runner.hold.add("portal")
    running = signed_post(client, "/deploy?wait=false", {"service": "portal"}).json()["deployment_id"]
    assert fake_runner.entered.wait(10)
    clock.now = TICK_EPOCH

    assert tick(client) == pytest.approx(1)
    (record,) = schedule_records(client)
    assert record["outcome"] == "scheduled"
    fake_runner.release.set()
    wait_for(client, running, finished)
    tick(client)
    assert wait_for(client, record["id"], finished)["outcome"] == "succeeded"


# Restarts.


def test_a_tick_missed_while_the_api_was_down_runs_at_start_within_the_grace(settings, fake_runner, clock):
    with TestClient(create_app(settings, clock=clock)) as client:
        tick(client)
    clock.now = TICK_EPOCH + 599
    with TestClient(create_app(settings, clock=clock)) as client:
        tick(client)
        (record,) = schedule_records(client)
        record = wait_for(client, record["id"], finished)

    assert (record["outcome"], record["planned_at"]) == ("succeeded", TICK)
    assert deploys(fake_runner) == ["portal"]


def test_only_the_latest_tick_missed_counts_and_beyond_the_grace_it_is_missed_once(
    notified, settings, fake_runner, clock
):
    with TestClient(create_app(settings, clock=clock)) as client:
        tick(client)
    clock.now = TICK_EPOCH + 86400 + 601  # two ticks passed while the API was down
    with TestClient(create_app(settings, clock=clock)) as client:
        tick(client)
        tick(client)
        records = schedule_records(client)
        (message,) = notified.wait_for(lambda received: len(received) == 1)
        samples = scrape(client)

    assert [(record["outcome"], record["planned_at"]) for record in records] == [("missed", "2027-01-17T02:00:00Z")]
    assert "missed" in message["title"]
    assert sample(samples, "deployer_missed_deployments_total", service="portal") == 1
    assert deploys(fake_runner) == []


# The inventory.


@pytest.mark.parametrize(
    ("schedule", "problem"),
    [
        ('{cron: "61 3 * * *"}', "host localhost, service 'portal': schedule: cron '61 3 * * *': Bad minute"),
        ('{cron: "0 3 * *"}', "cron '0 3 * *': Wrong number of fields"),
        ('{cron: "0 3 * * *", timezone: Europe/Nowhere}', "service 'portal': schedule: unknown time zone"),
        ('{cron: "0 3 * * *", image: "Not An Image"}', "schedule: image 'Not An Image' is not a valid image reference"),
        ('{cron: "0 3 * * *", when: daily}', "schedule has unknown keys when"),
        ('"0 3 * * *"', "schedule must be a mapping"),
        ("{watch: true}, pull: false", "schedule: watch needs pulls, and the service has pull: false"),
    ],
    ids=["minute", "fields", "zone", "image", "unknown-key", "not-a-mapping", "watch-without-pull"],
)
def test_a_wrong_schedule_refuses_the_inventory_naming_host_and_service(settings, fake_runner, schedule, problem):
    with_schedule(settings, schedule)

    refused = pytest.raises(InventoryError, match="host localhost, service 'portal'")
    with refused as refusal, TestClient(create_app(settings)):
        pass
    assert problem in str(refusal.value)


def test_a_wrong_schedule_in_a_changed_inventory_stops_deploys(client, settings, fake_runner):
    with_schedule(settings, '{cron: "0 3 * * *", timezone: Mars/Olympus}', at_time=NOW + 10)

    response = signed_post(client, "/deploy", {"service": "hello-world"})

    assert response.status_code == 503
    assert deploys(fake_runner) == []


def test_a_service_with_different_schedules_on_two_hosts_is_refused(tmp_path):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        "all:\n  hosts:\n"
        '    h1: {deploy_services: {portal: {schedule: {cron: "0 3 * * *"}}}}\n'
        '    h2: {deploy_services: {portal: {schedule: {cron: "0 4 * * *"}}}}\n'
    )
    with pytest.raises(InventoryError, match="host h2, service 'portal': schedule differs from host h1's"):
        Inventory(inventory).view()


def test_the_default_zone_is_deploy_schedule_timezone():
    assert parse_schedule({"cron": "0 3 * * *"}, "Europe/Berlin") == Schedule("0 3 * * *", "Europe/Berlin")
    assert parse_schedule({"cron": "0 3 * * *", "timezone": "UTC"}, "Europe/Berlin").timezone == "UTC"


def test_an_inventory_change_moves_the_next_tick(client, settings, clock):
    assert tick(client) == pytest.approx(TICK_EPOCH - NOW)

    with_schedule(settings, '{cron: "30 9 * * *", timezone: Europe/Berlin}', at_time=NOW + 10)

    assert tick(client) == pytest.approx(30 * 60)


# Visible.


def test_get_schedules_lists_the_schedules_then_the_planned_deploys(client):
    planned = signed_post(client, "/deploy", {"service": "hello-world", "at": "2027-01-15T09:00:00Z"})
    assert planned.status_code == 202

    assert read(client, "/schedules", token=None).status_code == 401
    body = read(client, "/schedules").json()

    assert body["items"] == [
        {
            "service": "portal",
            "cron": "0 3 * * *",
            "timezone": "Europe/Berlin",
            "image": None,
            "watch": False,
            "interval": None,
            "window": None,
            "next_run": TICK,
            "hosts": ["localhost"],
        }
    ]
    assert [record["id"] for record in body["planned"]] == [planned.json()["deployment_id"]]
    assert "signers" not in body["planned"][0]


def test_the_next_run_gauge_says_when_each_schedule_ticks(client):
    samples = scrape(client)

    assert sample(samples, "deployer_schedule_next_run_timestamp_seconds", service="portal") == TICK_EPOCH
