"""cluster.yaml: Ray's own checks (what `ray up` runs before it talks to AWS) and what letta_ray needs of it.

Ray's validation here is ``prepare_config`` (merge with the AWS provider's defaults.yaml,
merge the setup commands, fill each node type's min/max workers) then ``validate_config``
(the JSON schema ray-schema.json and the head/worker consistency checks): the first two
steps of ``ray up``'s ``_bootstrap_config``. Its later steps (instance-type resource
detection, ``bootstrap_aws``: IAM role, key pair, subnet, security group) call AWS and are
not run; the tests run with the network blocked to prove the rest needs none.

The environment and start commands are also *run*: through Ray's own command wrappers
(``_with_interactive``: ``bash --login -c -i 'source ~/.bashrc; ...'``, what the launcher's
SSH runner sends), in a scratch HOME, with a stand-in ``ray`` that records its arguments
and environment.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.command_runner import _with_environment_variables, _with_interactive
from ray.autoscaler._private.util import prepare_config, validate_config, with_head_node_ip

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
ENV_FILE = "letta_ray.env"
RAY_PORTS = (6379, 8076, 8265, 10001)
HEAD_IP = "10.0.1.23"

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="the launcher's commands are bash")


# --------------------------------------------------------------------------- loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word; a cluster file must not have any."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


@pytest.fixture(scope="module")
def raw_config() -> dict[str, Any]:
    return yaml.load(CLUSTER_YAML.read_text(), Loader=_UniqueKeyLoader)


@pytest.fixture
def config(raw_config) -> dict[str, Any]:
    return copy.deepcopy(raw_config)


@pytest.fixture
def offline(monkeypatch):
    """No network and no AWS credentials: Ray's validation must do without either."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"the config's validation tried the network: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


