"""The API as deployctl uses it: signed deploys and rollbacks (now or planned), records read by token or signed over
`read:` and their id, planned ones cancelled signed over `cancel:` and their id. Each signature is made for its purpose
(api.signature), so that none is valid for another request."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from api import __version__
from api.models import DEPLOYCTL_AGENT
from api.signature import HEADER, sign

# What the API's ids look like (20251127T023912-1a2b3c4d); anything else is refused before it reaches a URL.
DEPLOYMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class Refused(Exception):
    """The API answered 4xx: a bad signature or token, a service not allowed, a conflict, a validation error,
    a stale or replayed request, too many requests (429, with the seconds to wait in `retry_after`)."""

    def __init__(self, status: int, detail: Any, retry_after: int | None = None):
        self.status = status
        self.detail = detail
        self.retry_after = retry_after
        super().__init__(f"{status}: {detail}")


class Unavailable(Exception):
    """No answer from the API (connection, timeout), or an answer that is not the API's (5xx from a proxy)."""


def encode_body(fields: Mapping[str, str | bool | None], timestamp: int) -> bytes:
    """The exact bytes that are signed and sent: compact JSON, unset (and false) fields left out, and when it was
    signed."""
    document: dict[str, str | bool | int] = {name: value for name, value in fields.items() if value}
    document["timestamp"] = timestamp
    return json.dumps(document, separators=(",", ":")).encode()


def retry_after(response: httpx.Response) -> int | None:
    """Retry-After in seconds, as the API sends it with 429 and 423; None when absent or an HTTP date."""
    value = response.headers.get("Retry-After", "").strip()
    return int(value) if value.isdigit() else None


def error_detail(response: httpx.Response) -> Any:
    try:
        return response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        # Not the API's JSON: a proxy's page (Cloudflare answers HTML). A line of it is enough.
        return " ".join(response.text.split())[:200] or response.reason_phrase


class Client:
    def __init__(
        self,
        url: str,
        *,
        secret: bytes | None = None,
        read_token: str | None = None,
        timeout: float = 30,
        clock: Callable[[], float] = time.time,
    ):
        self.url = url.rstrip("/")
        self._secret = secret
        self._read_token = read_token
        self._clock = clock
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            # Cloudflare's browser integrity check turns away the default user agents of HTTP libraries.
            headers={"User-Agent": f"{DEPLOYCTL_AGENT}{__version__}"},
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.close()

    def start(self, action: str, fields: Mapping[str, str | bool | None]) -> dict[str, Any]:
        """POST /deploy or /rollback with ?wait=false, its body signed for that action (a purpose of api.signature);
        the 202 body ({"deployment_id", ...}; for a planned one, with `at` among the fields or queued to its deploy
        window, "status": "scheduled" and "at"). Sent once: the API accepts a signed body once only, so trying again
        is a new call that signs the time anew."""
        assert self._secret is not None, "starting a deployment needs the webhook secret"
        body = encode_body(fields, int(self._clock()))
        headers = {"Content-Type": "application/json", HEADER: sign(self._secret, body, purpose=action)}
        answer = self._request("POST", f"/{action}", params={"wait": "false"}, content=body, headers=headers)
        if not DEPLOYMENT_ID.fullmatch(str(answer.get("deployment_id", ""))):
            raise Unavailable(f"{self.url}/{action} answered without a deployment id: {answer}")
        return answer

    def cancel(self, deployment_id: str) -> dict[str, Any]:
        """DELETE /deployments/{id}, signed over `cancel:` and the id: the record, cancelled. Refused (409) unless it
        is still planned."""
        assert self._secret is not None, "cancelling a planned deployment needs the webhook secret"
        headers = {HEADER: sign(self._secret, deployment_id.encode(), purpose="cancel")}
        return self._request("DELETE", f"/deployments/{deployment_id}", headers=headers)

    def deployment(self, deployment_id: str) -> dict[str, Any]:
        """GET /deployments/{id}: signed over `read:` and the id when this client holds the secret, else with the read
        token."""
        if self._secret is not None:
            headers = {HEADER: sign(self._secret, deployment_id.encode(), purpose="read")}
        else:
            assert self._read_token, "reading a deployment needs the webhook secret or the read token"
            headers = {"Authorization": f"Bearer {self._read_token}"}
        return self._request("GET", f"/deployments/{deployment_id}", headers=headers)

    def deployments(self, **filters: str | int | None) -> dict[str, Any]:
        """GET /deployments with the read token: {"items", "total", "limit", "offset"}, newest first."""
        assert self._read_token, "the history needs the read token"
        params = {name: value for name, value in filters.items() if value is not None}
        headers = {"Authorization": f"Bearer {self._read_token}"}
        return self._request("GET", "/deployments", params=params, headers=headers)

    def schedules(self) -> dict[str, Any]:
        """GET /schedules with the read token: {"items": the recurring schedules, "planned": the planned deploys,
        soonest first}."""
        assert self._read_token, "the schedules need the read token"
        return self._request("GET", "/schedules", headers={"Authorization": f"Bearer {self._read_token}"})

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The answer's JSON object; Refused on 4xx, Unavailable when there is no answer from the API itself."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise Unavailable(f"{self.url}{path}: {str(error) or type(error).__name__}") from None
        if 400 <= response.status_code < 500:
            raise Refused(response.status_code, error_detail(response), retry_after(response))
        if response.is_redirect:
            # Not followed: a POST must not turn into a GET, nor a signed request go elsewhere unseen.
            location = response.headers.get("location")
            raise Unavailable(f"{self.url}{path} redirects to {location}: set DEPLOY_URL (or --url) to where it points")
        if response.status_code >= 500 or response.status_code < 200:
            raise Unavailable(f"{self.url}{path} answered {response.status_code}: {error_detail(response)}")
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise Unavailable(f"{self.url}{path} answered {response.status_code} without a JSON object")
        return answer
