"""The FastAPI app: `uvicorn api.main:app`, or `python -m api` for a clear message on bad settings."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from fastapi import FastAPI

from api import __version__
from api.deployer import Deployer
from api.history import History
from api.inventory import Inventory
from api.routes import deploy, deployments, info
from api.settings import Settings, get_settings

LOG_FORMAT = "%(asctime)s [%(levelname)s] %(message)s"
# On shutdown, running deploys may finish within the grace; then they are stopped and their records written.
SHUTDOWN_GRACE_SECONDS = 20
SHUTDOWN_STOP_SECONDS = 10


@contextmanager
def instance_lock(state_dir: Path) -> Iterator[None]:
    """One API per DEPLOY_STATE_DIR: its per-service locks and crash recovery assume no other process deploys."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(state_dir / "api.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"Another deployment API is running with DEPLOY_STATE_DIR={state_dir}") from None
        yield
    finally:
        os.close(descriptor)


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging()
        app.state.settings = settings or get_settings()
        app.state.inventory = Inventory(app.state.settings.deploy_inventory)
        app.state.inventory.view()
        with instance_lock(app.state.settings.deploy_state_dir):
            history = History(app.state.settings.history_file)
            app.state.deployer = deployer = Deployer(app.state.settings, history)
            interrupted = deployer.recover()
            inspection = asyncio.create_task(deployer.inspect_interrupted(interrupted))
            yield
            await deployer.drain(grace=SHUTDOWN_GRACE_SECONDS, timeout=SHUTDOWN_STOP_SECONDS)
            await asyncio.wait([inspection], timeout=SHUTDOWN_STOP_SECONDS)
            history.close()

    app = FastAPI(title="Home Server Deployment API", version=__version__, lifespan=lifespan)
    app.include_router(info.router)
    app.include_router(deploy.router)
    app.include_router(deployments.router)
    return app


def configure_logging() -> None:
    """The reference's log format on stdout; a no-op where logging is configured already."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


app = create_app()
