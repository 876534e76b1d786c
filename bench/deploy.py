"""One service's deploy through the real API against a plain shell script and the reference's flow, on the rig.

    python bench/deploy.py [--rounds 5] [--parallel-rounds 3] [--client wrk|python]
        [--sections recreate,unchanged,rejections,parallel]

- recreate: a new image each run (healthy v1 <-> v2, healthy about a second after start), so every run recreates
  the container. Three contenders, each on its own compose project, interleaved round by round: the project
  (a signed POST /deploy to `python -m api`, waiting for the answer), bench/plain.sh (the same Docker work with
  the docker CLI alone) and bench/reference.sh (the reference's flow: pull, up, sleep 5, check running).
- unchanged: the same three redeploying the image that already runs.
- rejections: POST /deploy with an invalid signature on keep-alive connections (wrk, else an asyncio client):
  requests per second, p50 and p99, alone and while a deploy runs.
- parallel: four services of one compose project deployed at once through the API, against one.
- where the time goes: the project's recreate and unchanged runs, from their ansible-runner events (kept by the
  API under its state directory): each compose_deploy round trip split into its steps' time on the host (the
  module's timings) and Ansible's cost of the round trip, with the start-up before the first event, the play's
  other tasks and the finish after the last; a run's phases add up to its response time.

After every deploy the engine is asked (docker inspect) which image the service's container runs, whether it is
healthy and whether it was recreated. Medians of the rounds, ratios from the same run. Prints a table and writes
bench/results/deploy.json. Every compose project it creates is removed at the end, also after a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, ForeignLoad, image, median, rounded, write_result

from tests.support.apiserver import ApiServer
from tests.support.dockercli import compose_down, container_of, docker, image_id

sys.path.insert(0, str(REPO))
# The module whose results carry the steps of one round trip, and each step's time on the host.
from api.contract import ENGINE_MODULE as STEPS_MODULE

SECRET = "bench-secret-" + "0123456789abcdef" * 3
SERVICE = "web"
SOLO = "solo"
PARALLEL = ("p1", "p2", "p3", "p4")
CONTENDERS = ("project", "plain", "reference")
SCRIPTS = {"plain": REPO / "bench" / "plain.sh", "reference": REPO / "bench" / "reference.sh"}
SECTIONS = ("recreate", "unchanged", "rejections", "parallel")
# Invalid signatures: the API's own limiter (10 per minute per address by default) would answer 429 without
# checking them; raised so that every request takes the whole 403 path (a per-second window keeps it small).
API_SETTINGS = {
    "DEPLOY_SIGNATURE_FAILURE_LIMIT": "1000000/second",
    "DEPLOY_SERVICE_RATE_LIMIT": "100000/hour",
    "DEPLOY_KEEP_RUNS": "1000",
}
# The invalid-signature hammer: how long, on how many keep-alive connections.
HAMMER_SECONDS = 3
CONNECTIONS = 4
# The machine's CPU busier than this (share of all cores, over a second) when the bench starts: something else
# runs, and every figure shows it.
BUSY_SHARE = 0.25
# Other processes' CPU during a section, as a share of one core, from which the table says so.
DISTURBED_SHARE = 0.05
TARGETS = {
    "recreate_vs_plain": 2.0,
    "recreate_vs_reference": 0.6,
    "unchanged_vs_plain": 10.0,
    "rejections_per_s": 1500,
    "rejections_p99_ms": 20.0,
    "parallel_four_vs_one": 1.5,
}


class BenchError(Exception):
    pass


def other(version: str) -> str:
    return "v2" if version == "v1" else "v1"


@dataclass
class Run:
    """One deploy: how long it took (s), when it started and ended (Unix time); through the API, its deployment id
    and the CPU time of the processes the API ran for it (ansible-playbook, its modules, the docker CLI)."""

    seconds: float
    started: float
    ended: float
    deployment_id: str | None = None
    cpu: float = 0.0


@dataclass
class Contender:
    name: str
    project: str  # the compose project's name
    compose_dir: Path
    versions: dict[str, str] = field(default_factory=dict)  # what each service that is up runs now


class Bench:
    def __init__(self, work: Path, rounds: int, parallel_rounds: int, client: str, foreign: ForeignLoad):
        self.work = work
        self.foreign = foreign
        self.rounds = rounds
        self.parallel_rounds = parallel_rounds
        self.client = client
        stamp = f"{int(time.time())}-{uuid.uuid4().hex[:4]}"
        self.contenders = {name: Contender(name, f"bench-{stamp}-{name}", work / name) for name in CONTENDERS}
        self.http = httpx.Client(timeout=300)
        self.server: ApiServer | None = None
        self.result: dict[str, Any] = {"rounds": rounds, "parallel_rounds": parallel_rounds, "targets": TARGETS}
        # The project's deploys through the API, by kind (recreate, unchanged): their runs are split by time_split.
        self.api_runs: dict[str, list[Run]] = {"recreate": [], "unchanged": []}

    # -- setup -------------------------------------------------------------------------------------------------
    def set_up(self) -> None:
        self.result["environment"] = environment()  # first: how busy the machine was before the bench
        service = {"image": image("v1"), "init": True, "restart": "unless-stopped"}
        for contender in self.contenders.values():
            contender.compose_dir.mkdir()
            if contender.name == "project":
                # The API's compose file names v1; the playbook pins the requested image beside it.
                services = {name: dict(service) for name in (SERVICE, SOLO, *PARALLEL)}
            else:
                # The scripts' compose files take the image from the environment.
                services = {SERVICE: {**service, "image": "${IMAGE:-" + image("v1") + "}"}}
            document = {"name": contender.project, "services": services}
            (contender.compose_dir / "docker-compose.yml").write_text(yaml.safe_dump(document, sort_keys=False))
            self.bring_up(contender, SERVICE)
        inventory = self.work / "inventory.yml"
        host = {
            "ansible_connection": "local",
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            "deploy_compose_dir": str(self.contenders["project"].compose_dir),
            "deploy_services": {name: {"health_timeout": 60} for name in (SERVICE, SOLO, *PARALLEL)},
        }
        inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": host}}}, sort_keys=False))
        (self.work / "api").mkdir()
        self.server = ApiServer(self.work / "api", inventory, SECRET, API_SETTINGS)

    def bring_up(self, contender: Contender, *services: str) -> None:
        """Start services on v1, healthy, when they are not up yet. Each container runs a health check every second
        (docker exec), so only the services a section needs are up: they cost every measurement some CPU."""
        missing = [name for name in services if name not in contender.versions]
        if not missing:
            return
        completed = subprocess.run(
            ["docker", "compose", "up", "-d", "--wait", "--quiet-pull", *missing],
            cwd=contender.compose_dir,
            capture_output=True,
            text=True,
            env={**os.environ, "IMAGE": image("v1")},
        )
        if completed.returncode != 0:
            raise BenchError(f"compose up of {contender.project} failed: {completed.stderr.strip()}")
        contender.versions.update(dict.fromkeys(missing, "v1"))

    def take_down(self, contender: Contender) -> None:
        compose_down(contender.project)
        contender.versions.clear()

    def tear_down(self) -> None:
        self.http.close()
        if self.server is not None:
            self.server.stop()
        for contender in self.contenders.values():
            compose_down(contender.project)

    # -- one deploy of each contender ------------------------------------------------------------------------
    def deploy_api(self, service: str, version: str) -> Run:
        assert self.server is not None
        body, headers = self.server.signed(
            {"service": service, "image": image(version), "timestamp": int(time.time()), "message": uuid.uuid4().hex}
        )
        cpu = self.server.cpu_seconds(children=True)
        started, clock = time.time(), time.perf_counter()
        response = self.http.post(f"{self.server.url}/deploy", content=body, headers=headers)
        seconds, ended = time.perf_counter() - clock, time.time()
        cpu = self.server.cpu_seconds(children=True) - cpu  # meaningful when no other deploy ran meanwhile
        if response.status_code != 200 or not response.json().get("success"):
            raise BenchError(f"POST /deploy of {service} {version}: {response.status_code} {response.text[:500]}")
        return Run(seconds, started, ended, response.headers.get("X-Deployment-Id"), cpu)

    def deploy_script(self, contender: Contender, version: str) -> Run:
        script = SCRIPTS[contender.name]
        started, clock = time.time(), time.perf_counter()
        completed = subprocess.run(
            [str(script), str(contender.compose_dir), SERVICE, image(version)], capture_output=True, text=True
        )
        seconds, ended = time.perf_counter() - clock, time.time()
        if completed.returncode != 0:
            raise BenchError(f"{script.name} {version} failed: {completed.stderr.strip()}")
        return Run(seconds, started, ended)

    def deploy(self, contender: Contender, service: str, version: str) -> Run:
        """Deploy `version`, then ask the engine: the container runs its image ID, is healthy, and was recreated
        exactly when the version changed."""
        before = container_of(contender.project, service)
        if contender.name == "project":
            run = self.deploy_api(service, version)
        else:
            run = self.deploy_script(contender, version)
        self.check(contender, service, version, before["Id"] if before else None)
        contender.versions[service] = version
        return run

    def check(self, contender: Contender, service: str, version: str, before: str | None) -> None:
        container = container_of(contender.project, service)
        where = f"{contender.name}: {contender.project}/{service} after deploying {version}"
        if container is None:
            raise BenchError(f"{where}: no container")
        expected = image_id(image(version))
        health = (container["State"].get("Health") or {}).get("Status")
        if container["Image"] != expected:
            raise BenchError(f"{where}: runs {container['Image']}, not {expected}")
        if not container["State"]["Running"] or health != "healthy":
            raise BenchError(f"{where}: {container['State']['Status']}, health {health}")
        recreated = container["Id"] != before
        if recreated != (version != contender.versions[service]):
            raise BenchError(f"{where}: container {'recreated' if recreated else 'kept'}, which it should not be")

    # -- recreate and unchanged: the three contenders, interleaved --------------------------------------------
    def compare(self, kind: str) -> dict[str, Any]:
        times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
        # recreate: the API's first deploy is a warm-up (caches, the service's first history tag); the scripts have
        # nothing to warm. unchanged follows recreate, warm.
        if kind == "recreate":
            project = self.contenders["project"]
            self.deploy(project, SERVICE, other(project.versions[SERVICE]))
        for round_ in range(self.rounds):
            for contender in self.contenders.values():
                current = contender.versions[SERVICE]
                run = self.deploy(contender, SERVICE, other(current) if kind == "recreate" else current)
                times[contender.name].append(run.seconds)
                if contender.name == "project":
                    self.api_runs[kind].append(run)
            progress(
                f"{kind} round {round_ + 1}/{self.rounds}: "
                + "  ".join(f"{name} {times[name][-1]:.2f}s" for name in CONTENDERS)
            )
        medians = {name: median(values) for name, values in times.items()}
        return {
            "median_s": {name: round(value, 3) for name, value in medians.items()},
            "runs_s": {name: rounded(values) for name, values in times.items()},
            "project_vs_plain": round(medians["project"] / medians["plain"], 2),
            "project_vs_reference": round(medians["project"] / medians["reference"], 2),
        }

    # -- rejections ---------------------------------------------------------------------------------------------
    def rejections(self) -> dict[str, Any]:
        assert self.server is not None
        body = json.dumps({"service": SERVICE, "image": image("v1")}).encode()
        bad = "sha256=" + "0" * 64
        alone = self.hammer(body, bad)
        progress(f"rejections alone: {alone['per_s']:.0f}/s, p99 {alone['p99_ms']:.1f} ms")
        # While deploying: deploys of `solo` back to back in a thread, the hammer inside them.
        contender = self.contenders["project"]
        self.bring_up(contender, SOLO)
        stop, deploys, errors = threading.Event(), [], []

        def keep_deploying() -> None:
            try:
                while not stop.is_set():
                    deploys.append(self.deploy(contender, SOLO, other(contender.versions[SOLO])))
            except BaseException as error:  # reported after the join
                errors.append(error)

        thread = threading.Thread(target=keep_deploying)
        thread.start()
        time.sleep(0.5)  # the first deploy's playbook is under way
        window = time.time()
        during = self.hammer(body, bad)
        window_end = time.time()
        stop.set()
        thread.join()
        if errors:
            raise errors[0]
        covered = sum(max(0.0, min(run.ended, window_end) - max(run.started, window)) for run in deploys)
        during["deploys"] = len(deploys)
        during["deploy_runs_s"] = rounded([run.seconds for run in deploys])
        during["deploying_share"] = round(covered / (window_end - window), 3)
        progress(
            f"rejections during deploys: {during['per_s']:.0f}/s, p99 {during['p99_ms']:.1f} ms "
            f"({len(deploys)} deploys, {during['deploying_share']:.0%} of the window)"
        )
        return {"alone": alone, "while_deploying": during}

    def hammer(self, body: bytes, signature: str) -> dict[str, Any]:
        """POST /deploy with an invalid signature, CONNECTIONS keep-alive connections, HAMMER_SECONDS; the server's
        and the client's CPU time tell which one was the bottleneck."""
        assert self.server is not None
        server_cpu = self.server.cpu_seconds()
        if self.client == "wrk":
            outcome = wrk(self.work, self.server.port, body, signature)
        else:
            outcome = python_client(self.server.port, body, signature)
        outcome["server_cpu_share"] = round((self.server.cpu_seconds() - server_cpu) / outcome["seconds"], 3)
        statuses = outcome["statuses"]
        if set(statuses) != {"403"} or outcome["socket_errors"]:
            raise BenchError(f"invalid signatures were not all answered 403: {statuses}, {outcome['socket_errors']}")
        return outcome

    # -- parallel services -------------------------------------------------------------------------------------
    def parallel(self) -> dict[str, Any]:
        assert self.server is not None
        contender = self.contenders["project"]
        self.bring_up(contender, SOLO, *PARALLEL)
        one, four, one_cpu, four_cpu = [], [], [], []
        with ThreadPoolExecutor(len(PARALLEL)) as pool:
            # No warm-up round (the API is warm by now): a service's first deploy through the API only adds a history
            # tag of the image it ran, and the median leaves the first round out when it is slower.
            for round_ in range(self.parallel_rounds):
                run = self.deploy(contender, SOLO, other(contender.versions[SOLO]))
                cpu = self.server.cpu_seconds(children=True)
                futures = [
                    pool.submit(self.deploy, contender, name, other(contender.versions[name])) for name in PARALLEL
                ]
                runs = [future.result() for future in futures]
                cpu = self.server.cpu_seconds(children=True) - cpu
                # From the first request sent to the last answer read (the engine checks before and after excluded).
                seconds = max(each.ended for each in runs) - min(each.started for each in runs)
                one.append(run.seconds)
                four.append(seconds)
                one_cpu.append(run.cpu)
                four_cpu.append(cpu)
                progress(
                    f"parallel round {round_ + 1}/{self.parallel_rounds}: one {run.seconds:.2f}s  four {seconds:.2f}s"
                )
        return {
            "layout": "one compose project (six services, as a home server's compose directory)",
            "one_median_s": round(median(one), 3),
            "four_median_s": round(median(four), 3),
            "four_vs_one": round(median(four) / median(one), 2),
            "one_runs_s": rounded(one),
            "four_runs_s": rounded(four),
            # CPU time of what the API ran (ansible-playbook and below): the floor of four on this many cores.
            "one_cpu_median_s": round(median(one_cpu), 2),
            "four_cpu_median_s": round(median(four_cpu), 2),
        }

    # -- where the time goes -------------------------------------------------------------------------------------
    def time_split(self) -> dict[str, Any]:
        assert self.server is not None
        found: dict[str, Any] = {
            kind: split_runs(self.server.state_dir / "runs", runs) for kind, runs in self.api_runs.items() if runs
        }
        found["ansible_playbook_empty_play_s"] = round(empty_play(self.work), 3)
        return found

    # -- the whole bench ------------------------------------------------------------------------------------------
    def section(self, name: str, measure: Callable[[], dict[str, Any]]) -> None:
        """Run one section; note how long it took and how much CPU other processes used meanwhile."""
        clock, foreign = time.perf_counter(), self.foreign.seconds()
        self.result[name] = measure()
        seconds = time.perf_counter() - clock
        other_cpu = self.foreign.seconds() - foreign
        self.result[name]["section"] = {
            "seconds": round(seconds, 1),
            "other_processes_cpu_s": round(other_cpu, 1),
            "other_processes_cpu_share": round(other_cpu / seconds, 3),
        }

    def run(self, sections: tuple[str, ...]) -> dict[str, Any]:
        self.result["client"] = self.client
        if "recreate" in sections:
            self.section("recreate", lambda: self.compare("recreate"))
        if "unchanged" in sections:
            self.section("unchanged", lambda: self.compare("unchanged"))
        if any(self.api_runs.values()):
            self.result["time_split"] = self.time_split()
        # The scripts' projects are done with: their health checks would only load the next sections.
        self.take_down(self.contenders["plain"])
        self.take_down(self.contenders["reference"])
        if "rejections" in sections:
            self.section("rejections", self.rejections)
        if "parallel" in sections:
            self.section("parallel", self.parallel)
        self.result["verdicts"] = verdicts(self.result)
        self.result["environment"]["load_average_after"] = os.getloadavg()
        self.result["environment"]["other_processes_cpu_s"] = round(self.foreign.seconds(), 1)
        self.result["environment"]["other_processes_busiest"] = self.foreign.busiest()
        return self.result


