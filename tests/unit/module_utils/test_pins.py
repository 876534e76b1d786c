"""The compose_up step's pin file (module_utils/deploy_compose.py): what compose reads, its atomic, locked updates."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from ansible.module_utils import deploy_compose as pin


def test_pin_and_unpin(tmp_path):
    path = str(tmp_path / "docker-compose.deploy.yml")

    before, after, existed = pin.update_pin(path, "portal", "ghcr.io/acme/portal:v2")
    assert (before, after, existed) == ({}, {"portal": "ghcr.io/acme/portal:v2"}, False)
    document = json.loads(Path(path).read_text())
    assert document["services"] == {"portal": {"image": "ghcr.io/acme/portal:v2"}}
    assert "docker compose -f" in document["x-deploy"]

    _, after, existed = pin.update_pin(path, "portal", None)
    assert after == {} and existed
    assert json.loads(Path(path).read_text())["services"] == {}


def test_unchanged_pin_does_not_rewrite_the_file(tmp_path):
    path = tmp_path / "pins.yml"
    pin.update_pin(str(path), "portal", "portal:v2")
    mtime = path.stat().st_mtime_ns

    before, after, _ = pin.update_pin(str(path), "portal", "portal:v2")

    assert before == after
    assert path.stat().st_mtime_ns == mtime


def test_check_mode_writes_nothing(tmp_path):
    path = tmp_path / "pins.yml"

    _, after, _ = pin.update_pin(str(path), "portal", "portal:v2", check_mode=True)

    assert after == {"portal": "portal:v2"}
    assert not path.exists()


def test_a_file_that_is_not_json_is_refused(tmp_path):
    path = tmp_path / "pins.yml"
    path.write_text("services:\n  portal:\n    image: portal:v1\n")

    with pytest.raises(ValueError):
        pin.update_pin(str(path), "portal", "portal:v2")
    assert path.read_text().startswith("services:")


def _pin_many(path: str, service: str) -> None:
    for round_number in range(40):
        pin.update_pin(path, service, f"{service}:{round_number}")


def test_concurrent_services_never_lose_each_others_pins(tmp_path):
    path = str(tmp_path / "pins.yml")
    workers = [multiprocessing.Process(target=_pin_many, args=(path, name)) for name in ("a", "b", "c")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert pin.read_pins(path) == {"a": "a:39", "b": "b:39", "c": "c:39"}
    assert [entry.name for entry in tmp_path.iterdir()] == ["pins.yml"], "no temporary file is left behind"
