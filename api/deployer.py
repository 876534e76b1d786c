"""Deploys and rollbacks: each one's claim on its service and hosts, its run off the event loop, and its record from
start to end (api/summary.py says what a finished run means; api/recovery.py takes over an interrupted one)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from api import contract, logs
from api.history import History, Record, RecordFields
from api.history import now as history_now
from api.models import DeployFailure, DeployRequest, DeploySuccess, escape_surrogates
from api.runner import deploy_extravars, run_playbook
from api.settings import Settings
from api.summary import step_images, summarize, tagged_steps
from api.text import printable
from module_utils.deploy_rules import RECREATE

log = logging.getLogger("deploy")
BANNER = "=" * 40
STARTED = {"deploy": "🚀 Deployment", "rollback": "⏪ Rollback", "remove": "🧹 Removal"}
DEFAULT_IMAGE = {
    "deploy": "(as the compose file names it)",
    "rollback": "(the previous kept image)",
    "remove": "(none: what the first deploy half-started goes)",
}


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


def refusal_text(detail: Any) -> str:
    """A refusal's detail as a record's error: a 422's problems joined on one line."""
    return detail if isinstance(detail, str) else "; ".join(str(item) for item in detail)


def new_deployment_id(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class StepInProgress:
    """A running deploy's current step and since when (Unix time), for the engine probes of api/engines.py."""

    claim: RunningDeploy
    step: str
    since: float


# Outcomes that may leave a service on no known healthy image: such a record awaits reconciliation (api/recovery.py).
UNSETTLED = ("interrupted", "rollback_failed")


class Deployer:
    """Runs deploys and rollbacks under their claims and records them in the history.

    Each finished record goes to the `on_finished` callbacks (metrics, notifications). One whose service may be left
    on no known healthy image (UNSETTLED) is marked awaiting reconciliation and goes to `on_awaiting` instead
    (api/reconciler.py, which checks its service first, so that they can say what runs now); a record of the
    reconciliation's own actions (source `recovery`) never is: the record it acts for keeps waiting when it fails.
    """

    def __init__(self, settings: Settings, history: History, on_finished: Sequence[Callable[[Record], None]] = ()):
        self.settings = settings
        self.history = history
        self.on_finished = list(on_finished)
        self.shutting_down = threading.Event()
        self._running: dict[str, RunningDeploy] = {}  # by deployment id
        self._steps: dict[str, tuple[str, float]] = {}  # by deployment id: the current step, since when
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.on_awaiting: Callable[[str], None] = lambda deployment_id: None

    def running(self) -> list[RunningDeploy]:
        with self._lock:
            return list(self._running.values())

    def steps_in_progress(self) -> list[StepInProgress]:
        """The running deploys whose playbook has announced a step, with that step and since when."""
        with self._lock:
            return [
                StepInProgress(claim, *self._steps[deployment_id])
                for deployment_id, claim in self._running.items()
                if deployment_id in self._steps
            ]

    def set_waiting(self, deployment_id: str, waiting: str | None, since: str | None = None) -> None:
        """Say in a running deploy's record what it waits for (None: nothing), and since when; nothing once it ended,
        so that a probe that answers late never writes over the end."""
        with self._lock:
            if deployment_id in self._running:
                self.history.update(deployment_id, waiting=waiting, waiting_since=since if waiting else None)

    def claim(self, service: str, hosts: tuple[str, ...], deployment_id: str | None = None) -> RunningDeploy:
        """The service on these hosts, for one deploy (a new one, or the planned deploy `deployment_id`);
        DeployConflict when a deploy of it runs on one of them already. Deploys of a service to other hosts (another
        environment) run side by side."""
        now = datetime.now(UTC)
        with self._lock:
            for running in self._running.values():
                if running.service == service and set(running.hosts) & set(hosts):
                    raise DeployConflict(running)
            claim = RunningDeploy(deployment_id or new_deployment_id(now), service, now, hosts)
            self._running[claim.deployment_id] = claim
            return claim

    def release(self, claim: RunningDeploy) -> None:
        with self._lock:
            self._running.pop(claim.deployment_id, None)
            self._steps.pop(claim.deployment_id, None)

    def reject(
        self, action: str, document: Any, source: str, status: int, detail: Any, trigger: str = "webhook"
    ) -> str:
        """Record a signed request refused at validation (400, 403, 409, 422, 423, 429); nothing ran."""
        fields = document if isinstance(document, dict) else {}

        def text(name: str, limit: int) -> str | None:
            value = fields.get(name)
            return escape_surrogates(value[:limit]) if isinstance(value, str) else None

        deployment_id = new_deployment_id(datetime.now(UTC))
        error = refusal_text(detail)
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
            trigger=trigger,
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
        strategy: str = RECREATE,
        extravars: Mapping[str, Any] | None = None,
        trigger: str = "webhook",
        planned: bool = False,
    ) -> tuple[str, int, DeploySuccess | DeployFailure | None]:
        """Start a deploy (or rollback) of the service on `hosts` (those of its environment that the request may
        reach: the playbook runs on no other), under `claim` or a claim of its own. With wait, the finished outcome;
        else (id, 202, None) at once. `strategy`: the service's on those hosts, which the progress follows;
        `extravars`: the reconciliation's own, besides the request's; `planned`: the claim is a planned deploy's,
        whose record exists (api/scheduler.py claimed it) and is brought up to date rather than created."""
        claim = claim or self.claim(request.service, hosts)
        logs.bind(deployment_id=claim.deployment_id, service=request.service)
        fields: RecordFields = {
            "action": action,
            "service": request.service,
            "image": request.image,
            "outcome": "running",
            "trigger": trigger,
            "environment": request.environment,
            "strategy": strategy,
            "repository": request.repository,
            "commit": request.commit,
            "message": request.message,
            "source": source,
            "started_at": history_now(),
            "targets": list(claim.hosts),
        }
        try:
            if planned:
                self.history.update(claim.deployment_id, **fields)
            else:
                self.history.create(**(fields | {"id": claim.deployment_id}))
        except BaseException:
            self.release(claim)
            raise
        self._log_start(claim, request, action, source)
        work = self._run(claim, request, action, source, strategy, dict(extravars or {}))
        if wait:
            status, body = await work
            return claim.deployment_id, status, body
        self._spawn(work, f"{action}-{claim.deployment_id}")
        return claim.deployment_id, 202, None

    async def _run(
        self,
        claim: RunningDeploy,
        request: DeployRequest,
        action: str,
        source: str,
        strategy: str,
        extravars: dict[str, Any],
    ) -> tuple[int, DeploySuccess | DeployFailure]:
        deployment_id = claim.deployment_id
        host_steps: dict[str, list[dict[str, Any]]] = {}

        def on_step(step: str, announcement: str) -> None:
            logs.bind(step=step)
            log.info("[%s] %s", deployment_id, announcement)
            with self._lock:
                self._steps[deployment_id] = (step, time.time())
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
                action=action,
                strategy=strategy,
                extravars=deploy_extravars(
                    deployment_id,
                    request,
                    batches=self.settings.deploy_batches,
                    rollback_updated=self.settings.deploy_rollback_updated_hosts,
                )
                | extravars,
                limit=claim.hosts,
                inventory=self.settings.deploy_inventory,
                state_dir=self.settings.deploy_state_dir,
                timeout=self.settings.deploy_timeout,
                keep_runs=self.settings.deploy_keep_runs,
                cancel=self.shutting_down,
                on_step=on_step,
                on_steps=on_steps,
            )
            recorded = self.history.get(deployment_id) or {}
            summary = summarize(
                request.service,
                run,
                self.settings.deploy_timeout,
                request.environment,
                hosts=claim.hosts,
                current_step=recorded.get("current_step"),
            )
            status, body, outcome = summary.status_code, summary.body, summary.outcome
            images: dict[str, Any] = dict(summary.images)
            if body.hosts:
                # A host that published nothing keeps the images its finished steps named while it ran.
                running = recorded.get("hosts") or {}
                images["hosts"] = {
                    host: {
                        **running.get(host, {}),
                        **{key: value for key, value in entry.model_dump().items() if value},
                    }
                    for host, entry in body.hosts.items()
                }
            self.history.update(
                deployment_id,
                outcome=outcome,
                finished_at=history_now(),
                current_step=None,
                steps=[step.model_dump() for step in body.steps] or recorded.get("steps", []),
                error=getattr(body, "error", None),
                logs=getattr(body, "logs", None) or None,
                http_status=status,
                **images,
            )
        except BaseException as error:
            # Whatever went wrong here, the record must not stay `running`; what the service runs is not known.
            self.history.update(
                deployment_id,
                outcome="interrupted",
                finished_at=history_now(),
                error=f"The deployment API failed while running the deploy: {error!r}",
                http_status=500,
            )
            self._settle(deployment_id, "interrupted", source)
            raise
        finally:
            self.release(claim)
            # After the release: a probe that answers late no longer writes (set_waiting).
            self.history.update(deployment_id, waiting=None, waiting_since=None)
        self._log_end(claim, action, status, body)
        self._settle(deployment_id, outcome, source)
        return status, body

    def _settle(self, deployment_id: str, outcome: str, source: str) -> None:
        """A record that may leave its service on no known healthy image awaits reconciliation, which checks it and
        brings the service back once its hosts answer (after a shutdown, the next start does: Recovery.recover). Any
        other goes to the on_finished callbacks now."""
        if outcome in UNSETTLED and source != "recovery":
            self.history.update(deployment_id, to_inspect=1, awaiting_since=history_now())
            if not self.shutting_down.is_set():
                self.on_awaiting(deployment_id)
        else:
            self.finished(deployment_id)

    def finished(self, deployment_id: str) -> None:
        """Pass the finished record to the on_finished callbacks."""
        record = self.history.get(deployment_id)
        if record is None:
            return
        for callback in self.on_finished:
            try:
                callback(record)
            except Exception:  # metrics or a notification must never fail a deploy
                log.exception("[%s] %r failed on the finished record", deployment_id, callback)

    def _spawn(self, work: Any, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def playbook(self, action: str) -> Path:
        """playbooks/deploy.yml (DEPLOY_PLAYBOOK), and its siblings (contract.SIBLINGS)."""
        return contract.playbook(self.settings.deploy_playbook, action)

    async def drain(self, grace: float, timeout: float, others: Sequence[asyncio.Task[Any]] = ()) -> None:
        """On shutdown: let running deploys (and `others`, the reconciliation's checks, whose rollbacks are deploys
        too) finish for `grace` seconds, then stop them and write their records."""
        if self._tasks or others:
            await asyncio.wait([*self._tasks, *others], timeout=grace)
        self.shutting_down.set()
        if self._tasks or others:
            await asyncio.wait([*self._tasks, *others], timeout=timeout)

    @staticmethod
    def _log_start(claim: RunningDeploy, request: DeployRequest, action: str, source: str) -> None:
        log.info(BANNER)
        log.info("%s Started: %s", STARTED.get(action, STARTED["deploy"]), request.service)
        log.info(BANNER)
        log.info("🆔 Deployment: %s", claim.deployment_id)
        log.info("📦 Service: %s", request.service)
        log.info("🖼️  Image: %s", request.image or DEFAULT_IMAGE.get(action, DEFAULT_IMAGE["deploy"]))
        if request.repository or request.commit:
            log.info("🔖 Source: %r @ %r from %s", request.repository, request.commit, source)
        if request.message:
            log.info("💬 Message: %r", request.message)
        log.info("🕐 Time: %s", f"{claim.started:%Y-%m-%d %H:%M:%S} UTC")
        log.info(BANNER)

    @staticmethod
    def _log_end(claim: RunningDeploy, action: str, status: int, body: DeploySuccess | DeployFailure) -> None:
        log.info(BANNER)
        if isinstance(body, DeploySuccess) and action == "remove":
            log.info("✅ Removed what the first deploy half-started: %s", body.old_image or "(none)")
        elif isinstance(body, DeploySuccess):
            log.info("✅ Deployment Successful! %s -> %s", body.old_image or "(none)", body.new_image)
        else:
            rolled_back = any(step.step == "rollback" and step.rolled_back for step in body.steps)
            log.error("❌ Deployment Failed: %s", printable(body.error))
            log.error("⏪ Rolled back to the previous image" if rolled_back else "⚠️  No rollback happened")
        log.info("[%s] answered %d", claim.deployment_id, status)
        log.info(BANNER)
