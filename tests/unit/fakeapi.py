"""A fake deployment API on loopback for the clients' unit tests: scripted answers, every request kept.

Like the real API, it checks each signature for its purpose (api.signature): a body for the endpoint it was sent
to (`rollback:` and the body for /rollback), `read:` and the id for GET /deployments/{id}, `cancel:` and the id for
DELETE /deployments/{id}; a signature made for another purpose is refused with the API's words. A body with `at` is
planned (202, "scheduled"), and DELETE cancels the record GET would answer if it is planned, as the API does.
GET /deployments and GET /schedules answer `page` and `schedules` to the read token, 401 without it.
Like the real API with DEPLOY_REQUIRE_TIMESTAMP=true, it refuses a signed body without a fresh `timestamp`, or one
it has received before; unlike it, it also keeps each such refusal in `problems`, and a test that leaves one there
fails: the clients must never send either.

It also makes records that carry terminal escapes in every text (`hostile_record`), and finds what of them reached
a client's output (`unprintable`)."""

from __future__ import annotations

import json
import threading
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from api.deps import ACTIONS
from api.signature import is_valid, purposes_signed

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


# What a signer or a container may write into a record: an OSC 52 clipboard write, a CSI that clears the screen and
# one that recolours, a carriage return that prints over the line, a C1 (one-byte) CSI, NEL (a C1 line break), a
# right-to-left override.
HOSTILE = "\x1b]52;c;cm0gLXJmIH4K\x07\x1b[2J\x1b[31mred\rforged\x9b0m\x85next \u202eevil"
# What each of them looks like once escaped, as the clients print it.
HOSTILE_ESCAPED = r"\x1b]52;c;cm0gLXJmIH4K\x07\x1b[2J\x1b[31mred\rforged\x9b0m\x85next \u202eevil"
BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def hostile_record(outcome: str = "rolled_back") -> dict[str, Any]:
    """A record whose every text starts with HOSTILE (so that what is cut short shows it too): each field, each step's
    name, host and detail, each log line."""
    steps = [
        {**step, "step": HOSTILE + step["step"], "host": HOSTILE + "web-1", "detail": HOSTILE + step["detail"]}
        for step in STEPS
    ]
    plain = record(outcome)
    texts = {name: HOSTILE + value for name, value in plain.items() if isinstance(value, str) and name != "outcome"}
    return record(
        outcome,
        steps,
        **texts,
        error=HOSTILE + "Container is restarting",
        logs="\n".join(f"{HOSTILE}log line {number}" for number in range(1, 4)),
        running_image=HOSTILE + "acme/portal:1.4.1",
        running_image_id=HOSTILE + "sha256:803b769d63c8aaaa",
        running_state=HOSTILE + "running",
    )


def unprintable(text: str) -> list[str]:
    """The characters of `text` that a terminal acts on instead of showing, but the line break: C0 and C1 controls,
    DEL, the line and paragraph separators, bidirectional controls, lone surrogates."""
    return [
        char
        for char in text
        if char != "\n" and (unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") or char in BIDI_CONTROLS)
    ]


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
    schedules: dict[str, Any] = field(default_factory=lambda: {"items": [], "planned": []})
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
            purpose = parts.path.strip("/")
            if not is_valid(SECRET.encode(), seen.body, signature, purpose):
                return 403, {"detail": self.invalid_signature(seen.body, signature, purpose)}
            problem = self.freshness_problem(seen.body)
            if problem is not None:
                self.problems.append(problem)
                return 403, {"detail": problem}
            if self.start_answer is not None:
                return self.start_answer
            document = json.loads(seen.body)
            service = document["service"]
            status_url = f"/deployments/{DEPLOYMENT_ID}"
            if "at" in document:
                return planned(document["at"], service)
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
        if parts.path == "/schedules":
            if not bearer:
                return 401, {"detail": "A valid read token is required: Authorization: Bearer <DEPLOY_READ_TOKEN>"}
            return 200, self.schedules
        deployment_id = parts.path.removeprefix("/deployments/")
        if seen.method == "DELETE":
            return self.cancel(deployment_id, signature)
        if not bearer and signature is None:
            return 401, {
                "detail": "A valid read token, or X-Hub-Signature-256 over read: and the deployment id, is required"
            }
        if not bearer and not is_valid(SECRET.encode(), deployment_id.encode(), signature, "read"):
            why = self.invalid_signature(deployment_id.encode(), signature, "read").removeprefix("Invalid signature")
            return 401, {"detail": f"The signature over read: and the deployment id is not valid{why}"}
        if deployment_id != DEPLOYMENT_ID:
            return 404, {"detail": f"No deployment '{deployment_id}'"}
        if self.unavailable_reads:
            self.unavailable_reads -= 1
            return 502, {"detail": "Bad gateway"}
        return 200, self.timeline.pop(0) if len(self.timeline) > 1 else self.timeline[0]

    def cancel(self, deployment_id: str, signature: str | None) -> tuple[int, dict[str, Any]]:
        """DELETE /deployments/{id}: the record GET answers, cancelled, if it is planned."""
        if not is_valid(SECRET.encode(), deployment_id.encode(), signature, "cancel"):
            return 403, {"detail": self.invalid_signature(deployment_id.encode(), signature, "cancel")}
        if deployment_id != DEPLOYMENT_ID:
            return 404, {"detail": f"No deployment '{deployment_id}'"}
        current = self.timeline[0]
        if current["outcome"] != "scheduled":
            detail = f"Deployment {deployment_id} is {current['outcome']}: only a scheduled one can be cancelled"
            return 409, {"detail": detail}
        finished_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self.timeline = [{**current, "outcome": "cancelled", "finished_at": finished_at}]
        return 200, self.timeline[0]

    def invalid_signature(self, payload: bytes, header: str | None, purpose: str) -> str:
        """The API's 403 detail: what a signature valid for another purpose was made for."""
        made_for = purposes_signed({"": [SECRET.encode()]}, payload, header, besides=purpose)
        if not made_for:
            return "Invalid signature"
        return f"Invalid signature: it was made for {ACTIONS[made_for[0]]}, not for {ACTIONS[purpose]}"

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


def planned(at: Any, service: str) -> tuple[int, dict[str, Any]]:
    """The API's answer to a body with `at`: 422 unless it is a date-time with an offset, else the planned deploy's
    202, its time in UTC to the second."""
    try:
        moment = datetime.fromisoformat(at)
    except (TypeError, ValueError):
        moment = None
    if moment is None or moment.tzinfo is None:
        return 422, {"detail": [f"at: Input should be a date-time with its offset: {at!r}"]}
    return 202, {
        "deployment_id": DEPLOYMENT_ID,
        "service": service,
        "status": "scheduled",
        "at": moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "status_url": f"/deployments/{DEPLOYMENT_ID}",
    }


def serving() -> Iterator[FakeApi]:
    """Body of a `fake_api` fixture: a FakeApi listening on a loopback port, shut down afterwards."""
    api = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.answer()

        def do_POST(self) -> None:
            self.answer()

        def do_DELETE(self) -> None:
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
