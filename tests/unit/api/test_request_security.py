"""Hardening, with a fake runner: secret rotation and per-service secrets, replay protection, image pins, rate
limits and trusted proxies."""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request
from test_routes import SECRET

from api.main import create_app
from api.security import client_address, timestamp_problem
from api.settings import Settings
from api.signature import sign
from module_utils.deploy_rules import image_repository

NEW_SECRET = "new-secret-after-the-rotation-0123456789"
PORTAL_SECRET = "portal-repository-secret-0123456789abcdef"
PORTAL_IMAGE = "ghcr.io/acme/portal"
INVENTORY = f"""
all:
  hosts:
    localhost:
      ansible_connection: local
  vars:
    deploy_compose_dir: /srv/homeserver
    deploy_services:
      portal:
        secret_env: WEBHOOK_SECRET_PORTAL
        image_repository: {PORTAL_IMAGE}
      grafana:
        image_repository: [grafana/grafana, ghcr.io/acme/grafana]
      jellyfin: {{}}
"""


def make_settings(tmp_path: Path, **overrides) -> Settings:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(INVENTORY)
    values = {
        "webhook_secret": f"{NEW_SECRET},{SECRET}",
        "service_secrets": {"WEBHOOK_SECRET_PORTAL": PORTAL_SECRET},
        "deploy_inventory": inventory,
        "deploy_state_dir": tmp_path / "var",
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def client(tmp_path, fake_runner):
    with TestClient(create_app(make_settings(tmp_path))) as test_client:
        yield test_client


def send(
    client: TestClient,
    body: dict | bytes,
    secret: str = SECRET,
    path: str = "/deploy",
    signature: str | None = None,
    **headers: str,
) -> object:
    """POST a body, signed with `secret` for the action of `path` (or with `signature` as given)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    signature = signature or sign(secret.encode(), raw, path.strip("/").split("?")[0])
    return client.post(path, content=raw, headers={"X-Hub-Signature-256": signature, **headers})


COMMITS = itertools.count()


def fresh(**fields) -> dict:
    """A body signed now; each a different one (two alike within a second would be a replay)."""
    return {"timestamp": int(time.time()), "commit": f"c{next(COMMITS)}", **fields}


# Secrets: rotation and per-service secrets.


def test_old_and_new_secret_both_deploy_during_a_rotation(client, fake_runner):
    old = send(client, fresh(service="jellyfin"), secret=SECRET)
    new = send(client, fresh(service="jellyfin"), secret=NEW_SECRET)
    retired = send(client, fresh(service="jellyfin"), secret="retired-secret-0123456789abcdefghijkl")

    assert (old.status_code, new.status_code) == (200, 200)
    assert retired.status_code == 403
    assert len(fake_runner.calls) == 2


def test_a_service_with_its_own_secret_takes_only_that_secret(client, fake_runner):
    own = send(client, fresh(service="portal", image=f"{PORTAL_IMAGE}:2"), secret=PORTAL_SECRET)
    general = send(client, fresh(service="portal", image=f"{PORTAL_IMAGE}:3"), secret=SECRET)
    elsewhere = send(client, fresh(service="jellyfin"), secret=PORTAL_SECRET)
    rollback = send(client, fresh(service="jellyfin"), secret=PORTAL_SECRET, path="/rollback")

    assert own.status_code == 200
    assert general.status_code == 403
    assert general.json() == {"detail": "The secret that signed this request may not deploy 'portal'"}
    assert elsewhere.json() == {"detail": "The secret that signed this request may not deploy 'jellyfin'"}
    assert rollback.status_code == 403
    assert [call["extravars"]["service"] for call in fake_runner.calls] == ["portal"]
    refused = client.get("/deployments", params={"outcome": "rejected"})
    assert refused.status_code == 401, "the history stays closed without the read token"


def test_a_record_opens_only_to_a_secret_that_may_deploy_its_service(client):
    portal = send(client, fresh(service="portal"), secret=PORTAL_SECRET).headers["X-Deployment-Id"]

    def read(secret: str):
        return client.get(
            f"/deployments/{portal}", headers={"X-Hub-Signature-256": sign(secret.encode(), portal.encode(), "read")}
        )

    assert read(PORTAL_SECRET).status_code == 200
    assert read(SECRET).status_code == 401
    assert read("unknown-secret-0123456789abcdefghijklmno").status_code == 401


def test_a_service_secret_variable_must_be_strong(tmp_path):
    with pytest.raises(ValueError, match="WEBHOOK_SECRET_PORTAL: its secret is shorter than 32 characters"):
        make_settings(tmp_path, service_secrets={"WEBHOOK_SECRET_PORTAL": "short"})
    with pytest.raises(ValueError, match="WEBHOOK_SECRET_PORTAL: its secret repeats a shorter string"):
        make_settings(tmp_path, service_secrets={"WEBHOOK_SECRET_PORTAL": "a" * 32})
    with pytest.raises(ValueError, match="WEBHOOK_SECRET: its secret number 2 is shorter"):
        make_settings(tmp_path, webhook_secret=f"{NEW_SECRET},short")


def test_service_secrets_come_from_the_environment_and_dot_env_then_leave(tmp_path, monkeypatch):
    from api.settings import get_settings

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"WEBHOOK_SECRET={SECRET}\nWEBHOOK_SECRET_GRAFANA={PORTAL_SECRET[::-1]}\n")
    monkeypatch.setenv("WEBHOOK_SECRET_PORTAL", PORTAL_SECRET)
    get_settings.cache_clear()
    try:
        settings = get_settings()
    finally:
        get_settings.cache_clear()

    assert set(settings.secret_sets()) == {"WEBHOOK_SECRET", "WEBHOOK_SECRET_PORTAL", "WEBHOOK_SECRET_GRAFANA"}
    assert "WEBHOOK_SECRET_PORTAL" not in os.environ


# Replay protection.


HOW_TO_SIGN = (
    'sign a new request with the current Unix time in "timestamp" (deployctl and the GitHub Action do; '
    "see SECURITY.md, Replay protection)"
)


def history_total(client: TestClient) -> int:
    return client.app.state.deployer.history.list(limit=1)[1]


def test_an_expired_a_future_and_a_replayed_request_are_refused_also_after_a_restart(tmp_path, fake_runner):
    settings = make_settings(tmp_path)
    body = json.dumps(fresh(service="jellyfin")).encode()
    with TestClient(create_app(settings)) as client:
        first = send(client, body)
        replayed = send(client, body)
        respelled = send(client, body, signature=sign(SECRET.encode(), body).upper().replace("SHA256=", "sha256="))
        expired = send(client, {"service": "jellyfin", "timestamp": int(time.time()) - 301})
        future = send(client, {"service": "jellyfin", "timestamp": int(time.time()) + 400})
        recorded = history_total(client)
    with TestClient(create_app(settings)) as client:
        after_restart = send(client, body)

    assert first.status_code == 200
    assert replayed.status_code == respelled.status_code == after_restart.status_code == 403
    assert replayed.json() == {"detail": f"This signed request was already received: {HOW_TO_SIGN}"}
    assert respelled.json() == replayed.json(), "the same signature spelled in capitals is the same request"
    assert expired.json()["detail"].startswith("Request timestamp is 30")
    assert expired.json()["detail"].endswith(f"s old; requests are accepted for 300 s: {HOW_TO_SIGN}")
    assert "in the future" in future.json()["detail"]
    assert len(fake_runner.calls) == 1
    assert recorded == 1, "replays and stale bodies leave no record"


def test_a_required_timestamp_refuses_a_request_without_one(tmp_path, fake_runner):
    with TestClient(create_app(make_settings(tmp_path, deploy_require_timestamp=True))) as client:
        without = send(client, {"service": "jellyfin"})
        with_one = send(client, fresh(service="jellyfin"))

    assert without.status_code == 403
    assert without.json() == {"detail": f"Request has no timestamp, and this server requires one: {HOW_TO_SIGN}"}
    assert with_one.status_code == 200


def test_a_body_without_a_timestamp_deploys_once_even_across_a_restart(tmp_path, fake_runner):
    """The reference's curl sends no timestamp: it works the first time. A captured copy never deploys again."""
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        first = send(client, {"service": "jellyfin"})
        again = send(client, {"service": "jellyfin"})
        other = send(client, {"service": "jellyfin", "commit": "another"})
    with TestClient(create_app(settings)) as client:
        after_restart = send(client, {"service": "jellyfin"})

    assert (first.status_code, other.status_code) == (200, 200)
    assert again.status_code == after_restart.status_code == 403
    assert again.json() == {
        "detail": f"This signed request was already received; a body without a timestamp is accepted once: "
        f"{HOW_TO_SIGN}"
    }
    assert len(fake_runner.calls) == 2


class SteppingClock:
    """A wall clock that moves on by `step` seconds at every reading, as time does between two checks."""

    def __init__(self, now: float, step: float = 0.6):
        self.now, self.step = now, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now - self.step


def test_a_replay_just_inside_the_window_is_refused_even_when_the_clock_moves_between_the_checks(tmp_path, fake_runner):
    """The window check and the one-time check read the clock once; the record outlives the window."""
    signed_at = 1_800_000_000
    clock = SteppingClock(signed_at)
    body = json.dumps({"service": "jellyfin", "timestamp": signed_at}).encode()
    with TestClient(create_app(make_settings(tmp_path), clock=clock)) as client:
        first = send(client, body)
        clock.now = signed_at + 300  # the last moment the window lets the body in
        replayed = send(client, body)
        clock.now = signed_at + 300.5
        late = send(client, body)
        received = client.app.state.deployer.history
        clock.now = signed_at + 300 + 61
        send(client, {"service": "jellyfin", "timestamp": int(clock.now), "commit": "later"})
        kept = received._db.execute("SELECT count(*) FROM received_requests").fetchone()[0]

    assert first.status_code == 200
    assert replayed.status_code == 403
    assert replayed.json()["detail"].startswith("This signed request was already received")
    assert late.json()["detail"].startswith("Request timestamp is 300 s old"), "then the window refuses it"
    assert [call["extravars"]["deploy_request"]["commit"] for call in fake_runner.calls] == [None, "later"]
    assert kept == 1, "a body's record goes once no request carrying it can pass the window"


def test_a_signature_is_bound_to_its_action(client, fake_runner):
    """A body signed for /deploy is refused by /rollback and the other way round; a signed read is never a body's
    signature."""
    raw = json.dumps(fresh(service="jellyfin")).encode()
    deploy_signature = {"X-Hub-Signature-256": sign(SECRET.encode(), raw)}
    rollback_signature = {"X-Hub-Signature-256": sign(SECRET.encode(), raw, "rollback")}
    as_rollback = client.post("/rollback", content=raw, headers=deploy_signature)
    as_deploy = client.post("/deploy", content=raw, headers=rollback_signature)
    # A read's signature over an id is an HMAC over read: and the id: sent as that body, it is no deploy's.
    read_message = b"read:20260101T000000-00000000"
    read_signature = sign(SECRET.encode(), b"20260101T000000-00000000", "read")
    read_as_body = client.post("/deploy", content=read_message, headers={"X-Hub-Signature-256": read_signature})
    rolled_back = client.post("/rollback", content=raw, headers=rollback_signature)

    assert as_rollback.status_code == as_deploy.status_code == read_as_body.status_code == 403
    assert as_rollback.json() == {"detail": "Invalid signature: it was made for POST /deploy, not for POST /rollback"}
    assert as_deploy.json() == {"detail": "Invalid signature: it was made for POST /rollback, not for POST /deploy"}
    assert read_as_body.json() == {"detail": "Invalid signature"}
    assert rolled_back.status_code == 200
    assert [call["playbook"].name for call in fake_runner.calls] == ["rollback.yml"]


@pytest.mark.parametrize(
    ("timestamp", "problem"),
    [(1000, None), (1300, None), (700, None), (1301, "in the future"), (699, "301 s old"), (None, None)],
)
def test_the_window_is_symmetric_and_inclusive(timestamp, problem):
    found = timestamp_problem(timestamp, now=1000, window=300, required=False)

    assert (found is None) if problem is None else (problem in found)


# Image pins.


def test_a_pinned_service_refuses_a_foreign_image_and_takes_tags_and_digests_of_its_own(client, fake_runner):
    digest = "@sha256:" + "a" * 64

    def deploy(service: str, image: str, secret: str = SECRET):
        return send(client, fresh(service=service, image=image), secret=secret)

    foreign = deploy("portal", "ghcr.io/evil/portal:2", PORTAL_SECRET)
    lookalike = deploy("portal", "ghcr.io/acme/portal-evil:2", PORTAL_SECRET)
    tagged = deploy("portal", f"{PORTAL_IMAGE}:2", PORTAL_SECRET)
    by_digest = deploy("portal", f"{PORTAL_IMAGE}{digest}", PORTAL_SECRET)
    either = deploy("grafana", "ghcr.io/acme/grafana:11")
    unpinned = deploy("jellyfin", "anything/at-all:1")

    assert foreign.status_code == lookalike.status_code == 400
    assert foreign.json()["detail"] == (
        f"Image 'ghcr.io/evil/portal:2' is not allowed for service 'portal'. Allowed repositories: {PORTAL_IMAGE}"
    )
    assert (tagged.status_code, by_digest.status_code, either.status_code, unpinned.status_code) == (200,) * 4
    assert [call["extravars"]["image"] for call in fake_runner.calls] == [
        f"{PORTAL_IMAGE}:2",
        f"{PORTAL_IMAGE}{digest}",
        "ghcr.io/acme/grafana:11",
        "anything/at-all:1",
    ]


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("ghcr.io/acme/portal:2", "ghcr.io/acme/portal"),
        ("ghcr.io/acme/portal@sha256:" + "b" * 64, "ghcr.io/acme/portal"),
        ("ghcr.io/acme/portal:2@sha256:" + "b" * 64, "ghcr.io/acme/portal"),
        ("127.0.0.1:5099/deploytest/healthy", "127.0.0.1:5099/deploytest/healthy"),
        ("127.0.0.1:5099/deploytest/healthy:v2", "127.0.0.1:5099/deploytest/healthy"),
        ("nginx", "nginx"),
    ],
)
def test_the_repository_of_an_image_is_its_name_without_tag_or_digest(image, repository):
    assert image_repository(image) == repository


