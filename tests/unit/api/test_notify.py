"""Notifications: what a finished deploy says, and how it reaches real Apprise targets on loopback.

No Apprise mocks: a Receiver is a real HTTP server for json:// URLs, a BlackHole accepts and never answers, and a
closed port refuses. Retries are made fast by shortening api.notify.RETRY_DELAYS.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import ValidationError
from receiver import BlackHole, Receiver, closed_port_url

from api import notify
from api.models import FINISHED_OUTCOMES, Trigger
from api.notify import TITLES, TRIGGERS, Notifier, Target, message_for
from api.settings import Settings, get_settings

STRONG = "6f1c0e9a4b7d2f8e3a5c1b9d7e2f4a6c8b0d1e3f"
NEW_IMAGE_ID = "sha256:0123456789ab" + "f" * 52
OLD_IMAGE_ID = "sha256:a1b2c3d4e5f6" + "0" * 52
# The black hole's attempts give up after a second instead of Apprise's default four.
QUICK_GIVE_UP = "?rto=1&cto=1"

Results = list[tuple[str, str]]


def deploy_record(**changes: Any) -> dict[str, Any]:
    """A finished record as the history returns it: a successful deploy of portal unless `changes` say otherwise."""
    return {
        "id": "20250102T030405Z-3f9a1c",
        "action": "deploy",
        "service": "portal",
        "image": "registry.example.com/portal:1.4.2",
        "outcome": "succeeded",
        "old_image": "registry.example.com/portal:1.4.1",
        "old_image_id": OLD_IMAGE_ID,
        "new_image": "registry.example.com/portal:1.4.2",
        "new_image_id": NEW_IMAGE_ID,
        "repository": "acme/portal",
        "commit": "9f8e7d6",
        "message": "Fix the login redirect",
        "source": "10.0.0.5",
        "duration_seconds": 42.345,
        "error": None,
        "logs": "TASK [pull_image] ok\nTASK [health_check] ok",
        "running_image": None,
        "running_image_id": None,
        "running_state": None,
        **changes,
    }


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still waiting after {timeout} s for {what}"
        time.sleep(0.01)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    target = Receiver()
    yield target
    target.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    target = BlackHole()
    yield target
    target.close()


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "RETRY_DELAYS", (0.05, 0.05))


@pytest.fixture
def results() -> Results:
    """What on_result was told, as (scheme, result) pairs, in order."""
    return []


@pytest.fixture
def start_notifier(results: Results) -> Iterator[Callable[..., Notifier]]:
    """Starts Notifiers reporting to `results`; closes each at teardown so that no retry runs on into later tests."""
    notifiers: list[Notifier] = []

    def start(*urls: str, events: Sequence[str] = FINISHED_OUTCOMES) -> Notifier:
        notifier = Notifier(", ".join(urls), events, on_result=lambda scheme, result: results.append((scheme, result)))
        notifiers.append(notifier)
        notifier.start()
        return notifier

    yield start
    for notifier in notifiers:
        notifier.close(1)


# What a message says


def test_success_message_names_images_commit_duration_and_deployment() -> None:
    message = message_for(deploy_record())

    assert message.title == "✅ Deployed portal"
    lines = message.body.splitlines()
    assert "Image: registry.example.com/portal:1.4.2 (0123456789ab)" in lines
    assert "Previous image: registry.example.com/portal:1.4.1 (a1b2c3d4e5f6)" in lines
    assert "Commit: acme/portal@9f8e7d6" in lines
    assert "Message: Fix the login redirect" in lines
    assert "Duration: 42.3 s" in lines
    assert "Deployment: 20250102T030405Z-3f9a1c (from 10.0.0.5)" in lines
    # A success carries neither an error nor the log tail, even when the record has logs.
    assert not any(line.startswith("Error:") for line in lines)
    assert "TASK [pull_image] ok" not in message.body


@pytest.mark.parametrize(
    ("trigger", "said"),
    [
        (None, "a signed request (webhook)"),
        ("cli", "deployctl"),
        ("schedule", "its recurring schedule"),
        ("watch", "the registry watch: a new image under its tag"),
        ("recovery", "the reconciliation after an interruption"),
    ],
)
def test_a_message_says_what_triggered_the_deploy(trigger: str | None, said: str) -> None:
    record = deploy_record(**({"trigger": trigger} if trigger else {}))

    assert message_for(record).body.splitlines()[:2] == ["Service: portal", f"Triggered by: {said}"]


def test_every_trigger_has_its_words() -> None:
    assert set(TRIGGERS) == set(get_args(Trigger))


def test_success_arrives_as_json_of_type_success(receiver: Receiver, start_notifier: Callable[..., Notifier]) -> None:
    record = deploy_record()
    start_notifier(receiver.url).submit(record)

    [received] = receiver.wait_for(lambda received: len(received) == 1, timeout=5)
    assert received["title"] == "✅ Deployed portal"
    assert received["type"] == "success"
    assert received["message"] == message_for(record).body


def test_rolled_back_arrives_as_a_warning_with_the_error_and_the_last_ten_log_lines(
    receiver: Receiver, start_notifier: Callable[..., Notifier]
) -> None:
    record = deploy_record(
        outcome="rolled_back",
        error="health check failed: portal answered 503",
        logs="\n".join(f"log line {number}" for number in range(1, 31)),
    )
    start_notifier(receiver.url).submit(record)

    [received] = receiver.wait_for(lambda received: len(received) == 1, timeout=5)
    assert received["title"] == "⏪ Deploy of portal failed and was rolled back"
    assert received["type"] == "warning"
    body, tail = received["message"].split("\nLast log lines:\n")
    assert "Error: health check failed: portal answered 503" in body.splitlines()
    assert tail.splitlines() == [f"log line {number}" for number in range(21, 31)]


def test_titles_cover_every_action_and_finished_outcome_and_a_planned_deploy_s_miss() -> None:
    finished = itertools.product(("deploy", "rollback", "remove", "settle"), FINISHED_OUTCOMES)
    assert set(TITLES) == {*finished, ("deploy", "missed"), ("rollback", "missed")}


@pytest.mark.parametrize(("action", "outcome"), sorted(TITLES))
def test_every_action_and_outcome_formats(action: str, outcome: str) -> None:
    message = message_for(deploy_record(action=action, outcome=outcome, error="boom"))

    assert "portal" in message.title
    assert "{" not in message.title
    # A rollback's title must not read as a deploy's, nor the other way round, nor a removal's as either.
    assert message.title.split()[1].startswith(
        {"deploy": "Deploy", "rollback": "Roll", "remove": "Remov", "settle": "Settl"}[action]
    )
    assert ("Error: boom" in message.body.splitlines()) == (outcome != "succeeded")


def test_interrupted_message_says_what_runs_now() -> None:
    record = deploy_record(
        outcome="interrupted",
        error="Interrupted",
        running_image="registry.example.com/portal:1.4.2",
        running_image_id=NEW_IMAGE_ID,
        running_state="restarting",
    )

    message = message_for(record)

    assert message.title == "⚠️ Deploy of portal was interrupted"
    assert "Running now: registry.example.com/portal:1.4.2 (0123456789ab), restarting" in message.body.splitlines()


# Which records are sent


def test_an_outcome_outside_the_events_is_not_sent(receiver: Receiver, start_notifier: Callable[..., Notifier]) -> None:
    notifier = start_notifier(receiver.url, events=("failed",))

    notifier.submit(deploy_record(outcome="succeeded"))
    # One target's messages go out in order: once the failure has arrived, a sent success would have too.
    notifier.submit(deploy_record(outcome="failed", error="pull failed"))

    received = receiver.wait_for(lambda received: any(item["type"] == "failure" for item in received), timeout=5)
    assert [item["title"] for item in received] == ["❌ Deploy of portal failed"]


def test_rejected_running_and_serviceless_records_send_nothing(
    receiver: Receiver, start_notifier: Callable[..., Notifier]
) -> None:
    notifier = start_notifier(receiver.url)

    notifier.submit(deploy_record(outcome="rejected", service=None, error="service is required"))
    notifier.submit(deploy_record(outcome="rejected", error="image not allowed"))
    notifier.submit(deploy_record(outcome="running", duration_seconds=None))
    notifier.submit(deploy_record(outcome="failed", service=None, error="no service named"))
    notifier.submit(deploy_record(outcome="failed", error="pull failed"))

    received = receiver.wait_for(lambda received: any(item["type"] == "failure" for item in received), timeout=5)
    assert [item["title"] for item in received] == ["❌ Deploy of portal failed"]


# Delivery


def test_a_target_answering_500_once_is_retried_and_delivered(
    fast_retries: None, receiver: Receiver, start_notifier: Callable[..., Notifier], results: Results
) -> None:
    receiver.statuses = [500]

    start_notifier(receiver.url).submit(deploy_record())

    receiver.wait_for(lambda received: len(received) == 1, timeout=5)
    assert receiver.attempts == 2
    wait_until(lambda: results == [("json", "sent")], timeout=5, what="the retried message to count as sent")


def test_dead_targets_delay_neither_submit_nor_the_good_target(
    fast_retries: None,
    receiver: Receiver,
    black_hole: BlackHole,
    start_notifier: Callable[..., Notifier],
    results: Results,
) -> None:
    notifier = start_notifier(black_hole.url + QUICK_GIVE_UP, closed_port_url(), receiver.url)

    submitted = time.monotonic()
    notifier.submit(deploy_record())
    assert time.monotonic() - submitted < 0.1

    # The black hole needs three attempts of a second each to give up: anything that waited for it takes >= 3 s.
    receiver.wait_for(lambda received: len(received) == 1, timeout=2)
    black_hole.wait_for_a_connection(timeout=1)
    assert results.count(("json", "failed")) <= 1, "the black hole gave up before the good target was served"

    wait_until(lambda: len(results) == 3, timeout=10, what="all three targets to report")
    assert sorted(results) == [("json", "failed"), ("json", "failed"), ("json", "sent")]


def test_submissions_beyond_the_queue_limit_are_dropped(
    fast_retries: None,
    monkeypatch: pytest.MonkeyPatch,
    black_hole: BlackHole,
    start_notifier: Callable[..., Notifier],
    results: Results,
) -> None:
    monkeypatch.setattr(notify, "QUEUE_LIMIT", 2)
    notifier = start_notifier(black_hole.url + QUICK_GIVE_UP)
    notifier.submit(deploy_record())
    # Once the worker hangs on the first message, the queue holds exactly what is submitted next.
    black_hole.wait_for_a_connection(timeout=5)

    for _ in range(4):
        notifier.submit(deploy_record())

    assert results == [("json", "dropped"), ("json", "dropped")]


def test_close_returns_within_its_timeout_while_a_target_hangs(
    black_hole: BlackHole, start_notifier: Callable[..., Notifier]
) -> None:
    notifier = start_notifier(black_hole.url)
    notifier.submit(deploy_record())
    black_hole.wait_for_a_connection(timeout=5)

    closing = time.monotonic()
    notifier.close(1)

    assert time.monotonic() - closing < 2
    # Apprise's default four-second read timeout keeps the worker in its attempt past close.
    assert notifier.targets[0].thread.is_alive()
    # Hanging up ends that attempt now rather than during teardown.
    black_hole.close()


def test_after_close_a_failed_attempt_is_not_retried(
    black_hole: BlackHole, start_notifier: Callable[..., Notifier], results: Results
) -> None:
    notifier = start_notifier(black_hole.url)
    notifier.submit(deploy_record())
    black_hole.wait_for_a_connection(timeout=5)
    notifier.close(0.1)

    # Hanging up fails the attempt; the first retry would wait RETRY_DELAYS[0] (2 s) more.
    black_hole.close()

    wait_until(lambda: not notifier.targets[0].thread.is_alive(), timeout=1, what="the worker to stop")
    assert results == [("json", "failed")]


def test_a_failing_target_is_logged_without_its_password_or_options(
    fast_retries: None,
    caplog: pytest.LogCaptureFixture,
    start_notifier: Callable[..., Notifier],
    results: Results,
) -> None:
    url = closed_port_url().replace("json://", "json://deployer:hunter2secret@") + QUICK_GIVE_UP

    start_notifier(url).submit(deploy_record(outcome="failed"))

    wait_until(lambda: results == [("json", "failed")], timeout=5, what="the refused target to give up")
    given_up = [record for record in caplog.records if "given up" in record.getMessage()]
    assert len(given_up) == 1
    assert "json://deployer:****@127.0.0.1:" in given_up[0].getMessage()
    assert "hunter2secret" not in caplog.text
    assert "rto=" not in caplog.text


def test_a_url_apprise_cannot_use_is_refused_naming_only_its_scheme() -> None:
    with pytest.raises(ValueError, match="a bogus:// URL") as refused:
        Notifier("bogus://token:hunter2secret@host", FINISHED_OUTCOMES, on_result=lambda scheme, result: None)

    assert "hunter2secret" not in str(refused.value)


def test_a_url_without_a_scheme_is_refused_without_quoting_any_of_it() -> None:
    with pytest.raises(ValueError) as refused:
        Target("hunter2secret:abc@host", on_result=lambda scheme, result: None)

    assert "hunter2secret" not in str(refused.value)


# Settings


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """No DEPLOY_* or secret from the developer's shell or .env; get_settings reads afresh (as test_settings.py)."""
    for name in list(os.environ):
        if name == "WEBHOOK_SECRET" or name.startswith("DEPLOY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_settings_refuse_a_url_apprise_cannot_use_without_showing_it(clean_environment: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(webhook_secret=STRONG, deploy_notify_urls="bogus://token:hunter2secret@host")

    assert "bogus://" in str(refused.value)
    assert "hunter2secret" not in str(refused.value)


def test_settings_refuse_a_url_without_a_scheme_without_showing_it(clean_environment: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(webhook_secret=STRONG, deploy_notify_urls="hunter2secret:abc@host")

    assert "hunter2secret" not in str(refused.value)


def test_settings_refuse_text_apprise_would_skip_without_a_word(clean_environment: pytest.MonkeyPatch) -> None:
    # Apprise's own parser drops a schemeless entry before a URL: that target would never hear of anything.
    with pytest.raises(ValidationError, match="not a scheme:// URL") as refused:
        Settings(webhook_secret=STRONG, deploy_notify_urls="hunter2secret:abc@host ntfy://deploys")

    assert "hunter2secret" not in str(refused.value)


def test_settings_accept_urls_separated_by_commas_and_spaces(
    clean_environment: pytest.MonkeyPatch, start_notifier: Callable[..., Notifier]
) -> None:
    urls = "json://127.0.0.1:8001/notify, ntfy://deploys  json://deployer:pass@127.0.0.1:8002/notify"

    settings = Settings(webhook_secret=STRONG, deploy_notify_urls=urls)

    assert settings.deploy_notify_urls is not None
    notifier = start_notifier(settings.deploy_notify_urls.get_secret_value())
    assert [target.scheme for target in notifier.targets] == ["json", "ntfy", "json"]


def test_settings_read_notify_events_as_a_comma_list(clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("DEPLOY_NOTIFY_EVENTS", "failed, rolled_back")

    assert Settings(webhook_secret=STRONG).deploy_notify_events == ("failed", "rolled_back")


def test_settings_read_all_as_every_finished_outcome_and_missed(clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("DEPLOY_NOTIFY_EVENTS", "all")

    assert Settings(webhook_secret=STRONG).deploy_notify_events == (
        "succeeded",
        "failed",
        "rolled_back",
        "rollback_failed",
        "interrupted",
        "missed",
    )


@pytest.mark.parametrize("events", ["failed, exploded", "running", "rejected", "scheduled", "cancelled"])
def test_settings_refuse_an_event_that_is_not_a_finished_outcome(
    clean_environment: pytest.MonkeyPatch, events: str
) -> None:
    clean_environment.setenv("DEPLOY_NOTIFY_EVENTS", events)

    with pytest.raises(ValidationError, match="deploy_notify_events"):
        Settings(webhook_secret=STRONG)


def test_notify_urls_and_metrics_token_leave_the_environment_once_read(clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("WEBHOOK_SECRET", STRONG)
    clean_environment.setenv("DEPLOY_NOTIFY_URLS", "json://deployer:hunter2secret@127.0.0.1:8001/notify")
    clean_environment.setenv("DEPLOY_METRICS_TOKEN", "m" * 24)

    settings = get_settings()

    assert settings.deploy_notify_urls is not None
    assert settings.deploy_notify_urls.get_secret_value() == "json://deployer:hunter2secret@127.0.0.1:8001/notify"
    assert settings.deploy_metrics_token is not None
    assert settings.deploy_metrics_token.get_secret_value() == "m" * 24
    assert "DEPLOY_NOTIFY_URLS" not in os.environ
    assert "DEPLOY_METRICS_TOKEN" not in os.environ


def test_settings_never_show_the_notify_urls(clean_environment: pytest.MonkeyPatch) -> None:
    settings = Settings(webhook_secret=STRONG, deploy_notify_urls="json://deployer:hunter2secret@127.0.0.1:8001/x")

    assert "hunter2secret" not in repr(settings)
    assert "hunter2secret" not in str(settings.model_dump())
