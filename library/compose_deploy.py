#!/usr/bin/python
"""The deploy's module: the steps of one round trip of a deploy, a rollback or a status read of one compose service."""

from __future__ import annotations

DOCUMENTATION = r"""
module: compose_deploy
short_description: Run steps of a deploy of one compose service in one module round trip
description:
  - The one implementation of each step of a deploy (module_utils/deploy_steps.py), run by the deploy role. Runs the
    requested O(steps) in the deploy's order C(preflight), C(capture_state), C(choose_image), C(pull_image),
    C(compose_up), C(health_check), C(observe), C(drain), C(cleanup), C(rollback); or C(status) alone.
  - C(preflight), the first step of every action, refuses before anything changes to replace or remove the container
    the module runs in (the API's own service, when the API runs in a container and deploys to its own host) - compose
    would stop it, and the deploy with it, midway. Its one line names the service, the container's short ID and the
    command that updates it from the host instead, C(docker compose -f <its compose file> up -d --build <service>)
    (C(--pull always) for a service without C(build)), the file as the container's compose labels name it. The
    container is found in C(/proc/self/mountinfo); outside one, or in a container of another service or on another
    engine, there is nothing to refuse. With O(strategy=blue_green) it also refuses a service two containers of
    which would collide (a container_name, a published host port, network_mode host, more than one replica), or
    that runs two containers already.
  - C(capture_state) records the service's container, image ID and reference, its compose file (found as
    C(docker compose) finds it when O(compose_file) is empty) and its history, and tags a running image the history
    lacks C(<history_prefix>/<project>/<service>:<stamp>-<short id>).
  - C(choose_image) (a rollback) chooses the image to bring back, O(image) or else the newest previous image of the
    history, under the best name it has; an image the host has is not pulled.
  - C(pull_image) pulls the target image, O(image) or the chosen one or else the image the compose file names,
    always asking the registry; with O(pull=false) it only finds the image on the host.
  - C(compose_up) pins the target image in the pin file beside the compose file (C(<name>.deploy.yml); the pin is
    dropped when it is the compose file's image) and runs C(docker compose up --detach --no-deps -- <service>).
  - C(health_check) waits until the new container is healthy, settled or down, then probes O(health_url), where
    C({address}) stands for the container's own IP address.
  - C(observe) and C(drain) (O(strategy=blue_green)) watch the new container for O(observe_seconds) while the old one
    serves, then let the old one serve O(drain_seconds) more, stop it with its own grace period and remove it, and
    check that the new one alone is left, running the pulled image ID.
  - C(cleanup) stamps the pulled image as the newest of the service's history, keeps O(keep_images) previous images
    and removes the older ones. Its stamp is O(stamp) plus the time elapsed on the host since the module started.
  - C(rollback) brings back the captured image (points its reference at it again, compose up, health check, checks the
    container runs the captured image ID), or removes what a first deploy half-started. With O(stopped_at) (the
    rollout stopped on other hosts) the restored image also becomes the newest of the history again. Its outcome is
    in its record and RV(state); a rollback that fails does not fail the module.
  - C(status) reads what the service runs and the container's state, and changes nothing; it reads the API's own
    service too. With O(watch) it also pulls the image the service is deployed from (O(image), else the compose
    file's), as C(pull_image) does, and reports the image ID its name points to now - what the API's registry watch
    compares with the running one.
  - What a step reads comes from an earlier step of the same call or from O(state), the RV(state) of an earlier
    call. Steps that lack what they read are refused before anything runs.
  - With O(finish_unchanged), a call whose steps end with C(pull_image) also runs C(compose_up), C(health_check) and
    C(cleanup) when the service runs the pulled image already, so that a redeploy that changes nothing is one round
    trip.
  - The first step that fails ends the run; RV(failed_step) says which.
  - Runs the C(docker) CLI, which honours C(DOCKER_HOST) from the environment.
  - An engine that does not answer (its socket is gone or refuses, or a command's stream was cut, as in a daemon
    restart) is a pause, not a verdict - the command runs again once the engine answers, at most O(engine_wait)
    seconds later; a step that waited says so in its record (C(engine_wait)), and C(health_check) does not count the
    wait against O(health_timeout).
options:
  action:
    description: >-
      What the steps are part of; a rollback chooses its image, and its round trips differ. C(remove) (the API's
      reconciliation) reads without writing history, and its C(rollback) takes the service's container away. C(settle)
      (the API's reconciliation of a blue-green deploy that died with two containers) reads without writing history,
      and its C(drain) keeps the running container of O(keep_image_id) and drains and removes the others.
    type: str
    choices: [deploy, rollback, remove, settle]
    default: deploy
  steps:
    description: The steps to run; they run in the deploy's order whatever the order given.
    type: list
    elements: str
    choices: [preflight, capture_state, choose_image, pull_image, compose_up, health_check, observe, drain, cleanup,
      rollback, status]
    required: true
  project_dir:
    description: Directory that holds the compose file (C(~) and variables are expanded).
    type: str
    required: true
  compose_file:
    description: Compose file, relative to O(project_dir); empty to find it as C(docker compose) does.
    type: str
    default: ""
  service:
    description: The compose service.
    type: str
    required: true
  host:
    description: The host's name in the inventory, for the messages that name it.
    type: str
    default: the host
  image:
    description: The image to deploy (or to roll back to); empty for the compose file's (or the newest previous one).
    type: str
    default: ""
  pull:
    description: Whether to pull the image; V(false) only finds it on the host, where it must be.
    type: bool
    default: true
  platform:
    description: Platform to pull, for example C(linux/arm64); empty for the engine's own.
    type: str
    default: ""
  history_prefix:
    description: Repository prefix of the services' histories.
    type: str
    default: deploy-history
  stamp:
    description: The controller's UTC clock as C(%Y%m%dT%H%M%S%f), as C(now(utc=true, fmt=...)) gives it.
    type: str
    required: true
  state:
    description: The RV(state) of the call before this one; empty for the first.
    type: dict
    default: {}
  finish_unchanged:
    description: Finish a redeploy that changes nothing in this call (see the description).
    type: bool
    default: false
  stopped_at:
    description: For C(rollback), the hosts where the rollout stopped, when this host had succeeded.
    type: str
    default: ""
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
    description: Seconds between two probes of O(health_url); the container itself is polled every 0.1 s.
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
  engine_wait:
    description: Seconds a step waits for the Docker engine to answer again, each time it stops answering; past them
      the step fails and names the engine.
    type: int
    default: 60
  strategy:
    description: >-
      How the service's container is replaced - C(recreate) (compose recreates it) or C(blue_green) (C(preflight)
      checks that two can run side by side; C(compose_up) starts the new one beside the old one, which serves until
      C(health_check) and C(observe) have proven the new one; C(drain) then retires the old one; a failure before
      that removes the new one). A round trip after the first follows the strategy in O(state).
    type: str
    choices: [recreate, blue_green]
    default: recreate
  drain_seconds:
    description: C(blue_green) - seconds the old container serves beside the proven new one before its stop signal.
    type: int
    default: 3
  observe_seconds:
    description: C(blue_green) - seconds the healthy new container is watched beside the old one (a canary window).
    type: int
    default: 0
  keep_image_id:
    description: C(settle) - the image ID of the container to keep.
    type: str
    default: ""
  watch:
    description: C(status) - also pull the image the service is deployed from and report it (see the description).
    type: bool
    default: false
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
- name: Capture the running state and pull the image
  compose_deploy:
    steps: [preflight, capture_state, pull_image]
    project_dir: /homeserver
    service: portal
    image: ghcr.io/acme/portal:v2
    finish_unchanged: true
    stamp: "{{ now(utc=true, fmt='%Y%m%dT%H%M%S%f') }}"
  register: __deploy_prepare

- name: Start the service
  compose_deploy:
    steps: [compose_up]
    project_dir: /homeserver
    service: portal
    image: ghcr.io/acme/portal:v2
    state: "{{ __deploy_prepare.state }}"
    stamp: "{{ now(utc=true, fmt='%Y%m%dT%H%M%S%f') }}"
"""

