"""Deploys, one at a time per service, off the event loop, with their outcome mapped to the reference's bodies."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from api.models import DeployFailure, DeployRequest, DeploySuccess
from api.runner import RunResult, run_deploy
from api.settings import Settings

log = logging.getLogger("deploy")
BANNER = "=" * 40


@dataclass(frozen=True)
class RunningDeploy:
    deployment_id: str
    service: str
    started: datetime


class DeployConflict(Exception):
    def __init__(self, running: RunningDeploy):
        self.running = running
        super().__init__(
            f"A deployment of '{running.service}' is already running "
            f"(deployment {running.deployment_id}, started {running.started:%Y-%m-%d %H:%M:%S} UTC)"
        )


def new_deployment_id(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"


def outcome_body(service: str, run: RunResult, timeout: int) -> tuple[int, DeploySuccess | DeployFailure]:
    """The reference's 200 or 500 body for a finished run; many hosts are one outcome, their steps tagged by host."""
    results = run.results
    many_hosts = len(results) > 1

    def steps_of(host: str, result: dict[str, Any]) -> list[dict[str, Any]]:
        return [{**step, "host": host} if many_hosts else step for step in result.get("steps", [])]

    steps = [step for host, result in results.items() for step in steps_of(host, result)]
    first = next(iter(results.values()), {})
    succeeded = (
        run.status == "successful" and bool(results) and all(result.get("success") for result in results.values())
    )
    if succeeded:
        return 200, DeploySuccess(
            service=service,
            message=first.get("message", "Deployment successful"),
            old_image=first.get("old_image"),
            new_image=first.get("new_image"),
            steps=steps,
        )
    if run.status == "timeout":
        error = f"Deployment timed out after {timeout} s"
    elif run.status == "canceled":
        error = "Deployment canceled: the service is shutting down"
    else:
        failed = [result for result in results.values() if not result.get("success")]
        errors = [result.get("error") or "Deployment failed" for result in failed]
        error = "; ".join(dict.fromkeys(errors)) if errors else "Deployment failed before it published a result"
    failed_logs = [result.get("logs") or "" for result in results.values() if not result.get("success")]
    logs = "\n".join(part for part in failed_logs if part) or ("" if results else run.output_tail)
    return 500, DeployFailure(service=service, error=error, logs=logs, steps=steps)


class Deployer:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.shutting_down = threading.Event()
        self._running: dict[str, RunningDeploy] = {}
        self._lock = threading.Lock()

    def running(self) -> list[RunningDeploy]:
        with self._lock:
            return list(self._running.values())

    def _claim(self, service: str) -> RunningDeploy:
        now = datetime.now(UTC)
        with self._lock:
            if service in self._running:
                raise DeployConflict(self._running[service])
            claim = RunningDeploy(new_deployment_id(now), service, now)
            self._running[service] = claim
            return claim

    def _release(self, claim: RunningDeploy) -> None:
        with self._lock:
            self._running.pop(claim.service, None)

    async def deploy(self, request: DeployRequest, source: str) -> tuple[str, int, DeploySuccess | DeployFailure]:
        claim = self._claim(request.service)
        try:
            self._log_start(claim, request, source)
            run = await asyncio.to_thread(
                run_deploy,
                deployment_id=claim.deployment_id,
                request=request,
                inventory=self.settings.deploy_inventory,
                playbook=self.settings.deploy_playbook,
                state_dir=self.settings.deploy_state_dir,
                timeout=self.settings.deploy_timeout,
                keep_runs=self.settings.deploy_keep_runs,
                cancel=self.shutting_down,
                on_step=lambda announcement: log.info("[%s] %s", claim.deployment_id, announcement),
            )
        finally:
            self._release(claim)
        status, body = outcome_body(request.service, run, self.settings.deploy_timeout)
        self._log_end(claim, status, body)
        return claim.deployment_id, status, body

    @staticmethod
    def _log_start(claim: RunningDeploy, request: DeployRequest, source: str) -> None:
        log.info(BANNER)
        log.info("🚀 Deployment Started: %s", request.service)
        log.info(BANNER)
        log.info("🆔 Deployment: %s", claim.deployment_id)
        log.info("📦 Service: %s", request.service)
        log.info("🖼️  Image: %s", request.image or "(as the compose file names it)")
        if request.repository or request.commit:
            log.info("🔖 Source: %r @ %r from %s", request.repository, request.commit, source)
        if request.message:
            log.info("💬 Message: %r", request.message)
        log.info("🕐 Time: %s", f"{claim.started:%Y-%m-%d %H:%M:%S} UTC")
        log.info(BANNER)

    @staticmethod
    def _log_end(claim: RunningDeploy, status: int, body: DeploySuccess | DeployFailure) -> None:
        log.info(BANNER)
        if isinstance(body, DeploySuccess):
            log.info("✅ Deployment Successful! %s -> %s", body.old_image or "(none)", body.new_image)
        else:
            rolled_back = any(step.get("step") == "rollback" and step.get("rolled_back") for step in body.steps)
            log.error("❌ Deployment Failed: %s", body.error)
            log.error("⏪ Rolled back to the previous image" if rolled_back else "⚠️  No rollback happened")
        log.info("[%s] answered %d", claim.deployment_id, status)
        log.info(BANNER)
