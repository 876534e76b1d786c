"""Deploy to three hosts in one batch against one host, on the rig's three Docker engines (tests/rig/hosts.sh).

Each round deploys a new image (healthy v1 <-> v2, so every container is recreated) through the real playbook
and ansible-runner, once to one host and once to three hosts with deploy_batches 100%, interleaved; the figure is
the median of the rounds. Prints a table and writes bench/results/fleet.json.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ansible_runner
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.dockercli import REGISTRY, compose_down  # noqa: E402
from tests.support.hosts import local_vars, rig_hosts  # noqa: E402

ROUNDS = 5


def main() -> None:
    rig = rig_hosts()
    engines = {f"fleet{n}": rig.engine(f"h{n}") for n in (1, 2, 3)}
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    project = f"bench-fleet-{int(time.time())}"
    hosts = {}
    for host, docker_host in engines.items():
        compose_dir = work / host
        compose_dir.mkdir()
        service = {"image": f"{REGISTRY}/deploytest/healthy:v1", "init": True}
        (compose_dir / "docker-compose.yml").write_text(yaml.safe_dump({"name": project, "services": {"web": service}}))
        hosts[host] = {**local_vars(docker_host), "deploy_compose_dir": str(compose_dir)}
    (work / "runner").mkdir()
    inventory = work / "inventory.yml"
    inventory.write_text(
        yaml.safe_dump({"all": {"hosts": hosts, "vars": {"deploy_services": {"web": {"health_timeout": 30}}}}})
    )

    def deploy(version: str, limit: str) -> float:
        started = time.perf_counter()
        runner = ansible_runner.run(
            private_data_dir=str(work / "runner"),
            playbook=str(REPO / "playbooks" / "deploy.yml"),
            inventory=str(inventory),
            extravars={
                "service": "web",
                "image": f"{REGISTRY}/deploytest/healthy:{version}",
                "deploy_batches": ["100%"],
            },
            limit=limit,
            envvars={"ANSIBLE_CONFIG": str(REPO / "ansible.cfg")},
            quiet=True,
        )
        elapsed = time.perf_counter() - started
        if runner.rc != 0:
            sys.exit(f"deploy of {version} to {limit} failed: rc {runner.rc}")
        return elapsed

    try:
        # Warm up: every engine has both images and a running container, so each round is a recreate.
        deploy("v2", "all")
        one, three = [], []
        for round_ in range(ROUNDS):
            version = ("v1", "v2")[round_ % 2]
            one.append(deploy(version, "fleet1"))
            three.append(deploy(version, "all"))
    finally:
        for docker_host in engines.values():
            compose_down(project, docker_host)
        shutil.rmtree(work, ignore_errors=True)  # the compose files and the runner directory
    result = {
        "rounds": ROUNDS,
        "one_host_s": round(statistics.median(one), 2),
        "three_hosts_one_batch_s": round(statistics.median(three), 2),
        "ratio": round(statistics.median(three) / statistics.median(one), 2),
        "one_host_runs_s": [round(value, 2) for value in one],
        "three_hosts_runs_s": [round(value, 2) for value in three],
    }
    out = REPO / "bench" / "results" / "fleet.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'recreate deploy (healthy v1 <-> v2)':40} {'median':>8}")
    print(f"{'one host':40} {result['one_host_s']:>7.2f}s")
    print(f"{'three hosts, three engines, one batch':40} {result['three_hosts_one_batch_s']:>7.2f}s")
    print(f"{'ratio':40} {result['ratio']:>7.2f}x")
    print(f"written to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
