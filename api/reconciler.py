"""Reconciliation while the API runs: each record awaiting it is checked again (api/recovery.py, Recovery.attempt)
until it is done, the first time at once, then after 2 s, 4 s, 8 s... at most DEPLOY_RECONCILE_INTERVAL apart, and at
once when the engine watch hears a host of it answer again. One check of a record at a time; the records of different
services are checked side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from api.recovery import Recovery, affected_hosts, backoff

log = logging.getLogger("deploy")


class Reconciler:
    def __init__(self, recovery: Recovery, interval: float, clock: Callable[[], float] = time.monotonic):
        self.recovery = recovery
        self.interval = interval
        self.clock = clock
        self._due: dict[str, float] = {}  # by deployment id: when its next check is due (clock)
        self._misses: dict[str, int] = {}  # by deployment id: checks in a row that left it waiting
        self._checking: dict[str, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        self._stopping = False
        self._loop: asyncio.Task[None] | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None

    def start(self, deployment_ids: list[str]) -> None:
        """Check these records at once (those awaiting at start), then go on checking what is added."""
        self._event_loop = asyncio.get_running_loop()
        for deployment_id in deployment_ids:
            self.add(deployment_id)
        self._loop = asyncio.create_task(self._run(), name="reconciler")

    def add(self, deployment_id: str, delay: float = 0.0) -> None:
        """Check a record `delay` seconds from now (or sooner, if it was due sooner)."""
        if self._stopping:
            return
        due = self.clock() + delay
        self._due[deployment_id] = min(due, self._due.get(deployment_id, due))
        self._changed.set()

    def host_answers(self, host: str) -> None:
        """A host's engine answers again: the records waiting for it are checked at once. Called from any thread (the
        engine checks run off the event loop)."""
        if self._event_loop is not None and not self._event_loop.is_closed():
            self._event_loop.call_soon_threadsafe(self._wake_for, host)

    def _wake_for(self, host: str) -> None:
        for record in self.recovery.history.awaiting():
            if host in affected_hosts(record) and record["id"] not in self._checking:
                self.add(record["id"])

    def pending(self) -> list[str]:
        """The records with a check to come or under way."""
        return sorted({*self._due, *self._checking})

    def close(self) -> list[asyncio.Task[None]]:
        """No check starts any more; the checks under way (the deployer's drain lets them end)."""
        self._stopping = True
        self._due.clear()
        self._changed.set()
        return list(self._checking.values())

    async def stop(self, timeout: float) -> None:
        """Close, give the checks under way `timeout` seconds, then cancel them. What still awaits reconciliation is
        checked again at the next start."""
        checking = self.close()
        if self._loop is not None:
            await asyncio.wait([self._loop], timeout=timeout)
        if checking:
            _, late = await asyncio.wait(checking, timeout=timeout)
            for task in late:
                task.cancel()

    async def _run(self) -> None:
        while not self._stopping:
            now = self.clock()
            for deployment_id in [key for key, due in self._due.items() if due <= now]:
                if deployment_id in self._checking:
                    continue  # checked once the check under way ends, if it asks for it
                del self._due[deployment_id]
                self._checking[deployment_id] = asyncio.create_task(
                    self._check(deployment_id), name=f"reconcile-{deployment_id}"
                )
            waiting = [due for key, due in self._due.items() if key not in self._checking]
            timeout = max(0.0, min(waiting) - self.clock()) if waiting else None
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    async def _check(self, deployment_id: str) -> None:
        try:
            done = await self.recovery.attempt(deployment_id)
        except Exception:  # a check that broke is tried again, never lost
            log.exception("[%s] reconciliation check failed", deployment_id)
            done = False
        finally:
            self._checking.pop(deployment_id, None)
        if done:
            self._misses.pop(deployment_id, None)
            self._due.pop(deployment_id, None)
        else:
            misses = self._misses[deployment_id] = self._misses.get(deployment_id, 0) + 1
            self.add(deployment_id, backoff(misses, self.interval))
        self._changed.set()
