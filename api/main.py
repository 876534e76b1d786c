"""The FastAPI app: `uvicorn api.main:app`, or `python -m api` for a clear message on bad settings."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import __version__
from api.deployer import Deployer
from api.inventory import Inventory
from api.routes import deploy, info
from api.settings import Settings, get_settings

LOG_FORMAT = "%(asctime)s [%(levelname)s] %(message)s"


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging()
        app.state.settings = settings or get_settings()
        app.state.inventory = Inventory(app.state.settings.deploy_inventory)
        app.state.inventory.view()
        app.state.deployer = Deployer(app.state.settings)
        yield
        app.state.deployer.shutting_down.set()

    app = FastAPI(title="Home Server Deployment API", version=__version__, lifespan=lifespan)
    app.include_router(info.router)
    app.include_router(deploy.router)
    return app


def configure_logging() -> None:
    """The reference's log format on stdout; a no-op where logging is configured already."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


app = create_app()
