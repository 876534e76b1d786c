"""GitHub-style HMAC-SHA256 request signatures: `X-Hub-Signature-256: sha256=<hex>` over the raw body."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence

HEADER = "X-Hub-Signature-256"
_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def is_valid(secret: bytes, body: bytes, header: str | None) -> bool:
    """True when `header` is `sha256=<hex>` of HMAC-SHA256(secret, body); compared in constant time."""
    if header is None:
        return False
    match = _SIGNATURE.fullmatch(header.strip())
    if match is None:
        return False
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, match.group(1).lower())


def signers(secret_sets: Mapping[str, Sequence[bytes]], body: bytes, header: str | None) -> frozenset[str]:
    """The names of the secret sets holding a secret that signed `body`. Every secret is tried, whatever matched
    before, so the time taken does not tell which one did."""
    matched = set()
    for name, secrets in secret_sets.items():
        for secret in secrets:
            if is_valid(secret, body, header):
                matched.add(name)
    return frozenset(matched)
