"""Planned deploys and recurring schedules: a signed request with `at` waits in the history (outcome `scheduled`) until
its time, then runs as a webhook deploy answered with 202 does: the same checks (api/admission.py, against the inventory
of that moment and with the signers recorded at receipt) and the same Deployer.start.

One asyncio task passes over the planned deploys whose time has come (tick), then sleeps until the earliest next one,
or until it is woken (a new plan, a cancel). A planned deploy leaves `scheduled` only through
History.leave_scheduled, so of its start, its cancel and its refusal only one ever happens: it runs at most once, and
a crash just after its start leaves it `running`, which recovery marks interrupted at the next start.

When it comes to run, a deploy of its service may be running: it waits for it, trying again every second, until
DEPLOY_SCHEDULE_GRACE seconds after its planned time; then it is missed. At start, a planned deploy late by more than
the grace (the API was down at its time) is missed too; one late by less runs at once.

A recurring schedule (deploy_services.<name>.schedule, api/schedules.py) becomes a planned deploy when its tick comes,
and runs as one from then on (trigger `schedule`, planned_at the tick); a watch's tick looks at the registry first
(api/watch.py), in a task of its own, and becomes one (trigger `watch`) only when it finds a new image. A tick at which
the service's deploy window is closed deploys nothing, nor does a look that finds nothing to deploy: both are counted
(on_skip), as skipped. Each pass records the latest tick since the
one recorded before (History.record_tick: one record per service and tick, so a second pass or a restart creates
none); ticks before it, passed while the API was down, do not count. A schedule seen for the first time, or changed,
counts from then on. A tick deploys the service once, to the hosts the default environment (DEPLOY_ENVIRONMENT)
reaches, signed by the secret sets of its entries (WEBHOOK_SECRET where it has no secret_env).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from fastapi import Request

from api import contract, logs
from api.admission import Admitted, Refused, admit, check_window, claim_service, validate
from api.deployer import Deployer, new_deployment_id, refusal_text
from api.history import History, Record
from api.history import now as history_now
from api.inventory import Environment, Inventory, InventoryView, ServiceSchedule, service_schedules
from api.models import Trigger, epoch, utc_at, utc_text
from api.recovery import PROBE_KEEP_RUNS, PROBES_DIR, probe_run_id
from api.runner import RunResult, run_playbook
from api.security import RateLimits
from api.settings import Settings
from api.watch import SkipReason, look

log = logging.getLogger("deploy")

# How often a planned deploy whose service is busy tries again.
BUSY_RETRY_SECONDS = 1.0
# The longest sleep: asyncio sleeps by the monotonic clock, which stands still while the machine is suspended, and
# planned times are wall-clock times, so the scheduler looks at the wall clock at least this often.
LONGEST_SLEEP_SECONDS = 60.0
# The fields of a planned deploy's record that are its request's, checked again when it runs.
REQUEST_FIELDS = ("service", "image", "environment", "repository", "commit", "message")


def get_scheduler(request: Request) -> Scheduler:
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler


class Scheduler:
    """The planned deploys of a Deployer: plan and cancel them, and run each at its time.

    `clock` is the wall clock (Unix seconds) planned times are held against: the app's, which unit tests replace; they
    drive a pass with tick() and need not wait for the task.
    """

    def __init__(
        self,
        settings: Settings,
        deployer: Deployer,
        inventory: Inventory,
        rate_limits: RateLimits,
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.deployer = deployer
        self.history: History = deployer.history
        self.inventory = inventory
        self.rate_limits = rate_limits
        self.clock = clock
        self._woken = asyncio.Event()
        self._stop = asyncio.Event()
        self._passing = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        # When this process began to run planned deploys (start() reads the clock again): one planned before, by more
        # than the grace, was missed while the API was down.
        self._started_at = clock()
        # The watches looking at the registry, by service; and the tick that came during a look, looked at after it.
        self._looking: dict[str, asyncio.Task[None]] = {}
        self._next_look: dict[str, datetime] = {}
        # Why each service's latest tick that deployed nothing did not: the log says it again only when it changed.
        self._last_skip: dict[str, str] = {}
        # A tick that deployed nothing, and why (the metrics' skipped counter).
        self.on_skip: Callable[[str, SkipReason], None] = lambda service, reason: None

    def plan(
        self, admitted: Admitted, action: str, source: str, signers: frozenset[str], trigger: Trigger = "webhook"
    ) -> str:
        """Record a request with `at` as a planned deploy; its id."""
        request = admitted.request
        deployment_id = new_deployment_id(datetime.now(UTC))
        logs.bind(deployment_id=deployment_id, service=request.service)
        self.history.create(
            id=deployment_id,
            action=action,
            outcome="scheduled",
            trigger=trigger,
            planned_at=request.at,
            source=source,
            signers=sorted(signers),
            service=request.service,
            image=request.image,
            environment=request.environment,
            repository=request.repository,
            commit=request.commit,
            message=request.message,
        )
        log.info("🗓️  [%s] %s of %s planned for %s", deployment_id, action, request.service, request.at)
        self.wake()
        return deployment_id

    def cancel(self, deployment_id: str) -> bool:
        """Cancel a planned deploy that has not started; False when it is not `scheduled` (any more)."""
        if not self.history.leave_scheduled(deployment_id, outcome="cancelled", finished_at=history_now()):
            return False
        log.info("🗓️  [%s] planned deploy cancelled", deployment_id)
        self.wake()
        return True

    def wake(self) -> None:
        """Have the task look at the planned deploys again now; from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._woken.set)

    def start(self) -> None:
        """Run the planned deploys from now on: first those whose time passed while the API was down."""
        self._loop = asyncio.get_running_loop()
        self._started_at = self.clock()
        self._task = asyncio.create_task(self._run(), name="scheduler")

    async def stop(self, timeout: float) -> None:
        """No planned deploy starts any more; those started go on (the deployer's drain ends them)."""
        self._stop.set()
        self._woken.set()
        # A look under way ends with the deployer's shutting_down; none records a deploy any more.
        tasks = [task for task in (self._task, *self._looking.values()) if task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout)
            for task in late:
                task.cancel()

    async def _run(self) -> None:
        while not self._stop.is_set():
            # Cleared before the pass: a wake during it makes the next sleep end at once.
            self._woken.clear()
            try:
                delay = await self.tick()
            except Exception:  # the scheduler must outlive a pass that broke
                log.exception("The scheduler's pass over the planned deploys failed")
                delay = BUSY_RETRY_SECONDS
            await self._sleep(LONGEST_SLEEP_SECONDS if delay is None else min(delay, LONGEST_SLEEP_SECONDS))

    async def _sleep(self, seconds: float) -> None:
        """Sleep until woken (or stopped), at most `seconds`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), seconds)

    async def tick(self) -> float | None:
        """One pass: record the schedules' ticks that came, then start, refuse or mark missed each planned deploy
        whose time has come. The seconds until the next pass is due: a planned time or a tick ahead, or the retry of
        a busy service; None when nothing is planned."""
        async with self._passing:
            now = self.clock()
            view = await asyncio.to_thread(self.inventory.view)
            due_in = self._record_ticks(view, now)
            for record in self.history.scheduled():
                planned = epoch(record["planned_at"] or "")
                if planned > now:
                    return least(due_in, planned - now)
                if not await self._run_due(record, planned, now):
                    due_in = least(due_in, BUSY_RETRY_SECONDS)
            return due_in

    def _record_ticks(self, view: InventoryView, now: float) -> float | None:
        """Act on the latest tick of each schedule that came since its last one: record its planned deploy, look at
        the registry for a watch, or skip it outside the deploy window. The seconds until the next tick."""
        due_in: float | None = None
        for entry in service_schedules(view).values():
            service, schedule = entry.service, entry.schedule
            state = self.history.schedule_state(service)
            if state is None or state[:2] != (schedule.rule, schedule.timezone):
                self.history.remember_schedule(service, schedule.rule, schedule.timezone, utc_at(now))
            else:
                tick = schedule.latest_tick(epoch(state[2]), now)
                if tick is not None:
                    self._act_on_tick(entry, tick, self._environment(view))
            due_in = least(due_in, schedule.next_tick(now).timestamp() - now)
        return due_in

    def _environment(self, view: InventoryView) -> Environment:
        """The hosts a tick deploys to: those of the default environment (DEPLOY_ENVIRONMENT), else every host."""
        return view.reached(self.settings.deploy_environment)

    def _act_on_tick(self, entry: ServiceSchedule, tick: datetime, environment: Environment) -> None:
        """A schedule's tick: nothing outside the service's deploy window; a planned deploy for a cron schedule; a look
        at the registry for a watch. Each tick once, across passes and restarts (record_tick, pass_tick)."""
        service, planned_at = entry.service, utc_text(tick)
        try:
            closed = environment.window_opens(service, tick.timestamp()) is not None
        except ValueError:
            closed = False  # windows that never open: the deploy's own check refuses it, and says why
        if closed:
            if self.history.pass_tick(service, planned_at):
                windows = environment.window_text(service)
                self._skip(service, "outside_window", f"tick of {planned_at} outside its deploy window {windows}")
        elif not entry.schedule.watch:
            self._record_tick(entry, tick, "schedule", f"schedule {entry.schedule.cron} ({entry.schedule.timezone})")
        elif self.history.pass_tick(service, planned_at):
            self._look_at_registry(entry, tick, tuple(environment.policies(service)))

    def _record_tick(self, entry: ServiceSchedule, tick: datetime, trigger: Trigger, message: str) -> None:
        deployment_id, planned_at = new_deployment_id(tick), utc_text(tick)
        created = self.history.record_tick(
            id=deployment_id,
            action="deploy",
            outcome="scheduled",
            trigger=trigger,
            planned_at=planned_at,
            source=trigger,
            signers=sorted(entry.signers),
            service=entry.service,
            image=entry.schedule.image,
            message=message,
        )
        if created:
            logs.bind(deployment_id=deployment_id, service=entry.service)
            log.info("🗓️  [%s] %s: tick of %s (%s)", deployment_id, entry.service, planned_at, trigger)

    def _skip(self, service: str, reason: SkipReason, detail: str) -> None:
        """Count a tick that deployed nothing; say why, in the log at INFO when it is news (a watch looks every few
        minutes, and finds the same most of the time), and at WARNING when a watch could not look."""
        logs.bind(deployment_id=None, service=service)
        news = self._last_skip.get(service) != detail
        self._last_skip[service] = detail
        level = logging.WARNING if reason == "watch_failed" else logging.INFO if news else logging.DEBUG
        log.log(level, "⏭️  %s: nothing deployed (%s): %s", service, reason.replace("_", " "), detail)
        self.on_skip(service, reason)

    def _look_at_registry(self, entry: ServiceSchedule, tick: datetime, hosts: tuple[str, ...]) -> None:
        """Look at the registry for a watch's tick, in a task of its own; a tick that comes during a look is looked at
        right after it, so that a push is seen within one interval of it."""
        if entry.service in self._looking:
            self._next_look[entry.service] = tick
            return
        task = asyncio.create_task(self._look(entry, tick, hosts), name=f"watch-{entry.service}")
        self._looking[entry.service] = task

    async def _look(self, entry: ServiceSchedule, tick: datetime, hosts: tuple[str, ...]) -> None:
        service = entry.service
        try:
            # A deploy runs or is due, or begins during the look, or the API stops: the next tick looks again.
            if self._busy(service):
                return
            run = await asyncio.to_thread(self._read_registry, entry, hosts)
            found = look(run, hosts, self.history.last_watch_deploy(service))
            if self._stop.is_set() or self._busy(service):
                return
            if found.deploy:
                self._last_skip.pop(service, None)
                self._record_tick(entry, tick, "watch", found.detail)
                self.wake()
            elif found.reason is not None:
                self._skip(service, found.reason, found.detail)
        except Exception:  # the watch must outlive a look that broke
            log.exception("The registry watch of %s failed", service)
        finally:
            del self._looking[service]
            later = self._next_look.pop(service, None)
            if later is not None and not self._stop.is_set():
                self._look_at_registry(entry, later, hosts)

    def _busy(self, service: str) -> bool:
        """A deploy of the service runs, or one planned is due: a look now would race with it."""
        if any(claim.service == service for claim in self.deployer.running()):
            return True
        now = self.clock()
        return any(
            record["service"] == service and epoch(record["planned_at"] or "") <= now
            for record in self.history.scheduled()
        )

    def _read_registry(self, entry: ServiceSchedule, hosts: tuple[str, ...]) -> RunResult:
        """The status read with deploy_watch on `hosts`: what each runs, and what the registry has (blocking)."""
        extravars: dict[str, object] = {
            contract.VAR_SERVICE: entry.service,
            contract.VAR_WATCH: True,
            # An engine that does not answer makes this look fail at once; the next tick looks again.
            contract.VAR_ENGINE_WAIT: 0,
        }
        if entry.schedule.image:
            extravars[contract.VAR_IMAGE] = entry.schedule.image
        return run_playbook(
            run_id=probe_run_id(f"watch-{entry.service}"),
            playbook=self.deployer.playbook("status"),
            extravars=extravars,
            limit=hosts,
            inventory=self.settings.deploy_inventory,
            state_dir=self.settings.deploy_state_dir / PROBES_DIR,
            timeout=self.settings.deploy_timeout,
            keep_runs=PROBE_KEEP_RUNS,
            cancel=self.deployer.shutting_down,
            stats_key=contract.STATUS_KEY,
        )

    def next_runs(self) -> list[tuple[ServiceSchedule, datetime, str]]:
        """Each recurring schedule of the inventory, its next tick after now, and the deploy windows its ticks are
        held to (Environment.window_text). Blocking: it may read the inventory."""
        now, view = self.clock(), self.inventory.view()
        environment = self._environment(view)
        return [
            (entry, entry.schedule.next_tick(now), environment.window_text(entry.service))
            for entry in service_schedules(view).values()
        ]

    async def _run_due(self, record: Record, planned: float, now: float) -> bool:
        """Start a planned deploy whose time has come, or refuse it, or mark it missed; False when its service is
        busy and it waits."""
        deployment_id, planned_at = record["id"], record["planned_at"]
        logs.bind(deployment_id=deployment_id, service=record["service"])
        grace = self.settings.deploy_schedule_grace
        if self._started_at - planned > grace:
            self._miss(record, f"planned for {planned_at}, the API was not running until {utc_at(self._started_at)}")
            return True
        try:
            document = {field: record.get(field) for field in REQUEST_FIELDS if record.get(field) is not None}
            signers = frozenset(record.get("signers") or ())
            admitted = await asyncio.to_thread(admit, self.inventory, self.settings, validate(document), signers)
            check_window(admitted, record["action"], now, now)
            claim = claim_service(self.deployer, self.rate_limits, admitted, deployment_id)
        except Refused as refusal:
            if refusal.status_code != 409:
                self._refuse(record, refusal)
            elif now - planned > grace:
                self._miss(record, f"{record['service']} was busy from {planned_at} to {utc_at(now)}")
            else:
                return False
            return True
        if not self.history.leave_scheduled(deployment_id, outcome="running", started_at=history_now()):
            self.deployer.release(claim)  # cancelled in the meantime
            return True
        log.info("🗓️  [%s] planned for %s: starting", deployment_id, planned_at)
        await self.deployer.start(
            admitted.request,
            record["source"] or "",
            action=record["action"],
            wait=False,
            hosts=admitted.environment.hosts,
            claim=claim,
            strategy=admitted.environment.strategy(admitted.request.service),
            planned=True,
            trigger=record["trigger"],
        )
        return True

    def _refuse(self, record: Record, refusal: Refused) -> None:
        error = f"Refused when it came to run: {refusal_text(refusal.detail)}"
        refused = self.history.leave_scheduled(
            record["id"], outcome="rejected", finished_at=history_now(), error=error, http_status=refusal.status_code
        )
        if refused:
            log.warning("[%s] planned %s refused (%d): %s", record["id"], record["action"], refusal.status_code, error)

    def _miss(self, record: Record, why: str) -> None:
        if self.history.leave_scheduled(record["id"], outcome="missed", finished_at=history_now(), error=why):
            log.warning("⏰ [%s] planned %s of %s missed: %s", record["id"], record["action"], record["service"], why)
            self.deployer.finished(record["id"])


def least(seconds: float | None, other: float) -> float:
    return other if seconds is None else min(seconds, other)
