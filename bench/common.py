"""Helpers the benchmarks share: the rig's test image, medians, results, other processes' load. The docker CLI and a
real API server (`python -m api`) are the integration tests' own, in tests/support/."""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.dockercli import image as test_image  # noqa: E402

RESULTS = REPO / "bench" / "results"


def image(version: str) -> str:
    """The rig's healthy test image at `version` (v1, v2, v3): healthy about one second after start."""
    return test_image("healthy", version)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rounded(values: Sequence[float], digits: int = 3) -> list[float]:
    return [round(value, digits) for value in values]


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / name
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


class ForeignLoad:
    """CPU time of the processes that are neither this program's (itself and its descendants) nor the container
    engine's, sampled twice a second: tests run by someone else, say. A figure measured meanwhile shows it."""

    ENGINE = re.compile(r"dockerd|containerd|runc|docker-proxy|docker-init|docker-registry")

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.tick = os.sysconf("SC_CLK_TCK")
        self.baseline: dict[tuple[int, int], float] = {}  # (pid, start time) -> CPU seconds when first seen
        self.latest: dict[tuple[int, int], tuple[str, float]] = {}
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.sample(first=True)
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def sample(self, first: bool = False) -> None:
        processes = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            name = text[text.index("(") + 1 : text.rindex(")")]
            fields = text[text.rindex(")") + 2 :].split()
            # ppid, utime + stime, start time; kernel threads (children of kthreadd, pid 2) are left out.
            processes[int(stat.parent.name)] = (
                name,
                int(fields[1]),
                int(fields[11]) + int(fields[12]),
                int(fields[19]),
            )
        ours = {os.getpid()}
        grew = True
        while grew:
            found = {pid for pid, (_, ppid, _, _) in processes.items() if ppid in ours} - ours
            grew = bool(found)
            ours |= found
        with self.lock:
            for pid, (name, ppid, ticks, started) in processes.items():
                if pid in ours or ppid == 2 or pid == 2 or self.ENGINE.search(name):
                    continue
                key = (pid, started)
                if key not in self.baseline:
                    self.baseline[key] = ticks / self.tick if first else 0.0
                self.latest[key] = (name, ticks / self.tick)

    def loop(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.sample()

    def seconds(self) -> float:
        with self.lock:
            return sum(cpu - self.baseline[key] for key, (_, cpu) in self.latest.items())

    def busiest(self, count: int = 3) -> list[tuple[str, float]]:
        by_name: dict[str, float] = {}
        with self.lock:
            for key, (name, cpu) in self.latest.items():
                by_name[name] = by_name.get(name, 0.0) + cpu - self.baseline[key]
        ranked = sorted(by_name.items(), key=lambda item: -item[1])[:count]
        return [(name, round(cpu, 1)) for name, cpu in ranked if cpu >= 0.05]

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join()
