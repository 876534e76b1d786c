#!/usr/bin/python
"""Whether the host's Docker engine answers: the engine watch's probe, the deploy steps' own ping (deploy_docker)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: docker_engine
short_description: Say whether the host's Docker engine answers
description:
  - Runs C(docker version) once, bounded by O(timeout), with the same ping the deploy's steps use when they wait for an
    engine that stopped answering (module_utils/deploy_docker.py, C(Docker.ping)). Changes nothing and never fails -
    an engine that does not answer, or a missing docker CLI, is an answer.
  - Runs the C(docker) CLI, which honours C(DOCKER_HOST) from the environment.
options:
  timeout:
    description: Seconds the engine gets to answer; an engine that accepts the connection but never answers must not
      hold the watch.
    type: int
    default: 10
attributes:
  check_mode:
    support: full
"""

RETURN = r"""
reachable:
  description: Whether the engine answered with its version.
  type: bool
  returned: always
detail:
  description: In one line, C(Docker <version> at <engine>), or why the engine does not answer.
  type: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.deploy_docker import Docker, StepError

ARGUMENT_SPEC = {"timeout": {"type": "int", "default": 10}}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        reachable, detail = Docker(module).ping(module.params["timeout"])
    except StepError as error:  # no docker CLI on the host
        reachable, detail = False, error.msg
    module.exit_json(changed=False, reachable=reachable, detail=detail)


if __name__ == "__main__":
    main()
