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

from api import contract
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


@dataclass
class RunResult:
    """A finished run: ansible-runner's status and exit code (None when ansible-playbook was killed by a signal), what
    the hosts published under the stats key, and what the events said of the hosts that may not have: the ones Ansible
    found unreachable, the last failure of each host, and the hosts whose Docker engine did not answer (the deploy
    module's failure says so), one line each."""

    status: str
    rc: int | None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    output_tail: str = ""
    unreachable: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    engine_unreachable: dict[str, str] = field(default_factory=dict)


def one_line(message: object) -> str:
    """An Ansible message as one line: its first, without the "Task failed: " that ansible-core 2.19 puts first and
    the colon it ends with when the details follow on the next lines."""
    first = next((line.strip() for line in str(message or "").splitlines() if line.strip()), "")
    return first.removeprefix("Task failed: ").rstrip(":").strip()


class HostEvents:
    """Follows a run's events for what they say of each host beyond its published record: unreachable (the
    connection dropped, the host is gone), failed (the last failure that was not ignored) and whether that failure was
    the Docker engine's silence (the deploy module marks it `engine_unreachable`). Passes every event on."""

    def __init__(self, then: Callable[[dict[str, Any]], bool]) -> None:
        self.then = then
        self.unreachable: dict[str, str] = {}
        self.failures: dict[str, str] = {}
        self.engine_unreachable: dict[str, str] = {}

    def on_event(self, event: dict[str, Any]) -> bool:
        data = event.get("event_data") or {}
        kind = event.get("event")
        host = str(data.get("host", ""))
        result = data.get("res") or {}
        message = one_line(result.get("msg"))
        if kind == "runner_on_unreachable" and host:
            self.unreachable[host] = message or "unreachable"
        elif kind == "runner_on_failed" and host and not data.get("ignore_errors"):
            self.failures[host] = message or f"{data.get('task') or 'a task'} failed"
            if result.get("engine_unreachable"):
                self.engine_unreachable[host] = self.failures[host]
        return self.then(event)


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
    """Processes still running a run directory's playbook (Linux /proc), e.g. after the API or ansible-playbook was
    killed, and every process under them: a module that a worker started (its command line names no run directory)
    goes on changing the host after its worker died."""
    marker = str(run_dir).encode()
    found: set[int] = set()
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc / "cmdline").read_bytes()
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(proc.name))
        if marker in command:
            found.add(int(proc.name))
    tree = list(found)
    while tree:
        for child in children.get(tree.pop(), []):
            if child not in found:
                found.add(child)
                tree.append(child)
    return sorted(found)


# How often stop_leftover_run looks again for what is left of a run, within its grace: a poll, not a wait.
LEFTOVER_POLL_SECONDS = 0.1


def stop_leftover_run(run_dir: Path, grace: float = 10.0) -> int:
    """Wait up to `grace` seconds for what is left of a run to end, then kill it; how many processes were left.

    A killed API's playbook run usually dies with it (its terminal hangs up), but a module may still be finishing, and
    the workers of a killed ansible-playbook wait for it. Nothing may touch the service while it does.
    """
    deadline = time.monotonic() + grace
    left = leftover_processes(run_dir)
    while left and time.monotonic() < deadline:
        time.sleep(LEFTOVER_POLL_SECONDS)
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
    stats_key: str = contract.RESULT_KEY,
    action: str = "deploy",
    strategy: str = "recreate",
    limit: tuple[str, ...] | None = None,
    check: bool = False,
    on_step: Callable[[str, str], None] | None = None,
    on_steps: Callable[[str, list[dict[str, Any]]], None] | None = None,
) -> RunResult:
    """Run `playbook` in its own private directory; the result is what it published with set_stats under `stats_key`.

    on_step(step, announcement) is called when a step of `action` (deployed with `strategy`) starts; on_steps(host,
    steps) when a host finished one (contract.StepProgress).
    """
    runs_dir = state_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    run_dir = runs_dir / run_id
    (run_dir / "env").mkdir(parents=True, mode=0o700)
    run_dir.chmod(0o700)
    extravars_file = run_dir / "env" / "extravars"
    extravars_file.write_text(unsafe_extravars(extravars), encoding="utf-8")
    extravars_file.chmod(0o600)

    host_events = HostEvents(contract.StepProgress(action, on_step, on_steps, strategy).on_event)
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
        event_handler=host_events.on_event,
        limit=",".join(limit) if limit else None,
        # The API never deploys in check mode; an operator's dry run (ansible-playbook --check) does.
        cmdline="--check" if check else None,
        cancel_callback=cancel.is_set,
    )
    runner.config.env = runner_environment(runner.config.env, os.environ)
    runner.run()
    stats = next((event for event in runner.events if event.get("event") == "playbook_on_stats"), None)
    results = (stats or {}).get("event_data", {}).get("artifact_data", {}).get(stats_key, {})
    output_tail = "\n".join(runner.stdout.read().splitlines()[-30:]) if runner.stdout else ""
    _prune_runs(runs_dir, keep_runs)
    return RunResult(
        status=runner.status,
        rc=runner.rc,
        results=results,
        output_tail=output_tail,
        unreachable=host_events.unreachable,
        failures=host_events.failures,
        engine_unreachable=host_events.engine_unreachable,
    )


def deploy_extravars(
    deployment_id: str,
    request: DeployRequest,
    batches: tuple[int | str, ...] = (1, "100%"),
    rollback_updated: bool = True,
) -> dict[str, Any]:
    """What a request passes to the playbooks: the service, the image, the environment and how to roll out there,
    and the request's metadata for records only."""
    extravars: dict[str, Any] = {contract.VAR_SERVICE: request.service}
    if request.image:
        extravars[contract.VAR_IMAGE] = request.image
    if request.environment:
        extravars[contract.VAR_ENVIRONMENT] = request.environment
    extravars[contract.VAR_BATCHES] = list(batches)
    extravars[contract.VAR_ROLLBACK_UPDATED] = rollback_updated
    extravars[contract.VAR_REQUEST] = {
        "id": deployment_id,
        "repository": request.repository,
        "commit": request.commit,
        "message": request.message,
    }
    return extravars
