"""Deploys, one at a time per service, off the event loop, with their outcome mapped to the reference's bodies."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from api import logs
from api.history import History
from api.history import now as history_now
from api.models import DeployFailure, DeployRequest, DeploySuccess, HostOutcome, escape_surrogates
from api.runner import RunResult, deploy_extravars, run_playbook, stop_leftover_run
from api.settings import Settings
from api.text import printable

log = logging.getLogger("deploy")
BANNER = "=" * 40


@dataclass(frozen=True)
class RunningDeploy:
    """A deploy's claim on its service on each of its hosts: no other deploy of the service may touch them."""

    deployment_id: str
    service: str
    started: datetime
    hosts: tuple[str, ...]


class DeployConflict(Exception):
    def __init__(self, running: RunningDeploy):
        self.running = running
        super().__init__(
            f"A deployment of '{running.service}' is already running "
            f"(deployment {running.deployment_id}, started {running.started:%Y-%m-%d %H:%M:%S} UTC)"
        )


def new_deployment_id(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"


IMAGE_FIELDS = ("old_image", "old_image_id", "new_image", "new_image_id")


def tagged_steps(steps_by_host: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
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


def first_reached(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The result of the first host the rollout reached (its images stand for the deploy's), else of the first."""
    reached = [result for result in results.values() if result.get("outcome") != "not_reached"]
    return next(iter(reached or results.values()), {})


def host_outcomes(results: dict[str, dict[str, Any]]) -> dict[str, HostOutcome]:
    outcomes = {}
    for host, result in results.items():
        # A run stopped before it published its result has only its steps to tell the images.
        images = {
            **step_images(result.get("steps") or []),
            **{key: result[key] for key in IMAGE_FIELDS if result.get(key)},
        }
        outcomes[host] = HostOutcome(
            outcome=str(result.get("outcome") or "failed"),
            error=None if result.get("success") else result.get("error"),
            **images,
        )
    return outcomes


def outcome_body(
    service: str, run: RunResult, timeout: int, environment: str | None = None
) -> tuple[int, DeploySuccess | DeployFailure]:
    """The reference's 200 or 500 body for a finished run; many hosts are one outcome, their steps tagged by host."""
    results = run.results
    steps = tagged_steps({host: result.get("steps", []) for host, result in results.items()})
    first = first_reached(results)
    hosts = host_outcomes(results)
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
            environment=environment,
            hosts=hosts,
        )
    if run.status == "timeout":
        error = f"Deployment timed out after {timeout} s"
    elif run.status == "canceled":
        error = "Deployment canceled: the service is shutting down"
    else:
        many = len(results) > 1
        errors = [
            (f"{host}: " if many else "") + str(result.get("error") or "Deployment failed")
            for host, result in results.items()
            if not result.get("success")
        ]
        error = "; ".join(dict.fromkeys(errors)) if errors else "Deployment failed before it published a result"
    failed_logs = [result.get("logs") or "" for result in results.values() if not result.get("success")]
    logs = "\n".join(part for part in failed_logs if part) or ("" if results else run.output_tail)
    return 500, DeployFailure(
        service=service, error=error, logs=logs, steps=steps, environment=environment, hosts=hosts
    )


def outcome_of(run: RunResult) -> str:
    """One outcome for the history: a stopped run is interrupted; with many hosts, the worst host's outcome."""
    if run.status in ("timeout", "canceled"):
        return "interrupted"
    outcomes = [str(result.get("outcome") or "failed") for result in run.results.values()]
    if run.status == "successful" and outcomes and all(outcome == "succeeded" for outcome in outcomes):
        return "succeeded"
    for worst in ("rollback_failed", "failed", "rolled_back"):
        if worst in outcomes:
            return worst
    return "failed"


def restore_reason(record: dict[str, Any], status: dict[str, Any] | None) -> str | None:
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


def restore_hosts(record: dict[str, Any], statuses: dict[str, dict[str, Any]] | None) -> dict[str, str]:
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


def running_verdict(status: dict[str, Any], images: dict[str, Any]) -> str:
    """What a host's service runs, said against the images of the deploy there."""
    image_id = status.get("image_id")
    if not image_id:
        return "no container of the service exists"
    if image_id == images.get("new_image_id"):
        return f"the service runs the new image {status.get('image')}, {status.get('state')}"
    if image_id == images.get("old_image_id"):
        return f"the service runs the previous image {status.get('image')}, {status.get('state')}"
    return f"the service runs {status.get('image')} ({image_id[7:19]}), {status.get('state')}"


class Deployer:
    """Runs deploys and rollbacks, records them in the history, and recovers the records of a crashed process.

    Each finished record goes to the `on_finished` callbacks (metrics, notifications); an interrupted one once
    its service has been inspected, so that they can say what runs now.
    """

    def __init__(
        self, settings: Settings, history: History, on_finished: Sequence[Callable[[dict[str, Any]], None]] = ()
    ):
        self.settings = settings
        self.history = history
        self.on_finished = list(on_finished)
        self.shutting_down = threading.Event()
        self._running: dict[str, RunningDeploy] = {}  # by deployment id
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()

    def running(self) -> list[RunningDeploy]:
        with self._lock:
            return list(self._running.values())

    def claim(self, service: str, hosts: tuple[str, ...]) -> RunningDeploy:
        """The service on these hosts, for one deploy; DeployConflict when a deploy of it runs on one of them
        already. Deploys of a service to other hosts (another environment) run side by side."""
        now = datetime.now(UTC)
        with self._lock:
            for running in self._running.values():
                if running.service == service and set(running.hosts) & set(hosts):
                    raise DeployConflict(running)
            claim = RunningDeploy(new_deployment_id(now), service, now, hosts)
            self._running[claim.deployment_id] = claim
            return claim

    def release(self, claim: RunningDeploy) -> None:
        with self._lock:
            self._running.pop(claim.deployment_id, None)

    def reject(self, action: str, document: Any, source: str, status: int, detail: Any) -> str:
        """Record a signed request refused at validation (400, 403, 409, 422, 429); nothing ran."""
        fields = document if isinstance(document, dict) else {}

        def text(name: str, limit: int) -> str | None:
            value = fields.get(name)
            return escape_surrogates(value[:limit]) if isinstance(value, str) else None

        deployment_id = new_deployment_id(datetime.now(UTC))
        error = detail if isinstance(detail, str) else "; ".join(str(item) for item in detail)
        logs.bind(deployment_id=deployment_id, service=text("service", 128))
        self.history.create(
            id=deployment_id,
            action=action,
            service=text("service", 128),
            image=text("image", 255),
            outcome="rejected",
            repository=text("repository", 256),
            commit=text("commit", 128),
            message=text("message", 4096),
            source=source,
            finished_at=history_now(),
            error=error,
            http_status=status,
        )
        # The detail quotes what the request said: escaped, so that no signer can write a log line of its own.
        log.warning("[%s] %s refused (%d): %s", deployment_id, action, status, printable(error))
        return deployment_id

    async def start(
        self,
        request: DeployRequest,
        source: str,
        *,
        hosts: tuple[str, ...],
        action: str = "deploy",
        wait: bool = True,
        claim: RunningDeploy | None = None,
    ) -> tuple[str, int, DeploySuccess | DeployFailure | None]:
        """Start a deploy (or rollback) of the service on `hosts` (those of its environment that the request may
        reach: the playbook runs on no other), under `claim` or a claim of its own. With wait, the finished outcome;
        else (id, 202, None) at once."""
        claim = claim or self.claim(request.service, hosts)
        logs.bind(deployment_id=claim.deployment_id, service=request.service)
        try:
            self.history.create(
                id=claim.deployment_id,
                action=action,
                service=request.service,
                image=request.image,
                outcome="running",
                environment=request.environment,
                repository=request.repository,
                commit=request.commit,
                message=request.message,
                source=source,
                started_at=history_now(),
            )
        except BaseException:
            self.release(claim)
            raise
        self._log_start(claim, request, action, source)
        work = self._run(claim, request, action)
        if wait:
            status, body = await work
            return claim.deployment_id, status, body
        self._spawn(work, f"{action}-{claim.deployment_id}")
        return claim.deployment_id, 202, None

    async def _run(
        self, claim: RunningDeploy, request: DeployRequest, action: str
    ) -> tuple[int, DeploySuccess | DeployFailure]:
        deployment_id = claim.deployment_id
        host_steps: dict[str, list[dict[str, Any]]] = {}

        def on_step(step: str, announcement: str) -> None:
            logs.bind(step=step)
            log.info("[%s] %s", deployment_id, announcement)
            self.history.update(deployment_id, current_step=step)

        def on_steps(host: str, steps: list[dict[str, Any]]) -> None:
            host_steps[host] = steps
            # The images are known as soon as their steps are done, and the record says so while the deploy runs:
            # on each host (what a restart after a crash needs to restore it), and for the deploy (the first host).
            hosts = {name: {"outcome": "running", **step_images(done)} for name, done in host_steps.items()}
            images = step_images(next(iter(host_steps.values())))
            self.history.update(deployment_id, steps=tagged_steps(host_steps), hosts=hosts, **images)

        try:
            run = await asyncio.to_thread(
                run_playbook,
                run_id=deployment_id,
                playbook=self.playbook(action),
                extravars=deploy_extravars(
                    deployment_id,
                    request,
                    batches=self.settings.deploy_batches,
                    rollback_updated=self.settings.deploy_rollback_updated_hosts,
                ),
                limit=claim.hosts,
                inventory=self.settings.deploy_inventory,
                state_dir=self.settings.deploy_state_dir,
                timeout=self.settings.deploy_timeout,
                keep_runs=self.settings.deploy_keep_runs,
                cancel=self.shutting_down,
                on_step=on_step,
                on_steps=on_steps,
            )
            status, body = outcome_body(request.service, run, self.settings.deploy_timeout, request.environment)
            outcome = outcome_of(run)
            first = first_reached(run.results)
            images = {key: first[key] for key in IMAGE_FIELDS if first.get(key)}
            if body.hosts:
                images["hosts"] = {host: entry.model_dump() for host, entry in body.hosts.items()}
            self.history.update(
                deployment_id,
                outcome=outcome,
                finished_at=history_now(),
                current_step=None,
                steps=body.steps or (self.history.get(deployment_id) or {}).get("steps", []),
                error=getattr(body, "error", None),
                logs=getattr(body, "logs", None) or None,
                http_status=status,
                **images,
            )
        except BaseException as error:
            # Whatever went wrong here, the record must not stay `running`.
            self.history.update(
                deployment_id,
                outcome="interrupted",
                finished_at=history_now(),
                error=f"The deployment API failed while running the deploy: {error!r}",
                http_status=500,
            )
            self._finished(deployment_id)
            raise
        finally:
            self.release(claim)
        self._log_end(claim, status, body)
        if outcome == "interrupted" and self.shutting_down.is_set():
            # Stopped by a shutdown: the next start inspects the service, as after a crash.
            self.history.update(deployment_id, to_inspect=1)
        elif outcome == "interrupted":
            # A deploy stopped by its timeout: say what runs now, and restore the previous image if needed.
            self._spawn(self.inspect_interrupted([deployment_id]), f"inspect-{deployment_id}")
        else:
            self._finished(deployment_id)
        return status, body

    def _finished(self, deployment_id: str) -> None:
        record = self.history.get(deployment_id)
        for callback in self.on_finished if record else ():
            try:
                callback(record)
            except Exception:  # metrics or a notification must never fail a deploy
                log.exception("[%s] %r failed on the finished record", deployment_id, callback)

    def _spawn(self, work: Any, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def playbook(self, action: str) -> Path:
        """playbooks/deploy.yml, and its siblings rollback.yml and status.yml."""
        deploy = self.settings.deploy_playbook
        return deploy if action == "deploy" else deploy.with_name(f"{action}.yml")

    def recover(self) -> list[str]:
        """Mark the records a dead process left `running` as interrupted; with those a shutdown stopped, their
        services are inspected next (inspect_interrupted)."""
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

    async def inspect_interrupted(self, deployment_ids: list[str]) -> None:
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
            self._finished(deployment_id)

    async def _restore(self, record: dict[str, Any], reasons: dict[str, str]) -> None:
        deployment_id = record["id"]
        reason = (
            next(iter(reasons.values()))
            if len(reasons) == 1
            else "; ".join(f"{host}: {why}" for host, why in reasons.items())
        )
        request = DeployRequest(
            service=record["service"],
            environment=record.get("environment"),
            message=f"Automatic rollback after the interrupted deployment {deployment_id}: {reason}",
        )
        log.warning("⏪ [%s] %s: rolling back to the previous image", deployment_id, reason)
        try:
            rollback_id, status, _ = await self.start(
                request, "recovery", action="rollback", wait=True, hosts=tuple(reasons)
            )
        except DeployConflict as conflict:
            note = f"Not rolled back: {conflict}"
        else:
            rollback = self.history.get(rollback_id) or {}
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
        current = self.history.get(deployment_id) or {}
        self.history.update(deployment_id, error=f"{current.get('error')}. {note}")

    def _record_running_state(self, deployment_id: str, record: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
        """What the service runs on each host of the record's environment, recorded; None when it cannot be read."""
        extravars: dict[str, Any] = {"service": record["service"]}
        if record.get("environment"):
            extravars["deploy_environment"] = record["environment"]
        run = run_playbook(
            run_id=f"{deployment_id}-status",
            playbook=self.playbook("status"),
            extravars=extravars,
            inventory=self.settings.deploy_inventory,
            state_dir=self.settings.deploy_state_dir,
            timeout=min(self.settings.deploy_timeout, 120),
            keep_runs=self.settings.deploy_keep_runs,
            cancel=threading.Event(),
            stats_key="status",
        )
        record = self.history.get(deployment_id) or {}
        if not run.results:
            self.history.update(
                deployment_id, error=f"{record.get('error')}. What the service runs now could not be read: {run.status}"
            )
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
            error=f"{record.get('error') or 'Interrupted'}. Now {verdict}",
        )
        log.warning("[%s] %s: now %s", deployment_id, record.get("service"), verdict)
        return run.results

    async def drain(self, grace: float, timeout: float) -> None:
        """On shutdown: let running deploys finish for `grace` seconds, then stop them and write their records."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        self.shutting_down.set()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    @staticmethod
    def _log_start(claim: RunningDeploy, request: DeployRequest, action: str, source: str) -> None:
        log.info(BANNER)
        log.info("%s Started: %s", "🚀 Deployment" if action == "deploy" else "⏪ Rollback", request.service)
        log.info(BANNER)
        log.info("🆔 Deployment: %s", claim.deployment_id)
        log.info("📦 Service: %s", request.service)
        default_image = "(as the compose file names it)" if action == "deploy" else "(the previous kept image)"
        log.info("🖼️  Image: %s", request.image or default_image)
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
            log.error("❌ Deployment Failed: %s", printable(body.error))
            log.error("⏪ Rolled back to the previous image" if rolled_back else "⚠️  No rollback happened")
        log.info("[%s] answered %d", claim.deployment_id, status)
        log.info(BANNER)
