"""Notifications through Apprise (Telegram, Slack, Discord, ntfy, e-mail, JSON webhooks...), off the request path.

Each target has its own queue and worker thread, so a target that is down delays only its own messages, never a
deploy and never the other targets. A failed send is retried with backoff, then counted and logged as failed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import apprise
from apprise import Apprise
from apprise.utils.parse import parse_urls

from api import logs

log = logging.getLogger("deploy.notify")

# Seconds before each retry; Apprise's own socket timeouts (4 s, or ?cto= and ?rto= in the URL) bound an attempt.
RETRY_DELAYS = (2.0, 10.0, 30.0)
# Messages a target keeps waiting while it is down; more are dropped (and counted) rather than held forever.
QUEUE_LIMIT = 50
LOG_LINES = 10
LOG_CHARACTERS = 1500

TITLES = {
    ("deploy", "succeeded"): "✅ Deployed {service}",
    ("deploy", "rolled_back"): "⏪ Deploy of {service} failed and was rolled back",
    ("deploy", "failed"): "❌ Deploy of {service} failed",
    ("deploy", "rollback_failed"): "🔥 Deploy of {service} failed, and so did its rollback",
    ("deploy", "interrupted"): "⚠️ Deploy of {service} was interrupted",
    ("rollback", "succeeded"): "⏪ Rolled back {service}",
    ("rollback", "rolled_back"): "❌ Rollback of {service} failed; the image before it was restored",
    ("rollback", "failed"): "❌ Rollback of {service} failed",
    ("rollback", "rollback_failed"): "🔥 Rollback of {service} failed, and so did restoring the image before it",
    ("rollback", "interrupted"): "⚠️ Rollback of {service} was interrupted",
    ("remove", "succeeded"): "🧹 Removed what the first deploy of {service} half-started",
    ("remove", "rolled_back"): "❌ Removal of what the first deploy of {service} half-started failed",
    ("remove", "failed"): "❌ Removal of what the first deploy of {service} half-started failed",
    ("remove", "rollback_failed"): "❌ Removal of what the first deploy of {service} half-started failed",
    ("remove", "interrupted"): "⚠️ Removal of what the first deploy of {service} half-started was interrupted",
    ("settle", "succeeded"): "🧹 Settled the unfinished blue-green deploy of {service}: one container kept",
    ("settle", "rolled_back"): "❌ Settling the unfinished blue-green deploy of {service} failed",
    ("settle", "failed"): "❌ Settling the unfinished blue-green deploy of {service} failed",
    ("settle", "rollback_failed"): "❌ Settling the unfinished blue-green deploy of {service} failed",
    ("settle", "interrupted"): "⚠️ Settling the unfinished blue-green deploy of {service} was interrupted",
    ("deploy", "missed"): "⏰ Deploy of {service} was missed",
    ("rollback", "missed"): "⏰ Rollback of {service} was missed",
}
# A record that had to wait for reconciliation is notified again when it ends, by how it ended.
RECONCILED_TITLES = {
    "restored": "🩹 {service} runs its previous image again: reconciled after the {action} {outcome}",
    "removed": "🩹 What the first deploy of {service} half-started is removed: reconciled after the {action} {outcome}",
    "completed": "🩹 {service} runs the new image its blue-green deploy proved: reconciled after the {action} "
    "{outcome}",
    "superseded": "🩹 Reconciliation of {service} ended: a later deployment succeeded",
    "nothing": "🩹 Reconciliation of {service} ended: nothing to undo",
    "failed": "❌ Reconciliation of {service} failed: it needs a look",
}
RECONCILED_TYPES = {
    "restored": apprise.NotifyType.SUCCESS,
    "removed": apprise.NotifyType.SUCCESS,
    "completed": apprise.NotifyType.SUCCESS,
    "superseded": apprise.NotifyType.INFO,
    "nothing": apprise.NotifyType.INFO,
    "failed": apprise.NotifyType.FAILURE,
}
NOTIFY_TYPES = {
    "succeeded": apprise.NotifyType.SUCCESS,
    "rolled_back": apprise.NotifyType.WARNING,
    "interrupted": apprise.NotifyType.WARNING,
    "failed": apprise.NotifyType.FAILURE,
    "rollback_failed": apprise.NotifyType.FAILURE,
    "missed": apprise.NotifyType.WARNING,
}


@dataclass(frozen=True)
class Message:
    title: str
    body: str
    notify_type: apprise.NotifyType
    deployment_id: str
    service: str


def _scheme(url: str) -> str:
    """A URL's scheme, the one part of it that is safe to show; nothing of a value without `://`."""
    return urlsplit(url).scheme.lower() if "://" in url else ""