# Rate limits.


def test_repeated_bad_signatures_get_429_with_retry_after_even_for_a_good_one(tmp_path, fake_runner):
    settings = make_settings(tmp_path, deploy_signature_failure_limit="3/minute")
    with TestClient(create_app(settings)) as client:
        bad = [send(client, {"service": "jellyfin"}, secret="guess-0123456789abcdefghijklmnopqrstuv") for _ in range(4)]
        good = send(client, fresh(service="jellyfin"))
        metrics = client.get("/metrics").text

    assert [response.status_code for response in bad] == [403, 403, 403, 429]
    assert 1 <= int(bad[-1].headers["Retry-After"]) <= 60
    assert bad[-1].json()["detail"].startswith("Too many requests with an invalid signature from this address")
    assert good.status_code == 429, "while blocked, the address gets no signature checked at all"
    assert fake_runner.calls == []
    assert 'deployer_webhook_requests_total{endpoint="deploy",result="rate_limited"} 2.0' in metrics


def test_deploys_beyond_the_service_limit_get_429(tmp_path, fake_runner):
    with TestClient(create_app(make_settings(tmp_path, deploy_service_rate_limit="2/hour"))) as client:
        answers = [send(client, fresh(service="jellyfin", commit=str(number))) for number in range(3)]
        other = send(client, fresh(service="grafana"))

    assert [answer.status_code for answer in answers] == [200, 200, 429]
    detail = answers[-1].json()["detail"]
    assert detail.startswith("Too many deploys of 'jellyfin' (2 per 1 hour on each host); retry in ")
    assert int(answers[-1].headers["Retry-After"]) > 3000
    assert other.status_code == 200, "the limit is per service"


