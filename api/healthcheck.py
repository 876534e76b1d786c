"""`python -m api.healthcheck`: the container's HEALTHCHECK. Exits 0 when GET /health on DEPLOY_HOST:DEPLOY_PORT
answers 200, else 1 with the reason, which `docker inspect` shows. Reads only those two variables: the settings hold
secrets that a probe has no need of."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

UNSPECIFIED = ("", "0.0.0.0", "::")


def health_url(environ: dict[str, str]) -> str:
    """Where the API answers, from inside its own network namespace: an unspecified address is reached on loopback."""
    host = environ.get("DEPLOY_HOST", "127.0.0.1")
    host = "127.0.0.1" if host in UNSPECIFIED else host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{environ.get('DEPLOY_PORT', '9000')}/health"


def main() -> int:
    url = health_url(dict(os.environ))
    try:
        with urllib.request.urlopen(url, timeout=4) as answer:
            print(f"{url}: {answer.status}")
            return 0
    except urllib.error.HTTPError as error:
        print(f"{url}: {error.code} {error.read(300).decode(errors='replace')}")
    except (OSError, ValueError) as error:
        print(f"{url}: {error}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
