"""The request and response bodies of the reference document."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.contract import StepRecord
from module_utils.deploy_rules import IMAGE_REFERENCE

# 9999-12-31T23:59:59Z: the latest `timestamp`, so that no arithmetic ever meets an integer of a thousand digits.
TIMESTAMP_MAX = 253_402_300_799

# An environment is an inventory group, named as Ansible names groups.
ENVIRONMENT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"

METADATA = (
    "Any text, kept as data for the records: control characters included (clients escape them when they print). "
    'A lone surrogate (JSON "\\ud800"), which is no character, is kept as its escape, the six characters '
    "\\ud800; the length is counted after that."
)


# RFC 3339's date-time (section 5.6), its offset left optional so that a time without one is named as such.
RFC3339 = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<time>\d{2}:\d{2}:\d{2})(?:\.\d+)?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?",
    re.ASCII,
)
AT = (
    "When to run it: an RFC 3339 time with its offset (2026-12-08T03:00:00+01:00, or Z for UTC); absent: now. "
    "It must lie ahead, within DEPLOY_SCHEDULE_HORIZON; the answer is 202 with status `scheduled`, and the request is "
    "checked again against the inventory when it runs"
)


def utc_text(moment: datetime) -> str:
    """A time as the API answers it: UTC, to the second, with Z."""
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def utc_at(timestamp: float) -> str:
    """A Unix time as utc_text() writes it."""
    return utc_text(datetime.fromtimestamp(timestamp, UTC))


def epoch(text: str) -> float:
    """The Unix time of a time the API wrote (utc_text) or read (parse_at)."""
    return datetime.fromisoformat(text).timestamp()


def parse_at(text: str) -> str:
    """An RFC 3339 time with an offset as utc_text() writes it, sub-seconds dropped; ValueError otherwise."""
    match = RFC3339.fullmatch(text)
    if match is None:
        raise ValueError("not an RFC 3339 date-time such as 2026-12-08T03:00:00+01:00")
    if match["offset"] is None:
        raise ValueError("a time without offset is ambiguous: add Z (UTC) or the offset, such as +01:00")
    offset = match["offset"].upper()
    try:
        moment = datetime.fromisoformat(f"{match['date']}T{match['time']}{offset}")
        return utc_text(moment)
    except (ValueError, OverflowError):
        # A 30 February, a 25th hour, or a year 1 moved before the year 1 by its offset.
        raise ValueError("not a valid date-time") from None


def escape_surrogates(text: str) -> str:
    """`text` as Unicode text: each lone surrogate becomes its escape (`\\ud800`), everything else is kept.

    JSON can carry a lone surrogate ("\\ud800"), which Python decodes to a str that has no UTF-8 encoding: SQLite,
    YAML, logs and JSON answers would each refuse it or fail on it.
    """
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class DeployRequest(BaseModel):
    """A deploy or rollback request. `service`, `image` and `environment` name things and are checked against what
    may be deployed; a lone surrogate in one of them fails validation, since no name holds one. `repository`,
    `commit` and `message` are free text (METADATA)."""

    # A field this release does not know is refused rather than ignored: a request that says when to deploy (`at`)
    # must never deploy at once on a server that does not know what it means.
    model_config = ConfigDict(strict=True, extra="forbid")

    service: str = Field(min_length=1, max_length=128)
    image: str | None = Field(None, max_length=255)
    repository: str | None = Field(None, max_length=256, description=METADATA)
    commit: str | None = Field(None, max_length=128, description=METADATA)
    message: str | None = Field(None, max_length=4096, description=METADATA)
    environment: str | None = Field(
        None,
        pattern=ENVIRONMENT_PATTERN,
        description="The inventory group to deploy to (staging, production...); DEPLOY_ENVIRONMENT when absent",
    )
    timestamp: int | None = Field(
        None,
        ge=0,
        le=TIMESTAMP_MAX,
        description="Unix seconds when the request was signed: refused outside the replay window",
    )
    at: Annotated[str, Field(max_length=64, json_schema_extra={"format": "date-time"})] | None = Field(
        None, description=AT
    )
    queue: bool = Field(
        False,
        description="Outside the service's deploy_window: false refuses the deploy (423, naming the next window), "
        "true plans it for the window's next opening (202, status `scheduled`). Rollbacks are never held to a window",
    )

    @field_validator("repository", "commit", "message", mode="before")
    @classmethod
    def metadata_is_text(cls, value: Any) -> Any:
        # Before the type and length checks: no str fails them for a lone surrogate, and the length checked is that of
        # the text kept.
        return escape_surrogates(value) if isinstance(value, str) else value

    @field_validator("image")
    @classmethod
    def image_is_a_reference(cls, image: str | None) -> str | None:
        if image is not None and not IMAGE_REFERENCE.fullmatch(image):
            raise ValueError("not a valid Docker image reference ([registry[:port]/]name[:tag][@sha256:digest])")
        return image or None

    @field_validator("at")
    @classmethod
    def at_is_rfc3339(cls, at: str | None) -> str | None:
        return None if at is None else parse_at(at)


class HostOutcome(BaseModel):
    """What one host of the environment ended with; its steps are those of `steps` that name it."""

    outcome: str = Field(
        description="succeeded, rolled_back (its own failure, or undone when a later batch failed), failed, "
        "rollback_failed, not_reached (the rollout stopped before its batch), or interrupted (it published no record: "
        "it became unreachable, or the run ended first)"
    )
    old_image: str | None = None
    old_image_id: str | None = None
    new_image: str | None = None
    new_image_id: str | None = None
    error: str | None = None


class DeploySuccess(BaseModel):
    success: bool = True
    service: str
    message: str
    old_image: str | None
    new_image: str | None
    steps: list[StepRecord]
    environment: str | None = None
    hosts: dict[str, HostOutcome] = Field(default_factory=dict)


class DeployFailure(BaseModel):
    success: bool = False
    service: str
    error: str
    logs: str
    steps: list[StepRecord]
    environment: str | None = None
    hosts: dict[str, HostOutcome] = Field(default_factory=dict)


# How a deploy or rollback that ran can end; a notification can be sent for each.
FinishedOutcome = Literal["succeeded", "failed", "rolled_back", "rollback_failed", "interrupted"]
FINISHED_OUTCOMES: tuple[FinishedOutcome, ...] = get_args(FinishedOutcome)
# scheduled: a planned deploy waiting for its time; cancelled before it started; missed: its time passed while the API
# was down, or while its service stayed busy, by more than DEPLOY_SCHEDULE_GRACE.
Outcome = Literal["scheduled", "running", FinishedOutcome, "rejected", "cancelled", "missed"]
# What a notification can be sent for: the finished outcomes, and a planned deploy that was missed.
NotifyEvent = Literal[FinishedOutcome, "missed"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = (*FINISHED_OUTCOMES, "missed")
Trigger = Literal["webhook", "schedule", "watch", "cli", "recovery"]
# How deployctl's User-Agent begins: the API records what it sends as trigger `cli`.
DEPLOYCTL_AGENT = "deployctl/"
Reconciliation = Literal["restored", "completed", "removed", "superseded", "nothing", "failed"]


class DeploymentAccepted(BaseModel):
    """The 202 body of `?wait=false`: the deploy goes on; follow it at status_url."""

    deployment_id: str
    service: str
    status: Literal["running"] = "running"
    status_url: str


class DeploymentScheduled(BaseModel):
    """The 202 body of a request with `at`: the deploy is planned; cancel it with DELETE status_url until it starts."""

    deployment_id: str
    service: str
    status: Literal["scheduled"] = "scheduled"
    at: str = Field(description="When it runs, in UTC")
    status_url: str


class DeploymentRecord(BaseModel):
    """One signed request that reached validation, and what became of it."""

    id: str
    action: Literal["deploy", "rollback", "remove", "settle"] = Field(
        description="deploy, rollback; remove: reconciliation took away what a first deploy half-started; settle: it "
        "kept one container of a blue-green deploy that died with two"
    )
    service: str | None = Field(description="Null when a rejected body named none")
    image: str | None = Field(
        description="The image requested; null means the compose file's (deploy) or the previous one (rollback)"
    )
    outcome: Outcome
    trigger: Trigger = Field(
        "webhook",
        description="What started it: webhook (a signed POST, planned or not), cli (the same, sent by deployctl), "
        "schedule (a tick of deploy_services.<name>.schedule), watch (a schedule with watch: true that found a new "
        "image in the registry), recovery (reconciliation)",
    )
    planned_at: str | None = Field(None, description="When a planned deploy was to run (UTC); null: it ran at once")
    environment: str | None = Field(None, description="The inventory group deployed to; null: every host")
    strategy: Literal["recreate", "blue_green"] | None = Field(
        None, description="How the service's container was replaced; null for a refusal and older records"
    )
    hosts: dict[str, HostOutcome] = Field(default_factory=dict, description="The outcome on each host")
    old_image: str | None
    old_image_id: str | None
    new_image: str | None
    new_image_id: str | None
    repository: str | None
    commit: str | None
    message: str | None
    source: str | None = Field(description="Address the request came from")
    started_at: str = Field(description="When it started; for a planned deploy not started yet, when it was received")
    finished_at: str | None
    duration_seconds: float | None
    current_step: str | None = Field(description="The step in progress while the outcome is running")
    waiting: str | None = Field(
        None,
        description="While the deploy runs: what it waits for and for how long so far, e.g. 'waiting for the Docker "
        "engine on prod1, 12 s'; null otherwise",
    )
    steps: list[StepRecord]
    error: str | None
    logs: str | None
    http_status: int | None = Field(description="Status the request was answered with (200, 500, 400, 409, 422...)")
    running_image: str | None = Field(description="After an interruption: what the service was found running")
    running_image_id: str | None
    running_state: str | None
    recovery: str | None = Field(
        None,
        description="After an interruption or a failed rollback: what the service was found running, or while it "
        "awaits reconciliation, why (a host's engine does not answer, the host cannot be reached)",
    )
    recovery_action: str | None = Field(None, description="What reconciliation did about it")
    recovered_by: str | None = Field(None, description="The rollback or removal that reconciliation started, if any")
    awaiting_reconciliation: bool = Field(
        False, description="The service is to be brought back to a known healthy image once its hosts answer"
    )
    reconciled_at: str | None = Field(
        None, description="When reconciliation ended, for a record that had to wait for it (null otherwise)"
    )
    reconciliation: Reconciliation | None = Field(
        None,
        description="How reconciliation ended: restored (the previous image), completed (a blue-green deploy's "
        "proven new container kept, the old one drained), removed (what a first deploy half-started), superseded (a "
        "later deployment succeeded there), nothing (nothing to undo), failed (its action failed for good: a person "
        "must look)",
    )


class DeploymentPage(BaseModel):
    items: list[DeploymentRecord]
    total: int
    limit: int
    offset: int


class ScheduleItem(BaseModel):
    """A recurring schedule of the inventory (deploy_services.<name>.schedule) and its next tick."""

    service: str
    cron: str | None = Field(description="The 5-field cron expression; null for a watch that ticks every interval")
    timezone: str = Field(description="The IANA time zone it is read in")
    image: str | None = Field(description="The image each tick deploys; null means the compose file's")
    watch: bool = Field(
        False, description="A tick deploys only when the registry holds another image under that name than runs"
    )
    interval: int | None = Field(None, description="Seconds between the ticks of a watch without cron")
    window: str | None = Field(
        None, description="The service's deploy_window on the hosts a tick reaches: ticks outside it deploy nothing"
    )
    next_run: str = Field(description="The next tick, in UTC")
    hosts: list[str] = Field(description="The hosts whose deploy_services entry holds the schedule")


class SchedulesPage(BaseModel):
    """The recurring schedules, by service, and the planned deploys waiting for their time, soonest first."""

    items: list[ScheduleItem]
    planned: list[DeploymentRecord]