# -- ansible-runner events: where the time goes ----------------------------------------------------------------------
API_BEFORE = "API: request sent -> playbook launched"
STARTUP = "ansible-playbook start-up -> first event"
OUTSIDE = "play tasks outside the round trips, Ansible between tasks"
EXIT = "ansible exit, runner wrap-up: last event -> runner done"
API_AFTER = "API: runner done -> response read"
# The phases outside the round trips, in the order of a run (the round trips come between OUTSIDE and EXIT).
PHASES = (API_BEFORE, STARTUP, OUTSIDE, EXIT, API_AFTER)
ROUND_TRIP_COST = "Ansible's cost of the round trip (module start, AnsiballZ, result)"
TASK_ENDS = {"runner_on_ok", "runner_on_failed", "runner_on_skipped", "runner_on_unreachable"}


@dataclass
class RoundTrip:
    """One compose_deploy task of a run: how long the task took (its runner_on_start to its result, on the
    controller) and how long each of its steps took on the host (the module's timings)."""

    task: str
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)

    @property
    def cost(self) -> float:
        """Ansible's cost of the round trip: the task's time the steps' work on the host does not account for."""
        return self.seconds - sum(self.steps.values())


@dataclass
class RunSplit:
    """Where one deploy's time went: the phases outside the round trips (PHASES) and the round trips, which add up
    to its response time; each task's duration; and the time between the first and the last event when no task ran."""

    phases: dict[str, float]
    round_trips: list[RoundTrip]
    tasks: dict[str, float]
    between: float

    def total(self) -> float:
        return sum(self.phases.values()) + sum(trip.seconds for trip in self.round_trips)


