"""The health_check step: wait until a container is healthy, settled or down, probe a URL, keep a failure's logs.

Nothing waits a fixed time: the container is polled every 0.1 s (a `docker inspect` is cheap), the URL every
`interval` seconds, both bounded by the timeout.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Any, TypedDict

from ansible.module_utils.deploy_docker import Docker, cli_error

# A `docker inspect` costs about 10 ms: polling every 0.1 s notices a healthy container within a tenth of a second,
# as a shell loop would, for about a tenth of a core while it waits.
POLL_SECONDS = 0.1
DOWN = ("exited", "dead", "restarting", "removing")
OK_STATUS = range(200, 300)


class Verdict(TypedDict):
    """The verdict on a container: healthy or not, a status (`healthy`, `running`, `unhealthy`, `url_failed`...),
    and one sentence for people."""

    healthy: bool
    status: str
    detail: str


class HealthResult(TypedDict):
    """What container_health returns."""

    changed: bool
    verdict: Verdict
    logs: str


def uptime(state: dict[str, Any]) -> float:
    """Seconds since the container last started, its StartedAt read to the second."""
    started = datetime.strptime((state.get("StartedAt") or "1970-01-01T00:00:00")[:19], "%Y-%m-%dT%H:%M:%S")
    # timezone.utc, not datetime.UTC: the target host's Python may be older than 3.11.
    return (datetime.now(timezone.utc).replace(tzinfo=None) - started).total_seconds()  # noqa: UP017


def settled(start: dict[str, Any], poll: dict[str, Any] | None, settle: int) -> bool:
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


def judge(
    container: str, start: dict[str, Any] | None, poll: dict[str, Any] | None, settle: int, timeout: int
) -> Verdict:
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
    """One GET: the status (-1 without an answer) and what came back, in a few words ("HTTP 503 Service
    Unavailable", "connection refused", "no answer within 5 s")."""
    try:
        request = urllib.request.Request(url, method="GET", headers={"User-Agent": "ansible-httpget"})
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, f"HTTP {answer.status} {answer.reason}"
    except urllib.error.HTTPError as error:
        return error.code, f"HTTP {error.code} {error.reason}"
    except urllib.error.URLError as error:
        reason = error.reason
    except (TimeoutError, ConnectionError, ValueError, OSError, http.client.HTTPException) as error:
        reason = error
    if isinstance(reason, TimeoutError):
        return -1, f"no answer within {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return -1, "connection refused"
    if isinstance(reason, http.client.RemoteDisconnected):
        return -1, "connection closed without an answer"
    return -1, str(getattr(reason, "strerror", None) or reason)


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


def inspect_container(docker: Docker, container: str) -> dict[str, Any] | None:
    args = ("container", "inspect", container)
    rc, stdout, stderr = docker.run(*args)
    if rc == 0:
        found: list[dict[str, Any]] = json.loads(stdout)
        return found[0]
    if "No such container" in stderr:
        return None
    raise cli_error(f"Inspecting container {container} failed", [docker.binary, *args], rc, stderr)


def container_logs(docker: Docker, container: str, lines: int) -> str:
    rc, stdout, stderr = docker.run("logs", "--timestamps", "--tail", str(lines), container)
    if rc != 0:
        return (stdout + stderr).rstrip("\r\n")
    return merge_logs(stdout, stderr)


def container_health(
    docker: Docker,
    container: str,
    timeout: int,
    url: str,
    settle: int,
    interval: int,
    log_lines: int,
    check_mode: bool,
    earlier_outage: float = 0.0,
) -> HealthResult:
    """Poll the container until its verdict is known, then probe `url` (not under check mode).

    Returns `changed` (never), `verdict` (`healthy`, `status`, `detail`) and `logs` (the last `log_lines` lines of a
    container that is not healthy, else empty). An unhealthy container is a verdict, not an error: the caller fails
    with its detail. `earlier_outage` is how long the engine did not answer earlier in the deploy: a container that is
    down after an outage, during the check or before it, is said to have gone down with the engine.
    """
    # Time spent waiting for the engine (Docker.waited) is not the container's: the deadline moves by as much.
    waited_before = docker.waited
    began = time.monotonic()

    def past_deadline() -> bool:
        return time.monotonic() >= began + timeout + (docker.waited - waited_before)

    start = poll = inspect_container(docker, container)
    while start is not None and not settled(start, poll, settle) and not past_deadline():
        time.sleep(POLL_SECONDS)
        waited = docker.waited
        poll = inspect_container(docker, container)
        if docker.waited > waited and poll is not None:
            # The engine was away: a restart policy may have started the container again, which is not a crash.
            start = poll
    verdict = judge(container, start, poll, settle, timeout)
    engine_away = docker.waited - waited_before + earlier_outage
    if engine_away and not verdict["healthy"] and verdict["status"] in ("exited", "dead", "missing"):
        # It did start: the engine stopped it. What is left of the verdict is how it ended ("exited with code 143").
        how = verdict["detail"].replace("Container failed to start: ", "")
        verdict["detail"] = (
            f"The Docker engine did not answer for {engine_away:.0f} s during the deploy, and the container did not "
            f"run again after it came back ({how[0].lower()}{how[1:]})"
        )

    if url and verdict["healthy"] and not check_mode:
        while True:
            status, message = probe(url, min(timeout, 5))
            if status in OK_STATUS or past_deadline():
                break
            time.sleep(interval)
        if status not in OK_STATUS:
            verdict = {
                "healthy": False,
                "status": "url_failed",
                "detail": f"Health URL {url} did not answer 2xx within {timeout} s (last answer: {message})",
            }

    logs = "" if verdict["healthy"] else container_logs(docker, container, log_lines)
    return {"changed": False, "verdict": verdict, "logs": logs}
