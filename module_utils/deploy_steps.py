"""compose_deploy's work: the deploy's steps in one round trip, in the playbook's order, each exactly as its role
does it, and the record of each step in the shape the playbook keeps and the API reads.
"""

from __future__ import annotations

import os
import re
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta

from ansible.module_utils.deploy_compose import compose_service
from ansible.module_utils.deploy_docker import Docker, StepError
from ansible.module_utils.deploy_health import container_health
from ansible.module_utils.deploy_history import capture_state, cleanup
from ansible.module_utils.deploy_image import pull_image

STEPS = ("capture_state", "pull_image", "compose_up", "health_check", "cleanup")
STAMP_FORMAT = "%Y%m%dT%H%M%S%f"
STAMP = re.compile(r"^[0-9]{8}T[0-9]{12}$")
# What later steps read of a capture, a pull and a start, from this call or passed in from an earlier one.
CAPTURE_KEYS = ("file_image", "container_id", "image_id", "image", "history_repository")
PULL_KEYS = ("image", "image_id")
UP_KEYS = ("container_id",)
SKIPPED = "Skipped in check mode"
# What finish_unchanged adds when the steps end with pull_image and the service runs the pulled image already.
FINISH = ("compose_up", "health_check", "cleanup")


def lacking(given: dict, keys: tuple[str, ...]) -> list[str]:
    return [key for key in keys if key not in given]


def ordered_steps(requested: list[str], image: str, captured: dict, pulled: dict, started: dict) -> list[str]:
    """The requested steps in the canonical order, refused when a step lacks what it reads.

    What a step reads comes from an earlier step of the same call or from an earlier call (`captured`, `pulled`,
    `started`, that call's `capture`, `pull` and `up`): compose_up reads the capture (and pull_image does, without an
    `image`), health_check the container compose_up started, cleanup the capture and the image pulled.
    """
    repeated = sorted({step for step in requested if requested.count(step) > 1})
    if repeated:
        raise StepError(f"Steps may be named once each: {', '.join(repeated)} is repeated")
    ordered = [step for step in STEPS if step in requested]
    for step in ordered:
        reads_capture = step in ("compose_up", "cleanup") or (step == "pull_image" and not image)
        if reads_capture and "capture_state" not in ordered and lacking(captured, CAPTURE_KEYS):
            raise StepError(
                f"Step {step} needs a capture: add capture_state to the steps, or pass captured "
                f"(the capture of an earlier call; it lacks {', '.join(lacking(captured, CAPTURE_KEYS))})"
            )
        if step == "health_check" and "compose_up" not in ordered and lacking(started, UP_KEYS):
            raise StepError(
                "Step health_check needs compose_up in the same call, or started (the up of an earlier call; "
                "it lacks container_id)"
            )
        if step == "cleanup" and "pull_image" not in ordered and lacking(pulled, PULL_KEYS):
            raise StepError(
                f"Step cleanup needs pull_image in the same call, or pulled (the pull of an earlier call; "
                f"it lacks {', '.join(lacking(pulled, PULL_KEYS))})"
            )
    return ordered


def runs_pulled_image(capture: dict, pull: dict) -> bool:
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
def capture_record(capture: dict) -> dict:
    return {
        "step": "capture_state",
        "success": True,
        "image": capture["image"] or None,
        "image_id": capture["image_id"] or None,
        "detail": f"Running {capture['image']} ({capture['image_id'][7:19]})"
        if capture["container_id"]
        else "No container yet: first deploy",
    }


def pull_record(pull: dict, not_pulled_reason: str) -> dict:
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


def up_record(up: dict, captured_container_id: str) -> dict:
    if up["changed"]:
        detail = "Container recreated" if captured_container_id else "Container created"
    else:
        detail = "Container already up to date"
    return {"step": "compose_up", "success": True, "container_id": up["container_id"][:12], "detail": detail}


def health_record(verdict: dict | None) -> dict:
    """The health check's record; `verdict` None when it was skipped (check mode)."""
    detail = verdict["detail"] if verdict is not None else SKIPPED
    return {"step": "health_check", "success": True, "running": True, "detail": detail}


def cleanup_record(cleaned: dict | None) -> dict:
    """The cleanup's record; `cleaned` None when it was skipped (check mode)."""
    detail = (
        f"Removed {len(cleaned['removed'])} previous image(s), kept {len(cleaned['kept'])}"
        if cleaned is not None
        else SKIPPED
    )
    return {"step": "cleanup", "success": True, "detail": detail}


def failure_record(step: str, msg: str) -> dict:
    return {"step": step, "success": False, "detail": msg}