def created(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["created"]).timestamp()


def task_seconds(data: dict[str, Any], started: float, ended: float) -> float:
    """The duration of a task that started on a host (runner_on_start): the result event's own (ansible-runner's
    runner_on_start to result), else the times of the two events."""
    if isinstance(data.get("duration"), int | float):
        return float(data["duration"])
    if data.get("start") and data.get("end"):
        return datetime.fromisoformat(data["end"]).timestamp() - datetime.fromisoformat(data["start"]).timestamp()
    return ended - started


def host_steps(result: dict[str, Any]) -> dict[str, float]:
    """Each step's time on the host, in the order they ran, from a compose_deploy result."""
    timings = result.get("timings")
    if isinstance(timings, dict) and timings:
        return {step: float(seconds) for step, seconds in timings.items()}
    return {
        step["step"]: float(step["seconds"])
        for step in result.get("steps") or []
        if isinstance(step, dict) and "step" in step and isinstance(step.get("seconds"), int | float)
    }


def split_run(run_dir: Path, run: Run) -> RunSplit:
    """Where one deploy's time went, from the run directory the API kept (DEPLOY_STATE_DIR/runs/<id>).

    env/extravars is written just before the playbook is launched, artifacts/<id>/status when ansible-runner is done,
    and job_events/ holds the events. Each compose_deploy task is a round trip: its duration, split into the time
    of each step on the host (the result's timings) and Ansible's cost (the rest). The play's other tasks and the
    time between tasks make up the rest of the first to the last event. One host: the tasks do not overlap."""
    artifacts = run_dir / "artifacts" / run_dir.name
    events = sorted(
        (json.loads(path.read_text()) for path in (artifacts / "job_events").glob("*.json")),
        key=lambda event: event["counter"],
    )
    if not events:
        raise BenchError(f"no runner events in {artifacts}")
    launched = (run_dir / "env" / "extravars").stat().st_mtime
    runner_done = (artifacts / "status").stat().st_mtime
    first, last = created(events[0]), created(events[-1])
    task_started: dict[str, float] = {}
    started: dict[tuple[str, str], float] = {}
    tasks: dict[str, float] = defaultdict(float)
    trips: dict[str, RoundTrip] = {}
    for event in events:
        data = event.get("event_data", {})
        kind, when = event["event"], created(event)
        key = (data.get("task_uuid", ""), data.get("host", ""))
        if kind == "playbook_on_task_start":
            task_started[key[0]] = when
        elif kind == "runner_on_start":
            started[key] = when
        if kind not in TASK_ENDS:
            continue
        if key in started:
            seconds = task_seconds(data, started.pop(key), when)
        else:
            # No runner_on_start (a meta task): the duration its result carries counts from an earlier task's
            # start, so it lasts from its playbook_on_task_start.
            seconds = when - task_started.get(key[0], when)
        name = f"{data['role']}: {data.get('task', '')}" if data.get("role") else data.get("task", "")
        tasks[name] += seconds
        if data.get("task_action") == STEPS_MODULE and kind in ("runner_on_ok", "runner_on_failed"):
            trip = trips.setdefault(name, RoundTrip(name))
            trip.seconds += seconds
            for step, host_seconds in host_steps(data.get("res") or {}).items():
                trip.steps[step] = trip.steps.get(step, 0.0) + host_seconds
    if not trips:
        raise BenchError(f"no {STEPS_MODULE} result in the runner events of {artifacts}")
    phases = {
        API_BEFORE: launched - run.started,
        STARTUP: first - launched,
        OUTSIDE: (last - first) - sum(trip.seconds for trip in trips.values()),
        EXIT: runner_done - last,
        API_AFTER: run.ended - runner_done,
    }
    return RunSplit(phases, list(trips.values()), dict(tasks), (last - first) - sum(tasks.values()))


