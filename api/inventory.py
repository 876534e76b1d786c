"""The allow-list, read from the same Ansible inventory the playbook uses, so the two never disagree."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible.vars.manager import VariableManager


@dataclass(frozen=True)
class ServicePolicy:
    """Who may deploy a service, and what: from its `deploy_services` entries on every host."""

    # The WEBHOOK_SECRET_<NAME> variables whose secrets sign for it; empty: WEBHOOK_SECRET does.
    secret_envs: tuple[str, ...] = ()
    # The image repositories it may run; None: any (as the compose file and the request say).
    image_repositories: tuple[str, ...] | None = None

    def signs(self, signers: frozenset[str]) -> bool:
        """Whether one of the secret sets that signed a request may deploy the service."""
        return bool(signers & (set(self.secret_envs) or {"WEBHOOK_SECRET"}))


@dataclass(frozen=True)
class Environment:
    """The hosts of an inventory group, and the services they allow."""

    hosts: tuple[str, ...]
    services: tuple[str, ...]
    policies: dict[str, ServicePolicy] = field(default_factory=dict)

    def policy(self, service: str) -> ServicePolicy:
        return self.policies.get(service, ServicePolicy())


@dataclass(frozen=True)
class InventoryView:
    # Every host of the inventory, and the services they allow: what a request without an environment reaches.
    everywhere: Environment
    compose_dirs: tuple[str, ...]
    # Every group of the inventory (but `all` and `ungrouped`): an environment a request can name.
    environments: dict[str, Environment] = field(default_factory=dict)

    @property
    def services(self) -> tuple[str, ...]:
        return self.everywhere.services

    def policy(self, service: str, environment: str | None = None) -> ServicePolicy:
        """The service's policy in an environment; across every host for None or an environment gone from the
        inventory."""
        return self.environments.get(environment or "", self.everywhere).policy(service)

    def environment(self, name: str | None) -> Environment:
        """A named environment, or every host of the inventory for None. KeyError for an unknown name."""
        return self.everywhere if name is None else self.environments[name]


def _names(value: object) -> list[str]:
    """A string or a list of strings, as a list."""
    if value is None or value == "":
        return []
    return [str(item) for item in value] if isinstance(value, list | tuple) else [str(value)]


def _policies(entries: dict[str, list[dict]]) -> dict[str, ServicePolicy]:
    """One policy per service. Hosts that disagree: any secret one of them names signs, and the repositories
    are those of all hosts (each host's playbook run still refuses what its own entry does not allow)."""
    policies = {}
    for service, host_entries in entries.items():
        secret_envs = sorted({name for entry in host_entries for name in _names(entry.get("secret_env"))})
        repositories = [_names(entry.get("image_repository")) for entry in host_entries]
        pinned = None if any(not names for names in repositories) else tuple(sorted(set().union(*repositories)))
        policies[service] = ServicePolicy(tuple(secret_envs), pinned)
    return policies


def _newest_change(path: Path) -> float:
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    return max((candidate.stat().st_mtime_ns for candidate in paths if candidate.exists()), default=0)


def read_inventory(path: Path) -> InventoryView:
    """Every service some host allows (its `deploy_services` keys), and every host's compose directory."""
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[str(path)])
    variables = VariableManager(loader=loader, inventory=inventory)
    host_entries: dict[str, dict[str, dict]] = {}
    compose_dirs: list[str] = []
    for host in inventory.get_hosts():
        host_vars = variables.get_vars(host=host)
        services = host_vars.get("deploy_services") or {}
        host_entries[host.name] = {
            str(name): entry if isinstance(entry, dict) else {} for name, entry in services.items()
        }
        if "deploy_compose_dir" in host_vars:
            compose_dir = Templar(loader=loader, variables=host_vars).template(host_vars["deploy_compose_dir"])
            compose_dirs.append(str(Path(str(compose_dir)).resolve()))

    def environment(hosts: list[str]) -> Environment:
        entries: dict[str, list[dict]] = {}
        for host in hosts:
            for name, entry in host_entries.get(host, {}).items():
                entries.setdefault(name, []).append(entry)
        return Environment(tuple(hosts), tuple(sorted(entries)), _policies(entries))

    everywhere = environment(list(host_entries))
    environments = {
        name: environment([host.name for host in group.get_hosts()])
        for name, group in sorted(inventory.groups.items())
        if name not in ("all", "ungrouped")
    }
    return InventoryView(everywhere, tuple(dict.fromkeys(compose_dirs)), environments)


class Inventory:
    """The inventory, read again whenever one of its files changes."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._stamp: float | None = None
        self._view = InventoryView(Environment((), ()), ())

    def view(self) -> InventoryView:
        with self._lock:
            stamp = _newest_change(self.path)
            if stamp != self._stamp:
                self._view = read_inventory(self.path)
                self._stamp = stamp
            return self._view
