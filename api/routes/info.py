from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from api import __version__
from api.deps import get_inventory
from api.engines import EngineWatch
from api.inventory import Inventory

router = APIRouter()


@router.get("/")
def root() -> dict[str, Any]:
    return {
        "service": "Home Server Deployment API",
        "version": __version__,
        "status": "healthy",
        "endpoints": {"health": "/health", "deploy": "/deploy (POST)"},
    }


@router.get("/health", responses={503: {"description": "The inventory changed and is refused: no deploy runs"}})
def health(request: Request, inventory: Annotated[Inventory, Depends(get_inventory)]) -> JSONResponse:
    """The reference's fields, and whether the Docker engines this API deploys to answer (the engine watch's last
    check: `docker` is unreachable when one does not, unknown before the first check). An engine that does not answer
    leaves the API itself healthy: it still records, reconciles and answers."""
    compose_dirs = inventory.view().compose_dirs
    watch: EngineWatch = request.app.state.engines
    docker, engines = watch.health()
    body = {
        # Unhealthy while the inventory is refused (api.inventory.Inventory): the API could deploy nothing.
        "status": "healthy" if inventory.problem is None else "unhealthy",
        "timestamp": datetime.now().isoformat(),
        "compose_dir": compose_dirs[0] if len(compose_dirs) == 1 else list(compose_dirs),
        "docker": docker,
        "engines": engines,
    }
    return JSONResponse(body, status_code=200 if inventory.problem is None else 503)
