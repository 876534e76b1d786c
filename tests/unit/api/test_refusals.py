"""Refusals cost nothing, with a fake runner: replays and stale bodies leave no record and count against the
client's address like invalid signatures; the limiter's memory is bounded; the history is pruned; a refused
request's text cannot write a log line of its own; and an inventory the API cannot honour is refused."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import limits
import pytest
from fastapi.testclient import TestClient
from test_request_security import PORTAL_SECRET, SECRET, fresh, make_settings, send

from api.history import History, Retention
from api.inventory import InventoryError
from api.main import create_app
from api.security import MovingWindows, RateLimits, address_key

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def client(tmp_path, fake_runner):
    with TestClient(create_app(make_settings(tmp_path))) as test_client:
        yield test_client


def history_total(client: TestClient) -> int:
    return client.app.state.deployer.history.list(limit=1)[1]


def test_replays_and_stale_bodies_leave_no_record_and_count_against_the_address(tmp_path, fake_runner):
    settings = make_settings(tmp_path, deploy_signature_failure_limit="4/minute")
    body = json.dumps(fresh(service="jellyfin")).encode()
    with TestClient(create_app(settings)) as client:
        first = send(client, body)
        replays = [send(client, body) for _ in range(3)]
        stale = send(client, {"service": "jellyfin", "timestamp": int(time.time()) - 3600})
        blocked = send(client, fresh(service="jellyfin"))
        metrics = client.get("/metrics").text
        recorded = history_total(client)

    assert first.status_code == 200
    assert [response.status_code for response in replays] == [403, 403, 403]
    assert stale.status_code == 403
    assert blocked.status_code == 429, "the fifth refusal in a minute blocks the address, a good request too"
    assert recorded == 1, "only the deploy is a record"
    assert 'deployer_webhook_requests_total{endpoint="deploy",result="replayed"} 3.0' in metrics
    assert 'deployer_webhook_requests_total{endpoint="deploy",result="expired"} 1.0' in metrics
    assert len(fake_runner.calls) == 1


def test_refusals_of_signed_bodies_count_against_the_address_but_conflicts_do_not(tmp_path, fake_runner):
    settings = make_settings(tmp_path, deploy_signature_failure_limit="2/minute")
    with TestClient(create_app(settings)) as client:
        refused = [send(client, fresh(service="ghost")), send(client, fresh(service="portal"))]
        blocked = send(client, fresh(service="jellyfin"))

    assert [response.status_code for response in refused] == [400, 403]
    assert blocked.status_code == 429
    assert fake_runner.calls == []


def test_the_refusal_limiter_keeps_a_bounded_number_of_addresses():
    """300,000 addresses, each refused once within the window: the limiter keeps at most its bound of them."""
    rate_limits = RateLimits(make_settings_for_limits())
    for number in range(300_000):
        rate_limits.refused(f"10.{number >> 16 & 255}.{number >> 8 & 255}.{number & 255}")

    assert len(rate_limits.refusals) == RateLimits.MAX_ADDRESSES
    # The most recent addresses are the ones kept.
    assert rate_limits.refusals._hits.get(address_key("10.4.147.223")) is not None
    assert rate_limits.refusals._hits.get(address_key("10.0.0.0")) is None


def make_settings_for_limits():
    from api.settings import Settings

    return Settings(webhook_secret=SECRET, deploy_signature_failure_limit="1/minute")


def test_an_ipv6_client_counts_by_its_64_and_an_ipv4_mapped_address_as_ipv4():
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.7") == address_key("192.0.2.7")
    assert address_key("0.0.0.1") != address_key("::1"), "no IPv6 /64 shares a key with an IPv4 address"
    assert address_key("testclient") == "testclient"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_moving_window_refuses_beyond_its_amount_says_when_and_forgets_empty_keys():
    clock = Clock()
    windows = MovingWindows(limits.parse("2/minute"), max_keys=10, clock=clock)
    windows.hit("a")
    clock.now += 10
    windows.hit("a")

    assert windows.retry_after("a") == 50, "the first hit leaves the window 60 s after it came"
    clock.now += 50
    assert windows.retry_after("a") is None
    windows.hit("a")
    assert windows.retry_after("a") == 10
    clock.now += 61
    windows.hit("b")
    assert len(windows) == 1, "a's hits have all left the window: its key is dropped"


def test_a_full_moving_window_forgets_the_least_recently_hit_key():
    clock = Clock()
    windows = MovingWindows(limits.parse("1/minute"), max_keys=2, clock=clock)
    for key in ("a", "b", "a", "c"):
        windows.hit(key)

    assert set(windows._hits) == {"a", "c"}


def test_history_keeps_the_newest_records_and_none_older_than_its_days(tmp_path):
    history = History(tmp_path / "h.sqlite3", Retention(days=30, records=3))
    for number in range(5):
        history.create(id=f"r{number}", action="deploy", outcome="rejected", started_at=f"2026-11-2{number}T00:00:00Z")
    history.create(id="running", action="deploy", outcome="running", started_at="2020-01-01T00:00:00Z")
    history.create(id="old", action="deploy", outcome="succeeded", started_at="2020-01-02T00:00:00Z")

    assert history.prune() >= 2
    items, total = history.list(limit=10)
    assert [item["id"] for item in items] == ["r4", "r3", "r2", "running"]
    assert total == 4, "a running record is kept whatever its age"


def test_history_retention_is_read_from_days_records_or_both(tmp_path):
    assert make_settings(tmp_path, deploy_history_retention="90d").deploy_history_retention == Retention(days=90)
    assert make_settings(tmp_path, deploy_history_retention="5000").deploy_history_retention == Retention(records=5000)
    both = make_settings(tmp_path, deploy_history_retention="30d, 200").deploy_history_retention
    assert both == Retention(days=30, records=200)
    assert make_settings(tmp_path).deploy_history_retention == Retention(days=365, records=5000)
    with pytest.raises(ValueError, match="'forever' is neither a number of days"):
        make_settings(tmp_path, deploy_history_retention="forever")


def test_a_refused_request_cannot_write_a_log_line_of_its_own(client, caplog):
    forged = "x\n2026-12-01 03:00:00,000 [INFO] ✅ Deployment Successful! \x1b[2J"
    with caplog.at_level(logging.WARNING, logger="deploy"):
        response = send(client, fresh(service=forged))

    assert response.status_code == 400
    (line,) = [record.getMessage() for record in caplog.records if "refused" in record.getMessage()]
    assert "\n" not in line and "\x1b" not in line
    assert "x\\n2026-12-01 03:00:00,000 [INFO]" in line


def test_the_allow_list_is_listed_only_as_far_as_the_signer_may_deploy(client):
    """The portal repository's secret learns of portal alone, not of the operator's other services."""
    from_portal = send(client, fresh(service="ghost"), secret=PORTAL_SECRET)
    from_operator = send(client, fresh(service="ghost"))

    assert from_portal.json() == {"detail": "Service 'ghost' not allowed. Allowed: portal"}
    assert from_operator.json() == {"detail": "Service 'ghost' not allowed. Allowed: grafana, jellyfin"}


UNKNOWN_SECRET_ENV = """
all:
  hosts:
    localhost: {ansible_connection: local}
  vars:
    deploy_services:
      portal: {secret_env: WEBHOOK_SECRET_PORTAL}
      grafana: {secret_env: WEBHOOK_SECRET_GRAFNA}
