"""Prometheus metrics under the `deployer_` prefix, for GET /metrics.

Counters and the duration histogram count what this process saw finish. The history's gauges are read from it when
Prometheus scrapes, so they are true after a restart as well; the engines' gauge is what the engine watch
(api/engines.py) last heard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from api.history import History
from api.models import FINISHED_OUTCOMES
from module_utils.deploy_rules import RECREATE, STRATEGIES

ACTIONS = ("deploy", "rollback")
WEBHOOK_RESULTS = (
    "accepted",
    "invalid_signature",
    "wrong_secret",
    "expired",
    "replayed",
    "not_allowed",
    "invalid_body",
    "too_large",
    "conflict",
    "rate_limited",
    "inventory_invalid",
    "outside_window",
)
# Why a tick of a recurring schedule deployed nothing (api/scheduler.py, SkipReason).
SKIP_REASONS = ("outside_window", "unchanged", "failed_before", "watch_failed")
NOTIFICATION_RESULTS = ("sent", "failed", "dropped")
# A deploy is a pull, a restart and a health check: seconds to a few minutes; DEPLOY_TIMEOUT is 900 s.
DURATION_BUCKETS = (2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900)


class HistoryCollector(Collector):
    """Deploys in progress, deploys awaiting reconciliation and the last successful deploy of each service, as the
    history has them."""

    def __init__(self, history: History, services: Callable[[], Iterable[str]]):
        self.history = history
        self.services = services

    def collect(self) -> Iterator[Metric]:
        in_progress = GaugeMetricFamily(
            "deployer_deployments_in_progress", "Deploys and rollbacks running now", labels=["service"]
        )
        running = self.history.running_by_service()
        for service in sorted({*self.services(), *running}):
            in_progress.add_metric([service], running.get(service, 0))
        yield in_progress
        awaiting = GaugeMetricFamily(
            "deployer_awaiting_reconciliation",
            "Deployments whose service awaits reconciliation: their rollback could not run, or they were interrupted, "
            "and the service is brought back once its hosts answer",
            labels=["service"],
        )
        waiting = self.history.awaiting_by_service()
        for service in sorted({*self.services(), *waiting}):
            awaiting.add_metric([service], waiting.get(service, 0))
        yield awaiting
        scheduled = GaugeMetricFamily(
            "deployer_scheduled_deployments", "Planned deploys and rollbacks waiting for their time", labels=["service"]
        )
        planned = self.history.scheduled_by_service()
        for service in sorted({*self.services(), *planned}):
            scheduled.add_metric([service], planned.get(service, 0))
        yield scheduled
        last_success = GaugeMetricFamily(
            "deployer_last_success_timestamp_seconds",
            "When the service's last successful deploy finished, in Unix time",
            labels=["service"],
        )
        for service, timestamp in sorted(self.history.last_successes().items()):
            last_success.add_metric([service], timestamp)
        yield last_success


class EngineCollector(Collector):
    """Whether the Docker engine of each host answers, as the engine watch last heard (hosts never heard of: none)."""

    def __init__(self, engines: Callable[[], Mapping[str, bool]]):
        self.engines = engines

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "deployer_engine_up", "1 when the host's Docker engine answered the last check, 0 when not", labels=["host"]
        )
        for host, reachable in sorted(self.engines().items()):
            up.add_metric([host], 1 if reachable else 0)
        yield up


class ScheduleCollector(Collector):
    """When each recurring schedule ticks next, as the scheduler computes it from the inventory."""

    def __init__(self, next_runs: Callable[[], Mapping[str, float]]):
        self.next_runs = next_runs

    def collect(self) -> Iterator[Metric]:
        next_run = GaugeMetricFamily(
            "deployer_schedule_next_run_timestamp_seconds",
            "When the service's recurring schedule (deploy_services.<name>.schedule) ticks next, in Unix time",
            labels=["service"],
        )
        for service, timestamp in sorted(self.next_runs().items()):
            next_run.add_metric([service], timestamp)
        yield next_run


class Metrics:
    """One registry per app, so that tests may build many."""

    def __init__(
        self,
        history: History,
        services: Callable[[], Iterable[str]],
        engines: Callable[[], Mapping[str, bool]] = dict,
        next_runs: Callable[[], Mapping[str, float]] = dict,
    ):
        # The `_created` series would double every counter, and dashboards do not use them.
        disable_created_metrics()
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.services = services
        self.deployments = Counter(
            "deployer_deployments",
            "Finished deploys and rollbacks, by outcome",
            ["service", "action", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "deployer_deployment_duration_seconds",
            "How long finished deploys and rollbacks took, by strategy (recreate, blue_green)",
            ["service", "action", "strategy"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.rollbacks = Counter(
            "deployer_rollbacks",
            "Rollbacks: automatic (a failed deploy), manual (POST /rollback) or recovery (after an interruption)",
            ["service", "trigger", "result"],
            registry=registry,
        )
        self.missed = Counter(
            "deployer_missed_deployments",
            "Planned deploys and rollbacks missed: the API was down at their time, or their service stayed busy, "
            "beyond DEPLOY_SCHEDULE_GRACE",
            ["service"],
            registry=registry,
        )
        self.skipped = Counter(
            "deployer_skipped_deployments",
            "Ticks of recurring schedules that deployed nothing: outside_window (the service's deploy window was "
            "closed), unchanged (a watch found the running image in the registry), failed_before (a watch found the "
            "image its last deploy rolled back), watch_failed (a watch could not read the registry or the host)",
            ["service", "reason"],
            registry=registry,
        )
        self.webhook_requests = Counter(
            "deployer_webhook_requests",
            "Requests to POST /deploy and POST /rollback, by what became of them",
            ["endpoint", "result"],
            registry=registry,
        )
        self.notifications = Counter(
            "deployer_notifications",
            "Notifications by Apprise scheme: sent, failed after every retry, or dropped",
            ["scheme", "result"],
            registry=registry,
        )
        registry.register(HistoryCollector(history, services))
        registry.register(EngineCollector(engines))
        registry.register(ScheduleCollector(next_runs))
        for endpoint in ACTIONS:
            for result in WEBHOOK_RESULTS:
                self.webhook_requests.labels(endpoint, result)
        self._known: set[str] = set()

    def _know(self, services: Iterable[str]) -> None:
        """Show every series of a service at 0 before its first event, so rate() and increase() see the first."""
        for service in set(services) - self._known:
            self._known.add(service)
            for action in ACTIONS:
                for outcome in FINISHED_OUTCOMES:
                    self.deployments.labels(service, action, outcome)
                for strategy in STRATEGIES:
                    self.duration.labels(service, action, strategy)
            self.missed.labels(service)
            for reason in SKIP_REASONS:
                self.skipped.labels(service, reason)
            for trigger in ("automatic", "manual", "recovery"):
                for result in ("succeeded", "failed"):
                    self.rollbacks.labels(service, trigger, result)

    def observe(self, record: Mapping[str, Any]) -> None:
        """Count a deploy or rollback that has finished (not one refused at validation), or a planned one missed;
        once: a record heard of again when its reconciliation ends (`reconciled_at`) was counted when it began to
        wait."""
        service, action, outcome = record["service"], record["action"], record["outcome"]
        if not service or outcome in ("running", "rejected") or record.get("reconciled_at"):
            return
        self._know([service])
        if outcome == "missed":
            self.missed.labels(service).inc()
            return
        self.deployments.labels(service, action, outcome).inc()
        if record.get("duration_seconds") is not None:
            strategy = record.get("strategy") or RECREATE
            self.duration.labels(service, action, strategy).observe(record["duration_seconds"])
        if action == "deploy" and outcome in ("rolled_back", "rollback_failed"):
            self.rollbacks.labels(service, "automatic", "succeeded" if outcome == "rolled_back" else "failed").inc()
        elif action == "rollback":
            trigger = "recovery" if record.get("source") == "recovery" else "manual"
            self.rollbacks.labels(service, trigger, "succeeded" if outcome == "succeeded" else "failed").inc()

    def skip(self, service: str, reason: str) -> None:
        """Count a tick of a recurring schedule that deployed nothing, and why (SKIP_REASONS)."""
        self._know([service])
        self.skipped.labels(service, reason).inc()

    def know_notification_schemes(self, schemes: Iterable[str]) -> None:
        for scheme in schemes:
            for result in NOTIFICATION_RESULTS:
                self.notifications.labels(scheme, result)

    def webhook(self, endpoint: str, result: str) -> None:
        self.webhook_requests.labels(endpoint, result).inc()

    def notification(self, scheme: str, result: str) -> None:
        self.notifications.labels(scheme, result).inc()

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The metrics in the format the scraper asked for (Prometheus text, or OpenMetrics)."""
        self._know(self.services())
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
