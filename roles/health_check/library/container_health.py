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

import http.client
import json
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

from ansible.module_utils.basic import AnsibleModule

# A `docker inspect` is cheap: the container is polled this often, whatever the URL's interval.
POLL_SECONDS = 0.25
DOWN = ("exited", "dead", "restarting", "removing")
OK_STATUS = range(200, 300)


def uptime(state: dict) -> float:
    """Seconds since the container last started, its StartedAt read to the second as the role always read it."""
    started = datetime.strptime((state.get("StartedAt") or "1970-01-01T00:00:00")[:19], "%Y-%m-%dT%H:%M:%S")
    # timezone.utc, not datetime.UTC: the target host's Python may be older than 3.11.
    return (datetime.now(timezone.utc).replace(tzinfo=None) - started).total_seconds()  # noqa: UP017


def settled(start: dict, poll: dict | None, settle: int) -> bool:
    """Whether polling can stop: the container is gone, down, restarted, judged by its HEALTHCHECK, or settled."""
    if poll is None:
        return True
    state = poll["State"]
    health = state.get("Health")
    if state["Status"] in DOWN or poll["RestartCount"] > start["RestartCount"]:
        return True
    if health:
        return health["Status"] in ("healthy", "unhealthy")
    return bool(state["Running"]) and uptime(state) >= settle


def judge(container: str, start: dict | None, poll: dict | None, settle: int, timeout: int) -> dict:
    """The verdict on the last poll: healthy or not, a status, and one sentence for people."""
    if start is None or poll is None:
        return {"healthy": False, "status": "missing", "detail": f"Container {container} does not exist"}
    state = poll["State"]
    health = state.get("Health")
    restarts = poll["RestartCount"] - start["RestartCount"]
    if state["Status"] in ("exited", "dead"):
        error = f" ({state['Error']})" if state.get("Error") else ""
        return {
            "healthy": False,
            "status": state["Status"],
            "detail": f"Container failed to start: exited with code {state['ExitCode']}{error}",
        }
    if state["Status"] == "restarting" or restarts > 0:
        exit_code = f" (last exit code {state['ExitCode']})" if state.get("ExitCode") else ""
        return {
            "healthy": False,
            "status": "restarting",
            "detail": f"Container is restarting: it stopped {max(restarts, 1)} time(s) since it was started{exit_code}",
        }
    if health and health["Status"] == "healthy":
        return {"healthy": True, "status": "healthy", "detail": "Container is healthy"}
    if health and health["Status"] == "unhealthy":
        log = health.get("Log") or []
        output = (log[-1].get("Output") or "").strip() if log else ""
        return {
            "healthy": False,
            "status": "unhealthy",
            "detail": f"Container is unhealthy: its HEALTHCHECK failed {health['FailingStreak']} time(s) in a row"
            + (f" ({output})" if output else ""),
        }
    if not health and state["Running"] and uptime(state) >= settle:
        return {
            "healthy": True,
            "status": "running",
            "detail": f"Container has no HEALTHCHECK and ran {settle} s without a restart",
        }
    status = health["Status"] if health else state["Status"]
    described = health["Status"] if health else f"no HEALTHCHECK, {state['Status']}"
    return {
        "healthy": False,
        "status": status,
        "detail": f"Container not healthy after {timeout} s (health: {described})",
    }


def probe(url: str, timeout: float) -> tuple[int, str]:
    """One GET: the status (-1 without an answer) and a message, in ansible.builtin.uri's words."""
    try:
        request = urllib.request.Request(url, method="GET", headers={"User-Agent": "ansible-httpget"})
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status, message = answer.status, f"OK ({answer.headers.get('Content-Length', 'unknown')} bytes)"
    except (ConnectionError, ValueError) as error:
        # uri failed outright on these, with the bare message.
        return -1, str(error)
    except urllib.error.HTTPError as error:
        status, message = error.code, str(error)
    except urllib.error.URLError as error:
        status, message = int(getattr(error, "code", -1)), f"Request failed: {error}"
    except OSError as error:
        status, message = -1, f"Connection failure: {error}"
    except http.client.BadStatusLine as error:
        status, message = (
            -1,
            f"Connection failure: connection was closed before a valid response was received: {error.line}",
        )
    except Exception as error:
        status, message = -1, f"An unknown error occurred: {error}"
    if status not in OK_STATUS:
        message = f"Status code was {status} and not {list(OK_STATUS)}: {message}"
    return status, message


def merge_logs(stdout: str, stderr: str) -> str:
    """`docker logs --timestamps` split over stdout and stderr, merged back into the container's order, stamps cut."""
    entries: list[tuple[str, int, str]] = []
    for stream in (stdout, stderr):
        for line in stream.split("\n"):
            stamp, _, text = line.partition(" ")
            if stamp[:4].isdigit() and stamp.endswith("Z"):
                entries.append((stamp, len(entries), text))
            elif entries and line:
                # A message that carried a newline of its own continues the entry before it.
                last_stamp, order, last_text = entries[-1]
                entries[-1] = (last_stamp, order, f"{last_text}\n{line}")
    return "\n".join(text for _, _, text in sorted(entries)).rstrip("\r\n")


class Docker:
    """The docker CLI, with the module's environment (DOCKER_HOST included)."""

    def __init__(self, module: AnsibleModule):
        self.module = module
        self.binary = module.get_bin_path("docker", required=True)

    def inspect(self, container: str) -> dict | None:
        rc, stdout, stderr = self.module.run_command([self.binary, "container", "inspect", container])
        if rc == 0:
            return json.loads(stdout)[0]
        if "No such container" in stderr:
            return None
        self.module.fail_json(msg=f"Error inspecting container {container}: {stderr.strip()}", rc=rc, stderr=stderr)

    def logs(self, container: str, lines: int) -> str:
        command = [self.binary, "logs", "--timestamps", "--tail", str(lines), container]
        rc, stdout, stderr = self.module.run_command(command)
        if rc != 0:
            return (stdout + stderr).rstrip("\r\n")
        return merge_logs(stdout, stderr)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "container": {"type": "str", "required": True},
            "timeout": {"type": "int", "default": 60},
            "url": {"type": "str", "default": ""},
            "settle": {"type": "int", "default": 5},
            "interval": {"type": "int", "default": 1},
            "log_lines": {"type": "int", "default": 50},
        },
        supports_check_mode=True,
    )
    params = module.params
    container, timeout, settle = params["container"], params["timeout"], params["settle"]
    deadline = time.monotonic() + timeout
    docker = Docker(module)

    start = poll = docker.inspect(container)
    while start is not None and not settled(start, poll, settle) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        poll = docker.inspect(container)
    verdict = judge(container, start, poll, settle, timeout)

    url = params["url"]
    if url and verdict["healthy"] and not module.check_mode:
        while True:
            status, message = probe(url, min(timeout, 5))
            if status in OK_STATUS or time.monotonic() >= deadline:
                break
            time.sleep(params["interval"])
        if status not in OK_STATUS:
            verdict = {
                "healthy": False,
                "status": "url_failed",
                "detail": f"Health URL {url} did not answer 2xx within {timeout} s (last answer: {status} {message})",
            }

    logs = "" if verdict["healthy"] else docker.logs(container, params["log_lines"])
    module.exit_json(changed=False, verdict=verdict, logs=logs)


if __name__ == "__main__":
    main()
