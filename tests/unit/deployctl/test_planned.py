"""deployctl and planned deploys against the fake API: deploy and rollback --at, schedules, cancel.

Every test runs in one local time zone, Central European time, given as a POSIX TZ rule so that it needs no time zone
database: CET (+01:00) in winter, CEST (+02:00) from the last Sunday of March 02:00 to the last Sunday of October
03:00."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fakeapi import DEPLOYMENT_ID, HOSTILE, HOSTILE_ESCAPED, READ_TOKEN, SECRET, record, unprintable

from api.signature import is_valid
from deployctl.cli import main

CENTRAL_EUROPE = "CET-1CEST,M3.5.0,M10.5.0/3"
ACCEPTED = (
    "give 2026-12-08T02:00:00Z or 2026-12-08T03:00:00+01:00 (RFC 3339, with its offset), or 2026-12-08 03:00 "
    "(a date-time without one, in this machine's time zone, CET/CEST)"
)
OTHER_ID = "20261201T101500-5e6f7a8b"


def set_zone(zone: str | None) -> None:
    if zone is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = zone
    time.tzset()


@pytest.fixture(autouse=True)
def local_zone() -> Iterator[None]:
    saved = os.environ.get("TZ")
    set_zone(CENTRAL_EUROPE)
    yield
    set_zone(saved)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert SECRET not in out + err, "the secret is never printed"
    return code, out, err


def usage_error(capsys, *argv: str) -> str:
    """What argparse printed when it refused argv (exit 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def planned_record(planned_at: str = "2026-12-08T02:00:00Z", **fields: Any) -> dict[str, Any]:
    """A record as the API keeps a planned deploy: nothing run yet, started_at when it was received."""
    return record(
        "scheduled",
        [],
        **{
            "planned_at": planned_at,
            "trigger": "webhook",
            "started_at": "2026-12-01T10:15:00.000Z",
            "finished_at": None,
            "duration_seconds": None,
            "http_status": None,
            "old_image": None,
            "old_image_id": None,
            "new_image": None,
            "new_image_id": None,
            **fields,
        },
    )


def test_deploy_at_a_utc_time_signs_at_and_is_planned_without_following(capsys, fake_api):
    code, out, err = run(capsys, "deploy", "portal", "acme/portal:1.4.2", "--at", "2026-12-08T02:00:00Z")

    assert (code, err) == (0, "")
    (start,) = fake_api.seen
    assert (start.method, start.path, start.query) == ("POST", "/deploy", {"wait": ["false"]})
    assert start.body == (
        b'{"service":"portal","image":"acme/portal:1.4.2","at":"2026-12-08T02:00:00+00:00","timestamp":%d}'
        % start.timestamp
    )
    assert is_valid(SECRET.encode(), start.body, start.headers["X-Hub-Signature-256"], "deploy")
    assert out == f"Scheduled {DEPLOYMENT_ID}: deploy portal at 2026-12-08 02:00:00 UTC (2026-12-08 03:00:00 CET)\n"


@pytest.mark.parametrize(
    ("given", "sent", "utc", "local"),
    [
        ("2026-12-08T02:00:00Z", "2026-12-08T02:00:00+00:00", "2026-12-08 02:00:00", "2026-12-08 03:00:00 CET"),
        ("2026-12-08t02:00:00z", "2026-12-08T02:00:00+00:00", "2026-12-08 02:00:00", "2026-12-08 03:00:00 CET"),
        ("2026-12-08T03:00:00+01:00", "2026-12-08T03:00:00+01:00", "2026-12-08 02:00:00", "2026-12-08 03:00:00 CET"),
        ("2026-12-07T21:00:00-05:00", "2026-12-07T21:00:00-05:00", "2026-12-08 02:00:00", "2026-12-08 03:00:00 CET"),
        ("2026-12-08 03:00", "2026-12-08T03:00:00+01:00", "2026-12-08 02:00:00", "2026-12-08 03:00:00 CET"),
        ("2026-12-08T03:00:00.750", "2026-12-08T03:00:00+01:00", "2026-12-08 02:00:00", "2026-12-08 03:00:00 CET"),
        ("2026-07-01 03:00:00", "2026-07-01T03:00:00+02:00", "2026-07-01 01:00:00", "2026-07-01 03:00:00 CEST"),
    ],
    ids=["Z", "lower-case", "offset", "negative-offset", "local-winter", "local-sub-seconds", "local-summer"],
)
def test_each_form_of_time_is_sent_with_its_offset_and_printed_in_utc_and_local_time(
    capsys, fake_api, given, sent, utc, local
):
    code, out, _ = run(capsys, "deploy", "portal", "--at", given)

    assert code == 0
    (start,) = fake_api.requests("POST")
    assert json.loads(start.body)["at"] == sent
    assert out == f"Scheduled {DEPLOYMENT_ID}: deploy portal at {utc} UTC ({local})\n"


@pytest.mark.parametrize(
    ("zone", "sent"),
    [
        ("UTC0", "2026-12-08T03:00:00+00:00"),
        ("EST5EDT,M3.2.0,M11.1.0", "2026-12-08T03:00:00-05:00"),
        ("<+0530>-5:30", "2026-12-08T03:00:00+05:30"),
    ],
)
def test_a_time_without_offset_is_taken_in_the_machine_s_zone(capsys, fake_api, zone, sent):
    set_zone(zone)

    assert run(capsys, "deploy", "portal", "--at", "2026-12-08T03:00")[0] == 0

    (start,) = fake_api.requests("POST")
    assert json.loads(start.body)["at"] == sent


def test_a_local_time_the_clocks_skip_or_repeat_is_refused_asking_for_the_offset(capsys, fake_api):
    skipped = usage_error(capsys, "deploy", "portal", "--at", "2026-03-29 02:30")
    repeated = usage_error(capsys, "deploy", "portal", "--at", "2026-10-25 02:30")

    assert (
        "argument --at: 2026-03-29 02:30:00 does not exist in this machine's time zone (CET/CEST): the clocks skip "
        "it; give a time with its offset" in skipped
    )
    assert (
        "argument --at: 2026-10-25 02:30:00 comes twice in this machine's time zone (CET/CEST), as the clocks go "
        "back: give it with its offset, 2026-10-25T02:30:00+02:00 or 2026-10-25T02:30:00+01:00" in repeated
    )
    assert fake_api.seen == []


@pytest.mark.parametrize(
    "given",
    [
        "tomorrow",
        "2026-12-08",
        "1796263200",
        "03:00",
        "2026-12-08T02:00:00+0100",
        "08.12.2026 03:00",
        "2026-13-08T02:00:00Z",
        "2026-12-08T25:00:00Z",
        "",
    ],
)
def test_a_time_deployctl_cannot_read_exits_2_naming_the_accepted_forms(capsys, fake_api, given):
    err = usage_error(capsys, "deploy", "portal", "--at", given)

    assert "usage: deployctl deploy" in err
    assert f"error: argument --at: '{given}' is not a time" in err
    assert err.rstrip().endswith(ACCEPTED)
    assert fake_api.seen == []


def test_an_unreadable_time_is_echoed_escaped(capsys):
    err = usage_error(capsys, "rollback", "portal", "--at", HOSTILE)

    assert unprintable(err) == []
    assert f"'{HOSTILE_ESCAPED}' is not a time" in err


def test_json_prints_the_planned_deploy_s_202_body(capsys, fake_api):
    code, out, _ = run(capsys, "deploy", "portal", "--at", "2026-12-08T03:00:00+01:00", "--json")

    assert code == 0
    assert json.loads(out) == {
        "deployment_id": DEPLOYMENT_ID,
        "service": "portal",
        "status": "scheduled",
        "at": "2026-12-08T02:00:00Z",
        "status_url": f"/deployments/{DEPLOYMENT_ID}",
    }
    assert fake_api.requests("GET") == []


def test_rollback_at_is_planned_and_signed_for_rollback(capsys, fake_api):
    code, out, _ = run(capsys, "rollback", "portal", "--message", "1.4.2 breaks logins", "--at", "2026-12-08 03:00")

    assert code == 0
    (start,) = fake_api.requests("POST")
    assert start.path == "/rollback"
    assert start.body == (
        b'{"service":"portal","message":"1.4.2 breaks logins","at":"2026-12-08T03:00:00+01:00","timestamp":%d}'
        % start.timestamp
    )
    assert is_valid(SECRET.encode(), start.body, start.headers["X-Hub-Signature-256"], "rollback")
    assert not is_valid(SECRET.encode(), start.body, start.headers["X-Hub-Signature-256"], "deploy")
    assert out == f"Scheduled {DEPLOYMENT_ID}: rollback portal at 2026-12-08 02:00:00 UTC (2026-12-08 03:00:00 CET)\n"


def test_a_time_the_api_refuses_exits_3_with_its_detail(capsys, fake_api):
    fake_api.start_answer = (400, {"detail": "at 2025-01-01T00:00:00Z is in the past"})

    code, out, err = run(capsys, "deploy", "portal", "--at", "2025-01-01T00:00:00Z")

    assert (code, out) == (3, "")
    assert err == "deployctl: refused by the API (400): at 2025-01-01T00:00:00Z is in the past\n"


def test_queue_is_signed_and_a_deploy_queued_to_its_window_is_printed_as_planned(capsys, fake_api):
    accepted = {"deployment_id": DEPLOYMENT_ID, "service": "portal", "status": "scheduled", "status_url": "/x"}
    accepted["at"] = "2026-12-09T01:00:00Z"
    fake_api.start_answer = (202, accepted)

    code, out, err = run(capsys, "deploy", "portal", "acme/portal:1.4.2", "--queue")

    assert (code, err) == (0, "")
    (start,) = fake_api.seen
    assert start.body == b'{"service":"portal","image":"acme/portal:1.4.2","queue":true,"timestamp":%d}' % (
        start.timestamp
    )
    assert is_valid(SECRET.encode(), start.body, start.headers["X-Hub-Signature-256"], "deploy")
    assert out == (
        f"Scheduled {DEPLOYMENT_ID}: deploy portal at 2026-12-09 01:00:00 UTC (2026-12-09 02:00:00 CET) "
        "(queued to its deploy window)\n"
    )


def test_a_deploy_outside_its_window_exits_3_with_the_detail_and_the_queue_hint(capsys, fake_api):
    detail = "'portal' deploys only in its deploy window * 2-4 * * * (UTC); it opens next at 2026-12-09T02:00:00Z"
    fake_api.start_answer = (423, {"detail": detail})

    code, out, err = run(capsys, "deploy", "portal")

    assert (code, out) == (3, "")
    assert err == (
        f"deployctl: refused by the API (423): {detail}\n"
        "  (outside the service's deploy window: deploy --queue plans it for the window's opening)\n"
    )
    (start,) = fake_api.seen
    assert b"queue" not in start.body, "no queue unless asked"


def test_rollback_takes_no_queue(capsys):
    assert "unrecognized arguments: --queue" in usage_error(capsys, "rollback", "portal", "--queue")


def test_an_api_that_started_the_deploy_at_once_exits_4_and_says_so(capsys, fake_api):
    """An API from before planned deploys ignores `at`: deployctl must not report the deploy as planned."""
    accepted = {"deployment_id": DEPLOYMENT_ID, "service": "portal", "status": "running", "status_url": "/x"}
    fake_api.start_answer = (202, accepted)

    code, out, err = run(capsys, "deploy", "portal", "--at", "2026-12-08T02:00:00Z")

    assert (code, out) == (4, "")
    assert err == (
        f"deployctl: the API started deploy {DEPLOYMENT_ID} now instead of planning it: it does not know `at` "
        f"(a version from before planned deploys); see it with: deployctl show {DEPLOYMENT_ID}\n"
    )
    assert fake_api.requests("GET") == []


def recurring(service: str = "portal", **fields: Any) -> dict[str, Any]:
    """A recurring schedule as GET /schedules lists it."""
    return {
        "service": service,
        "cron": "0 3 * * *",
        "timezone": "Europe/Berlin",
        "image": None,
        "next_run": "2027-01-16T02:00:00Z",
        "hosts": ["nas"],
        **fields,
    }


def planned_pair() -> list[dict[str, Any]]:
    """Two planned deploys of portal as GET /schedules lists them, soonest first."""
    sooner = planned_record("2026-07-01T01:00:00Z", id=OTHER_ID, action="rollback", image=None)
    sooner["started_at"] = "2026-12-01T10:20:00.000Z"
    return [sooner, planned_record("2026-12-08T02:00:00Z")]


PLANNED_TABLE = [
    "ID                        SERVICE  ACTION    IMAGE                    AT (LOCAL)                "
    "AT (UTC)             RECEIVED (UTC)",
    "20261201T101500-5e6f7a8b  portal   rollback  the previous kept image  2026-07-01 03:00:00 CEST  "
    "2026-07-01 01:00:00  2026-12-01 10:20:00",
    "20251127T023912-1a2b3c4d  portal   deploy    acme/portal:1.4.2        2026-12-08 03:00:00 CET   "
    "2026-12-08 02:00:00  2026-12-01 10:15:00",
    "2 planned, soonest first",
]


def test_schedules_lists_the_recurring_schedules_then_the_planned_deploys(capsys, fake_api, monkeypatch):
    monkeypatch.setenv("DEPLOY_READ_TOKEN", READ_TOKEN)
    fake_api.schedules = {
        "items": [
            recurring("hello-world", cron="*/15 * * * *", timezone="UTC", next_run="2027-07-15T10:15:00Z"),
            recurring(image="ghcr.io/acme/portal:stable", hosts=["web-1", "web-2"]),
            recurring(
                "grafana",
                cron=None,
                watch=True,
                interval=300,
                window="* 2-4 * * * (Europe/Berlin)",
                next_run="2027-01-16T01:05:00Z",
            ),
        ],
        "planned": list(reversed(planned_pair())),
    }

    code, out, err = run(capsys, "schedules")

    assert (code, err) == (0, "")
    (read,) = fake_api.requests("GET")
    assert (read.path, read.query) == ("/schedules", {})
    assert read.headers["Authorization"] == f"Bearer {READ_TOKEN}"
    assert out.splitlines() == [
        "SERVICE      WHEN                                                    ZONE           "
        "IMAGE                       NEXT RUN (LOCAL)          NEXT RUN (UTC)       HOSTS",
        "hello-world  */15 * * * *                                            UTC            "
        "the compose file's image    2027-07-15 12:15:00 CEST  2027-07-15 10:15:00  nas",
        "portal       0 3 * * *                                               Europe/Berlin  "
        "ghcr.io/acme/portal:stable  2027-01-16 03:00:00 CET   2027-01-16 02:00:00  web-1, web-2",
        "grafana      every 300 s, watch, window * 2-4 * * * (Europe/Berlin)  Europe/Berlin  "
        "the compose file's image    2027-01-16 02:05:00 CET   2027-01-16 01:05:00  nas",
        "3 recurring schedules",
        "",
        *PLANNED_TABLE,
    ]


def test_schedules_with_only_recurring_ones_says_no_deploys_are_planned(capsys, fake_api, monkeypatch):
    monkeypatch.setenv("DEPLOY_READ_TOKEN", READ_TOKEN)
    fake_api.schedules = {"items": [recurring()], "planned": []}

    code, out, _ = run(capsys, "schedules")

    assert code == 0
    assert out.splitlines() == [
        "SERVICE  WHEN       ZONE           IMAGE                     NEXT RUN (LOCAL)         "
        "NEXT RUN (UTC)       HOSTS",
        "portal   0 3 * * *  Europe/Berlin  the compose file's image  2027-01-16 03:00:00 CET  "
        "2027-01-16 02:00:00  nas",
        "1 recurring schedule",
        "",
        "No deploys are planned.",
    ]


def test_schedules_with_only_planned_deploys_says_there_is_no_recurring_one(capsys, fake_api, monkeypatch):
    monkeypatch.setenv("DEPLOY_READ_TOKEN", READ_TOKEN)
    fake_api.schedules = {"items": [], "planned": planned_pair()}

    code, out, _ = run(capsys, "schedules")

    assert code == 0
    assert out.splitlines() == ["No recurring schedules.", "", *PLANNED_TABLE]


def test_schedules_names_the_compose_file_s_image_of_a_planned_deploy(capsys, fake_api, monkeypatch):
    monkeypatch.setenv("DEPLOY_READ_TOKEN", READ_TOKEN)
    fake_api.schedules = {"items": [], "planned": [planned_record(image=None)]}

    code, out, _ = run(capsys, "schedules")

    assert code == 0
    assert "  deploy  the compose file's image  2026-12-08 03:00:00 CET  " in out
    assert out.endswith("\n1 planned, soonest first\n")


def test_schedules_with_neither_says_so_on_one_line(capsys, fake_api, monkeypatch):
    monkeypatch.setenv("DEPLOY_READ_TOKEN", READ_TOKEN)

    assert run(capsys, "schedules") == (0, "No schedules, and no deploys are planned.\n", "")
    assert run(capsys, "schedules", "--json") == (0, '{\n  "items": [],\n  "planned": []\n}\n', "")


def test_schedules_service_keeps_only_that_service_s_schedules_and_planned_deploys(capsys, fake_api, monkeypatch):
    monkeypatch.setenv("DEPLOY_READ_TOKEN", READ_TOKEN)
    other = planned_record("2026-08-01T01:00:00Z", id="20261201T103000-0a1b2c3d", service="hello-world")
    fake_api.schedules = {
        "items": [recurring("hello-world", cron="*/15 * * * *"), recurring()],
        "planned": [planned_pair()[0], other, planned_pair()[1]],
    }

    code, out, _ = run(capsys, "schedules", "--service", "portal")

    assert code == 0
    assert fake_api.requests("GET")[-1].query == {}, "GET /schedules has no filter: deployctl filters"
    assert "hello-world" not in out
    assert out.splitlines()[1].startswith("portal   0 3 * * *  Europe/Berlin  ")
    assert out.splitlines()[4:] == PLANNED_TABLE

    code, out, _ = run(capsys, "schedules", "--service", "portal", "--json")
    assert (code, json.loads(out)) == (0, {"items": [recurring()], "planned": planned_pair()})

    code, out, _ = run(capsys, "schedules", "--service", "grafana")
    assert (code, out) == (0, "No schedules, and no deploys are planned.\n")


def test_schedules_json_prints_the_api_s_answer_unchanged(capsys, fake_api, monkeypatch):
    monkeypatch.setenv("DEPLOY_READ_TOKEN", READ_TOKEN)
    fake_api.schedules = {"items": [recurring(), recurring("hello-world")], "planned": planned_pair()}

    code, out, err = run(capsys, "schedules", "--json")

    assert (code, err) == (0, "")
    assert json.loads(out) == fake_api.schedules


def test_schedules_needs_the_read_token(capsys, fake_api):
    code, _, err = run(capsys, "schedules")

    assert code == 2
    assert "schedules needs DEPLOY_READ_TOKEN" in err
    assert fake_api.seen == []


def test_schedules_with_a_wrong_read_token_exits_3(capsys, fake_api, monkeypatch):
    monkeypatch.setenv("DEPLOY_READ_TOKEN", "not-the-read-token-0123456789")

    code, out, err = run(capsys, "schedules")

    assert (code, out) == (3, "")
    assert err == (
        "deployctl: refused by the API (401): A valid read token is required: Authorization: Bearer "
        "<DEPLOY_READ_TOKEN>\n  (DEPLOY_READ_TOKEN (or WEBHOOK_SECRET, for one deployment) is not the API's)\n"
    )
    (read,) = fake_api.seen
    assert read.path == "/schedules"


def test_schedules_cells_are_printed_escaped(capsys, fake_api, monkeypatch):
    monkeypatch.setenv("DEPLOY_READ_TOKEN", READ_TOKEN)
    hostile_schedule = recurring(
        HOSTILE + "portal",
        cron=HOSTILE + "0 3 * * *",
        timezone=HOSTILE + "Europe/Berlin",
        image=HOSTILE + "acme/portal:stable",
        next_run=HOSTILE,
        hosts=[HOSTILE + "nas"],
    )
    hostile = planned_record(HOSTILE, image=HOSTILE + "acme/portal:1.4.2", service=HOSTILE + "portal")
    fake_api.schedules = {"items": [hostile_schedule], "planned": [hostile]}

    code, out, err = run(capsys, "schedules")

    assert code == 0
    assert unprintable(out + err) == []
    assert f"  {HOSTILE_ESCAPED}portal  " in out and f"  {HOSTILE_ESCAPED}acme/portal:1.4.2  " in out
    assert f"{HOSTILE_ESCAPED}0 3 * * *  {HOSTILE_ESCAPED}Europe/Berlin  {HOSTILE_ESCAPED}acme/portal:stable" in out
    assert out.count(HOSTILE_ESCAPED) == 11, (
        "recurring: service, cron, zone, image, hosts and the next run that is none, in both columns; "
        "planned: service, image, and the time that is none, in both columns"
    )


def test_cancel_signs_the_id_for_cancel_and_prints_what_was_planned(capsys, fake_api):
    fake_api.timeline = [planned_record()]

    code, out, err = run(capsys, "cancel", DEPLOYMENT_ID)

    assert (code, err) == (0, "")
    (cancel,) = fake_api.seen
    assert (cancel.method, cancel.path, cancel.body) == ("DELETE", f"/deployments/{DEPLOYMENT_ID}", b"")
    signature = cancel.headers["X-Hub-Signature-256"]
    assert is_valid(SECRET.encode(), DEPLOYMENT_ID.encode(), signature, "cancel")
    assert not is_valid(SECRET.encode(), DEPLOYMENT_ID.encode(), signature, "read"), "made for cancel only"
    assert out == (
        f"Cancelled {DEPLOYMENT_ID}: deploy portal planned for 2026-12-08 02:00:00 UTC (2026-12-08 03:00:00 CET)\n"
    )


def test_cancel_json_prints_the_cancelled_record(capsys, fake_api):
    fake_api.timeline = [planned_record(action="rollback", image=None)]

    code, out, _ = run(capsys, "cancel", DEPLOYMENT_ID, "--json")

    assert code == 0
    cancelled = json.loads(out)
    assert (cancelled["outcome"], cancelled["action"], cancelled["planned_at"]) == (
        "cancelled",
        "rollback",
        "2026-12-08T02:00:00Z",
    )
    assert cancelled["finished_at"] is not None


@pytest.mark.parametrize(
    ("deployment_id", "timeline", "printed"),
    [
        (
            DEPLOYMENT_ID,
            [record()],
            f"(409): Deployment {DEPLOYMENT_ID} is succeeded: only a scheduled one can be cancelled",
        ),
        (DEPLOYMENT_ID, [record("running", [])], "(409): Deployment 20251127T023912-1a2b3c4d is running"),
        (OTHER_ID, [planned_record()], f"(404): No deployment '{OTHER_ID}'"),
    ],
    ids=["finished", "started", "unknown"],
)
def test_cancel_refused_exits_3_with_the_api_detail_on_one_line(capsys, fake_api, deployment_id, timeline, printed):
    fake_api.timeline = timeline

    code, out, err = run(capsys, "cancel", deployment_id)

    assert (code, out) == (3, "")
    assert err.startswith(f"deployctl: refused by the API {printed}")
    assert err.count("\n") == 1


def test_cancel_with_a_wrong_secret_exits_3(capsys, fake_api, monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", "not-the-secret-" + "x" * 32)
    fake_api.timeline = [planned_record()]

    code, _, err = run(capsys, "cancel", DEPLOYMENT_ID)

    assert code == 3
    assert "refused by the API (403): Invalid signature" in err
    assert fake_api.timeline[0]["outcome"] == "scheduled"


def test_cancel_of_an_unreachable_api_exits_4(capsys, fake_api):
    closed = fake_api.url.rsplit(":", 1)[0] + ":9"

    code, _, err = run(capsys, "--url", closed, "cancel", DEPLOYMENT_ID)

    assert code == 4
    assert f"deployctl: the API did not answer: {closed}/deployments/{DEPLOYMENT_ID}" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cancel", "../etc/passwd"], "'../etc/passwd' is not a deployment id"),
        (["cancel", DEPLOYMENT_ID], "WEBHOOK_SECRET is not set"),
    ],
)
def test_cancel_without_an_id_or_the_secret_exits_2(capsys, fake_api, monkeypatch, argv, message):
    monkeypatch.delenv("WEBHOOK_SECRET")

    code, _, err = run(capsys, *argv)

    assert code == 2
    assert message in err
    assert fake_api.seen == []


def test_show_of_a_planned_deploy_says_when_it_is_planned_and_was_received(capsys, fake_api):
    fake_api.timeline = [planned_record()]

    code, out, _ = run(capsys, "show", DEPLOYMENT_ID)

    assert code == 0
    assert "planned for  2026-12-08 02:00:00 UTC (2026-12-08 03:00:00 CET)\n" in out
    assert "received     2026-12-01 10:15:00 UTC\n" in out and "started " not in out
    assert out.endswith("… deploy of portal is planned\n")
