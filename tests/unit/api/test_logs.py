"""Logging: the lines each LOG_FORMAT writes, and the deploy fields bound to one context and no other."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from api.logs import ContextFilter, bind

REPO = Path(__file__).resolve().parents[3]
FIELDS = ("deployment_id", "service", "step")


def logged(log_format: str, program: str) -> list[str]:
    """The stdout lines of a fresh interpreter that configures logging as the service does, then runs `program`.

    dictConfig replaces the root logger's handlers for the whole process, pytest's capture handlers among them, and
    closes every handler it finds. A child process applies the real configure() to a logging state no other test
    shares, on the stdout the service writes to, and leaves nothing here to restore.
    """
    preamble = f"import logging\nfrom api.logs import bind, configure\nconfigure({log_format!r})\n"
    completed = subprocess.run(
        [sys.executable, "-c", preamble + textwrap.dedent(program)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8"},
        capture_output=True,
        encoding="utf-8",
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.splitlines()


class Captured(logging.Handler):
    """Keeps each record after the ContextFilter has put the bound fields on it."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def fields(self) -> list[dict[str, str]]:
        return [{name: getattr(record, name) for name in FIELDS if hasattr(record, name)} for record in self.records]


@pytest.fixture
def captured() -> Iterator[Captured]:
    logger = logging.getLogger("tests.logs")
    handler = Captured()
    level = logger.level
    # Under pytest the root logger stays at WARNING; these tests log at INFO, as the deployer does.
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


log = logging.getLogger("tests.logs")


# What each format writes


def test_json_line_carries_the_bound_fields_and_unescaped_emoji() -> None:
    [line] = logged(
        "json",
        """
        bind(deployment_id="d1", service="portal")
        bind(step="health_check")
        logging.getLogger("deploy.deployer").info("✅ portal is healthy")
        """,
    )

    document = json.loads(line)
    assert set(document) == {"time", "level", "logger", "message", "deployment_id", "service", "step"}
    assert document["level"] == "INFO"
    assert document["logger"] == "deploy.deployer"
    assert document["message"] == "✅ portal is healthy"
    assert (document["deployment_id"], document["service"], document["step"]) == ("d1", "portal", "health_check")
    assert datetime.fromisoformat(document["time"]).tzinfo is not None
    assert "✅" in line


def test_json_leaves_out_uvicorns_color_message() -> None:
    [line] = logged(
        "json",
        """
        logging.getLogger("uvicorn.error").info(
            "Started server process [%d]", 42, extra={"color_message": "Started server process [\\x1b[36m%d\\x1b[0m]"}
        )
        """,
    )

    document = json.loads(line)
    assert document["message"] == "Started server process [42]"
    assert "color_message" not in document


def test_text_line_is_the_references_time_level_and_message() -> None:
    [line] = logged(
        "text",
        """
        bind(deployment_id="d1", service="portal", step="pull_image")
        logging.getLogger("deploy.deployer").info("Deploying portal")
        """,
    )

    assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} \[INFO\] Deploying portal", line)


def test_uvicorn_serving_with_the_json_config_writes_every_line_as_json() -> None:
    # As `python -m api` does: uvicorn applies logging_config itself; one real request makes an access line.
    lines = logged(
        "json",
        """
        import socket, threading, time, urllib.request
        import uvicorn
        from api.logs import logging_config

        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        listener = socket.create_server(("127.0.0.1", 0))
        config = uvicorn.Config(app, lifespan="off", log_config=logging_config("json"))
        server = uvicorn.Server(config)
        serving = threading.Thread(target=server.run, kwargs={"sockets": [listener]})
        serving.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        urllib.request.urlopen(f"http://127.0.0.1:{listener.getsockname()[1]}/health", timeout=10).close()
        server.should_exit = True
        serving.join(10)
        """,
    )

    documents = [json.loads(line) for line in lines]
    [access] = [document for document in documents if document["logger"] == "uvicorn.access"]
    assert re.fullmatch(r'127\.0\.0\.1:\d+ - "GET /health HTTP/1\.1" 204', access["message"])
    assert any(document["message"].startswith("Started server process") for document in documents)
    assert not any("color_message" in document for document in documents)


# Where bound fields reach


def test_binds_in_two_threads_stay_in_their_own_thread(captured: Captured) -> None:
    both_bound = threading.Barrier(2)

    def deploy(deployment_id: str) -> None:
        bind(deployment_id=deployment_id, service="portal")
        # Neither logs until both have bound: one shared store would show the later id twice.
        both_bound.wait(timeout=5)
        log.info("deploying")

    threads = [threading.Thread(target=deploy, args=(deployment_id,)) for deployment_id in ("d1", "d2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)

    assert sorted(captured.fields(), key=lambda fields: fields["deployment_id"]) == [
        {"deployment_id": "d1", "service": "portal"},
        {"deployment_id": "d2", "service": "portal"},
    ]


def test_bind_in_a_copied_context_does_not_reach_the_caller(captured: Captured) -> None:
    def caller() -> None:
        contextvars.copy_context().run(bind, deployment_id="d1", service="portal")
        log.info("after the copy bound")

    # An empty context of its own, whatever an earlier test left bound in this thread.
    contextvars.Context().run(caller)

    assert captured.fields() == [{}]


def test_a_worker_started_with_to_thread_after_bind_sees_the_fields(captured: Captured) -> None:
    async def deploy() -> None:
        bind(deployment_id="d1", service="portal")
        await asyncio.to_thread(log.info, "running the playbook")

    # asyncio.run gives its task a copy of this context, so the bind stays inside it.
    asyncio.run(deploy())

    assert captured.fields() == [{"deployment_id": "d1", "service": "portal"}]
