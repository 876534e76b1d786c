"""The container's HEALTHCHECK (`python -m api.healthcheck`): where it asks, and what it makes of the answer."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from api.healthcheck import health_url, main


@pytest.mark.parametrize(
    ("host", "url"),
    [
        (None, "http://127.0.0.1:9000/health"),
        ("0.0.0.0", "http://127.0.0.1:9000/health"),
        ("::", "http://127.0.0.1:9000/health"),
        ("127.0.0.1", "http://127.0.0.1:9000/health"),
        ("192.0.2.7", "http://192.0.2.7:9000/health"),
        ("::1", "http://[::1]:9000/health"),
    ],
)
def test_the_probe_asks_where_the_api_listens(host, url):
    assert health_url({} if host is None else {"DEPLOY_HOST": host}) == url


def test_the_probe_takes_deploy_port():
    assert health_url({"DEPLOY_HOST": "0.0.0.0", "DEPLOY_PORT": "9123"}) == "http://127.0.0.1:9123/health"


@pytest.fixture
def answering() -> Iterator[tuple[int, list[int]]]:
    """A server on loopback whose GET /health answers the status at the end of the list it yields."""
    statuses = [200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(statuses[-1])
            self.end_headers()
            self.wfile.write(b'{"status": "unhealthy"}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], statuses
    server.shutdown()


def test_healthy_when_health_answers_200(answering, monkeypatch, capsys):
    port, _ = answering
    monkeypatch.setenv("DEPLOY_HOST", "0.0.0.0")
    monkeypatch.setenv("DEPLOY_PORT", str(port))
    assert main() == 0


def test_unhealthy_when_health_answers_503_or_nothing(answering, monkeypatch, capsys):
    port, statuses = answering
    statuses.append(503)
    monkeypatch.setenv("DEPLOY_HOST", "127.0.0.1")
    monkeypatch.setenv("DEPLOY_PORT", str(port))
    assert main() == 1
    assert f"http://127.0.0.1:{port}/health: 503" in capsys.readouterr().out
    monkeypatch.setenv("DEPLOY_PORT", "1")
    assert main() == 1
    assert "Connection refused" in capsys.readouterr().out
