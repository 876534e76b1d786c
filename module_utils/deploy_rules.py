"""The deploy's rules, in plain Python for every side that needs them: the deploy module (as
ansible.module_utils.deploy_rules), the deploy role's filters (roles/deploy/filter_plugins) and the API (as
module_utils.deploy_rules), so that none of them can disagree with another.

What a request may deploy, which settings a service has, the round trips of a deploy and the steps each runs, which
failure needs a rollback, which name a rollback brings an image back under, and the record a host publishes. Nothing
here talks to Docker, and nothing imports Ansible.
"""

from __future__ import annotations

import re
from typing import Any

ACTIONS = ("deploy", "rollback")
# Not a request's: the API's reconciliation takes away the container a first deploy half-started, when the deploy could
# not do it itself (the engine did not answer, the run was killed). Its one round trip reads (no history is written)
# and removes.
REMOVE = "remove"
# Not a request's either: the API's reconciliation of a blue-green deploy that died while two containers of the service
# ran. It keeps the one that runs the image it names (the new one once it was proven, else the old one), drains the
# others and removes them. One round trip; it reads without writing history.
SETTLE = "settle"
# The steps, in the order they run. `preflight` starts every action, before anything changes; `rollback` runs only
# after a failure that changed the host (ROLLBACK_AFTER); `observe` and `drain` only in a blue-green deploy
# (BLUE_GREEN_TRIPS) and a settling.
STEPS = (
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
)
# How a deploy replaces the service's container: `recreate` (compose recreates it: the old one stops before the new one
# starts) or `blue_green` (the new one starts beside the old one, which serves until the new one is proven, then
# drains and is removed).
RECREATE, BLUE_GREEN = "recreate", "blue_green"
STRATEGIES = (RECREATE, BLUE_GREEN)
# The module round trips of a deploy and a rollback: each costs about 0.25 s of Ansible, so the steps that need no
# look at the host between them share one. Three, so that the record follows the deploy (what ran before is known
# before anything changes, the new container before its health check); the first one finishes a redeploy that changes
# nothing (compose up, health check and cleanup follow in it). Each action begins with preflight, which refuses to
# replace the container the deploy runs in (the API's own service: module_utils/deploy_self.py).
ROUND_TRIPS = {
    "deploy": (("preflight", "capture_state", "pull_image"), ("compose_up",), ("health_check", "cleanup")),
    "rollback": (
        ("preflight", "capture_state", "choose_image", "pull_image"),
        ("compose_up",),
        ("health_check", "cleanup"),
    ),
    REMOVE: (("preflight", "capture_state", "rollback"),),
    SETTLE: (("preflight", "capture_state", "drain"),),
}
# A blue-green deploy's preflight also checks that two containers of the service can run side by side, and it has one
# more round trip: the record knows the new container passed its health check (and the observation) before the old
# one is drained, so that a run that dies in between is finished the right way (api/recovery.py).
BLUE_GREEN_TRIPS = {
    "deploy": (
        ("preflight", "capture_state", "pull_image"),
        ("compose_up",),
        ("health_check", "observe"),
        ("drain", "cleanup"),
    ),
    "rollback": (
        ("preflight", "capture_state", "choose_image", "pull_image"),
        ("compose_up",),
        ("health_check", "observe"),
        ("drain", "cleanup"),
    ),
    REMOVE: ROUND_TRIPS[REMOVE],
    SETTLE: ROUND_TRIPS[SETTLE],
}
# A failure in these left the host changed: the captured image is brought back. (A cleanup that fails after a
# healthy start too: the deploy is reported failed, and the host must not run what a failed deploy brought.)
ROLLBACK_AFTER = ("compose_up", "health_check", "observe", "drain", "cleanup")
OUTCOMES = ("succeeded", "rolled_back", "rollback_failed", "failed", "not_reached")

