"""`make run` helpers: a strong secret and read token in `.env` when there are none, and a signed curl to paste."""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
from pathlib import Path

from api.signature import sign

EXAMPLE_BODY = json.dumps({"service": "hello-world"}, separators=(",", ":"))


def ensure_secret(env_file: Path, name: str = "WEBHOOK_SECRET", why: str = "give CI the same secret") -> str:
    """The value of `name` in `env_file`; a new random one is appended when it has none. Never overwrites."""
    text = env_file.read_text() if env_file.exists() else ""
    match = re.search(rf"^\s*{name}\s*=\s*['\"]?([^'\"\n]*)['\"]?\s*$", text, flags=re.MULTILINE)
    if match:
        return match.group(1)
    secret = secrets.token_hex(32)
    separator = "" if not text or text.endswith("\n") else "\n"
    descriptor = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "a") as handle:
        handle.write(f"{separator}{name}={secret}\n")
    print(f"Wrote a new random {name} to {env_file} ({why}).", file=sys.stderr)
    return secret


def curl_example(secret: str, url: str, body: str = EXAMPLE_BODY) -> str:
    signature = sign(secret.encode(), body.encode())
    return (
        f"curl -X POST {url}/deploy \\\n"
        f"  -H 'Content-Type: application/json' \\\n"
        f"  -H 'X-Hub-Signature-256: {signature}' \\\n"
        f"  -d '{body}'"
    )


def main() -> int:
    env_file = Path(".env")
    secret = ensure_secret(env_file)
    ensure_secret(env_file, "DEPLOY_READ_TOKEN", "deployctl history reads it from there")
    # During a rotation WEBHOOK_SECRET lists several, newest first: CI signs with the newest.
    newest = secret.split(",")[0].strip()
    if len(newest) < 32:
        print(f"WEBHOOK_SECRET in {env_file} is shorter than 32 characters: the API will refuse to start.")
        return 1
    host = os.environ.get("DEPLOY_HOST", "127.0.0.1")
    port = os.environ.get("DEPLOY_PORT", "9000")
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    print(f"\nDeploy the example service, once the API below is up, with:\n\n{curl_example(newest, url)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
