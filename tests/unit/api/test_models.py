"""Validation of request bodies; the image pattern is the playbook's own (module_utils/deploy_rules.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from api.models import DeployRequest


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


@pytest.mark.parametrize("field", ["repository", "commit", "message"])
@pytest.mark.parametrize(
    "text",
    [
        "\U0001f680 release",
        "\u2028\u2029\x85\x7f\ufeff",
        "".join(chr(code) for code in range(0x20)) + "".join(chr(code) for code in range(0x7F, 0xA0)),
        "\ue000\ufffe\uffff\U0010ffff",
        "{{ lookup('pipe', 'id') }}",
    ],
    ids=["emoji", "separators-nel-del-bom", "c0-del-c1", "private-use-noncharacters", "jinja"],
)
def test_metadata_is_any_text_kept_as_it_is(field, text):
    request = DeployRequest.model_validate({"service": "portal", field: text})

    assert getattr(request, field) == text


@pytest.mark.parametrize("field", ["repository", "commit", "message"])
def test_a_lone_surrogate_in_metadata_is_kept_as_its_escape(field):
    """JSON "\\ud800" is valid JSON but no character: it becomes the six characters \\ud800, valid text anywhere."""
    request = DeployRequest.model_validate({"service": "portal", field: "a\ud800b\udfff\U0001f680"})

    assert getattr(request, field) == "a\\ud800b\\udfff\U0001f680"
    getattr(request, field).encode("utf-8")


@pytest.mark.parametrize(("field", "limit"), [("repository", 256), ("commit", 128), ("message", 4096)])
def test_the_length_of_metadata_is_that_of_the_text_kept(field, limit):
    fits = "\ud800" * (limit // 6) + "a" * (limit % 6)
    assert len(getattr(DeployRequest.model_validate({"service": "portal", field: fits}), field)) == limit
    with pytest.raises(ValidationError, match=f"at most {limit} characters"):
        DeployRequest.model_validate({"service": "portal", field: fits + "a"})


@pytest.mark.parametrize("field", ["service", "image", "environment"])
def test_a_lone_surrogate_in_a_name_is_refused(field):
    """Names are looked up, not recorded: none holds a lone surrogate, and an escape would name something else."""
    with pytest.raises(ValidationError, match=field):
        DeployRequest.model_validate({"service": "portal", field: "portal\ud800"})