def split_runs(runs_dir: Path, runs: list[Run]) -> dict[str, Any]:
    """Medians over the runs of each phase, each round trip's steps and Ansible's cost of it; a phase or step a run
    did not have counts 0 s in it."""
    splits = [split_run(runs_dir / (run.deployment_id or ""), run) for run in runs]
    count = len(splits)

    def mid(values: list[float]) -> float:
        return round(median(values + [0.0] * (count - len(values))), 3)

    trip_seconds: dict[str, list[float]] = defaultdict(list)
    trip_costs: dict[str, list[float]] = defaultdict(list)
    trip_steps: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    tasks: dict[str, list[float]] = defaultdict(list)
    for split in splits:
        for trip in split.round_trips:
            trip_seconds[trip.task].append(trip.seconds)
            trip_costs[trip.task].append(trip.cost)
            for step, seconds in trip.steps.items():
                trip_steps[trip.task][step].append(seconds)
        for name, seconds in split.tasks.items():
            tasks[name].append(seconds)
    round_trips = [
        {
            "task": task,
            "task_median_s": mid(trip_seconds[task]),
            "steps_host_median_s": {step: mid(values) for step, values in trip_steps[task].items()},
            "ansible_median_s": mid(trip_costs[task]),
        }
        for task in trip_seconds
    ]
    phases = {name: mid([split.phases[name] for split in splits]) for name in PHASES}
    in_trips = sum(sum(trip["steps_host_median_s"].values()) + trip["ansible_median_s"] for trip in round_trips)
    task_medians = {name: mid(values) for name, values in tasks.items()}
    return {
        "runs": count,
        # The phases outside the round trips and, between OUTSIDE and EXIT, the round trips' steps and costs: the
        # phases of each run add up to its response time.
        "phases_median_s": phases,
        "round_trips": round_trips,
        "sum_of_medians_s": round(sum(phases.values()) + in_trips, 3),
        "response_median_s": round(median([run.seconds for run in runs]), 3),
        # The largest difference between a run's phases added up and its response time as the client timed it.
        "largest_run_gap_s": round(
            max(abs(split.total() - run.seconds) for split, run in zip(splits, runs, strict=True)), 4
        ),
        # Medians of each run's sum: the steps' time on the host, and Ansible's cost of the round trips.
        "host_steps_median_s": mid([sum(sum(trip.steps.values()) for trip in split.round_trips) for split in splits]),
        "round_trips_cost_median_s": mid([sum(trip.cost for trip in split.round_trips) for split in splits]),
        # Part of OUTSIDE: the first to the last event, no task running (Ansible's bookkeeping between tasks).
        "between_tasks_median_s": mid([split.between for split in splits]),
        "tasks_median_s": dict(sorted(task_medians.items(), key=lambda item: -item[1])),
        "cpu_per_deploy_median_s": round(median([run.cpu for run in runs]), 2),
    }


