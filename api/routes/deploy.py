from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from api import signature
from api.deployer import DeployConflict, Deployer
from api.deps import SignedBody, endpoint, get_deployer, get_inventory, get_metrics, get_rate_limits, signed_body
from api.history import History
from api.inventory import Environment, Inventory, InventoryView
from api.models import TIMESTAMP_MAX, DeployFailure, DeploymentAccepted, DeployRequest, DeploySuccess
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
    403: {
        "description": "Invalid signature (or one made for another action), a secret not allowed for the service on "
        "every host, an expired or replayed request"
    },
    409: {"description": "A deployment of this service is already running"},
    413: {"description": "Body too large"},
    422: {"description": "A field has the wrong type or an invalid value"},
    429: {"description": "Too many invalid signatures from this address, or deploys of this service; see Retry-After"},
    500: {"model": DeployFailure, "description": "Failed, with the rollback's outcome among the steps (wait=true)"},
    503: {"description": "The inventory changed and is refused (a secret_env the API does not hold)"},
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
    """A refusal at validation, with the result the webhook counter gives it. `recorded`: whether it becomes a record
    in the history (not for replays and stale bodies, which anyone who saw a request once could send again and again).
    """

    def __init__(
        self,
        status_code: int,
        detail: Any,
        result: str,
        headers: dict[str, str] | None = None,
        *,
        recorded: bool = True,
    ):
        super().__init__(status_code, detail=detail, headers=headers)
        self.result = result
        self.recorded = recorded


SIGN_A_NEW_ONE = (
    'sign a new request with the current Unix time in "timestamp" (deployctl and the GitHub Action do; '
    "see SECURITY.md, Replay protection)"
)
# A timestamped body's record outlives its window by this much, so that the clocks of two checks never meet an edge.
RECEIPT_MARGIN_SECONDS = 60


def timestamp_of(document: Any) -> int | None:
    """The body's `timestamp` when it is one (an integer in DeployRequest's range), before the body is validated."""
    timestamp = document.get("timestamp") if isinstance(document, dict) else None
    if isinstance(timestamp, int) and not isinstance(timestamp, bool) and 0 <= timestamp <= TIMESTAMP_MAX:
        return timestamp
    return None


def check_fresh(timestamp: int | None, now: float, settings: Settings) -> None:
    """403 for a timestamp outside the replay window, or a missing one when DEPLOY_REQUIRE_TIMESTAMP is set."""
    problem = timestamp_problem(timestamp, now, settings.deploy_replay_window, settings.deploy_require_timestamp)
    if problem:
        raise Refused(status.HTTP_403_FORBIDDEN, f"{problem}: {SIGN_A_NEW_ONE}", "expired", recorded=False)


def check_first_receipt(
    signed: SignedBody, timestamp: int | None, now: float, settings: Settings, history: History
) -> None:
    """403 for a signed body received before, remembered in the history (so across restarts): a timestamped body
    until no request carrying it could pass the window any more, an untimestamped one for good (it is single-use)."""
    expires_at = None if timestamp is None else timestamp + settings.deploy_replay_window + RECEIPT_MARGIN_SECONDS
    if history.first_receipt(request_digest(signed.raw, signed.signature), expires_at, now):
        return
    once = "; a body without a timestamp is accepted once" if timestamp is None else ""
    detail = f"This signed request was already received{once}: {SIGN_A_NEW_ONE}"
    raise Refused(status.HTTP_403_FORBIDDEN, detail, "replayed", recorded=False)


def find_environment(view: InventoryView, name: str | None, signers: frozenset[str]) -> Environment:
    """The hosts a request deploys to: an inventory group, or every host; 400 for a group the inventory lacks."""
    try:
        return view.environment(name)
    except KeyError:
        known = ", ".join(view.environments_open_to(signers)) or "none for the secret that signed this request"
        problem = f"Environment {name!r} is not in the inventory. Environments: {known}"
        raise Refused(status.HTTP_400_BAD_REQUEST, problem, "not_allowed") from None


def elsewhere(view: InventoryView, service: str, signers: frozenset[str], environment: str | None) -> str:
    """For a request without environment that may not deploy everywhere: the environments where it may, if any."""
    if environment is not None:
        return ""
    names = view.environments_for(service, signers)
    return f'; it may in {", ".join(names)}: name one in "environment"' if names else ""


