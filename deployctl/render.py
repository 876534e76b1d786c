"""What a person reads: steps as they happen, an outcome, a record, the history and the schedules as tables.

A record's text came from a signer (message, commit...), a host or a container (errors, details, logs): every value
shown goes through api.text, so that no control character in it reaches the terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

from api.text import printable, printable_lines
from deployctl import when

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
LOG_TAIL_LINES = 20
OUTCOMES = {
    "succeeded": "succeeded",
    "rolled_back": "failed and was rolled back: the service runs the previous image again",
    "rollback_failed": "failed, and so did the rollback: the service needs a look",
    "failed": "failed with nothing to roll back",
    "interrupted": "was interrupted",
    "rejected": "was refused",
    "running": "is still running",
    "scheduled": "is planned",
    "cancelled": "was cancelled before it started",
    "missed": "was missed: it did not start at its time",
}


def shown(record: dict[str, Any], name: str, default: str = "") -> str:
    """A record's value as it may be printed, `default` when it is unset or empty."""
    value = record.get(name)
    return default if value is None or value == "" else printable(str(value))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def timestamp(iso: str | None) -> str:
    """2025-11-27T02:39:12.345Z as 2025-11-27 02:39:12 (UTC, as the API keeps it)."""
    return printable(iso.replace("T", " ")[:19]) if iso else "-"


def short_id(image_id: str | None) -> str:
    return image_id.removeprefix("sha256:")[:12] if image_id else ""


def image_label(reference: str | None, image_id: str | None) -> str:
    identity = printable(short_id(image_id))
    reference = printable(reference or "")
    if reference and identity:
        return f"{reference} ({identity})"
    return reference or identity or "-"


def step_line(step: dict[str, Any]) -> str:
    mark = "✓" if step.get("success") else "✗"
    host = f"[{shown(step, 'host')}] " if step.get("host") else ""
    return f"  {mark} {host}{shown(step, 'step', '?'):<13} {shown(step, 'detail')}".rstrip()


def outcome_lines(record: dict[str, Any]) -> list[str]:
    """The end of a deployment: what became of it, which image runs, and why it failed (error, log tail)."""
    outcome = record.get("outcome", "?")
    mark = "✓" if outcome == "succeeded" else "…" if outcome in ("running", "scheduled") else "✗"
    words = OUTCOMES.get(outcome) or shown(record, "outcome", "?")
    lines = [f"{mark} {shown(record, 'action', 'deploy')} of {shown(record, 'service', '?')} {words}"]
    if record.get("duration_seconds") is not None:
        lines[0] += f" ({duration(record['duration_seconds'])})"
    old = image_label(record.get("old_image"), record.get("old_image_id"))
    new = image_label(record.get("new_image"), record.get("new_image_id"))
    if outcome == "succeeded":
        lines.append(f"  now runs  {new}")
        lines.append(f"  replaced  {old}")
    elif outcome in ("rolled_back", "rollback_failed"):
        lines.append(f"  tried     {new}")
        lines.append(f"  previous  {old}")
    if record.get("running_image") or record.get("running_image_id"):
        state = f", {shown(record, 'running_state')}" if record.get("running_state") else ""
        running = image_label(record.get("running_image"), record.get("running_image_id"))
        lines.append(f"  found     {running}{state}")
    if record.get("error"):
        lines.append(f"  error     {shown(record, 'error')}")
    # What reconciliation found (or why it waits: the API brings the service back once its hosts answer) and did.
    if record.get("recovery"):
        lines.append(f"  recovery  {shown(record, 'recovery')}")
    if record.get("recovery_action"):
        lines.append(f"  recovered {shown(record, 'recovery_action')}")
    logs = printable_lines((record.get("logs") or "").rstrip())
    if logs:
        tail = logs[-LOG_TAIL_LINES:]
        lines.append(f"  logs      last {len(tail)} of {len(logs)} lines:")
        lines.extend(f"    {line}" for line in tail)
    return lines


