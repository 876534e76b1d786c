"""The app's wall clock in a test's hands: create_app(settings, clock=Clock()), then move `now`."""

from __future__ import annotations

# 2027-01-15T08:00:00Z, a Friday: the app's clock when a test begins.
NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now
