"""The deploy role's filters: the rules of module_utils/deploy_rules.py, for the role's tasks on the controller.

Ansible gives the configured module_utils directories to modules only, so the rules are loaded here from the first of
them that holds deploy_rules.py: the file the deploy module and the API use, never a copy.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

from ansible import constants
from ansible.errors import AnsibleFilterError


def _rules() -> ModuleType:
    for directory in constants.DEFAULT_MODULE_UTILS_PATH or []:
        path = os.path.join(os.path.expanduser(directory), "deploy_rules.py")
        if os.path.isfile(path):
            spec = importlib.util.spec_from_file_location("deploy_rules", path)
            if spec and spec.loader:
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                return module
    raise AnsibleFilterError(
        "deploy_rules.py is in none of the module_utils directories "
        f"({', '.join(constants.DEFAULT_MODULE_UTILS_PATH or []) or 'none set'}): set module_utils as ansible.cfg does"
    )


RULES = _rules()


def latest_state(results: list) -> dict:
    """The state of the newest round trip that ran, from registered results newest first (a skipped one has none)."""
    return next((result["state"] for result in results if isinstance(result, dict) and "state" in result), {})


def stopped_hosts(hosts: list, hostvars: dict) -> list:
    """Of these hosts, those whose published record is not a success (or which have none): where a rollout stops."""
    return [host for host in hosts if (hostvars[host].get("deploy_result") or {}).get("outcome") != "succeeded"]


class FilterModule:
    def filters(self) -> dict:
        return {
            "deploy_refusal": lambda action, service, services, image: RULES.refusal(action, service, services, image),
            "deploy_settings": RULES.service_settings,
            "deploy_round_trips": lambda action, strategy="recreate": [
                list(trip) for trip in RULES.round_trips(action, strategy)
            ],
            "deploy_latest_state": latest_state,
            "deploy_failed_outside": RULES.failed_outside,
            "deploy_next_steps": RULES.next_steps,
            "deploy_record": RULES.host_record,
            "deploy_not_reached": lambda stopped_at: {
                "not_reached": True,
                "error": f"Not deployed: the rollout stopped at {stopped_at}",
            },
            "deploy_failure": RULES.failure_message,
            "deploy_stopped_hosts": stopped_hosts,
        }
