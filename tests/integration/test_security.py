"""Hardening over HTTP, against the real engine: rotation, per-service secrets, pins, replays across a restart,
and 429 for bad signatures with forwarded addresses believed only from a trusted proxy."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from conftest import fingerprint, service

from api.signature import sign
from tests.support.apiserver import SECRET, serving
from tests.support.dockercli import REGISTRY, image, image_id

pytestmark = pytest.mark.usefixtures("registry")

NEW_SECRET = "integration-new-secret-" + "abcdef0123456789" * 2
PORTAL_SECRET = "integration-portal-secret-" + "0123456789abcdef" * 2


@pytest.fixture
def api_server(tmp_path):
    yield from serving(tmp_path)


def signed(body: dict, secret: str) -> tuple[bytes, str]:
    raw = json.dumps(body).encode()
    return raw, sign(secret.encode(), raw)


def test_rotation_service_secrets_pins_and_replays_across_a_restart(compose_project, api_server):
    project = compose_project(
        {"portal": service(image("healthy", "v1")), "grafana": service(image("plain", "v1"))},
        {
            "portal": {"secret_env": "WEBHOOK_SECRET_PORTAL", "image_repository": f"{REGISTRY}/deploytest/healthy"},
            "grafana": {},
        },
    )
    project.up()
    settings = {"WEBHOOK_SECRET": f"{NEW_SECRET},{SECRET}", "WEBHOOK_SECRET_PORTAL": PORTAL_SECRET}
    server = api_server(project, **settings)
    now = int(time.time())

    def post(body: dict, secret: str):
        raw, signature = signed({"timestamp": now, **body}, secret)
        return server.post(raw, signature=signature)

    # Rotation: the old and the new secret both deploy grafana.
    assert post({"service": "grafana", "image": image("plain", "v2"), "commit": "old"}, SECRET).status_code == 200
    assert post({"service": "grafana", "image": image("plain", "v2"), "commit": "new"}, NEW_SECRET).status_code == 200
    assert project.container("grafana")["Image"] == image_id(image("plain", "v2"))

    # Portal takes only its own secret, and only its own repository.
    portal_before = fingerprint(project.container("portal"))
    general = post({"service": "portal", "image": image("healthy", "v2")}, SECRET)
    foreign = post({"service": "portal", "image": image("crash", "v1")}, PORTAL_SECRET)
    crossed = post({"service": "grafana", "image": image("plain", "v1")}, PORTAL_SECRET)
    assert (general.status_code, foreign.status_code, crossed.status_code) == (403, 400, 403)
    assert general.json() == {"detail": "The secret that signed this request may not deploy 'portal'"}
    assert foreign.json()["detail"].startswith(f"Image '{image('crash', 'v1')}' is not allowed for service 'portal'")
    assert fingerprint(project.container("portal")) == portal_before
    assert project.container("grafana")["Image"] == image_id(image("plain", "v2"))

    raw, signature = signed({"timestamp": now, "service": "portal", "image": image("healthy", "v2")}, PORTAL_SECRET)
    assert server.post(raw, signature=signature).status_code == 200
    assert project.container("portal")["Image"] == image_id(image("healthy", "v2"))

    # Replays: the same signed body again is refused, and so is an expired one; also after a restart.
    replayed = server.post(raw, signature=signature)
    expired_raw, expired_signature = signed({"timestamp": now - 3600, "service": "portal"}, PORTAL_SECRET)
    expired = server.post(expired_raw, signature=expired_signature)
    assert replayed.json()["detail"].startswith("This signed request was already received: sign a new request")
    assert (replayed.status_code, expired.status_code) == (403, 403)
    assert "s old; requests are accepted for 300 s" in expired.json()["detail"]
    server.stop()

    restarted = api_server(project, state_dir=server.state_dir, **settings)
    after_restart = restarted.post(raw, signature=signature)
    assert after_restart.status_code == 403
    assert after_restart.json()["detail"] == replayed.json()["detail"]
    assert project.container("portal")["Image"] == image_id(image("healthy", "v2"))
    refused = restarted.get("/deployments", outcome="rejected").json()["items"]
    # Newest first: the secrets and the pin. Replays and the expired body leave no record.
    assert [record["http_status"] for record in refused] == [403, 400, 403]


def test_bad_signatures_get_429_and_forwarded_addresses_count_only_from_a_trusted_proxy(compose_project, api_server):
    project = compose_project({"portal": service(image("healthy", "v1"))})
    project.up()
    before = fingerprint(project.container("portal"))
    bad = "sha256=" + "0" * 64
    body = {"service": "portal"}

    def forwarded(server, address: str, signature: str = bad):
        raw = json.dumps(body).encode()
        headers = {"X-Hub-Signature-256": signature, "X-Forwarded-For": address, "CF-Connecting-IP": address}
        return httpx.post(f"{server.url}/deploy", content=raw, headers=headers, timeout=30)

    # No trusted proxy: forged forwarded addresses change nothing; the one real address is blocked.
    untrusting = api_server(project, DEPLOY_SIGNATURE_FAILURE_LIMIT="3/minute")
    answers = [forwarded(untrusting, f"203.0.113.{number}").status_code for number in range(4)]
    raw = json.dumps(body).encode()
    good_but_blocked = forwarded(untrusting, "203.0.113.99", sign(SECRET.encode(), raw))
    assert answers == [403, 403, 403, 429]
    assert good_but_blocked.status_code == 429
    assert 1 <= int(good_but_blocked.headers["Retry-After"]) <= 60

    # Behind a trusted proxy (cloudflared on the host): each client address has its own count.
    trusting = api_server(project, DEPLOY_SIGNATURE_FAILURE_LIMIT="3/minute", DEPLOY_TRUSTED_PROXIES="127.0.0.1")
    one = [forwarded(trusting, "203.0.113.7").status_code for _ in range(4)]
    other = forwarded(trusting, "203.0.113.8")
    assert one == [403, 403, 403, 429]
    assert other.status_code == 403
    assert fingerprint(project.container("portal")) == before
    assert not (untrusting.state_dir / "runs").exists() and not (trusting.state_dir / "runs").exists()
