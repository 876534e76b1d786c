"""The deployment history: not public. A read token opens it; a signed id opens one record."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api import signature
from api.deployer import Deployer
from api.deps import get_deployer
from api.models import DeploymentPage, DeploymentRecord, Outcome
from api.settings import Settings

router = APIRouter(tags=["history"])
bearer = HTTPBearer(
    auto_error=False,
    description="DEPLOY_READ_TOKEN. GET /deployments/{id} also accepts X-Hub-Signature-256 over the id.",
)
UNAUTHORIZED = {401: {"description": "No valid read token (or signature, for one record)"}}


def _has_read_token(request: Request, credentials: HTTPAuthorizationCredentials | None) -> bool:
    settings: Settings = request.app.state.settings
    if settings.deploy_read_token is None or credentials is None:
        return False
    expected = settings.deploy_read_token.get_secret_value().encode()
    return hmac.compare_digest(expected, credentials.credentials.encode())


def _unauthorized(request: Request, detail: str) -> HTTPException:
    settings: Settings = request.app.state.settings
    if settings.deploy_read_token is None:
        detail += " (this server has no DEPLOY_READ_TOKEN set)"
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


@router.get("/deployments", responses=UNAUTHORIZED)
def list_deployments(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    deployer: Annotated[Deployer, Depends(get_deployer)],
    service: Annotated[str | None, Query(max_length=128)] = None,
    outcome: Outcome | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DeploymentPage:
    """Deployments, newest first; filter by service and outcome, page with limit and offset."""
    if not _has_read_token(request, credentials):
        raise _unauthorized(request, "A valid read token is required: Authorization: Bearer <DEPLOY_READ_TOKEN>")
    items, total = deployer.history.list(service=service, outcome=outcome, limit=limit, offset=offset)
    return DeploymentPage(
        items=[DeploymentRecord.model_validate(item) for item in items], total=total, limit=limit, offset=offset
    )


@router.get("/deployments/{deployment_id}", responses={**UNAUTHORIZED, 404: {"description": "No such deployment"}})
def get_deployment(
    request: Request,
    deployment_id: Annotated[str, Path(max_length=64)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    deployer: Annotated[Deployer, Depends(get_deployer)],
) -> DeploymentRecord:
    """One deployment, its steps as they happen. A caller holding the webhook secret may read the deployment it
    started without the read token: X-Hub-Signature-256 over the id (as bytes) instead of a body."""
    settings: Settings = request.app.state.settings
    signed = signature.is_valid(
        settings.webhook_secret.get_secret_value().encode(),
        deployment_id.encode(),
        request.headers.get(signature.HEADER),
    )
    if not (signed or _has_read_token(request, credentials)):
        raise _unauthorized(request, "A valid read token, or X-Hub-Signature-256 over the deployment id, is required")
    record = deployer.history.get(deployment_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"No deployment '{deployment_id}'")
    return DeploymentRecord.model_validate(record)
