"""The allow-list, read from the same Ansible inventory the playbook uses, so the two never disagree."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible.vars.manager import VariableManager


@dataclass(frozen=True)
class InventoryView:
    services: tuple[str, ...]
    compose_dirs: tuple[str, ...]


def _newest_change(path: Path) -> float:
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    return max((candidate.stat().st_mtime_ns for candidate in paths if candidate.exists()), default=0)


def read_inventory(path: Path) -> InventoryView:
    """Every service some host allows (its `deploy_services` keys), and every host's compose directory."""
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[str(path)])
    variables = VariableManager(loader=loader, inventory=inventory)
    services: set[str] = set()
    compose_dirs: list[str] = []
    for host in inventory.get_hosts():
        host_vars = variables.get_vars(host=host)
        services.update(str(name) for name in (host_vars.get("deploy_services") or {}))
        if "deploy_compose_dir" in host_vars:
            compose_dir = Templar(loader=loader, variables=host_vars).template(host_vars["deploy_compose_dir"])
            compose_dirs.append(str(Path(str(compose_dir)).resolve()))
    return InventoryView(services=tuple(sorted(services)), compose_dirs=tuple(dict.fromkeys(compose_dirs)))


class Inventory:
    """The inventory, read again whenever one of its files changes."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._stamp: float | None = None
        self._view = InventoryView((), ())

    def view(self) -> InventoryView:
        with self._lock:
            stamp = _newest_change(self.path)
            if stamp != self._stamp:
                self._view = read_inventory(self.path)
                self._stamp = stamp
            return self._view
