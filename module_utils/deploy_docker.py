"""What every deploy step shares: its error, the docker CLI (with the module's environment, DOCKER_HOST included),
and the CLI's JSON lines and times.

A step is a function that takes a `Docker` and plain values, returns a plain dict and raises `StepError` when it
fails, so that one module can run one step (the roles' modules) or several in one round trip (compose_deploy).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.process import get_bin_path


class StepError(Exception):
    """A step failed: `msg` says why, `extra` holds the keys its module's fail_json adds (rc, stderr...)."""

    def __init__(self, msg: str, **extra: object):
        super().__init__(msg)
        self.msg = msg
        self.extra = extra


def json_lines(output: str) -> list[dict]:
    """The objects of `--format '{{json .}}'` output, one a line."""
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def cli_time(text: str) -> int:
    """Epoch seconds of the CLI's `CreatedAt` (`2006-01-02 15:04:05 -0700 MST`), as the Engine API counts them."""
    return int(datetime.strptime(" ".join(text.split()[:3]), "%Y-%m-%d %H:%M:%S %z").timestamp())


class Docker:
    """The docker CLI, run through an AnsibleModule's run_command: argument lists, never a shell."""

    def __init__(self, module):
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
        return self.module.run_command([self.binary, *args], cwd=cwd)

    def run_argv(self, argv: list[str], cwd: str | None = None) -> tuple[int, str, str]:
        """A command whose first word is the binary already (compose_service builds and reports whole commands)."""
        return self.module.run_command(argv, cwd=cwd)

    def output(self, *args: str) -> str:
        """The command's stdout; a non-zero exit fails the step, named by the command's first two words."""
        rc, stdout, stderr = self.run(*args)
        if rc != 0:
            raise StepError(f"docker {' '.join(args[:2])} failed: {stderr.strip()}", rc=rc, stderr=stderr)
        return stdout

    def warn(self, text: str) -> None:
        self.module.warn(text)


def newest_container(rows: list[dict]) -> dict:
    """The container created last; among containers of the same second, the one the engine lists last."""
    return sorted(rows, key=lambda row: cli_time(row["CreatedAt"]))[-1] if rows else {}


def service_container(docker: Docker, project: str, service: str) -> dict:
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
        )
    )
    return newest_container(rows)


def run_step_module(argument_spec: dict, step: Callable[..., dict], renamed: dict[str, str] | None = None) -> None:
    """A role's module: check its options, run its step with them (as keyword arguments, `renamed` where the step calls
    an option otherwise), and exit with the step's result, or fail with its error and the keys that error carries."""
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    arguments = {(renamed or {}).get(name, name): value for name, value in module.params.items()}
    try:
        result = step(Docker(module), check_mode=module.check_mode, **arguments)
    except StepError as error:
        module.fail_json(msg=error.msg, **error.extra)
    module.exit_json(**result)