def target_urls(value: str) -> list[str]:
    """The Apprise URLs in DEPLOY_NOTIFY_URLS (separated by spaces or commas), each one Apprise can use.

    ValueError otherwise, naming at most a scheme: the rest of a URL may be a token or a password.
    """
    urls: list[str] = parse_urls(value)
    leftover = value
    for url in urls:
        leftover = leftover.replace(url, " ", 1)
    if leftover.strip(" ,\t\r\n"):
        # Apprise would skip it without a word, and that target would never hear of anything.
        raise ValueError("it holds text that is not a scheme:// URL")
    for url in urls:
        if Apprise.instantiate(url) is None:
            scheme = _scheme(url)
            raise ValueError(f"Apprise cannot use a {scheme}:// URL" if scheme else "a URL has no scheme://")
    return urls


def _image(name: str | None, image_id: str | None) -> str:
    if not name and not image_id:
        return "(none)"
    short_id = f" ({image_id.removeprefix('sha256:')[:12]})" if image_id else ""
    return f"{name or '(unnamed)'}{short_id}"


def _seconds(started: str | None, ended: str | None) -> float | None:
    if not started or not ended:
        return None
    return (datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds()


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def reconciled_message(record: Mapping[str, Any]) -> Message:
    """What a record that had to wait for reconciliation says when it ends: what reconciliation found and did, by
    which deployment, and how long after the deploy had ended."""
    result = record.get("reconciliation") or "nothing"
    title = RECONCILED_TITLES.get(result, RECONCILED_TITLES["nothing"]).format(
        service=record["service"], action=record["action"], outcome=record["outcome"].replace("_", " ")
    )
    lines = [f"Service: {record['service']}", f"Reconciliation: {record.get('recovery_action') or 'nothing to undo'}"]
    if record.get("recovery"):
        lines.append(f"Found: {record['recovery']}")
    waited = _seconds(record.get("finished_at"), record.get("reconciled_at"))
    if waited is not None:
        lines.append(f"After: {_duration(waited)} (from the end of the {record['action']} to its reconciliation)")
    if record.get("old_image") or record.get("old_image_id"):
        lines.append(f"Previous image: {_image(record.get('old_image'), record.get('old_image_id'))}")
    if record.get("new_image") or record.get("new_image_id"):
        lines.append(f"Image of the {record['action']}: {_image(record.get('new_image'), record.get('new_image_id'))}")
    if record.get("error"):
        lines.append(f"Error of the {record['action']}: {record['error']}")
    lines.append(f"Deployment: {record['id']} (from {record.get('source') or 'unknown'})")
    if record.get("recovered_by"):
        lines.append(f"Reconciled by: {record['recovered_by']}")
    return Message(
        title=title,
        body="\n".join(lines),
        notify_type=RECONCILED_TYPES.get(result, apprise.NotifyType.INFO),
        deployment_id=record["id"],
        service=record["service"],
    )


# What started a deploy (a record's `trigger`), as a notification says it.
TRIGGERS = {
    "webhook": "a signed request (webhook)",
    "cli": "deployctl",
    "schedule": "its recurring schedule",
    "watch": "the registry watch: a new image under its tag",
    "recovery": "the reconciliation after an interruption",
}


def message_for(record: Mapping[str, Any]) -> Message:
    """What a finished deploy or rollback says: service, what triggered it, images, commit and message, duration; for a
    failure,
    the error and the last log lines; for a planned one, in its title, when it was planned for (a missed one says
    why in its error). A record that had to wait for reconciliation says, when that ends, what it
    did (reconciled_message)."""
    if record.get("reconciled_at"):
        return reconciled_message(record)
    outcome = record["outcome"]
    title = TITLES[(record["action"], outcome)].format(service=record["service"])
    if record.get("planned_at"):
        title += f" (planned for {record['planned_at']})"
    lines = [f"Service: {record['service']}", f"Triggered by: {TRIGGERS.get(record.get('trigger') or 'webhook')}"]
    if record.get("new_image") or record.get("new_image_id"):
        lines.append(f"Image: {_image(record.get('new_image'), record.get('new_image_id'))}")
    elif record.get("image"):
        lines.append(f"Image requested: {record['image']}")
    if record.get("old_image") or record.get("old_image_id"):
        lines.append(f"Previous image: {_image(record.get('old_image'), record.get('old_image_id'))}")
    if record.get("running_image_id") is not None or record.get("running_state"):
        running = _image(record.get("running_image"), record.get("running_image_id"))
        lines.append(f"Running now: {running}, {record.get('running_state') or 'no container'}")
    if record.get("repository") or record.get("commit"):
        lines.append(f"Commit: {record.get('repository') or '?'}@{record.get('commit') or '?'}")
    if record.get("message"):
        lines.append(f"Message: {record['message']}")
    if record.get("duration_seconds") is not None:
        lines.append(f"Duration: {record['duration_seconds']:.1f} s")
    lines.append(f"Deployment: {record['id']} (from {record.get('source') or 'unknown'})")
    if outcome != "succeeded":
        if record.get("error"):
            lines.append(f"Error: {record['error']}")
        for field in ("recovery", "recovery_action"):
            if record.get(field):
                lines.append(f"Recovery: {record[field]}")
        tail = "\n".join((record.get("logs") or "").strip().splitlines()[-LOG_LINES:])[-LOG_CHARACTERS:]
        if tail:
            lines += ["", "Last log lines:", tail]
    return Message(
        title=title,
        body="\n".join(lines),
        notify_type=NOTIFY_TYPES[outcome],
        deployment_id=record["id"],
        service=record["service"],
    )


class Target:
    """One Apprise URL, its queue and its worker thread."""

    def __init__(self, url: str, on_result: Callable[[str, str], None]):
        server = Apprise.instantiate(url)
        self.scheme = _scheme(url)
        if server is None:
            raise ValueError(f"DEPLOY_NOTIFY_URLS: a {self.scheme or '(no scheme)'}:// URL Apprise cannot use")
        # Secrets masked, options left out: what a log line needs to say which target it is.
        self.name: str = server.url(privacy=True).split("?", 1)[0]
        self.apprise = apprise.Apprise()
        self.apprise.add(server)
        self.on_result = on_result
        self.queue: queue.Queue[Message | None] = queue.Queue()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._work, name=f"notify-{self.scheme}", daemon=True)

    def submit(self, message: Message) -> None:
        if self.queue.qsize() >= QUEUE_LIMIT:
            log.error("Notification to %s dropped: %d are waiting already", self.name, QUEUE_LIMIT)
            self.on_result(self.scheme, "dropped")
            return
        self.queue.put(message)

    def _work(self) -> None:
        while (message := self.queue.get()) is not None:
            # This thread's own context: its log lines name the deploy they are about.
            logs.bind(deployment_id=message.deployment_id, service=message.service)
            self._deliver(message)

    def _deliver(self, message: Message) -> None:
        for attempt, delay in enumerate((0.0, *RETRY_DELAYS), start=1):
            if delay and self.stopping.wait(delay):
                break
            try:
                sent = bool(
                    self.apprise.notify(
                        title=message.title,
                        body=message.body,
                        notify_type=message.notify_type,
                        body_format=apprise.NotifyFormat.TEXT,
                    )
                )
            except Exception:  # a plugin's bug must not end the worker
                log.exception("Notification to %s raised", self.name)
                sent = False
            if sent:
                self.on_result(self.scheme, "sent")
                return
            log.warning("Notification to %s failed (attempt %d of %d)", self.name, attempt, len(RETRY_DELAYS) + 1)
        log.error("Notification to %s given up: %s", self.name, message.title)
        self.on_result(self.scheme, "failed")


