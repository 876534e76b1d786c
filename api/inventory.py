"""The allow-list, read from the same Ansible inventory the playbook uses, so the two never disagree.

Every host has its own `deploy_services`; a request is allowed only if each host it reaches allows it: the service,
the image, and the secret that signed it (an intersection over the hosts, never a union).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible.vars.manager import VariableManager

from api.schedules import Schedule, Window, parse_schedule, parse_window, windows_open
from api.settings import DEFAULT_SIGNER, SECRET_ENV, Settings
from module_utils import deploy_rules
from module_utils.deploy_rules import RECREATE, allows_image

log = logging.getLogger("deploy")


class InventoryError(ValueError):
    """An inventory the API cannot deploy from: it names the file, host, service and setting at fault."""


@dataclass(frozen=True)
class ServicePolicy:
    """Who may deploy a service on one host, and what: its `deploy_services` entry there."""

    # The WEBHOOK_SECRET_<NAME> variables whose secrets sign for it; empty: WEBHOOK_SECRET does.
    secret_envs: tuple[str, ...] = ()
    # The image repositories it may run; None: any (as the compose file and the request say).
    image_repositories: tuple[str, ...] | None = None
    # How its container is replaced (deploy_rules.STRATEGIES), and what is wrong with its deploy settings, if anything
    # (deploy_rules.settings_problem): a deploy of it is refused until the inventory is fixed.
    strategy: str = RECREATE
    problem: str = ""
    # Its recurring deploy and its deploy window (api/schedules.py), if any, and what is wrong with them: the
    # inventory is refused then.
    schedule: Schedule | None = None
    window: Window | None = None
    timing_problem: str = ""

    def signs(self, signers: Collection[str]) -> bool:
        """Whether one of the secret sets that signed a request may deploy the service."""
        return bool(set(signers) & (set(self.secret_envs) or {DEFAULT_SIGNER}))

    def allows_image(self, image: str) -> bool:
        """The playbook's own rule (deploy_rules.allows_image), on this entry's repositories."""
        return allows_image({"image_repository": list(self.image_repositories or ())}, image)


@dataclass(frozen=True)
class Environment:
    """The hosts of an inventory group (or of the whole inventory), each with the services it allows."""

    hosts: tuple[str, ...]
    # host -> service -> the policy of its entry on that host.
    host_services: dict[str, dict[str, ServicePolicy]] = field(default_factory=dict)

    @property
    def services(self) -> tuple[str, ...]:
        """The services every host of the environment allows: what a request can deploy there."""
        if not self.hosts:
            return ()
        common = set.intersection(*(set(self.host_services.get(host, {})) for host in self.hosts))
        return tuple(sorted(common))

    def policies(self, service: str) -> dict[str, ServicePolicy]:
        """The service's policy on each host that allows it."""
        return {host: services[service] for host in self.hosts if service in (services := self.host_services[host])}

    def signs(self, service: str, signers: Collection[str]) -> bool:
        """Whether the signers may deploy `service` on every host of the environment that allows it (WEBHOOK_SECRET
        alone when none does, as for any service without a secret of its own)."""
        policies = self.policies(service).values() or [ServicePolicy()]
        return all(policy.signs(signers) for policy in policies)

    def deployable(self, service: str, signers: Collection[str]) -> bool:
        """Every host allows the service, and the signers may deploy it on each."""
        return service in self.services and self.signs(service, signers)

    def services_for(self, signers: Collection[str]) -> tuple[str, ...]:
        """The services the signers may deploy here: the allow-list as far as they may know it."""
        return tuple(service for service in self.services if self.signs(service, signers))

    def strategy(self, service: str) -> str:
        """The service's strategy where every host that allows it agrees; else recreate's progress is followed."""
        strategies = {policy.strategy for policy in self.policies(service).values()}
        return strategies.pop() if len(strategies) == 1 else RECREATE

    def settings_problems(self, service: str) -> tuple[str, ...]:
        """What is wrong with the service's deploy settings, on each host of the environment where something is."""
        return tuple(
            f"{host}: {policy.problem}" if len(self.hosts) > 1 else policy.problem
            for host, policy in self.policies(service).items()
            if policy.problem
        )

    def windows(self, service: str) -> tuple[Window, ...]:
        """The deploy windows of the service on the hosts of the environment, each once."""
        found = (policy.window for policy in self.policies(service).values() if policy.window is not None)
        return tuple(dict.fromkeys(found))

    def window_text(self, service: str) -> str:
        """The service's deploy windows as a refusal or a listing names them; empty when it has none."""
        return "; ".join(map(str, self.windows(service)))

    def window_opens(self, service: str, at: float) -> float | None:
        """None when a deploy of the service may start at `at` on every host; else when it next may (ValueError when
        the hosts' windows share no minute)."""
        return windows_open(self.windows(service), at)

    def hosts_refusing_image(self, service: str, image: str) -> tuple[str, ...]:
        return tuple(host for host, policy in self.policies(service).items() if not policy.allows_image(image))

    def image_repositories(self, service: str) -> tuple[str, ...]:
        """The repositories every host that pins the service's images allows."""
        policies = self.policies(service).values()
        pinned = [set(policy.image_repositories) for policy in policies if policy.image_repositories]
        return tuple(sorted(set.intersection(*pinned))) if pinned else ()


