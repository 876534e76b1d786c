"""The deploy's own container (module_utils/deploy_self.py): found in the mount table, and refused by preflight, before
anything changes, when the deploy would replace or remove it; the status read still reads it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from ansible.module_utils import deploy_rules as rules
from ansible.module_utils import deploy_steps as steps
from ansible.module_utils.deploy_self import mountinfo_container_id, own_container_id, update_command
from fakedocker import FakeDocker

REPO = Path(__file__).resolve().parents[3]
OWN = "3f2a9c1b7d4e" + "5a6b7c8d9e0f" * 4 + "a1b2"
OTHER = "9e8d7c6b5a4f" * 5 + "3e2d"
LAYER = "5d1c3f0e9a7b2c4d6e8f0a1b3c5d7e9f1a3b5c7d9e1f3a5b7c9d1e3f5a7b9c1d"
IMAGE_ID = "sha256:" + "7" * 64
STAMP = "20260301T120000999999"

# The API's container, as `docker compose -f deployment.yml up -d` ran it, on a cgroup v1 host: the bind mounts of its
# own directory under /var/lib/docker/containers, the image's layers (other IDs) in the root's options, the cgroup
# mounts that name the container too, the socket, the state volume and the compose directory.
CONTAINER_MOUNTINFO = f"""\
1007 886 0:162 / / rw,relatime master:481 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/Z7QJH3XW4HRIZ5W2Q7NLTF2D6C:/var/lib/docker/overlay2/l/4UMFJ6LDOZ3ZK5PN5NJQ2NUJ5H,upperdir=/var/lib/docker/overlay2/{LAYER}/diff,workdir=/var/lib/docker/overlay2/{LAYER}/work
1008 1007 0:165 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1009 1007 0:166 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
1010 1009 0:167 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620,ptmxmode=666
1011 1007 0:168 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
1012 1011 0:169 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,mode=755
1013 1012 0:31 /docker/{OWN} /sys/fs/cgroup/systemd ro,nosuid,nodev,noexec,relatime master:11 - cgroup cgroup rw,xattr,name=systemd
1014 1012 0:34 /docker/{OWN} /sys/fs/cgroup/memory ro,nosuid,nodev,noexec,relatime master:15 - cgroup cgroup rw,memory
1015 1009 0:164 / /dev/mqueue rw,nosuid,nodev,noexec,relatime - mqueue mqueue rw
1016 1009 0:170 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
1017 1007 8:1 /var/lib/docker/containers/{OWN}/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/sda1 rw,errors=remount-ro
1018 1007 8:1 /var/lib/docker/containers/{OWN}/hostname /etc/hostname rw,relatime - ext4 /dev/sda1 rw,errors=remount-ro
1019 1007 8:1 /var/lib/docker/containers/{OWN}/hosts /etc/hosts rw,relatime - ext4 /dev/sda1 rw,errors=remount-ro
1020 1007 8:1 /var/lib/docker/volumes/deployment_deploy-state/_data /var/lib/deploy rw,relatime master:1 - ext4 /dev/sda1 rw
1021 1007 8:1 /opt/homeserver /homeserver rw,relatime - ext4 /dev/sda1 rw,errors=remount-ro
1022 1007 8:1 /opt/deployment/inventory /app/inventory ro,relatime - ext4 /dev/sda1 rw,errors=remount-ro
1023 1007 0:26 /docker.sock /var/run/docker.sock rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,size=812344k,mode=755
887 1008 0:165 /bus /proc/bus ro,nosuid,nodev,noexec,relatime - proc proc rw
888 1009 0:166 /null /proc/kcore rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
889 1011 0:171 / /sys/firmware ro,relatime - tmpfs tmpfs ro
"""  # noqa: E501

# A container on a cgroup v2 host (its /proc/self/cgroup says `0::/`), whose engine keeps its data on a disk of its
# own: the mount's root is relative to that file system.
CGROUP_V2_MOUNTINFO = f"""\
612 540 0:52 / / rw,relatime - overlay overlay rw,lowerdir=/srv/docker/overlay2/l/QW2E3R4T5Y6U7I8O9P0A1S2D3F,upperdir=/srv/docker/overlay2/{LAYER}/diff,workdir=/srv/docker/overlay2/{LAYER}/work,nouserxattr
613 612 0:55 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
614 612 0:56 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
615 612 0:57 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
616 615 0:27 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate,memory_recursiveprot
617 612 259:3 /containers/{OWN}/resolv.conf /etc/resolv.conf rw,relatime - xfs /dev/nvme1n1p1 rw,attr2,inode64,noquota
618 612 259:3 /containers/{OWN}/hostname /etc/hostname rw,relatime - xfs /dev/nvme1n1p1 rw,attr2,inode64,noquota
619 612 259:3 /containers/{OWN}/hosts /etc/hosts rw,relatime - xfs /dev/nvme1n1p1 rw,attr2,inode64,noquota
620 614 0:54 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
541 613 0:55 /sys /proc/sys ro,nosuid,nodev,noexec,relatime - proc proc rw
"""  # noqa: E501

# A host that runs Docker: its containers' root file systems and network namespaces are mounted, with their IDs in
# the paths, but no /etc/hostname comes from a container's directory.
HOST_MOUNTINFO = f"""\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334760k,nr_inodes=3083690,mode=755
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
45 27 254:0 /var/lib/docker /var/lib/docker rw,relatime shared:1 - ext4 /dev/vda rw,discard
76 45 0:57 / /var/lib/docker/overlay2/{LAYER}/merged rw,relatime shared:7 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/JID35VWUZH7XP2ODX7HBP4WF7H,upperdir=/var/lib/docker/overlay2/{LAYER}/diff,workdir=/var/lib/docker/overlay2/{LAYER}/work
330 27 0:4 net:[4026532337] /run/docker/netns/a12951a492eb rw - nsfs nsfs rw
"""  # noqa: E501

# A log shipper: its own files, and another container's directory mounted to read its logs.
SHIPPER_MOUNTINFO = f"""\
700 650 8:1 /var/lib/docker/containers/{OTHER} /logs/{OTHER} ro,relatime - ext4 /dev/sda1 rw
701 650 8:1 /var/lib/docker/containers/{OTHER}/hostname /logs/hostname ro,relatime - ext4 /dev/sda1 rw
702 650 8:1 /var/lib/docker/containers/{OWN}/hostname /etc/hostname rw,relatime - ext4 /dev/sda1 rw
"""

# A Kubernetes pod on containerd: not a Docker container.
POD_MOUNTINFO = f"""\
1201 1150 259:1 /var/lib/kubelet/pods/0c1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5/etc-hosts /etc/hosts rw,relatime - ext4 /dev/nvme0n1p1 rw
1202 1150 259:1 /var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/{OTHER}/hostname /etc/hostname rw,relatime - ext4 /dev/nvme0n1p1 rw
"""  # noqa: E501


@pytest.mark.parametrize(
    ("mountinfo", "container_id"),
    [
        (CONTAINER_MOUNTINFO, OWN),
        (CGROUP_V2_MOUNTINFO, OWN),
        (CONTAINER_MOUNTINFO.replace("/var/lib/docker/", "/home/ci/.local/share/docker/"), OWN),
        (SHIPPER_MOUNTINFO, OWN),
        (HOST_MOUNTINFO, None),
        (POD_MOUNTINFO, None),
        ("", None),
    ],
    ids=["docker", "cgroup-v2-own-data-disk", "rootless", "another-containers-files", "host", "kubernetes", "empty"],
)
def test_the_mount_table_names_the_container_the_process_runs_in(mountinfo, container_id):
    assert mountinfo_container_id(mountinfo) == container_id


def test_the_container_is_read_from_the_mount_table_given_and_none_without_one(tmp_path):
    table = tmp_path / "mountinfo"
    table.write_text(CGROUP_V2_MOUNTINFO)

    assert own_container_id(str(table)) == OWN
    assert own_container_id(str(tmp_path / "absent")) is None


# The refusal, in the steps.


def module_params(project_dir: Path, **given: object) -> dict:
    """compose_deploy's options, defaults filled in as AnsibleModule fills them."""
    spec = importlib.util.spec_from_file_location("compose_deploy", REPO / "library" / "compose_deploy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    values = {name: option.get("default") for name, option in module.ARGUMENT_SPEC.items()}
    values.update(project_dir=str(project_dir), compose_file="deployment.yml", service="deployment-api", stamp=STAMP)
    values.update(given)
    return values


def api_container(**labels: str) -> dict:
    """The API's container as `docker inspect` shows it, created by compose from /opt/deployment/deployment.yml."""
    compose = {
        "com.docker.compose.project": "deployment",
        "com.docker.compose.service": "deployment-api",
        "com.docker.compose.oneoff": "False",
        "com.docker.compose.project.config_files": "/opt/deployment/deployment.yml",
        "com.docker.compose.project.working_dir": "/opt/deployment",
    }
    return {
        "Id": OWN,
        "Image": IMAGE_ID,
        "State": {"Status": "running", "Running": True},
        "Config": {"Image": "deploy-api:latest", "Labels": {**compose, **labels}},
    }


def engine(container: dict | None, project: str = "deployment") -> FakeDocker:
    """The engine the API's socket reaches: its own container (None: not on this engine), the compose project."""
    found = (0, json.dumps([container]), "") if container else (1, "", f"Error: No such container: {OWN}")
    config = {"name": project, "services": {"deployment-api": {"image": "deploy-api:latest"}}}
    return FakeDocker({("inspect", "--type", "container", OWN): found, ("compose",): (0, json.dumps(config), "")})


@pytest.fixture
def mountinfo(tmp_path: Path) -> str:
    """The mount table of the API's container."""
    table = tmp_path / "mountinfo"
    table.write_text(CONTAINER_MOUNTINFO)
    return str(table)


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "deployment"
    directory.mkdir()
    (directory / "deployment.yml").write_text("services:\n  deployment-api:\n    image: deploy-api:latest\n")
    return directory


UPDATE = (
    "Update it from the host instead: docker compose -f /opt/deployment/deployment.yml up -d --pull always "
    "deployment-api"
)


DEPLOY = "deploy deployment-api: its container 3f2a9c1b7d4e runs this deploy, and replacing it would stop the deploy"
ROLLBACK = (
    "roll back deployment-api: its container 3f2a9c1b7d4e runs this rollback, and replacing it would stop the rollback"
)
REMOVE = "remove deployment-api: its container 3f2a9c1b7d4e runs this removal, and removing it would stop the removal"
SETTLE = "settle deployment-api: its container 3f2a9c1b7d4e runs this settling, and removing it would stop the settling"


@pytest.mark.parametrize(
    ("action", "strategy", "refusal"),
    [
        ("deploy", "recreate", DEPLOY),
        ("deploy", "blue_green", DEPLOY),
        ("rollback", "recreate", ROLLBACK),
        ("rollback", "blue_green", ROLLBACK),
        ("remove", "recreate", REMOVE),
        ("settle", "blue_green", SETTLE),
    ],
)
@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_an_action_that_would_replace_the_container_it_runs_in_is_refused_before_anything(
    project_dir, mountinfo, action, strategy, refusal, check_mode
):
    docker = engine(api_container())
    first = rules.round_trips(action, strategy)[0]
    given = module_params(project_dir, action=action, strategy=strategy, steps=list(first), keep_image_id=IMAGE_ID)

    result = steps.run_steps(docker, given, check_mode, mountinfo=mountinfo)

    assert result["failed_step"] == "preflight"
    # One line: the service, its container, why, and the command that updates it instead.
    assert result["msg"] == f"Refusing to {refusal} midway. {UPDATE}"
    assert [record["step"] for record in result["state"]["steps"]] == ["preflight"]
    assert result["state"]["steps"][0]["detail"] == result["msg"] == result["state"]["error"]
    # Read its own container and the project it would deploy: nothing pulled, tagged, listed or started.
    assert docker.calls == [
        ("inspect", "--type", "container", OWN),
        ("compose", "-f", "deployment.yml", "config", "--format", "json"),
    ]
    assert not result["changed"] and result["next_steps"] == [], "nothing to roll back"
    record = rules.host_record(result["state"], action, "deployment-api")
    assert (record["outcome"], record["error"]) == ("failed", result["msg"])


@pytest.mark.parametrize(
    ("container", "project", "calls"),
    [
        (api_container(**{"com.docker.compose.service": "portal"}), "deployment", 1),
        (api_container(), "homeserver", 2),
        (api_container(**{"com.docker.compose.oneoff": "True"}), "deployment", 1),
        (None, "deployment", 1),
    ],
    ids=["another-service", "another-project", "a-one-off-of-compose-run", "on-another-engine"],
)
def test_a_container_the_deploy_would_not_replace_is_not_refused(project_dir, mountinfo, container, project, calls):
    docker = engine(container, project)

    result = steps.run_steps(docker, module_params(project_dir, steps=["preflight"]), False, mountinfo=mountinfo)

    assert "failed_step" not in result
    assert result["state"]["steps"][0]["detail"] == "The deploy runs in no container of deployment-api"
    assert len(docker.calls) == calls, "the project is read only for a container of a service of that name"


def test_outside_a_container_preflight_asks_the_engine_nothing(project_dir, tmp_path):
    table = tmp_path / "host-mountinfo"
    table.write_text(HOST_MOUNTINFO)
    docker = engine(api_container())

    result = steps.run_steps(docker, module_params(project_dir, steps=["preflight"]), False, mountinfo=str(table))

    assert "failed_step" not in result and docker.calls == []


def test_the_project_preflight_read_is_the_one_capture_state_reads(project_dir, mountinfo):
    docker = engine(api_container(), "homeserver")
    docker.answers.update({("images",): (0, "", ""), ("ps",): (0, "", "")})

    result = steps.run_steps(
        docker, module_params(project_dir, steps=["preflight", "capture_state"]), False, mountinfo=mountinfo
    )

    assert "failed_step" not in result
    assert len(docker.ran("compose")) == 1
    assert result["state"]["capture"]["project"] == "homeserver"


def test_the_status_of_the_apis_own_service_is_read(project_dir, mountinfo):
    docker = engine(api_container())
    row = {"ID": OWN, "State": "running", "Image": "deploy-api:latest", "CreatedAt": "2026-03-01 12:00:00 +0000 UTC"}
    docker.answers.update(
        {
            ("images",): (0, "", ""),
            ("ps",): (0, json.dumps(row) + "\n", ""),
            ("inspect", "--type", "container", "--format"): (0, IMAGE_ID + "\n", ""),
        }
    )

    result = steps.run_steps(docker, module_params(project_dir, steps=["status"]), True, mountinfo=mountinfo)

    assert "failed_step" not in result
    assert result["status"]["container_id"] == OWN[:12]
    assert (result["status"]["image"], result["status"]["state"]) == ("deploy-api:latest", "running")
    assert not docker.ran("tag"), "read in check mode: nothing tagged"


# The command the refusal gives.


@pytest.mark.parametrize(
    ("labels", "where"),
    [
        (
            {
                "com.docker.compose.project.config_files": "/opt/deployment/deployment.yml,/opt/deployment/local.yml",
                "com.docker.compose.project.working_dir": "/opt/deployment",
            },
            "-f /opt/deployment/deployment.yml -f /opt/deployment/local.yml",
        ),
        (
            {
                "com.docker.compose.project.config_files": "deployment.yml",
                "com.docker.compose.project.working_dir": "/srv/my api",
            },
            "-f '/srv/my api/deployment.yml'",
        ),
        ({"com.docker.compose.project.working_dir": "/opt/deployment"}, "--project-directory /opt/deployment"),
        ({}, "-f /homeserver/compose.yaml"),
    ],
    ids=["its-files", "relative-to-its-directory", "its-directory", "the-deploys-compose-file"],
)
def test_the_update_command_names_the_files_the_container_was_created_from(labels, where):
    container = {"Id": OWN, "Config": {"Labels": labels}}

    built = update_command(container, "deployment-api", "/homeserver/compose.yaml", builds=True)
    pulled = update_command(container, "deployment-api", "/homeserver/compose.yaml", builds=False)

    assert built == f"docker compose {where} up -d --build deployment-api"
    assert pulled == f"docker compose {where} up -d --pull always deployment-api"


def test_a_service_that_builds_its_image_is_told_to_build_it_again(project_dir, mountinfo):
    docker = engine(api_container())
    config = {"name": "deployment", "services": {"deployment-api": {"build": {"context": "/opt/deployment"}}}}
    docker.answers[("compose",)] = (0, json.dumps(config), "")

    result = steps.run_steps(docker, module_params(project_dir, steps=["preflight"]), False, mountinfo=mountinfo)

    assert result["msg"].endswith(
        "Update it from the host instead: docker compose -f /opt/deployment/deployment.yml up -d --build deployment-api"
    )
