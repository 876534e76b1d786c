"""Zero-downtime deploys: blue_green against recreate, through examples/blue-green as it ships, under a steady load.

    python bench/zero_downtime.py [--deploys 5] [--rate 100] [--proxy-image deploytest/caddy:2.6]

Each strategy has its own copy of the example (its compose file, Caddyfile and inventory settings of `web`, the
strategy alone changed), its own Caddy and its own API server (`python -m api`). After a warm-up deploy each, the
deploys alternate the rig's slow image v2 <-> v3 (it listens four seconds after its start), interleaved between the
strategies round by round. For each deploy, tests/support/load.py's SteadyLoad sends `rate` GET /version a second
through that example's proxy, from a second before the signed POST /deploy until SETTLE_SECONDS after its answer; the
deploy's figures are the requests that started from the POST on. After every deploy the engine is asked (docker
inspect): one container of web, running the deployed image, healthy. Prints a table and writes
bench/results/zero_downtime.json. Every compose project it creates is removed at the end, also after a failure.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, ForeignLoad, median, rounded, write_result

from tests.support.apiserver import ApiServer, free_port
from tests.support.dockercli import compose_down, container_of, docker, image_id
from tests.support.dockercli import image as test_image
from tests.support.load import SteadyLoad

EXAMPLE = REPO / "examples" / "blue-green"
STRATEGIES = ("blue_green", "recreate")
SECRET = "bench-secret-" + "0123456789abcdef" * 3
# The API's limit of 30 deploys an hour per service would stop a long run.
API_SETTINGS = {"DEPLOY_SERVICE_RATE_LIMIT": "100000/hour"}
# Load before a deploy (the proxy serves steadily when it starts) and after its answer (who serves once it is over).
LEAD_SECONDS = 1.0
SETTLE_SECONDS = 1.0


class BenchError(Exception):
    pass


class OthersLoad(ForeignLoad):
    """ForeignLoad without the examples' own containers (Caddy, the app's httpd and its health checks' wget), which
    run under the engine and not under this program."""

    ENGINE = re.compile(ForeignLoad.ENGINE.pattern + r"|caddy|httpd|wget")


def slow(version: str) -> str:
    return test_image("slow", version)


@dataclass
class Run:
    """One deploy under load: the POST's response time, and what the load saw from the POST until SETTLE_SECONDS
    after its answer; each failed request as [seconds from the POST, what came back]."""

    version: str
    seconds: float
    requests: int
    failed: int
    longest_gap: float
    failures: dict[str, int]
    answers: dict[str, int]
    failed_at: list[tuple[float, str]]


@dataclass
class Example:
    """One strategy's copy of the example: its directory, compose project, proxy URL, API server and deploys."""

    strategy: str
    directory: Path
    project: str
    url: str
    settings: dict[str, Any]
    server: ApiServer | None = None
    runs: list[Run] = field(default_factory=list)


def set_up(work: Path, strategy: str, proxy_image: str) -> Example:
    """The example copied with a `.env` of its own, started on slow v1, and an API server on its inventory."""
    directory = work / strategy / "project"
    shutil.copytree(EXAMPLE, directory)
    project = f"bench-zd-{int(time.time())}-{uuid.uuid4().hex[:4]}-{strategy.replace('_', '')}"
    port = free_port()
    variables = {
        "COMPOSE_PROJECT_NAME": project,
        "PROXY_IMAGE": proxy_image,
        "PROXY_PORT": str(port),
        "WEB_IMAGE": slow("v1"),
    }
    (directory / ".env").write_text("".join(f"{name}={value}\n" for name, value in variables.items()))
    shipped = yaml.safe_load((EXAMPLE / "inventory.yml").read_text())["all"]["hosts"]["localhost"]
    settings = {**shipped["deploy_services"]["web"], "strategy": strategy}
    return Example(strategy, directory, project, f"http://127.0.0.1:{port}/version", settings)


