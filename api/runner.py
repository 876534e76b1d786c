"""Runs the deploy playbook through ansible-runner: one private run directory per deploy."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner

from api.models import DeployRequest

log = logging.getLogger("deploy")

ANSIBLE_CONFIG = Path(__file__).resolve().parents[1] / "ansible.cfg"
# ansible-playbook is installed beside this Python: on the PATH first, a virtual environment
# works without being activated.
PYTHON_BIN = str(Path(sys.executable).parent)

# Tasks of playbooks/deploy.yml (outside the roles) and the steps each one starts, announced when the task starts.
# A compose_deploy round trip runs several steps on the host: capture_state takes a tenth of a second before the pull
# begins, so both are announced at once; steps a round trip runs beyond these (cleanup after health_check, the rest
# of a redeploy that changes nothing) are announced when its result shows them done.
STEPS = {
    "Capture the running state": ("capture_state",),
    "Choose the image to roll back to": ("choose_image",),
    "Capture the running state and pull the image": ("capture_state", "pull_image"),
    "Start the service": ("compose_up",),
    "Check health": ("health_check",),
    "Roll back to the captured image": ("rollback",),
}
# How the log announces each step.
ANNOUNCEMENTS = {
    "capture_state": "📸 Capturing current state for rollback...",
    "choose_image": "🔎 Choosing the image to roll back to...",
    "pull_image": "⬇️  Pulling image...",
    "compose_up": "🔄 Restarting service via docker compose...",
    "health_check": "🏥 Checking container health...",
    "cleanup": "🧹 Cleaning up previous images...",
    "rollback": "⏪ Rolling back to the captured image...",
}
# The fact in which playbooks/deploy.yml collects the finished steps of a host, and the module whose results carry the
# steps of one round trip.
STEPS_FACT = "__deploy_steps"
STEPS_MODULE = "compose_deploy"


class StepProgress:
    """Follows a deploy's runner events: announces each step once, and passes on each host's finished steps."""

    def __init__(
        self,
        on_step: Callable[[str, str], None] | None = None,
        on_steps: Callable[[str, list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.on_step = on_step
        self.on_steps = on_steps
        self.announced: set[str] = set()
        self.host_steps: dict[str, list[dict[str, Any]]] = {}

    def announce(self, step: str) -> None:
        if step in ANNOUNCEMENTS and step not in self.announced and self.on_step is not None:
            self.announced.add(step)
            self.on_step(step, ANNOUNCEMENTS[step])

    def on_event(self, event: dict[str, Any]) -> bool:
        data = event.get("event_data", {})
        kind = event.get("event")
        if kind == "playbook_on_task_start" and not data.get("role"):
            for step in STEPS.get(data.get("task", ""), ()):
                self.announce(step)
            return True
        if kind not in ("runner_on_ok", "runner_on_failed"):
            return True
        result = data.get("res") or {}
        host = data.get("host", "")
        if data.get("task_action") == STEPS_MODULE and isinstance(result.get("steps"), list):
            for step in result["steps"]:
                self.announce(step.get("step", ""))
            if kind == "runner_on_failed":
                return True  # the rescue records the failed step with the others
            self.host_steps[host] = self.host_steps.get(host, []) + result["steps"]
        elif isinstance((result.get("ansible_facts") or {}).get(STEPS_FACT), list):
            self.host_steps[host] = list(result["ansible_facts"][STEPS_FACT])
        else:
            return True
        if self.on_steps is not None:
            self.on_steps(host, self.host_steps[host])
        return True


@dataclass
class RunResult:
    status: str
    rc: int | None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    output_tail: str = ""


def unsafe_extravars(values: dict[str, Any]) -> str:
    """YAML extra vars with every string tagged !unsafe, so Ansible never renders a template in them.

    Request fields are data. Ansible renders Jinja it finds in variable values, and ansible-runner
    would write extra vars given as a dict without the tag, so the file is written here (AWX does the same).
    """

    def render(value: Any, indent: int) -> str:
        if isinstance(value, dict):
            pad = "  " * (indent + 1)
            return "\n" + "\n".join(
                f"{pad}{json.dumps(str(key))}: {render(item, indent + 1)}" for key, item in value.items()
            )
        if isinstance(value, list | tuple):
            return "[" + ", ".join(render(item, indent + 1) for item in value) + "]"
        if value is None or isinstance(value, bool | int):
            # Settings, not request data: null, true/false and numbers are no templates.
            return json.dumps(value)
        return "!unsafe " + json.dumps(str(value))

    return "".join(f"{json.dumps(key)}: {render(value, 0)}\n" for key, value in values.items())


def leftover_processes(run_dir: Path) -> list[int]:
    """Processes still running a run directory's playbook (Linux /proc), e.g. after the API was killed."""
    marker = str(run_dir).encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def stop_leftover_run(run_dir: Path, grace: float = 10.0) -> int:
    """Wait up to `grace` seconds for what is left of a run to end, then kill it; how many processes were left.

    A killed API's playbook run usually dies with it (its terminal hangs up), but a module may still be finishing.
    Nothing may touch the service while it does.
    """
    deadline = time.monotonic() + grace
    left = leftover_processes(run_dir)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = leftover_processes(run_dir)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return len(left)


