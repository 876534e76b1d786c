"""A loopback proxy in front of the rig's registry, which a test turns, at any moment of a pull, into a registry that
stalls, one that has lost its manifests, or one that is down.

    with RegistryProxy() as proxy:
        reference = f"{proxy.address}/deploytest/healthy:v2"  # what the deploy is told to pull
        proxy.hold()  # manifest requests wait...
        ...  # the deploy starts
        proxy.holding.wait(30)  # ...a pull has started
        proxy.missing()  # the held request and every later one: 404 MANIFEST_UNKNOWN
        proxy.close()  # connection refused, as a registry that is down

The Docker engine treats every registry on 127.0.0.0/8 as insecure (plain HTTP), so the proxy needs neither TLS nor
any engine configuration. Standard library only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, cast
from urllib.parse import urlsplit

# A held request goes on after this long even without release(): a test that forgets to release fails by its own
# assertions, not by a pull that hangs the suite.
HOLD_BOUND = 60.0
MANIFEST_PATH = re.compile(r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)")
# Headers of one connection, not of the message: the proxy's two connections each have their own.
HOP_BY_HOP = frozenset(
    [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ]
)
CHUNK = 1 << 16

Mode = Literal["forward", "hold", "missing"]


class RegistryProxy:
    """An HTTP proxy on 127.0.0.1:<free port> (`address`) in front of the registry at `upstream` (default
    $DEPLOY_TEST_REGISTRY, else 127.0.0.1:5099). It listens from construction until close() or the end of a `with`
    block. Pull `<address>/<repository>:<tag>` to go through it.

    Modes, switched at any time, even while a request is held: forward() passes everything on, bodies streamed and
    headers kept (Docker-Content-Digest, Content-Type, Content-Length); hold() makes manifest requests wait (see
    hold); missing() answers manifest requests 404 MANIFEST_UNKNOWN, as the registry does for a tag it lacks. Blob
    requests are always passed on: the faults are in the step where a pull starts."""

    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = upstream or os.environ.get("DEPLOY_TEST_REGISTRY", "127.0.0.1:5099")
        # Set as soon as a request is held: a pull has started and waits.
        self.holding = threading.Event()
        self._lock = threading.Lock()
        self._mode: Mode = "forward"
        self._released = threading.Event()
        self._closed = False
        self._requests: list[str] = []
        self._connections: set[socket.socket] = set()
        self._server = _Server(self)
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"proxy-{self.address}", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> RegistryProxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    @property
    def requests(self) -> list[str]:
        """Every request the proxy was asked, in order: "GET /v2/deploytest/healthy/manifests/v2"."""
        with self._lock:
            return list(self._requests)

    def forward(self) -> None:
        """Pass every request on; requests held now go on."""
        self._switch("forward")

    def hold(self) -> None:
        """Manifest requests from now on wait until release(), another mode, or HOLD_BOUND seconds; then they are
        answered as the mode of that moment says (forwarded after release() or the bound). `holding` is cleared, and
        set again by the first request held."""
        with self._lock:
            self._mode = "hold"
            self._released = threading.Event()
            self.holding.clear()

    def release(self) -> None:
        """The held requests go on, and the proxy forwards from now on: a pull asks for a manifest more than once (by
        tag, then by digest), and holding the second too would stall it again."""
        self._switch("forward")

    def missing(self) -> None:
        """Manifest requests, held ones too, get 404 with the registry's own JSON error (MANIFEST_UNKNOWN)."""
        self._switch("missing")

    def close(self) -> None:
        """Stop listening, so that a pull meets "connection refused" as from a registry that is down, and cut the
        connections that are open (an engine keeps its connections alive between requests). Held requests end
        unanswered. A second call does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._released.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # it ended meanwhile
                connection.shutdown(socket.SHUT_RDWR)
        self._thread.join()

    def _switch(self, mode: Mode) -> None:
        with self._lock:
            self._mode = mode
            self._released.set()

    def _wait_if_held(self) -> None:
        with self._lock:
            if self._mode != "hold":
                return
            released = self._released
        self.holding.set()
        released.wait(HOLD_BOUND)

    def _record(self, request: str) -> None:
        with self._lock:
            self._requests.append(request)

    def _track(self, connection: socket.socket, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, proxy: RegistryProxy) -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        # A client that hangs up mid-answer (a cancelled pull, a connection close() cut) is part of the faults.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive, as the registry answers: an engine reuses its connections.
    protocol_version = "HTTP/1.1"
    # An idle kept-alive connection ends after this long rather than holding a thread.
    timeout = 120

    @property
    def proxy(self) -> RegistryProxy:
        return cast(_Server, self.server).proxy

    def setup(self) -> None:
        super().setup()
        self.proxy._track(self.connection, open_=True)

    def finish(self) -> None:
        self.proxy._track(self.connection, open_=False)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: `requests` says what was asked."""

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _serve(self) -> None:
        proxy = self.proxy
        proxy._record(f"{self.command} {self.path}")
        manifest = MANIFEST_PATH.fullmatch(urlsplit(self.path).path)
        if manifest:
            proxy._wait_if_held()
        with proxy._lock:
            mode, closed = proxy._mode, proxy._closed
        if closed:
            self.close_connection = True
        elif manifest and mode == "missing":
            self._manifest_unknown(manifest["name"], manifest["reference"])
        else:
            self._forward()

    def _manifest_unknown(self, name: str, reference: str) -> None:
        """The registry's answer (distribution 2.8) for a manifest it does not have, by tag or by digest."""
        detail = {"Name": name, "Revision": reference} if ":" in reference else {"Tag": reference}
        error = {"code": "MANIFEST_UNKNOWN", "message": "manifest unknown", "detail": detail}
        body = json.dumps({"errors": [error]}, separators=(",", ":")).encode() + b"\n"
        self.send_response_only(404)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        self.send_header("Date", self.date_time_string())
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self) -> None:
        """The request to the registry as it came (its Host too, so that URLs the registry builds name the proxy),
        the answer back as it comes, streamed."""
        upstream = http.client.HTTPConnection(self.proxy.upstream, timeout=60)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for header, value in self.headers.items():
                if header.lower() not in HOP_BY_HOP:
                    upstream.putheader(header, value)
            upstream.endheaders()
            response = upstream.getresponse()
        except OSError as error:
            upstream.close()
            self.send_error(502, f"registry {self.proxy.upstream} did not answer: {error}")
            return
        try:
            self._relay(response)
        finally:
            upstream.close()

    def _relay(self, response: http.client.HTTPResponse) -> None:
        self.send_response_only(response.status, response.reason)
        for header, value in response.getheaders():
            if header.lower() not in HOP_BY_HOP:
                self.send_header(header, value)
        bodyless = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
        if not bodyless and response.getheader("Content-Length") is None:
            # No length to pass on (a chunked answer): the body ends where the connection does.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if bodyless:
            return
        while chunk := response.read1(CHUNK):
            self.wfile.write(chunk)
