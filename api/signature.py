"""GitHub-style HMAC-SHA256 request signatures: `X-Hub-Signature-256: sha256=<hex>`.

What is signed depends on what the signature is for, so that no signature made for one purpose is valid for another:

- `deploy`: the raw body, as the reference document and GitHub sign it;
- `rollback`: `rollback:` and the raw body, so a body signed for /deploy cannot be sent to /rollback;
- `read`: `read:` and a deployment id (GET /deployments/{id});
- `cancel`: `cancel:` and a deployment id (DELETE /deployments/{id}, a planned deploy's cancel).

The messages of the purposes never meet: a deploy body must be a JSON object, which never starts with a
prefix's letters, and one that does is neither signed nor accepted for `deploy`.

The standard library only, and Python 3.9: the GitHub Action (action/deploy.py) signs with this module on a
runner's own python3.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence

HEADER = "X-Hub-Signature-256"
PREFIXES = {"deploy": b"", "rollback": b"rollback:", "read": b"read:", "cancel": b"cancel:"}
PURPOSES = tuple(PREFIXES)
_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")


def message(payload: bytes, purpose: str = "deploy") -> bytes:
    """The bytes a signature for `purpose` covers; ValueError for a deploy body that starts as another purpose's
    message does (it would sign that message too)."""
    if purpose == "deploy" and any(prefix and payload.startswith(prefix) for prefix in PREFIXES.values()):
        raise ValueError("a body for POST /deploy never starts with 'rollback:', 'read:' or 'cancel:'")
    return PREFIXES[purpose] + payload


def sign(secret: bytes, payload: bytes, purpose: str = "deploy") -> str:
    return "sha256=" + hmac.new(secret, message(payload, purpose), hashlib.sha256).hexdigest()


def normalized(header: str) -> str:
    """A valid signature header as `sha256=<lower-case hex>`: one spelling for each signature."""
    return header.strip().lower()


def is_valid(secret: bytes, payload: bytes, header: str | None, purpose: str = "deploy") -> bool:
    """True when `header` is `sha256=<hex>` of HMAC-SHA256(secret, message(payload, purpose)); compared in
    constant time."""
    if header is None:
        return False
    match = _SIGNATURE.fullmatch(header.strip())
    if match is None:
        return False
    try:
        signed = message(payload, purpose)
    except ValueError:
        return False
    expected = hmac.new(secret, signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, match.group(1).lower())


def signers(
    secret_sets: Mapping[str, Sequence[bytes]], payload: bytes, header: str | None, purpose: str = "deploy"
) -> frozenset[str]:
    """The names of the secret sets holding a secret that signed `payload` for `purpose`. Every secret is tried,
    whatever matched before, so the time taken does not tell which one did."""
    matched = set()
    for name, secrets in secret_sets.items():
        for secret in secrets:
            if is_valid(secret, payload, header, purpose):
                matched.add(name)
    return frozenset(matched)


def purposes_signed(
    secret_sets: Mapping[str, Sequence[bytes]], payload: bytes, header: str | None, besides: str | None = None
) -> list[str]:
    """For a signature refused for its purpose (`besides`, not tried again): the other purposes it is valid for, to
    say what it was made for."""
    return [purpose for purpose in PURPOSES if purpose != besides and signers(secret_sets, payload, header, purpose)]
