"""Shared dependencies: the inventory, the deployer, and the signed raw body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request, status

from api import signature
from api.deployer import Deployer
from api.inventory import Inventory
from api.metrics import Metrics
from api.security import RateLimits, client_address
from api.settings import Settings


def signature_parameter(covers: str) -> dict[str, Any]:
    """X-Hub-Signature-256 as an OpenAPI header parameter, for routes that read it themselves (the signature is
    checked before anything is parsed, so FastAPI cannot infer it); `covers` says what is signed, and with what."""
    return {
        "name": signature.HEADER,
        "in": "header",
        "required": True,
        "description": f"`sha256=` and the hex HMAC-SHA256 of {covers}",
        "schema": {"type": "string", "pattern": "^sha256=[0-9a-fA-F]{64}$"},
    }


def get_inventory(request: Request) -> Inventory:
    inventory: Inventory = request.app.state.inventory
    return inventory


def get_deployer(request: Request) -> Deployer:
    deployer: Deployer = request.app.state.deployer
    return deployer


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def endpoint(request: Request) -> str:
    """`deploy` or `rollback`: the label of the webhook counter."""
    return request.url.path.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class SignedBody:
    raw: bytes
    # Who signed it: WEBHOOK_SECRET, or the WEBHOOK_SECRET_<NAME> of a service (see api.settings.secret_sets).
    signers: frozenset[str]
    client: str
    # The signature as `sha256=<lower-case hex>`: a body is a new request only with a signature never seen with it.
    signature: str


def get_client(request: Request) -> str:
    settings: Settings = request.app.state.settings
    return client_address(request, settings.deploy_trusted_proxies)


def get_rate_limits(request: Request) -> RateLimits:
    rate_limits: RateLimits = request.app.state.rate_limits
    return rate_limits


def too_many(detail: str, retry_after: int) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        detail=f"{detail}; retry in {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )


def check_signature(request: Request, payload: bytes, client: str, purpose: str) -> frozenset[str]:
    """Who signed `payload` for `purpose` (api.signature); 429 for a client that has had its refusals, 403 for an
    invalid signature, which says so when the signature was made for another purpose."""
    rate_limits = get_rate_limits(request)
    retry_after = rate_limits.blocked(client)
    if retry_after is not None:
        raise too_many("Too many requests with an invalid signature from this address", retry_after)
    settings: Settings = request.app.state.settings
    secret_sets = settings.secret_sets()
    header = request.headers.get(signature.HEADER)
    found = signature.signers(secret_sets, payload, header, purpose)
    if not found:
        rate_limits.refused(client)
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=_invalid(secret_sets, payload, header, purpose))
    return found


def _invalid(secret_sets: dict[str, tuple[bytes, ...]], payload: bytes, header: str | None, purpose: str) -> str:
    """The reference's "Invalid signature", and what the signature was made for when it is valid for another
    purpose (whoever sent it signed it, or saw it signed: this tells them nothing new)."""
    others = signature.purposes_signed(secret_sets, payload, header, besides=purpose)
    if not others:
        return "Invalid signature"
    return f"Invalid signature: it was made for {ACTIONS[others[0]]}, not for {ACTIONS[purpose]}"


# What each signature purpose is for, in a refusal's words.
ACTIONS = {
    "deploy": "POST /deploy",
    "rollback": "POST /rollback",
    "read": "GET /deployments/{id}",
    "cancel": "DELETE /deployments/{id}",
}


async def signed_body(request: Request) -> SignedBody:
    """The raw body, at most DEPLOY_MAX_BODY_BYTES, once its signature checks out; nothing is parsed before."""
    client = get_client(request)
    try:
        raw = await _bounded_body(request)
        signers = check_signature(request, raw, client, endpoint(request))
        return SignedBody(raw, signers, client, signature.normalized(request.headers[signature.HEADER]))
    except HTTPException as refusal:
        result = {
            status.HTTP_413_CONTENT_TOO_LARGE: "too_large",
            status.HTTP_429_TOO_MANY_REQUESTS: "rate_limited",
        }.get(refusal.status_code, "invalid_signature")
        get_metrics(request).webhook(endpoint(request), result)
        raise


async def _bounded_body(request: Request) -> bytes:
    settings: Settings = request.app.state.settings
    limit = settings.deploy_max_body_bytes
    too_large = HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=f"Request body is larger than {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)
