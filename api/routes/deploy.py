from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.admission import (
    Admitted,
    Refused,
    admit,
    check_first_receipt,
    check_fresh,
    check_planned_time,
    check_window,
    claim_service,
    load_document,
    timestamp_of,
    validate,
)
from api.deployer import Deployer
from api.deps import (
    SignedBody,
    endpoint,
    get_deployer,
    get_inventory,
    get_metrics,
    get_rate_limits,
    signature_parameter,
    signed_body,
)
from api.inventory import Inventory
from api.models import (
    DEPLOYCTL_AGENT,
    DeployFailure,
    DeploymentAccepted,
    DeploymentScheduled,
    DeployRequest,
    DeploySuccess,
    Trigger,
    epoch,
    utc_at,
)
from api.scheduler import get_scheduler
from api.settings import Settings

router = APIRouter()

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": DeploySuccess, "description": "Finished and healthy (wait=true)"},
    202: {
        "model": DeploymentAccepted | DeploymentScheduled,
        "description": "Started (wait=false), or planned for `at` (status `scheduled`; wait is ignored); follow it, "
        "or cancel a planned one, at the Location header",
    },
    400: {
        "description": "Service not allowed (in the environment), an unknown environment, an image the service does "
        "not allow, a malformed body, an `at` not ahead or beyond DEPLOY_SCHEDULE_HORIZON, or (wait=true) a deploy "
        "the playbook's preflight refused before anything changed: a blue_green service that cannot run twice, the "
        "API's own service"
    },
    403: {
        "description": "Invalid signature (or one made for another action), a secret not allowed for the service on "
        "every host, an expired or replayed request"
    },
    409: {"description": "A deployment of this service is already running (never for a planned one)"},
    423: {
        "description": "A deploy outside the service's deploy_window (at its `at`, or now), without `queue`: the "
        "detail names the window and its next opening, Retry-After the seconds until then"
    },
    413: {"description": "Body too large"},
    422: {
        "description": "A field has the wrong type or an invalid value, or the body has a field the API does not know"
    },
    429: {"description": "Too many invalid signatures from this address, or deploys of this service; see Retry-After"},
    500: {"model": DeployFailure, "description": "Failed, with the rollback's outcome among the steps (wait=true)"},
    503: {"description": "The inventory changed and is refused (a secret_env the API does not hold)"},
}
# The routes read the raw body themselves (the signature is checked before anything is parsed), so FastAPI cannot
# infer the body or the header: both are described here, for /docs and for clients generated from the schema.
SIGNED_REQUEST: dict[str, Any] = {
    "parameters": [signature_parameter("the raw body, keyed with the webhook secret (as GitHub signs webhooks)")],
    "requestBody": {
        "required": True,
        "description": "Signed as sent: the signature covers these exact bytes",
        "content": {"application/json": {"schema": DeployRequest.model_json_schema()}},
    },
}
WAIT = Query(
    description="true: answer when the deploy has finished (the reference's behaviour). "
    "false: answer 202 at once and let the caller follow GET /deployments/{id} "
    "(Cloudflare Tunnel cuts a request after 100 s). Ignored for a planned deploy (`at`)."
)


async def run_action(
    action: str, request: Request, signed: SignedBody, wait: bool, inventory: Inventory, deployer: Deployer
) -> JSONResponse:
    """Validate a signed body, then deploy or roll back, or plan it for its `at` (or its deploy window's opening).
    Every refusal counts against the client's address, but those of a valid request the inventory allows: a 409, a
    423 outside the deploy window, a 429 for the service's budget. A refusal of a body received for the first time is
    recorded in the history."""
    settings: Settings = request.app.state.settings
    rate_limits = get_rate_limits(request)
    # One reading of the clock for the window, the one-time check and `at`, so that no edge lies between them.
    now = request.app.state.clock()
    source = signed.client
    trigger = trigger_of(request)
    document, malformed = load_document(signed.raw)
    try:
        try:
            timestamp = timestamp_of(document)
            check_fresh(timestamp, now, settings)
            await run_in_threadpool(check_first_receipt, signed, timestamp, now, settings, deployer.history)
            if malformed:
                raise malformed
            deploy_request = validate(document)
            if deploy_request.at is not None:
                check_planned_time(deploy_request.at, now, settings)
            admitted = await run_in_threadpool(admit, inventory, settings, deploy_request, signed.signers)
        except Refused as refusal:
            if refusal.status_code != status.HTTP_503_SERVICE_UNAVAILABLE:
                rate_limits.refused(source)
            raise
        at = admitted.request.at
        admitted = queued(admitted, check_window(admitted, action, now if at is None else epoch(at), now))
        if admitted.request.at is not None:
            # Planned: nothing is claimed nor spent now; the checks run again when it comes to run.
            deployment_id = await run_in_threadpool(
                get_scheduler(request).plan, admitted, action, source, signed.signers, trigger
            )
            get_metrics(request).webhook(endpoint(request), "accepted")
            return _accepted(request, deployment_id, admitted, scheduled=True)
        claim = claim_service(deployer, rate_limits, admitted)
        deployment_id, code, outcome = await deployer.start(
            admitted.request,
            source,
            action=action,
            wait=wait,
            hosts=admitted.environment.hosts,
            claim=claim,
            strategy=admitted.environment.strategy(admitted.request.service),
            trigger=trigger,
        )
    except Refused as refusal:
        get_metrics(request).webhook(endpoint(request), refusal.result)
        if refusal.recorded:
            await run_in_threadpool(
                deployer.reject, action, document, source, refusal.status_code, refusal.detail, trigger
            )
        raise
    get_metrics(request).webhook(endpoint(request), "accepted")
    if outcome is None:
        return _accepted(request, deployment_id, admitted, scheduled=False)
    # The reference's body as it is for one host; environment and hosts join it where they say something.
    single = outcome.environment is None and len(outcome.hosts) <= 1
    body = outcome.model_dump(exclude={"environment", "hosts"} if single else None)
    return JSONResponse(body, status_code=code, headers={"X-Deployment-Id": deployment_id})


def trigger_of(request: Request) -> Trigger:
    """cli for a request deployctl sent (it says so in its User-Agent), webhook for any other. Only a record's label:
    the signature, not this, decides what runs."""
    return "cli" if request.headers.get("user-agent", "").startswith(DEPLOYCTL_AGENT) else "webhook"


def queued(admitted: Admitted, opens: float | None) -> Admitted:
    """A request that asked to queue, planned for the opening of its deploy window (check_window); else as it is."""
    if opens is None:
        return admitted
    return replace(admitted, request=admitted.request.model_copy(update={"at": utc_at(opens)}))


def _accepted(request: Request, deployment_id: str, admitted: Admitted, *, scheduled: bool) -> JSONResponse:
    """202: a deploy started (wait=false) or planned; follow it (or cancel a planned one) at the Location."""
    location = str(request.app.url_path_for("get_deployment", deployment_id=deployment_id))
    service, at = admitted.request.service, admitted.request.at
    accepted: DeploymentAccepted | DeploymentScheduled = (
        DeploymentScheduled(deployment_id=deployment_id, service=service, at=at or "", status_url=location)
        if scheduled
        else DeploymentAccepted(deployment_id=deployment_id, service=service, status_url=location)
    )
    headers = {"X-Deployment-Id": deployment_id, "Location": location}
    return JSONResponse(accepted.model_dump(), status_code=status.HTTP_202_ACCEPTED, headers=headers)


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
