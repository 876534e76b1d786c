"""A stand-in for api.runner.run_playbook, for the API's unit tests (the `fake_runner` fixture in conftest.py)."""

from __future__ import annotations

import dataclasses
import threading

from api.runner import RunResult


class FakeRunner:
    """Stands in for run_playbook: records calls, reports each step of its canned result, can hold a deploy open (of
    a service, or to an environment, named in `hold`).

    A canned result published by hosts the run is not limited to stands for every host it is limited to, as the
    playbook publishes one record per host. The engine check (engines.yml) answers nothing unless told.
    """

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.result = RunResult(status="successful", rc=0, results={"localhost": success_result()})
        # Results for other playbooks than deploy.yml, by file name.
        self.by_playbook: dict[str, RunResult] = {"engines.yml": RunResult(status="successful", rc=0)}
        self.hold: set[str] = set()
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, **kwargs) -> RunResult:
        self.calls.append(kwargs)
        extravars = kwargs["extravars"]
        if extravars.get("service") in self.hold or extravars.get("deploy_environment") in self.hold:
            self.entered.set()
            assert self.release.wait(10)
        result = self.by_playbook.get(kwargs["playbook"].name, self.result)
        limit = kwargs.get("limit")
        if limit and result.results and not set(result.results) & set(limit):
            published = next(iter(result.results.values()))
            result = dataclasses.replace(result, results={host: published for host in limit})
        for host, published in result.results.items():
            for done in range(1, len(published.get("steps", [])) + 1):
                if kwargs.get("on_step"):
                    kwargs["on_step"](published["steps"][done - 1]["step"], "announcement")
                    kwargs["on_steps"](host, published["steps"][:done])
        return result

    def playbooks(self) -> list[str]:
        """The playbooks run so far, by file name, engine checks left out."""
        return [call["playbook"].name for call in self.calls if call["playbook"].name != "engines.yml"]


def success_result() -> dict:
    return {
        "success": True,
        "outcome": "succeeded",
        "message": "Deployment successful",
        "old_image": "ghcr.io/acme/portal:1",
        "new_image": "ghcr.io/acme/portal:2",
        "error": None,
        "logs": "",
        "steps": [
            {"step": name, "success": True, "detail": "done"} for name in ("capture_state", "pull_image", "compose_up")
        ],
    }
