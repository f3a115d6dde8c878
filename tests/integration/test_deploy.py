"""Deployment files checked against the code: commands, settings, ports, units, manifests.

Everything under ``deploy/``, ``scripts/demo_distributed.sh`` and ``docs/operations.md`` is
parsed; every ``imageport`` command line is parsed by the real typer/click app (so flags and
their values are real), every ``IMAGEPORT_*`` name is a real setting and every set of values
builds a valid ``Settings``; ports agree between commands, probes, Services and compose; the
units pass ``systemd-analyze verify``; the kustomize base renders; and the distributed demo runs
end to end. Parts that need ``imageport api`` (issue 6) skip until it exists.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import click
import pytest
import typer
import yaml
from pydantic_settings import SettingsConfigDict

from imageport.cli.main import app
from imageport.config import CONFIG_ENV, Settings, StoreSettings
from imageport.workers.actors import IMPORT_QUEUE
from imageport.workers.process import EXTRA_STOP_SECONDS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
KUBE = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "container" / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_RABBITMQ = DEPLOY / "compose.rabbitmq.yaml"  # an override: RabbitMQ as the broker
KUBE_RABBITMQ = KUBE / "rabbitmq"  # a kustomize Component: RabbitMQ as the broker
OPERATIONS = ROOT / "docs" / "operations.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
DEMO = ROOT / "scripts" / "demo_distributed.sh"

API_PORT = 9292  # `imageport api --port` everywhere
METRICS_PORT = 9101  # `imageport worker --metrics-port` everywhere (systemd: the instance name)
HEALTH_PATHS = {"/healthz", "/readyz"}
#: Measured with /usr/bin/time -v and psutil (docs/operations.md, "Sizing"), MiB: one job's
#: peak importing to S3 (its parts in flight wait in a scratch file, not in memory: 167-181
#: MiB measured, whatever the part size), qemu-img convert, and an idle supervisor.
JOB_BASE_MIB, QEMU_IMG_MIB, SUPERVISOR_MIB = 200, 40, 80
IMAGEPORT_VAR = re.compile(r"\bIMAGEPORT_[A-Z0-9_]+")
NOT_SETTINGS = {CONFIG_ENV, "IMAGEPORT_TEST_DATABASE_URL"}  # the config file; tests' own DB


def _api_available() -> bool:
    proc = subprocess.run(
        [sys.executable, "-m", "imageport", "api", "--help"], capture_output=True, check=False
    )
    return proc.returncode == 0


API_AVAILABLE = _api_available()
NO_API = "imageport api (issue 6) is not in this build yet: `imageport api --help` failed"


# Settings rendering (shared with deploy/systemd/imageport.env and docs/configuration.md)


def env_name(setting: str) -> str:
    return f"IMAGEPORT_{setting.upper()}"


def _default(setting: str):
    return Settings.model_fields[setting].get_default(call_default_factory=True)


def env_default(setting: str) -> str:
    """The default as an EnvironmentFile value (JSON in single quotes for lists and tables)."""
    value = _default(setting)
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | dict):
        return "'" + json.dumps(list(value) if isinstance(value, tuple) else value) + "'"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def doc_default(setting: str) -> str:
    """The default as docs/configuration.md shows it."""
    value = _default(setting)
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    text = f"`{env_default(setting).strip(chr(39))}`"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1024**2:
        exp = int(math.log(value, 1024))
        if value % 1024**exp == 0:
            text += f" ({value // 1024**exp} {['', 'KiB', 'MiB', 'GiB', 'TiB'][exp]})"
    return text


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def build_settings(monkeypatch, env: dict[str, str], toml_text: str | None = None) -> Settings:
    """Settings from exactly these variables (and this TOML file for IMAGEPORT_CONFIG)."""
    for name in list(os.environ):
        if name.startswith("IMAGEPORT_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("IMAGEPORT_") and name != CONFIG_ENV:
            monkeypatch.setenv(name, value)
    if toml_text is None:
        return Settings()
    with tempfile.TemporaryDirectory(prefix="imageport-deploy-") as tmp:
        path = Path(tmp) / "imageport.toml"
        path.write_text(toml_text)

        class FileSettings(Settings):
            model_config = SettingsConfigDict(toml_file=path)

        return FileSettings()


def is_setting(name: str) -> bool:
    if name in NOT_SETTINGS or name == "IMAGEPORT_STORES__":  # the documented <ID>__<FIELD> form
        return True
    suffix = name.removeprefix("IMAGEPORT_").lower()
    if suffix.startswith("stores__"):
        parts = suffix.split("__")
        return len(parts) == 3 and parts[1] != "" and parts[2] in StoreSettings.model_fields
    return suffix in Settings.model_fields


# The typer app as click sees it


ROOT_COMMAND = typer.main.get_command(app)


def parse_command(argv: list[str]) -> tuple[str, dict[str, object]]:
    """Parse ``imageport ARGV`` with the real click commands; returns (path, params)."""
    command: click.Command = ROOT_COMMAND
    path: list[str] = []
    args = list(argv)
    while isinstance(command, click.Group):
        assert args, f"`imageport {' '.join(argv)}` names no subcommand"
        name, *args = args
        if name in ("--help", "--version"):
            return "", {}
        sub = command.get_command(click.Context(command), name)
        assert sub is not None, f"`imageport {' '.join(argv)}`: no command {name!r}"
        command, path = sub, [*path, name]
    args = _fill_variables(args)
    try:
        ctx = command.make_context(f"imageport {' '.join(path)}", args)
    except click.ClickException as exc:
        raise AssertionError(f"`imageport {' '.join(argv)}`: {exc.format_message()}") from exc
    return " ".join(path), dict(ctx.params)


def _fill_variables(args: list[str]) -> list[str]:
    """Shell variables become a value any option accepts ("1"), or their name as an argument."""
    return [
        ("1" if i and args[i - 1].startswith("--") else arg.strip("${}"))
        if arg.startswith("$")
        else arg
        for i, arg in enumerate(args)
    ]


def check_command(argv: list[str]) -> tuple[str, dict[str, object]]:
    if argv and argv[0] == "api" and not API_AVAILABLE:
        pytest.skip(f"{NO_API}; cannot check `imageport {shlex.join(argv)}`")
    return parse_command(argv)


# Sources of command lines and environment variables


def systemd_units() -> dict[str, dict[str, list[str]]]:
    """Unit name -> {key: [values]} of the [Service] section (and the others)."""
    units = {}
    for path in sorted(SYSTEMD.glob("*.service")):
        entries: dict[str, list[str]] = {}
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if line and not line.startswith(("#", ";", "[")):
                key, _, value = line.partition("=")
                entries.setdefault(key.strip(), []).append(value.strip())
        units[path.name] = entries
    return units


def systemd_command(unit: str) -> list[str]:
    (exec_start,) = systemd_units()[unit]["ExecStart"]
    argv = shlex.split(exec_start.replace("%i", str(METRICS_PORT)))
    assert Path(argv[0]).name == "imageport", exec_start
    return argv[1:]


def env_file() -> tuple[dict[str, str], dict[str, str]]:
    """deploy/systemd/imageport.env: (active variables, commented-out defaults)."""
    active: dict[str, str] = {}
    commented: dict[str, str] = {}
    for raw in (SYSTEMD / "imageport.env").read_text().splitlines():
        match = re.fullmatch(r"(#?)(IMAGEPORT_[A-Z0-9_]+)=(.*)", raw.strip())
        if match:
            hashed, name, value = match.groups()
            (commented if hashed else active)[name] = _unquote(value)
    return active, commented


def kube_documents() -> list[dict]:
    docs = []
    for path in sorted(KUBE.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def kube(kind: str, name: str) -> dict:
    (doc,) = [d for d in kube_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def containers(doc: dict) -> list[dict]:
    spec = doc["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def imageport_services() -> dict[str, dict]:
    """Compose services that run the imageport entrypoint (not the bucket one-shot)."""
    return {
        name: svc
        for name, svc in compose()["services"].items()
        if svc.get("build") and "entrypoint" not in svc
    }


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


SHELL_WORDS = {"if", "then", "do", "else", "elif", "while", "until", "!", "exec", "time", "{"}
OPERATORS = set("|&;()<>")


def _shell_commands(line: str) -> list[list[str]]:
    """Simple commands of one shell line (pipes, lists, $(...), redirections split off)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:
        return []
    commands, current, skip = [], [], False
    for token in [*tokens, ";"]:
        if token and set(token) <= OPERATORS:
            if current and current[-1].isdigit() and token.startswith((">", "<")):
                current.pop()  # 2>&1, 2>/dev/null
            commands.append(current)
            current, skip = [], token.startswith((">", "<"))
        elif skip:
            skip = False  # the redirection's target
        else:
            current.append(token)
    return commands


