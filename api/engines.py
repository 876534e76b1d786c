"""The engine watch: whether the Docker engine of each host this API deploys to answers.

Every DEPLOY_ENGINE_CHECK_INTERVAL seconds (0: no engine check at all, nor the probes below), playbooks/engines.yml
asks every host of the inventory (the deploy role's `engine` entry point: `docker version`, bounded, read-only; a host
that cannot be reached counts as an engine that does not answer). What the reconciliation's status reads learn of a
host counts too. /health and the metrics show the answers; a host that answers again wakes the records waiting for it.

While a deploy runs, its hosts are asked as well once its current step has lasted PROBE_AFTER seconds, then every
PROBE_EVERY seconds: when an engine does not answer, the deploy's record says what it waits for (`waiting`), until
the engine answers again or the deploy ends.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from api import contract
from api.deployer import Deployer
from api.recovery import PROBE_KEEP_RUNS, PROBES_DIR, probe_run_id
from api.runner import RunResult, run_playbook
from api.settings import Settings

log = logging.getLogger("deploy")

# A running deploy's hosts are asked once its step has lasted this long, then this often.
PROBE_AFTER = 5.0
PROBE_EVERY = 3.0
# How often the deploy probe looks at the running deploys.
PROBE_TICK = 1.0
# Bounds one check of every engine (the role bounds each host's `docker version` to 10 s).
CHECK_TIMEOUT = 60

EngineWord = Literal["reachable", "unreachable", "unknown"]


@dataclass(frozen=True)
class Heard:
    """One answer about a host's engine: whether it answers, in one line why (not), and whether the host itself could
    not be reached (then the engine was not asked at all)."""

    reachable: bool
    detail: str
    host_unreachable: bool = False


@dataclass(frozen=True)
class EngineState:
    """What was last heard of a host's engine (Heard), when (Unix time), and when it was last heard answering."""

    reachable: bool
    detail: str
    host_unreachable: bool
    checked_at: float
    answered_at: float | None


def engine_states(run: RunResult, hosts: Iterable[str]) -> dict[str, Heard]:
    """What a run of playbooks/engines.yml says of each of `hosts`: its published answer, else unreachable when
    Ansible found the host so; a host the run says nothing of is left out (unknown)."""
    states: dict[str, Heard] = {}
    for host in hosts:
        answer = run.results.get(host)
        if isinstance(answer, dict) and isinstance(answer.get("reachable"), bool):
            states[host] = Heard(answer["reachable"], str(answer.get("detail") or ""), host in run.unreachable)
        elif host in run.unreachable:
            states[host] = Heard(False, f"Host unreachable: {run.unreachable[host]}", True)
    return states


def health_words(states: dict[str, EngineState], hosts: Iterable[str]) -> tuple[EngineWord, dict[str, EngineWord]]:
    """/health's `docker` and `engines`: each of `hosts` reachable, unreachable or unknown (never heard of); docker is
    unreachable when one known engine does not answer, reachable when every known one does, unknown before any is. A
    host that left the inventory counts no more."""
    engines: dict[str, EngineWord] = {
        host: "unknown" if host not in states else "reachable" if states[host].reachable else "unreachable"
        for host in hosts
    }
    known = [word == "reachable" for word in engines.values() if word != "unknown"]
    docker: EngineWord = "unknown" if not known else "reachable" if all(known) else "unreachable"
    return docker, engines