@dataclass(frozen=True)
class InventoryView:
    # Every host of the inventory, and the services they allow: what a request without an environment reaches.
    everywhere: Environment
    compose_dirs: tuple[str, ...]
    # Every group of the inventory (but `all` and `ungrouped`): an environment a request can name.
    environments: dict[str, Environment] = field(default_factory=dict)

    @property
    def services(self) -> tuple[str, ...]:
        """Every service some host allows."""
        return tuple(sorted({service for services in self.everywhere.host_services.values() for service in services}))

    def environment(self, name: str | None) -> Environment:
        """A named environment, or every host of the inventory for None. KeyError for an unknown name."""
        return self.everywhere if name is None else self.environments[name]

    def reached(self, name: str | None) -> Environment:
        """The hosts a deploy to environment `name` reached: its group, or every host for None or a group gone
        from the inventory since."""
        return self.environments.get(name or "", self.everywhere)

    def environments_for(self, service: str, signers: Collection[str]) -> tuple[str, ...]:
        """The environments where the signers may deploy `service`."""
        return tuple(name for name, group in self.environments.items() if group.deployable(service, signers))

    def environments_open_to(self, signers: Collection[str]) -> tuple[str, ...]:
        """The environments where the signers may deploy something."""
        return tuple(name for name, environment in self.environments.items() if environment.services_for(signers))


def _names(value: object) -> list[str]:
    """A string or a list of strings, as a list."""
    if value is None or value == "":
        return []
    return [str(item) for item in value] if isinstance(value, list | tuple) else [str(value)]


@dataclass(frozen=True)
class Timing:
    """What a schedule or a window that says nothing more is read with: DEPLOY_SCHEDULE_TIMEZONE, and
    DEPLOY_WATCH_INTERVAL for a watch without cron."""

    timezone: str = "UTC"
    watch_interval: int = 300


def _policy(service: str, entry: dict[str, Any], host_window: Any, timing: Timing) -> ServicePolicy:
    repositories = deploy_rules.repositories(entry)
    problem = deploy_rules.settings_problem(service, entry)
    strategy = str(entry.get("strategy") or RECREATE) if not problem else RECREATE
    schedule, window, timing_problem = None, None, ""
    try:
        if entry.get("schedule") is not None:
            schedule = parse_schedule(entry["schedule"], timing.timezone, timing.watch_interval)
            if schedule.watch and entry.get("pull") is False:
                raise ValueError("schedule: watch needs pulls, and the service has pull: false")
        # The service's own window, else its host's (or group's).
        window_value = entry.get("deploy_window", host_window)
        if window_value is not None:
            window = parse_window(window_value, timing.timezone)
    except ValueError as error:
        timing_problem = str(error)
    return ServicePolicy(
        tuple(sorted(set(_names(entry.get("secret_env"))))),
        tuple(sorted(set(repositories))) or None,
        strategy,
        problem,
        schedule,
        window,
        timing_problem,
    )


def _newest_change(path: Path) -> float:
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    return max((candidate.stat().st_mtime_ns for candidate in paths if candidate.exists()), default=0)


def secret_env_problems(view: InventoryView, known: Collection[str]) -> list[str]:
    """What is wrong with the secret_env names of the inventory: a name that is no WEBHOOK_SECRET_<NAME>, or one
    that is not set in the API's environment (nobody could deploy the service)."""
    problems = []
    for host, services in view.everywhere.host_services.items():
        for service, policy in services.items():
            for name in policy.secret_envs:
                if name.endswith("_FILE") and SECRET_ENV.fullmatch(name.removesuffix("_FILE")):
                    problems.append(
                        f"host {host}, service {service!r}: secret_env names the variable, "
                        f"{name.removesuffix('_FILE')}, not {name}, which names its file"
                    )
                elif not SECRET_ENV.fullmatch(name):
                    problems.append(
                        f"host {host}, service {service!r}: secret_env {name!r} is not a WEBHOOK_SECRET_<NAME> "
                        "variable (capital letters, digits and _)"
                    )
                elif name not in known:
                    problems.append(
                        f"host {host}, service {service!r}: secret_env {name} is not set in the API's environment"
                    )
    return problems


@dataclass(frozen=True)
class ServiceSchedule:
    """A service's recurring deploy, the hosts whose entries hold it, and the secret sets a tick signs with: the
    service's secret_env names on those hosts, or WEBHOOK_SECRET where it has none."""

    service: str
    schedule: Schedule
    hosts: tuple[str, ...]
    signers: frozenset[str]