def request_from(peer: str, **headers: str) -> Request:
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/deploy", "headers": raw, "client": (peer, 50000)})


def test_forwarded_addresses_are_believed_only_from_trusted_proxies(tmp_path):
    trusted = make_settings(tmp_path, deploy_trusted_proxies="127.0.0.1, 10.0.0.0/8").deploy_trusted_proxies

    assert client_address(request_from("127.0.0.1", **{"CF-Connecting-IP": "203.0.113.7"}), trusted) == "203.0.113.7"
    assert client_address(request_from("10.1.2.3", **{"X-Forwarded-For": "203.0.113.9, 10.0.0.5"}), trusted) == (
        "203.0.113.9"
    )
    forged = {"CF-Connecting-IP": "203.0.113.7", "X-Forwarded-For": "203.0.113.8"}
    assert client_address(request_from("198.51.100.4", **forged), trusted) == "198.51.100.4"
    assert client_address(request_from("127.0.0.1", **forged), ()) == "127.0.0.1"
    assert client_address(request_from("127.0.0.1", **{"CF-Connecting-IP": "not-an-address"}), trusted) == "127.0.0.1"
    # A forged first entry of X-Forwarded-For changes nothing: only the entry the trusted proxy added counts.
    assert client_address(request_from("127.0.0.1", **{"X-Forwarded-For": "1.2.3.4, 203.0.113.5"}), trusted) == (
        "203.0.113.5"
    )
