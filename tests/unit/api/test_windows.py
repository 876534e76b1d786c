"""Deploy windows (`deploy_window` on a host or group, or in a service's entry): the minutes a cron expression matches
are those in which a deploy may start. Window.opens and windows_open are tested as pure functions of a Unix time; the
API with a fake runner and the app's clock in the test's hands (NOW = 2027-01-15T08:00:00Z, a Friday): a pass of the
scheduler is run with tick(), in the app's own event loop, so that no test waits for a window to open."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from clock import NOW
from fastapi.testclient import TestClient
from test_history import make_settings, read, signed_post, wait_for
from test_metrics import sample, scrape
from test_routes import SECRET
from test_scheduler import deploys, finished, tick
from test_schedules import at

from api.inventory import InventoryError
from api.main import create_app
from api.schedules import Window, parse_window, windows_open
from api.signature import sign

# 02:00 to 04:59 in Berlin: 01:00 to 03:59 UTC in winter. At NOW, it next opens on Saturday at 01:00 UTC.
BERLIN = '{cron: "* 2-4 * * *", timezone: Europe/Berlin}'
BERLIN_TEXT = "* 2-4 * * * (Europe/Berlin)"
OPENS = "2027-01-16T01:00:00Z"
OPENS_EPOCH = at(OPENS)
REFUSED_DETAIL = (
    f"'portal' deploys only in its deploy window {BERLIN_TEXT}; it opens next at {OPENS}. "
    'Send "queue": true to plan the deploy for then'
)


def with_inventory(
    settings,
    *,
    host_window: str | None = None,
    portal: str = "{}",
    hello_world: str = "{}",
    at_time: float = NOW,
) -> None:
    """make_settings' inventory with a group-level deploy_window and the two services' entries; its mtime moved to
    `at_time`, so that a running app reads it again."""
    window = f"    deploy_window: {host_window}\n" if host_window is not None else ""
    settings.deploy_inventory.write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        f"  vars:\n    deploy_compose_dir: /srv/homeserver\n{window}"
        f"    deploy_services:\n      portal: {portal}\n      hello-world: {hello_world}\n"
    )
    os.utime(settings.deploy_inventory, (at_time, at_time))


@pytest.fixture
def settings(tmp_path: Path):
    settings = make_settings(tmp_path)
    with_inventory(settings, portal=f"{{deploy_window: {BERLIN}}}")
    return settings


def record_of(client: TestClient, deployment_id: str) -> dict:
    return read(client, f"/deployments/{deployment_id}").json()


def rejected(client: TestClient) -> list[dict]:
    return read(client, "/deployments", outcome="rejected").json()["items"]


def webhook_count(client: TestClient, result: str, endpoint: str = "deploy") -> float:
    return sample(scrape(client), "deployer_webhook_requests_total", endpoint=endpoint, result=result)


def skipped(client: TestClient, reason: str = "outside_window") -> float:
    return sample(scrape(client), "deployer_skipped_deployments_total", service="portal", reason=reason)


def open_span(window: Window, start: str, hours: int) -> tuple[str, str, int]:
    """The first and the last open minute (UTC) of the window in `hours` hours from `start`, and how many there are:
    minute by minute, so that a gap or an extra minute cannot hide."""
    first = at(start)
    minutes = [m for m in range(int(first), int(first) + hours * 3600, 60) if window.opens(m) is None]
    text = [datetime.fromtimestamp(m, UTC).strftime("%Y-%m-%dT%H:%MZ") for m in (minutes[0], minutes[-1])]
    return text[0], text[1], len(minutes)


# Time: when a window is open, and when it next opens.


def test_a_window_is_open_in_the_minutes_its_cron_matches_and_otherwise_names_its_next_opening():
    window = Window("* 2-4 * * *", "UTC")

    assert window.opens(NOW) == at("2027-01-16T02:00:00Z")
    assert window.opens(at("2027-01-16T01:59:59Z")) == at("2027-01-16T02:00:00Z")
    assert window.opens(at("2027-01-16T02:00:00Z")) is None
    assert window.opens(at("2027-01-16T04:59:59Z")) is None, "the whole of the last minute is in"
    assert window.opens(at("2027-01-16T05:00:00Z")) == at("2027-01-17T02:00:00Z")
    assert windows_open([window], NOW) == at("2027-01-16T02:00:00Z")
    assert windows_open([window], at("2027-01-16T03:00:00Z")) is None
    assert windows_open([], NOW) is None, "no window: always open"


def test_a_window_is_read_in_its_own_zone():
    window = Window("* 2-4 * * *", "Europe/Berlin")

    assert window.opens(NOW) == OPENS_EPOCH
    assert window.opens(at("2027-01-16T03:59:00Z")) is None, "04:59 in Berlin"
    assert window.opens(at("2027-01-16T04:00:00Z")) == at("2027-01-17T01:00:00Z"), "05:00 in Berlin"
    assert str(window) == BERLIN_TEXT


def test_on_the_night_the_clocks_skip_02_00_the_window_keeps_its_wall_clock_minutes_that_exist():
    window = Window("* 2-4 * * *", "Europe/Berlin")

    # On 2027-03-28 Berlin goes from 01:59 CET (00:59Z) to 03:00 CEST (01:00Z). The window means "while the wall clock
    # reads 02:00 to 04:59": 02:xx does not exist that night, so it is open from 03:00 to 04:59 CEST, two hours, and
    # opens at the change itself. That is what its owner asked for; cronsim does not move the skipped minutes
    # anywhere else (no minute of 01:xx CET is opened in their place).
    assert window.opens(at("2027-03-28T00:59:00Z")) == at("2027-03-28T01:00:00Z")
    assert window.opens(at("2027-03-27T12:00:00Z")) == at("2027-03-28T01:00:00Z")
    assert open_span(window, "2027-03-27T22:00:00Z", 24) == ("2027-03-28T01:00Z", "2027-03-28T02:59Z", 120)
    assert window.opens(at("2027-03-28T03:00:00Z")) == at("2027-03-29T00:00:00Z"), "02:00 CEST the next night"


def test_on_the_night_the_clocks_repeat_02_00_the_window_is_open_in_both_of_its_hours():
    window = Window("* 2-4 * * *", "Europe/Berlin")

    # On 2027-10-31 Berlin reads 02:00-02:59 twice: in CEST (00:00-00:59Z), then in CET (01:00-01:59Z). Each of those
    # minutes is one the wall clock shows as 02:xx, so the window is open in both, four hours in all. Unlike a
    # schedule's tick (an event, run once: test_schedules), a window is a span of wall-clock time; shutting it during
    # the second 02:xx would refuse deploys at a time the owner allowed.
    assert window.opens(at("2027-10-30T23:59:00Z")) == at("2027-10-31T00:00:00Z")
    assert window.opens(at("2027-10-31T01:30:00Z")) is None, "02:30 CET, the repeated hour"
    assert open_span(window, "2027-10-30T21:00:00Z", 24) == ("2027-10-31T00:00Z", "2027-10-31T03:59Z", 240)
    assert window.opens(at("2027-10-31T04:00:00Z")) == at("2027-11-01T01:00:00Z"), "02:00 CET the next night"


def test_two_windows_open_together_at_their_first_common_minute():
    berlin = Window("* 2-4 * * *", "Europe/Berlin")  # 01:00-03:59Z
    early = Window("* 1-2 * * *", "UTC")  # 01:00-02:59Z
    late = Window("* 3-4 * * *", "UTC")  # 03:00-04:59Z

    assert windows_open([berlin, early], NOW) == at("2027-01-16T01:00:00Z")
    assert windows_open([berlin, late], NOW) == at("2027-01-16T03:00:00Z")
    assert windows_open([berlin, late], at("2027-01-16T03:30:00Z")) is None
    assert windows_open([berlin, early], at("2027-01-16T03:30:00Z")) == at("2027-01-17T01:00:00Z"), (
        "Berlin's is still open, the other is not"
    )


def test_windows_that_share_no_minute_are_a_value_error_naming_them():
    windows = [Window("* 2-4 * * *", "Europe/Berlin"), Window("* 5-6 * * *", "UTC")]

    with pytest.raises(ValueError) as refusal:
        windows_open(windows, NOW)
    assert str(refusal.value) == "the deploy windows * 2-4 * * * (Europe/Berlin), * 5-6 * * * (UTC) share no minute"


def test_a_window_without_a_zone_is_read_in_deploy_schedule_timezone():
    assert parse_window("* 2-4 * * *", "Europe/Berlin") == Window("* 2-4 * * *", "Europe/Berlin")
    assert parse_window({"cron": "* 2-4 * * *"}, "UTC") == Window("* 2-4 * * *", "UTC")
    assert parse_window({"cron": "* 2-4 * * *", "timezone": "Asia/Tokyo"}, "UTC") == Window("* 2-4 * * *", "Asia/Tokyo")


# The inventory: a wrong window refuses it.


@pytest.mark.parametrize(
    ("window", "problem"),
    [
        ('"61 2 * * *"', "service 'portal': deploy_window: cron '61 2 * * *': Bad minute"),
        ('{cron: "* 2-4 * *"}', "deploy_window: cron '* 2-4 * *': Wrong number of fields"),
        ('{cron: "* 2-4 * * *", timezone: Europe/Nowhere}', "deploy_window: unknown time zone 'Europe/Nowhere'"),
        ('{cron: "* 2-4 * * *", days: weekdays}', "deploy_window has unknown keys days (known: cron, timezone)"),
        ("{timezone: UTC}", "deploy_window needs cron, a 5-field cron expression"),
        ("42", "deploy_window must be a cron expression, or a mapping with cron and optionally timezone"),
        ('["* 2-4 * * *"]', "deploy_window must be a cron expression, or a mapping"),
    ],
    ids=["minute", "fields", "zone", "unknown-key", "no-cron", "number", "list"],
)
def test_a_wrong_window_refuses_the_inventory_naming_host_and_service(settings, fake_runner, window, problem):
    with_inventory(settings, portal=f"{{deploy_window: {window}}}")

    refused = pytest.raises(InventoryError, match="host localhost, service 'portal'")
    with refused as refusal, TestClient(create_app(settings)):
        pass
    assert problem in str(refusal.value)
    assert "hello-world" not in str(refusal.value), "its entry has no window of its own, and the host none"
    assert fake_runner.calls == []


def test_a_wrong_host_window_refuses_the_inventory_naming_each_service_it_holds(settings, fake_runner):
    with_inventory(settings, host_window='"* 25 * * *"')

    with pytest.raises(InventoryError) as refusal, TestClient(create_app(settings)):
        pass
    assert "host localhost, service 'portal': deploy_window: cron '* 25 * * *': Bad hour" in str(refusal.value)
    assert "host localhost, service 'hello-world': deploy_window: cron '* 25 * * *': Bad hour" in str(refusal.value)


# A deploy request, now.


def test_a_deploy_outside_its_window_is_423_naming_the_window_and_its_next_opening(client, fake_runner):
    response = signed_post(client, "/deploy", {"service": "portal"})

    assert response.status_code == 423
    assert response.json() == {"detail": REFUSED_DETAIL}
    assert response.headers["Retry-After"] == str(int(OPENS_EPOCH - NOW)) == "61200"
    assert fake_runner.calls == []
    (record,) = rejected(client)
    assert (record["action"], record["service"], record["outcome"]) == ("deploy", "portal", "rejected")
    assert (record["http_status"], record["error"]) == (423, REFUSED_DETAIL)
    assert webhook_count(client, "outside_window") == 1
    assert webhook_count(client, "accepted") == 0


def test_retry_after_counts_from_the_clock_s_now_rounded_up(client, fake_runner, clock):
    clock.now = OPENS_EPOCH - 90.5

    response = signed_post(client, "/deploy", {"service": "portal"})

    assert response.status_code == 423
    assert response.headers["Retry-After"] == "91"
    assert fake_runner.calls == []


@pytest.mark.parametrize("moment", [OPENS, "2027-01-16T02:30:00Z", "2027-01-16T03:59:59Z"])
def test_a_deploy_inside_its_window_runs(client, fake_runner, clock, moment):
    clock.now = at(moment)

    response = signed_post(client, "/deploy", {"service": "portal"})

    assert response.status_code == 200, response.text
    assert deploys(fake_runner) == ["portal"]
    assert rejected(client) == []
    assert webhook_count(client, "accepted") == 1
    assert webhook_count(client, "outside_window") == 0


def test_queue_plans_a_deploy_outside_its_window_for_the_opening_and_a_tick_runs_it_then(client, fake_runner, clock):
    response = signed_post(client, "/deploy", {"service": "portal", "queue": True, "commit": "abc123"})

    assert response.status_code == 202, response.text
    deployment_id = response.json()["deployment_id"]
    assert response.json() == {
        "deployment_id": deployment_id,
        "service": "portal",
        "status": "scheduled",
        "at": OPENS,
        "status_url": f"/deployments/{deployment_id}",
    }
    assert "Retry-After" not in response.headers
    assert record_of(client, deployment_id)["outcome"] == "scheduled"
    assert webhook_count(client, "accepted") == 1
    assert webhook_count(client, "outside_window") == 0
    assert tick(client) == pytest.approx(OPENS_EPOCH - NOW)

    clock.now = OPENS_EPOCH - 1
    tick(client)
    assert deploys(fake_runner) == []
    clock.now = OPENS_EPOCH
    assert tick(client) is None, "nothing else is planned"

    record = wait_for(client, deployment_id, finished)
    assert (record["outcome"], record["trigger"], record["planned_at"]) == ("succeeded", "webhook", OPENS)
    assert record["commit"] == "abc123"
    assert deploys(fake_runner) == ["portal"]


def test_queue_inside_the_window_deploys_at_once(client, fake_runner, clock):
    clock.now = OPENS_EPOCH + 60

    response = signed_post(client, "/deploy", {"service": "portal", "queue": True})

    assert response.status_code == 200, response.text
    assert deploys(fake_runner) == ["portal"]


# A planned deploy (`at`): held to the window at its time.


def test_a_planned_deploy_whose_time_is_outside_the_window_is_423_without_retry_after(client, fake_runner):
    response = signed_post(client, "/deploy", {"service": "portal", "at": "2027-01-15T09:00:00Z"})

    assert response.status_code == 423
    assert response.json() == {"detail": REFUSED_DETAIL}
    assert "Retry-After" not in response.headers, "retrying the same `at` later changes nothing"
    (record,) = rejected(client)
    assert record["http_status"] == 423
    assert read(client, "/deployments", outcome="scheduled").json()["items"] == []
    assert fake_runner.calls == []


def test_a_planned_deploy_outside_the_window_with_queue_moves_to_the_opening_after_its_time(client, fake_runner):
    # At 2027-01-16T05:00Z the Saturday window (01:00-03:59Z) has closed: the next opening is Sunday's.
    response = signed_post(client, "/deploy", {"service": "portal", "at": "2027-01-16T05:00:00Z", "queue": True})

    assert response.status_code == 202, response.text
    assert response.json()["at"] == "2027-01-17T01:00:00Z"
    assert fake_runner.calls == []


def test_a_planned_deploy_whose_time_is_inside_the_window_is_accepted_and_runs_then(client, fake_runner, clock):
    response = signed_post(client, "/deploy", {"service": "portal", "at": "2027-01-16T01:30:00Z"})

    assert response.status_code == 202, response.text
    deployment_id = response.json()["deployment_id"]
    assert response.json()["at"] == "2027-01-16T01:30:00Z"
    clock.now = at("2027-01-16T01:30:00Z")
    tick(client)

    record = wait_for(client, deployment_id, finished)
    assert (record["outcome"], record["planned_at"]) == ("succeeded", "2027-01-16T01:30:00Z")
    assert deploys(fake_runner) == ["portal"]


def test_a_planned_deploy_is_held_to_the_window_of_the_inventory_when_it_comes_to_run(
    client, settings, fake_runner, clock
):
    response = signed_post(client, "/deploy", {"service": "hello-world", "at": "2027-01-15T09:00:00Z"})
    assert response.status_code == 202, response.text
    deployment_id = response.json()["deployment_id"]

    # hello-world gets a window after it was planned: the check at its time refuses it.
    both = f"{{deploy_window: {BERLIN}}}"
    with_inventory(settings, portal=both, hello_world=both, at_time=NOW + 10)
    clock.now = at("2027-01-15T09:00:00Z")
    tick(client)

    record = wait_for(client, deployment_id, finished)
    assert (record["outcome"], record["http_status"]) == ("rejected", 423)
    assert record["error"] == "Refused when it came to run: " + REFUSED_DETAIL.replace("'portal'", "'hello-world'")
    assert fake_runner.calls == []


# Rollbacks, and whose window counts.


def test_a_rollback_outside_the_window_is_not_held(client, fake_runner):
    response = signed_post(client, "/rollback", {"service": "portal"})

    assert response.status_code == 200, response.text
    (call,) = fake_runner.calls
    assert (call["playbook"].name, call["extravars"]["service"]) == ("rollback.yml", "portal")
    assert rejected(client) == []
    assert webhook_count(client, "accepted", endpoint="rollback") == 1
    assert webhook_count(client, "outside_window", endpoint="rollback") == 0


def test_a_host_window_holds_every_service_and_a_service_s_own_window_overrides_it(settings, fake_runner, clock):
    with_inventory(settings, host_window='"* 2-4 * * *"', hello_world='{deploy_window: "* * * * *"}')

    with TestClient(create_app(settings, clock=clock)) as client:
        portal = signed_post(client, "/deploy", {"service": "portal"})
        hello_world = signed_post(client, "/deploy", {"service": "hello-world"})

    assert portal.status_code == 423
    assert portal.json()["detail"] == (
        "'portal' deploys only in its deploy window * 2-4 * * * (UTC); it opens next at 2027-01-16T02:00:00Z. "
        'Send "queue": true to plan the deploy for then'
    )
    assert hello_world.status_code == 200, hello_world.text
    assert deploys(fake_runner) == ["hello-world"]


def test_the_windows_of_every_host_a_deploy_reaches_must_all_be_open(tmp_path, fake_runner, clock):
    settings = make_settings(tmp_path)
    settings.deploy_inventory.write_text(
        "all:\n  hosts:\n"
        '    h1: {ansible_connection: local, deploy_window: {cron: "* 2-4 * * *", timezone: Europe/Berlin}}\n'
        '    h2: {ansible_connection: local, deploy_window: "* 3-4 * * *"}\n'
        "  vars:\n    deploy_compose_dir: /srv/homeserver\n    deploy_services: {portal: {}}\n"
    )

    with TestClient(create_app(settings, clock=clock)) as client:
        response = signed_post(client, "/deploy", {"service": "portal"})

    assert response.status_code == 423
    assert response.json()["detail"] == (
        f"'portal' deploys only in its deploy window {BERLIN_TEXT}; * 3-4 * * * (UTC); it opens next at "
        '2027-01-16T03:00:00Z. Send "queue": true to plan the deploy for then'
    )
    assert response.headers["Retry-After"] == str(int(at("2027-01-16T03:00:00Z") - NOW))
    assert fake_runner.calls == []


def test_hosts_whose_windows_share_no_minute_refuse_every_deploy_of_the_service_saying_so(tmp_path, fake_runner, clock):
    settings = make_settings(tmp_path)
    settings.deploy_inventory.write_text(
        "all:\n  hosts:\n"
        '    h1: {ansible_connection: local, deploy_window: "* 2-4 * * *"}\n'
        '    h2: {ansible_connection: local, deploy_window: "* 5-6 * * *"}\n'
        "  vars:\n    deploy_compose_dir: /srv/homeserver\n    deploy_services: {portal: {}}\n"
    )

    with TestClient(create_app(settings, clock=clock)) as client:
        response = signed_post(client, "/deploy", {"service": "portal", "queue": True})

    assert response.status_code == 423
    assert response.json()["detail"] == (
        "'portal' can never deploy: the deploy windows * 2-4 * * * (UTC), * 5-6 * * * (UTC) share no minute. "
        "Fix deploy_window in the inventory"
    )
    assert "Retry-After" not in response.headers
    assert fake_runner.calls == []


# Recurring schedules.


def test_a_schedule_s_tick_outside_the_window_deploys_nothing_and_is_counted_one_inside_runs(
    settings, fake_runner, clock
):
    with_inventory(settings, portal=f'{{schedule: {{cron: "0 * * * *"}}, deploy_window: {BERLIN}}}')

    with TestClient(create_app(settings, clock=clock)) as client:
        tick(client)  # the schedule is seen: its ticks count from now
        clock.now = at("2027-01-15T09:00:00Z")
        tick(client)
        clock.now = at("2027-01-15T09:00:30Z")
        tick(client)  # the same tick again: counted once

        assert read(client, "/deployments", service="portal").json()["items"] == []
        assert deploys(fake_runner) == []
        assert skipped(client) == 1
        assert skipped(client, "unchanged") == 0

        clock.now = OPENS_EPOCH
        tick(client)
        (record,) = read(client, "/deployments", service="portal").json()["items"]
        record = wait_for(client, record["id"], finished)

        assert (record["outcome"], record["trigger"], record["planned_at"]) == ("succeeded", "schedule", OPENS)
        assert deploys(fake_runner) == ["portal"]
        assert skipped(client) == 1


def test_get_schedules_shows_the_window_a_schedule_s_ticks_are_held_to(settings, fake_runner, clock):
    with_inventory(settings, portal=f'{{schedule: {{cron: "0 * * * *"}}, deploy_window: {BERLIN}}}')

    with TestClient(create_app(settings, clock=clock)) as client:
        body = read(client, "/schedules").json()

    assert body["items"] == [
        {
            "service": "portal",
            "cron": "0 * * * *",
            "timezone": "UTC",
            "image": None,
            "watch": False,
            "interval": None,
            "window": BERLIN_TEXT,
            # The schedule's own next tick, though the window will skip it: the window beside it says so.
            "next_run": "2027-01-15T09:00:00Z",
            "hosts": ["localhost"],
        }
    ]


# The trigger a record shows.


def post_as(client: TestClient, body: dict, user_agent: str | None):
    raw = json.dumps(body).encode()
    headers = {"X-Hub-Signature-256": sign(SECRET.encode(), raw, "deploy")}
    if user_agent is not None:
        headers["User-Agent"] = user_agent
    return client.post("/deploy", content=raw, headers=headers)


@pytest.mark.parametrize(
    ("user_agent", "trigger"),
    [("deployctl/1.0", "cli"), (None, "webhook"), ("curl/8.5.0", "webhook"), ("my-deployctl/1.0", "webhook")],
    ids=["deployctl", "testclient", "curl", "not-at-the-start"],
)
def test_the_user_agent_deployctl_sends_records_trigger_cli(client, fake_runner, clock, user_agent, trigger):
    clock.now = OPENS_EPOCH
    now = post_as(client, {"service": "portal"}, user_agent)
    queued = post_as(client, {"service": "portal", "at": "2027-01-16T02:00:00Z"}, user_agent)

    assert (now.status_code, queued.status_code) == (200, 202)
    assert record_of(client, now.headers["X-Deployment-Id"])["trigger"] == trigger
    assert record_of(client, queued.json()["deployment_id"])["trigger"] == trigger


def test_a_refused_request_deployctl_sent_is_recorded_with_trigger_cli(client, fake_runner):
    response = post_as(client, {"service": "portal"}, "deployctl/1.0")

    assert response.status_code == 423
    (record,) = rejected(client)
    assert record["trigger"] == "cli"