def empty_play(work: Path) -> float:
    """ansible-playbook with one empty play on localhost: the floor of Ansible's start-up here (median of 3)."""
    playbook = work / "empty.yml"
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  connection: local\n  tasks: []\n")
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    times = []
    for _ in range(3):
        clock = time.perf_counter()
        subprocess.run(
            ["ansible-playbook", "-i", "localhost,", str(playbook)], capture_output=True, env=env, check=True
        )
        times.append(time.perf_counter() - clock)
    return median(times)


# -- load generators ---------------------------------------------------------------------------------------------------
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Hub-Signature-256"] = {signature}
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {{}} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local parts = {{}}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      parts[#parts + 1] = string.format('"%d": %d', status, count)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK {{"requests": %d, "duration_us": %d, "socket_errors": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, '
    .. '"statuses": {{%s}}}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, table.concat(parts, ", ")))
end
"""


def lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string of ASCII is a valid Lua string literal


def wrk(work: Path, port: int, body: bytes, signature: str) -> dict[str, Any]:
    script = work / "invalid-signature.lua"
    script.write_text(WRK_SCRIPT.format(body=lua_string(body.decode()), signature=lua_string(signature)))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    completed = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{HAMMER_SECONDS}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/deploy",
        ],
        capture_output=True,
        text=True,
        timeout=HAMMER_SECONDS + 30,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((line for line in completed.stdout.splitlines() if line.startswith("WRK ")), None)
    if completed.returncode != 0 or line is None:
        raise BenchError(f"wrk failed: {completed.stdout[-1000:]} {completed.stderr[-1000:]}")
    found = json.loads(line[4:])
    seconds = found["duration_us"] / 1e6
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return load_result(
        found["requests"],
        seconds,
        client_cpu,
        found["p50_us"] / 1e3,
        found["p99_us"] / 1e3,
        found["max_us"] / 1e3,
        found["statuses"],
        found["socket_errors"],
    )


def python_client(port: int, body: bytes, signature: str) -> dict[str, Any]:
    """The fallback without wrk: asyncio streams, CONNECTIONS keep-alive connections, in this process."""
    head = (
        f"POST /deploy HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"X-Hub-Signature-256: {signature}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    request = head.encode() + body
    length_header = re.compile(rb"\r\ncontent-length: *([0-9]+)", re.IGNORECASE)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors = 0

    async def connection(deadline: float) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                clock = time.perf_counter()
                writer.write(request)
                answer = await reader.readuntil(b"\r\n\r\n")
                match = length_header.search(answer)
                await reader.readexactly(int(match[1]) if match else 0)
                latencies.append(time.perf_counter() - clock)
                statuses[answer[9:12].decode()] += 1
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            writer.close()

    async def main() -> float:
        clock = time.perf_counter()
        await asyncio.gather(*(connection(clock + HAMMER_SECONDS) for _ in range(CONNECTIONS)))
        return time.perf_counter() - clock

    cpu = time.process_time()
    seconds = asyncio.run(main())
    cpu = time.process_time() - cpu
    latencies.sort()

    def percentile(share: float) -> float:
        return latencies[min(len(latencies) - 1, int(share * len(latencies)))] * 1e3 if latencies else float("nan")

    return load_result(
        len(latencies),
        seconds,
        cpu,
        percentile(0.5),
        percentile(0.99),
        latencies[-1] * 1e3 if latencies else float("nan"),
        dict(statuses),
        errors,
    )


def load_result(
    requests: int, seconds: float, client_cpu: float, p50: float, p99: float, worst: float, statuses: dict, errors: int
) -> dict[str, Any]:
    return {
        "requests": requests,
        "seconds": round(seconds, 3),
        "per_s": round(requests / seconds, 1),
        "p50_ms": round(p50, 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(worst, 2),
        "statuses": {str(status): count for status, count in statuses.items()},
        "socket_errors": errors,
        "connections": CONNECTIONS,
        "client_cpu_share": round(client_cpu / seconds, 3),
        # What the client could send on one core at this cost per request.
        "client_ceiling_per_s": round(requests / client_cpu) if client_cpu > 0 else None,
    }


# -- verdicts, environment, table -------------------------------------------------------------------------------------
def verdicts(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}

    def judge(name: str, value: float, target: float, at_most: bool = True) -> None:
        found[name] = {"value": value, "target": target, "met": value <= target if at_most else value >= target}

    if "recreate" in result:
        judge("recreate_vs_plain", result["recreate"]["project_vs_plain"], TARGETS["recreate_vs_plain"])
        judge("recreate_vs_reference", result["recreate"]["project_vs_reference"], TARGETS["recreate_vs_reference"])
    if "unchanged" in result:
        judge("unchanged_vs_plain", result["unchanged"]["project_vs_plain"], TARGETS["unchanged_vs_plain"])
    if "rejections" in result:
        for when in ("alone", "while_deploying"):
            figures = result["rejections"][when]
            judge(f"rejections_per_s_{when}", figures["per_s"], TARGETS["rejections_per_s"], at_most=False)
            judge(f"rejections_p99_ms_{when}", figures["p99_ms"], TARGETS["rejections_p99_ms"])
    if "parallel" in result:
        judge("parallel_four_vs_one", result["parallel"]["four_vs_one"], TARGETS["parallel_four_vs_one"])
    return found


def environment() -> dict[str, Any]:
    def version(*command: str) -> str:
        completed = subprocess.run(command, capture_output=True, text=True)  # wrk -v exits 1
        return next(iter((completed.stdout or completed.stderr).strip().splitlines()), "")

    return {
        "cpus": os.cpu_count(),
        "docker_engine": docker("version", "--format", "{{.Server.Version}}"),
        "compose": version("docker", "compose", "version", "--short"),
        "ansible": version("ansible-playbook", "--version"),
        "wrk": version("wrk", "-v") if shutil.which("wrk") else None,
        "python": sys.version.split()[0],
        # Anything else running on the machine (tests, say) shows here, and in every figure.
        "cpu_busy_before": round(cpu_busy(), 3),
        "load_average_before": os.getloadavg(),
        "when": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def cpu_busy(seconds: float = 1.0) -> float:
    """The share of all cores' time that was not idle over `seconds` (Linux /proc/stat)."""

    def sample() -> tuple[int, int]:
        values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(values), values[3] + values[4]  # idle and iowait

    total, idle = sample()
    time.sleep(seconds)
    total_after, idle_after = sample()
    return 1 - (idle_after - idle) / max(1, total_after - total)


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def table(result: dict[str, Any]) -> str:
    lines: list[str] = []
    verdict = result["verdicts"]

    def row(label: str, value: str, note: str = "") -> None:
        lines.append(f"  {label:<70} {value:>14}  {note}".rstrip())

    def disturbed(name: str) -> str:
        share = result[name].get("section", {}).get("other_processes_cpu_share", 0)
        return f"  [other processes used {share:.0%} of a core meanwhile]" if share >= DISTURBED_SHARE else ""

    def met(name: str, unit: str) -> str:
        entry = verdict[name]
        sign = ">=" if name.startswith("rejections_per_s") else "<="
        return f"target {sign} {entry['target']:g}{unit}: {'met' if entry['met'] else 'NOT MET'}"

    lines.append(
        f"deploy benchmark: medians of {result['rounds']} interleaved rounds; the engine checked after every deploy"
    )
    busy = result["environment"]["cpu_busy_before"]
    if busy > BUSY_SHARE:
        lines.append(f"  WARNING: the CPU was {busy:.0%} busy before the bench started: something else ran meanwhile")
    titles = {"recreate": "recreate deploy (healthy v1 <-> v2)", "unchanged": "unchanged image (redeploy what runs)"}
    for kind, title in titles.items():
        if kind not in result:
            continue
        section = result[kind]
        lines.append(title + disturbed(kind))
        row("project: signed POST /deploy, answer read", f"{section['median_s']['project']:.2f} s")
        row("plain script (bench/plain.sh)", f"{section['median_s']['plain']:.2f} s")
        row("reference flow: pull, up, sleep 5, running", f"{section['median_s']['reference']:.2f} s")
        row("project / plain", f"{section['project_vs_plain']:.2f}x", met(f"{kind}_vs_plain", "x"))
        note = met("recreate_vs_reference", "x") if kind == "recreate" else ""
        row("project / reference", f"{section['project_vs_reference']:.2f}x", note)
    if "rejections" in result:
        alone = result["rejections"]["alone"]
        client = "wrk -t1" if result["client"] == "wrk" else "asyncio client"
        lines.append(
            f"invalid-signature rejections (all 403): {client}, {alone['connections']} keep-alive connections, "
            f"{alone['seconds']:.0f} s; one uvicorn worker" + disturbed("rejections")
        )
        for when, label in (("alone", "alone"), ("while_deploying", "while a deploy runs")):
            figures = result["rejections"][when]
            row(f"{label}: requests/s", f"{figures['per_s']:,.0f}", met(f"rejections_per_s_{when}", "/s"))
            row(
                f"{label}: p50 / p99 (max)",
                f"{figures['p50_ms']:.1f} / {figures['p99_ms']:.1f} ms",
                met(f"rejections_p99_ms_{when}", " ms") + f" (max {figures['max_ms']:.0f} ms)",
            )
            row(
                f"{label}: CPU, server / client (share of one core)",
                f"{figures['server_cpu_share']:.0%} / {figures['client_cpu_share']:.0%}",
                f"client ceiling ~{figures['client_ceiling_per_s']:,}/s",
            )
        during = result["rejections"]["while_deploying"]
        runs = " ".join(f"{value:.2f}" for value in during["deploy_runs_s"])
        row(
            "deploys meanwhile (share of the window)",
            f"{during['deploys']} ({during['deploying_share']:.0%})",
            runs + " s",
        )
    if "parallel" in result:
        section = result["parallel"]
        lines.append(
            f"parallel services through the API (one compose project; recreate each; medians of "
            f"{result['parallel_rounds']} rounds)" + disturbed("parallel")
        )
        row("one service", f"{section['one_median_s']:.2f} s", f"CPU {section['one_cpu_median_s']:.1f} s")
        row("four services at once", f"{section['four_median_s']:.2f} s", f"CPU {section['four_cpu_median_s']:.1f} s")
        row("four / one", f"{section['four_vs_one']:.2f}x", met("parallel_four_vs_one", "x"))
    if "time_split" in result:
        split = result["time_split"]
        titles = {"recreate": "recreate", "unchanged": "unchanged image"}
        for kind, title in titles.items():
            if kind not in split:
                continue
            part = split[kind]
            phases = part["phases_median_s"]
            trips = part["round_trips"]
            lines.append(
                f"where the time goes: project, {title}, medians of {part['runs']} runs (runner events); the phases of "
                f"each run add up to its response"
            )
            row(API_BEFORE, f"{phases[API_BEFORE]:.2f} s")
            row(STARTUP, f"{phases[STARTUP]:.2f} s")
            row(OUTSIDE, f"{phases[OUTSIDE]:.2f} s", f"of which between tasks {part['between_tasks_median_s']:.2f} s")
            for number, trip in enumerate(trips, 1):
                lines.append(f"  round trip {number}: {trip['task']} (task {trip['task_median_s']:.2f} s)")
                for step, seconds in trip["steps_host_median_s"].items():
                    row(f"  {step}, on the host", f"{seconds:.2f} s")
                row(f"  {ROUND_TRIP_COST}", f"{trip['ansible_median_s']:.2f} s")
            row(EXIT, f"{phases[EXIT]:.2f} s")
            row(API_AFTER, f"{phases[API_AFTER]:.2f} s")
            row(
                "sum of these medians",
                f"{part['sum_of_medians_s']:.2f} s",
                f"median response {part['response_median_s']:.2f} s; each run's phases add up to its response "
                f"within {part['largest_run_gap_s'] * 1000:.1f} ms",
            )
            row("steps on the host, in all (median of each run's sum)", f"{part['host_steps_median_s']:.2f} s")
            row(
                f"Ansible's cost of the {len(trips)} round trips, in all (median)"
                if len(trips) > 1
                else "Ansible's cost of the round trip (median)",
                f"{part['round_trips_cost_median_s']:.2f} s",
            )
            overhead = phases[API_BEFORE] + phases[STARTUP] + phases[EXIT] + phases[API_AFTER]
            row(
                "response - playbook (API, ansible start-up and exit)",
                f"{overhead:.2f} s",
                f"ansible-playbook, empty play: {split['ansible_playbook_empty_play_s']:.2f} s",
            )
            row("CPU per deploy (what the API ran)", f"{part['cpu_per_deploy_median_s']:.2f} s")
            in_trips = {trip["task"] for trip in trips}
            outside = [(name, seconds) for name, seconds in part["tasks_median_s"].items() if name not in in_trips]
            lines.append("  tasks outside the round trips (median per deploy)")
            for name, seconds in outside[:8]:
                row("  " + (name if len(name) <= 68 else name[:65] + "..."), f"{seconds:.2f} s")
    environment = result["environment"]
    busiest = ", ".join(f"{name} {cpu:.1f} s" for name, cpu in environment["other_processes_busiest"]) or "none"
    lines.append(
        f"other processes (neither this bench nor the engine): {environment['other_processes_cpu_s']:.1f} CPU s in "
        f"all; busiest: {busiest}"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of recreate and unchanged (default 5)")
    # Four deploys at once take about 15 s here: 3 rounds keep `make bench` within about five minutes.
    parser.add_argument("--parallel-rounds", type=int, default=3, help="rounds of one against four (default 3)")
    parser.add_argument("--client", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="a comma-separated subset of " + ", ".join(SECTIONS)
    )
    args = parser.parse_args()
    sections = tuple(name for name in args.sections.split(",") if name)
    if not set(sections) <= set(SECTIONS) or min(args.rounds, args.parallel_rounds) < 1:
        parser.error(f"sections are {', '.join(SECTIONS)}; rounds at least 1")
    work = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    foreign = ForeignLoad()
    bench = Bench(work, args.rounds, args.parallel_rounds, args.client, foreign)
    # Stopped (make interrupted, a CI timeout): the finally below still removes what the bench created.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    failed = True
    try:
        bench.set_up()
        result = bench.run(sections)
        failed = False
    except (BenchError, RuntimeError) as error:  # RuntimeError: the docker CLI or the API failed (tests/support/)
        print(f"bench/deploy.py: {error}", file=sys.stderr)
        return 1
    finally:
        bench.tear_down()
        foreign.stop()
        if failed:
            print(f"bench/deploy.py: failed; the API's log and runs are kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    out = write_result("deploy.json", result)
    print(table(result))
    print(f"written to {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
