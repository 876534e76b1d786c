"""Shared test helpers: where the repository is, and the engine every integration test needs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """A reachable Docker engine. Missing, it fails the test: `make test` brings one up (tests/rig/up.sh)."""
    probe = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"no Docker engine reachable (run tests/rig/up.sh): {probe.stderr.strip()}", pytrace=False)
