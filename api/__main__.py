"""`python -m api`: check the settings, then serve the app with uvicorn."""

from __future__ import annotations

import copy
import sys

import uvicorn
from pydantic import ValidationError

from api.main import LOG_FORMAT, configure_logging
from api.settings import get_settings


def main() -> int:
    try:
        settings = get_settings()
    except ValidationError as error:
        for problem in error.errors(include_input=False, include_url=False):
            name = ".".join(str(part) for part in problem["loc"]).upper()
            print(f"deploy API: refusing to start: {name}: {problem['msg']}", file=sys.stderr)
        return 2
    configure_logging()
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["formatters"]["default"]["fmt"] = LOG_FORMAT
    log_config["formatters"]["access"]["fmt"] = LOG_FORMAT.replace(
        "%(message)s", '%(client_addr)s "%(request_line)s" %(status_code)s'
    )
    uvicorn.run("api.main:app", host=settings.deploy_host, port=settings.deploy_port, log_config=log_config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
