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

Faults, for the tests of what a deploy does when a host fails in its middle (hosts.sh's stop and start modes):

    with engine_stopped("h1"): ...  # engine h1 down, as after `systemctl stop docker`; started again after
    with fill_data_root("h3"): ...  # engine h3's data root full (its own 512 MiB tmpfs): ENOSPC on its next write
    with ssh_stopped(): ...  # the SSH host gone, its sessions cut; back after
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
HOSTS_SH = REPO / "tests" / "rig" / "hosts.sh"
# fill_data_root fills nothing larger: beyond that it is not a test rig's small data root, but a disk others need.
FILL_LIMIT = 1 << 30


def state_dir() -> Path:
    """The rig's state directory, as tests/rig/up.sh computes it: $DEPLOY_TEST_STATE or REPO/var/test-rig."""
    return Path(os.environ.get("DEPLOY_TEST_STATE") or REPO / "var" / "test-rig").absolute()


@dataclass(frozen=True)
class Engine:
    """One extra Docker engine: its name (h1), its socket (unix:///run/deploytest-h1.sock), its `docker info` ID,
    its data root and whether that is a filesystem of its own (h3's, small enough for fill_data_root)."""

    name: str
    docker_host: str
    engine_id: str
    data_root: str = ""
    data_root_mount: bool = False


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
            name: Engine(
                name,
                entry["docker_host"],
                entry.get("engine_id", ""),
                entry.get("data_root", ""),
                bool(entry.get("data_root_mount", False)),
            )
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


# --- faults -----------------------------------------------------------------------------------------------------


def _hosts_sh(*args: str) -> None:
    """tests/rig/hosts.sh `args`, as root runs it; its failure fails the test with what it printed. Bounded: a stop
    waits up to 60 s for dockerd, a start up to 60 s for the engine to answer, and either waits for the rig's lock."""
    command = f"tests/rig/hosts.sh {' '.join(args)}"
    try:
        completed = subprocess.run(
            [str(HOSTS_SH), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{command}` did not finish in 300 s; `make rig` brings the rig back", pytrace=False)
    if completed.returncode != 0:
        pytest.fail(
            f"`{command}` failed ({completed.returncode}; `make rig` brings the rig back): "
            f"{(completed.stdout + completed.stderr).strip()}",
            pytrace=False,
        )


def stop_engine(name: str) -> None:
    """Engine `name` stopped as `systemctl stop docker` stops one: its dockerd TERMed, its containers stopped with
    it, its bridge, data and containers' records kept. Returns once dockerd has exited."""
    _hosts_sh("stop-engine", name)


def start_engine(name: str) -> None:
    """Engine `name` started again as the rig starts it (containers with a restart policy come back); returns once it
    answers. Nothing happens when it answers already."""
    _hosts_sh("start-engine", name)


@contextlib.contextmanager
def engine_stopped(name: str) -> Iterator[None]:
    """Engine `name` down for the block, up again after it, even when the block fails: a test must not leave the
    next one without its engine."""
    try:
        stop_engine(name)
        yield
    finally:
        start_engine(name)


@contextlib.contextmanager
def ssh_stopped() -> Iterator[None]:
    """The SSH host gone for the block, as a host that drops off the network: its sshd and every open session end at
    once (a connection open at the time is cut; a new one is refused). Up again after the block, even when it fails."""
    try:
        _hosts_sh("stop-sshd")
        yield
    finally:
        _hosts_sh("start-sshd")


def _unescape_mount_path(field: str) -> str:
    """A path as /proc/self/mountinfo writes it: space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda escape: chr(int(escape.group(1), 8)), field)


def _own_filesystem(path: Path) -> bool:
    """`path` is the root of a filesystem mounted there: not a directory of the disk under it, nor a bind mount of
    one (a dockerd binds its data root onto itself). Of the mounts at `path`, the visible one is on its device."""
    device = os.stat(path).st_dev
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # mount ID, parent ID, major:minor, root of the mount within its filesystem, mount point, ...
        _, _, numbers, root, mount_point = line.split()[:5]
        major, minor = (int(number) for number in numbers.split(":"))
        if _unescape_mount_path(mount_point) == str(path) and os.makedev(major, minor) == device:
            return root == "/"
    return False


def _why_not_fillable(engine: Engine) -> str:
    """Why fill_data_root may not fill the data root of `engine`; "" when it may."""
    if not engine.data_root:
        return "hosts.json names no data root for it"
    data_root = Path(os.path.realpath(engine.data_root))
    try:
        if not _own_filesystem(data_root):
            return f"{data_root} is a directory of the filesystem under it, not a filesystem of its own"
        stats = os.statvfs(data_root)
    except OSError as error:
        return f"{data_root}: {error}"
    size = stats.f_blocks * stats.f_frsize
    if size > FILL_LIMIT:
        return f"{data_root} is a filesystem of {size >> 20} MiB, more than {FILL_LIMIT >> 20} MiB"
    return ""


def _fill(fd: int) -> None:
    """Writes to `fd` until its filesystem has no byte left (ENOSPC)."""
    stats = os.fstatvfs(fd)
    try:
        os.posix_fallocate(fd, 0, stats.f_bavail * stats.f_frsize)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
    # What fallocate left (the filesystem's own bookkeeping, or all of it where a failed fallocate takes back what
    # it took, as tmpfs does) goes by writes.
    os.lseek(fd, 0, os.SEEK_END)
    zeros = bytes(1 << 16)
    while True:
        try:
            os.write(fd, zeros)
        except OSError as error:
            if error.errno == errno.ENOSPC:
                return
            raise


@contextlib.contextmanager
def fill_data_root(name: str) -> Iterator[Path]:
    """Engine `name`'s data root full for the block: one file takes every free byte, so the engine's next write (a
    layer of a pull, a container's log) fails with ENOSPC as on a full disk. Yields the file, removed after the block.

    Only on a data root that is a filesystem of its own of at most 1 GiB (engine h3's tmpfs): filling the disk the rig
    lies on would fail everything else on the machine with it."""
    rig = read_hosts()
    engine = rig.engines.get(name)
    if engine is None:
        pytest.fail(f"no engine {name!r} in {rig.path}; engines: {', '.join(rig.engines)}", pytrace=False)
    reason = _why_not_fillable(engine)
    if reason:
        own = [other.name for other in rig.engines.values() if other.data_root_mount]
        pytest.fail(
            f"engine {name}'s data root must not be filled: {reason}. Filling it would fill the disk the rig lies on "
            f"too. Engines with a data root of their own: {', '.join(own) or 'none'}; "
            "`tests/rig/hosts.sh down && make rig` gives engine h3 one.",
            pytrace=False,
        )
    data_root = Path(os.path.realpath(engine.data_root))
    filler = data_root / f".deploytest-fill-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _fill(fd)
        finally:
            os.close(fd)
        yield filler
    finally:
        filler.unlink(missing_ok=True)
