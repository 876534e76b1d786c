#!/usr/bin/python
"""Wait until a container is healthy, settled or down, probe a URL, and keep the logs of a failure: one round trip."""

from __future__ import annotations

DOCUMENTATION = r"""
module: container_health
short_description: Wait until a container is healthy, polling, bounded by a timeout, and say why when it is not
description:
  - Polls C(docker inspect) every 0.25 s until the container is C(healthy) or C(unhealthy) (with a HEALTHCHECK), has
    run O(settle) seconds without a restart (without one), is down (exited, dead, restarting, restarted) or
    O(timeout) has passed.
  - Once the container is healthy, probes O(url) from the target host every O(interval) seconds until it answers
    2xx or the same deadline has passed (at least once); not under check mode.
  - When the container is not healthy, keeps its last O(log_lines) log lines, stdout and stderr in the container's
    own order.
  - Never fails on an unhealthy container: the verdict says why, and the role fails with it.
  - Runs the C(docker) CLI, which honours C(DOCKER_HOST) from the environment. Changes nothing.
options:
  container:
    description: Container ID or name.
    type: str
    required: true
  timeout:
    description: Seconds to wait for the container, and for O(url).
    type: int
    default: 60
  url:
    description: URL to probe until it answers 2xx; empty for none.
    type: str
    default: ""
  settle:
    description: Seconds a container without a HEALTHCHECK must run without restarting.
    type: int
    default: 5
  interval:
    description: Seconds between two probes of O(url).
    type: int
    default: 1
  log_lines:
    description: How many of the container's last log lines to keep when it is not healthy.
    type: int
    default: 50
attributes:
  check_mode:
    support: full
    details: Reads the container as outside check mode; does not probe O(url).
"""

RETURN = r"""
verdict:
  description: C(healthy), C(status) and C(detail), as the health_check role's README describes them.
  type: dict
  returned: success
logs:
  description: The container's last log lines when it is not healthy, else empty.
  type: str
  returned: success
"""

from ansible.module_utils.deploy_docker import run_step_module
from ansible.module_utils.deploy_health import container_health

ARGUMENT_SPEC = {
    "container": {"type": "str", "required": True},
    "timeout": {"type": "int", "default": 60},
    "url": {"type": "str", "default": ""},
    "settle": {"type": "int", "default": 5},
    "interval": {"type": "int", "default": 1},
    "log_lines": {"type": "int", "default": 50},
}


def main() -> None:
    run_step_module(ARGUMENT_SPEC, container_health)


if __name__ == "__main__":
    main()