def start(example: Example, work: Path) -> None:
    completed = subprocess.run(
        ["docker", "compose", "up", "-d", "--quiet-pull", "--wait", "--wait-timeout", "60"],
        cwd=example.directory,
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0:
        raise BenchError(f"compose up of {example.project} failed: {completed.stderr.strip()}")
    wait_for_answer(example.url, "slow-v1")
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "deploy_compose_dir": str(example.directory),
        "deploy_services": {"web": example.settings},
    }
    inventory = work / example.strategy / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": host}}}, sort_keys=False))
    (work / example.strategy / "api").mkdir()
    example.server = ApiServer(
        work / example.strategy / "api", inventory, SECRET, API_SETTINGS, compose_dir=example.directory
    )


def wait_for_answer(url: str, expected: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).text.strip() == expected:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise BenchError(f"the proxy on {url} did not answer {expected} in {timeout:.0f} s")


def deploy(example: Example, version: str, rate: float, client: httpx.Client) -> Run:
    """A signed POST /deploy of slow `version` under SteadyLoad, then the engine checked."""
    assert example.server is not None
    body, headers = example.server.signed(
        {"service": "web", "image": slow(version), "timestamp": int(time.time()), "message": uuid.uuid4().hex}
    )
    with SteadyLoad(example.url, rate=rate) as load:
        time.sleep(LEAD_SECONDS)
        began = load.mark()
        response = client.post(f"{example.server.url}/deploy", content=body, headers=headers)
        seconds = load.mark() - began
        time.sleep(SETTLE_SECONDS)
        report = load.report(began)
        failed_at = [
            (round(sample.started - began, 2), sample.answer)
            for sample in list(load.samples)
            if sample.started >= began and not sample.ok
        ]
    if response.status_code != 200 or not response.json().get("success"):
        raise BenchError(f"{example.strategy}: POST /deploy of {version}: {response.status_code} {response.text[:500]}")
    check(example, version)
    return Run(
        version,
        seconds,
        report.requests,
        report.failed,
        report.longest_gap,
        dict(report.failures),
        dict(report.answers),
        failed_at,
    )


def check(example: Example, version: str) -> None:
    """One container of web (container_of raises on two), running the deployed image, healthy."""
    container = container_of(example.project, "web")
    where = f"{example.strategy}: {example.project}/web after deploying {version}"
    if container is None:
        raise BenchError(f"{where}: no container")
    health = (container["State"].get("Health") or {}).get("Status")
    if container["Image"] != image_id(slow(version)) or health != "healthy":
        raise BenchError(f"{where}: runs {container['Image']}, {container['State']['Status']}, health {health}")


def summary(example: Example) -> dict[str, Any]:
    runs = example.runs
    gaps = [run.longest_gap for run in runs]
    failures: Counter[str] = Counter()
    for run in runs:
        failures.update(run.failures)
    return {
        "deploys": len(runs),
        "requests": sum(run.requests for run in runs),
        "failed": sum(run.failed for run in runs),
        "failures": dict(failures),
        "longest_gap_max_s": round(max(gaps), 3),
        "longest_gap_median_s": round(median(gaps), 3),
        "deploy_median_s": round(median([run.seconds for run in runs]), 3),
        "deploy_runs_s": rounded([run.seconds for run in runs]),
        "settings": example.settings,
        "runs": [asdict(run) for run in runs],
    }