# The distribution reference grammar, [registry[:port]/]path[:tag][@digest], bounded to 255 characters.
_COMPONENT = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
# A first component is a registry only with a dot or a port, or as localhost (as Docker reads it).
_DOMAIN = rf"(?:localhost(?::[0-9]+)?|{_COMPONENT}(?:\.{_COMPONENT})+(?::[0-9]+)?|{_COMPONENT}:[0-9]+)"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"^(?=.{{1,255}}$)(?:{_DOMAIN}/)?{_PATH}(?:/{_PATH})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@sha256:[a-f0-9]{{64}})?$"
)

# Every key of a deploy_services entry the deploy reads, and its default. An empty compose_file is found as
# `docker compose` finds it (deploy_compose.find_compose_file).
SERVICE_DEFAULTS = {
    "compose_file": "",
    "health_timeout": 60,
    "health_url": "",
    "keep_images": 1,
    "pull": True,
    "strategy": RECREATE,
    "drain_seconds": 3,
    "observe_seconds": 0,
}
# What a health URL names as its host to be probed at the new container's own address on the project network.
ADDRESS = "{address}"


def image_repository(image: str) -> str:
    """`registry/path` of an image reference, without its tag and digest."""
    name = image.split("@", 1)[0]
    colon = name.rfind(":")
    return name[:colon] if colon > name.rfind("/") else name


def repositories(settings: dict[str, Any]) -> list[str]:
    """A service's `image_repository`: one repository or a list; empty allows any."""
    value = settings.get("image_repository")
    if value is None or value == "":
        return []
    return [str(item) for item in value] if isinstance(value, (list, tuple)) else [str(value)]


def allows_image(settings: dict[str, Any], image: str) -> bool:
    """Whether a service's entry allows `image`: any tag or digest of one of its repositories."""
    allowed = repositories(settings)
    return not allowed or image_repository(image) in allowed


def refusal(action: object, service: object, services: object, image: str) -> str:
    """The first reason a host refuses the request, in one line; empty when it allows it.

    `services` is the host's deploy_services; `image` the requested image, empty for the compose file's.
    """
    entries = services if isinstance(services, dict) else {}
    if action not in (*ACTIONS, REMOVE, SETTLE):
        return f"Action {action!r} is neither deploy nor rollback"
    if not isinstance(service, str) or service not in entries:
        named = service if isinstance(service, str) else ""
        return f"Service {named!r} not allowed. Allowed: {', '.join(sorted(map(str, entries)))}"
    if image and not IMAGE_REFERENCE.match(image):
        return f"Image {image!r} is not a valid image reference"
    settings = entries[service] if isinstance(entries[service], dict) else {}
    if image and not allows_image(settings, image):
        return (
            f"Image {image!r} is not allowed for service {service!r}. "
            f"Allowed repositories: {', '.join(repositories(settings))}"
        )
    return settings_problem(service, settings)


