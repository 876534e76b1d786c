"""Recurring schedules and deploy windows in the inventory.

`deploy_services.<name>.schedule` is a cron expression in a time zone, or a registry watch (`watch: true`): every
`interval` seconds, or at the ticks of its cron expression, the service is redeployed only when the image its compose
file names (or `image`) points to another image in the registry than the one that runs. `deploy_window` (on a host or
group, or in a service's entry) is a cron expression too: the minutes it matches are those in which deploys may start.

cronsim evaluates the expressions: it follows Debian cron over DST changes (a tick in an hour the clocks skip runs
once just after the change, a tick in an hour they repeat runs once) and takes zoneinfo zones as they are. The
scheduler (api/scheduler.py) turns each tick into a planned deploy, or into a look at the registry first.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from module_utils.deploy_rules import IMAGE_REFERENCE

SCHEDULE_KEYS = ("cron", "timezone", "image", "watch", "interval")
WINDOW_KEYS = ("cron", "timezone")
# A window's openings are searched this many minutes of matches ahead for a minute every window shares.
WINDOW_SEARCH = 10_000


def zone_problem(name: str) -> str:
    """Why `name` is no IANA time zone zoneinfo knows; empty when it is one."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r}"
    return ""


def cron_ticks(cron: str, timezone: str, after: float) -> Iterator[datetime]:
    """The minutes `cron` matches in `timezone` strictly after the Unix time `after`, in UTC."""
    start = datetime.fromtimestamp(after, ZoneInfo(timezone))
    return (tick.astimezone(UTC) for tick in CronSim(cron, start))


@dataclass(frozen=True)
class Schedule:
    """A service's recurring deploy: its cron expression (None: a watch every `interval` seconds), the zone it is read
    in, the image (None: the compose file's), and whether a tick deploys only when the registry has another image."""

    cron: str | None
    timezone: str
    image: str | None = None
    watch: bool = False
    interval: int = 300

    @property
    def rule(self) -> str:
        """What makes it tick, in words: a change of it starts its ticks afresh."""
        when = self.cron if self.cron is not None else f"every {self.interval} s"
        return f"{when}, watch" if self.watch else when

    def _ticks(self, after: float) -> Iterator[datetime]:
        """The ticks strictly after the Unix time `after`, in UTC: the cron expression's, or the multiples of the
        interval since the Unix epoch."""
        if self.cron is not None:
            return cron_ticks(self.cron, self.timezone, after)
        first = (int(after) // self.interval + 1) * self.interval
        return (datetime.fromtimestamp(first + n * self.interval, UTC) for n in itertools.count())

    def next_tick(self, after: float) -> datetime:
        """The first tick strictly after `after`."""
        return next(self._ticks(after))

    def latest_tick(self, after: float, until: float) -> datetime | None:
        """The latest tick in (`after`, `until`], if any. Forward from `after`: cronsim's reverse iteration does not
        keep to the DST rules forward iteration does."""
        if self.cron is None:
            multiple = int(until) // self.interval * self.interval
            return datetime.fromtimestamp(multiple, UTC) if multiple > after else None
        latest = None
        for tick in self._ticks(after):
            if tick.timestamp() > until:
                return latest
            latest = tick
        return latest


@dataclass(frozen=True)
class Window:
    """When deploys may start: the minutes a cron expression matches in a time zone (`* 2-4 * * *`: 02:00 to
    04:59)."""

    cron: str
    timezone: str

    def __str__(self) -> str:
        return f"{self.cron} ({self.timezone})"

    def opens(self, at: float) -> float | None:
        """None when the minute of `at` is in the window; else when the window next opens (Unix time)."""
        minute = int(at) // 60 * 60
        first = next(cron_ticks(self.cron, self.timezone, minute - 1)).timestamp()
        return None if first == minute else first


# Windows found to share no minute: the search (a good half second) is not run again for them.
_DISJOINT: set[tuple[Window, ...]] = set()


def windows_open(windows: Iterable[Window], at: float) -> float | None:
    """None when every window is open at `at`; else the first time after it when all are (ValueError when they share
    no minute soon enough to find)."""
    windows = tuple(windows)
    if windows not in _DISJOINT:
        moment = at
        for _ in range(WINDOW_SEARCH):
            later = [opening for window in windows if (opening := window.opens(moment)) is not None]
            if not later:
                return None if moment == at else moment
            moment = max(later)
        _DISJOINT.add(windows)
    raise ValueError(f"the deploy windows {', '.join(map(str, windows))} share no minute")


def _zone(value: dict[str, Any], default_timezone: str, what: str) -> str:
    timezone = str(value.get("timezone") or default_timezone)
    problem = zone_problem(timezone)
    if problem:
        raise ValueError(f"{what}: {problem}")
    return timezone


def _cron(cron: Any, timezone: str, what: str) -> str:
    if not isinstance(cron, str) or not cron.strip():
        raise ValueError(f"{what} needs cron, a 5-field cron expression")
    try:
        CronSim(cron, datetime.now(ZoneInfo(timezone)))
    except CronSimError as error:
        raise ValueError(f"{what}: cron {cron!r}: {error}") from None
    return cron


def _unknown(value: dict[str, Any], known: tuple[str, ...], what: str) -> None:
    unknown = sorted(str(key) for key in value if key not in known)
    if unknown:
        raise ValueError(f"{what} has unknown keys {', '.join(unknown)} (known: {', '.join(known)})")


def parse_schedule(value: Any, default_timezone: str, watch_interval: int = 300) -> Schedule:
    """The schedule an inventory entry's `schedule` describes; ValueError naming what is wrong with it."""
    if not isinstance(value, dict):
        raise ValueError("schedule must be a mapping with cron or watch, and optionally timezone, image and interval")
    _unknown(value, SCHEDULE_KEYS, "schedule")
    watch, image, interval = value.get("watch", False), value.get("image"), value.get("interval")
    if not isinstance(watch, bool):
        raise ValueError(f"schedule: watch must be true or false, not {watch!r}")
    timezone = _zone(value, default_timezone, "schedule")
    cron = None if watch and value.get("cron") is None else _cron(value.get("cron"), timezone, "schedule")
    if interval is not None:
        if cron is not None:
            raise ValueError("schedule: interval is for a watch without cron; with cron, its ticks are the polls")
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
            raise ValueError(f"schedule: interval must be a whole number of seconds, 1 or more, not {interval!r}")
    if image is not None and not (isinstance(image, str) and IMAGE_REFERENCE.match(image)):
        raise ValueError(f"schedule: image {image!r} is not a valid image reference")
    return Schedule(cron, timezone, image, watch, interval or watch_interval)


def parse_window(value: Any, default_timezone: str) -> Window:
    """The window a `deploy_window` describes: a cron expression, or a mapping with cron and timezone; ValueError
    naming what is wrong with it."""
    if isinstance(value, str):
        value = {"cron": value}
    if not isinstance(value, dict):
        raise ValueError("deploy_window must be a cron expression, or a mapping with cron and optionally timezone")
    _unknown(value, WINDOW_KEYS, "deploy_window")
    timezone = _zone(value, default_timezone, "deploy_window")
    return Window(_cron(value.get("cron"), timezone, "deploy_window"), timezone)
