"""The rig's extra hosts (tests/rig/hosts.sh): Docker engines h1, h2, h3, each a dockerd of its own on
unix:///run/deploytest-hN.sock, and an sshd on 127.0.0.1 with key auth, as $DEPLOY_TEST_STATE/hosts.json
describes them.

A missing hosts.json or an engine that does not answer fails the test, it is never skipped: `make rig`
(tests/rig/up.sh) brings them up.

    rig = rig_hosts()
    inventory = {
        "prod1": {**local_vars(rig.engine("h1")), ...},  # Ansible runs locally, Docker on engine h1
        "prod3": {**ssh_vars(rig, rig.engine("h3")), ...},  # Ansible over SSH, Docker on engine h3
    }
    docker_on(rig.engine("h1"), "ps", "-q")  # tests.support.dockercli
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def state_dir() -> Path:
    """The rig's state directory, as tests/rig/up.sh computes it: $DEPLOY_TEST_STATE or REPO/var/test-rig."""
    return Path(os.environ.get("DEPLOY_TEST_STATE") or REPO / "var" / "test-rig").absolute()


@dataclass(frozen=True)
class Engine:
    """One extra Docker engine: its name (h1), its socket (unix:///run/deploytest-h1.sock) and its `docker info` ID."""

    name: str
    docker_host: str
    engine_id: str


@dataclass(frozen=True)
class SSHHost:
    """The rig's sshd: root on 127.0.0.1:<port> with the rig's key, its host key pinned in known_hosts."""

    host: str
    port: int
    user: str
    key: str
    known_hosts: str

    def command(self, *args: str) -> list[str]:
        """An `ssh` command line that logs in to it and runs `args`."""
        return [
            "ssh",
            "-F",
            "/dev/null",
            *("-i", self.key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"),
            *("-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes"),
            *("-p", str(self.port), f"{self.user}@{self.host}", *args),
        ]


@dataclass(frozen=True)
class RigHosts:
    """What hosts.json describes: the engines by name, the SSH host, the Python the SSH host runs modules with."""

    engines: Mapping[str, Engine]
    ssh: SSHHost
    python: str
    registry: str
    path: Path

    def engine(self, name: str) -> str:
        """The DOCKER_HOST of engine `name` (h1, h2, h3): what local_vars, ssh_vars and dockercli's docker_on take."""
        if name not in self.engines:
            pytest.fail(f"no engine {name!r} in {self.path}; engines: {', '.join(self.engines)}", pytrace=False)
        return self.engines[name].docker_host

    @property
    def names(self) -> list[str]:
        return list(self.engines)


def read_hosts(path: Path | None = None) -> RigHosts:
    """hosts.json as it is, without asking the engines anything. Missing or unreadable, it fails the test."""
    path = path or state_dir() / "hosts.json"
    try:
        document = json.loads(path.read_text())
        engines = {
            name: Engine(name, entry["docker_host"], entry.get("engine_id", ""))
            for name, entry in document["hosts"].items()
        }
        ssh = document["ssh"]
        return RigHosts(
            engines=engines,
            ssh=SSHHost(ssh["host"], int(ssh["port"]), ssh["user"], ssh["key"], ssh["known_hosts"]),
            python=document["python"],
            registry=document["registry"],
            path=path,
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        pytest.fail(f"the rig's hosts are not described in {path} (run `make rig`): {error!r}", pytrace=False)


@functools.cache
def rig_hosts() -> RigHosts:
    """hosts.json, checked once per process: every engine answers `docker info` with the ID hosts.json names, the
    SSH host takes the rig's key, its Python exists. Anything missing fails the test (never a skip)."""
    rig = read_hosts()
    for engine in rig.engines.values():
        probe = subprocess.run(
            ["docker", "-H", engine.docker_host, "info", "--format", "{{.ID}}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if probe.returncode != 0:
            pytest.fail(
                f"engine {engine.name} does not answer on {engine.docker_host} (run `make rig`): "
                f"{probe.stderr.strip()}",
                pytrace=False,
            )
        if engine.engine_id and probe.stdout.strip() != engine.engine_id:
            pytest.fail(
                f"{engine.docker_host} answers as engine {probe.stdout.strip()}, "
                f"not {engine.name} ({engine.engine_id}); run `make rig`",
                pytrace=False,
            )
    login = subprocess.run(
        rig.ssh.command("true"), capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30
    )
    if login.returncode != 0:
        pytest.fail(
            f"no SSH login to {rig.ssh.user}@{rig.ssh.host}:{rig.ssh.port} (run `make rig`): {login.stderr.strip()}",
            pytrace=False,
        )
    if not os.access(rig.python, os.X_OK):
        pytest.fail(f"the SSH host's Python {rig.python} is missing (run `make rig`)", pytrace=False)
    return rig


def local_vars(docker_host: str | None) -> dict[str, Any]:
    """Inventory vars of a host Ansible runs locally, its Docker on `docker_host` (None: the rig's own engine)."""
    pinned = {"docker_host": docker_host} if docker_host else {}
    return {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}", **pinned}


def ssh_vars(rig: RigHosts | None = None, docker_host: str | None = None) -> dict[str, Any]:
    """Inventory vars of the host Ansible reaches over real SSH (root@127.0.0.1, the rig's key and known_hosts), its
    Docker on `docker_host` (None: the rig's own engine)."""
    rig = rig or rig_hosts()
    ssh = rig.ssh
    pinned = {"docker_host": docker_host} if docker_host else {}
    return {
        "ansible_connection": "ssh",
        "ansible_host": ssh.host,
        "ansible_port": ssh.port,
        "ansible_user": ssh.user,
        "ansible_ssh_private_key_file": ssh.key,
        # A control socket of this inventory's own: a master connection another test left open (ControlPersist)
        # is never reused, so each inventory's first task logs in anew, as the tests that count logins expect.
        "ansible_ssh_common_args": (
            f"-o UserKnownHostsFile={ssh.known_hosts} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes "
            f"-o ControlPath=/tmp/dtssh-{uuid.uuid4().hex[:8]}-%C"
        ),
        "ansible_python_interpreter": rig.python,
        **pinned,
    }