def doc_commands(text: str) -> list[list[str]]:
    """`imageport ...` command lines in shell code of docs and scripts (`$VAR` kept)."""
    found = []
    for raw in re.sub(r"\\\n\s*", " ", text).splitlines():
        line = raw.strip().removeprefix("$ ")
        if not line or line.startswith("#"):
            continue
        for command in _shell_commands(line):
            words = list(command)
            while words and (words[0] in SHELL_WORDS or re.match(r"^[A-Za-z_]\w*=", words[0])):
                del words[0]
            if words[:1] == ["start"]:  # the demo's `start NAME command...`
                del words[:2]
            if words and Path(words[0]).name == "imageport" and len(words) > 1:
                found.append(words[1:])
    return found


def operations_commands() -> list[list[str]]:
    blocks = re.findall(r"```(?:sh|bash|console)\n(.*?)```", OPERATIONS.read_text(), re.DOTALL)
    return doc_commands("\n".join(blocks))


def all_command_lines() -> list[tuple[str, list[str]]]:
    lines = [(f"systemd:{unit}", systemd_command(unit)) for unit in systemd_units()]
    for doc in kube_documents():
        if doc["kind"] in ("Deployment", "Job"):
            lines += [(f"k8s:{doc['metadata']['name']}", c["args"]) for c in containers(doc)]
    for name, svc in imageport_services().items():
        lines.append((f"compose:{name}", svc["command"]))
    lines.append(("Dockerfile:CMD", json.loads(dict(dockerfile())["CMD"])))
    lines += [(f"operations.md:{i}", argv) for i, argv in enumerate(operations_commands())]
    lines += [(f"demo:{i}", argv) for i, argv in enumerate(doc_commands(DEMO.read_text()))]
    return lines


