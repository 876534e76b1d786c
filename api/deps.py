"""Shared dependencies: the inventory, the deployer, and the signed raw body."""

from __future__ import annotations

from fastapi import HTTPException, Request, status

from api import signature
from api.deployer import Deployer
from api.inventory import Inventory
from api.metrics import Metrics
from api.settings import Settings


def get_inventory(request: Request) -> Inventory:
    return request.app.state.inventory


def get_deployer(request: Request) -> Deployer:
    return request.app.state.deployer


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def endpoint(request: Request) -> str:
    """`deploy` or `rollback`: the label of the webhook counter."""
    return request.url.path.rstrip("/").rsplit("/", 1)[-1]


async def signed_body(request: Request) -> bytes:
    """The raw body, at most DEPLOY_MAX_BODY_BYTES, once its signature checks out; nothing is parsed before."""
    try:
        return await _signed_body(request)
    except HTTPException as refusal:
        result = "too_large" if refusal.status_code == status.HTTP_413_CONTENT_TOO_LARGE else "invalid_signature"
        get_metrics(request).webhook(endpoint(request), result)
        raise


async def _signed_body(request: Request) -> bytes:
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
    secret = settings.webhook_secret.get_secret_value().encode()
    if not signature.is_valid(secret, bytes(body), request.headers.get(signature.HEADER)):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="Invalid signature")
    return bytes(body)
