"""What every deploy step shares: its error, the docker CLI (with the module's environment, DOCKER_HOST included),
and the CLI's JSON lines and times.

The Docker work of a step is a function that takes a `Docker` and plain values, returns a plain dict and raises
`StepError` when it fails, so that the deploy module (compose_deploy) can run several steps in one round trip.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ansible.module_utils.common.process import get_bin_path

if TYPE_CHECKING:
    from ansible.module_utils.basic import AnsibleModule


class StepError(Exception):
    """A step failed: `msg` says why, `extra` holds the keys its module's fail_json adds (rc, stderr...)."""

    def __init__(self, msg: str, **extra: object):
        super().__init__(msg)
        self.msg = msg
        self.extra = extra


# Colours and cursor movements (CSI sequences) and window titles (OSC) a CLI may write even when not on a terminal.
ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?)")
# A logrus line, as compose writes its warnings and errors: time="..." level=warning msg="...".
LOGRUS_LINE = re.compile(r'^time="[^"]*" level=(?P<level>\w+) msg="(?P<msg>(?:[^"\\]|\\.)*)"')
CAUSE_LIMIT = 300
# What the docker CLI and compose say when the engine does not answer, or stopped answering in the middle of a command
# (a daemon restart): its socket is gone or refuses, the stream was cut, or the daemon lost its containerd as it shut
# down ("transport is closing"). A command that fails with one of these is run again once the engine answers; any
# other failure is the command's own.
ENGINE_LOST = re.compile(
    r"Cannot connect to the Docker daemon|Is the docker daemon running|error during connect|"
    r"dial unix \S+: connect: (?:no such file or directory|connection refused)|connection reset by peer|"
    r"broken pipe|unexpected EOF|\bEOF$|context canceled|daemon is shutting down|transport is closing",
    re.IGNORECASE | re.MULTILINE,
)
# How often a waiting step asks the engine whether it answers again, and how long one question may take.
ENGINE_POLL_SECONDS = 0.5
ENGINE_PING_TIMEOUT = 5


def logrus_record(line: str) -> tuple[str, str]:
    """The level and message of a logrus line (`warning`, `error`...); ("", line) for any other line."""
    match = LOGRUS_LINE.match(line.strip())
    if not match:
        return "", line
    return match["level"], match["msg"].replace('\\"', '"')


def cli_cause(stderr: str, rc: int | None = None) -> str:
    """What a failed docker CLI command said about its cause, in one line of at most CAUSE_LIMIT characters.

    The last line that reports an error (it starts with "Error" or "error", or is a logrus line of level error or
    fatal), else the last line that is not a warning, else the last line at all; colours stripped, white space
    squeezed. A daemon that does not answer ("Cannot connect to the Docker daemon at unix:///...") is such a last
    line, kept as it is. Without any words on stderr, the exit code.
    """
    errors: list[str] = []
    others: list[str] = []
    warnings: list[str] = []
    for raw in stderr.splitlines():
        level, text = logrus_record(ANSI_ESCAPE.sub("", raw))
        line = " ".join(text.split())
        if not line:
            continue
        if level in ("error", "fatal", "panic") or line.lower().startswith("error"):
            errors.append(line)
        elif level.startswith("warn") or line.lower().startswith("warn"):
            warnings.append(line)
        else:
            others.append(line)
    cause = next((lines[-1] for lines in (errors, others, warnings) if lines), "")
    if not cause:
        return f"exit code {rc}, nothing on stderr" if rc is not None else "nothing on stderr"
    return cause if len(cause) <= CAUSE_LIMIT else cause[: CAUSE_LIMIT - 3] + "..."


def cli_error(what: str, cmd: Sequence[str], rc: int, stderr: str, **extra: object) -> StepError:
    """The error of a docker command that failed: `<what>: <cause>` in one line, with rc, stderr and cmd."""
    return StepError(f"{what}: {cli_cause(stderr, rc)}", rc=rc, stderr=stderr, cmd=list(cmd), **extra)


def json_lines(output: str) -> list[dict[str, Any]]:
    """The objects of `--format '{{json .}}'` output, one a line."""
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def cli_time(text: str) -> int:
    """Epoch seconds of the CLI's `CreatedAt` (`2006-01-02 15:04:05 -0700 MST`), as the Engine API counts them."""
    return int(datetime.strptime(" ".join(text.split()[:3]), "%Y-%m-%d %H:%M:%S %z").timestamp())


