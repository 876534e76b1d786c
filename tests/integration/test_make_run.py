"""`make run` from a fresh copy of the repository: a secret in .env, the API up, and the printed deployctl and curl
commands deploy (each signs when it runs: nothing printed is a signature)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
from conftest import REPO

from tests.support.apiserver import free_port
from tests.support.dockercli import docker


def fresh_copy(target: Path, project: str, example_port: int) -> None:
    """The tracked files, as a clone has them; the example gets a project name and port of this test's own."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        source, destination = REPO / name.decode(), target / name.decode()
        if source.is_file():
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(source.read_bytes())
            destination.chmod(source.stat().st_mode)
    compose = target / "examples" / "homeserver" / "docker-compose.yml"
    compose.write_text(
        compose.read_text().replace("name: homeserver", f"name: {project}").replace("8089", str(example_port))
    )
    group_vars = target / "inventory" / "group_vars" / "all.yml"
    group_vars.write_text(group_vars.read_text().replace("8089", str(example_port)))


def test_make_run_writes_a_secret_starts_the_api_and_the_printed_commands_deploy(tmp_path, docker_engine):
    project = f"dt-run-{uuid.uuid4().hex[:8]}"
    checkout = tmp_path / "checkout"
    fresh_copy(checkout, project, free_port())
    port = free_port()
    venv = Path(sys.executable).parents[1]
    server = subprocess.Popen(
        # The test's own virtual environment, taken as it is (-o): installing into it from this temporary
        # copy would point its editable install (deployctl, api) at a directory that goes away.
        ["make", "run", f"VENV={venv}", "-o", f"{venv}/.installed", f"DEPLOY_PORT={port}"],
        cwd=checkout,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={key: value for key, value in os.environ.items() if key != "WEBHOOK_SECRET"},
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(server.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any("Uvicorn running" in line for line in output):
            assert server.poll() is None, "".join(output)
            assert time.monotonic() < deadline, "".join(output)
            time.sleep(0.2)
        printed = "".join(output)

        env_file = checkout / ".env"
        assert re.fullmatch(r"WEBHOOK_SECRET=[0-9a-f]{64}\nDEPLOY_READ_TOKEN=[0-9a-f]{64}\n", env_file.read_text())
        assert env_file.stat().st_mode & 0o777 == 0o600
        assert "sha256=" not in printed, "no signature is printed: it would stay valid for every copy of its body"
        secret, token = (line.split("=", 1)[1] for line in env_file.read_text().splitlines())
        assert secret not in printed and token not in printed, "secrets are never printed"
        deployctl_line = re.search(r"^  (\S+/deployctl deploy hello-world --url \S+)$", printed, re.MULTILINE).group(1)
        assert f"--url http://127.0.0.1:{port}" in deployctl_line
        curl = re.search(r'^  BODY=.*?-d "\$BODY"$', printed, flags=re.MULTILINE | re.DOTALL).group(0)

        deployed = subprocess.run(["bash", "-c", deployctl_line], cwd=checkout, capture_output=True, text=True)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        answer = subprocess.run(["bash", "-c", curl + " -s"], cwd=checkout, capture_output=True, text=True, timeout=180)

        body = json.loads(answer.stdout)
        assert body["success"] is True, body
        assert body["service"] == "hello-world"
        container_id = docker(
            "ps",
            "-q",
            "--filter",
            f"label=com.docker.compose.project={project}",
            "--filter",
            "label=com.docker.compose.service=hello-world",
        )
        state = json.loads(docker("inspect", container_id))[0]
        assert state["State"]["Health"]["Status"] == "healthy"
        assert state["Image"] == docker("image", "inspect", "--format", "{{.Id}}", "homeserver/hello-world:latest")
        health = httpx.get(f"http://127.0.0.1:{port}/health").json()
        assert health["status"] == "healthy" and health["docker"] == "reachable", health
        history = httpx.get(f"http://127.0.0.1:{port}/deployments", headers={"Authorization": f"Bearer {token}"})
        records = [(item["service"], item["outcome"]) for item in history.json()["items"]]
        assert records == [("hello-world", "succeeded")] * 2, "the read token make run wrote opens the history"

        # The curl signs when it runs: pasted again (the deploy took seconds), it is a new request, not a replay.
        again = subprocess.run(["bash", "-c", curl + " -s"], cwd=checkout, capture_output=True, text=True, timeout=180)
        assert json.loads(again.stdout)["success"] is True, again.stdout

        secret_before = env_file.read_text()
        again = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "api.quickstart"], cwd=checkout, capture_output=True, text=True
        )
        assert again.returncode == 0
        assert env_file.read_text() == secret_before, "an existing secret is never overwritten"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(20)
        subprocess.run(["docker", "compose", "-p", project, "down", "--timeout", "1"], capture_output=True)


def test_make_run_with_no_engine_stops_before_the_api_naming_what_to_run(tmp_path):
    """The engine make run needs does not answer, and is not one it may start (DOCKER_HOST names another): it stops
    before anything else, with the command. (Bringing one up where none runs is the rig's first step on a fresh
    machine: tests/rig/up.sh calls the same tests/rig/engine.sh.)"""
    checkout = tmp_path / "checkout"
    fresh_copy(checkout, f"dt-run-{uuid.uuid4().hex[:8]}", free_port())
    venv = Path(sys.executable).parents[1]
    nowhere = f"unix://{tmp_path}/no-engine.sock"

    completed = subprocess.run(
        ["make", "run", f"VENV={venv}", "-o", f"{venv}/.installed"],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DOCKER_HOST": nowhere},
    )

    output = completed.stdout + completed.stderr
    assert completed.returncode != 0, output
    (line,) = [line for line in output.splitlines() if line.startswith("engine: ")]
    assert line.startswith(f"engine: no Docker engine answers at {nowhere} ("), line
    assert line.endswith(": start the engine DOCKER_HOST names, or unset DOCKER_HOST to use this machine's own")
    assert "Uvicorn" not in output and not (checkout / ".env").exists(), "nothing ran after the engine check"
