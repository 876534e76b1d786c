"""The deploy module's work (library/compose_deploy.py): the steps of one round trip, in the deploy's order, each the
one implementation of its step, and the record of each step in the shape the API reads.

A round trip takes the `state` the one before it returned (what was captured, chosen, pulled and started, and every
step's record so far) and returns it with its own steps added; the deploy role passes it on, and publishes the host's
record made from the last one (deploy_rules.host_record).
"""

from __future__ import annotations

import os
import re
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypedDict

from ansible.module_utils.deploy_bluegreen import discard, health_url_for, observe, others, retire
from ansible.module_utils.deploy_compose import (
    ComposeResult,
    Project,
    compose_service,
    pin_file_for,
    read_project,
    service_config,
)
from ansible.module_utils.deploy_docker import Docker, StepError, service_containers
from ansible.module_utils.deploy_health import HealthResult, Verdict, container_health, inspect_container
from ansible.module_utils.deploy_history import Capture, CaptureResult, CleanupResult, capture_state, cleanup
from ansible.module_utils.deploy_image import inspect, pull_image, rollback_image
from ansible.module_utils.deploy_rules import (
    BLUE_GREEN,
    RECREATE,
    REMOVE,
    ROUND_TRIPS,
    SETTLE,
    STEPS,
    next_steps,
    ranked_names,
    twin_problem,
)
from ansible.module_utils.deploy_self import MOUNTINFO, compose_identity, own_container_id, self_refusal

# The module's steps: the deploy's, and `status`, which only reads what the service runs.
MODULE_STEPS = (*STEPS, "status")
STAMP_FORMAT = "%Y%m%dT%H%M%S%f"
STAMP = re.compile(r"^[0-9]{8}T[0-9]{12}$")
# What later steps read of a capture, a pull and a start, from this call or from the state of an earlier one.
CAPTURE_KEYS = ("file_image", "container_id", "image_id", "image", "history_repository")
PULL_KEYS = ("image", "image_id")
UP_KEYS = ("container_id",)
SKIPPED = "Skipped in check mode"
# What finish_unchanged adds when the steps end with pull_image and the service runs the pulled image already.
FINISH = {
    RECREATE: ("compose_up", "health_check", "cleanup"),
    BLUE_GREEN: ("compose_up", "health_check", "observe", "drain", "cleanup"),
}
# How often the rollback puts the captured image back when the engine went away during an attempt.
RESTORE_ATTEMPTS = 3
# A wait shorter than this (the engine was back at the first ping) is not worth a word in the record.
ENGINE_WAIT_SHOWN = 0.5
NO_PREVIOUS_CONTAINER = "Nothing to roll back to (no previous container); the half-started container was removed"


# What the steps keep in the state besides the capture (deploy_history.Capture) and the verdict of the health check
# (deploy_health.Verdict).
class Choice(TypedDict):
    """The image choose_image chose; `pull` when pull_image is to pull it (the host lacks it)."""

    image: str
    image_id: str
    pull: bool
    detail: str


class Pull(TypedDict):
    """The image pull_image pulled or found; `pulled` when it asked the registry."""

    image: str
    image_id: str
    changed: bool
    pulled: bool


class Up(TypedDict):
    """The container compose_up left; `beside` the one that served before it, when it started the new one beside it
    (blue_green), else empty."""

    container_id: str
    changed: bool
    beside: str


class Rollback(TypedDict):
    """The rollback's outcome; `rolled_back` when the captured image runs again."""

    success: bool
    rolled_back: bool
    image: str
    image_id: str
    detail: str


# The keys every record has, as a base class: typing.Required does not exist on the target host's Python 3.9.
class _StepRecordKeys(TypedDict):
    step: str
    success: bool
    detail: str


class StepRecord(_StepRecordKeys, total=False):
    """A step's record in the state's `steps`: `step`, `success` and `detail` always, the seconds the step took on
    the host, and by step the image, container or rollback it is about."""

    seconds: float
    image: str | None
    image_id: str | None
    container_id: str
    running: bool
    rolled_back: bool
    engine_wait: float


