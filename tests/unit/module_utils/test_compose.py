"""module_utils without an engine: the cause of a docker CLI failure in one line (from stderr the real CLI wrote),
how a compose file is found and its pin file named, and how compose_service decides `changed` from the service's
container before and after `up`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ansible.module_utils import deploy_compose as compose
from ansible.module_utils import deploy_health, deploy_history, deploy_image
from ansible.module_utils.deploy_docker import CAUSE_LIMIT, StepError, cli_cause
from fakedocker import FakeDocker

# stderr as docker 28.2 and compose v2.40.3 wrote it on the test rig (engine 20.10), byte for byte.
MANIFEST_UNKNOWN = (
    "Error response from daemon: manifest for 127.0.0.1:5099/deploytest/nope:v9 not found: "
    "manifest unknown: manifest unknown"
)
PORT_TAKEN = (
    "Error response from daemon: driver failed programming external connectivity on endpoint dtsamples-app-1 "
    "(36a6a51b1fae7d23b89e583778fd1cd29931536707778581133035928281bab6): Error starting userland proxy: "
    "listen tcp4 127.0.0.1:5099: bind: address already in use"
)
NO_DAEMON = "Cannot connect to the Docker daemon at unix:///tmp/nonexistent.sock. Is the docker daemon running?"
SAMPLES = {
    "compose up, image missing (--progress plain)": (
        " app Pulling \n"
        " app Error manifest for 127.0.0.1:5099/deploytest/nope:v9 not found: manifest unknown: manifest unknown\n"
        f"{MANIFEST_UNKNOWN}\n",
        MANIFEST_UNKNOWN,
    ),
    "compose up, image missing (--progress tty, on a terminal)": (
        "\x1b[1A\x1b[1B\x1b[0G\x1b[?25l[+] Running 1/1\n \x1b[31m\x1b[1m✘\x1b[0m app Error \x1b[31m\x1b[1mmanifest for "
        "127.0.0.1:5099/deploytest/nope:v9 not found: manifest unknown: manifest unknown\x1b[0m\x1b[34m0.0s \x1b[0m\n"
        f"\x1b[?25h{MANIFEST_UNKNOWN}\n",
        MANIFEST_UNKNOWN,
    ),
    "compose up, port taken": (
        " Network dtsamples_default  Creating\n Network dtsamples_default  Created\n"
        " Container dtsamples-app-1  Creating\n Container dtsamples-app-1  Created\n"
        f" Container dtsamples-app-1  Starting\n{PORT_TAKEN}\n",
        PORT_TAKEN,
    ),
    "compose up, no daemon": (
        f"unable to get image 'busybox:1': {NO_DAEMON}\n",
        f"unable to get image 'busybox:1': {NO_DAEMON}",
    ),
    "compose config, bad YAML after warnings": (
        'time="2026-12-01T19:49:32Z" level=warning msg="Found multiple config files with supported names: '
        '/tmp/disc/samples/multi/compose.yaml, /tmp/disc/samples/multi/compose.yml"\n'
        'time="2026-12-01T19:49:32Z" level=warning msg="Using /tmp/disc/samples/multi/compose.yaml"\n'
        "yaml: line 3: did not find expected node content\n",
        "yaml: line 3: did not find expected node content",
    ),
    "compose config, invalid port after a warning": (
        'time="2026-12-01T19:49:33Z" level=warning msg="/tmp/disc/samples/warnonly/compose.yaml: the attribute '
        '`version` is obsolete, it will be ignored, please remove it to avoid potential confusion"\n'
        "invalid hostPort: 99999\n",
        "invalid hostPort: 99999",
    ),
    "compose config, unset variable": (
        "error while interpolating services.s.image: required variable IMG is missing a value: IMG must be set\n",
        "error while interpolating services.s.image: required variable IMG is missing a value: IMG must be set",
    ),
    "compose, file missing": (
        "open /tmp/disc/samples/proj/missing.deploy.yml: no such file or directory\n",
        "open /tmp/disc/samples/proj/missing.deploy.yml: no such file or directory",
    ),
    "compose, a warning alone": (
        'time="2026-12-01T19:45:36Z" level=warning msg="Warning: No resource found to remove for project '
        '\\"dtexp2\\"."\n',
        'Warning: No resource found to remove for project "dtexp2".',
    ),
    "image inspect, no daemon": (f"{NO_DAEMON}\n", NO_DAEMON),
    "pull, tag missing": (f"{MANIFEST_UNKNOWN}\n", MANIFEST_UNKNOWN),
    "pull, registry down": (
        'Error response from daemon: Get "http://127.0.0.1:5098/v2/": dial tcp 127.0.0.1:5098: '
        "connect: connection refused\n",
        'Error response from daemon: Get "http://127.0.0.1:5098/v2/": dial tcp 127.0.0.1:5098: '
        "connect: connection refused",
    ),
}


@pytest.mark.parametrize(("stderr", "cause"), SAMPLES.values(), ids=SAMPLES.keys())
def test_the_cause_is_the_meaningful_line_of_what_the_cli_wrote(stderr, cause):
    assert cli_cause(stderr, 1) == cause


def test_the_cause_is_one_bounded_line_even_without_words():
    long_line = "Error response from daemon: " + "x" * 1000

    assert len(cli_cause(long_line + "\n")) == CAUSE_LIMIT
    assert cli_cause(long_line).endswith("...")
    assert cli_cause("", 125) == "exit code 125, nothing on stderr"
    assert cli_cause(" \n\t\n", 1) == "exit code 1, nothing on stderr"
    assert cli_cause("first\r\n  second   line\r\n") == "second line"
    assert cli_cause("Error: one\nthen a last word\n") == "Error: one", "an error line wins over a later line"


def a_failure(stderr: str) -> FakeDocker:
    """A docker CLI whose every command fails with `stderr`."""
    return FakeDocker(
        {
            ("image", "inspect"): (1, "", stderr),
            ("pull",): (1, "", stderr),
            ("rmi",): (1, "", stderr),
            ("container", "inspect"): (1, "", stderr),
            ("inspect",): (1, "", stderr),
            ("tag",): (1, "", stderr),
            ("ps",): (1, "", stderr),
        }
    )


def test_each_failure_names_what_failed_and_keeps_rc_stderr_and_cmd():
    stderr = SAMPLES["pull, tag missing"][0]
    image = "127.0.0.1:5099/deploytest/nope:v9"

    with pytest.raises(StepError) as pulled:
        deploy_image.pull_image(a_failure(""), image, True, "", False)
    assert pulled.value.msg == f"Inspecting image {image} failed: exit code 1, nothing on stderr"

    docker = FakeDocker({("image", "inspect"): (1, "", f"Error: No such image: {image}\n"), ("pull",): (1, "", stderr)})
    with pytest.raises(StepError) as pulled:
        deploy_image.pull_image(docker, image, True, "", False)
    assert pulled.value.msg == f"Pulling {image} failed: {MANIFEST_UNKNOWN}"
    assert pulled.value.extra == {"rc": 1, "stderr": stderr, "cmd": ["docker", "pull", "--quiet", image]}

    no_daemon = f"{NO_DAEMON}\n"
    failures = {
        "image inspect": lambda: deploy_image.image_id(a_failure(no_daemon), "web:v2"),
        "rmi": lambda: deploy_history.remove_image(a_failure(no_daemon), "web:v1", False),
        "health inspect": lambda: deploy_health.inspect_container(a_failure(no_daemon), "c0ffee"),
        "rollback inspect": lambda: deploy_image.rollback_image(a_failure(no_daemon), "web:v1", "", "", False),
        "service container": lambda: deploy_history.service_container(a_failure(no_daemon), "shop", "web"),
    }
    messages = {}
    for step, call in failures.items():
        with pytest.raises(StepError) as failed:
            call()
        assert set(failed.value.extra) == {"rc", "stderr", "cmd"}, step
        messages[step] = failed.value.msg
    assert messages == {
        "image inspect": f"Inspecting image web:v2 failed: {NO_DAEMON}",
        "rmi": f"Removing image web:v1 failed: {NO_DAEMON}",
        "health inspect": f"Inspecting container c0ffee failed: {NO_DAEMON}",
        "rollback inspect": f"Inspecting image web:v1 failed: {NO_DAEMON}",
        "service container": f"Listing the containers of service web in compose project shop failed: {NO_DAEMON}",
    }


def test_a_missing_image_or_container_is_an_answer_not_a_failure():
    docker = FakeDocker(
        {
            ("image", "inspect"): (1, "", "Error response from daemon: no such image: web:v9: No such image: web:v9\n"),
            ("container", "inspect"): (1, "", "Error response from daemon: No such container: deadbeef\n"),
            ("rmi",): (1, "", "Error response from daemon: No such image: nope:v9\n"),
        }
    )

    assert deploy_image.image_id(docker, "web:v9") == ""
    assert deploy_health.inspect_container(docker, "deadbeef") is None
    assert deploy_history.remove_image(docker, "nope:v9", False) is False


@pytest.mark.parametrize(
    ("compose_file", "pin_file"),
    [
        ("compose.yaml", "compose.deploy.yml"),
        ("compose.yml", "compose.deploy.yml"),
        ("docker-compose.yml", "docker-compose.deploy.yml"),
        ("docker-compose.yaml", "docker-compose.deploy.yml"),
        ("deploy/prod.yaml", "deploy/prod.deploy.yml"),
        ("../compose.yaml", "../compose.deploy.yml"),
        ("stack.yml.yaml", "stack.yml.deploy.yml"),
    ],
)
def test_the_pin_file_is_beside_the_compose_file(compose_file, pin_file):
    assert compose.pin_file_for(compose_file) == pin_file


def test_the_compose_file_is_found_in_composes_order(tmp_path):
    for name in reversed(compose.COMPOSE_FILE_NAMES):
        (tmp_path / name).write_text("services: {}\n")
    found = []
    for _ in compose.COMPOSE_FILE_NAMES:
        name = compose.find_compose_file(str(tmp_path))
        found.append(name)
        (tmp_path / name).unlink()

    # compose v2.40 prefers docker-compose.yml to docker-compose.yaml (seen with the real CLI).
    assert found == ["compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml"]


def test_without_a_compose_file_compose_looks_in_the_directories_above(tmp_path):
    project = tmp_path / "srv" / "app"
    project.mkdir(parents=True)
    (tmp_path / "srv" / "docker-compose.yml").write_text("services: {}\n")
    (tmp_path / "compose.yaml").write_text("services: {}\n")

    assert compose.find_compose_file(str(project)) == "../docker-compose.yml", "the nearest directory wins"
    (project / "docker-compose.yaml").write_text("services: {}\n")
    assert compose.find_compose_file(str(project)) == "docker-compose.yaml"


def test_no_compose_file_anywhere_names_the_directory_and_the_four_names(tmp_path, monkeypatch):
    project = tmp_path / "app"
    project.mkdir()
    monkeypatch.setattr(compose.os.path, "exists", lambda path: False)

    with pytest.raises(StepError) as missing:
        compose.find_compose_file(str(project))

    assert missing.value.msg == (
        f"No compose file in {project} nor in a directory above it: "
        "looked for compose.yaml, compose.yml, docker-compose.yml, docker-compose.yaml"
    )
    with pytest.raises(StepError, match=f"^Project directory {tmp_path / 'nothing'} is not a directory$"):
        compose.find_compose_file(str(tmp_path / "nothing"))


def test_an_override_file_compose_would_add_is_named_in_a_warning(tmp_path):
    (tmp_path / "compose.yaml").write_text("services: {}\n")
    docker = FakeDocker({})

    assert compose.discover_compose_file(docker, str(tmp_path)) == "compose.yaml"
    assert docker.warnings == []

    (tmp_path / "docker-compose.override.yml").write_text("services: {}\n")
    (tmp_path / "compose.override.yaml").write_text("services: {}\n")
    assert compose.discover_compose_file(docker, str(tmp_path)) == "compose.yaml"
    assert docker.warnings == [
        "compose.override.yaml is not read: the deploy reads only compose.yaml and its pin file, as "
        "`docker compose -f compose.yaml` does. Name the compose file to read it, or merge the override into it."
    ]


def test_capture_finds_the_compose_file_and_says_which_it_read(tmp_path, monkeypatch):
    (tmp_path / "compose.yaml").write_text("services: {}\n")
    project = {"name": "shop", "services": {"web": {"image": "web:v1"}}}
    docker = FakeDocker(
        {
            ("compose",): (0, json.dumps(project), ""),
            ("images",): (0, "", ""),
            ("ps",): (0, "", ""),
        }
    )
    monkeypatch.setenv("SHOP_DIR", str(tmp_path))

    result = deploy_history.capture_state(docker, "$SHOP_DIR/.", "", "web", "deploy-history", "stamp", False)

    assert docker.ran("compose") == [("compose", "-f", "compose.yaml", "config", "--format", "json")]
    assert result["capture"]["compose_file"] == "compose.yaml"
    assert result["capture"]["project_dir"] == str(tmp_path)
    assert result["capture"]["container_id"] == "" and not result["changed"]


def test_capture_of_a_missing_file_or_directory_names_it(tmp_path):
    docker = FakeDocker({})

    with pytest.raises(StepError, match=f"^Compose file {tmp_path / 'prod.yaml'} does not exist$"):
        deploy_history.capture_state(docker, str(tmp_path), "prod.yaml", "web", "deploy-history", "stamp", False)
    with pytest.raises(StepError, match=f"^Project directory {tmp_path / 'gone'} is not a directory$"):
        deploy_history.capture_state(docker, str(tmp_path / "gone"), "", "web", "deploy-history", "stamp", False)
    assert docker.calls == []


# compose_service: the container before and after, as `docker ps` rows.
OLD = "a" * 64
NEW = "b" * 64
IMAGE_V1 = "sha256:" + "1" * 64
IMAGE_V2 = "sha256:" + "2" * 64


def row(container_id: str, state: str = "running") -> dict:
    return {"ID": container_id, "CreatedAt": "2026-01-02 03:04:05 +0000 UTC", "State": state, "Image": "web:v1"}


class Engine(FakeDocker):
    """A fake docker CLI for one compose service: `docker ps` reads the container before `up`, then after it."""

    def __init__(
        self,
        before: dict | None,
        after: dict | None,
        up: tuple[int, str, str] = (0, "", ""),
        config_hash: str = "hash-1",
        label_hash: str = "hash-1",
        running_image: str = IMAGE_V1,
        host_images: dict[str, str] | None = None,
    ):
        self.rows = [before, after]
        self.up = up
        self.config_hash = config_hash
        self.project = {"name": "shop", "services": {"web": {"image": "web:v1"}}}
        images = host_images if host_images is not None else {"web:v1": IMAGE_V1}
        super().__init__(
            {
                ("compose",): self.compose,
                ("ps",): self.ps,
                ("inspect", "--type", "container"): (0, f"{running_image} {label_hash}\n", ""),
                ("image", "inspect"): lambda args: (
                    (0, images[args[-1]] + "\n", "")
                    if args[-1] in images
                    else (1, "", f"Error response from daemon: No such image: {args[-1]}\n")
                ),
            }
        )

    def compose(self, args: tuple[str, ...]) -> tuple[int, str, str]:
        if "--hash" in args:
            return 0, f"web {self.config_hash}\n", ""
        if "config" in args:
            return 0, json.dumps(self.project), ""
        return self.up

    def ps(self, args: tuple[str, ...]) -> tuple[int, str, str]:
        found = self.rows.pop(0) if len(self.rows) > 1 else self.rows[0]
        return 0, json.dumps(found) + "\n" if found else "", ""


def up(
    docker: Engine, project_dir: Path, image: str = "", state: str = "present", check_mode: bool = False, **given
) -> dict:
    (project_dir / "compose.yaml").touch()
    arguments = {"compose_file": "", "pin_file": "", "project": "shop", **given}
    return compose.compose_service(
        docker,
        project_dir=str(project_dir),
        service="web",
        image=image,
        file_image="web:v1",
        stop_timeout=10,
        state=state,
        check_mode=check_mode,
        **arguments,
    )


@pytest.mark.parametrize(
    ("before", "after", "changed"),
    [
        (None, row(NEW), True),  # created
        (row(OLD), row(NEW), True),  # recreated
        (row(OLD, "exited"), row(OLD), True),  # started
        (row(OLD, "created"), row(OLD), True),  # started for the first time
        (row(OLD), row(OLD), False),  # left as it was
        (row(OLD, "restarting"), row(OLD), False),  # restarted by its policy between the reads, not by compose
        (row(OLD, "exited"), row(OLD, "exited"), False),
    ],
    ids=["created", "recreated", "started", "first-start", "untouched", "policy-restart", "still-exited"],
)
def test_up_is_a_change_when_the_container_is_another_or_was_started(tmp_path, before, after, changed):
    docker = Engine(before, after)

    result = up(docker, tmp_path)

    assert result["changed"] is changed
    assert result["container_id"] == after["ID"]
    assert not (tmp_path / "compose.deploy.yml").exists(), "the compose file's own image needs no pin"
    (command,) = docker.ran("compose")
    assert command[:8] == ("compose", "--ansi", "never", "--progress", "plain", "--file", "compose.yaml", "up")


def test_a_new_pin_is_a_change_even_when_compose_did_nothing(tmp_path):
    docker = Engine(row(OLD), row(OLD))

    result = up(docker, tmp_path, image="web:v2")

    assert result["changed"]
    assert result["pins"] == {"web": "web:v2"}
    assert docker.ran("compose")[0][5:9] == ("--file", "compose.yaml", "--file", "compose.deploy.yml")

    docker = Engine(row(OLD), row(OLD))
    assert not up(docker, tmp_path, image="web:v2")["changed"], "the same pin again, the same container"


def test_without_the_project_name_compose_config_reads_it(tmp_path):
    docker = Engine(row(OLD), row(OLD))
    docker.project["name"] = "other"

    up(docker, tmp_path, project="")

    assert docker.ran("compose")[0][-3:] == ("config", "--format", "json")
    assert "label=com.docker.compose.project=other" in docker.ran("ps")[0]


@pytest.mark.parametrize(("before", "changed"), [(row(OLD), True), (row(OLD, "exited"), True), (None, False)])
def test_down_is_a_change_when_there_was_a_container(tmp_path, before, changed):
    for check_mode in (False, True):
        docker = Engine(before, None)

        result = up(docker, tmp_path, state="absent", check_mode=check_mode)

        assert result["changed"] is changed
        assert result["container_id"] == ""
        (command,) = docker.ran("compose")
        assert "down" in command and ("--dry-run" in command) is check_mode


@pytest.mark.parametrize(
    ("engine", "changed"),
    [
        ({}, False),
        ({"label_hash": "hash-0"}, True),  # the service's configuration was edited
        ({"running_image": IMAGE_V2}, True),  # the tag moved since the container was created
        ({"host_images": {}}, True),  # the image is not on the host: compose would pull it
        ({"before": row(OLD, "exited")}, True),  # compose would start it
        ({"before": None}, True),  # compose would create it
    ],
    ids=["same", "config-edited", "tag-moved", "image-missing", "stopped", "no-container"],
)
def test_check_mode_decides_as_compose_would(tmp_path, engine, changed):
    before = engine.pop("before", row(OLD))
    docker = Engine(before, row(NEW), **engine)

    result = up(docker, tmp_path, check_mode=True)

    assert result["changed"] is changed
    assert result["container_id"] == (before or {}).get("ID", "")
    assert all("--dry-run" in command for command in docker.ran("compose") if "up" in command)
    assert len(docker.ran("ps")) == 1, "nothing ran: the container is read once"


def test_check_mode_counts_a_new_pin_without_writing_it(tmp_path):
    docker = Engine(row(OLD), row(OLD))

    result = up(docker, tmp_path, image="web:v2", check_mode=True)

    assert result["changed"] and result["pins"] == {"web": "web:v2"}
    assert not (tmp_path / "compose.deploy.yml").exists()


def test_a_failed_up_names_its_cause_service_and_file_in_one_line(tmp_path):
    stderr = SAMPLES["compose up, port taken"][0]
    docker = Engine(row(OLD), row(OLD), up=(1, "", stderr))

    with pytest.raises(StepError) as failed:
        up(docker, tmp_path)

    assert failed.value.msg == f"docker compose up failed for service web of {tmp_path / 'compose.yaml'}: {PORT_TAKEN}"
    assert failed.value.extra["rc"] == 1 and failed.value.extra["stderr"] == stderr
    assert failed.value.extra["cmd"][:3] == ["docker", "compose", "--ansi"]
    assert {"exists", "pins", "diff"} <= set(failed.value.extra)


def test_compose_warnings_become_the_modules(tmp_path):
    warning = 'time="2026-12-01T19:45:32Z" level=warning msg="compose.yaml: the attribute `version` is obsolete"\n'
    docker = Engine(row(OLD), row(OLD), up=(0, "", warning + " Container shop-web-1  Running\n"))

    up(docker, tmp_path)

    assert docker.warnings == ["Docker compose: compose.yaml: the attribute `version` is obsolete"]


def test_a_missing_compose_file_is_named_before_any_pin_is_written(tmp_path):
    docker = Engine(row(OLD), row(OLD))

    with pytest.raises(StepError, match=f"^Compose file {tmp_path / 'prod.yaml'} does not exist$"):
        up(docker, tmp_path, image="web:v2", compose_file="prod.yaml", pin_file="prod.deploy.yml")

    assert not (tmp_path / "prod.deploy.yml").exists()
    assert docker.calls == []
