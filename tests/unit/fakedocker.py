"""A docker CLI for the steps' unit tests: answers from a table, records every command."""

from __future__ import annotations

from collections.abc import Callable

from ansible.module_utils.deploy_docker import Docker

Answer = tuple[int, str, str] | Callable[[tuple[str, ...]], tuple[int, str, str]]


class FakeDocker(Docker):
    """`run` answers with the entry whose key the command's arguments start with (the longest such key wins);
    a command no entry answers fails the test. `output`, the real one, reads those answers."""

    binary = "docker"

    def __init__(self, answers: dict[tuple[str, ...], Answer]):
        super().__init__(module=None)
        self.answers = answers
        self.calls: list[tuple[str, ...]] = []
        self.warnings: list[str] = []

    def run(self, *args: str, cwd: str | None = None) -> tuple[int, str, str]:
        self.calls.append(args)
        keys = [key for key in self.answers if args[: len(key)] == key]
        if not keys:
            raise AssertionError(f"unexpected command: docker {' '.join(args)}")
        answer = self.answers[max(keys, key=len)]
        return answer(args) if callable(answer) else answer

    def run_argv(self, argv: list[str], cwd: str | None = None) -> tuple[int, str, str]:
        return self.run(*argv[1:], cwd=cwd)

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def ran(self, *prefix: str) -> list[tuple[str, ...]]:
        """The commands run that start with `prefix`."""
        return [call for call in self.calls if call[: len(prefix)] == prefix]
