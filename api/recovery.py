"""Crash recovery: the records a stopped process left running, and the services an interrupted deploy left behind.

At start, records still `running` become `interrupted`. For each interrupted deploy (also one stopped by its timeout)
the status playbook reads what the service runs on each host; where the deploy had replaced the previous image with one
that never passed its health check, an automatic rollback brings it back (DEPLOY_RECOVER_INTERRUPTED). What recovery
found and did is kept in the record's own fields (running_*, recovery, recovery_action, recovered_by), beside the
deploy's error.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import Any

from api import contract, logs
from api.deployer import DeployConflict, Deployer
from api.history import Record
from api.history import now as history_now
from api.models import DeployRequest
from api.runner import run_playbook, stop_leftover_run

log = logging.getLogger("deploy")


def restore_reason(record: Mapping[str, Any], status: Mapping[str, Any] | None) -> str | None:
    """Why an interrupted deploy's service should go back to its previous image, or None when it should not.

    Only when the deploy had replaced the previous image (the service runs something else, or nothing) and the
    new one never passed its health check. A first deploy has nothing to go back to.
    """
    if status is None or not record.get("old_image_id"):
        return None
    healthy = any(step.get("step") == "health_check" and step.get("success") for step in record.get("steps", []))
    if healthy or status.get("image_id") == record["old_image_id"]:
        return None
    if not status.get("image_id"):
        return "the service has no container"
    return "the service runs an image that never passed its health check"


def restore_hosts(record: Mapping[str, Any], statuses: Mapping[str, Mapping[str, Any]] | None) -> dict[str, str]:
    """The hosts of an interrupted deploy to restore to their previous image, and why (restore_reason)."""
    hosts = record.get("hosts") or {}
    reasons = {}
    for host, status in (statuses or {}).items():
        entry = hosts.get(host)
        if entry is None and (hosts or len(statuses or {}) > 1):
            continue  # a host the deploy never reached
        steps = [step for step in record.get("steps", []) if step.get("host", host) == host]
        reason = restore_reason({"old_image_id": (entry or record).get("old_image_id"), "steps": steps}, status)
        if reason is not None:
            reasons[host] = reason
    return reasons


def running_verdict(status: Mapping[str, Any], images: Mapping[str, Any]) -> str:
    """What a host's service runs, said against the images of the deploy there."""
    image_id = status.get("image_id")
    if not image_id:
        return "no container of the service exists"
    if image_id == images.get("new_image_id"):
        return f"the service runs the new image {status.get('image')}, {status.get('state')}"
    if image_id == images.get("old_image_id"):
        return f"the service runs the previous image {status.get('image')}, {status.get('state')}"
    return f"the service runs {status.get('image')} ({image_id[7:19]}), {status.get('state')}"