class Docker:
    """The docker CLI, run through an AnsibleModule's run_command: argument lists, never a shell.

    An engine that does not answer is a pause, not a verdict: a command that fails because the engine is unreachable
    (ENGINE_LOST, and a ping that fails) waits until the engine answers again, at most `engine_wait` seconds per
    outage, then runs again; past the bound it raises a StepError that names the engine. `waited` adds up the seconds
    spent waiting, so that a step can leave them out of its own time limits and say in its record that it waited.
    """

    def __init__(
        self, module: AnsibleModule, engine_wait: float = 60, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.module = module
        self.engine_wait = engine_wait
        self.clock = clock
        self.waited = 0.0
        self._binary = ""

    @property
    def binary(self) -> str:
        # Looked up when first needed, so that a missing CLI fails the step that needs it, with a StepError.
        if not self._binary:
            try:
                self._binary = get_bin_path("docker")
            except ValueError as error:
                raise StepError(str(error)) from None
        return self._binary

    @property
    def engine(self) -> str:
        """The engine the CLI talks to, as a person would name it."""
        return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"

    def run(self, *args: str, cwd: str | None = None) -> tuple[int, str, str]:
        return self.run_argv([self.binary, *args], cwd=cwd)

    def run_argv(self, argv: list[str], cwd: str | None = None) -> tuple[int, str, str]:
        """A command whose first word is the binary already (compose_service builds and reports whole commands).

        Every command we run is declarative (inspect, pull, tag, compose up...), so one that failed because the
        engine did not answer is run again once it answers; when the engine answers at once (it came back between
        the failure and the ping), the command runs again once more, and its second failure is its own.
        """
        again_at_once = True
        while True:
            rc, stdout, stderr = self.module.run_command(argv, cwd=cwd)
            if rc == 0 or not ENGINE_LOST.search(stderr):
                return rc, stdout, stderr
            if not self.wait_for_engine(cli_cause(stderr, rc)):
                if not again_at_once:
                    return rc, stdout, stderr
                again_at_once = False

    def ping(self, timeout: float = ENGINE_PING_TIMEOUT) -> tuple[bool, str]:
        """Whether the engine answers now (`docker version` reaches the server within `timeout`), and in one line its
        version or why it does not answer."""
        try:
            ping = subprocess.run(
                [self.binary, "version", "--format", "{{.Server.Version}}"],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False, f"The Docker engine at {self.engine} did not answer within {timeout:g} s"
        except OSError as error:
            return False, f"Running docker version failed: {error}"
        version = ping.stdout.strip()
        if ping.returncode == 0 and version:
            return True, f"Docker {version} at {self.engine}"
        return False, cli_cause(ping.stderr, ping.returncode)

    def engine_answers(self) -> bool:
        return self.ping()[0]

    def wait_for_engine(self, cause: str) -> bool:
        """Wait until the engine answers, at most `engine_wait` seconds; whether it had to wait (False: it answered
        at once). Past the bound, a StepError that says which engine did not answer, for how long, and why."""
        began = self.clock()
        if self.engine_answers():
            return False
        deadline = began + self.engine_wait
        while not self.engine_answers():
            if self.clock() >= deadline:
                waited = self.clock() - began
                self.waited += waited
                raise StepError(
                    f"The Docker engine at {self.engine} did not answer within {self.engine_wait:g} s: {cause}",
                    engine_unreachable=True,
                )
            time.sleep(ENGINE_POLL_SECONDS)
        self.waited += self.clock() - began
        return True

    def output(self, *args: str, what: str = "") -> str:
        """The command's stdout; a non-zero exit fails the step with `<what> failed: <cause>` (by default, what is
        the command's first two words)."""
        rc, stdout, stderr = self.run(*args)
        if rc != 0:
            what = what or "docker " + " ".join(args[:2])
            raise cli_error(f"{what} failed", [self.binary, *args], rc, stderr)
        return stdout

    def warn(self, text: str) -> None:
        self.module.warn(text)


def newest_container(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The container created last; among containers of the same second, the one the engine lists last."""
    return sorted(rows, key=lambda row: cli_time(row["CreatedAt"]))[-1] if rows else {}


def service_containers(docker: Docker, project: str, service: str) -> list[dict[str, Any]]:
    """Every container of a compose service (also stopped ones), found by compose's labels: their `docker ps` rows,
    newest first.

    Not a one-off container of `docker compose run`, which carries the service's labels too.
    """
    return json_lines(
        docker.output(
            "ps",
            "--all",
            "--no-trunc",
            "--filter",
            f"label=com.docker.compose.project={project}",
            "--filter",
            f"label=com.docker.compose.service={service}",
            "--filter",
            "label=com.docker.compose.oneoff=False",
            "--format",
            "{{json .}}",
            what=f"Listing the containers of service {service} in compose project {project}",
        )
    )


def service_container(docker: Docker, project: str, service: str) -> dict[str, Any]:
    """The newest container of a compose service (also a stopped one): its `docker ps` row, {} for none."""
    return newest_container(service_containers(docker, project, service))
