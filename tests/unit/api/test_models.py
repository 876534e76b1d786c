"""Validation of request bodies; the image pattern is the one the playbook enforces too."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from api.models import IMAGE_REFERENCE, DeployRequest

PLAYBOOK_VARS = Path(__file__).resolve().parents[3] / "playbooks" / "vars" / "deploy.yml"


def test_the_playbook_enforces_the_same_image_pattern():
    variables = yaml.safe_load(PLAYBOOK_VARS.read_text())
    assert variables["deploy_image_pattern"].strip() == IMAGE_REFERENCE.pattern


@pytest.mark.parametrize(
    "image",
    [
        "nginx",
        "nginx:1.27-alpine",
        "library/nginx:latest",
        "ghcr.io/mykytaryasny/homeserver-portal:main-xyz789",
        "127.0.0.1:5000/team/app_name:v1.2.3",
        "registry.example.com:8443/a/b/c",
        "app@sha256:" + "a" * 64,
        "ghcr.io/acme/app:1.0@sha256:" + "0" * 64,
    ],
)
def test_valid_image_references(image):
    assert DeployRequest(service="portal", image=image).image == image


@pytest.mark.parametrize(
    "image",
    [
        "UPPER/case",
        "app:bad tag",
        "app:" + "t" * 129,
        "-app",
        "app:-tag",
        "app@sha256:short",
        "app;rm -rf /",
        "$(id)",
        "{{ lookup('pipe', 'id') }}",
        "a" * 256,
        "app\n:latest",
        "app:t\u00e5g",
    ],
)
def test_invalid_image_references(image):
    with pytest.raises(ValidationError, match=r"not a valid Docker image reference|at most 255"):
        DeployRequest(service="portal", image=image)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"service": 42},
        {"service": ["portal"]},
        {"service": ""},
        {"service": "portal", "image": 1},
        {"service": "portal", "commit": {"sha": "abc"}},
        {"service": "s" * 129},
    ],
)
def test_wrong_fields_are_refused(body):
    with pytest.raises(ValidationError):
        DeployRequest.model_validate(body)


def test_metadata_is_kept_as_text():
    request = DeployRequest(service="portal", repository="a/b", commit="abc123", message="{{ 7 * 7 }}")
    assert request.message == "{{ 7 * 7 }}"