COMMAND_LINES = all_command_lines()


@pytest.mark.parametrize(
    "argv", [argv for _, argv in COMMAND_LINES], ids=[where for where, _ in COMMAND_LINES]
)
def test_command_line_is_a_real_imageport_command(argv):
    check_command(argv)


def test_the_docs_and_the_demo_use_the_admin_commands():
    used = {" ".join(argv[:2]) if argv[0] in ("tasks", "images", "db") else argv[0]
            for argv in operations_commands()}  # fmt: skip
    for needed in ("tasks list", "tasks show", "watch", "retry", "cancel", "reap", "db upgrade",
                   "worker", "api", "import"):  # fmt: skip
        assert needed in used, f"docs/operations.md never shows `imageport {needed}`"
    assert any("--from-stage" in argv for argv in operations_commands())
    assert any("--status" in argv for argv in operations_commands())


# Environment variables


def _files_with_env() -> list[Path]:
    return [
        *sorted(p for p in DEPLOY.rglob("*") if p.is_file()),
        DEMO,
        OPERATIONS,
        CONFIGURATION,
    ]


@pytest.mark.parametrize("path", _files_with_env(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_imageport_variable_is_a_real_setting(path):
    unknown = sorted({n for n in IMAGEPORT_VAR.findall(path.read_text()) if not is_setting(n)})
    assert not unknown, f"{path.name}: not settings: {unknown}"


def test_env_file_lists_every_setting_with_its_default(monkeypatch):
    active, commented = env_file()
    for setting in Settings.model_fields:
        value = commented.get(env_name(setting))
        assert value is not None, f"imageport.env: no commented default for {setting}"
        assert value == _unquote(env_default(setting)), f"{setting}: {value!r}"
        if value:  # an empty value means "unset": the default is None
            got = getattr(build_settings(monkeypatch, {env_name(setting): value}), setting)
            assert got == _default(setting), f"{setting}: {value!r} gives {got!r}"
    conf = build_settings(monkeypatch, active)
    assert not conf.is_embedded
    assert conf.data_dir == Path("/var/lib/imageport")  # systemd's StateDirectory=imageport


def test_configuration_doc_lists_every_setting():
    text = CONFIGURATION.read_text()
    for setting in Settings.model_fields:
        row = f"| `{setting}` | `{env_name(setting)}` | {doc_default(setting)} |"
        assert row in text, f"docs/configuration.md lacks the row starting {row}"


def _kube_env() -> dict[str, str]:
    env = dict(kube("ConfigMap", "imageport-config")["data"])
    env.update(kube("Secret", "imageport-secrets")["stringData"])
    return env


def test_kubernetes_settings_build(monkeypatch):
    env = _kube_env()
    conf = build_settings(monkeypatch, env, toml_text=env["imageport.toml"])
    assert conf.stores[conf.default_store].kind == "s3"
    assert conf.stores["objects"].secret_key, "the Secret must complete the S3 store"
    assert not conf.is_embedded
    assert conf.resolved_database_url.startswith("postgresql+psycopg://")
    for doc in kube_documents():
        if doc["kind"] in ("Deployment", "Job"):
            for container in containers(doc):
                refs = {
                    next(iter(r.values()))["name"] for r in container.get("envFrom", [])
                }  # configMapRef / secretRef
                assert refs == {"imageport-config", "imageport-secrets"}, doc["metadata"]["name"]
                mounts = {m["mountPath"] for m in container["volumeMounts"]}
                assert str(Path(env[CONFIG_ENV]).parent) in mounts


def test_compose_settings_build(monkeypatch):
    toml_text = (DEPLOY / "imageport.toml").read_text()
    for name, svc in imageport_services().items():
        env = svc["environment"]
        conf = build_settings(monkeypatch, env, toml_text=toml_text)
        assert not conf.is_embedded, name
        assert set(conf.stores) == {"local", "objects"}
        assert f"./imageport.toml:{env[CONFIG_ENV]}:ro" in svc["volumes"], name
        host = urlsplit(conf.broker_url).hostname
        assert host in compose()["services"], f"{name}: broker host {host} is not a service"
        assert urlsplit(conf.resolved_database_url).hostname in compose()["services"]
        s3_host = urlsplit(conf.stores["objects"].endpoint_url).hostname
        assert s3_host in compose()["services"]


def test_example_toml_has_a_file_and_an_s3_store(monkeypatch):
    conf = build_settings(monkeypatch, {}, toml_text=(DEPLOY / "imageport.toml").read_text())
    kinds = {store.kind for store in conf.stores.values()}
    assert kinds == {"file", "s3"}
    raw = tomllib.loads((DEPLOY / "imageport.toml").read_text())
    assert set(raw["stores"]["objects"]) >= {"bucket", "endpoint_url", "region", "prefix"}


# Ports, probes, graceful stop


def _port_of(argv: list[str], flag: str) -> int:
    return int(argv[argv.index(flag) + 1])


def _grace(value: str | None) -> float:
    return float(value) if value else float(_default("shutdown_grace_seconds"))


def test_systemd_ports_and_stop_timeout():
    api = systemd_command("imageport-api.service")
    worker_unit = systemd_units()["imageport-worker@.service"]
    assert _port_of(api, "--port") == API_PORT
    assert "--metrics-port %i" in worker_unit["ExecStart"][0]
    active, commented = env_file()
    name = "IMAGEPORT_SHUTDOWN_GRACE_SECONDS"
    grace = _grace(active.get(name, commented[name]))
    for unit, entries in systemd_units().items():
        assert entries["KillSignal"] == ["SIGTERM"], unit
        (timeout,) = entries["TimeoutStopSec"]
        assert float(timeout.removesuffix("s")) > grace + EXTRA_STOP_SECONDS, unit


def test_systemd_hardening():
    for unit, entries in systemd_units().items():
        for key, value in {
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "PrivateTmp": "yes",
            "ProtectHome": "yes",
            "User": "imageport",
        }.items():
            assert entries.get(key) == [value], f"{unit}: {key}"
        writable = " ".join(entries["ReadWritePaths"]).split()
        conf = Settings(data_dir=Path("/var/lib/imageport"))
        for path in (conf.data_dir, conf.resolved_staging_dir, conf.resolved_scratch_dir):
            assert str(path) in writable, f"{unit}: {path} is not writable"
        assert entries["EnvironmentFile"] == ["/etc/imageport/imageport.env"]


def test_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # verify insists that ExecStart's binary exists: point it at this venv's imageport.
    binary = Path(sys.executable).with_name("imageport")
    units = []
    for path in SYSTEMD.glob("*.service"):
        text = path.read_text().replace("/opt/imageport/bin/imageport", str(binary))
        name = path.name.replace("@.", f"@{METRICS_PORT}.")
        (tmp_path / path.name).write_text(text)
        if name != path.name:
            (tmp_path / name).write_text(text)
        units.append(str(tmp_path / name))
    proc = subprocess.run(
        [analyze, "verify", *units], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert not proc.stderr.strip(), proc.stderr


def _resolve(port: int | str, container: dict) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


@pytest.mark.parametrize(
    ("deployment", "flag", "port"),
    [("imageport-api", "--port", API_PORT), ("imageport-worker", "--metrics-port", METRICS_PORT)],
)
def test_kubernetes_ports_and_probes(deployment, flag, port):
    doc = kube("Deployment", deployment)
    (container,) = containers(doc)
    assert _port_of(container["args"], flag) == port
    assert [p["containerPort"] for p in container["ports"]] == [port]
    probes = {
        name: container[name] for name in ("readinessProbe", "livenessProbe") if name in container
    }
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in probes.values():
        assert _resolve(probe["httpGet"]["port"], container) == port
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert urlsplit(env["HEALTHCHECK_URL"]).port == port
    assert urlsplit(env["HEALTHCHECK_URL"]).path in HEALTH_PATHS


def test_kubernetes_service_targets_the_api():
    service = kube("Service", "imageport-api")
    api = kube("Deployment", "imageport-api")
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = containers(api)
    for port in service["spec"]["ports"]:
        assert _resolve(port["targetPort"], container) == API_PORT


def test_kubernetes_graceful_stop_pdb_and_scratch():
    grace = _grace(_kube_env().get("IMAGEPORT_SHUTDOWN_GRACE_SECONDS"))
    worker = kube("Deployment", "imageport-worker")
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > (
        grace + EXTRA_STOP_SECONDS
    )
    for name in ("imageport-api", "imageport-worker"):
        pdb = kube("PodDisruptionBudget", name)
        target = kube("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= target.items()
    volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    assert "sizeLimit" in volumes["scratch"]["emptyDir"]
    (container,) = containers(worker)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = _kube_env()
    assert mounts["scratch"] == env["IMAGEPORT_SCRATCH_DIR"]
    assert mounts["staging"] == env["IMAGEPORT_STAGING_DIR"]
    api_volumes = kube("Deployment", "imageport-api")["spec"]["template"]["spec"]["volumes"]
    staging = {v["name"]: v for v in api_volumes}["staging"]
    assert staging == volumes["staging"], "api and workers must share the staging volume"


def _mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024**2}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity.removesuffix(suffix)) * factor
    return float(quantity) / 1024**2


def test_kubernetes_worker_memory_covers_the_measured_peak():
    (container,) = containers(kube("Deployment", "imageport-worker"))
    args = container["args"]
    jobs = _port_of(args, "--processes") * _port_of(args, "--threads")
    needed = jobs * (JOB_BASE_MIB + QEMU_IMG_MIB) + SUPERVISOR_MIB
    request = _mib(container["resources"]["requests"]["memory"])
    assert request >= needed, f"memory request {request} MiB < measured need {needed} MiB"
    assert _mib(container["resources"]["limits"]["memory"]) >= request


def test_keda_scales_the_workers_on_the_dramatiq_list():
    scaled = kube("ScaledObject", "imageport-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "imageport-worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    assert meta["listName"] == f"dramatiq:{IMPORT_QUEUE}"
    broker = urlsplit(_kube_env()["IMAGEPORT_BROKER_URL"])
    assert meta["address"] == f"{broker.hostname}:{broker.port}"
    assert meta["databaseIndex"] == (broker.path.strip("/") or "0")
    assert "replicas" not in kube("Deployment", "imageport-worker")["spec"]


def _rabbitmq_component() -> dict[str, dict]:
    """The component's patches by kind."""
    component = yaml.safe_load((KUBE_RABBITMQ / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    patches = [
        yaml.safe_load((KUBE_RABBITMQ / p["path"]).read_text()) for p in component["patches"]
    ]
    return {patch["kind"]: patch for patch in patches}


def test_keda_on_rabbitmq_watches_the_import_queue_with_the_workers_url(monkeypatch, tmp_path):
    patches = _rabbitmq_component()
    base = kube("ScaledObject", "imageport-worker")["spec"]["triggers"][0]["metadata"]
    scaled = patches["ScaledObject"]
    assert scaled["metadata"]["name"] == "imageport-worker"
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert (trigger["type"], meta["protocol"], meta["mode"]) == ("rabbitmq", "amqp", "QueueLength")
    assert meta["queueName"] == IMPORT_QUEUE
    # As many imports per replica as on Redis.
    assert (meta["value"], meta["activationValue"]) == (
        base["listLength"],
        base["activationListLength"],
    )
    # The trigger reads the URL the workers use from their own environment (the Secret).
    secret = patches["Secret"]
    assert secret["metadata"]["name"] == "imageport-secrets"
    assert set(secret["stringData"]) == {meta["hostFromEnv"]} == {"IMAGEPORT_BROKER_URL"}
    env = {**_kube_env(), **secret["stringData"]}
    conf = build_settings(monkeypatch, env, toml_text=env["imageport.toml"])
    assert urlsplit(conf.broker_url).scheme == "amqp"
    assert urlsplit(conf.broker_url).path == "/%2F"  # the vhost `/`, for pika and for KEDA
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the overlay with the component not rendered")
    shutil.copytree(KUBE, tmp_path / "base")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": ["../base"], "components": ["../base/rabbitmq"]})
    )
    out = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    rendered = {d["kind"]: d for d in yaml.safe_load_all(out) if d}
    assert rendered["ScaledObject"]["spec"]["triggers"] == [trigger]
    assert rendered["ScaledObject"]["spec"]["maxReplicaCount"] == 10  # the rest is the base's
    assert rendered["Secret"]["stringData"]["IMAGEPORT_BROKER_URL"] == conf.broker_url
    assert "IMAGEPORT_DATABASE_URL" in rendered["Secret"]["stringData"]


def test_kustomize_base_lists_and_renders_every_manifest():
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk - listed == {"db-upgrade-job.yaml"}  # a Job is applied once per upgrade
    assert listed <= on_disk
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: rendering with kustomize not checked")
    out = subprocess.run(
        [kubectl, "kustomize", str(KUBE)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out) if d)
    assert kinds.count("Deployment") == 2
    assert {"ScaledObject", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"} <= set(kinds)


def test_compose_ports_and_services():
    services = compose()["services"]
    assert {"api", "worker", "redis", "postgres", "s3"} <= set(services)
    api, worker = services["api"], services["worker"]
    assert _port_of(api["command"], "--port") == API_PORT
    assert api["ports"] == [f"127.0.0.1:{API_PORT}:{API_PORT}"]
    assert _port_of(worker["command"], "--metrics-port") == METRICS_PORT
    for svc, port in ((api, API_PORT), (worker, METRICS_PORT)):
        assert urlsplit(svc["environment"]["HEALTHCHECK_URL"]).port == port
        grace = _grace(svc["environment"].get("IMAGEPORT_SHUTDOWN_GRACE_SECONDS"))
        assert int(svc["stop_grace_period"].removesuffix("s")) > grace + EXTRA_STOP_SECONDS


def test_compose_rabbitmq_override(monkeypatch):
    override = yaml.safe_load(COMPOSE_RABBITMQ.read_text())["services"]
    assert set(override) <= set(compose()["services"]) | {"rabbitmq"}
    toml_text = (DEPLOY / "imageport.toml").read_text()
    for name, svc in imageport_services().items():
        if name == "db-upgrade":
            assert name not in override  # migrations never touch the broker
            continue
        # Compose merges an override's environment and depends_on into the base service's.
        env = {**svc["environment"], **override[name]["environment"]}
        conf = build_settings(monkeypatch, env, toml_text=toml_text)
        assert urlsplit(conf.broker_url).scheme == "amqp", name
        assert urlsplit(conf.broker_url).hostname == "rabbitmq"
        assert override[name]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    rabbit = override["rabbitmq"]
    user = rabbit["environment"]["RABBITMQ_DEFAULT_USER"]
    password = rabbit["environment"]["RABBITMQ_DEFAULT_PASS"]
    assert urlsplit(conf.broker_url).username == user
    assert urlsplit(conf.broker_url).password == password
    assert rabbit["hostname"] == "rabbitmq"  # the node's data directory follows it


# The container image


def test_dockerfile():
    instructions = dockerfile()
    froms = [args for word, args in instructions if word == "FROM"]
    assert all("python:3.11-slim-bookworm" in f or "${PYTHON_IMAGE}" in f for f in froms)
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in DOCKERFILE.read_text()
    users = [args for word, args in instructions if word == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    runs = [args for word, args in instructions if word == "RUN"]
    installs = [r for r in runs if "apt-get install" in r]
    assert installs
    assert all("--no-install-recommends" in r for r in installs)
    assert any("qemu-utils" in r and "util-linux" in r for r in installs)
    assert any("qemu-block-extra" in r and "exit 1" in r for r in runs)
    words = dict(instructions)
    assert json.loads(words["ENTRYPOINT"]) == ["imageport"]
    assert words["STOPSIGNAL"] == "SIGTERM"
    assert "HEALTHCHECK_URL" in words["HEALTHCHECK"]
    assert f"http://127.0.0.1:{API_PORT}/healthz" in DOCKERFILE.read_text()
    exposed = {int(p) for p in words["EXPOSE"].split()}
    assert exposed == {API_PORT, METRICS_PORT}


# The distributed mode, end to end (docs/operations.md, step by step)


def test_operations_doc_and_demo_agree():
    """The demo runs the same imageport commands the step-by-step section shows."""
    text = OPERATIONS.read_text()
    section = text[text.index("## Distributed mode on one machine") :]
    section = section[: section.index("\n## ", 5)]
    steps = doc_commands("\n".join(re.findall(r"```sh\n(.*?)```", section, re.DOTALL)))
    demo = doc_commands(DEMO.read_text())
    demo_shapes = [_shape(argv) for argv in demo]
    for argv in steps:
        path, flags = _shape(argv)
        assert any(path == p and flags <= f for p, f in demo_shapes), (
            f"docs/operations.md runs `imageport {shlex.join(argv)}`; the demo does not"
        )


def _shape(argv: list[str]) -> tuple[tuple[str, ...], set[str]]:
    """A command's path (`tasks list`) and the flags it uses."""
    depth = 2 if argv[0] in ("images", "tasks", "db", "stores") else 1
    return tuple(argv[:depth]), {a for a in argv if a.startswith("--")}


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_demo_distributed_end_to_end():
    for tool in ("redis-server", "qemu-img", "curl"):
        if shutil.which(tool) is None:
            if os.environ.get("CI"):
                pytest.fail(f"{tool} is missing in CI")
            pytest.skip(f"{tool} is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPORT_")}
    if os.environ.get("IMAGEPORT_TEST_DATABASE_URL"):
        env["IMAGEPORT_TEST_DATABASE_URL"] = os.environ["IMAGEPORT_TEST_DATABASE_URL"]
    env["VENV"] = str(Path(sys.executable).parent.parent)
    proc = subprocess.run(
        [str(DEMO)], env=env, capture_output=True, text=True, timeout=140, check=False
    )
    steps = [line for line in proc.stderr.splitlines() if line.startswith("demo:")]
    tail = "\n".join(steps) + "\n" + proc.stderr[-4000:]
    assert proc.returncode == 0, tail
    assert "demo-distributed: OK" in proc.stdout
    counts = [int(n) for n in re.findall(r"worker group \d .*?(\d+) imports", proc.stdout)]
    assert len(counts) == 2
    assert counts[1] > 0, "the worker group started mid-run took no job"
    if API_AVAILABLE:
        assert "submitted through: imageport api" in proc.stdout
