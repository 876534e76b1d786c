"""The guards in front of a deploy, after the signature: who the client is, how often it may fail or deploy,
whether the request is fresh and new, and which images a service may run."""

from __future__ import annotations

import hashlib
import ipaddress
import math
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

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


def address_key(address: str) -> Hashable:
    """What the per-address limits count by: an IPv4 address, or an IPv6 address's /64 (one subscriber's
    network: a client that holds a /64 could otherwise take a new address for every try). Anything else as is."""
    parsed = _address(address)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    if isinstance(parsed, ipaddress.IPv4Address):
        return int(parsed)
    if isinstance(parsed, ipaddress.IPv6Address):
        return (int(parsed) >> 64) | 1 << 64  # the bit keeps a /64 apart from every IPv4 address
    return address


class MovingWindows:
    """Hits per key in a moving window, in memory, for at most `max_keys` keys.

    Each key keeps the times of its last hits, no more than the limit's amount: all that decides whether one more
    is allowed. Keys whose hits have all left the window are dropped once per window, and when `max_keys` keys are
    in the window, the one hit least recently is forgotten. (`limits`' memory storage, which parses the limits here,
    has no bound on its keys: a client with many addresses could grow it at will.)
    """

    def __init__(self, limit: limits.RateLimitItem, max_keys: int, clock: Callable[[], float] = time.monotonic):
        self.amount = limit.amount
        self.period = limit.get_expiry()
        self.max_keys = max_keys
        self.clock = clock
        # key -> the times of its last hits, oldest first; keys ordered from the least recently hit.
        self._hits: OrderedDict[Hashable, tuple[float, ...]] = OrderedDict()
        self._swept_at = clock()

    def retry_after(self, key: Hashable) -> int | None:
        """Whole seconds until one more hit is allowed, or None when it is allowed now."""
        hits = self._hits.get(key, ())
        if len(hits) < self.amount:
            return None
        wait = hits[-self.amount] + self.period - self.clock()
        return max(1, math.ceil(wait)) if wait > 0 else None

    def hit(self, key: Hashable) -> None:
        now = self.clock()
        hits = self._hits.pop(key, ())
        if now - self._swept_at >= self.period:
            self._sweep(now)
        while len(self._hits) >= self.max_keys:
            self._hits.popitem(last=False)
        self._hits[key] = (*hits, now)[-self.amount :]

    def _sweep(self, now: float) -> None:
        """Drop the keys with no hit left in the window."""
        self._swept_at = now
        self._hits = OrderedDict((key, hits) for key, hits in self._hits.items() if hits[-1] > now - self.period)

    def __len__(self) -> int:
        return len(self._hits)


class RateLimits:
    """Refused requests per client address (invalid signatures, replays, bodies refused at validation), and deploys
    per service and host. A restart forgets them, which only ever lets more through. Used from the event loop."""

    # Client addresses kept in the window; beyond, the least recently refused is forgotten.
    MAX_ADDRESSES = 100_000

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic):
        self.refusals = MovingWindows(limits.parse(settings.deploy_signature_failure_limit), self.MAX_ADDRESSES, clock)
        deploys = limits.parse(settings.deploy_service_rate_limit)
        self.deploy_limit = str(deploys)
        # The deploy budget is keyed by service and host, which the inventory bounds.
        self.deploys = MovingWindows(deploys, sys.maxsize, clock)

    def blocked(self, address: str) -> int | None:
        """Seconds until `address` may try again, when it has had its refusals; else None."""
        return self.refusals.retry_after(address_key(address))

    def refused(self, address: str) -> None:
        self.refusals.hit(address_key(address))

    def deploy(self, service: str, hosts: Sequence[str]) -> int | None:
        """Count a deploy of `service` on each of `hosts`; when one of them has had its deploys, count nothing and
        say how many seconds until it may deploy again."""
        keys = [(service, host) for host in hosts]
        waits = [wait for key in keys if (wait := self.deploys.retry_after(key)) is not None]
        if waits:
            return max(waits)
        for key in keys:
            self.deploys.hit(key)
        return None


def request_digest(body: bytes, signature: str) -> str:
    """What identifies a signed request for replay protection: its body with its signature (one spelling of it), so
    that a body refused for the secret that signed it can still be signed by the one that may deploy it."""
    return hashlib.sha256(signature.encode() + b"\n" + body).hexdigest()


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
