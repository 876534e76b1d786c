"""The guards in front of a deploy, after the signature: who the client is, how often it may fail or deploy,
whether the request is fresh and new, and which images a service may run."""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from collections.abc import Sequence

import limits
from starlette.requests import Request

from api.settings import IpNetwork, Settings

CLIENT_HEADER = "CF-Connecting-IP"
FORWARDED_HEADER = "X-Forwarded-For"


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address((text or "").strip())
    except ValueError:
        return None


def client_address(request: Request, trusted: Sequence[IpNetwork]) -> str:
    """The client's address. Forwarded headers are believed only from a trusted proxy (cloudflared on the host):
    its CF-Connecting-IP, else the nearest X-Forwarded-For entry that is not a trusted proxy itself."""
    peer = request.client.host if request.client else "unknown"

    def is_trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        return address is not None and any(address in network for network in trusted)

    if not is_trusted(_address(peer)):
        return peer
    connecting = _address(request.headers.get(CLIENT_HEADER))
    if connecting is not None:
        return str(connecting)
    for entry in reversed(request.headers.get(FORWARDED_HEADER, "").split(",")):
        address = _address(entry)
        if address is None:
            break
        if not is_trusted(address):
            return str(address)
    return peer


class RateLimits:
    """Moving windows in memory (the `limits` library): invalid signatures per client address, deploys per
    service. A restart forgets them, which only ever lets more through."""

    def __init__(self, settings: Settings):
        self.limiter = limits.strategies.MovingWindowRateLimiter(limits.storage.MemoryStorage())
        self.signature_failures = limits.parse(settings.deploy_signature_failure_limit)
        self.deploys = limits.parse(settings.deploy_service_rate_limit)

    def _retry_after(self, limit: limits.RateLimitItem, *keys: str) -> int:
        reset = self.limiter.get_window_stats(limit, *keys).reset_time
        return max(1, math.ceil(reset - time.time()))

    def signature_blocked(self, address: str) -> int | None:
        """Seconds until `address` may try again, when it has had its invalid signatures; else None."""
        if self.limiter.test(self.signature_failures, "signature", address):
            return None
        return self._retry_after(self.signature_failures, "signature", address)

    def signature_failed(self, address: str) -> None:
        self.limiter.hit(self.signature_failures, "signature", address)

    def deploy(self, service: str) -> int | None:
        """Count a deploy of `service`; seconds until another is allowed when this one is one too many."""
        if self.limiter.hit(self.deploys, "deploy", service):
            return None
        return self._retry_after(self.deploys, "deploy", service)

    @property
    def deploy_limit(self) -> str:
        return str(self.deploys)


def request_digest(body: bytes) -> str:
    """What identifies a signed request for replay protection: its body, which the signature covers."""
    return hashlib.sha256(body).hexdigest()


def timestamp_problem(timestamp: int | None, now: float, window: int, required: bool) -> str | None:
    """Why a request's `timestamp` is refused, or None when it is fresh (or absent and not required)."""
    if timestamp is None:
        return "Request has no timestamp, and this server requires one" if required else None
    age = now - timestamp
    if abs(age) <= window:
        return None
    if age > 0:
        return f"Request timestamp is {age:.0f} s old; requests are accepted for {window} s"
    return f"Request timestamp is {-age:.0f} s in the future; clocks may differ by {window} s at most"


def image_repository(image: str) -> str:
    """`registry/path` of an image reference, without its tag and digest."""
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > last_slash else name
