"""`make run` helpers: a strong secret and read token in `.env` when there are none, and the commands that deploy the
example service (deployctl, or a curl that signs a timestamped body when it runs)."""

from __future__ import annotations

import os
import re
import secrets
import sys
from pathlib import Path

from api.settings import secret_weakness

EXAMPLE_SERVICE = "hello-world"


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


def deploy_commands(url: str, deployctl: str) -> str:
    """What to paste (in this directory, where .env is) to deploy the example: deployctl, and a curl that signs its
    body when it runs. Neither holds a signature: one printed here would stay valid for every later copy of the
    same body."""
    return (
        f"  {deployctl} deploy {EXAMPLE_SERVICE} --url {url}\n\n"
        "or with curl, signed with the secret in .env and the current time (a request is accepted once):\n\n"
        f'  BODY="{{\\"service\\":\\"{EXAMPLE_SERVICE}\\",\\"timestamp\\":$(date +%s)}}"\n'
        f"  curl -X POST {url}/deploy -H 'Content-Type: application/json' \\\n"
        f'    -H "X-Hub-Signature-256: $(printf %s "$BODY" | {deployctl} sign --value)" -d "$BODY"'
    )


def main() -> int:
    env_file = Path(".env")
    secret = ensure_secret(env_file)
    ensure_secret(env_file, "DEPLOY_READ_TOKEN", "deployctl history reads it from there")
    # During a rotation WEBHOOK_SECRET lists several, newest first: CI signs with the newest.
    newest = secret.split(",")[0].strip()
    weakness = secret_weakness(newest.encode())
    if weakness:
        print(f"WEBHOOK_SECRET in {env_file} {weakness}: the API will refuse to start.")
        return 1
    host = os.environ.get("DEPLOY_HOST", "127.0.0.1")
    port = os.environ.get("DEPLOY_PORT", "9000")
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    deployctl = Path(sys.executable).with_name("deployctl")
    shown = deployctl.relative_to(Path.cwd()) if deployctl.is_relative_to(Path.cwd()) else deployctl
    print(f"\nDeploy the example service, once the API below is up, with:\n\n{deploy_commands(url, str(shown))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
