"""A finished run, summarized: the answer (the reference's 200 or 500 body), the outcome the history keeps and the
images, from the records the hosts published (module_utils/deploy_rules.py, host_record). Pure: nothing here runs,
reads or writes anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from api.contract import StepRecord
from api.models import DeployFailure, DeploySuccess, HostOutcome
from api.runner import RunResult

IMAGE_FIELDS = ("old_image", "old_image_id", "new_image", "new_image_id")
# From the worst: the outcome of a deploy to many hosts is the worst of theirs.
WORST_FIRST = ("rollback_failed", "failed", "rolled_back")


def tagged_steps(steps_by_host: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The steps of every host in one list; with more than one host, each step names its host."""
    many = len(steps_by_host) > 1
    return [{**step, "host": host} if many else step for host, steps in steps_by_host.items() for step in steps]


def step_images(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The images a host's finished steps name: what it ran before (capture_state) and the new one (pull_image)."""
    images: dict[str, Any] = {}
    for step in steps:
        if step.get("step") == "capture_state" and step.get("image_id"):
            images.update(old_image=step.get("image"), old_image_id=step["image_id"])
        elif step.get("step") == "pull_image" and step.get("image_id"):
            images.update(new_image=step.get("image"), new_image_id=step["image_id"])
    return images


def host_images(result: Mapping[str, Any]) -> dict[str, Any]:
    """The one source of a host's images: its published record, else (a run stopped before it published) what its
    finished steps named."""
    return {
        **step_images(result.get("steps") or []),
        **{key: result[key] for key in IMAGE_FIELDS if result.get(key)},
    }


def succeeded(run: RunResult) -> bool:
    """The one definition of success: the run ended well, and every host it was for published a success."""
    return (
        run.status == "successful"
        and bool(run.results)
        and all(result.get("outcome") == "succeeded" for result in run.results.values())
    )


def outcome_of(run: RunResult) -> str:
    """One outcome for the history: a stopped run is interrupted; with many hosts, the worst host's outcome."""
    if run.status in ("timeout", "canceled"):
        return "interrupted"
    if succeeded(run):
        return "succeeded"
    outcomes = {str(result.get("outcome") or "failed") for result in run.results.values()}
    return next((worst for worst in WORST_FIRST if worst in outcomes), "failed")


def first_reached(results: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The result of the first host the rollout reached (its images stand for the deploy's), else of the first."""
    reached = [result for result in results.values() if result.get("outcome") != "not_reached"]
    return next(iter(reached or results.values()), {})


def host_outcomes(results: Mapping[str, dict[str, Any]]) -> dict[str, HostOutcome]:
    return {
        host: HostOutcome(
            outcome=str(result.get("outcome") or "failed"),
            error=None if result.get("outcome") == "succeeded" else result.get("error"),
            **host_images(result),
        )
        for host, result in results.items()
    }


@dataclass(frozen=True)
class Summary:
    """What a finished run means: the answer and its status, the history's outcome, and the deploy's images (those
    of the first host the rollout reached)."""

    status_code: int
    body: DeploySuccess | DeployFailure
    outcome: str
    images: dict[str, Any] = field(default_factory=dict)


def run_error(run: RunResult, timeout: int) -> str:
    """Why a run that did not succeed failed, in one line; with many hosts, each host's."""
    if run.status == "timeout":
        return f"Deployment timed out after {timeout} s"
    if run.status == "canceled":
        return "Deployment canceled: the service is shutting down"
    many = len(run.results) > 1
    errors = [
        (f"{host}: " if many else "") + str(result.get("error") or "Deployment failed")
        for host, result in run.results.items()
        if result.get("outcome") != "succeeded"
    ]
    return "; ".join(dict.fromkeys(errors)) if errors else "Deployment failed before it published a result"


def summarize(service: str, run: RunResult, timeout: int, environment: str | None = None) -> Summary:
    """The summary of a finished run; many hosts are one outcome, their steps tagged by host."""
    results = run.results
    steps = [
        StepRecord.model_validate(step)
        for step in tagged_steps({host: result.get("steps", []) for host, result in results.items()})
    ]
    first = first_reached(results)
    hosts = host_outcomes(results)
    images = host_images(first) if first else {}
    outcome = outcome_of(run)
    if outcome == "succeeded":
        body: DeploySuccess | DeployFailure = DeploySuccess(
            service=service,
            message=first.get("message", "Deployment successful"),
            old_image=images.get("old_image"),
            new_image=images.get("new_image"),
            steps=steps,
            environment=environment,
            hosts=hosts,
        )
        return Summary(200, body, outcome, images)
    failed_logs = [result.get("logs") or "" for result in results.values() if result.get("outcome") != "succeeded"]
    logs = "\n".join(part for part in failed_logs if part) or ("" if results else run.output_tail)
    body = DeployFailure(
        service=service,
        error=run_error(run, timeout),
        logs=logs,
        steps=steps,
        environment=environment,
        hosts=hosts,
    )
    return Summary(500, body, outcome, images)