def _prune_runs(runs_dir: Path, keep: int) -> None:
    run_dirs = sorted((path for path in runs_dir.iterdir() if path.is_dir()), key=lambda path: path.name)
    for stale in run_dirs[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)


def run_playbook(
    *,
    run_id: str,
    playbook: Path,
    extravars: dict[str, Any],
    inventory: Path,
    state_dir: Path,
    timeout: int,
    keep_runs: int,
    cancel: threading.Event,
    stats_key: str = "deploy",
    limit: tuple[str, ...] | None = None,
    on_step: Callable[[str, str], None] | None = None,
    on_steps: Callable[[str, list[dict[str, Any]]], None] | None = None,
) -> RunResult:
    """Run `playbook` in its own private directory; the result is what it published with set_stats under `stats_key`.

    on_step(step, announcement) is called when a step starts; on_steps(host, steps) when a host finished one.
    """
    runs_dir = state_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    run_dir = runs_dir / run_id
    (run_dir / "env").mkdir(parents=True, mode=0o700)
    run_dir.chmod(0o700)
    extravars_file = run_dir / "env" / "extravars"
    extravars_file.write_text(unsafe_extravars(extravars))
    extravars_file.chmod(0o600)

    runner = ansible_runner.run(
        private_data_dir=str(run_dir),
        ident=run_id,
        playbook=str(playbook.resolve()),
        inventory=str(inventory.resolve()),
        envvars={
            "ANSIBLE_CONFIG": str(ANSIBLE_CONFIG),
            "ANSIBLE_NOCOLOR": "1",
            "PATH": os.pathsep.join([PYTHON_BIN, os.environ.get("PATH", os.defpath)]),
        },
        timeout=timeout,
        quiet=True,
        event_handler=StepProgress(on_step, on_steps).on_event,
        limit=",".join(limit) if limit else None,
        cancel_callback=cancel.is_set,
    )
    stats = next((event for event in runner.events if event.get("event") == "playbook_on_stats"), None)
    results = (stats or {}).get("event_data", {}).get("artifact_data", {}).get(stats_key, {})
    output_tail = "\n".join(runner.stdout.read().splitlines()[-30:]) if runner.stdout else ""
    _prune_runs(runs_dir, keep_runs)
    return RunResult(status=runner.status, rc=runner.rc, results=results, output_tail=output_tail)


def deploy_extravars(
    deployment_id: str,
    request: DeployRequest,
    batches: tuple[int | str, ...] = (1, "100%"),
    rollback_updated: bool = True,
) -> dict[str, Any]:
    """What a request passes to the playbooks: the service, the image, the environment and how to roll out there,
    and the request's metadata for records only."""
    extravars: dict[str, Any] = {"service": request.service}
    if request.image:
        extravars["image"] = request.image
    if request.environment:
        extravars["deploy_environment"] = request.environment
    extravars["deploy_batches"] = list(batches)
    extravars["deploy_rollback_updated"] = rollback_updated
    extravars["deploy_request"] = {
        "id": deployment_id,
        "repository": request.repository,
        "commit": request.commit,
        "message": request.message,
    }
    return extravars
