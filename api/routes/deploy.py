from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from api.deployer import DeployConflict, Deployer
from api.deps import endpoint, get_deployer, get_inventory, get_metrics, signed_body
from api.inventory import Inventory
from api.models import DeployFailure, DeploymentAccepted, DeployRequest, DeploySuccess

router = APIRouter()

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": DeploySuccess, "description": "Finished and healthy (wait=true)"},
    202: {"model": DeploymentAccepted, "description": "Started (wait=false); follow the Location header"},
    400: {"description": "Service not allowed, or a malformed body"},
    403: {"description": "Invalid signature"},
    409: {"description": "A deployment of this service is already running"},
    413: {"description": "Body too large"},
    422: {"description": "A field has the wrong type or an invalid value"},
    500: {"model": DeployFailure, "description": "Failed, with the rollback's outcome among the steps (wait=true)"},
}
WAIT = Query(
    description="true: answer when the deploy has finished (the reference's behaviour). "
    "false: answer 202 at once and let the caller follow GET /deployments/{id} "
    "(Cloudflare Tunnel cuts a request after 100 s)."
)


class Refused(HTTPException):
    """A refusal at validation, with the result the webhook counter gives it."""

    def __init__(self, status_code: int, detail: Any, result: str):
        super().__init__(status_code, detail=detail)
        self.result = result


def load_document(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 otherwise."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise Refused(status.HTTP_400_BAD_REQUEST, f"Body is not valid JSON: {error}", "invalid_body") from None
    if not isinstance(document, dict):
        raise Refused(status.HTTP_400_BAD_REQUEST, "Body must be a JSON object", "invalid_body")
    return document


def validate(document: dict[str, Any]) -> DeployRequest:
    """The request a document describes; 422 with every problem otherwise."""
    try:
        return DeployRequest.model_validate(document)
    except ValidationError as error:
        problems = [
            f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
            for problem in error.errors(include_input=False, include_url=False)
        ]
        raise Refused(status.HTTP_422_UNPROCESSABLE_CONTENT, problems, "invalid_body") from None


async def run_action(
    action: str, request: Request, body: bytes, wait: bool, inventory: Inventory, deployer: Deployer
) -> JSONResponse:
    """Validate a signed body, then deploy or roll back; a refusal is recorded in the history, then raised."""
    source = request.client.host if request.client else "unknown"
    document: Any = None
    try:
        document = load_document(body)
        deploy_request = validate(document)
        allowed = (await run_in_threadpool(inventory.view)).services
        if deploy_request.service not in allowed:
            raise Refused(
                status.HTTP_400_BAD_REQUEST,
                f"Service '{deploy_request.service}' not allowed. Allowed: {', '.join(allowed)}",
                "not_allowed",
            )
        try:
            deployment_id, code, outcome = await deployer.start(deploy_request, source, action=action, wait=wait)
        except DeployConflict as conflict:
            raise Refused(status.HTTP_409_CONFLICT, str(conflict), "conflict") from None
    except Refused as refusal:
        get_metrics(request).webhook(endpoint(request), refusal.result)
        await run_in_threadpool(deployer.reject, action, document, source, refusal.status_code, refusal.detail)
        raise
    get_metrics(request).webhook(endpoint(request), "accepted")
    headers = {"X-Deployment-Id": deployment_id}
    if outcome is None:
        location = str(request.app.url_path_for("get_deployment", deployment_id=deployment_id))
        accepted = DeploymentAccepted(deployment_id=deployment_id, service=deploy_request.service, status_url=location)
        return JSONResponse(accepted.model_dump(), status_code=code, headers={**headers, "Location": location})
    return JSONResponse(outcome.model_dump(), status_code=code, headers=headers)


@router.post("/deploy", responses=RESPONSES)
async def deploy(
    request: Request,
    body: Annotated[bytes, Depends(signed_body)],
    inventory: Annotated[Inventory, Depends(get_inventory)],
    deployer: Annotated[Deployer, Depends(get_deployer)],
    wait: Annotated[bool, WAIT] = True,
) -> JSONResponse:
    """Deploy `image` (or the compose file's image) to `service`, check its health, roll back on failure."""
    return await run_action("deploy", request, body, wait, inventory, deployer)


@router.post("/rollback", responses=RESPONSES)
async def rollback(
    request: Request,
    body: Annotated[bytes, Depends(signed_body)],
    inventory: Annotated[Inventory, Depends(get_inventory)],
    deployer: Annotated[Deployer, Depends(get_deployer)],
    wait: Annotated[bool, WAIT] = True,
) -> JSONResponse:
    """Bring `service` back to its previous kept image, or to `image`, with the same health check as a deploy."""
    return await run_action("rollback", request, body, wait, inventory, deployer)
