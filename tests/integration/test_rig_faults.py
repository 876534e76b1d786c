"""The rig's fault helpers do what they say on the real engines (tests/support/hosts.py: engine_stopped,
fill_data_root, ssh_stopped; tests/support/faultproxy.py: RegistryProxy): the fault tests of the deploy trust them.

Every test here uses engines h1-h3 and most stop, fill or cut one: all run in the one worker of the group rig_hosts
(`--dist loadgroup`), with the other tests of that group. Each engine has one job here all the same (h1 is stopped, h2
pulls through the proxy, h3 is filled), so that the tests do not trip over one another where the group is not kept."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from tests.support.dockercli import DockerError, docker_on, image
from tests.support.faultproxy import RegistryProxy
from tests.support.hosts import engine_stopped, fill_data_root, rig_hosts, ssh_stopped


@pytest.fixture
def cleanup() -> Iterator[list[tuple[str, str, str]]]:
    """(host, "container" or "image", name): what a test made on an engine, removed after it, whatever happened. An
    engine that cannot remove it (one left stopped) fails the test rather than leave it behind unseen."""
    made: list[tuple[str, str, str]] = []
    yield made
    failures = []
    for host, kind, name in reversed(made):
        try:
            docker_on(host, "rm" if kind == "container" else "rmi", "-f", name)  # -f: a missing one is no failure
        except DockerError as error:
            failures.append(str(error))
    if failures:
        pytest.fail("left behind: " + "; ".join(failures), pytrace=False)


def run(host: str, cleanup: list[tuple[str, str, str]], *options: str) -> str:
    """A container of the healthy test image on `host`, removed after the test. --init: busybox as PID 1 ignores the
    SIGTERM a stopping engine sends, and the engine would wait its 10 s for each."""
    name = f"dt-faults-{uuid.uuid4().hex[:8]}"
    cleanup.append((host, "container", name))
    docker_on(host, "run", "-d", "--init", "--name", name, *options, image("healthy", "v1"))
    return name


def state(host: str, container: str) -> dict[str, object]:
    return dict(json.loads(docker_on(host, "inspect", "--format", "{{json .State}}", container)))


def pull(host: str, reference: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "-H", host, "pull", "-q", reference], capture_output=True, text=True, timeout=120)


def test_a_stopped_engine_comes_back_with_only_its_restarting_containers(
    cleanup: list[tuple[str, str, str]],
) -> None:
    host = rig_hosts().engine("h1")
    plain = run(host, cleanup)
    restarting = run(host, cleanup, "--restart", "unless-stopped")
    started_before = state(host, restarting)["StartedAt"]

    # A block that fails: the engine comes back all the same.
    with pytest.raises(RuntimeError, match="the block failed"), engine_stopped("h1"):
        with pytest.raises(DockerError, match="Cannot connect to the Docker daemon"):
            docker_on(host, "info")
        raise RuntimeError("the block failed")

    assert docker_on(host, "info", "--format", "{{.ID}}") == rig_hosts().engines["h1"].engine_id
    plain_state, restarting_state = state(host, plain), state(host, restarting)
    assert (plain_state["Status"], plain_state["Running"]) == ("exited", False)
    assert (restarting_state["Status"], restarting_state["Running"]) == ("running", True)
    assert restarting_state["StartedAt"] != started_before, "the engine did not restart the container"


def test_a_pull_through_the_proxy_reaches_the_registry(cleanup: list[tuple[str, str, str]]) -> None:
    host = rig_hosts().engine("h2")
    with RegistryProxy() as proxy:
        reference = f"{proxy.address}/deploytest/healthy:v2"
        cleanup.append((host, "image", reference))
        pulled = pull(host, reference)
        assert pulled.returncode == 0, pulled.stderr
        asked = {request.split()[1] for request in proxy.requests}
    assert "/v2/deploytest/healthy/manifests/v2" in asked, "the pull did not go through the proxy"
    # The digest the engine records is the one the registry sent (Docker-Content-Digest passed through).
    with urllib.request.urlopen(
        urllib.request.Request(
            f"http://{rig_hosts().registry}/v2/deploytest/healthy/manifests/v2",
            method="HEAD",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        )
    ) as answer:
        digest = answer.headers["Docker-Content-Digest"]
    repo_digests = json.loads(docker_on(host, "image", "inspect", "--format", "{{json .RepoDigests}}", reference))
    assert f"{proxy.address}/deploytest/healthy@{digest}" in repo_digests


def test_a_held_pull_waits_for_release(cleanup: list[tuple[str, str, str]]) -> None:
    host = rig_hosts().engine("h2")
    with RegistryProxy() as proxy:
        reference = f"{proxy.address}/deploytest/healthy:v3"
        cleanup.append((host, "image", reference))
        proxy.hold()
        pulling = subprocess.Popen(
            ["docker", "-H", host, "pull", "-q", reference], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert proxy.holding.wait(30), "the pull never asked for its manifest"
            time.sleep(1)
            assert pulling.poll() is None, "the pull did not wait for its manifest"
            proxy.release()
            _, stderr = pulling.communicate(timeout=60)
        finally:
            pulling.kill()
            pulling.wait()
    assert pulling.returncode == 0, stderr


def test_a_proxy_without_manifests_fails_a_pull_as_the_registry_would() -> None:
    host = rig_hosts().engine("h2")
    with RegistryProxy() as proxy:
        proxy.missing()
        pulled = pull(host, f"{proxy.address}/deploytest/healthy:v2")
        assert pulled.returncode != 0
        assert "manifest unknown" in pulled.stderr

        # Byte for byte what the registry answers for a tag it does not have.
        answers = []
        for base in (proxy.address, rig_hosts().registry):
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(f"http://{base}/v2/deploytest/healthy/manifests/no-such-tag")
            answers.append((answer.value.code, answer.value.headers["Content-Type"], answer.value.read()))
        assert answers[0] == answers[1]
        assert b'"code":"MANIFEST_UNKNOWN"' in answers[0][2]


def test_a_closed_proxy_refuses_a_pull() -> None:
    host = rig_hosts().engine("h2")
    with RegistryProxy() as proxy:
        proxy.close()
        pulled = pull(host, f"{proxy.address}/deploytest/healthy:v2")
    assert pulled.returncode != 0
    assert "connect: connection refused" in pulled.stderr


def test_a_full_data_root_fails_a_pull_until_it_is_freed(cleanup: list[tuple[str, str, str]]) -> None:
    host = rig_hosts().engine("h3")
    reference = image("plain", "v3")
    docker_on(host, "rmi", "-f", reference, check=False)
    cleanup.append((host, "image", reference))

    with fill_data_root("h3") as filler:
        assert filler.exists()
        pulled = pull(host, reference)
        assert pulled.returncode != 0
        assert "no space left on device" in pulled.stderr
    assert not filler.exists()

    pulled = pull(host, reference)
    assert pulled.returncode == 0, pulled.stderr


def test_only_a_small_data_root_of_its_own_is_filled() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"tests/rig/hosts\.sh down && make rig"), fill_data_root("h1"):
        pytest.fail("h1's data root lies on the rig's disk, and was about to be filled")


def test_a_stopped_ssh_host_cuts_its_sessions_and_refuses_logins() -> None:
    ssh = rig_hosts().ssh
    session = subprocess.Popen(
        ssh.command("echo in; sleep 60"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert session.stdout is not None and session.stdout.readline() == b"in\n"
        with ssh_stopped():
            assert session.wait(timeout=10) == 255
            login = subprocess.run(ssh.command("true"), stdin=subprocess.DEVNULL, capture_output=True, text=True)
            assert login.returncode == 255
            assert "Connection refused" in login.stderr
    finally:
        session.kill()
        session.wait()
    assert subprocess.run(ssh.command("true"), stdin=subprocess.DEVNULL, timeout=30).returncode == 0