def ray_checks(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` checks before touching the cloud; returns the config with Ray's defaults."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def ray_invocations(commands: list[str], verb: str) -> list[list[str]]:
    """The argument lists of every `ray <verb>` among ``commands`` (split on ';' and '&&')."""
    found = []
    for command in commands:
        for part in re.split(r";|&&", command):
            tokens = shlex.split(part)
            if tokens[:2] == ["ray", verb]:
                found.append(tokens)
    return found


# --------------------------------------------------------------------------- Ray's validation


def test_ray_accepts_the_cluster_yaml(config, offline):
    prepared = ray_checks(config)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["cluster_synced_files"] == []  # a default merged in from Ray's aws/defaults.yaml
    # Ray runs setup_commands first on every node, then the head's or the workers' own.
    setup = config["setup_commands"]
    assert prepared["head_setup_commands"] == setup + config["head_setup_commands"]
    assert prepared["worker_setup_commands"] == setup + config["worker_setup_commands"]
    assert prepared["available_node_types"]["head"]["max_workers"] == 0  # the head is never scaled


def _misspelled_top_level_key(c):
    c["max_worker"] = c.pop("max_workers")


def _node_type_without_node_config(c):
    del c["available_node_types"]["worker"]["node_config"]


def _fractional_head_resource(c):
    c["available_node_types"]["head"]["resources"]["letta_ray_head"] = 0.5


def _command_parsed_as_a_mapping(c):
    # What YAML makes of an unquoted `- ray start --resources={"letta_ray_head": 1}`.
    c["head_start_ray_commands"].append({'ray start --resources={"letta_ray_head"': "1}"})


def _unknown_head_node_type(c):
    c["head_node_type"] = "ray.head.default"


def _more_min_workers_than_max_workers(c):
    c["available_node_types"]["worker"]["min_workers"] = c["max_workers"] + 1


BROKEN = [
    (_misspelled_top_level_key, jsonschema.ValidationError, r"Additional properties .*'max_worker'"),
    (_node_type_without_node_config, jsonschema.ValidationError, r"'node_config' is a required property"),
    (_fractional_head_resource, jsonschema.ValidationError, r"0\.5 is not of type 'integer'"),
    (_command_parsed_as_a_mapping, jsonschema.ValidationError, r"is not of type 'string'"),
    (_unknown_head_node_type, ValueError, r"`head_node_type` must be one of `available_node_types`"),
    (_more_min_workers_than_max_workers, ValueError, r"max_workers` is smaller than the sum of `min_workers"),
]


@pytest.mark.parametrize(("breaks", "error", "message"), BROKEN, ids=[b.__name__.strip("_") for b, _, _ in BROKEN])
def test_ray_rejects_a_broken_config(config, offline, breaks, error, message):
    ray_checks(config)  # the file as it is passes...
    breaks(config)
    with pytest.raises(error, match=message):  # ...and the same checks fail on each mistake
        ray_checks(config)


def test_no_key_is_written_twice():
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'max_workers'"):
        yaml.load("max_workers: 2\nmax_workers: 3\n", Loader=_UniqueKeyLoader)
    yaml.load(CLUSTER_YAML.read_text(), Loader=_UniqueKeyLoader)


# --------------------------------------------------------------------------- what letta_ray needs


def test_a_head_and_a_worker_node_type(config):
    types = config["available_node_types"]
    assert config["head_node_type"] == "head"
    assert set(types) == {"head", "worker"}
    head, worker = types["head"], types["worker"]
    assert head["resources"] == {"letta_ray_head": 1}  # real CPUs, filled in by Ray from the instance type
    assert "letta_ray_head" not in worker["resources"]
    for node_type in (head, worker):
        assert node_type["node_config"]["InstanceType"]
        assert "IamInstanceProfile" in node_type["node_config"]  # the bucket through a role, not keys
    # A fixed worker pool: letta_ray's actors reserve no CPU, so Ray would find extra workers idle.
    assert worker["min_workers"] == worker["max_workers"] <= config["max_workers"]


def test_the_heads_disk_outlives_the_instance(config):
    assert config["provider"]["cache_stopped_nodes"] is True  # `ray down` stops the head, keeping its disk
    (root,) = config["available_node_types"]["head"]["node_config"]["BlockDeviceMappings"]
    assert root["Ebs"]["DeleteOnTermination"] is False


def test_the_head_starts_ray_as_head_with_the_letta_ray_resource(config):
    commands = config["head_start_ray_commands"]
    stop, start = ray_invocations(commands, "stop"), ray_invocations(commands, "start")
    assert len(stop) == 1 and len(start) == 1
    assert "ray stop" in commands[0]  # a restart (`ray up` again) stops the old Ray first
    args = start[0]
    assert "--head" in args
    assert "--port=6379" in args and "--object-manager-port=8076" in args
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in args
    assert "--dashboard-host=127.0.0.1" in args  # reached with `ray dashboard cluster.yaml`
    assert not any("0.0.0.0" in arg for arg in args)
    (resources,) = [arg.split("=", 1)[1] for arg in args if arg.startswith("--resources=")]
    assert json.loads(resources) == {"letta_ray_head": 1}


def test_workers_join_the_head(config):
    (args,) = ray_invocations(config["worker_start_ray_commands"], "start")
    assert "--address=$RAY_HEAD_IP:6379" in args  # the launcher exports RAY_HEAD_IP
    assert "--head" not in args
    assert "--object-manager-port=8076" in args
    assert len(ray_invocations(config["worker_start_ray_commands"], "stop")) == 1


def test_the_setup_commands_install_letta_ray(config, offline):
    prepared = ray_checks(config)
    for commands in (prepared["head_setup_commands"], prepared["worker_setup_commands"]):
        assert any(re.search(r"pip install .*[\"' ]letta-ray\b", command) for command in commands)
    assert any("boto3" in command for command in config["head_setup_commands"])  # the autoscaler's


def test_ray_ports_are_not_opened_to_the_internet(config):
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        public = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", []))
        ports = range(rule.get("FromPort", 0), rule.get("ToPort", 65535) + 1)
        assert not (public and any(port in ports for port in RAY_PORTS)), rule


# --------------------------------------------------------------------------- run as the launcher runs them


FAKE_RAY = """#!/bin/sh
printf '%s\\n' "$@" > "$HOME/ray-$1.args"
env > "$HOME/ray-$1.env"
"""


def run_like_the_launcher(command: str, home: Path, *, login_shells: bool = True,
                          env_vars: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """One command as Ray's SSH command runner sends it (the remote side's shell parses it)."""
    if env_vars:
        command = _with_environment_variables(command, env_vars)
    line = " ".join(_with_interactive(command)) if login_shells else command
    result = subprocess.run(["bash", "-c", line], env={"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{command!r} failed: {result.stderr}"
    return result


def env_commands(config: dict[str, Any]) -> list[str]:
    return [command for command in config["setup_commands"] if ENV_FILE in command]


def node_environment(home: Path) -> dict[str, str]:
    """The environment of a command the launcher runs on the node (`ray exec`, `ray submit`, ...)."""
    out = run_like_the_launcher("env", home).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.fixture
def node_home(tmp_path, config) -> Path:
    """A scratch HOME that the environment setup commands have run in, twice (as `ray up` twice would)."""
    home = tmp_path / "home"
    home.mkdir()
    for command in env_commands(config) * 2:
        run_like_the_launcher(command, home)
    return home


@needs_bash
def test_the_setup_writes_the_environment_every_command_sees(config, node_home):
    env = node_environment(node_home)
    assert env["LETTA_RAY_STORAGE"].startswith("s3://") and len(env["LETTA_RAY_STORAGE"]) > len("s3://")
    assert env["LETTA_RAY_HOME"] == f"/home/{config['auth']['ssh_user']}/letta_ray"
    assert env["AWS_REGION"] == config["provider"]["region"]
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert env["LETTA_RAY_RAY_ADDRESS"] == "auto"  # letta-ray commands on a node join the cluster
    # Ray's token authentication, with one token for every node (a worker without it cannot join)
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == f"{node_home}/letta_ray.ray_token"
    assert Path(env["RAY_AUTH_TOKEN_PATH"]).name in {Path(remote).name for remote in config["file_mounts"]}
    assert env["PATH"].startswith(f"{node_home}/venv/bin:")
    assert "AWS_ACCESS_KEY_ID" not in env  # the instance profile, not keys, by default
    assert stat.S_IMODE((node_home / ENV_FILE).stat().st_mode) == 0o600
    assert (node_home / ".bashrc").read_text().count(ENV_FILE) == 1  # a second `ray up` adds no second hook


@needs_bash
def test_a_mounted_secrets_file_is_loaded(node_home):
    secrets = "export OPENAI_API_KEY=sk-test\nexport LETTA_RAY_API_TOKEN=t0k3n\n"
    (node_home / "letta_ray.secrets.env").write_text(secrets)  # what file_mounts would copy there
    env = node_environment(node_home)
    assert env["OPENAI_API_KEY"] == "sk-test" and env["LETTA_RAY_API_TOKEN"] == "t0k3n"


@needs_bash
def test_letta_ray_reads_that_environment_as_a_cluster_with_an_object_store(node_home, monkeypatch):
    from letta_ray.settings import Settings

    env = node_environment(node_home)
    for name, value in env.items():
        if name.startswith("LETTA_RAY_"):
            monkeypatch.setenv(name, value)
    settings = Settings()
    assert not settings.embedded
    assert settings.location.remote
    assert settings.archive_uri == env["LETTA_RAY_STORAGE"].rstrip("/") + "/archive"
    assert str(settings.meta_path) == env["LETTA_RAY_HOME"] + "/meta.duckdb"
    assert settings.keeper_count() > 0  # hosts on workers ship their turns to the head


@needs_bash
@pytest.mark.parametrize("login_shells", [True, False], ids=["login-shells", "use-normal-shells"])
@pytest.mark.parametrize("node", ["head", "worker"])
def test_ray_starts_with_the_environment(config, node_home, node, login_shells):
    """The start commands as the launcher runs them: RAY_HEAD_IP and RAY_OVERRIDE_RESOURCES set
    by it, a stand-in `ray` first on the venv's PATH. With `--use-normal-shells` no .bashrc is
    read, and the start commands still load the environment file themselves."""
    fake = node_home / "venv" / "bin" / "ray"
    fake.parent.mkdir(parents=True)
    fake.write_text(FAKE_RAY)
    fake.chmod(0o755)
    if not login_shells:
        (node_home / ".bashrc").unlink()
    resources = config["available_node_types"][node]["resources"]
    commands = config[f"{node}_start_ray_commands"]
    if node == "worker":
        commands = with_head_node_ip(commands, HEAD_IP)
    for command in commands:
        run_like_the_launcher(command, node_home, login_shells=login_shells,
                              env_vars={"RAY_OVERRIDE_RESOURCES": resources} if resources else None)

    assert (node_home / "ray-stop.args").read_text().split() == ["stop"]
    args = (node_home / "ray-start.args").read_text().splitlines()
    env = dict(line.split("=", 1) for line in (node_home / "ray-start.env").read_text().splitlines() if "=" in line)
    assert env["LETTA_RAY_STORAGE"].startswith("s3://")
    assert env["LETTA_RAY_HOME"] and env["AWS_REGION"] == config["provider"]["region"]
    if node == "head":
        assert "--head" in args and "--dashboard-host=127.0.0.1" in args
        (resources_arg,) = [arg for arg in args if arg.startswith("--resources=")]
        assert json.loads(resources_arg.split("=", 1)[1]) == {"letta_ray_head": 1}  # quoting survived the shells
        assert json.loads(env["RAY_OVERRIDE_RESOURCES"]) == {"letta_ray_head": 1}
    else:
        assert f"--address={HEAD_IP}:6379" in args and "--head" not in args