def run_steps(docker: Docker, params: dict, check_mode: bool, clock: Callable[[], float] = time.monotonic) -> dict:
    """Run the requested steps and return compose_deploy's result; on failure it has `failed_step` and `msg`.

    `params` are compose_deploy's options. A step that fails ends the run: later steps do not start.
    """
    started = clock()
    result: dict = {
        "changed": False,
        "finished": False,
        "capture": dict(params["captured"]),
        "pull": dict(params["pulled"]),
        "up": dict(params["started"]),
        "health": {},
        "logs": "",
        "cleanup": {},
        "steps": [],
        "timings": {},
    }

    def target() -> str:
        """The image this deploy runs: the one asked for, else the one pulled before, else the compose file's."""
        return params["image"] or result["pull"].get("image") or result["capture"].get("file_image", "")

    def capture_step() -> dict:
        done = capture_state(
            docker,
            project_dir=params["project_dir"],
            compose_file=params["compose_file"],
            service=params["service"],
            history_prefix=params["history_prefix"],
            stamp=params["stamp"],
            check_mode=check_mode,
        )
        result["capture"] = done["capture"]
        result["changed"] |= done["changed"]
        return capture_record(done["capture"])

    def pull_step() -> dict:
        image = target()
        done = pull_image(docker, name=image, pull=params["pull"], platform=params["platform"], check_mode=check_mode)
        result["pull"] = {
            "image": image,
            "image_id": done["image_id"],
            "changed": done["changed"],
            "pulled": params["pull"],
        }
        result["changed"] |= done["changed"]
        return pull_record(result["pull"], params["not_pulled_reason"])

    def up_step() -> dict:
        done = compose_service(
            docker,
            # As an Ansible `path` is expanded; capture_state expands the option itself, as compose_capture does.
            project_dir=os.path.expanduser(os.path.expandvars(params["project_dir"])),
            compose_file=params["compose_file"],
            pin_file=params["pin_file"],
            service=params["service"],
            image=target(),
            file_image=result["capture"]["file_image"],
            stop_timeout=params["stop_timeout"],
            state="present",
            check_mode=check_mode,
            project=result["capture"].get("project", ""),
        )
        result["up"] = {"container_id": done["container_id"], "changed": done["changed"]}
        result["diff"] = done["diff"]
        result["changed"] |= done["changed"]
        return up_record(result["up"], result["capture"]["container_id"])

    def health_step() -> dict:
        if check_mode:
            return health_record(None)
        done = container_health(
            docker,
            container=result["up"]["container_id"],
            timeout=params["health_timeout"],
            url=params["health_url"],
            settle=params["health_settle"],
            interval=params["health_interval"],
            log_lines=params["health_log_lines"],
            check_mode=check_mode,
        )
        result["health"] = done["verdict"]
        if not done["verdict"]["healthy"]:
            result["logs"] = done["logs"]
            # The health_check role's assert fails with the verdict's detail.
            raise StepError(done["verdict"]["detail"])
        return health_record(done["verdict"])

    def cleanup_step() -> dict:
        if check_mode:
            return cleanup_record(None)
        done = cleanup(
            docker,
            repository=result["capture"]["history_repository"],
            current_image_id=result["pull"]["image_id"],
            previous_image_id=result["capture"]["image_id"],
            keep_images=params["keep_images"],
            stamp=later_stamp(params["stamp"], clock() - started),
            check_mode=check_mode,
        )
        result["cleanup"] = {"removed": done["removed"], "kept": done["kept"]}
        result["changed"] |= done["changed"]
        return cleanup_record(done)

    work = {
        "capture_state": capture_step,
        "pull_image": pull_step,
        "compose_up": up_step,
        "health_check": health_step,
        "cleanup": cleanup_step,
    }

    def run(step: str) -> dict | None:
        """Run one step and keep its record; what failed, or None."""
        began = clock()
        failed = None
        try:
            result["steps"].append(work[step]())
        except StepError as error:
            # The step's module's extra keys (rc, stderr, cmd...), where they do not shadow the result's own.
            failed = {"msg": error.msg, **{key: value for key, value in error.extra.items() if key not in result}}
        except Exception as error:
            # Not a failure the step knows: its words, and the traceback for -vvv, keeping the result's keys.
            failed = {"msg": str(error) or type(error).__name__, "exception": traceback.format_exc()}
        result["timings"][step] = round(clock() - began, 3)
        if failed:
            result["steps"].append(failure_record(step, failed["msg"]))
        # How long the step took on the host, in its record: what a person reading the deploy sees.
        result["steps"][-1]["seconds"] = result["timings"][step]
        return {**failed, "failed_step": step} if failed else None

    try:
        check_stamp(params["stamp"])
        ordered = ordered_steps(
            params["steps"], params["image"], params["captured"], params["pulled"], params["started"]
        )
        if ("compose_up" in ordered or params["finish_unchanged"]) and not params["pin_file"]:
            raise StepError("Step compose_up needs pin_file")
    except StepError as error:
        return {**result, "failed_step": None, "msg": error.msg}

    for step in ordered:
        failed = run(step)
        if failed:
            return {**result, **failed}
    if (
        params["finish_unchanged"]
        and ordered[-1:] == ["pull_image"]
        and runs_pulled_image(result["capture"], result["pull"])
    ):
        for step in FINISH:
            failed = run(step)
            if failed:
                return {**result, **failed}
    # The deploy's last step is done: the playbook needs no further round trip.
    result["finished"] = "cleanup" in result["timings"]
    return result
