"""The step of action.yml: sign a deploy request, start it, follow it until it has finished.

Runs on a GitHub runner with its python3 alone (3.9 or newer): the standard library only, and two
modules of this repository that need nothing more, api.signature (how a request is signed, as the
API checks it) and api.text (what the API and the containers wrote, made safe to print). The
request is asynchronous (`POST /deploy?wait=false`) because Cloudflare Tunnel cuts a request
after 100 seconds; the deployment is then followed at `GET /deployments/{id}`, signed over
`read:` and the id with the same secret. Inputs come from INPUT_* variables that action.yml sets.

The body carries the time it was signed (`timestamp`, Unix seconds): the API accepts a signed body
once, within its replay window, so the request is sent once and never repeated. A secret input
that lists several secrets separated by commas (a rotation, newest first) signs with the first.

Exit codes, as deployctl's: 0 succeeded (or started, with wait: false); 1 the deploy ran and did
not succeed; 2 an input is missing or malformed; 3 refused by the API (4xx, and 429 with the seconds
to wait); 4 the API is unreachable, or the deploy was still running when the timeout ran out.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

# The action's checkout is the whole repository ($GITHUB_ACTION_PATH), this script in its action/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.signature import HEADER, sign
from api.text import printable, printable_json, printable_lines

POLL_INTERVAL = 2.0
REQUEST_TIMEOUT = 30
LOG_TAIL_LINES = 40
# Cloudflare's browser integrity check turns away urllib's default user agent.
USER_AGENT = "deploy-action/1"
DEPLOYMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TRUE, FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: a POST must not turn into a GET, nor a signed request go elsewhere unseen."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


class InputError(Exception):
    pass


class Refused(Exception):
    def __init__(self, status: int, detail: Any, retry_after: int | None = None):
        self.status = status
        self.detail = detail
        # Seconds to wait, from the Retry-After of a 429.
        self.retry_after = retry_after
        super().__init__(f"{status}: {detail}")

    def text(self) -> str:
        detail = "; ".join(map(str, self.detail)) if isinstance(self.detail, list) else str(self.detail)
        hint = ""
        if self.status == 403 and detail == "Invalid signature":
            # Other 403s (a stale or replayed request, a secret not allowed for the service) say what is wrong.
            hint = " (the secret is not the API's WEBHOOK_SECRET)"
        elif self.status == 403 and detail.startswith("Invalid signature: it was made for"):
            hint = " (the action and the API sign differently: use the action's release that matches the API)"
        elif self.status == 429:
            wait = f"in {self.retry_after} s" if self.retry_after is not None else "later"
            hint = f" (too many requests: try again {wait})"
        elif self.status == 423:
            hint = " (outside the service's deploy window: queue: true plans the deploy for its opening)"
        return f"{self.status}: {detail}{hint}"


class Unavailable(Exception):
    pass


@dataclass(frozen=True)
class Inputs:
    url: str
    secret: bytes
    service: str
    image: str
    environment: str
    repository: str
    commit: str
    message: str
    wait: bool
    timeout: float
    at: str = ""
    queue: bool = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Inputs:
        def value(name: str, required: bool = False) -> str:
            text = environ.get(f"INPUT_{name.upper()}", "").strip()
            if required and not text:
                raise InputError(f"the input '{name}' is required")
            return text

        url = value("url", required=True).rstrip("/")
        if not url.startswith(("https://", "http://")):
            raise InputError("the input 'url' must start with https:// or http://")
        wait = value("wait").lower() or "true"
        if wait not in TRUE + FALSE:
            raise InputError(f"the input 'wait' must be true or false, not '{wait}'")
        queue = value("queue").lower() or "false"
        if queue not in TRUE + FALSE:
            raise InputError(f"the input 'queue' must be true or false, not '{queue}'")
        try:
            timeout = float(value("timeout") or 900)
        except ValueError:
            raise InputError("the input 'timeout' must be a number of seconds") from None
        if timeout <= 0:
            raise InputError("the input 'timeout' must be more than 0")
        # During a rotation the secret may be a list, newest first, as the API's WEBHOOK_SECRET: the first signs.
        listed = secret_entries(value("secret", required=True))
        if not listed:
            raise InputError("the input 'secret' is required")
        return cls(
            url=url,
            secret=listed[0].encode(),
            service=value("service", required=True),
            image=value("image"),
            environment=value("environment"),
            repository=value("repository"),
            commit=value("commit"),
            # A commit message keeps its lines; only the outer whitespace goes.
            message=environ.get("INPUT_MESSAGE", "").strip(),
            wait=wait in TRUE,
            timeout=timeout,
            # Sent as written: the API reads it (RFC 3339 with its offset) and says what is wrong with it.
            at=value("at"),
            queue=queue in TRUE,
        )

    def body(self, timestamp: int) -> bytes:
        """The exact bytes that are signed and sent: compact JSON, empty inputs left out, and when it was signed."""
        fields = {
            "service": self.service,
            "image": self.image,
            "environment": self.environment,
            "repository": self.repository,
            "commit": self.commit,
            "message": self.message,
            "at": self.at,
        }
        document: dict[str, str | int | bool] = {name: text for name, text in fields.items() if text}
        if self.queue:
            document["queue"] = True
        document["timestamp"] = timestamp
        return json.dumps(document, separators=(",", ":")).encode()


def secret_entries(text: str) -> list[str]:
    return [entry.strip() for entry in text.split(",") if entry.strip()]


def call(method: str, url: str, headers: dict[str, str], body: bytes | None = None) -> dict[str, Any]:
    """The API's JSON answer; Refused on 4xx, Unavailable when the API itself did not answer."""
    request = urllib.request.Request(url, data=body, method=method, headers={"User-Agent": USER_AGENT, **headers})
    try:
        with _OPENER.open(request, timeout=REQUEST_TIMEOUT) as response:
            raw = response.read()
    except urllib.error.HTTPError as error:
        detail = _detail(error.read(), error.reason)
        if 400 <= error.code < 500:
            retry_after = (error.headers.get("Retry-After") or "").strip()
            raise Refused(error.code, detail, int(retry_after) if retry_after.isdigit() else None) from None
        if 300 <= error.code < 400:
            location = error.headers.get("Location")
            raise Unavailable(f"{method} {url} redirects to {location}: set the url input to where it points") from None
        raise Unavailable(f"{method} {url} answered {error.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as error:
        raise Unavailable(f"{method} {url}: {getattr(error, 'reason', error)}") from None
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise Unavailable(f"{method} {url} answered without a JSON object")
    return answer


def _detail(raw: bytes, reason: str) -> Any:
    try:
        return json.loads(raw)["detail"]
    except (ValueError, KeyError, TypeError):
        # Not the API's JSON: a proxy's page. A line of it is enough.
        return " ".join(raw.decode(errors="replace").split())[:200] or reason


class Log:
    """GitHub's workflow commands, with whatever the API or a container wrote kept from being read as one, and its
    control characters escaped (api.text) so that none of them acts on the terminal or the log viewer."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def line(self, text: str = "") -> None:
        """A line of this script's own: what it holds from elsewhere is printable already."""
        self.stream.write(text + "\n")
        self.stream.flush()

    def command(self, name: str, message: str, **properties: str) -> None:
        listed = ",".join(
            f"{key}={_escape(printable(value), property_value=True)}" for key, value in properties.items()
        )
        self.line(f"::{name}{' ' + listed if listed else ''}::{_escape(printable(message))}")

    def untrusted(self, text: str) -> None:
        """Text from elsewhere (a container's logs): printed line by line, with workflow commands switched off
        around it."""
        token = secrets.token_hex(16)
        self.line(f"::stop-commands::{token}")
        for line in printable_lines(text):
            self.line(line)
        self.line(f"::{token}::")

    def group(self, title: str, body: str) -> None:
        self.command("group", title)
        self.untrusted(body)
        self.line("::endgroup::")


def _escape(text: str, property_value: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if property_value else text


class Outputs:
    """The step's outputs ($GITHUB_OUTPUT) and its job summary ($GITHUB_STEP_SUMMARY); absent outside a runner."""

    def __init__(self, environ: Mapping[str, str]):
        self.output_file = environ.get("GITHUB_OUTPUT")
        self.summary_file = environ.get("GITHUB_STEP_SUMMARY")

    def set(self, name: str, value: str) -> None:
        if self.output_file:
            with open(self.output_file, "a", encoding="utf-8") as output:
                output.write(f"{name}={printable(' '.join(value.split()))}\n")

    def summary(self, markdown: str) -> None:
        if self.summary_file:
            with open(self.summary_file, "a", encoding="utf-8") as summary:
                summary.write(markdown + "\n")


def step_title(step: dict[str, Any]) -> str:
    """A group's title, on one line: Log.command escapes what the step's text holds."""
    mark = "✓" if step.get("success") else "✗"
    host = f"[{step['host']}] " if step.get("host") else ""
    return f"{mark} {host}{step.get('step', '?')}: {step.get('detail') or ''}".rstrip(": ")


def summary_markdown(record: dict[str, Any]) -> str:
    def cell(value: Any) -> str:
        # One line of a table: printable escapes the line breaks with the rest.
        return printable(str(value or "")).replace("|", "\\|") or "-"

    lines = [
        f"### {cell(record.get('action') or 'deploy')} of {cell(record.get('service'))}: {cell(record.get('outcome'))}",
        "",
        f"Deployment `{cell(record.get('id'))}` ({cell(record.get('duration_seconds'))} s): "
        f"`{cell(record.get('old_image'))}` → `{cell(record.get('new_image'))}`",
        "",
        "| step | | detail |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {cell(step.get('step'))} | {'✓' if step.get('success') else '✗'} | {cell(step.get('detail'))} |"
        for step in record.get("steps") or []
    ]
    if record.get("error"):
        lines += ["", f"**Error:** {cell(record['error'])}"]
    return "\n".join(lines)


def start(inputs: Inputs, clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """POST /deploy?wait=false, once: trying again would be a new request, signed with a new timestamp. The 202
    answer: a deployment started, or planned (`status` scheduled, with `at`)."""
    body = inputs.body(int(clock()))
    headers = {"Content-Type": "application/json", HEADER: sign(inputs.secret, body, purpose="deploy")}
    answer = call("POST", f"{inputs.url}/deploy?wait=false", headers, body)
    if not DEPLOYMENT_ID.fullmatch(str(answer.get("deployment_id", ""))):
        raise Unavailable(f"the API started no deployment: {answer}")
    return answer


def follow(
    inputs: Inputs,
    deployment_id: str,
    log: Log,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll the record until its outcome is final, each new step a log group. An API that stops answering for
    a while is asked again until the timeout; the last record seen is returned, still `running` at the timeout."""
    url = f"{inputs.url}/deployments/{deployment_id}"
    headers = {HEADER: sign(inputs.secret, deployment_id.encode(), purpose="read")}
    deadline = clock() + inputs.timeout
    record: dict[str, Any] = {"id": deployment_id, "outcome": "running", "steps": []}
    printed = 0
    warned = False
    while True:
        try:
            record = call("GET", url, headers)
        except Unavailable as error:
            if not warned:
                log.command("warning", f"No answer from the deployment API, asking again until the timeout: {error}")
                warned = True
        else:
            steps = record.get("steps") or []
            for step in steps[printed:]:
                log.group(step_title(step), printable_json(step))
            printed = len(steps)
            if record.get("outcome") != "running":
                return record
        if clock() >= deadline:
            return record
        sleep(POLL_INTERVAL)


def report(record: dict[str, Any], log: Log) -> None:
    """The outcome as an annotation, then the failing container's log tail."""
    service = record.get("service")
    outcome = record.get("outcome")
    took = f" in {record['duration_seconds']:.1f} s" if record.get("duration_seconds") is not None else ""
    if outcome == "succeeded":
        log.command("notice", f"{service} runs {record.get('new_image')}{took}", title=f"Deployed {service}")
        return
    explanation = {
        "rolled_back": "failed and was rolled back: the service runs the previous image again",
        "rollback_failed": "failed, and so did the rollback: the service needs a look",
        "failed": "failed with nothing to roll back",
        "interrupted": "was interrupted",
        "running": "was still running when the timeout ran out; it goes on",
    }.get(str(outcome), str(outcome))
    error = f": {record['error']}" if record.get("error") else ""
    log.command("error", f"The deploy of {service} {explanation}{took}{error}", title=f"Deploy of {service}: {outcome}")
    logs = printable_lines((record.get("logs") or "").rstrip())
    if logs:
        tail = logs[-LOG_TAIL_LINES:]
        log.group(f"Container logs (last {len(tail)} of {len(logs)} lines)", "\n".join(tail))


def main(environ: Mapping[str, str] = os.environ, stream: TextIO = sys.stdout) -> int:
    log = Log(stream)
    outputs = Outputs(environ)
    for secret in secret_entries(environ.get("INPUT_SECRET", "")):
        log.line(f"::add-mask::{secret}")
    try:
        inputs = Inputs.from_environment(environ)
    except InputError as error:
        log.command("error", str(error), title="Deploy")
        return 2
    try:
        accepted = start(inputs)
    except Refused as refusal:
        outputs.set("outcome", "rejected")
        log.command("error", refusal.text(), title=f"The deployment API refused {inputs.service}")
        return 3
    except Unavailable as error:
        log.command("error", str(error), title="The deployment API did not answer")
        return 4
    deployment_id = str(accepted["deployment_id"])
    outputs.set("deployment-id", deployment_id)
    if accepted.get("status") == "scheduled":
        # Planned (`at`, or queued to the service's deploy window): nothing to follow until then.
        planned = str(accepted.get("at"))
        outputs.set("outcome", "scheduled")
        outputs.set("at", planned)
        log.command(
            "notice",
            f"Deployment {deployment_id} of {inputs.service} planned for {planned}; "
            f"cancel it until then with: deployctl cancel {deployment_id}",
            title=f"Deploy of {inputs.service} scheduled",
        )
        return 0
    if inputs.at:
        # An API from before planned deploys ignored `at` and started the deploy now: say so, and fail the step.
        log.command(
            "error",
            f"The API started deployment {deployment_id} now instead of at {inputs.at}: it does not know `at`",
            title=f"Deploy of {inputs.service}",
        )
        outputs.set("outcome", "running")
        return 4
    log.line(f"Deployment {deployment_id} of {printable(inputs.service)} started")
    if not inputs.wait:
        outputs.set("outcome", "running")
        return 0
    try:
        record = follow(inputs, deployment_id, log)
    except Refused as refusal:
        log.command("error", refusal.text(), title=f"Following deployment {deployment_id}")
        return 3
    outcome = str(record.get("outcome"))
    outputs.set("outcome", outcome)
    outputs.summary(summary_markdown(record))
    report(record, log)
    if outcome == "succeeded":
        return 0
    return 4 if outcome == "running" else 1


if __name__ == "__main__":
    sys.exit(main())
