#!/usr/bin/python
"""Deploy one compose service in one round trip: capture, pull, up, health check and cleanup, as the roles do them."""

from __future__ import annotations

DOCUMENTATION = r"""
module: compose_deploy
short_description: Run the steps of a deploy of one compose service in one module round trip
description:
  - Runs the requested O(steps) in the canonical order C(capture_state), C(pull_image), C(compose_up), C(health_check),
    C(cleanup), each exactly as the role of that name does it with its own module (compose_capture, image_pull,
    compose_service, container_health, history_cleanup), with the same options, checks, messages and C(changed).
  - C(capture_state) records the service's container, image ID and reference and its history, and tags a running
    image the history lacks C(<history_prefix>/<project>/<service>:<stamp>-<short id>).
  - C(pull_image) pulls the target image, O(image) or else the image the compose file names (the capture's
    C(file_image)), always asking the registry; with O(pull=false) it only finds the image on the host.
  - C(compose_up) pins the target image in O(pin_file) (or drops the pin when it is the compose file's) and runs
    C(docker compose up --detach --no-deps --pull missing -- <service>).
  - C(health_check) waits until the new container is healthy, settled or down, then probes O(health_url); a container
    that is not healthy fails the step with the verdict's detail and its last log lines in RV(logs).
  - C(cleanup) stamps the pulled image as the newest of the service's history, keeps O(keep_images) previous images
    and removes the older ones. Its stamp is O(stamp) plus the time elapsed on the host since the module started
    (at least a microsecond), so it is strictly later than the capture's, which is O(stamp) itself.
  - What a step reads comes from an earlier step of the same call, or from an earlier call's result passed in
    (O(captured), O(pulled), O(started)). C(compose_up) reads the capture (and C(pull_image) does without O(image)),
    C(health_check) the container C(compose_up) started, C(cleanup) the capture and the image pulled. Steps that lack
    what they read are refused before anything runs.
  - With O(finish_unchanged), a call whose steps end with C(pull_image) also runs C(compose_up), C(health_check) and
    C(cleanup) when the service runs the pulled image already, so that a redeploy that changes nothing is one round
    trip (RV(finished) says so).
  - The first step that fails ends the run, and the result says which (RV(failed_step)) with everything the earlier
    steps found.
  - Runs the C(docker) CLI, which honours C(DOCKER_HOST) from the environment.
options:
  steps:
    description: The steps to run; they run in the canonical order whatever the order given.
    type: list
    elements: str
    choices: [capture_state, pull_image, compose_up, health_check, cleanup]
    required: true
  project_dir:
    description: Directory that holds the compose file (C(~) and variables are expanded).
    type: str
    required: true
  compose_file:
    description: Compose file, relative to O(project_dir).
    type: str
    default: docker-compose.yml
  pin_file:
    description: Override file with the pins, relative to O(project_dir); required with C(compose_up).
    type: str
    default: ""
  service:
    description: The compose service.
    type: str
    required: true
  image:
    description: >-
      The image to deploy; empty for the image an earlier call pulled (O(pulled)'s C(image)), else the image the
      compose file names (the capture's C(file_image)).
    type: str
    default: ""
  pull:
    description: Whether to pull the image now; V(false) only finds it on the host, where it must be.
    type: bool
    default: true
  not_pulled_reason:
    description: The words the C(pull_image) step's detail gives in parentheses when O(pull=false).
    type: str
    default: "pull: false"
  platform:
    description: Platform to pull, for example C(linux/arm64); empty for the engine's own.
    type: str
    default: ""
  history_prefix:
    description: Repository prefix of the services' histories.
    type: str
    default: deploy-history
  stamp:
    description:
      - The controller's UTC clock as C(%Y%m%dT%H%M%S%f), as the roles pass C(now(utc=true, fmt=...)).
      - The capture's new history tag takes it as it is; the cleanup's takes it plus the time elapsed on the host.
    type: str
    required: true
  captured:
    description:
      - A capture from an earlier call (its RV(capture)) or the capture_state role's C(capture_state_result).
      - Required when C(capture_state) is not in O(steps) and a later step reads the capture (C(compose_up),
        C(cleanup), or C(pull_image) without O(image)); ignored when C(capture_state) runs.
    type: dict
    default: {}
  pulled:
    description:
      - A pull from an earlier call (its RV(pull)). Required when C(cleanup) runs without C(pull_image) in O(steps);
        replaced when C(pull_image) runs.
    type: dict
    default: {}
  started:
    description:
      - A start from an earlier call (its RV(up)). Required when C(health_check) runs without C(compose_up) in
        O(steps); replaced when C(compose_up) runs.
    type: dict
    default: {}
  finish_unchanged:
    description:
      - When O(steps) end with C(pull_image) and the service runs the pulled image already (its captured container is
        running that image ID, and the pull brought nothing new), also run C(compose_up), C(health_check) and
        C(cleanup) in this call. C(compose_up) still sees to the rest (a changed pin or compose file recreates the
        container). Under check mode a pull always counts as new, so nothing is added.
    type: bool
    default: false
  health_timeout:
    description: Seconds to wait for the container, and again for O(health_url).
    type: int
    default: 60
  health_url:
    description: URL to probe from the target host until it answers 2xx; empty for none.
    type: str
    default: ""
  health_settle:
    description: Seconds a container without a HEALTHCHECK must run without restarting.
    type: int
    default: 5
  health_interval:
    description: Seconds between two probes of O(health_url); the container itself is polled every 0.25 s.
    type: int
    default: 1
  health_log_lines:
    description: How many of the container's last log lines to keep when it is not healthy.
    type: int
    default: 50
  keep_images:
    description: How many previous images C(cleanup) keeps for rollback.
    type: int
    default: 1
  stop_timeout:
    description: Seconds the old container gets to stop.
    type: int
    default: 10
attributes:
  check_mode:
    support: full
    details: >-
      C(capture_state) tags nothing, C(pull_image) pulls nothing (a pull is reported as a change), C(compose_up) writes
      no pin and runs compose with C(--dry-run); C(health_check) and C(cleanup) are skipped (their records say so).
  diff_mode:
    support: full
    details: The pin file before and after, when C(compose_up) ran.
"""

