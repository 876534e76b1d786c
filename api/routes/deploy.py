from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from api import signature
from api.deployer import DeployConflict, Deployer
from api.deps import SignedBody, endpoint, get_deployer, get_inventory, get_metrics, get_rate_limits, signed_body
from api.history import History
from api.inventory import Environment, Inventory, InventoryView, ServicePolicy
from api.models import DeployFailure, DeploymentAccepted, DeployRequest, DeploySuccess
from api.security import image_repository, request_digest, timestamp_problem
from api.settings import Settings

router = APIRouter()

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": DeploySuccess, "description": "Finished and healthy (wait=true)"},
    202: {"model": DeploymentAccepted, "description": "Started (wait=false); follow the Location header"},
    400: {
        "description": "Service not allowed (in the environment), an unknown environment, an image the service does "
        "not allow, or a malformed body"
    },
    403: {"description": "Invalid signature, a secret not allowed for the service, an expired or replayed request"},
    409: {"description": "A deployment of this service is already running"},
    413: {"description": "Body too large"},
    422: {"description": "A field has the wrong type or an invalid value"},
    429: {"description": "Too many invalid signatures from this address, or deploys of this service; see Retry-After"},
    500: {"model": DeployFailure, "description": "Failed, with the rollback's outcome among the steps (wait=true)"},
}
# The routes read the raw body themselves (the signature is checked before anything is parsed), so FastAPI cannot
# infer the body or the header: both are described here, for /docs and for clients generated from the schema.
SIGNED_REQUEST: dict[str, Any] = {
    "parameters": [
        {
            "name": signature.HEADER,
            "in": "header",
            "required": True,
            "description": "`sha256=` and the hex HMAC-SHA256 of the raw body, keyed with the webhook secret "
            "(as GitHub signs webhooks)",
            "schema": {"type": "string", "pattern": "^sha256=[0-9a-fA-F]{64}$"},
        }
    ],
    "requestBody": {
        "required": True,
        "description": "Signed as sent: the signature covers these exact bytes",
        "content": {"application/json": {"schema": DeployRequest.model_json_schema()}},
    },
}
WAIT = Query(
    description="true: answer when the deploy has finished (the reference's behaviour). "
    "false: answer 202 at once and let the caller follow GET /deployments/{id} "
    "(Cloudflare Tunnel cuts a request after 100 s)."
)


class Refused(HTTPException):
    """A refusal at validation, with the result the webhook counter gives it."""

    def __init__(self, status_code: int, detail: Any, result: str, headers: dict[str, str] | None = None):
        super().__init__(status_code, detail=detail, headers=headers)
        self.result = result


def authorize(signed: SignedBody, service: str, policy: ServicePolicy) -> None:
    """403 unless a secret that may deploy `service` signed: its own (secret_env), else WEBHOOK_SECRET."""
    if not policy.signs(signed.signers):
        raise Refused(
            status.HTTP_403_FORBIDDEN, f"The secret that signed this request may not deploy '{service}'", "wrong_secret"
        )


def check_image(deploy_request: DeployRequest, policy: ServicePolicy) -> None:
    """400 when the service pins its image repositories (image_repository) and the image is not from one."""
    image, allowed = deploy_request.image, policy.image_repositories
    if image is None or allowed is None or image_repository(image) in allowed:
        return
    raise Refused(
        status.HTTP_400_BAD_REQUEST,
        f"Image '{image}' is not allowed for service '{deploy_request.service}'. "
        f"Allowed repositories: {', '.join(allowed)}",
        "not_allowed",
    )


def check_fresh(deploy_request: DeployRequest, settings: Settings) -> None:
    """403 for a timestamp outside the replay window, or a missing one when DEPLOY_REQUIRE_TIMESTAMP is set."""
    problem = timestamp_problem(
        deploy_request.timestamp, time.time(), settings.deploy_replay_window, settings.deploy_require_timestamp
    )
    if problem:
        raise Refused(status.HTTP_403_FORBIDDEN, problem, "expired")


