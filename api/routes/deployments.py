"""The deployment history: not public. A read token opens it; a signed id opens one record, or cancels a planned
deploy."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api import signature
from api.deployer import Deployer
from api.deps import check_signature, get_client, get_deployer, get_inventory, signature_parameter
from api.inventory import Inventory
from api.models import DeploymentPage, DeploymentRecord, Outcome, ScheduleItem, SchedulesPage, utc_text
from api.scheduler import Scheduler, get_scheduler
from api.settings import Settings

router = APIRouter(tags=["history"])
bearer = HTTPBearer(
    auto_error=False,
    description="DEPLOY_READ_TOKEN. GET /deployments/{id} also accepts X-Hub-Signature-256 over `read:` and the id.",
)
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"description": "No valid read token (or signature over read: and the id, for one record)"}
}


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
    environment: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DeploymentPage:
    """Deployments, newest first; filter by service, outcome and environment, page with limit and offset."""
    if not _has_read_token(request, credentials):
        raise _unauthorized(request, "A valid read token is required: Authorization: Bearer <DEPLOY_READ_TOKEN>")
    items, total = deployer.history.list(
        service=service, outcome=outcome, environment=environment, limit=limit, offset=offset
    )
    return DeploymentPage(
        items=[DeploymentRecord.model_validate(item) for item in items], total=total, limit=limit, offset=offset
    )


@router.get("/schedules", responses=UNAUTHORIZED)
def list_schedules(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    scheduler: Annotated[Scheduler, Depends(get_scheduler)],
) -> SchedulesPage:
    """The recurring schedules of the inventory with their next tick, and the planned deploys waiting, soonest first."""
    if not _has_read_token(request, credentials):
        raise _unauthorized(request, "A valid read token is required: Authorization: Bearer <DEPLOY_READ_TOKEN>")
    items = [
        ScheduleItem(
            service=entry.service,
            cron=entry.schedule.cron,
            timezone=entry.schedule.timezone,
            image=entry.schedule.image,
            watch=entry.schedule.watch,
            interval=entry.schedule.interval if entry.schedule.cron is None else None,
            window=window or None,
            next_run=utc_text(tick),
            hosts=list(entry.hosts),
        )
        for entry, tick, window in scheduler.next_runs()
    ]
    planned = [DeploymentRecord.model_validate(record) for record in scheduler.history.scheduled()]
    return SchedulesPage(items=items, planned=planned)


@router.get("/deployments/{deployment_id}", responses={**UNAUTHORIZED, 404: {"description": "No such deployment"}})
def get_deployment(
    request: Request,
    deployment_id: Annotated[str, Path(max_length=64)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    deployer: Annotated[Deployer, Depends(get_deployer)],
    inventory: Annotated[Inventory, Depends(get_inventory)],
) -> DeploymentRecord:
    """One deployment, its steps as they happen. A caller holding a secret that may deploy the service may read
    the deployment it started without the read token: X-Hub-Signature-256 over `read:` and the id instead of a body."""
    if _has_read_token(request, credentials):
        record = deployer.history.get(deployment_id)
    elif request.headers.get(signature.HEADER) is not None:
        try:
            signers = check_signature(request, deployment_id.encode(), get_client(request), "read")
        except HTTPException as refusal:
            if refusal.status_code != status.HTTP_403_FORBIDDEN:
                raise
            # "Invalid signature", or with what the signature was made for (a body's, or one over the bare id).
            why = str(refusal.detail).removeprefix("Invalid signature")
            raise _unauthorized(request, f"The signature over read: and the deployment id is not valid{why}") from None
        record = deployer.history.get(deployment_id)
        if record is not None:
            reached = inventory.view().reached(record["environment"])
            if not reached.signs(record["service"] or "", signers):
                raise _unauthorized(request, "The secret that signed the id may not deploy this deployment's service")
    else:
        raise _unauthorized(
            request, "A valid read token, or X-Hub-Signature-256 over read: and the deployment id, is required"
        )
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"No deployment '{deployment_id}'")
    return DeploymentRecord.model_validate(record)


CANCEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Cancelled: the record, its outcome `cancelled`"},
    403: {
        "description": "Invalid signature (or one made for another purpose), or a secret that may not deploy the "
        "deployment's service"
    },
    404: {"description": "No such deployment"},
    409: {
        "description": "The deployment is not a planned one waiting for its time: it started, ended, or was cancelled"
    },
    429: {"description": "Too many invalid signatures from this address; see Retry-After"},
}
CANCEL_SIGNATURE: dict[str, Any] = {
    "parameters": [
        signature_parameter("`cancel:` and the deployment id, keyed with a secret that may deploy its service")
    ]
}


@router.delete("/deployments/{deployment_id}", responses=CANCEL_RESPONSES, openapi_extra=CANCEL_SIGNATURE)
def cancel_deployment(
    request: Request,
    deployment_id: Annotated[str, Path(max_length=64)],
    deployer: Annotated[Deployer, Depends(get_deployer)],
    inventory: Annotated[Inventory, Depends(get_inventory)],
) -> DeploymentRecord:
    """Cancel a planned deploy (`at`) that has not started, with X-Hub-Signature-256 over `cancel:` and the id."""
    signers = check_signature(request, deployment_id.encode(), get_client(request), "cancel")
    record = deployer.history.get(deployment_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"No deployment '{deployment_id}'")
    if not inventory.view().reached(record["environment"]).signs(record["service"] or "", signers):
        detail = "The secret that signed the id may not deploy this deployment's service"
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=detail)
    cancelled = get_scheduler(request).cancel(deployment_id)
    record = deployer.history.get(deployment_id) or record
    if not cancelled:
        detail = f"Deployment {deployment_id} is {record['outcome']}: only a scheduled one can be cancelled"
        raise HTTPException(status.HTTP_409_CONFLICT, detail=detail)
    return DeploymentRecord.model_validate(record)
