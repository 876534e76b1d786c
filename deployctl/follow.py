"""Following a deployment: poll its record until the outcome is final, showing each step as it appears."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from api.text import printable
from deployctl.client import Client, Unavailable
from deployctl.render import Progress

POLL_INTERVAL = 0.5
# A spinner on a terminal moves between polls; the polls themselves stay POLL_INTERVAL apart.
SPINNER_TICK = 0.1


class FollowTimeout(Exception):
    def __init__(self, record: dict[str, Any] | None):
        self.record = record
        super().__init__("the deployment was still running when the timeout ran out")


def follow(
    client: Client,
    deployment_id: str,
    *,
    timeout: float,
    progress: Progress | None = None,
    interval: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """The deployment's final record. An API that stops answering for a while (a restart, the tunnel) is asked
    again until the timeout; a refusal (4xx) is raised at once, as is FollowTimeout."""
    interval = POLL_INTERVAL if interval is None else interval
    deadline = clock() + timeout
    record: dict[str, Any] | None = None
    warned = False
    while True:
        try:
            record = client.deployment(deployment_id)
        except Unavailable as error:
            if clock() >= deadline:
                raise
            if not warned:
                print(f"deployctl: no answer, asking again until the timeout: {printable(str(error))}", file=sys.stderr)
                warned = True
        else:
            if progress is not None:
                progress.update(record)
            if record.get("outcome") != "running":
                return record
        if clock() >= deadline:
            raise FollowTimeout(record)
        _wait(interval, progress, clock, sleep)


def _wait(
    interval: float, progress: Progress | None, clock: Callable[[], float], sleep: Callable[[float], None]
) -> None:
    if progress is None or not progress.tty:
        sleep(interval)
        return
    until = clock() + interval
    while (left := until - clock()) > 0:
        sleep(min(SPINNER_TICK, left))
        progress.tick()
