"""A steady load of GET requests through a proxy, counted: for the zero-downtime test and bench.

Requests start on a fixed schedule (`rate` per second, over a few keep-alive connections), whatever the answers
take, so that a stall shows as a gap and not as fewer requests. Each request is one sample: when it started, when it
ended, whether it was answered 2xx, and what came back. A failed request is any other answer or none (a refused or
reset connection, a timeout).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from urllib.parse import urlsplit

# A request that takes longer than this counts as failed: a client would have given up.
REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class Sample:
    started: float
    ended: float
    ok: bool
    answer: str


@dataclass
class LoadReport:
    """What a load saw between two instants: requests, failures, the longest time without a successful answer (from
    the end of one success to the end of the next), and the answers by body (the versions that served)."""

    requests: int
    failed: int
    longest_gap: float
    seconds: float
    answers: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


class SteadyLoad:
    """GET `url` `rate` times a second on `connections` keep-alive connections, in threads, until stopped."""

    def __init__(self, url: str, rate: float = 100.0, connections: int = 8):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path or "/"
        self.interval = connections / rate
        self.connections = connections
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> SteadyLoad:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        began = time.monotonic()
        for index in range(self.connections):
            # Staggered, so that the requests of all connections together are evenly spaced.
            offset = began + index * self.interval / self.connections
            thread = threading.Thread(target=self._worker, args=(offset,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT + 1)

    def _worker(self, first: float) -> None:
        connection: http.client.HTTPConnection | None = None
        due = first
        while not self._stop.is_set():
            pause = due - time.monotonic()
            if pause > 0 and self._stop.wait(pause):
                break
            due += self.interval
            started = time.monotonic()
            try:
                connection = connection or http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_TIMEOUT)
                connection.request("GET", self.path)
                response = connection.getresponse()
                body = response.read().decode(errors="replace").strip()
                ok = 200 <= response.status < 300
                answer = body if ok else f"HTTP {response.status}"
            except (OSError, http.client.HTTPException) as error:
                ok, answer = False, type(error).__name__
                if connection is not None:
                    connection.close()
                connection = None
            with self._lock:
                self.samples.append(Sample(started, time.monotonic(), ok, answer))
        if connection is not None:
            connection.close()

    def mark(self) -> float:
        """An instant to report from or to."""
        return time.monotonic()

    def report(self, since: float = 0.0, until: float | None = None) -> LoadReport:
        """The requests that started between `since` and `until` (now)."""
        until = time.monotonic() if until is None else until
        with self._lock:
            samples = [sample for sample in self.samples if since <= sample.started <= until]
        samples.sort(key=lambda sample: sample.ended)
        successes = [sample.ended for sample in samples if sample.ok]
        edges = [max(since, samples[0].started) if samples else since, *successes, until]
        gap = max((later - earlier for earlier, later in pairwise(edges)), default=0.0)
        return LoadReport(
            requests=len(samples),
            failed=sum(not sample.ok for sample in samples),
            longest_gap=gap,
            seconds=until - since,
            answers=Counter(sample.answer for sample in samples if sample.ok),
            failures=Counter(sample.answer for sample in samples if not sample.ok),
        )