def requested_image(record: dict[str, Any]) -> str:
    """The image asked for; when none was, the one the API takes."""
    return shown(record, "image") or (
        "the previous kept image" if record.get("action") == "rollback" else "the compose file's image"
    )


def record_lines(record: dict[str, Any]) -> list[str]:
    """One deployment in full, for `deployctl show`."""
    # A planned deployment's started_at is when the API received it, until it starts.
    started = "received" if record.get("outcome") in ("scheduled", "cancelled") else "started"
    fields = [
        ("deployment", shown(record, "id")),
        ("action", shown(record, "action")),
        ("service", shown(record, "service")),
        ("outcome", shown(record, "outcome")),
        ("requested", requested_image(record)),
        ("repository", shown(record, "repository")),
        ("commit", shown(record, "commit")),
        ("message", shown(record, "message")),
        ("source", shown(record, "source")),
        ("planned for", when.utc_and_local(record["planned_at"]) if record.get("planned_at") else ""),
        (started, timestamp(record.get("started_at")) + " UTC"),
        ("finished", timestamp(record.get("finished_at")) + (" UTC" if record.get("finished_at") else "")),
        ("duration", duration(record.get("duration_seconds"))),
        ("old image", image_label(record.get("old_image"), record.get("old_image_id"))),
        ("new image", image_label(record.get("new_image"), record.get("new_image_id"))),
        ("http status", shown(record, "http_status")),
    ]
    if record.get("current_step"):
        fields.append(("in progress", shown(record, "current_step")))
    if record.get("waiting"):
        fields.append(("waiting", shown(record, "waiting")))
    if record.get("reconciliation"):
        at = f" at {timestamp(record['reconciled_at'])} UTC" if record.get("reconciled_at") else ""
        fields.append(("reconciled", shown(record, "reconciliation") + at))
    lines = [f"{name:<12} {value}" for name, value in fields if value]
    steps = record.get("steps") or []
    if steps:
        lines.append("steps")
        lines.extend(step_line(step) for step in steps)
    lines.extend(outcome_lines(record))
    return lines


def history_table(page: dict[str, Any]) -> list[str]:
    items = page.get("items", [])
    if not items:
        return ["No deployments."]
    header = ("ID", "ACTION", "SERVICE", "OUTCOME", "STARTED (UTC)", "DURATION", "NEW IMAGE")
    rows = [
        (
            shown(item, "id"),
            shown(item, "action"),
            shown(item, "service", "-"),
            shown(item, "outcome"),
            timestamp(item.get("started_at")),
            duration(item.get("duration_seconds")),
            shown(item, "new_image") or shown(item, "image", "-"),
        )
        for item in items
    ]
    lines = _columns([header, *rows])
    first = page.get("offset", 0) + 1
    last = page.get("offset", 0) + len(items)
    lines.append(f"{first}-{last} of {printable(str(page.get('total', len(items))))}, newest first")
    return lines


def schedules_lines(answer: dict[str, Any]) -> list[str]:
    """GET /schedules for a person: the recurring schedules, then the planned deploys; one line when there is
    neither."""
    recurring = answer.get("items") or []
    planned = answer.get("planned") or []
    if not recurring and not planned:
        return ["No schedules, and no deploys are planned."]
    return [*recurring_table(recurring), "", *planned_table(planned)]


def ticks(item: dict[str, Any]) -> str:
    """When a schedule ticks: its cron expression or its interval, and whether it watches the registry; then its deploy
    window, if any."""
    when = shown(item, "cron") if item.get("cron") else f"every {shown(item, 'interval')} s"
    if item.get("watch"):
        when += ", watch"
    return f"{when}, window {shown(item, 'window')}" if item.get("window") else when


