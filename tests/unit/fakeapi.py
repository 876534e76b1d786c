"""A fake deployment API on loopback for the clients' unit tests: scripted answers, every request kept.

Like the real API with DEPLOY_REQUIRE_TIMESTAMP=true, it refuses a signed body without a fresh `timestamp`, or
one it has received before; unlike it, it also keeps each such refusal in `problems`, and a test that leaves
one there fails: the clients must never send either."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from api.signature import is_valid

SECRET = "unit-secret-" + "0123456789abcdef" * 3
READ_TOKEN = "unit-read-token-0123456789"
DEPLOYMENT_ID = "20251127T023912-1a2b3c4d"
# How far a body's timestamp may be from the fake's clock: the client signs it just before sending.
TIMESTAMP_TOLERANCE = 5
STEPS = [
    {"step": "capture_state", "success": True, "detail": "Running acme/portal:1.4.1 (803b769d63c8)"},
    {"step": "pull_image", "success": True, "detail": "Pulled acme/portal:1.4.2: new image 99a472288b48"},
    {"step": "compose_up", "success": True, "detail": "Container recreated"},
    {"step": "health_check", "success": True, "detail": "Container is healthy", "running": True},
    {"step": "cleanup", "success": True, "detail": "Kept 1 previous image"},
]


def record(outcome: str = "succeeded", steps: list[dict[str, Any]] = STEPS, **fields: Any) -> dict[str, Any]:
    """A record as GET /deployments/{id} answers it."""
    finished = outcome != "running"
    return {
        "id": DEPLOYMENT_ID,
        "action": "deploy",
        "service": "portal",
        "image": "acme/portal:1.4.2",
        "outcome": outcome,
        "old_image": "acme/portal:1.4.1",
        "old_image_id": "sha256:803b769d63c8aaaa",
        "new_image": "acme/portal:1.4.2",
        "new_image_id": "sha256:99a472288b48bbbb",
        "repository": "acme/portal",
        "commit": "abc123",
        "message": "Update homepage",
        "source": "127.0.0.1",
        "started_at": "2025-11-27T02:39:12.345Z",
        "finished_at": "2025-11-27T02:39:24.100Z" if finished else None,
        "duration_seconds": 11.8 if finished else None,
        "current_step": None,
        "steps": steps,
        "error": None,
        "logs": None,
        "http_status": 200 if finished else None,
        "running_image": None,
        "running_image_id": None,
        "running_state": None,
        **fields,
    }


def progressing(final: dict[str, Any]) -> list[dict[str, Any]]:
    """The records a follower sees: no step yet, then one more finished step at a time, then `final`."""
    names = [step["step"] for step in final["steps"]]
    return [record("running", final["steps"][:done], current_step=names[done]) for done in range(len(names))] + [final]


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def timestamp(self) -> int:
        """The `timestamp` of a signed body (the fake has checked it is a fresh int)."""
        return json.loads(self.body)["timestamp"]


@dataclass
class FakeApi:
    """The deployment API's HTTP surface, scripted: what POST answers, and the records GET answers in turn."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    start_answer: tuple[int, dict[str, Any]] | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    timeline: list[dict[str, Any]] = field(default_factory=lambda: [record()])
    unavailable_reads: int = 0
    page: dict[str, Any] = field(default_factory=dict)
    received: set[bytes] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def handle(self, handler: BaseHTTPRequestHandler) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        seen = Seen(
            handler.command, parts.path, parse_qs(parts.query), dict(handler.headers), handler.rfile.read(length)
        )
        self.seen.append(seen)
        signature = handler.headers.get("X-Hub-Signature-256")
        bearer = handler.headers.get("Authorization") == f"Bearer {READ_TOKEN}"
        if seen.method == "POST":
            if not is_valid(SECRET.encode(), seen.body, signature):
                return 403, {"detail": "Invalid signature"}
            problem = self.freshness_problem(seen.body)
            if problem is not None:
                self.problems.append(problem)
                return 403, {"detail": problem}
            if self.start_answer is not None:
                return self.start_answer
            service = json.loads(seen.body)["service"]
            status_url = f"/deployments/{DEPLOYMENT_ID}"
            return 202, {
                "deployment_id": DEPLOYMENT_ID,
                "service": service,
                "status": "running",
                "status_url": status_url,
            }
        if parts.path == "/deployments":
            if not bearer:
                return 401, {"detail": "A valid read token is required: Authorization: Bearer <DEPLOY_READ_TOKEN>"}
            return 200, self.page
        deployment_id = parts.path.removeprefix("/deployments/")
        if not (bearer or is_valid(SECRET.encode(), deployment_id.encode(), signature)):
            return 401, {"detail": "A valid read token, or X-Hub-Signature-256 over the deployment id, is required"}
        if deployment_id != DEPLOYMENT_ID:
            return 404, {"detail": f"No deployment '{deployment_id}'"}
        if self.unavailable_reads:
            self.unavailable_reads -= 1
            return 502, {"detail": "Bad gateway"}
        return 200, self.timeline.pop(0) if len(self.timeline) > 1 else self.timeline[0]

    def freshness_problem(self, body: bytes) -> str | None:
        """Why a signed body would be refused as stale or replayed; None when it is new and carries the time.
        As in the API, a body is the same request whatever path it was sent to."""
        if body in self.received:
            return "This signed request was already received: sign a new one"
        self.received.add(body)
        timestamp = json.loads(body).get("timestamp")
        if type(timestamp) is not int:
            return f"The body carries no int timestamp: {timestamp!r}"
        if abs(time.time() - timestamp) > TIMESTAMP_TOLERANCE:
            return f"Request timestamp {timestamp} is not within {TIMESTAMP_TOLERANCE} s of now"
        return None

    def requests(self, method: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.method == method]


def serving() -> Iterator[FakeApi]:
    """Body of a `fake_api` fixture: a FakeApi listening on a loopback port, shut down afterwards."""
    api = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.answer()

        def do_POST(self) -> None:
            self.answer()

        def answer(self) -> None:
            status, body = api.handle(self)
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for name, value in api.extra_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield api
    server.shutdown()
    server.server_close()
    assert api.problems == [], "a client sent a signed body without a fresh timestamp, or the same one again"