EXAMPLES = r"""
- name: Deploy the service in one round trip
  compose_deploy:
    steps: [capture_state, pull_image, compose_up, health_check, cleanup]
    project_dir: /homeserver
    pin_file: docker-compose.deploy.yml
    service: portal
    image: ghcr.io/acme/portal:v2
    stamp: "{{ now(utc=true, fmt='%Y%m%dT%H%M%S%f') }}"
  register: __deploy_run

- name: Later steps, with the capture of an earlier call
  compose_deploy:
    steps: [pull_image, compose_up, health_check, cleanup]
    project_dir: /homeserver
    pin_file: docker-compose.deploy.yml
    service: portal
    image: "{{ rollback_choice.image }}"
    pull: "{{ rollback_choice.pull }}"
    not_pulled_reason: on the host already
    captured: "{{ __capture_run.capture }}"
    stamp: "{{ now(utc=true, fmt='%Y%m%dT%H%M%S%f') }}"
"""

RETURN = r"""
capture:
  description: >-
    The capture (C(project), C(file_image), C(container_id), C(container_state), C(image_id), C(image),
    C(history_repository), C(history_ref), C(history)), as compose_capture returns it; O(captured) when
    C(capture_state) did not run; empty when neither.
  type: dict
  returned: always
pull:
  description: >-
    C(image) (the target), C(image_id), C(changed), C(pulled) (O(pull)); O(pulled) when C(pull_image) did not run.
  type: dict
  returned: always
up:
  description: >-
    C(container_id) (the service's container after C(up)), C(changed); O(started) when C(compose_up) did not run.
  type: dict
  returned: always
health:
  description: >-
    The container_health verdict, C(healthy), C(status) and C(detail); empty when C(health_check) did not run or was
    skipped (check mode).
  type: dict
  returned: always
finished:
  description: >-
    Whether this call ran the deploy's last step, C(cleanup) (skipped under check mode counts), by O(steps) or by
    O(finish_unchanged); false on failure.
  type: bool
  returned: always
logs:
  description: The failing container's last log lines when the health check failed, else empty.
  type: str
  returned: always
cleanup:
  description: C(removed) and C(kept), lists of image IDs; empty when C(cleanup) did not run or was skipped.
  type: dict
  returned: always
steps:
  description:
    - One record per finished step, as the deploy playbook records them (C(step), C(success), C(detail), and
      C(image), C(image_id), C(container_id) or C(running) by step).
    - When a step failed, its record C({step, success=false, detail=msg}) comes last.
  type: list
  elements: dict
  returned: always
failed_step:
  description: The step that failed; null when the options were refused before any step ran.
  type: str
  returned: failure
msg:
  description: >-
    Why it failed, in the words of the step's module (for C(health_check), the verdict's detail, as the health_check
    role fails with it).
  type: str
  returned: failure
timings:
  description: Seconds each step that started took, to the millisecond, by step name.
  type: dict
  returned: always
diff:
  description: The pin file before and after.
  type: dict
  returned: when C(compose_up) ran
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.deploy_docker import Docker
from ansible.module_utils.deploy_steps import STEPS, run_steps

ARGUMENT_SPEC = {
    "steps": {"type": "list", "elements": "str", "choices": list(STEPS), "required": True},
    "project_dir": {"type": "str", "required": True},
    "compose_file": {"type": "str", "default": "docker-compose.yml"},
    "pin_file": {"type": "str", "default": ""},
    "service": {"type": "str", "required": True},
    "image": {"type": "str", "default": ""},
    "pull": {"type": "bool", "default": True},
    "not_pulled_reason": {"type": "str", "default": "pull: false"},
    "platform": {"type": "str", "default": ""},
    "history_prefix": {"type": "str", "default": "deploy-history"},
    "stamp": {"type": "str", "required": True},
    "captured": {"type": "dict", "default": {}},
    "pulled": {"type": "dict", "default": {}},
    "started": {"type": "dict", "default": {}},
    "finish_unchanged": {"type": "bool", "default": False},
    "health_timeout": {"type": "int", "default": 60},
    "health_url": {"type": "str", "default": ""},
    "health_settle": {"type": "int", "default": 5},
    "health_interval": {"type": "int", "default": 1},
    "health_log_lines": {"type": "int", "default": 50},
    "keep_images": {"type": "int", "default": 1},
    "stop_timeout": {"type": "int", "default": 10},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    result = run_steps(Docker(module), module.params, module.check_mode)
    if "failed_step" in result:
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
