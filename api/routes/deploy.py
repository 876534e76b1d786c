from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from api.deployer import DeployConflict, Deployer
from api.deps import get_deployer, get_inventory, signed_body
from api.inventory import Inventory
from api.models import DeployFailure, DeployRequest, DeploySuccess

router = APIRouter()


def parse_request(body: bytes) -> DeployRequest:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=f"Body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="Body must be a JSON object")
    try:
        return DeployRequest.model_validate(document)
    except ValidationError as error:
        problems = [
            f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
            for problem in error.errors(include_input=False, include_url=False)
        ]
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=problems) from None


@router.post(
    "/deploy",
    responses={
        200: {"model": DeploySuccess},
        400: {"description": "Service not allowed, or a malformed body"},
        403: {"description": "Invalid signature"},
        409: {"description": "A deployment of this service is already running"},
        413: {"description": "Body too large"},
        422: {"description": "A field has the wrong type or an invalid value"},
        500: {"model": DeployFailure},
    },
)
async def deploy(
    request: Request,
    body: Annotated[bytes, Depends(signed_body)],
    inventory: Annotated[Inventory, Depends(get_inventory)],
    deployer: Annotated[Deployer, Depends(get_deployer)],
) -> JSONResponse:
    deploy_request = parse_request(body)
    allowed = (await run_in_threadpool(inventory.view)).services
    if deploy_request.service not in allowed:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail=f"Service '{deploy_request.service}' not allowed. Allowed: {', '.join(allowed)}",
        )
    source = request.client.host if request.client else "unknown"
    try:
        deployment_id, code, outcome = await deployer.deploy(deploy_request, source)
    except DeployConflict as conflict:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(conflict)) from None
    return JSONResponse(outcome.model_dump(), status_code=code, headers={"X-Deployment-Id": deployment_id})
