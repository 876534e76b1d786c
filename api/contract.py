"""Everything the API knows about the playbooks, in one place: their paths, the extra vars it passes, what they
publish, the steps and their record, and how a run's progress is followed.

Progress comes from what ran: the deploy module's results (their `state.steps` and `next_steps`), never from task
names. tests/unit/api/test_contract.py checks every name here against the playbooks, the role and the module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from module_utils.deploy_rules import RECREATE, ROUND_TRIPS, STEPS, round_trips

PLAYBOOKS = Path(__file__).resolve().parents[1] / "playbooks"
DEPLOY_PLAYBOOK = PLAYBOOKS / "deploy.yml"
# The siblings of the deploy playbook, by action: the status read is the reconciliation's, as is the removal of what a
# first deploy half-started; the engine check is the engine watch's.
SIBLINGS = {
    "deploy": "deploy.yml",
    "rollback": "rollback.yml",
    "remove": "remove.yml",
    "settle": "settle.yml",
    "status": "status.yml",
    "engines": "engines.yml",
}

# The extra vars a request becomes (runner.deploy_extravars), and the status read's.
VAR_SERVICE = "service"
VAR_IMAGE = "image"
VAR_ENVIRONMENT = "deploy_environment"
VAR_BATCHES = "deploy_batches"
VAR_ROLLBACK_UPDATED = "deploy_rollback_updated"
VAR_REQUEST = "deploy_request"
EXTRA_VARS = (VAR_SERVICE, VAR_IMAGE, VAR_ENVIRONMENT, VAR_BATCHES, VAR_ROLLBACK_UPDATED, VAR_REQUEST)
# How long a step waits for a Docker engine that does not answer; the reconciliation's status reads pass 0, so that a
# probe of an engine that is down costs one quick run.
VAR_ENGINE_WAIT = "deploy_engine_wait"
# The status read also pulls the image the service is deployed from, and publishes the ID it names (the registry
# watch, api/watch.py).
VAR_WATCH = "deploy_watch"
# The image ID whose container a settling keeps (the reconciliation of a blue-green deploy that died with two).
VAR_KEEP_IMAGE_ID = "deploy_keep_image_id"

# What the playbooks publish with set_stats, one entry per host: the deploy's record, and what a service runs.
RESULT_KEY = "deploy"
STATUS_KEY = "status"
# What the engine check publishes, one entry per host: whether its Docker engine answers, and in one line why not.
ENGINE_KEY = "engine"
ENGINE_FIELDS = ("reachable", "detail")
# The fields of a host's published record (module_utils/deploy_rules.py, host_record), besides `request`.
RESULT_FIELDS = (
    "action",
    "service",
    "success",
    "outcome",
    "check_mode",
    "message",
    "old_image",
    "old_image_id",
    "new_image",
    "new_image_id",
    "changed",
    "error",
    "logs",
    "steps",
)
STATUS_FIELDS = ("service", "container_id", "image", "image_id", "state", "containers")

# The module every step runs in; its results carry the host's state.
ENGINE_MODULE = "compose_deploy"

StepName = Literal[
    "preflight",
    "capture_state",
    "choose_image",
    "pull_image",
    "compose_up",
    "health_check",
    "observe",
    "drain",
    "cleanup",
    "rollback",
]
# How the log announces each step when it starts.
ANNOUNCEMENTS: dict[str, str] = {
    "preflight": "🧭 Checking the deploy before anything changes...",
    "capture_state": "📸 Capturing current state for rollback...",
    "choose_image": "🔎 Choosing the image to roll back to...",
    "pull_image": "⬇️  Pulling image...",
    "compose_up": "🔄 Restarting service via docker compose...",
    "health_check": "🏥 Checking container health...",
    "observe": "👀 Watching the new container beside the old one...",
    "drain": "🚰 Draining the old container...",
    "cleanup": "🧹 Cleaning up previous images...",
    "rollback": "⏪ Rolling back to the captured image...",
}
assert tuple(ANNOUNCEMENTS) == STEPS, "every step has its announcement"


class StepRecord(BaseModel):
    """One finished step of one host, as the deploy module records it (module_utils/deploy_steps.py)."""

    # Records of older versions may carry a field no longer written: read, not shown.
    model_config = ConfigDict(extra="ignore")

    step: StepName
    success: bool
    detail: str = Field(description="What the step found or did, or why it failed, in one line")
    seconds: float | None = Field(None, description="How long the step took on the host")
    image: str | None = Field(None, description="capture_state, choose_image, pull_image, rollback: the image")
    image_id: str | None = Field(None, description="capture_state, choose_image, pull_image: its ID")
    container_id: str | None = Field(
        None, description="compose_up: the service's container (blue_green: the new one), drain: the one left"
    )
    running: bool | None = Field(None, description="health_check: the container runs")
    rolled_back: bool | None = Field(None, description="rollback: the captured image runs again")
    engine_wait: float | None = Field(
        None, description="Seconds the step waited for the host's Docker engine to answer again (a daemon restart)"
    )
    host: str | None = Field(None, description="The host, when the deploy reached more than one")

    @model_serializer(mode="wrap")
    def _only_what_the_step_said(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A step names only what it has: a compose_up record has no image, and says none rather than null.
        return {name: value for name, value in handler(self).items() if value is not None}


def playbook(deploy_playbook: Path, action: str) -> Path:
    """The playbook of an action: the deploy playbook (DEPLOY_PLAYBOOK unless set otherwise), or its sibling."""
    return deploy_playbook.with_name(SIBLINGS[action])


class StepProgress:
    """Follows a run's events: announces each step once, when it starts, and passes on each host's finished steps.

    A host's first round trip is announced when the module starts on it (its steps are the action's first round
    trip); the next ones when the round trip before them returns (its `next_steps`); a step that ran without being
    announced (the rest of a redeploy that changes nothing, a cleanup) when a result shows it done.
    """

    def __init__(
        self,
        action: str = "deploy",
        on_step: Callable[[str, str], None] | None = None,
        on_steps: Callable[[str, list[dict[str, Any]]], None] | None = None,
        strategy: str = RECREATE,
    ) -> None:
        self.first_steps = round_trips(action, strategy)[0] if action in ROUND_TRIPS else ()
        self.on_step = on_step
        self.on_steps = on_steps
        self.announced: set[str] = set()
        self.started: set[str] = set()

    def announce(self, step: str) -> None:
        if step in ANNOUNCEMENTS and step not in self.announced and self.on_step is not None:
            self.announced.add(step)
            self.on_step(step, ANNOUNCEMENTS[step])

    def on_event(self, event: dict[str, Any]) -> bool:
        data = event.get("event_data") or {}
        if data.get("task_action") != ENGINE_MODULE:
            return True
        host = str(data.get("host", ""))
        kind = event.get("event")
        if kind == "runner_on_start" and host not in self.started:
            self.started.add(host)
            for step in self.first_steps:
                self.announce(step)
        if kind not in ("runner_on_ok", "runner_on_failed"):
            return True
        result = data.get("res") or {}
        state = result.get("state") or {}
        steps = state.get("steps")
        if not isinstance(steps, list):
            return True
        for step in steps:
            self.announce(str(step.get("step", "")))
        if result.get("next_steps"):
            self.announce(str(result["next_steps"][0]))
        if self.on_steps is not None:
            self.on_steps(host, steps)
        return True