def authorize(
    view: InventoryView, environment: Environment, deploy_request: DeployRequest, signers: frozenset[str]
) -> None:
    """The service must be allowed on every host the request reaches (400), the secret that signed it must be
    allowed to deploy it on each of them (403), and so must the image (400). Only what the signer may deploy is
    ever listed to it."""
    service, where = deploy_request.service, deploy_request.environment
    if service not in environment.services:
        allowed = ", ".join(environment.services_for(signers)) or "none for the secret that signed this request"
        place = f" in {where}" if where else ""
        detail = f"Service {service!r} not allowed{place}. Allowed: {allowed}"
        if environment.signs(service, signers):
            detail += elsewhere(view, service, signers, where)
        raise Refused(status.HTTP_400_BAD_REQUEST, detail, "not_allowed")
    if not environment.signs(service, signers):
        place = f" in {where}" if where else ""
        detail = f"The secret that signed this request may not deploy {service!r}{place}"
        raise Refused(status.HTTP_403_FORBIDDEN, detail + elsewhere(view, service, signers, where), "wrong_secret")
    image = deploy_request.image
    if image is not None and environment.hosts_refusing_image(service, image_repository(image)):
        allowed = ", ".join(environment.image_repositories(service)) or "none on every host"
        raise Refused(
            status.HTTP_400_BAD_REQUEST,
            f"Image {image!r} is not allowed for service {service!r}. Allowed repositories: {allowed}",
            "not_allowed",
        )


def load_document(body: bytes) -> tuple[Any, Refused | None]:
    """The body as a JSON object, or what is wrong with it (400)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:
        # ValueError: not UTF-8, not JSON, or an integer of more than 4300 digits; RecursionError: nested too deep.
        problem = error if isinstance(error, ValueError) else "nested too deeply"
        return None, Refused(status.HTTP_400_BAD_REQUEST, f"Body is not valid JSON: {problem}", "invalid_body")
    if not isinstance(document, dict):
        return document, Refused(status.HTTP_400_BAD_REQUEST, "Body must be a JSON object", "invalid_body")
    return document, None


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
    """Validate a signed body, then deploy or roll back. Every refusal counts against the client's address (but a 409
    or a 429 for the service's budget); a refusal of a body received for the first time is recorded in the history.
    """
    settings: Settings = request.app.state.settings
    rate_limits = get_rate_limits(request)
    # One reading of the clock for the window and the one-time check, so that no edge lies between them.
    now = request.app.state.clock()
    source = signed.client
    document, malformed = load_document(signed.raw)
    try:
        try:
            timestamp = timestamp_of(document)
            check_fresh(timestamp, now, settings)
            await run_in_threadpool(check_first_receipt, signed, timestamp, now, settings, deployer.history)
            if malformed:
                raise malformed
            deploy_request = validate(document)
            view = await run_in_threadpool(inventory.view)
            if inventory.problem is not None:
                raise Refused(status.HTTP_503_SERVICE_UNAVAILABLE, INVENTORY_REFUSED, "inventory_invalid")
            if deploy_request.environment is None and settings.deploy_environment is not None:
                deploy_request = deploy_request.model_copy(update={"environment": settings.deploy_environment})
            environment = find_environment(view, deploy_request.environment, signed.signers)
            authorize(view, environment, deploy_request, signed.signers)
        except Refused as refusal:
            if refusal.status_code != status.HTTP_503_SERVICE_UNAVAILABLE:
                rate_limits.refused(source)
            raise
        try:
            claim = deployer.claim(deploy_request.service, environment.hosts)
        except DeployConflict as conflict:
            raise Refused(status.HTTP_409_CONFLICT, str(conflict), "conflict") from None
        # After the claim: a 409 spends nothing of the budget.
        retry_after = rate_limits.deploy(deploy_request.service, environment.hosts)
        if retry_after is not None:
            deployer.release(claim)
            raise Refused(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"Too many deploys of {deploy_request.service!r} ({rate_limits.deploy_limit} on each host); "
                f"retry in {retry_after} s",
                "rate_limited",
                headers={"Retry-After": str(retry_after)},
            )
        deployment_id, code, outcome = await deployer.start(
            deploy_request, source, action=action, wait=wait, hosts=environment.hosts, claim=claim
        )
    except Refused as refusal:
        get_metrics(request).webhook(endpoint(request), refusal.result)
        if refusal.recorded:
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


INVENTORY_REFUSED = (
    "The inventory changed and is refused: no deploy runs until it is fixed (the API's log says what is wrong)"
)


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
