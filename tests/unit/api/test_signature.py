"""Signatures: GitHub's published test vector and the reference document's bash and Python recipes."""

from __future__ import annotations

import hashlib
import hmac
import subprocess

import pytest

from api.signature import is_valid, sign

GITHUB_SECRET = b"It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_github_published_vector():
    assert sign(GITHUB_SECRET, GITHUB_BODY) == GITHUB_SIGNATURE
    assert is_valid(GITHUB_SECRET, GITHUB_BODY, GITHUB_SIGNATURE)


def test_reference_bash_recipe_is_accepted():
    payload = '{"service":"portal","image":"ghcr.io/acme/portal:latest"}'
    secret = "s" * 64
    script = 'echo -n "$PAYLOAD" | openssl dgst -sha256 -hmac "$SECRET" | sed \'s/^.* //\''
    digest = subprocess.run(
        ["bash", "-c", script],
        env={"PAYLOAD": payload, "SECRET": secret, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert is_valid(secret.encode(), payload.encode(), f"sha256={digest}")


def test_reference_python_recipe_is_accepted():
    payload = b'{"service":"portal"}'
    secret = "your-secret-here-that-is-long-enough-too"
    signature = hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
    assert is_valid(secret.encode(), payload, f"sha256={signature}")


def test_upper_case_hex_is_accepted():
    assert is_valid(GITHUB_SECRET, GITHUB_BODY, GITHUB_SIGNATURE.upper().replace("SHA256=", "sha256="))


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "sha256=",
        GITHUB_SIGNATURE[len("sha256=") :],
        "sha1=" + GITHUB_SIGNATURE[len("sha256=") :],
        GITHUB_SIGNATURE[:-1],
        GITHUB_SIGNATURE + "0",
        GITHUB_SIGNATURE[:-1] + "f",
        "sha256=" + "z" * 64,
    ],
)
def test_missing_malformed_or_wrong_signatures_are_refused(header):
    assert not is_valid(GITHUB_SECRET, GITHUB_BODY, header)


def test_a_changed_body_is_refused():
    assert not is_valid(GITHUB_SECRET, GITHUB_BODY + b" ", GITHUB_SIGNATURE)