def waiting_text(hosts: Iterable[str]) -> str:
    return f"waiting for the Docker engine on {', '.join(hosts)}"


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EngineWatch:
    """The engine states of every host, the periodic check that keeps them, and the probes of running deploys.

    `hosts()` are the inventory's hosts; `on_answer(host)` is called when a host that did not answer (or was never
    heard of) answers.
    """

    def __init__(
        self,
        settings: Settings,
        deployer: Deployer,
        hosts: Callable[[], Iterable[str]],
        on_answer: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.deployer = deployer
        self.hosts = hosts
        self.on_answer = on_answer
        self.clock = clock
        self._states: dict[str, EngineState] = {}
        self._lock = threading.Lock()
        self._probed: dict[str, float] = {}  # by deployment id: when its hosts were last asked
        self._waiting: dict[str, tuple[str, ...]] = {}  # by deployment id: the hosts its record says it waits for
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def states(self) -> dict[str, EngineState]:
        with self._lock:
            return dict(self._states)

    def reachability(self) -> dict[str, bool]:
        """Whether each known engine of the inventory's hosts answers (the metrics' gauge)."""
        states = self.states()
        return {host: states[host].reachable for host in self.hosts() if host in states}

    def health(self) -> tuple[EngineWord, dict[str, EngineWord]]:
        return health_words(self.states(), self.hosts())

    def heard(self, host: str, heard: Heard) -> None:
        """What a check or a status read learnt of a host's engine."""
        now = self.clock()
        with self._lock:
            before = self._states.get(host)
            answered_at = now if heard.reachable else before.answered_at if before is not None else None
            self._states[host] = EngineState(heard.reachable, heard.detail, heard.host_unreachable, now, answered_at)
        if before is None or before.reachable != heard.reachable:
            if heard.reachable:
                log.info("Docker engine of %s answers: %s", host, heard.detail)
            else:
                log.warning("Docker engine of %s does not answer: %s", host, heard.detail)
        if heard.reachable and (before is None or not before.reachable) and self.on_answer is not None:
            self.on_answer(host)

    def heard_from_status(self, host: str, reachable: bool, detail: str, host_unreachable: bool) -> None:
        """What a status read of the reconciliation learnt (Recovery's on_engine)."""
        self.heard(host, Heard(reachable, detail, host_unreachable))

    def check(self, hosts: tuple[str, ...] | None = None) -> dict[str, EngineState]:
        """Ask the engines of `hosts` (every host when None) now; their states. Blocking: run it off the event loop."""
        run = run_playbook(
            run_id=probe_run_id("engines"),
            playbook=contract.playbook(self.settings.deploy_playbook, "engines"),
            extravars={},
            limit=hosts,
            inventory=self.settings.deploy_inventory,
            state_dir=self.settings.deploy_state_dir / PROBES_DIR,
            timeout=CHECK_TIMEOUT,
            keep_runs=PROBE_KEEP_RUNS,
            cancel=self.deployer.shutting_down,
            stats_key=contract.ENGINE_KEY,
        )
        asked = hosts if hosts is not None else tuple(self.hosts())
        for host, heard in engine_states(run, asked).items():
            self.heard(host, heard)
        states = self.states()
        return {host: states[host] for host in asked if host in states}

    def start(self) -> None:
        """The periodic check and the probes of running deploys; neither with DEPLOY_ENGINE_CHECK_INTERVAL 0."""
        if self.settings.deploy_engine_check_interval > 0:
            self._tasks.append(asyncio.create_task(self._watch(), name="engine-watch"))
            self._tasks.append(asyncio.create_task(self._probe_deploys(), name="engine-probe"))

    async def stop(self, timeout: float) -> None:
        self._stop.set()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=timeout)
            for task in late:
                task.cancel()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; whether to go on."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return True
        return False

    async def _watch(self) -> None:
        interval = self.settings.deploy_engine_check_interval
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # the watch must outlive a check that broke
                log.exception("The engine check failed")
            if not await self._sleep(interval):
                return

    async def _probe_deploys(self) -> None:
        while await self._sleep(PROBE_TICK):
            try:
                await self.probe_deploys()
            except Exception:
                log.exception("The engine probe of running deploys failed")

    async def probe_deploys(self) -> None:
        """Ask the hosts of each running deploy whose step has lasted PROBE_AFTER seconds, every PROBE_EVERY seconds,
        and say in its record what it waits for."""
        now = self.clock()
        in_progress = self.deployer.steps_in_progress()
        running = {entry.claim.deployment_id for entry in in_progress}
        self._probed = {key: value for key, value in self._probed.items() if key in running}
        self._waiting = {key: value for key, value in self._waiting.items() if key in running}
        for entry in in_progress:
            deployment_id = entry.claim.deployment_id
            if now - entry.since < PROBE_AFTER or now - self._probed.get(deployment_id, 0.0) < PROBE_EVERY:
                continue
            self._probed[deployment_id] = now
            states = await asyncio.to_thread(self.check, entry.claim.hosts)
            # A host that cannot be reached is no wait: Ansible fails its task, and the deploy says so.
            silent = tuple(host for host, state in states.items() if not state.reachable and not state.host_unreachable)
            if silent == self._waiting.get(deployment_id, ()):
                continue
            self._waiting[deployment_id] = silent
            if not silent:
                self.deployer.set_waiting(deployment_id, None)
                continue
            # Since the engine was last heard answering, but not before the step began: the round trip before it
            # talked to the engine.
            answered = [states[host].answered_at or entry.since for host in silent]
            self.deployer.set_waiting(deployment_id, waiting_text(silent), iso(max(entry.since, *answered)))
