"""Admission: the checks a signed request passes before anything runs, each one refusing with its status and a
detail that says what is wrong (Refused). The route (api/routes/deploy.py) runs them in order; a planned deploy passes
admit() and claim_service() again when it comes to run (api/scheduler.py). The deploy rules themselves are the
playbook's (module_utils/deploy_rules.py, through the inventory's policies).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, status
from pydantic import ValidationError

from api.deployer import DeployConflict, Deployer, RunningDeploy
from api.deps import SignedBody
from api.history import History
from api.inventory import Environment, Inventory, InventoryView
from api.models import TIMESTAMP_MAX, DeployRequest, epoch, utc_at
from api.security import RateLimits, request_digest, timestamp_problem
from api.settings import Settings


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
    problems = environment.settings_problems(service)
    if problems:
        detail = "; ".join(problems) + ". Fix deploy_services in the inventory"
        raise Refused(status.HTTP_400_BAD_REQUEST, detail, "not_allowed")
    image = deploy_request.image
    if image is not None and environment.hosts_refusing_image(service, image):
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


INVENTORY_REFUSED = (
    "The inventory changed and is refused: no deploy runs until it is fixed (the API's log says what is wrong)"
)


def check_planned_time(at: str, now: float, settings: Settings) -> None:
    """400 for a planned time (`at`, as DeployRequest keeps it) that is not ahead of `now`, or is beyond
    DEPLOY_SCHEDULE_HORIZON."""
    ahead = epoch(at) - now
    if ahead <= 0:
        raise Refused(status.HTTP_400_BAD_REQUEST, f"at {at} is in the past: give a time ahead", "invalid_body")
    horizon = settings.deploy_schedule_horizon
    if ahead > horizon:
        detail = f"at {at} is more than DEPLOY_SCHEDULE_HORIZON ({horizon} s, {horizon / 86400:g} days) ahead"
        raise Refused(status.HTTP_400_BAD_REQUEST, detail, "invalid_body")


@dataclass(frozen=True)
class Admitted:
    """A request the inventory allows, as it runs: with the default environment applied, and that environment."""

    request: DeployRequest
    environment: Environment


def admit(inventory: Inventory, settings: Settings, deploy_request: DeployRequest, signers: frozenset[str]) -> Admitted:
    """The checks of a valid request against the inventory of now (Refused otherwise): when it is received, and again
    when a planned one comes to run, with the signers recorded at receipt. Blocking: it may read the inventory."""
    view = inventory.view()
    if inventory.problem is not None:
        raise Refused(status.HTTP_503_SERVICE_UNAVAILABLE, INVENTORY_REFUSED, "inventory_invalid")
    if deploy_request.environment is None and settings.deploy_environment is not None:
        deploy_request = deploy_request.model_copy(update={"environment": settings.deploy_environment})
    environment = find_environment(view, deploy_request.environment, signers)
    authorize(view, environment, deploy_request, signers)
    return Admitted(deploy_request, environment)


def claim_service(
    deployer: Deployer, rate_limits: RateLimits, admitted: Admitted, deployment_id: str | None = None
) -> RunningDeploy:
    """The service's claim on its hosts for one deploy (a new one, or the planned `deployment_id`), and one deploy of
    its budget: 409 while a deploy of it runs there, which spends nothing; 429 beyond DEPLOY_SERVICE_RATE_LIMIT."""
    service, hosts = admitted.request.service, admitted.environment.hosts
    try:
        claim = deployer.claim(service, hosts, deployment_id)
    except DeployConflict as conflict:
        raise Refused(status.HTTP_409_CONFLICT, str(conflict), "conflict") from None
    retry_after = rate_limits.deploy(service, hosts)
    if retry_after is not None:
        deployer.release(claim)
        raise Refused(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"Too many deploys of {service!r} ({rate_limits.deploy_limit} on each host); retry in {retry_after} s",
            "rate_limited",
            headers={"Retry-After": str(retry_after)},
        )
    return claim


def check_window(admitted: Admitted, action: str, at: float, now: float) -> float | None:
    """Whether a deploy may start at `at` (now, or its planned time) in the service's deploy_window on every host it
    reaches: None when it may (and for a rollback, which no window holds back); when the request queues, the time the
    window opens; otherwise 423 naming the window and its next opening."""
    if action != "deploy":
        return None
    service = admitted.request.service
    try:
        opens = admitted.environment.window_opens(service, at)
    except ValueError as error:
        detail = f"{service!r} can never deploy: {error}. Fix deploy_window in the inventory"
        raise Refused(status.HTTP_423_LOCKED, detail, "outside_window") from None
    if opens is None or admitted.request.queue:
        return opens
    windows = admitted.environment.window_text(service)
    detail = (
        f"{service!r} deploys only in its deploy window {windows}; it opens next at {utc_at(opens)}. "
        'Send "queue": true to plan the deploy for then'
    )
    headers = None if admitted.request.at else {"Retry-After": str(math.ceil(opens - now))}
    raise Refused(status.HTTP_423_LOCKED, detail, "outside_window", headers=headers)
