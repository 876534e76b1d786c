"""Runs the deploy playbook through ansible-runner: one private run directory per deploy."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ansible_runner.interface import init_runner

from api.models import DeployRequest, escape_surrogates

log = logging.getLogger("deploy")

ANSIBLE_CONFIG = Path(__file__).resolve().parents[1] / "ansible.cfg"
# ansible-playbook is installed beside this Python: on the PATH first, a virtual environment
# works without being activated.
PYTHON_BIN = str(Path(sys.executable).parent)
# What a run takes from the API's environment, besides Ansible's own settings (ANSIBLE_*): what ansible-playbook, the
# modules it starts and the docker and ssh clients they run need. Nothing else of it, the API's secrets and settings
# in particular, reaches them or the run directory, where ansible-runner writes a run's environment
# (artifacts/<ident>/command).
INHERITED_VARIABLES = (
    "PATH",  # ansible-playbook (this Python's directory goes first), the docker CLI, ssh
    "HOME",  # ~/.ansible (Ansible's temporary files), ~/.docker (the compose plugin, registry logins), ~/.ssh
    "USER",  # the user Ansible connects as by default
    "LOGNAME",  # the same, where USER is not set
    "LANG",  # Ansible refuses to start without a UTF-8 locale: these name it (LOCALE_DEFAULT when none does)
    "LC_ALL",
    "LC_CTYPE",
    "TZ",  # local times in Ansible's output
    "TMPDIR",  # where Python, Ansible and docker put temporary files
    "SSH_AUTH_SOCK",  # the agent holding the keys for remote hosts
    "DOCKER_HOST",  # the engine the docker CLI talks to, and how (a host's docker_host overrides it)
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
)
INHERITED_PREFIX = "ANSIBLE_"
LOCALE_VARIABLES = ("LC_ALL", "LC_CTYPE", "LANG")
LOCALE_DEFAULT = {"LC_CTYPE": "C.UTF-8"}

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


class _ExtraVarsDumper(yaml.SafeDumper):
    """YAML in which every str value is double-quoted, mapping keys plain, and the top mapping tagged !unsafe."""

    def represent_text(self, text: str) -> yaml.ScalarNode:
        # Quoted, a scalar is a string whatever it says ("yes", "123", "" or "null" too). Double quotes spell any
        # character, escaped where YAML does not take it raw; a lone surrogate has no escape YAML loaders accept, so it
        # is written as its escaped text, as request validation keeps it.
        return self.represent_scalar("tag:yaml.org,2002:str", escape_surrogates(text), style='"')

    def represent_variables(self, variables: dict[Any, Any], tag: str = "tag:yaml.org,2002:map") -> yaml.MappingNode:
        # Keys are names of variables and fields, the code's own: plain, as YAML writes names.
        pairs = [
            (self.represent_str(escape_surrogates(str(key))), self.represent_data(value))
            for key, value in variables.items()
        ]
        return yaml.MappingNode(tag, pairs)

    def ignore_aliases(self, data: Any) -> bool:
        # A list or dict met twice is written twice, not as an anchor and an alias.
        return True


class _UnsafeVariables(dict[str, Any]):
    """The extra vars, written as a mapping tagged !unsafe."""


_ExtraVarsDumper.add_representer(str, _ExtraVarsDumper.represent_text)
_ExtraVarsDumper.add_representer(dict, _ExtraVarsDumper.represent_variables)
_ExtraVarsDumper.add_representer(tuple, _ExtraVarsDumper.represent_list)
_ExtraVarsDumper.add_representer(
    _UnsafeVariables, lambda dumper, variables: dumper.represent_variables(variables, "!unsafe")
)


def unsafe_extravars(values: dict[str, Any]) -> str:
    """YAML extra vars in a mapping tagged !unsafe, so Ansible never renders a template in any string of them.

    Request fields are data. Ansible renders Jinja it finds in variable values, and ansible-runner would write extra
    vars given as a dict without the tag, so the file is written here (as AWX writes its own). The tag is on the
    mapping, which Ansible's loader passes on to everything in it, not on each string: ansible-core 2.19 resolves the
    type of a !unsafe scalar again as if it were plain, quotes or not, so `!unsafe "yes"` would load as true,
    `!unsafe "123"` as a number and `!unsafe ""` as null. None, booleans and numbers stay plain YAML values: they are
    settings, not request data, and no templates. Nothing is folded (the width is unbounded).
    """
    return yaml.dump(
        _UnsafeVariables(values),
        Dumper=_ExtraVarsDumper,
        allow_unicode=True,
        width=math.inf,
        sort_keys=False,
        default_flow_style=False,
    )


def runner_environment(prepared: Mapping[str, str], inherited: Mapping[str, str]) -> dict[str, str]:
    """The environment of a run, from the one ansible-runner prepared: it starts from a copy of the API's
    (`inherited`) and adds its own settings (callbacks, artifacts) and ours (envvars). Kept: what it added or changed,
    and of the copy only INHERITED_VARIABLES and ANSIBLE_*."""
    environment = {
        name: value
        for name, value in prepared.items()
        if inherited.get(name) != value or name in INHERITED_VARIABLES or name.startswith(INHERITED_PREFIX)
    }
    if not any(environment.get(name) for name in LOCALE_VARIABLES):
        environment.update(LOCALE_DEFAULT)
    return environment


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
    extravars_file.write_text(unsafe_extravars(extravars), encoding="utf-8")
    extravars_file.chmod(0o600)

    # ansible_runner.run() is init_runner() then run(): in between, the run's environment is narrowed.
    runner = init_runner(
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
    runner.config.env = runner_environment(runner.config.env, os.environ)
    runner.run()
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