"""


def test_a_secret_env_the_api_does_not_hold_refuses_the_start_naming_it(tmp_path):
    settings = make_settings(tmp_path)
    settings.deploy_inventory.write_text(UNKNOWN_SECRET_ENV)

    with (
        pytest.raises(InventoryError, match="service 'grafana': secret_env WEBHOOK_SECRET_GRAFNA is not set"),
        TestClient(create_app(settings)),
    ):
        pass


def test_a_secret_env_naming_a_file_variable_says_to_name_the_variable(tmp_path):
    settings = make_settings(tmp_path)
    settings.deploy_inventory.write_text(
        UNKNOWN_SECRET_ENV.replace("WEBHOOK_SECRET_GRAFNA", "WEBHOOK_SECRET_PORTAL_FILE")
    )

    with (
        pytest.raises(
            InventoryError,
            match="secret_env names the variable, WEBHOOK_SECRET_PORTAL, not WEBHOOK_SECRET_PORTAL_FILE, which names",
        ),
        TestClient(create_app(settings)),
    ):
        pass


def test_python_m_api_names_the_secret_env_it_lacks(tmp_path):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(UNKNOWN_SECRET_ENV.replace("WEBHOOK_SECRET_GRAFNA", "webhook_secret_grafana"))
    completed = subprocess.run(
        [sys.executable, "-m", "api"],
        cwd=tmp_path,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
            "WEBHOOK_SECRET": SECRET,
            "WEBHOOK_SECRET_PORTAL": PORTAL_SECRET,
            "DEPLOY_INVENTORY": str(inventory),
            "DEPLOY_STATE_DIR": str(tmp_path / "var"),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 2
    assert completed.stderr.strip() == (
        f"deploy API: refusing to start: DEPLOY_INVENTORY: {inventory}: host localhost, service 'grafana': "
        "secret_env 'webhook_secret_grafana' is not a WEBHOOK_SECRET_<NAME> variable (capital letters, digits and _)"
    )


def test_an_inventory_changed_to_a_secret_env_the_api_lacks_stops_deploys_until_fixed(tmp_path, fake_runner, caplog):
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        settings.deploy_inventory.write_text(UNKNOWN_SECRET_ENV)
        with caplog.at_level(logging.ERROR, logger="deploy"):
            refused = send(client, fresh(service="grafana"))
            health = client.get("/health")
        settings.deploy_inventory.write_text(UNKNOWN_SECRET_ENV.replace("GRAFNA", "PORTAL"))
        fixed = send(client, fresh(service="grafana"), secret=PORTAL_SECRET)

    assert refused.status_code == 503
    assert refused.json()["detail"].startswith("The inventory changed and is refused: no deploy runs until it is fixed")
    assert "WEBHOOK_SECRET_GRAFNA" not in refused.text, "the details are for the operator's log"
    assert health.status_code == 503 and health.json()["status"] == "unhealthy"
    assert any("secret_env WEBHOOK_SECRET_GRAFNA is not set" in record.getMessage() for record in caplog.records)
    assert fixed.status_code == 200
    assert [call["extravars"]["service"] for call in fake_runner.calls] == ["grafana"]