class Notifier:
    """Sends a message for each finished deploy whose outcome is among DEPLOY_NOTIFY_EVENTS."""

    def __init__(self, urls: str | None, events: Sequence[str], on_result: Callable[[str, str], None]):
        self.events = frozenset(events)
        self.targets = [Target(url, on_result) for url in target_urls(urls or "")]

    def start(self) -> None:
        for target in self.targets:
            target.thread.start()
        if self.targets:
            names = ", ".join(target.name for target in self.targets)
            log.info("Notifying %s of: %s", names, ", ".join(sorted(self.events)))

    def submit(self, record: Mapping[str, Any]) -> None:
        """Queue the notification of a finished record, or of the end of its reconciliation; returns at once."""
        if record.get("outcome") not in self.events or not record.get("service") or not self.targets:
            return
        message = message_for(record)
        for target in self.targets:
            target.submit(message)

    def close(self, timeout: float) -> None:
        """Let queued messages go out for up to `timeout` seconds; then stop retrying (the threads are daemons)."""
        deadline = time.monotonic() + timeout
        running = [target for target in self.targets if target.thread.is_alive()]
        for target in running:
            target.queue.put(None)
        for target in running:
            target.thread.join(max(0.0, deadline - time.monotonic()))
        for target in self.targets:
            target.stopping.set()
            if target.thread.is_alive():
                log.warning("Notifications to %s still waiting at shutdown are lost", target.name)
