"""What every deploy step shares: its error, the docker CLI (with the module's environment, DOCKER_HOST included),
and the CLI's JSON lines and times.

The Docker work of a step is a function that takes a `Docker` and plain values, returns a plain dict and raises
`StepError` when it fails, so that the deploy module (compose_deploy) can run several steps in one round trip.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
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
    """The docker CLI, run through an AnsibleModule's run_command: argument lists, never a shell."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
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

    def run(self, *args: str, cwd: str | None = None) -> tuple[int, str, str]:
        result: tuple[int, str, str] = self.module.run_command([self.binary, *args], cwd=cwd)
        return result

    def run_argv(self, argv: list[str], cwd: str | None = None) -> tuple[int, str, str]:
        """A command whose first word is the binary already (compose_service builds and reports whole commands)."""
        result: tuple[int, str, str] = self.module.run_command(argv, cwd=cwd)
        return result

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


def service_container(docker: Docker, project: str, service: str) -> dict[str, Any]:
    """The newest container of a compose service (also a stopped one), found by compose's labels: its `docker ps` row.

    Not a one-off container of `docker compose run`, which carries the service's labels too.
    """
    rows = json_lines(
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
    return newest_container(rows)
