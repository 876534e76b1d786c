"""Notification targets on loopback for tests: a real HTTP receiver for Apprise's json:// URLs, and a black hole."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """Takes POSTed JSON documents; answers each with the next of `statuses` (then 200)."""

    def __init__(self, statuses: list[int] | None = None):
        self.received: list[dict[str, Any]] = []
        self.attempts = 0
        self.statuses = list(statuses or [])
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._changed:
                    receiver.attempts += 1
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    if status == 200:
                        receiver.received.append(json.loads(body))
                    receiver._changed.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/notify"
        # A short poll interval: close() waits for one.
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def wait_for(self, until: Callable[[list[dict[str, Any]]], bool], timeout: float = 30) -> list[dict[str, Any]]:
        """The messages received, once `until` holds for them; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not until(self.received):
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"notifications received: {self.received}"
                self._changed.wait(remaining)
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class BlackHole:
    """Accepts connections and never answers: a notification target that hangs until its client gives up."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"json://127.0.0.1:{self.socket.getsockname()[1]}/notify"
        self.connections: list[socket.socket] = []
        self._accepted = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.connections.append(connection)
            self._accepted.set()

    def wait_for_a_connection(self, timeout: float = 30) -> None:
        assert self._accepted.wait(timeout), "nothing connected to the black hole"

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
        self.socket.close()


def closed_port_url() -> str:
    """A json:// URL on a loopback port nothing listens on: connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"json://127.0.0.1:{port}/notify"