def environment(proxy_image: str) -> dict[str, Any]:
    caddy = subprocess.run(["docker", "run", "--rm", proxy_image, "version"], capture_output=True, text=True)
    compose = subprocess.run(["docker", "compose", "version", "--short"], capture_output=True, text=True)
    return {
        "cpus": os.cpu_count(),
        "docker_engine": docker("version", "--format", "{{.Server.Version}}"),
        "compose": compose.stdout.strip(),
        "proxy": f"{proxy_image} (caddy {caddy.stdout.strip() or 'unknown'})",
        "python": sys.version.split()[0],
        "load_average_before": os.getloadavg(),
        "when": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def table(result: dict[str, Any]) -> str:
    drain = result["strategies"]["blue_green"]["settings"]["drain_seconds"]
    lines = [
        f"zero-downtime deploys through examples/blue-green (Caddy, {result['rate']:.0f} requests/s, slow image v2 <-> "
        f"v3: it listens 4 s after its start; blue_green drains {drain} s)",
        f"  {'strategy':<12} {'deploys':>7} {'requests':>9} {'failed':>7} {'longest gap max':>16} "
        f"{'median':>7} {'s per deploy':>13}",
    ]
    for strategy, figures in result["strategies"].items():
        lines.append(
            f"  {strategy:<12} {figures['deploys']:>7} {figures['requests']:>9,} {figures['failed']:>7} "
            f"{figures['longest_gap_max_s']:>14.2f} s {figures['longest_gap_median_s']:>5.2f} s "
            f"{figures['deploy_median_s']:>11.2f} s"
        )
        if figures["failures"]:
            lines.append(
                f"  {'':<12} failed requests: {', '.join(f'{n} {what}' for what, n in figures['failures'].items())}"
            )
    environment = result["environment"]
    busiest = ", ".join(f"{name} {cpu:.1f} s" for name, cpu in environment["other_processes_busiest"]) or "none"
    lines.append(
        f"other processes (neither this bench nor the engine): {environment['other_processes_cpu_s']:.1f} CPU s in "
        f"all; busiest: {busiest}"
    )
    return "\n".join(lines)


def run(work: Path, examples: list[Example], deploys: int, rate: float, proxy_image: str) -> dict[str, Any]:
    result: dict[str, Any] = {"deploys": deploys, "rate": rate, "environment": environment(proxy_image)}
    for example in examples:
        start(example, work)
    with httpx.Client(timeout=300) as client:
        # A warm-up, not counted: an API's first deploy is seconds slower (its first run, the first history tag).
        for example in examples:
            deploy(example, "v3", rate, client)
        for round_ in range(deploys):
            version = ("v2", "v3")[round_ % 2]
            for example in examples:
                example.runs.append(deploy(example, version, rate, client))
            progress(
                f"round {round_ + 1}/{deploys} ({version}): "
                + "  ".join(
                    f"{example.strategy} {example.runs[-1].seconds:.1f} s, {example.runs[-1].failed} failed, "
                    f"gap {example.runs[-1].longest_gap:.2f} s"
                    for example in examples
                )
            )
    result["strategies"] = {example.strategy: summary(example) for example in examples}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deploys", type=int, default=5, help="deploys of each strategy (default 5)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests a second through the proxy (default 100)")
    parser.add_argument(
        "--proxy-image", default="deploytest/caddy:2.6", help="Caddy 2.6 image (tests/rig/up.sh builds the default)"
    )
    args = parser.parse_args()
    if args.deploys < 1 or args.rate <= 0:
        parser.error("deploys at least 1, rate above 0")
    if not docker("image", "inspect", "--format", "{{.Id}}", args.proxy_image, check=False):
        parser.error(
            f"no image {args.proxy_image}: run make rig (or examples/blue-green/build-proxy.sh {args.proxy_image})"
        )
    work = Path(tempfile.mkdtemp(prefix="bench-zero-downtime-"))
    foreign = OthersLoad()
    examples: list[Example] = []
    # Stopped (make interrupted, a CI timeout): the finally below still removes what the bench created.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    failed = True
    try:
        examples.extend(set_up(work, strategy, args.proxy_image) for strategy in STRATEGIES)
        result = run(work, examples, args.deploys, args.rate, args.proxy_image)
        failed = False
    except (BenchError, RuntimeError) as error:  # RuntimeError: the docker CLI or the API failed (tests/support/)
        print(f"bench/zero_downtime.py: {error}", file=sys.stderr)
        return 1
    finally:
        for example in examples:
            if example.server is not None:
                example.server.stop()
            compose_down(example.project)
        foreign.stop()
        if failed:
            print(f"bench/zero_downtime.py: failed; the API's logs and runs are kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    result["environment"]["other_processes_cpu_s"] = round(foreign.seconds(), 1)
    result["environment"]["other_processes_busiest"] = foreign.busiest()
    out = write_result("zero_downtime.json", result)
    print(table(result))
    print(f"written to {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
