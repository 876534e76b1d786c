"""The registry watch: a recurring schedule with `watch: true` deploys at a tick only when the registry holds another
image under the name the service is deployed from (its compose file's, or the schedule's `image`) than the one its
container runs.

Each tick looks first: playbooks/status.yml with deploy_watch pulls that name on every host the schedule deploys to
(only the manifest, when nothing changed) and publishes the image ID it points to now beside the running one. The
engine answers for the registry with its own credentials, mirrors and insecure-registry settings, as for a deploy.
A new image becomes a planned deploy of the tick (trigger `watch`) and runs as one: the same checks, health check and
rollback. A look that finds nothing new, or finds again the image a watch deploy rolled back (until another is
pushed), deploys nothing and is counted (deployer_skipped_deployments_total).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from api.history import Record
from api.recovery import host_entry
from api.runner import RunResult

SkipReason = Literal["outside_window", "unchanged", "failed_before", "watch_failed"]
# The outcomes of a watch deploy after which the same image is not deployed again by a watch.
FAILED = ("failed", "rolled_back", "rollback_failed")


def short(image_id: str | None) -> str:
    """An image ID as `docker images` shows it."""
    return (image_id or "").removeprefix("sha256:")[:12] or "nothing"


@dataclass(frozen=True)
class Look:
    """What one look at the registry found: whether to deploy, else why not; and in one line what it saw."""

    deploy: bool
    reason: SkipReason | None
    detail: str


def no_answer(run: RunResult, host: str) -> str:
    """Why a host published no look, in one line."""
    if host in run.unreachable:
        return f"host unreachable: {run.unreachable[host]}"
    return run.failures.get(host) or run.engine_unreachable.get(host) or f"no answer (the run ended {run.status})"


def look(run: RunResult, hosts: Iterable[str], last: Record | None) -> Look:
    """What a watch's run of the status read on `hosts` says, given the watch's latest finished deploy (`last`)."""
    statuses: dict[str, Mapping[str, Any]] = {}
    silent: dict[str, str] = {}
    for host in hosts:
        answer = run.results.get(host)
        if isinstance(answer, dict) and answer.get("latest_image_id"):
            statuses[host] = answer
        else:
            silent[host] = no_answer(run, host)
    if silent:
        return Look(False, "watch_failed", "; ".join(f"{host}: {why}" for host, why in silent.items()))
    newer = {host: status for host, status in statuses.items() if status["latest_image_id"] != status.get("image_id")}
    if not newer:
        host, same = next(iter(statuses.items()))
        where = "every host runs it" if len(statuses) > 1 else f"{host} runs it"
        return Look(False, "unchanged", f"{same['latest_image']} is {short(same['latest_image_id'])}; {where}")
    host, status = next(iter(newer.items()))
    seen = f"{status['latest_image']} is {short(status['latest_image_id'])} in the registry"
    if last is not None and last["outcome"] in FAILED:
        failed_ids = {host_entry(last, host).get("new_image_id") for host in newer}
        if {entry["latest_image_id"] for entry in newer.values()} <= failed_ids:
            return Look(
                False,
                "failed_before",
                f"{seen}, which the watch's deploy {last['id']} {last['outcome'].replace('_', ' ')}: "
                "waiting for another push",
            )
    return Look(True, None, f"watch: {seen}; {host} runs {short(status.get('image_id'))}")