class Recovery:
    """Recovers for a Deployer: at start (recover, then inspect), and whenever one of its deploys is interrupted."""

    def __init__(self, deployer: Deployer):
        self.deployer = deployer
        self.settings = deployer.settings
        self.history = deployer.history
        deployer.on_interrupted = self.inspect

    def recover(self) -> list[str]:
        """Mark the records a dead process left `running` as interrupted; with those a shutdown stopped, their
        services are inspected next (inspect)."""
        interrupted = []
        for record in self.history.unfinished():
            if record["outcome"] == "running":
                step = record["current_step"] or "its start"
                self.history.update(
                    record["id"],
                    outcome="interrupted",
                    finished_at=history_now(),
                    current_step=None,
                    error=f"Interrupted: the deployment API stopped during {step}",
                    http_status=None,
                )
                log.error(
                    "⚠️  [%s] %s of %s was interrupted during %s",
                    record["id"],
                    record["action"],
                    record["service"],
                    step,
                )
            self.history.update(record["id"], to_inspect=0)
            interrupted.append(record["id"])
        return interrupted

    async def inspect(self, deployment_ids: list[str]) -> None:
        """For each interrupted deploy: record what its service really runs on each host, then restore the previous
        image on the hosts where the deploy had replaced it with one that never passed its health check
        (DEPLOY_RECOVER_INTERRUPTED)."""
        for deployment_id in deployment_ids:
            record = self.history.get(deployment_id)
            if not record or not record["service"]:
                continue
            logs.bind(deployment_id=deployment_id, service=record["service"])
            run_dir = self.settings.deploy_state_dir / "runs" / deployment_id
            left = await asyncio.to_thread(stop_leftover_run, run_dir)
            if left:
                log.warning("[%s] stopped %d process(es) left from the interrupted run", deployment_id, left)
            statuses = await asyncio.to_thread(self._record_running_state, deployment_id, record)
            reasons = restore_hosts(record, statuses)
            if reasons and self.settings.deploy_recover_interrupted == "rollback":
                await self._restore(record, reasons)
                # The rollback bound its own id; what follows is about the interrupted deploy again.
                logs.bind(deployment_id=deployment_id)
            self.deployer.finished(deployment_id)

    async def _restore(self, record: Record, reasons: dict[str, str]) -> None:
        deployment_id = record["id"]
        reason = (
            next(iter(reasons.values()))
            if len(reasons) == 1
            else "; ".join(f"{host}: {why}" for host, why in reasons.items())
        )
        request = DeployRequest(
            service=record.get("service") or "",
            environment=record.get("environment"),
            message=f"Automatic rollback after the interrupted deployment {deployment_id}: {reason}",
        )
        log.warning("⏪ [%s] %s: rolling back to the previous image", deployment_id, reason)
        rollback_id: str | None = None
        try:
            started, status, _ = await self.deployer.start(
                request, "recovery", action="rollback", wait=True, hosts=tuple(reasons)
            )
        except DeployConflict as conflict:
            note = f"Not rolled back: {conflict}"
        else:
            rollback_id = started
            rollback: Mapping[str, Any] = self.history.get(started) or {}
            before = record.get("hosts") or {}
            after = rollback.get("hosts") or {}
            restored = all(
                (after.get(host) or rollback).get("new_image_id") == (before.get(host) or record).get("old_image_id")
                for host in reasons
            )
            note = (
                f"Rolled back to the previous image by {rollback_id}"
                if status == 200 and restored
                else f"The automatic rollback {rollback_id} ended {rollback.get('outcome')}: {rollback.get('error')}"
            )
        self.history.update(deployment_id, recovery_action=note, recovered_by=rollback_id)

    def _record_running_state(self, deployment_id: str, record: Record) -> dict[str, dict[str, Any]] | None:
        """What the service runs on each host of the record's environment, recorded; None when it cannot be read."""
        extravars: dict[str, Any] = {contract.VAR_SERVICE: record["service"]}
        if record.get("environment"):
            extravars[contract.VAR_ENVIRONMENT] = record["environment"]
        run = run_playbook(
            run_id=f"{deployment_id}-status",
            playbook=self.deployer.playbook("status"),
            extravars=extravars,
            inventory=self.settings.deploy_inventory,
            state_dir=self.settings.deploy_state_dir,
            timeout=min(self.settings.deploy_timeout, 120),
            keep_runs=self.settings.deploy_keep_runs,
            cancel=threading.Event(),
            stats_key=contract.STATUS_KEY,
        )
        record = self.history.get(deployment_id) or {}
        if not run.results:
            self.history.update(deployment_id, recovery=f"What the service runs now could not be read: {run.status}")
            return None
        hosts = record.get("hosts") or {}
        verdicts = {host: running_verdict(status, hosts.get(host) or record) for host, status in run.results.items()}
        verdict = (
            next(iter(verdicts.values()))
            if len(verdicts) == 1
            else "; ".join(f"on {host} {text}" for host, text in verdicts.items())
        )
        status = next(iter(run.results.values()))
        self.history.update(
            deployment_id,
            running_image=status.get("image"),
            running_image_id=status.get("image_id"),
            running_state=status.get("state"),
            recovery=f"Now {verdict}",
        )
        log.warning("[%s] %s: now %s", deployment_id, record.get("service"), verdict)
        return run.results
