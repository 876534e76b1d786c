"""The FastAPI app: `uvicorn api.main:app`, or `python -m api` for a clear message on bad settings."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from api import __version__, logs
from api.deployer import Deployer
from api.engines import EngineWatch
from api.history import History
from api.inventory import Inventory
from api.metrics import Metrics
from api.notify import Notifier
from api.reconciler import Reconciler
from api.recovery import Recovery
from api.routes import deploy, deployments, info
from api.routes import metrics as metrics_route
from api.scheduler import Scheduler
from api.security import RateLimits
from api.settings import Settings, get_settings

# On shutdown, running deploys may finish within the grace; then they are stopped and their records written.
SHUTDOWN_GRACE_SECONDS = 20
SHUTDOWN_STOP_SECONDS = 10
# Then queued notifications have this long to go out.
SHUTDOWN_NOTIFY_SECONDS = 5


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


# The methods a 405 may list.
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


async def method_not_allowed(request: Request, refusal: Exception) -> JSONResponse:
    """405 with every method the path takes: Starlette lists those of the first route that matches the path only, and
    GET and DELETE /deployments/{id} are routes of their own."""
    methods = [
        method
        for method in HTTP_METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in request.app.routes)
    ]
    detail = refusal.detail if isinstance(refusal, HTTPException) else "Method Not Allowed"
    return JSONResponse({"detail": detail}, status_code=405, headers={"Allow": ", ".join(methods)})


def create_app(settings: Settings | None = None, clock: Callable[[], float] = time.time) -> FastAPI:
    """The app; `clock` is the wall clock that requests' timestamps and planned deploys' times are held against."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = current = settings or get_settings()
        app.state.clock = clock
        logs.configure(current.log_format)
        app.state.inventory = inventory = Inventory.of(current)
        inventory.view()
        with instance_lock(current.deploy_state_dir):
            history = History(current.history_file, current.deploy_history_retention)
            history.prune()
            app.state.rate_limits = rate_limits = RateLimits(current)
            app.state.deployer = deployer = Deployer(current, history)
            app.state.engines = engines = EngineWatch(
                current, deployer, hosts=lambda: inventory.view().everywhere.hosts
            )
            app.state.scheduler = scheduler = Scheduler(current, deployer, inventory, rate_limits, clock)
            app.state.metrics = metrics = Metrics(
                history,
                services=lambda: inventory.view().services,
                engines=engines.reachability,
                next_runs=lambda: {entry.service: tick.timestamp() for entry, tick, _ in scheduler.next_runs()},
            )
            urls = current.deploy_notify_urls.get_secret_value() if current.deploy_notify_urls else None
            notifier = Notifier(urls, current.deploy_notify_events, on_result=metrics.notification)
            metrics.know_notification_schemes(target.scheme for target in notifier.targets)
            deployer.on_finished += [metrics.observe, notifier.submit]
            notifier.start()
            recovery = Recovery(
                deployer,
                on_engine=engines.heard_from_status,
                inventory_hosts=lambda: inventory.view().everywhere.hosts,
            )
            reconciler = Reconciler(recovery, current.deploy_reconcile_interval)
            deployer.on_awaiting = reconciler.add
            scheduler.on_skip = metrics.skip
            engines.on_answer = reconciler.host_answers
            # Recovery first: a planned deploy a crash left `running` is interrupted, never started again.
            reconciler.start(recovery.recover())
            scheduler.start()
            engines.start()
            yield
            # No planned deploy starts while the running ones drain.
            await scheduler.stop(SHUTDOWN_STOP_SECONDS)
            # No reconciliation check starts any more; those under way end with the deploys (a rollback is one).
            checking = reconciler.close()
            await deployer.drain(grace=SHUTDOWN_GRACE_SECONDS, timeout=SHUTDOWN_STOP_SECONDS, others=checking)
            await reconciler.stop(SHUTDOWN_STOP_SECONDS)
            await engines.stop(SHUTDOWN_STOP_SECONDS)
            await asyncio.to_thread(notifier.close, SHUTDOWN_NOTIFY_SECONDS)
            history.close()

    app = FastAPI(
        title="Home Server Deployment API",
        version=__version__,
        lifespan=lifespan,
        exception_handlers={405: method_not_allowed},
    )
    app.include_router(info.router)
    app.include_router(deploy.router)
    app.include_router(deployments.router)
    app.include_router(metrics_route.router)
    return app


app = create_app()