def lacking(given: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    return [key for key in keys if key not in given]


def ordered_steps(requested: list[str], image: str, state: dict[str, Any], action: str = "deploy") -> list[str]:
    """The requested steps in the deploy's order, refused when a step lacks what it reads.

    What a step reads comes from an earlier step of the same call or from the `state` of an earlier call:
    choose_image, compose_up, cleanup and rollback read the capture (and pull_image does, without an `image`),
    health_check the container compose_up started, cleanup the image pulled. `status` runs alone.
    """
    repeated = sorted({step for step in requested if requested.count(step) > 1})
    if repeated:
        raise StepError(f"Steps may be named once each: {', '.join(repeated)} is repeated")
    if "status" in requested and len(requested) > 1:
        raise StepError("Step status runs alone")
    ordered = [step for step in MODULE_STEPS if step in requested]
    captured, pulled, started = state.get("capture") or {}, state.get("pull") or {}, state.get("up") or {}
    for step in ordered:
        reads_capture = step in ("choose_image", "compose_up", "cleanup", "rollback") or (
            step == "pull_image" and not image and "choose_image" not in ordered and not state.get("choice")
        )
        if reads_capture and "capture_state" not in ordered and lacking(captured, CAPTURE_KEYS):
            raise StepError(
                f"Step {step} needs a capture: add capture_state to the steps, or pass the state of an earlier call "
                f"(its capture lacks {', '.join(lacking(captured, CAPTURE_KEYS))})"
            )
        reads_up = step in ("health_check", "observe") or (step == "drain" and action != SETTLE)
        if reads_up and "compose_up" not in ordered and lacking(started, UP_KEYS):
            raise StepError(
                f"Step {step} needs compose_up in the same call, or the state of an earlier call that ran it"
            )
        if step == "cleanup" and "pull_image" not in ordered and lacking(pulled, PULL_KEYS):
            raise StepError(
                "Step cleanup needs pull_image in the same call, or the state of an earlier call that ran it"
            )
    return ordered


def runs_pulled_image(capture: Capture, pull: Pull) -> bool:
    """Whether the service runs the pulled image already: its container is running that image ID, and the pull
    brought nothing new (under check mode a pull always counts as new: only the registry knows)."""
    return (
        bool(capture.get("container_id"))
        and capture.get("container_state") == "running"
        and bool(pull.get("image_id"))
        and pull["image_id"] == capture.get("image_id")
        and not pull.get("changed", True)
    )


def check_stamp(stamp: str) -> datetime:
    if not STAMP.match(stamp):
        raise StepError(f"stamp must be the UTC time as %Y%m%dT%H%M%S%f (20260102T030405123456), not '{stamp}'")
    return datetime.strptime(stamp, STAMP_FORMAT)


def later_stamp(stamp: str, elapsed: float) -> str:
    """`stamp` (the controller's clock when the task started) plus the seconds elapsed on the host since, at least
    one microsecond: a stamp strictly later than the capture's, which is `stamp` itself."""
    later = check_stamp(stamp) + timedelta(microseconds=max(1, round(elapsed * 1_000_000)))
    return later.strftime(STAMP_FORMAT)


# The records of the steps, in the shape the playbook keeps and the API reads.
def capture_record(capture: Capture) -> StepRecord:
    return {
        "step": "capture_state",
        "success": True,
        "image": capture["image"] or None,
        "image_id": capture["image_id"] or None,
        "detail": f"Running {capture['image']} ({capture['image_id'][7:19]})"
        if capture["container_id"]
        else "No container yet: first deploy",
    }


def pull_record(pull: Pull, not_pulled_reason: str) -> StepRecord:
    if pull["pulled"]:
        done = f"Pulled {pull['image']}: " + ("new image " if pull["changed"] else "already up to date ")
    else:
        done = f"Not pulled ({not_pulled_reason}): the host has {pull['image']} "
    return {
        "step": "pull_image",
        "success": True,
        "image": pull["image"],
        "image_id": pull["image_id"] or None,
        "detail": done + pull["image_id"][7:19],
    }


def up_record(up: Up, captured_container_id: str, check_mode: bool = False) -> StepRecord:
    if up["beside"]:
        what = "Would start a second container" if check_mode else f"Started {up['container_id'][:12]}"
        detail = f"{what} beside {up['beside'][:12]}, which keeps serving"
    elif up["changed"]:
        detail = "Container recreated" if captured_container_id else "Container created"
    else:
        detail = "Container already up to date"
    return {"step": "compose_up", "success": True, "container_id": up["container_id"][:12], "detail": detail}


def health_record(verdict: Verdict | None) -> StepRecord:
    """The health check's record; `verdict` None when it was skipped (check mode)."""
    detail = verdict["detail"] if verdict is not None else SKIPPED
    return {"step": "health_check", "success": True, "running": True, "detail": detail}


def cleanup_record(cleaned: CleanupResult | None) -> StepRecord:
    """The cleanup's record; `cleaned` None when it was skipped (check mode)."""
    detail = (
        f"Removed {len(cleaned['removed'])} previous image(s), kept {len(cleaned['kept'])}"
        if cleaned is not None
        else SKIPPED
    )
    return {"step": "cleanup", "success": True, "detail": detail}


def preflight_record(service: str, blue_green: bool) -> StepRecord:
    detail = (
        f"Two containers of {service} can run side by side"
        if blue_green
        else f"The deploy runs in no container of {service}"
    )
    return {"step": "preflight", "success": True, "detail": detail}


def failure_record(step: str, msg: str) -> StepRecord:
    return {"step": step, "success": False, "detail": msg}


def choose_record(choice: Choice) -> StepRecord:
    return {
        "step": "choose_image",
        "success": True,
        "image": choice["image"],
        "image_id": choice["image_id"] or None,
        "detail": choice["detail"],
    }


def rollback_record(rollback: Rollback) -> StepRecord:
    return {
        "step": "rollback",
        "success": rollback["success"],
        "rolled_back": rollback["rolled_back"],
        "image": rollback["image"] or None,
        "detail": rollback["detail"],
    }


def container_state(docker: Docker, container_id: str) -> str:
    """`running`, `running, healthy`, `exited`... of a container; `absent` without one."""
    if not container_id:
        return "absent"
    found = inspect(docker, "container", container_id)
    if found is None:
        return "absent"
    health = (found["State"].get("Health") or {}).get("Status")
    status: str = found["State"]["Status"]
    return status + (f", {health}" if health else "")


def run_steps(
    docker: Docker,
    params: dict[str, Any],
    check_mode: bool,
    clock: Callable[[], float] = time.monotonic,
    mountinfo: str = MOUNTINFO,
) -> dict[str, Any]:
    """Run the requested steps and return the module's result; on failure it has `failed_step` and `msg`.

    `params` are compose_deploy's options. A step that fails ends the run: later steps do not start. The result's
    `state` is the state given with this call's work added; `next_steps` the steps of the next round trip (the
    rollback after a failure that changed the host), empty when there is none. `mountinfo`: the mount table that says
    which container the module runs in (deploy_self.own_container_id).
    """
    started = clock()
    state: dict[str, Any] = {"steps": [], **params["state"]}
    state["steps"] = list(state["steps"])
    if params["image"]:
        # What a failure before the pull still names as the image it was to deploy.
        state.setdefault("target", params["image"])
    action = params["action"]
    # The strategy the deploy began with: the round trips after the first follow it, whatever they are given.
    state.setdefault("strategy", params["strategy"])
    state.setdefault("action", action)
    blue_green = state["strategy"] == BLUE_GREEN and action not in (REMOVE, SETTLE)
    result: dict[str, Any] = {"changed": False, "finished": False, "state": state, "logs": "", "timings": {}}
    # The project as preflight read it, for capture_state in the same round trip.
    read: list[Project] = []

    def target() -> str:
        """The image this run deploys: the one asked for, else the one chosen or pulled before, else the compose
        file's."""
        chosen = (state.get("choice") or {}).get("image") or (state.get("pull") or {}).get("image")
        image: str = params["image"] or chosen or state["capture"].get("file_image", "")
        return image

    def compose(**given: Any) -> ComposeResult:
        """compose_service on the captured project, its compose file and the pin file beside it."""
        capture = state["capture"]
        compose_file = capture.get("compose_file") or params["compose_file"]
        return compose_service(
            docker,
            project_dir=capture.get("project_dir") or os.path.expanduser(os.path.expandvars(params["project_dir"])),
            compose_file=compose_file,
            pin_file=pin_file_for(compose_file),
            service=params["service"],
            file_image=capture["file_image"],
            stop_timeout=params["stop_timeout"],
            check_mode=check_mode,
            project=capture.get("project", ""),
            **given,
        )

    def health(container_id: str) -> HealthResult:
        url = params["health_url"]
        return container_health(
            docker,
            container=container_id,
            timeout=params["health_timeout"],
            url=health_url_for(docker, url, container_id) if url and not check_mode else url,
            settle=params["health_settle"],
            interval=params["health_interval"],
            log_lines=params["health_log_lines"],
            check_mode=check_mode,
            earlier_outage=state.get("engine_waited", 0.0),
        )

    def read_capture(read_only: bool) -> CaptureResult:
        return capture_state(
            docker,
            project_dir=params["project_dir"],
            compose_file=params["compose_file"],
            service=params["service"],
            history_prefix=params["history_prefix"],
            stamp=params["stamp"],
            check_mode=read_only,
            read=read[0] if read else None,
        )

    def preflight_step() -> StepRecord:
        """Before anything changes, for every action: the deploy does not run in a container of the service, which it
        would stop midway (deploy_self). A blue-green deploy also: two containers of the service can run side by side
        (twin_problem), and only one runs now (two are a blue-green deploy that did not finish)."""
        refuse_own_container()
        if not blue_green:
            return preflight_record(params["service"], blue_green=False)
        project = project_once()
        problem = twin_problem(params["service"], service_config(project, params["service"]), project["compose_path"])
        if problem:
            raise StepError(problem)
        # A stopped one counts too: compose would start it again as the second container.
        found = service_containers(docker, project["config"]["name"], params["service"])
        if len(found) > 1:
            listed = ", ".join(f"{row['ID'][:12]} ({row.get('State')})" for row in found)
            raise StepError(
                f"Service {params['service']} has {len(found)} containers ({listed}): a blue-green deploy did not "
                "finish. The API settles it by itself; by hand, remove the one that did not pass its health check"
            )
        return preflight_record(params["service"], blue_green=True)

    def project_once() -> Project:
        """The project, read once a round trip: preflight reads it for capture_state."""
        if not read:
            read.append(read_project(docker, params["project_dir"], params["compose_file"]))
        return read[0]

    def refuse_own_container() -> None:
        """Refuse to replace or remove the container this deploy runs in: compose would stop it, and the deploy with
        it. Outside a container, and in a container of another service, nothing to refuse; the project is read only
        when the service's name is that of the container's."""
        own_id = own_container_id(mountinfo)
        # On another engine (DOCKER_HOST) the container is not found, and nothing there runs the deploy.
        own = inspect(docker, "container", own_id) if own_id else None
        if own is None:
            return
        own_project, own_service = compose_identity(own)
        if own_service != params["service"]:
            return
        project = project_once()
        if own_project == project["config"]["name"]:
            builds = "build" in ((project["config"].get("services") or {}).get(params["service"]) or {})
            raise StepError(self_refusal(action, params["service"], own, project["compose_path"], builds))

    def capture_step() -> StepRecord:
        # A removal keeps no history: the image it takes away never passed its health check.
        done = read_capture(check_mode or action in (REMOVE, SETTLE))
        state["capture"] = done["capture"]
        result["changed"] |= done["changed"]
        return capture_record(done["capture"])

    def choose_step() -> StepRecord:
        """The image a rollback brings back: the one asked for, else the newest previous one of the history, under
        its best name (deploy_rules.ranked_names). An image the host has is never pulled: a tag such as `latest`
        may name another image in the registry now."""
        capture, requested = state["capture"], params["image"]
        previous = [entry for entry in capture["history"] if entry["id"] != capture["image_id"]]
        if not requested and not previous:
            raise StepError(f"No previous image of {params['service']} is kept on {params['host']}")
        found = inspect(docker, "image", requested or previous[0]["id"])
        names = ranked_names((found or {}).get("RepoTags") or [], params["history_prefix"], capture["file_image"])
        image = requested or (names[0] if names else previous[0]["ref"])
        detail = f"Requested {requested}" if requested else f"The newest previous image: {image}"
        if found:
            detail += f" ({found['Id'][7:19]}, on the host)"
        else:
            detail += ", not on the host" + (": pulling it" if params["pull"] else " and pulling is off")
        state["choice"] = {
            "image": image,
            "image_id": (found or {}).get("Id", ""),
            "pull": params["pull"] and not found,
            "detail": detail,
        }
        return choose_record(state["choice"])

    def pull_step() -> StepRecord:
        image = target()
        choice = state.get("choice")
        pull = choice["pull"] if choice else params["pull"]
        done = pull_image(docker, name=image, pull=pull, platform=params["platform"], check_mode=check_mode)
        state["pull"] = {"image": image, "image_id": done["image_id"], "changed": done["changed"], "pulled": pull}
        result["changed"] |= done["changed"]
        reason = "on the host already" if choice else "pull: false"
        return pull_record(state["pull"], reason)

    def up_step() -> StepRecord:
        capture = state["capture"]
        # The container as the capture found it, this round trip or the one before: no second `docker ps`.
        found = {"ID": capture["container_id"], "State": capture["container_state"]} if capture["container_id"] else {}
        done = compose(image=target(), state="present", before=found, beside=blue_green)
        beside = capture["container_id"] if done["beside"] else ""
        state["up"] = {"container_id": done["container_id"], "changed": done["changed"], "beside": beside}
        result["diff"] = done["diff"]
        result["changed"] |= done["changed"]
        return up_record(state["up"], state["capture"]["container_id"], check_mode)

    def health_step() -> StepRecord:
        if check_mode:
            return health_record(None)
        done = health(state["up"]["container_id"])
        state["health"] = done["verdict"]
        if not done["verdict"]["healthy"]:
            state["logs"] = result["logs"] = done["logs"]
            raise StepError(done["verdict"]["detail"])
        return health_record(done["verdict"])

    def observe_step() -> StepRecord:
        """The canary window of a blue-green deploy: the new container, healthy, is watched while the old one still
        serves beside it."""
        up, seconds = state["up"], params["observe_seconds"]
        if check_mode:
            return {"step": "observe", "success": True, "detail": SKIPPED}
        if not up.get("beside") or not seconds:
            why = "no container was started beside the old one" if not up.get("beside") else "observe_seconds is 0"
            return {"step": "observe", "success": True, "detail": f"Not observed: {why}"}
        url = params["health_url"]
        problem = observe(
            docker,
            up["container_id"],
            seconds,
            health_url_for(docker, url, up["container_id"]) if url else "",
            params["health_interval"],
        )
        if problem:
            raise StepError(problem)
        detail = f"Watched {up['container_id'][:12]} for {seconds} s beside {up['beside'][:12]}: it stayed healthy"
        return {"step": "observe", "success": True, "detail": detail}

    def drain_step() -> StepRecord:
        """The old container leaves: it serves `drain_seconds` more, gets its stop signal and grace period, and is
        removed. Then exactly one container of the service is left, running the new image."""
        if action == SETTLE:
            return settle()
        up, capture = state["up"], state["capture"]
        if check_mode:
            return {"step": "drain", "success": True, "detail": SKIPPED}
        if not up.get("beside"):
            return {"step": "drain", "success": True, "detail": "Nothing to drain: no container was started beside"}
        retired = retire(docker, up["beside"], params["drain_seconds"])
        left = service_containers(docker, capture["project"], params["service"])
        expected = (state.get("pull") or {}).get("image_id", "")
        runs = rollback_image(docker, expected, "", up["container_id"], check_mode)["container_image_id"]
        if [row["ID"] for row in left] != [up["container_id"]] or runs != expected:
            names = ", ".join(f"{row['ID'][:12]} ({row.get('State')})" for row in left) or "none"
            raise StepError(
                f"After the drain the service has {names}, not {up['container_id'][:12]} alone running "
                f"{expected[7:19]} (it runs {runs[7:19] or 'no image'})"
            )
        detail = (
            f"Drained {up['beside'][:12]} for {retired['drained']:.0f} s, stopped it in {retired['stopped_in']:.1f} s "
            f"and removed it; {up['container_id'][:12]} serves alone ({expected[7:19]})"
        )
        return {"step": "drain", "success": True, "container_id": up["container_id"][:12], "detail": detail}

    def settle() -> StepRecord:
        """The API's reconciliation of a blue-green deploy that died with several containers of the service: the
        running one whose image is `keep_image_id` stays (pinned as it was created, so compose finds it), every other
        one drains and goes."""
        capture, keep = state["capture"], params["keep_image_id"]
        rows = service_containers(docker, capture["project"], params["service"])
        found = [inspect(docker, "container", row["ID"]) for row in rows]
        keepers = [entry for entry in found if entry and entry["State"]["Running"] and entry["Image"] == keep]
        if not keepers:
            runs = ", ".join(f"{entry['Id'][:12]} ({entry['Image'][7:19]})" for entry in found if entry) or "none"
            raise StepError(f"No running container of {params['service']} runs {keep[7:19]} (containers: {runs})")
        keeper = keepers[0]
        gone = []
        if not check_mode:
            for entry in found:
                if entry and entry["Id"] != keeper["Id"]:
                    if entry["State"]["Running"]:
                        retire(docker, entry["Id"], params["drain_seconds"])
                    else:
                        discard(docker, entry["Id"])
                    gone.append(entry["Id"][:12])
            result["changed"] |= bool(gone)
            # The kept container's own image reference, pinned again: compose finds it as it was created.
            result["changed"] |= compose(image=keeper["Config"]["Image"], state="present")["changed"]
        left = [row["ID"] for row in service_containers(docker, capture["project"], params["service"])]
        if not check_mode and left != [keeper["Id"]]:
            raise StepError(
                f"After settling, {params['service']} has {len(left)} containers, not {keeper['Id'][:12]} alone"
            )
        removed = f"; drained and removed {', '.join(gone)}" if gone else ""
        detail = f"Kept {keeper['Id'][:12]} running {keeper['Config']['Image']} ({keep[7:19]}){removed}"
        return {"step": "drain", "success": True, "container_id": keeper["Id"][:12], "detail": detail}

    def cleanup_step() -> StepRecord:
        if check_mode:
            return cleanup_record(None)
        done = cleanup(
            docker,
            repository=state["capture"]["history_repository"],
            current_image_id=state["pull"]["image_id"],
            previous_image_id=state["capture"]["image_id"],
            keep_images=params["keep_images"],
            stamp=later_stamp(params["stamp"], clock() - started),
            check_mode=check_mode,
        )
        state["cleanup"] = {"removed": done["removed"], "kept": done["kept"]}
        result["changed"] |= done["changed"]
        return cleanup_record(done)

    def restore(capture: Capture) -> Rollback:
        """Bring back the captured image and check it; the rollback's outcome (never raises a step's error).

        When the engine went away during an attempt (a daemon restart takes the restored container down with it when
        it has no restart policy), the captured image is put back again once the engine answers, up to
        RESTORE_ATTEMPTS times: the service must not stay stopped because the engine restarted while we rolled back.
        """
        image, image_id = capture["image"], capture["image_id"]
        # A reference that is an ID or a digest cannot be tagged; the history tag then names the image.
        retaggable = bool(image) and "@" not in image and not image.startswith("sha256:")
        restored = image if retaggable or "@" in image else capture.get("history_ref", "")

        # The new containers a blue-green rollback removed while the old one kept serving.
        kept_serving: list[str] = []

        def put_back() -> Verdict | dict[str, str]:
            started_beside = (state.get("up") or {}).get("beside")
            if started_beside and not check_mode:
                old = inspect_container(docker, started_beside)
                if old is not None and old["State"]["Running"]:
                    # Blue-green before the drain: the old container served throughout. The new one goes, and compose
                    # finds the old one as the pin names it again: nothing is recreated.
                    for row in others(docker, capture["project"], params["service"], started_beside):
                        discard(docker, row["ID"])
                        kept_serving.append(row["ID"][:12])
                elif old is not None:
                    # Stopped by the drain: the captured image comes back as recreate brings it, over the new one.
                    discard(docker, started_beside)
            if not capture["container_id"]:
                result["changed"] |= compose(image="", state="absent")["changed"]
                return {"detail": NO_PREVIOUS_CONTAINER}
            if retaggable:
                result["changed"] |= rollback_image(docker, image_id, image, "", check_mode)["changed"]
            up = compose(image=restored, state="present")
            result["changed"] |= up["changed"]
            if check_mode:
                return {"detail": SKIPPED}
            checked = health(up["container_id"])
            if not checked["verdict"]["healthy"]:
                state["logs"] = result["logs"] = checked["logs"]
                raise StepError(checked["verdict"]["detail"])
            runs = rollback_image(docker, image_id, "", up["container_id"], check_mode)["container_image_id"]
            if runs != image_id:
                raise StepError(
                    f"the restored container runs {runs[7:19] or 'no image'}, not the captured {image_id[7:19]}"
                )
            return checked["verdict"]

        for attempt in range(1, RESTORE_ATTEMPTS + 1):
            waited = docker.waited
            try:
                verdict = put_back()
                if params["stopped_at"] and capture["container_id"] and not check_mode:
                    # The image that runs again becomes the newest of the service's history again.
                    cleanup(
                        docker,
                        repository=capture["history_repository"],
                        current_image_id=image_id,
                        previous_image_id=(state.get("pull") or {}).get("image_id", ""),
                        keep_images=params["keep_images"],
                        stamp=later_stamp(params["stamp"], clock() - started),
                        check_mode=check_mode,
                    )
                break
            except StepError as error:
                engine_came_back = docker.waited > waited and not error.extra.get("engine_unreachable")
                if engine_came_back and attempt < RESTORE_ATTEMPTS:
                    continue
                what = f"Rollback to {restored}" if capture["container_id"] else "Removing the half-started container"
                detail = f"{what} failed: {error.msg}"
                return {
                    "success": False,
                    "rolled_back": False,
                    "image": restored,
                    "image_id": image_id,
                    "detail": detail,
                }
        if not capture["container_id"]:
            return {"success": True, "rolled_back": False, "image": "", "image_id": "", "detail": verdict["detail"]}
        detail = f"Rolled back to {restored} ({image_id[7:19]}): {verdict['detail']}"
        if kept_serving:
            detail = (
                f"Removed the new container {', '.join(kept_serving)}; {capture['container_id'][:12]} kept serving "
                f"{restored} ({image_id[7:19]}) throughout: {verdict['detail']}"
            )
        return {"success": True, "rolled_back": True, "image": restored, "image_id": image_id, "detail": detail}

    def rollback_step() -> StepRecord:
        capture: Capture = state["capture"]
        if action == REMOVE:
            # A removal restores what a first deploy had before it: no container.
            state["removed"] = True
            capture = {**capture, "container_id": ""}
        rollback = restore(capture)
        if params["stopped_at"]:
            rollback["detail"] = f"Rollout stopped at {params['stopped_at']}: {rollback['detail']}"
            state.update(
                stopped_at=params["stopped_at"],
                error=f"Rolled back because the rollout stopped at {params['stopped_at']}",
            )
        state["rollback"] = rollback
        return rollback_record(rollback)

    def status_step() -> StepRecord:
        done = read_capture(read_only=True)
        capture = done["capture"]
        rows = service_containers(docker, capture["project"], params["service"]) if capture["container_id"] else []
        # Every container of the service when there are several (a blue-green deploy that did not finish).
        containers = [
            {"container_id": entry["Id"][:12], "image_id": entry["Image"], "state": entry["State"]["Status"]}
            for entry in (inspect(docker, "container", row["ID"]) for row in rows)
            if entry
        ]
        result["status"] = {
            "service": params["service"],
            "container_id": capture["container_id"][:12] or None,
            "image": capture["image"] or None,
            "image_id": capture["image_id"] or None,
            "state": container_state(docker, capture["container_id"]),
            "containers": containers,
        }
        if params["watch"]:
            # The image the service is deployed from, as the registry has it now: what a watch compares with what runs.
            latest = params["image"] or capture["file_image"]
            pulled = pull_image(docker, name=latest, pull=True, platform=params["platform"], check_mode=check_mode)
            result["status"].update(latest_image=latest, latest_image_id=pulled["image_id"] or None)
            result["changed"] |= pulled["changed"]
        return {"step": "status", "success": True, "detail": result["status"]["state"]}

    work = {
        "preflight": preflight_step,
        "capture_state": capture_step,
        "choose_image": choose_step,
        "pull_image": pull_step,
        "compose_up": up_step,
        "health_check": health_step,
        "observe": observe_step,
        "drain": drain_step,
        "cleanup": cleanup_step,
        "rollback": rollback_step,
        "status": status_step,
    }

    def run(step: str) -> dict[str, Any] | None:
        """Run one step and keep its record; what failed, or None."""
        began, waited = clock(), docker.waited
        failed: dict[str, Any] | None = None
        try:
            record = work[step]()
            if step != "status":
                state["steps"].append(record)
        except StepError as error:
            # The step's extra keys (rc, stderr, cmd...), where they do not shadow the result's own.
            failed = {"msg": error.msg, **{key: value for key, value in error.extra.items() if key not in result}}
        except Exception as error:
            # Not a failure the step knows: its words, and the traceback for -vvv, keeping the result's keys.
            failed = {"msg": str(error) or type(error).__name__, "exception": traceback.format_exc()}
        result["timings"][step] = round(clock() - began, 3)
        engine_wait = docker.waited - waited
        if failed:
            state["steps"].append(failure_record(step, failed["msg"]))
            state.update(failed_step=step, error=failed["msg"])
        # How long the step took on the host, in its record: what a person reading the deploy sees.
        if step != "status" or failed:
            record = state["steps"][-1]
            record["seconds"] = result["timings"][step]
            if engine_wait >= ENGINE_WAIT_SHOWN:
                record["engine_wait"] = round(engine_wait, 1)
                # The deploy's whole time without the engine, across round trips: what a later step may need to know.
                state["engine_waited"] = round(state.get("engine_waited", 0.0) + engine_wait, 1)
                # A step that gave up on the engine says so already, in its own words.
                if not (failed or {}).get("engine_unreachable") and "did not answer within" not in record["detail"]:
                    record["detail"] += f" (after waiting {engine_wait:.0f} s for the Docker engine)"
        return {**failed, "failed_step": step} if failed else None

    def finish(failed: dict[str, Any] | None = None) -> dict[str, Any]:
        result["next_steps"] = [] if "status" in result["timings"] else next_steps(state, action)
        # The action's last step is done: the playbook needs no further round trip.
        result["finished"] = not failed and "status" not in result["timings"] and not next_steps(state, action)
        return {**result, **failed} if failed else result

    try:
        check_stamp(params["stamp"])
        if action not in ROUND_TRIPS:
            raise StepError(f"action must be one of {', '.join(ROUND_TRIPS)}, not {action!r}")
        ordered = ordered_steps(params["steps"], params["image"], state, action)
    except StepError as error:
        return {**result, "next_steps": [], "failed_step": None, "msg": error.msg}

    for step in ordered:
        failed = run(step)
        if failed:
            return finish(failed)
    if (
        params["finish_unchanged"]
        and ordered[-1:] == ["pull_image"]
        and runs_pulled_image(state["capture"], state["pull"])
    ):
        for step in FINISH[state["strategy"] if blue_green else RECREATE]:
            failed = run(step)
            if failed:
                return finish(failed)
    return finish()
