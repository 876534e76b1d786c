"""The deploy's shared module code is imported as Ansible imports it, `ansible.module_utils.<name>`, from the
repository's module_utils/ (ansible.cfg's `module_utils`)."""

from __future__ import annotations

from pathlib import Path

import ansible.module_utils

MODULE_UTILS = str(Path(__file__).resolve().parents[2] / "module_utils")

if MODULE_UTILS not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(MODULE_UTILS)
