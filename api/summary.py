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


def succeeded(run: RunResult, hosts: tuple[str, ...] = ()) -> bool:
    """The one definition of success: the run ended well, and every host it was for published a success."""
    return (
        run.status == "successful"
        and bool(run.results)
        and not missing_hosts(run, hosts)
        and all(result.get("outcome") == "succeeded" for result in run.results.values())
    )


def missing_hosts(run: RunResult, hosts: tuple[str, ...]) -> tuple[str, ...]:
    """The hosts the run was for that published no record; with `hosts` unknown (empty), none, or a nameless one
    when no host published anything."""
    if not hosts:
        return () if run.results else ("",)
    return tuple(host for host in hosts if host not in run.results)


def missing_causes(run: RunResult, hosts: tuple[str, ...], step: str | None = None) -> dict[str, tuple[str, str]]:
    """Why each host the run was for published no record, as (outcome, one line that names the cause and the host).

    A record is published in the deploy's `always`, which a host reaches unless its connection dropped (Ansible marks
    it unreachable and runs nothing more there: no rescue, no always) or the run itself ended first (ansible-playbook
    killed, a crash): the host may be left in the middle of its deploy, so it is `interrupted`, and reconciled. A host
    that failed a task before its deploy began (a refusal of the playbook's own preflight) changed nothing: `failed`.
    """
    during = f" during {step}" if step else ""
    causes: dict[str, tuple[str, str]] = {}
    for host in missing_hosts(run, hosts):
        name = host or "any host"
        if host in run.unreachable:
            causes[host] = (
                "interrupted",
                f"{name} became unreachable{during} before it published its result: {run.unreachable[host]}",
            )
        elif run.rc is None:
            causes[host] = (
                "interrupted",
                f"The playbook run ended (ansible-playbook was killed by a signal){during} before {name} published "
                "its result",
            )
        elif host in run.failures:
            causes[host] = ("failed", f"{name}: {run.failures[host]}" if host else run.failures[host])
        elif host == "" and run.failures:
            causes[host] = ("failed", "; ".join(dict.fromkeys(run.failures.values())))
        else:
            causes[host] = (
                "interrupted",
                f"The playbook run ended (exit code {run.rc}){during} before {name} published its result",
            )
    return causes


def outcome_of(run: RunResult, hosts: tuple[str, ...], causes: Mapping[str, tuple[str, str]]) -> str:
    """One outcome for the history: a stopped run is interrupted, as is one that ended before a host it was for
    published its record (`causes`: missing_causes); with many hosts, the worst host's outcome."""
    if run.status in ("timeout", "canceled"):
        return "interrupted"
    if any(outcome == "interrupted" for outcome, _ in causes.values()):
        return "interrupted"
    if succeeded(run, hosts):
        return "succeeded"
    outcomes = {str(result.get("outcome") or "failed") for result in run.results.values()}
    return next((worst for worst in WORST_FIRST if worst in outcomes), "failed")


def refused_at_preflight(run: RunResult) -> bool:
    """Whether the deploy was refused before anything changed: some host's preflight refused it (two containers of the
    service cannot run side by side there, or the deploy runs in the service's own container: the API's own service),
    and every other host was not reached. A host that could not be reached, or whose Docker engine did not answer,
    refused nothing, whichever step its failure is recorded at."""
    not_asked = {*run.unreachable, *run.engine_unreachable}
    refused = [
        host
        for host, result in run.results.items()
        if host not in not_asked
        and result.get("outcome") == "failed"
        and any(step.get("step") == "preflight" and not step.get("success") for step in result.get("steps") or [])
    ]
    return bool(refused) and all(
        host in refused or result.get("outcome") == "not_reached" for host, result in run.results.items()
    )


def first_reached(results: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The result of the first host the rollout reached (its images stand for the deploy's), else of the first."""
    reached = [result for result in results.values() if result.get("outcome") != "not_reached"]
    return next(iter(reached or results.values()), {})


def host_outcomes(
    results: Mapping[str, dict[str, Any]], causes: Mapping[str, tuple[str, str]] | None = None
) -> dict[str, HostOutcome]:
    """Each host's outcome: its published record's, or for a host that published none, why (missing_causes)."""
    published = {
        host: HostOutcome(
            outcome=str(result.get("outcome") or "failed"),
            error=None if result.get("outcome") == "succeeded" else result.get("error"),
            **host_images(result),
        )
        for host, result in results.items()
    }
    missing = {host: HostOutcome(outcome=outcome, error=error) for host, (outcome, error) in (causes or {}).items()}
    return {**published, **{host: entry for host, entry in missing.items() if host}}


@dataclass(frozen=True)
class Summary:
    """What a finished run means: the answer and its status, the history's outcome, and the deploy's images (those
    of the first host the rollout reached)."""

    status_code: int
    body: DeploySuccess | DeployFailure
    outcome: str
    images: dict[str, Any] = field(default_factory=dict)


def run_error(run: RunResult, timeout: int, causes: Mapping[str, tuple[str, str]] | None = None) -> str:
    """Why a run that did not succeed failed, in one line; with many hosts, each host's, and why a host published no
    record (missing_causes)."""
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
    errors += [error for _, error in (causes or {}).values()]
    return "; ".join(dict.fromkeys(errors)) if errors else "Deployment failed before it published a result"


def summarize(
    service: str,
    run: RunResult,
    timeout: int,
    environment: str | None = None,
    *,
    hosts: tuple[str, ...] = (),
    current_step: str | None = None,
) -> Summary:
    """The summary of a finished run for `hosts` (the hosts it was for; empty: those that published), `current_step`
    the one in progress when it ended; many hosts are one outcome, their steps tagged by host."""
    results = run.results
    steps = [
        StepRecord.model_validate(step)
        for step in tagged_steps({host: result.get("steps", []) for host, result in results.items()})
    ]
    first = first_reached(results)
    if run.status in ("timeout", "canceled"):
        # Stopped: no host's deploy ended, whatever a host had published by then.
        stopped = ("interrupted", run_error(run, timeout))
        causes: dict[str, tuple[str, str]] = {}
        outcomes = {
            host: entry.model_copy(update={"outcome": "interrupted"}) for host, entry in host_outcomes(results).items()
        }
        outcomes.update(host_outcomes({}, {host: stopped for host in hosts if host not in results}))
    else:
        causes = missing_causes(run, hosts, current_step)
        outcomes = host_outcomes(results, causes)
    images = host_images(first) if first else {}
    outcome = outcome_of(run, hosts, causes)
    if outcome == "succeeded":
        body: DeploySuccess | DeployFailure = DeploySuccess(
            service=service,
            message=first.get("message", "Deployment successful"),
            old_image=images.get("old_image"),
            new_image=images.get("new_image"),
            steps=steps,
            environment=environment,
            hosts=outcomes,
        )
        return Summary(200, body, outcome, images)
    failed_logs = [result.get("logs") or "" for result in results.values() if result.get("outcome") != "succeeded"]
    logs = "\n".join(part for part in failed_logs if part) or ("" if results else run.output_tail)
    body = DeployFailure(
        service=service,
        error=run_error(run, timeout, causes),
        logs=logs,
        steps=steps,
        environment=environment,
        hosts=outcomes,
    )
    # A refusal is the request's fault, as the API's own refusals are; nothing was changed.
    code = 400 if outcome == "failed" and not causes and refused_at_preflight(run) else 500
    return Summary(code, body, outcome, images)
