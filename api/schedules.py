"""Recurring schedules: `deploy_services.<name>.schedule` in the inventory, a cron expression in a time zone.

cronsim evaluates the expressions: it follows Debian cron over DST changes (a tick in an hour the clocks skip runs
once just after the change, a tick in an hour they repeat runs once) and takes zoneinfo zones as they are. The
scheduler (api/scheduler.py) turns each tick into a planned deploy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from module_utils.deploy_rules import IMAGE_REFERENCE

SCHEDULE_KEYS = ("cron", "timezone", "image")


def zone_problem(name: str) -> str:
    """Why `name` is no IANA time zone zoneinfo knows; empty when it is one."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r}"
    return ""


@dataclass(frozen=True)
class Schedule:
    """A service's recurring deploy: its cron expression, the zone it is read in, and the image (None: the compose
    file's)."""

    cron: str
    timezone: str
    image: str | None = None

    def _ticks(self, after: float) -> Iterator[datetime]:
        """The ticks strictly after the Unix time `after`, in UTC."""
        start = datetime.fromtimestamp(after, ZoneInfo(self.timezone))
        return (tick.astimezone(UTC) for tick in CronSim(self.cron, start))

    def next_tick(self, after: float) -> datetime:
        """The first tick strictly after `after`."""
        return next(self._ticks(after))

    def latest_tick(self, after: float, until: float) -> datetime | None:
        """The latest tick in (`after`, `until`], if any. Forward from `after`: cronsim's reverse iteration does not
        keep to the DST rules forward iteration does."""
        latest = None
        for tick in self._ticks(after):
            if tick.timestamp() > until:
                return latest
            latest = tick
        return latest


def parse_schedule(value: Any, default_timezone: str) -> Schedule:
    """The schedule an inventory entry's `schedule` describes; ValueError naming what is wrong with it."""
    if not isinstance(value, dict):
        raise ValueError("schedule must be a mapping with cron, and optionally timezone and image")
    unknown = sorted(str(key) for key in value if key not in SCHEDULE_KEYS)
    if unknown:
        raise ValueError(f"schedule has unknown keys {', '.join(unknown)} (known: {', '.join(SCHEDULE_KEYS)})")
    cron, timezone, image = value.get("cron"), value.get("timezone") or default_timezone, value.get("image")
    if not isinstance(cron, str) or not cron.strip():
        raise ValueError("schedule needs cron, a 5-field cron expression")
    problem = zone_problem(str(timezone))
    if problem:
        raise ValueError(f"schedule: {problem}")
    try:
        CronSim(cron, datetime.now(ZoneInfo(str(timezone))))
    except CronSimError as error:
        raise ValueError(f"schedule: cron {cron!r}: {error}") from None
    if image is not None and not (isinstance(image, str) and IMAGE_REFERENCE.match(image)):
        raise ValueError(f"schedule: image {image!r} is not a valid image reference")
    return Schedule(cron, str(timezone), image)