def _whole(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def settings_problem(service: str, entry: dict[str, Any]) -> str:
    """What is wrong with the deploy settings of a service's deploy_services entry, in one line; empty when nothing.

    The strategy is one of STRATEGIES, drain_seconds and observe_seconds are whole seconds (0 or more), and a
    blue-green service's health_url, if any, is probed at the new container's own address: its host is `{address}`,
    since a published port both containers share would answer for either of them.
    """
    settings = {**SERVICE_DEFAULTS, **entry}
    strategy = settings["strategy"]
    if strategy not in STRATEGIES:
        return f"Service {service!r}: strategy {strategy!r} is neither {' nor '.join(STRATEGIES)}"
    for key in ("drain_seconds", "observe_seconds"):
        if not _whole(settings[key], 0):
            return f"Service {service!r}: {key} must be a whole number of seconds, 0 or more, not {settings[key]!r}"
    url = str(settings["health_url"] or "")
    if strategy == BLUE_GREEN and url and ADDRESS not in url:
        return (
            f"Service {service!r} deploys blue_green, so its health_url must probe the new container itself: write its "
            f"host as {ADDRESS} (for example http://{ADDRESS}:8080/health), not {url!r}"
        )
    return ""


def twin_problem(service: str, config: dict[str, Any], compose_path: str) -> str:
    """Why two containers of a compose service cannot run side by side, in one line that says how to fix it; empty
    when they can. `config` is the service's entry of `docker compose config --format json`.

    A fixed container_name, a published host port (an ephemeral one, `"8080"` alone, is fine), the host's network
    namespace, or more than one replica (blue_green replaces one container; several would need as many twins).
    """
    where = f"service {service} of {compose_path}"
    instead = "or deploy it with strategy recreate"
    if config.get("container_name"):
        return (
            f"Cannot deploy {where} blue_green: it sets container_name {config['container_name']!r}, which two "
            f"containers cannot share. Remove container_name (compose then names each container itself), {instead}"
        )
    for port in config.get("ports") or []:
        published = port.get("published") if isinstance(port, dict) else None
        if published not in (None, "", "0", 0):
            host_ip = f"{port.get('host_ip')}:" if port.get("host_ip") else ""
            return (
                f"Cannot deploy {where} blue_green: it publishes host port {host_ip}{published} (container port "
                f"{port.get('target')}), which two containers cannot share. Reach it through a reverse proxy on the "
                f"project's network and publish no host port, {instead}"
            )
    if config.get("network_mode") == "host":
        return (
            f"Cannot deploy {where} blue_green: it uses network_mode host, where two containers would listen on the "
            f"same ports. Give it a network of its own behind a reverse proxy, {instead}"
        )
    replicas = (config.get("deploy") or {}).get("replicas")
    scale = config.get("scale")
    count = next((value for value in (replicas, scale) if isinstance(value, int)), 1)
    if count != 1:
        return (
            f"Cannot deploy {where} blue_green: it runs {count} replicas, and a blue-green deploy replaces one "
            f"container. Run one replica, {instead}"
        )
    return ""


def round_trips(action: str, strategy: str = RECREATE) -> tuple[tuple[str, ...], ...]:
    """The round trips of an action with a strategy."""
    return (BLUE_GREEN_TRIPS if strategy == BLUE_GREEN else ROUND_TRIPS)[action]


def service_settings(services: object, service: str) -> dict[str, Any]:
    """A service's deploy_services entry over SERVICE_DEFAULTS."""
    entry = services.get(service) if isinstance(services, dict) else None
    return {**SERVICE_DEFAULTS, **(entry if isinstance(entry, dict) else {})}


def first_unfinished(state: dict[str, Any], action: str) -> str:
    """The first step of the action that has no record yet: where a failure outside the steps stopped it."""
    done = {step["step"] for step in state.get("steps", [])}
    trips = round_trips(action, state.get("strategy", RECREATE))
    return next((step for trip in trips for step in trip if step not in done), "cleanup")


def failed_outside(state: dict[str, Any], action: str, msg: str) -> dict[str, Any]:
    """The state after a failure outside the steps (the host could not be reached): its first unfinished step failed.

    A state whose steps already say where they failed is returned as it is.
    """
    if state.get("failed_step"):
        return state
    step = first_unfinished(state, action)
    steps = [*state.get("steps", []), {"step": step, "success": False, "detail": msg}]
    return {**state, "steps": steps, "failed_step": step, "error": msg}


def next_steps(state: dict[str, Any], action: str) -> list[str]:
    """The steps the next round trip runs: the rollback after a failure that changed the host, nothing after another
    failure or the last step, else the round trip after the last one done."""
    if state.get("failed_step"):
        # A settling that fails leaves what it found: the API checks again.
        undo = state["failed_step"] in ROLLBACK_AFTER and "rollback" not in state and action != SETTLE
        return ["rollback"] if undo else []
    done = {step["step"] for step in state.get("steps", [])}
    trips = round_trips(action, state.get("strategy", RECREATE))
    return next((list(trip) for trip in trips if not set(trip) <= done), [])


def ranked_names(repo_tags: list[str], history_prefix: str, file_image: str) -> list[str]:
    """The names an image answers to now (its tags), best first for a rollback to bring it back under: those of the
    compose file's repository before others, a fixed tag before `latest`; never a history tag."""

    def bare(repository: str) -> str:
        return re.sub(r"^(docker\.io/)?(library/)?", "", repository)

    own = bare(image_repository(file_image)) if file_image else None
    ranked = []
    for name in repo_tags or []:
        if name.startswith(f"{history_prefix}/") or name == "<none>:<none>":
            continue
        same = own is not None and bare(image_repository(name)) == own
        ranked.append(((0 if same else 2) + (1 if name.endswith(":latest") else 0), name))
    return [name for _, name in sorted(ranked)]


def noun(action: str) -> str:
    return {"rollback": "Rollback", REMOVE: "Removal", SETTLE: "Settling"}.get(action, "Deployment")


def outcome_message(outcome: str, action: str) -> str:
    if outcome == "succeeded":
        return f"{noun(action)} successful"
    if outcome == "rolled_back":
        if action == "rollback":
            return "Rollback failed, restored the image that ran before"
        return "Deployment failed, rolled back to the previous image"
    if outcome == "rollback_failed":
        if action == "rollback":
            return "Rollback failed and restoring the image that ran before failed too"
        return "Deployment failed and the rollback failed too"
    if outcome == "not_reached":
        return "Not deployed"
    return f"{noun(action)} failed"


def outcome_of(state: dict[str, Any]) -> str:
    rollback = state.get("rollback")
    if rollback is not None and state.get("removed"):
        return "succeeded" if rollback["success"] else "failed"
    if rollback is not None:
        if rollback["rolled_back"]:
            return "rolled_back"
        # A first deploy had its half-started container removed: a failed deploy, not a failed rollback.
        return "failed" if rollback["success"] else "rollback_failed"
    if state.get("not_reached"):
        return "not_reached"
    # The last step of the action (cleanup; a settling's drain) must be done.
    action, strategy = state.get("action", "deploy"), state.get("strategy", RECREATE)
    last = round_trips(action, strategy)[-1][-1] if action in ROUND_TRIPS else "cleanup"
    if state.get("failed_step") or last not in {step["step"] for step in state.get("steps", [])}:
        return "failed"
    return "succeeded"


def host_record(state: dict[str, Any], action: str, service: str, check_mode: bool = False) -> dict[str, Any]:
    """The record a host publishes (under `deploy`, per host), from the state of its last round trip."""
    outcome = outcome_of(state)
    success = outcome == "succeeded"
    capture, pull, up = state.get("capture") or {}, state.get("pull") or {}, state.get("up") or {}
    return {
        "action": action,
        "service": service,
        "success": success,
        "outcome": outcome,
        "check_mode": check_mode,
        "message": outcome_message(outcome, action),
        "old_image": capture.get("image") or None,
        "old_image_id": capture.get("image_id") or None,
        "new_image": pull.get("image") or state.get("target") or None,
        "new_image_id": pull.get("image_id") or None,
        # A host undone because the rollout stopped elsewhere had changed twice.
        "changed": (success and bool(pull.get("changed") or up.get("changed"))) or bool(state.get("stopped_at")),
        "error": None if success else state.get("error") or "Deploy failed",
        "logs": state.get("logs", ""),
        "steps": list(state.get("steps", [])),
    }


def failure_message(state: dict[str, Any], action: str, service: str) -> str:
    """The one line a failed run ends with: what failed, where, why, and what became of the host. Empty when the
    host succeeded."""
    outcome = outcome_of(state)
    if outcome == "succeeded":
        return ""
    what = "Rollback" if action == "rollback" else "Deploy"
    if state.get("stopped_at"):
        rollback = state.get("rollback") or {}
        return (
            f"{what} of {service} was undone because the rollout stopped at {state['stopped_at']}. "
            f"{rollback.get('detail', '')}"
        ).strip()
    if outcome == "not_reached":
        error: str = state.get("error", "")
        return error
    rollback = state.get("rollback")
    after = f". {rollback['detail']}" if rollback else ". Nothing was changed"
    return f"{what} of {service} failed at {state.get('failed_step')}: {state.get('error')}{after}"
