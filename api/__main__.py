"""`python -m api`: check the settings, then serve the app with uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from api.inventory import Inventory, InventoryError
from api.logs import logging_config
from api.settings import get_settings


def main() -> int:
    try:
        settings = get_settings()
    except ValidationError as error:
        for problem in error.errors(include_input=False, include_url=False):
            name = ".".join(str(part) for part in problem["loc"]).upper()
            print(f"deploy API: refusing to start: {name}: {problem['msg']}", file=sys.stderr)
        return 2
    try:
        Inventory.of(settings).view()
    except InventoryError as error:
        print(f"deploy API: refusing to start: DEPLOY_INVENTORY: {error}", file=sys.stderr)
        return 2
    # Warnings become log lines too, so that every line has the chosen format.
    logging.captureWarnings(True)
    uvicorn.run(
        "api.main:app",
        host=settings.deploy_host,
        port=settings.deploy_port,
        log_config=logging_config(settings.log_format),
        # The client's address is ours to tell (DEPLOY_TRUSTED_PROXIES): uvicorn would believe X-Forwarded-For
        # from 127.0.0.1, where anyone on the host, or cloudflared passing on any header, connects from.
        proxy_headers=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
