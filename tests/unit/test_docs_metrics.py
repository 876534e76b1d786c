"""The Grafana dashboard and the alert rules in docs/ query only metrics the API exposes."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from api.history import History, now
from api.metrics import Metrics
from tests.conftest import REPO


@pytest.fixture
def exposed(tmp_path) -> set[str]:
    """Every sample name of GET /metrics, once a deploy has succeeded, a notification target is known and the engine
    watch has heard a host."""
    history = History(tmp_path / "deployments.sqlite3")
    history.create(id="d1", action="deploy", service="portal", outcome="succeeded", finished_at=now())
    metrics = Metrics(history, services=lambda: ("portal",), engines=lambda: {"prod1": True})
    metrics.know_notification_schemes(["tgram"])
    text, _ = metrics.exposition(None)
    history.close()
    return {sample.name for family in text_string_to_metric_families(text.decode()) for sample in family.samples}


def queried(text: str) -> set[str]:
    return set(re.findall(r"\b(?:deployer|process)_[a-z_]+", text))


def test_the_dashboard_queries_only_exposed_metrics(exposed):
    dashboard = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text())
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", []) if "expr" in target
    ]
    expressions += [variable["definition"] for variable in dashboard["templating"]["list"]]

    names = set().union(*(queried(expression) for expression in expressions))

    assert names, "the dashboard queries the API's metrics"
    assert names - exposed == set()


def test_the_alert_rules_query_only_exposed_metrics(exposed):
    rules = yaml.safe_load((REPO / "docs" / "prometheus-alerts.yml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]

    names = set().union(*(queried(expression) for expression in expressions))

    assert len(names) >= 4
    assert names - exposed == set()
