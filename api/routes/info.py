from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends

from api import __version__
from api.deps import get_inventory
from api.inventory import Inventory

router = APIRouter()


@router.get("/")
def root() -> dict:
    return {
        "service": "Home Server Deployment API",
        "version": __version__,
        "status": "healthy",
        "endpoints": {"health": "/health", "deploy": "/deploy (POST)"},
    }


@router.get("/health")
def health(inventory: Annotated[Inventory, Depends(get_inventory)]) -> dict:
    compose_dirs = inventory.view().compose_dirs
    return {
        "status": "healthy",
        "timestamp": datetime.now().isoformat(),
        "compose_dir": compose_dirs[0] if len(compose_dirs) == 1 else list(compose_dirs),
    }
