"""The tests here use tests/unit's fake docker CLI (fakedocker.py), whatever directory pytest starts in."""

from __future__ import annotations

import sys
from pathlib import Path

UNIT_TESTS = str(Path(__file__).resolve().parents[1])

if UNIT_TESTS not in sys.path:
    sys.path.insert(0, UNIT_TESTS)