def service_schedules(view: InventoryView) -> dict[str, ServiceSchedule]:
    """Every service's recurring deploy. Where the hosts disagree (schedule_problems refuses such an inventory), the
    first host's counts."""
    found: dict[str, ServiceSchedule] = {}
    for host, services in view.everywhere.host_services.items():
        for service, policy in services.items():
            if policy.schedule is None:
                continue
            signers = frozenset(policy.secret_envs or (DEFAULT_SIGNER,))
            known = found.get(service)
            if known is None:
                found[service] = ServiceSchedule(service, policy.schedule, (host,), signers)
            elif known.schedule == policy.schedule:
                found[service] = ServiceSchedule(service, known.schedule, (*known.hosts, host), known.signers | signers)
    return dict(sorted(found.items()))


def schedule_problems(view: InventoryView) -> list[str]:
    """What is wrong with the schedules and windows of the inventory: one that does not parse, or a service whose
    hosts hold different schedules (one tick deploys the service once, to the hosts of the default environment)."""
    problems = []
    first: dict[str, tuple[str, Schedule]] = {}
    for host, services in view.everywhere.host_services.items():
        for service, policy in services.items():
            if policy.timing_problem:
                problems.append(f"host {host}, service {service!r}: {policy.timing_problem}")
            elif policy.schedule is not None:
                other_host, schedule = first.setdefault(service, (host, policy.schedule))
                if schedule != policy.schedule:
                    problems.append(
                        f"host {host}, service {service!r}: schedule differs from host {other_host}'s; a service has "
                        "one schedule"
                    )
    return problems


def read_inventory(path: Path, timing: Timing = Timing()) -> InventoryView:
    """Every host's services (its `deploy_services`) with their policies, and every host's compose directory."""
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[str(path)])
    variables = VariableManager(loader=loader, inventory=inventory)
    host_services: dict[str, dict[str, ServicePolicy]] = {}
    compose_dirs: list[str] = []
    for host in inventory.get_hosts():
        host_vars = variables.get_vars(host=host)
        services = host_vars.get("deploy_services") or {}
        host_services[host.name] = {
            str(name): _policy(
                str(name), entry if isinstance(entry, dict) else {}, host_vars.get("deploy_window"), timing
            )
            for name, entry in services.items()
        }
        if "deploy_compose_dir" in host_vars:
            compose_dir = Templar(loader=loader, variables=host_vars).template(host_vars["deploy_compose_dir"])
            compose_dirs.append(str(Path(str(compose_dir)).resolve()))

    def environment(hosts: Iterable[str]) -> Environment:
        hosts = tuple(hosts)
        return Environment(hosts, {host: host_services.get(host, {}) for host in hosts})

    everywhere = environment(host_services)
    environments = {
        name: environment(host.name for host in group.get_hosts())
        for name, group in sorted(inventory.groups.items())
        if name not in ("all", "ungrouped")
    }
    return InventoryView(everywhere, tuple(dict.fromkeys(compose_dirs)), environments)


class Inventory:
    """The inventory, read again whenever one of its files changes.

    An inventory whose secret_env names a variable the API does not hold, or with a schedule that is wrong, is refused:
    at start (InventoryError), and after a change (`problem` says why, the last good view is kept for reading, and no
    deploy runs until it is fixed), so that a typo can neither leave a service open to WEBHOOK_SECRET nor fail silently.
    """

    def __init__(self, path: Path, secret_names: Collection[str] = (), timing: Timing = Timing()):
        self.path = path
        self.secret_names = frozenset(secret_names)
        self.timing = timing
        self._lock = threading.Lock()
        self._stamp: float | None = None
        self._view: InventoryView | None = None
        self.problem: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> Inventory:
        """DEPLOY_INVENTORY, with the secrets, the time zone and the watch interval of the API's settings."""
        timing = Timing(settings.deploy_schedule_timezone, settings.deploy_watch_interval)
        return cls(settings.deploy_inventory, settings.service_secrets, timing)

    def view(self) -> InventoryView:
        """The newest valid view; InventoryError when none was ever valid."""
        with self._lock:
            stamp = _newest_change(self.path)
            if stamp != self._stamp:
                self._stamp = stamp
                self._reload()
            if self._view is None:
                raise InventoryError(self.problem or f"{self.path}: not read")
            return self._view

    def _reload(self) -> None:
        view = read_inventory(self.path, self.timing)
        problems = secret_env_problems(view, self.secret_names) + schedule_problems(view)
        if problems:
            self.problem = f"{self.path}: " + "; ".join(problems)
            if self._view is not None:
                log.error("Inventory changed and refused, no deploy runs until it is fixed: %s", self.problem)
            return
        self._view, self.problem = view, None
