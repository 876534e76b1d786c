"""Extra vars as the playbook receives them: any request text, loaded back by Ansible's own loader exactly as it was
validated, and no string of it a template to Ansible; and the environment a run gets, which holds none of the API's
secrets."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, is_trusted_as_template, trust_as_template
from hypothesis import given, settings
from hypothesis import strategies as st

from api.models import DeployRequest
from api.runner import INHERITED_VARIABLES, deploy_extravars, run_playbook, runner_environment, unsafe_extravars

UNSAFE = "!unsafe"
STR = "tag:yaml.org,2002:str"
# Request text that once broke the extra vars, or could: characters YAML escapes or refuses raw, line breaks YAML
# knows and JSON does not, templates, what reads as YAML syntax, and what YAML reads as another type unless quoted.
TEXTS = {
    "emoji": "\U0001f680 release \U0001f389",
    "line separator": "one\u2028two",
    "paragraph separator": "one\u2029two",
    "next line (NEL)": "one\x85two",
    "delete": "one\x7ftwo",
    "byte order mark": "\ufeffcommit",
    "C0 controls": "".join(chr(code) for code in range(0x20)),
    "C1 controls": "".join(chr(code) for code in range(0x80, 0xA0)),
    "private use and noncharacters": "\ue000\uf8ff\ufdd0\ufffe\uffff\U0010ffff",
    "jinja": "{{ lookup('pipe','id') }}",
    "jinja block": "{% for x in range(3) %}{{ x }}{% endfor %}",
    "python tag": "!!python/object/apply:os.system ['id']",
    "alias": "*alias",
    "anchor": "&anchor value",
    "mapping": "key: value",
    "sequence item": "- item",
    "quotes and backslashes": "'\"\\ \\n \\u0041",
    "unsafe tag": '!unsafe "x"',
    "document markers": "---\n...\n",
    "comment": "# not a comment",
    "flow": "{a: [b, c]}",
    "merge key": "<<",
    "spaces": "  leading and trailing  ",
    "long line": "word " * 2000,
    "empty": "",
    "yes": "yes",
    "off": "off",
    "null": "null",
    "tilde": "~",
    "integer": "1234567",
    "hexadecimal": "0x1F",
    "octal": "0o17",
    "sexagesimal": "1:30",
    "float": "1.5",
    "exponent": "1e3",
    "infinity": ".inf",
    "date": "2025-01-01",
}


def ansible_loads(text: str) -> Any:
    """`text` as ansible-playbook loads an extra vars file (`-e @file`): trusted as templates, like any such file,
    then from_yaml (JSON first, else Ansible's YAML loader)."""
    return DataLoader().load(trust_as_template(text))


def value_nodes(node: yaml.Node) -> list[yaml.Node]:
    """Every node of a composed document that is no mapping key."""
    if isinstance(node, yaml.MappingNode):
        return [node] + [inner for _, value in node.value for inner in value_nodes(value)]
    if isinstance(node, yaml.SequenceNode):
        return [node] + [inner for item in node.value for inner in value_nodes(item)]
    return [node]


def strings_in(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [text for item in value.values() for text in strings_in(item)]
    if isinstance(value, list | tuple):
        return [text for item in value for text in strings_in(item)]
    return [value] if isinstance(value, str) else []


def check_written(extravars: dict[str, Any]) -> None:
    """Loaded back by Ansible as it was, no string of it a template for Ansible; in the YAML, the top mapping is
    tagged !unsafe and every string, and only those, a double-quoted scalar (a string whatever it says)."""
    text = unsafe_extravars(extravars)

    loaded = ansible_loads(text)
    assert loaded == extravars
    assert strings_in(loaded) == strings_in(extravars)
    assert not [value for value in strings_in(loaded) if is_trusted_as_template(value)]
    document = yaml.compose(text, Loader=yaml.SafeLoader)
    assert document.tag == UNSAFE
    nodes = value_nodes(document)
    assert [node.value for node in nodes if node.tag == STR] == strings_in(extravars)
    assert all(node.style == '"' for node in nodes if node.tag == STR)


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_request_text_is_loaded_back_by_ansible_as_it_was_and_unsafe(text):
    request = DeployRequest(service="portal", repository=text[:256], commit=text[:128], message=text[:4096])
    extravars = deploy_extravars("20250101T000000-abcdef01", request)

    check_written(extravars)
    assert ansible_loads(unsafe_extravars(extravars))["deploy_request"]["message"] == text[:4096]


def test_settings_stay_plain_yaml_values_and_keys_plain_names():
    extravars = {
        "service": "portal",
        "deploy_environment": "staging",
        "deploy_batches": [1, "100%"],
        "deploy_rollback_updated": True,
        "deploy_request": {"id": "x", "repository": None, "commit": None, "message": None},
    }
    document = yaml.compose(unsafe_extravars(extravars), Loader=yaml.SafeLoader)

    check_written(extravars)
    assert [(key.tag, key.value, key.style) for key, _ in document.value] == [(STR, name, None) for name in extravars]
    values = {key.value: value for key, value in document.value}
    assert [(node.tag, node.value) for node in values["deploy_batches"].value] == [
        ("tag:yaml.org,2002:int", "1"),
        (STR, "100%"),
    ]
    assert values["deploy_rollback_updated"].tag == "tag:yaml.org,2002:bool"
    assert [node.tag for _, node in values["deploy_request"].value] == [STR] + ["tag:yaml.org,2002:null"] * 3


def test_a_template_in_request_text_is_never_rendered_by_ansible(tmp_path):
    """As ansible-playbook loads `-e @env/extravars`, then renders variables: every string comes back as text, at any
    depth, where the same file without the tag renders."""
    extravars = {"message": "{{ 6 * 7 }}", "steps": ["{{ 1 + 1 }}"], "request": {"commit": "{{ 2 + 2 }}"}}
    written = tmp_path / "extravars"
    written.write_text(unsafe_extravars(extravars), encoding="utf-8")
    untagged = tmp_path / "untagged"
    untagged.write_text(unsafe_extravars(extravars).removeprefix(f"{UNSAFE}\n"), encoding="utf-8")

    def rendered(path: Path) -> dict[str, Any]:
        loader = DataLoader()
        variables = loader.load_from_file(str(path), trusted_as_template=True)
        templar = Templar(loader=loader, variables=variables)
        return {name: templar.template(trust_as_template(f"{{{{ {name} }}}}")) for name in extravars}

    assert rendered(written) == extravars
    assert rendered(untagged) == {"message": 42, "steps": [2], "request": {"commit": 4}}


def test_any_str_is_written_as_yaml_a_loader_takes_even_a_lone_surrogate():
    """No request brings a lone surrogate here (DeployRequest escapes it); were one to come, it is written escaped."""
    text = unsafe_extravars({"message": "a\ud800b\udfff", "service": "portal"})

    assert ansible_loads(text) == {"message": "a\\ud800b\\udfff", "service": "portal"}


# The whole of Unicode, lone surrogates included: Hypothesis leaves them out by default, and draws them seldom from
# the whole range.
any_character = st.characters(exclude_categories=()) | st.characters(categories=["Cs"])


def text_of(size: int) -> st.SearchStrategy[str | None]:
    """Text that fits a field of `size` characters after each lone surrogate becomes six characters."""
    return st.none() | st.text(any_character, max_size=size // 6)


def escaped(text: str | None) -> str | None:
    """What DeployRequest is to keep of `text`, written again here: each lone surrogate as its escape."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode()


@settings(derandomize=True, database=None, deadline=None, max_examples=300)
@given(repository=text_of(256), commit=text_of(128), message=text_of(4096))
def test_any_metadata_goes_through_the_extra_vars_as_it_was_validated(repository, commit, message):
    document = {"service": "portal", "repository": repository, "commit": commit, "message": message}
    request = DeployRequest.model_validate(document)
    extravars = deploy_extravars("20250101T000000-abcdef01", request)

    check_written(extravars)
    assert ansible_loads(unsafe_extravars(extravars))["deploy_request"] == {
        "id": "20250101T000000-abcdef01",
        "repository": escaped(repository),
        "commit": escaped(commit),
        "message": escaped(message),
    }


# The environment of a run.

PLAYBOOK = """\
- name: Publish the request it was given
  hosts: all
  gather_facts: false
  tasks:
    - name: Say something
      ansible.builtin.debug:
        msg: "{{ deploy_request.message }}"

    - name: Publish the request
      ansible.builtin.set_stats:
        data:
          deploy:
            request: "{{ deploy_request }}"
"""
INVENTORY = {
    "all": {
        "hosts": {
            "localhost": {
                "ansible_connection": "local",
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            }
        }
    }
}
# Names ansible-runner gives its own settings (callback plugins, artifacts, events).
RUNNER_PREFIXES = ("ANSIBLE_", "AWX_", "RUNNER_")


def test_a_run_keeps_what_ansible_runner_set_and_of_the_api_environment_only_the_allowed():
    inherited = {
        "PATH": "/usr/bin",
        "HOME": "/home/deploy",
        "SSH_AUTH_SOCK": "/run/agent",
        "ANSIBLE_FORKS": "3",
        "WEBHOOK_SECRET": "secret",
        "DEPLOY_READ_TOKEN": "token",
        "AWS_SECRET_ACCESS_KEY": "key",
        "PYTHONPATH": "/app",
    }
    added = {"PATH": "/venv/bin:/usr/bin", "ANSIBLE_CONFIG": "/app/ansible.cfg", "AWX_ISOLATED_DATA_DIR": "/runs/a"}

    environment = runner_environment({**inherited, **added}, inherited)

    assert environment == {
        "PATH": "/venv/bin:/usr/bin",
        "HOME": "/home/deploy",
        "SSH_AUTH_SOCK": "/run/agent",
        "ANSIBLE_FORKS": "3",
        "ANSIBLE_CONFIG": "/app/ansible.cfg",
        "AWX_ISOLATED_DATA_DIR": "/runs/a",
        "LC_CTYPE": "C.UTF-8",  # Ansible needs a UTF-8 locale, and none was named
    }
    assert runner_environment({"LANG": "de_DE.UTF-8"}, {"LANG": "de_DE.UTF-8"}) == {"LANG": "de_DE.UTF-8"}


def test_a_run_gets_only_the_allowed_environment_and_its_directory_holds_no_secret(tmp_path, monkeypatch):
    canaries = {
        "DEPLOY_TEST_CANARY": f"canary-{uuid.uuid4().hex}",
        "WEBHOOK_SECRET_CANARY": f"secret-{uuid.uuid4().hex}",
    }
    for name, value in canaries.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ANSIBLE_FORKS", "3")  # the operator's Ansible settings do reach the run
    playbook = tmp_path / "playbook.yml"
    playbook.write_text(PLAYBOOK)
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump(INVENTORY))
    request = DeployRequest.model_validate(
        {"service": "portal", "commit": "\U0001f680", "message": "\U0001f680 release\u2028\x85\x7f\ufeff\ud800"}
    )
    extravars = deploy_extravars("run-1", request)

    run = run_playbook(
        run_id="run-1",
        playbook=playbook,
        extravars=extravars,
        inventory=inventory,
        state_dir=tmp_path / "state",
        timeout=60,
        keep_runs=5,
        cancel=threading.Event(),
    )

    assert run.status == "successful", run.output_tail
    assert run.results["request"] == extravars["deploy_request"]
    run_dir = tmp_path / "state" / "runs" / "run-1"
    environment = json.loads((run_dir / "artifacts" / "run-1" / "command").read_text())["env"]
    unexpected = {name for name in environment if name not in INHERITED_VARIABLES}
    assert {name for name in unexpected if not name.startswith(RUNNER_PREFIXES)} == set()
    assert environment["ANSIBLE_FORKS"] == "3"
    files = [path for path in run_dir.rglob("*") if path.is_file()]
    assert len(files) > 5, files
    for path in files:
        content = path.read_bytes()
        for name, value in canaries.items():
            assert name.encode() not in content, f"{name} in {path}"
            assert value.encode() not in content, f"the value of {name} in {path}"