def check_first_receipt(
    signed: SignedBody, deploy_request: DeployRequest, settings: Settings, history: History
) -> None:
    """403 for a signed body received before; remembered in the history, so across restarts."""
    if deploy_request.timestamp is None:
        # Nothing tells a replay from a second identical request; DEPLOY_REQUIRE_TIMESTAMP closes that door.
        return
    expires_at = deploy_request.timestamp + settings.deploy_replay_window
    if not history.first_receipt(request_digest(signed.raw), expires_at, time.time()):
        raise Refused(status.HTTP_403_FORBIDDEN, "This signed request was already received: sign a new one", "replayed")


def find_environment(view: InventoryView, name: str | None) -> Environment:
    """The hosts a request deploys to: an inventory group, or every host; 400 for a group the inventory lacks."""
    try:
        return view.environment(name)
    except KeyError:
        known = ", ".join(view.environments) or "none: the inventory has no groups"
        problem = f"Environment '{name}' is not in the inventory. Environments: {known}"
        raise Refused(status.HTTP_400_BAD_REQUEST, problem, "not_allowed") from None


def load_document(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 otherwise."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:
        # ValueError: not UTF-8, not JSON, or an integer of more than 4300 digits; RecursionError: nested too deep.
        problem = error if isinstance(error, ValueError) else "nested too deeply"
        raise Refused(status.HTTP_400_BAD_REQUEST, f"Body is not valid JSON: {problem}", "invalid_body") from None
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
    action: str, request: Request, signed: SignedBody, wait: bool, inventory: Inventory, deployer: Deployer
) -> JSONResponse:
    """Validate a signed body, then deploy or roll back; a refusal is recorded in the history, then raised."""
    settings: Settings = request.app.state.settings
    source = signed.client
    document: Any = None
    try:
        document = load_document(signed.raw)
        deploy_request = validate(document)
        view = await run_in_threadpool(inventory.view)
        if deploy_request.environment is None and settings.deploy_environment is not None:
            deploy_request = deploy_request.model_copy(update={"environment": settings.deploy_environment})
        environment = find_environment(view, deploy_request.environment)
        if deploy_request.service not in environment.services:
            where = f" in {deploy_request.environment}" if deploy_request.environment else ""
            raise Refused(
                status.HTTP_400_BAD_REQUEST,
                f"Service '{deploy_request.service}' not allowed{where}. Allowed: {', '.join(environment.services)}",
                "not_allowed",
            )
        policy = environment.policy(deploy_request.service)
        authorize(signed, deploy_request.service, policy)
        check_fresh(deploy_request, settings)
        check_image(deploy_request, policy)
        # A replay is refused before it can spend the service's deploys.
        await run_in_threadpool(check_first_receipt, signed, deploy_request, settings, deployer.history)
        rate_limits = get_rate_limits(request)
        retry_after = rate_limits.deploy(deploy_request.service)
        if retry_after is not None:
            limit = rate_limits.deploy_limit
            raise Refused(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"Too many deploys of '{deploy_request.service}' ({limit}); retry in {retry_after} s",
                "rate_limited",
                headers={"Retry-After": str(retry_after)},
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
    # The reference's body as it is for one host; environment and hosts join it where they say something.
    single = outcome.environment is None and len(outcome.hosts) <= 1
    body = outcome.model_dump(exclude={"environment", "hosts"} if single else None)
    return JSONResponse(body, status_code=code, headers=headers)


@router.post("/deploy", responses=RESPONSES, openapi_extra=SIGNED_REQUEST)
async def deploy(
    request: Request,
    body: Annotated[SignedBody, Depends(signed_body)],
    inventory: Annotated[Inventory, Depends(get_inventory)],
    deployer: Annotated[Deployer, Depends(get_deployer)],
    wait: Annotated[bool, WAIT] = True,
) -> JSONResponse:
    """Deploy `image` (or the compose file's image) to `service`, check its health, roll back on failure."""
    return await run_action("deploy", request, body, wait, inventory, deployer)


@router.post("/rollback", responses=RESPONSES, openapi_extra=SIGNED_REQUEST)
async def rollback(
    request: Request,
    body: Annotated[SignedBody, Depends(signed_body)],
    inventory: Annotated[Inventory, Depends(get_inventory)],
    deployer: Annotated[Deployer, Depends(get_deployer)],
    wait: Annotated[bool, WAIT] = True,
) -> JSONResponse:
    """Bring `service` back to its previous kept image, or to `image`, with the same health check as a deploy."""
    return await run_action("rollback", request, body, wait, inventory, deployer)