def recurring_table(items: list[dict[str, Any]]) -> list[str]:
    """The recurring schedules: when they tick (a cron expression, or a watch's interval; `watch` when a tick deploys
    only a new image of the registry), the zone, the image each run deploys, the next run (here and in UTC) and the
    hosts."""
    if not items:
        return ["No recurring schedules."]
    header = ("SERVICE", "WHEN", "ZONE", "IMAGE", "NEXT RUN (LOCAL)", "NEXT RUN (UTC)", "HOSTS")
    rows = [
        (
            shown(item, "service", "-"),
            ticks(item),
            shown(item, "timezone"),
            shown(item, "image", "the compose file's image"),
            when.local(item.get("next_run")),
            when.utc(item.get("next_run")),
            ", ".join(printable(str(host)) for host in item.get("hosts") or []) or "-",
        )
        for item in items
    ]
    lines = _columns([header, *rows])
    lines.append(f"{len(items)} recurring" + (" schedule" if len(items) == 1 else " schedules"))
    return lines


def planned_table(items: list[dict[str, Any]]) -> list[str]:
    """The planned deployments, soonest first: when each is planned (here and in UTC) and when it was received."""
    items = sorted(items, key=lambda item: str(item.get("planned_at") or ""))
    if not items:
        return ["No deploys are planned."]
    header = ("ID", "SERVICE", "ACTION", "IMAGE", "AT (LOCAL)", "AT (UTC)", "RECEIVED (UTC)")
    rows = [
        (
            shown(item, "id"),
            shown(item, "service", "-"),
            shown(item, "action"),
            requested_image(item),
            when.local(item.get("planned_at")),
            when.utc(item.get("planned_at")),
            timestamp(item.get("started_at")),
        )
        for item in items
    ]
    lines = _columns([header, *rows])
    lines.append(f"{len(items)} planned, soonest first")
    return lines


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def waited_for(waiting: str) -> str:
    """What a record's `waiting` says is awaited, without the seconds it has waited ("..., 12 s")."""
    head, _, tail = waiting.rpartition(", ")
    return head if head and tail.endswith(" s") else waiting


class Progress:
    """Prints each step once, as it appears in the record; on a terminal, a spinner with the running step's time.

    While the record says the deploy waits (for a host's Docker engine), a line says so once when the wait begins,
    and the spinner shows it with the seconds waited so far.
    """

    def __init__(self, stream: TextIO, *, tty: bool, clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.tty = tty
        self.clock = clock
        self.printed = 0
        self.current: str | None = None
        self.current_since = 0.0
        self.frame = 0
        self.spinning = False
        self.waiting: str | None = None

    def update(self, record: dict[str, Any]) -> None:
        steps = record.get("steps") or []
        new_steps = steps[self.printed :]
        if new_steps:
            self._clear()
            for step in new_steps:
                self.stream.write(step_line(step) + "\n")
            self.printed = len(steps)
        running = record.get("outcome") == "running"
        current = (shown(record, "current_step") or None) if running else None
        if current != self.current:
            self.current, self.current_since = current, self.clock()
        waiting = (shown(record, "waiting") or None) if running else None
        if waiting is not None and waited_for(waiting) != waited_for(self.waiting or ""):
            self._clear()
            self.stream.write(f"  … {waiting}\n")
        self.waiting = waiting
        self.tick()

    def tick(self) -> None:
        """Redraw the spinner line (a terminal only)."""
        if not self.tty:
            return
        if self.current is None:
            self._clear()
            return
        self.frame = (self.frame + 1) % len(SPINNER)
        elapsed = self.clock() - self.current_since
        waiting = f", {self.waiting}" if self.waiting else ""
        self.stream.write(f"\r\x1b[K  {SPINNER[self.frame]} {self.current:<13} {elapsed:.0f} s{waiting}")
        self.stream.flush()
        self.spinning = True

    def done(self) -> None:
        self._clear()

    def _clear(self) -> None:
        if self.spinning:
            self.stream.write("\r\x1b[K")
            self.spinning = False
        self.stream.flush()