RETURN = r"""
state:
  description:
    - O(state) with this call's work added - C(capture), C(choice), C(pull) (C(image), C(image_id), C(changed),
      C(pulled)), C(up) (C(container_id), C(changed)), C(health), C(cleanup), C(rollback) (C(success),
      C(rolled_back), C(image), C(image_id), C(detail)), C(logs), and C(steps), one record per finished step
      (C(step), C(success), C(detail), C(seconds), and C(image), C(image_id), C(container_id), C(running) or
      C(rolled_back) by step; a failed step's record comes last) - and after a failure C(failed_step) and C(error).
    - The deploy role publishes the host's record made from it (module_utils/deploy_rules.py, host_record).
  type: dict
  returned: always
next_steps:
  description: The steps of the next round trip (C([rollback]) after a failure that changed the host); empty when
    nothing follows.
  type: list
  elements: str
  returned: always
finished:
  description: Whether this call ran the deploy's last step, C(cleanup); false on failure.
  type: bool
  returned: always
status:
  description: C(service), C(container_id), C(image), C(image_id) and C(state) of what runs; with O(watch), also
    C(latest_image) and C(latest_image_id), the image pulled and the ID it names now.
  type: dict
  returned: when C(status) ran
logs:
  description: The failing container's last log lines when a health check failed, else empty.
  type: str
  returned: always
failed_step:
  description: The step that failed; null when the options were refused before any step ran.
  type: str
  returned: failure
msg:
  description: Why it failed, in one line.
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
from ansible.module_utils.deploy_steps import MODULE_STEPS, run_steps

ARGUMENT_SPEC = {
    "action": {"type": "str", "choices": ["deploy", "rollback", "remove", "settle"], "default": "deploy"},
    "steps": {"type": "list", "elements": "str", "choices": list(MODULE_STEPS), "required": True},
    "project_dir": {"type": "str", "required": True},
    "compose_file": {"type": "str", "default": ""},
    "service": {"type": "str", "required": True},
    "host": {"type": "str", "default": "the host"},
    "image": {"type": "str", "default": ""},
    "pull": {"type": "bool", "default": True},
    "platform": {"type": "str", "default": ""},
    "history_prefix": {"type": "str", "default": "deploy-history"},
    "stamp": {"type": "str", "required": True},
    "state": {"type": "dict", "default": {}},
    "finish_unchanged": {"type": "bool", "default": False},
    "stopped_at": {"type": "str", "default": ""},
    "health_timeout": {"type": "int", "default": 60},
    "health_url": {"type": "str", "default": ""},
    "health_settle": {"type": "int", "default": 5},
    "health_interval": {"type": "int", "default": 1},
    "health_log_lines": {"type": "int", "default": 50},
    "keep_images": {"type": "int", "default": 1},
    "stop_timeout": {"type": "int", "default": 10},
    "engine_wait": {"type": "int", "default": 60},
    "strategy": {"type": "str", "choices": ["recreate", "blue_green"], "default": "recreate"},
    "drain_seconds": {"type": "int", "default": 3},
    "observe_seconds": {"type": "int", "default": 0},
    "keep_image_id": {"type": "str", "default": ""},
    "watch": {"type": "bool", "default": False},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    docker = Docker(module, engine_wait=module.params["engine_wait"])
    result = run_steps(docker, module.params, module.check_mode)
    if "failed_step" in result:
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
