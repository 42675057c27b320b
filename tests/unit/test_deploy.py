"""The deployment manifests (deploy/) agree with the code they deploy.

No network, no Docker, no cluster: the files are parsed and checked against
what the code defines — entry points, settings fields, ports, topics and
metric names. Each checker has a negative test so a check cannot pass vacuously.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from mlbus.config import MlbusSettings, ServiceSettings
from mlbus.events import ALL_TOPICS
from mlbus.runtime._services import SERVICES
from mlbus.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
PROMETHEUS = DEPLOY / "compose" / "prometheus.yml"
ALERTS = DEPLOY / "compose" / "alerts.yml"
K8S_BASE = DEPLOY / "k8s" / "base"
DASHBOARD = DEPLOY / "grafana" / "mlbus.json"
FRAUD_SPEC = ROOT / "examples" / "fraud" / "mlbus.yaml"
IMAGE_ENTRYPOINT = ["python", "-m"]  # deploy/docker/Dockerfile
METRICS_PORT_ENV = "MLBUS_TELEMETRY_METRICS_PORT"
MLBUS_VAR = re.compile(r"\bMLBUS_[A-Z0-9][A-Z0-9_]*\b")
MLBUS_METRIC = re.compile(r"\bmlbus_[a-z0-9_]+\b")

# ---------------------------------------------------------------- what the code defines


def env_names(cls: type[BaseSettings]) -> set[str]:
    """Every environment variable `cls` reads, from its env_prefix and fields."""
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    delimiter = cls.model_config.get("env_nested_delimiter")
    names: set[str] = set()
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {c.upper() for c in alias.choices if isinstance(c, str) and c != field_name}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(prefix + field_name.upper())
        block = field.annotation
        if inspect.isclass(block) and issubclass(block, BaseSettings):
            names |= env_names(block)  # the block's own prefix (its default factory reads it)
            if delimiter:
                names |= {
                    f"{prefix}{field_name.upper()}{delimiter}{sub.upper()}"
                    for sub in block.model_fields
                }
    return names


def settings_class(module: str) -> type[ServiceSettings]:
    """The ServiceSettings subclass a service module defines in `<module>._settings`."""
    mod = importlib.import_module(f"{module}._settings")
    found = [
        obj
        for obj in vars(mod).values()
        if inspect.isclass(obj) and issubclass(obj, ServiceSettings) and obj is not ServiceSettings
    ]
    assert len(found) == 1, f"{module}._settings should define one settings class: {found}"
    return found[0]


def installed_services() -> dict[str, str]:
    """Service name -> module, for the services whose code exists (`mlbus up` runs the same)."""
    return {spec.name: spec.module for spec in SERVICES if spec.installed()}


def cli_commands() -> set[tuple[str, ...]]:
    """Every runnable `mlbus` command path: ("up",), ("models", "rollback"), … (not groups)"""
    import typer.main

    from mlbus.cli import app

    paths: set[tuple[str, ...]] = set()

    def walk(command: Any, path: tuple[str, ...]) -> None:
        if not hasattr(command, "commands"):
            paths.add(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return paths


def defined_metrics() -> set[str]:
    """Prometheus names of the metrics the code creates (dots → _, counters + _total):
    OpenTelemetry instruments and `prometheus_client` metric families."""
    instruments = re.compile(
        r"create_(counter|up_down_counter|histogram|gauge|observable_gauge|observable_counter)"
        r"\(\s*\"([a-z0-9_.]+)\"",
        re.S,
    )
    families = re.compile(r"\b(Counter|Histogram|Gauge)MetricFamily\(\s*\"([a-z0-9_]+)\"", re.S)
    names: set[str] = set()
    for folder in (ROOT / "libs" / "mlbus", ROOT / "services", ROOT / "app" / "mlbus"):
        for path in folder.rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for found, name in instruments.findall(text) + families.findall(text):
                kind = found.lower()
                base = name.replace(".", "_")
                if kind in ("counter", "observable_counter"):
                    names.add(base + "_total")
                elif kind == "histogram":
                    names |= {base + "_bucket", base + "_sum", base + "_count"}
                else:
                    names.add(base)
    return names


# ---------------------------------------------------------------- checkers


def resolve_argv(argv: list[str]) -> str:
    """The mlbus module or CLI command `argv` runs; raises AssertionError if none."""
    if argv[:2] == ["python", "-m"] and len(argv) >= 3:
        module = argv[2]
        assert module.startswith("mlbus."), f"{argv}: not an mlbus module"
        if module == "mlbus.cli":
            return resolve_argv(["mlbus", *argv[3:]])
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        assert found, f"{argv}: no module {module}"
        return module
    if argv and argv[0] == "mlbus":
        words = tuple(a for a in argv[1:] if not a.startswith("-"))
        commands = cli_commands()
        assert any(words[: len(p)] == p for p in commands if p), f"{argv}: no such mlbus command"
        return "mlbus"
    raise AssertionError(f"{argv}: neither `python -m mlbus.<name>` nor `mlbus …`")


def check_env(env: dict[str, Any], module: str, where: str) -> None:
    valid = env_names(settings_class(module))
    unknown = sorted(name for name in env if name.startswith("MLBUS_") and name not in valid)
    assert not unknown, f"{where}: not settings of {module}: {unknown}"


def configured_port(env: dict[str, Any], module: str, field: str = "grpc_port") -> int | None:
    """The port the service listens on with this environment (env var, else the default)."""
    cls = settings_class(module)
    if field == "metrics_port":
        value = env.get(METRICS_PORT_ENV)
        return int(value) if value is not None else None
    if field not in cls.model_fields:
        return None
    value = env.get(str(cls.model_config["env_prefix"]) + field.upper())
    return int(value) if value is not None else int(cls.model_fields[field].default)


def check_topic_job(command: str, spec_topics: set[str]) -> None:
    created = set(re.findall(r"^\s*create\s+(\S+)\s+\d+\s*$", command, re.M))
    missing = sorted((set(ALL_TOPICS) | spec_topics) - created)
    assert not missing, f"topic job does not create {missing}"


def cli_params(argv: list[str]) -> dict[str, Any]:
    """The parameter values the `mlbus` command line `argv` would run its command with."""
    import typer.main

    from mlbus.cli import app

    assert argv[:1] == ["mlbus"], f"{argv}: not the mlbus CLI"
    command: Any = typer.main.get_command(app)
    ctx = command.make_context("mlbus", argv[1:])
    while hasattr(command, "resolve_command"):  # a group: descend into the sub-command
        name, command, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        ctx = command.make_context(name, rest, parent=ctx)
    return dict(ctx.params)


def check_k8s_topics_job(job: dict[str, Any], configmaps: dict[str, dict[str, str]]) -> None:
    """The Job creates every mlbus topic and the mounted spec's source topics, data-plane
    topics with enough partitions for the production replicas."""
    from mlbus.cli._topics import wanted_topics

    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    argv = [*container["command"], *container.get("args", [])]
    assert resolve_argv(argv) == "mlbus"
    assert argv[1:3] == ["topics", "ensure"], f"{argv}: not `mlbus topics ensure`"
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    env.update({e["name"]: e.get("value") for e in container.get("env", [])})
    unknown = sorted(n for n in env if n.startswith("MLBUS_") and n not in env_names(MlbusSettings))
    assert not unknown, f"topics job: not shared settings: {unknown}"
    params = cli_params(argv)
    spec_path = params["spec"] or env.get("MLBUS_SPEC")
    assert spec_path, "topics job: no --spec, so the source topics would not be created"
    mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
    assert any(str(spec_path).startswith(m + "/") for m in mounts), f"{spec_path} not mounted"
    partitions = params["partitions"] or int(env.get("MLBUS_KAFKA_TOPIC_PARTITIONS", "3"))
    wanted = wanted_topics(
        load_spec(FRAUD_SPEC), partitions, params["control_partitions"] or partitions
    )
    spec_topics = {s.topic for s in load_spec(FRAUD_SPEC).sources.values()}
    missing = sorted((set(ALL_TOPICS) | spec_topics) - set(wanted))
    assert not missing, f"topics job does not create {missing}"
    assert int(env.get("MLBUS_KAFKA_REPLICATION_FACTOR", "1")) >= 3, "production needs 3 copies"
    assert wanted["mlbus.ingest.validated.v1"] >= 12, "too few partitions to scale features"


def check_dashboard(text: str) -> None:
    dashboard = json.loads(text)
    known = defined_metrics()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs, "dashboard queries nothing"
    for expr in exprs:
        used = set(MLBUS_METRIC.findall(expr))
        assert used, f"query uses no mlbus metric: {expr}"
        assert used <= known, f"not exported by the code: {sorted(used - known)} in {expr}"


# ---------------------------------------------------------------- manifests


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def compose_mlbus_services(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(name, service, module) of every compose service that runs an mlbus image."""
    for name, svc in doc["services"].items():
        if "build" in svc or str(svc.get("image", "")).startswith("mlbus"):
            entrypoint = svc.get("entrypoint", IMAGE_ENTRYPOINT)
            yield name, svc, resolve_argv([*entrypoint, *svc.get("command", [])])


def k8s_docs() -> list[dict[str, Any]]:
    files = sorted(p for p in K8S_BASE.glob("*.yaml") if p.name != "kustomization.yaml")
    return [d for p in files for d in load_all(p)]


def k8s_containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict, str]]:
    """(deployment, container, module) with the container's effective environment."""
    configmaps = {
        d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"
    }
    for dep in (d for d in docs if d["kind"] == "Deployment"):
        for c in dep["spec"]["template"]["spec"]["containers"]:
            argv = [*c.get("command", IMAGE_ENTRYPOINT), *c.get("args", [])]
            module = resolve_argv(argv)
            env: dict[str, Any] = {}
            for source in c.get("envFrom", []):
                env.update(configmaps[source["configMapRef"]["name"]])
            env.update({e["name"]: e.get("value") for e in c.get("env", [])})
            yield dep, {**c, "_env": env}, module


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    assert load_all(path), f"{path} is empty"


def test_expected_files_exist() -> None:
    for rel in (
        "docker/Dockerfile",
        "compose/compose.yaml",
        "compose/otel-collector.yaml",
        "compose/prometheus.yml",
        "k8s/base/kustomization.yaml",
        "k8s/overlays/production/kustomization.yaml",
        "grafana/mlbus.json",
    ):
        assert (DEPLOY / rel).is_file(), rel
    assert (ROOT / "docs" / "operations.md").is_file()


def test_dockerfile_installs_one_extra_and_runs_python_m() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text(encoding="utf-8")
    assert "FROM ${PYTHON_IMAGE}" in text
    assert "python:3.11-slim" in text
    assert 'pip install -c constraints.txt ".[${SERVICE}]"' in text
    assert re.search(r"^USER (?!0|root)\S+", text, re.M), "image must not run as root"
    assert f"ENTRYPOINT {json.dumps(IMAGE_ENTRYPOINT)}" in text


def test_compose_runs_every_installed_service() -> None:
    doc = compose()
    modules = {module for _, _, module in compose_mlbus_services(doc)}
    assert modules == set(installed_services().values())
    for name in ("kafka", "redis", "postgres", "minio", "otel-collector", "jaeger", "prometheus"):
        assert name in doc["services"], name


def test_compose_env_is_real_settings() -> None:
    for name, svc, module in compose_mlbus_services(compose()):
        env = svc["environment"]
        check_env(env, module, f"compose service {name}")
        assert env["MLBUS_KAFKA_ENABLE_IDEMPOTENCE"] == "true"
        assert env["MLBUS_SPEC"].startswith("/etc/mlbus/")
        assert any("examples/fraud:/etc/mlbus" in v for v in svc["volumes"])


def test_compose_stores_are_postgres_and_s3() -> None:
    services = {name: svc for name, svc, _ in compose_mlbus_services(compose())}
    reg = services["registry"]["environment"]
    assert reg["MLBUS_REGISTRY_DATABASE_URL"].startswith("postgresql")
    assert reg["MLBUS_REGISTRY_ARTIFACT_STORE"].startswith("s3://")
    for name, field in (("features", "FEATURES"), ("trainer", "TRAINER"), ("registry", "REGISTRY")):
        env = services[name]["environment"]
        assert env[f"MLBUS_{field}_S3_ENDPOINT_URL"].startswith("http://minio:")
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= set(env)
    for name, field in (("features", "FEATURES"), ("trainer", "TRAINER")):
        assert services[name]["environment"][f"MLBUS_{field}_OFFLINE_URL"].startswith("s3://")


def test_compose_ports_match_settings_and_prometheus_scrapes_them() -> None:
    scrape = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    targets = {
        t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    for name, svc, module in compose_mlbus_services(compose()):
        env = svc["environment"]
        grpc = configured_port(env, module)
        published = {int(str(p).split(":")[-1]) for p in svc.get("ports", [])}
        exposed = {int(p) for p in svc.get("expose", [])} | published
        if grpc is not None:
            assert grpc in published, f"{name}: gRPC port {grpc} not published ({published})"
        metrics = configured_port(env, module, "metrics_port")
        assert metrics is not None, f"{name}: no {METRICS_PORT_ENV}"
        assert metrics in exposed, f"{name}: metrics port {metrics} not exposed"
        assert f"{name}:{metrics}" in targets, f"prometheus does not scrape {name}:{metrics}"


def test_compose_creates_every_topic() -> None:
    job = compose()["services"]["kafka-topics"]
    assert "kafka-topics.sh" in job["command"][0]
    check_topic_job(job["command"][0], {s.topic for s in load_spec(FRAUD_SPEC).sources.values()})


def test_k8s_kustomization_lists_every_file() -> None:
    kustomization = yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S_BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_k8s_one_deployment_and_service_per_service() -> None:
    docs = k8s_docs()
    modules = {module for _, _, module in k8s_containers(docs)}
    assert modules == set(installed_services().values())
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert deployments == services
    assert {
        d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] == "HorizontalPodAutoscaler"
    } == {"mlbus-inference"}


def test_k8s_env_is_real_settings() -> None:
    docs = k8s_docs()
    secrets = {
        d["metadata"]["name"]: d.get("stringData", {}) for d in docs if d["kind"] == "Secret"
    }
    for dep, container, module in k8s_containers(docs):
        check_env(container["_env"], module, dep["metadata"]["name"])
        assert container["_env"]["MLBUS_KAFKA_ENABLE_IDEMPOTENCE"] == "true"
        for e in container.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets[ref["name"]], f"{e['name']}: no secret key {ref}"


def test_every_mlbus_variable_mentioned_in_deploy_exists() -> None:
    valid = env_names(MlbusSettings)
    for module in installed_services().values():
        valid |= env_names(settings_class(module))
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        unknown = set(MLBUS_VAR.findall(path.read_text(encoding="utf-8"))) - valid
        assert not unknown, f"{path.relative_to(ROOT)}: unknown {sorted(unknown)}"


def test_k8s_probes_and_service_ports_match_configured_ports() -> None:
    docs = k8s_docs()
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for dep, container, module in k8s_containers(docs):
        name = dep["metadata"]["name"]
        env = container["_env"]
        listening = {
            "grpc": configured_port(env, module),
            "http": configured_port(env, module, "http_port"),
            "metrics": configured_port(env, module, "metrics_port"),
        }
        declared = {p["name"]: p["containerPort"] for p in container["ports"]}
        for port_name, port in declared.items():
            assert listening.get(port_name) == port, f"{name}: {port_name} {port} != {listening}"
        if listening["grpc"] is not None:
            assert "grpc" in declared, f"{name}: gRPC port not declared"
        probes = [
            container[k]
            for k in ("readinessProbe", "livenessProbe", "startupProbe")
            if k in container
        ]
        assert {"readinessProbe", "livenessProbe"} <= set(container), name
        for probe in probes:
            if listening["grpc"] is not None:
                assert probe["grpc"]["port"] == listening["grpc"], f"{name}: probe {probe}"
            else:
                action = probe.get("httpGet") or probe.get("tcpSocket")
                port = action["port"]
                assert declared.get(port, port) in declared.values(), f"{name}: probe {probe}"
        for sp in services[name]["spec"]["ports"]:
            target = sp["targetPort"]
            assert declared.get(target, target) in declared.values(), f"{name}: Service {sp}"
        assert container["resources"]["requests"], f"{name}: no resource requests"


def k8s_topics_job() -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    docs = k8s_docs()
    jobs = [d for d in docs if d["kind"] == "Job"]
    assert [j["metadata"]["name"] for j in jobs] == ["mlbus-topics"]
    configmaps = {
        d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"
    }
    return jobs[0], configmaps


def test_k8s_topics_job_creates_every_topic() -> None:
    check_k8s_topics_job(*k8s_topics_job())


def test_k8s_termination_grace_covers_drain() -> None:
    for dep, container, module in k8s_containers(k8s_docs()):
        cls = settings_class(module)
        if "shutdown_grace_s" not in cls.model_fields:
            continue
        env = container["_env"]
        var = str(cls.model_config["env_prefix"]) + "SHUTDOWN_GRACE_S"
        drain = float(env.get(var, cls.model_fields["shutdown_grace_s"].default))
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
        sleep = float(pre_stop["command"][-1]) if pre_stop else 0.0
        grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert sleep + drain < grace <= sleep + drain + 30, f"{dep['metadata']['name']}: {grace}"


def test_production_overlay_builds_on_base() -> None:
    overlay = DEPLOY / "k8s" / "overlays" / "production" / "kustomization.yaml"
    doc = yaml.safe_load(overlay.read_text(encoding="utf-8"))
    assert "../../base" in doc["resources"]
    names = {d["metadata"]["name"] for d in k8s_docs()}
    assert {r["name"] for r in doc["replicas"]} <= names
    assert {p["target"]["name"] for p in doc["patches"]} <= names


def test_dashboard_queries_only_exported_metrics() -> None:
    check_dashboard(DASHBOARD.read_text(encoding="utf-8"))


def test_alert_rules_use_exported_metrics() -> None:
    known = defined_metrics()
    rules = [
        r for g in yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"] for r in g["rules"]
    ]
    for rule in rules:
        assert set(MLBUS_METRIC.findall(rule["expr"])) <= known, rule["alert"]


# ---------------------------------------------------------------- the checkers can fail


def test_env_names_come_from_the_classes() -> None:
    names = env_names(settings_class("mlbus.inference"))
    assert {"MLBUS_INFERENCE_GRPC_PORT", "MLBUS_KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"} <= names
    assert {"MLBUS_SPEC", "MLBUS_DATA_DIR", "OTEL_EXPORTER_OTLP_ENDPOINT"} <= names
    assert "MLBUS_INFERENCE_KAFKA__CLIENT_ID" in names
    assert "MLBUS_REGISTRY_DATABASE_URL" not in names


def test_made_up_variable_is_rejected() -> None:
    with pytest.raises(AssertionError, match="MLBUS_INFERENCE_GPRC_PORT"):
        check_env({"MLBUS_INFERENCE_GPRC_PORT": "8001"}, "mlbus.inference", "fake")
    with pytest.raises(AssertionError, match="MLBUS_REGISTRY_TOKEN"):
        check_env({"MLBUS_REGISTRY_TOKEN": "x"}, "mlbus.inference", "another service's setting")


def test_unknown_entry_point_is_rejected() -> None:
    assert resolve_argv(["python", "-m", "mlbus.inference"]) == "mlbus.inference"
    assert resolve_argv(["mlbus", "models", "rollback", "fraud"]) == "mlbus"
    assert resolve_argv(["mlbus", "topics", "ensure", "--spec", "x.yaml"]) == "mlbus"
    for argv in (
        ["python", "-m", "mlbus.nosuch"],
        ["python", "-m", "json.tool"],
        ["mlbus", "modles", "list"],
        ["mlbus", "topics", "lsit"],  # a group with an unknown sub-command
        ["mlbus", "models"],  # a group alone runs nothing
        ["gunicorn", "app"],
    ):
        with pytest.raises(AssertionError):
            resolve_argv(argv)


def test_port_mismatch_is_detected() -> None:
    assert configured_port({}, "mlbus.inference") == 8001
    assert configured_port({"MLBUS_REGISTRY_GRPC_PORT": "9000"}, "mlbus.registry") == 9000
    assert configured_port({}, "mlbus.ingestion") is None
    env = {"MLBUS_INFERENCE_GRPC_PORT": "8101"}
    assert configured_port(env, "mlbus.inference") != 8001  # a probe on 8001 would fail the check


def test_missing_topic_is_rejected() -> None:
    with pytest.raises(AssertionError, match=r"mlbus\.model\.published\.v1"):
        check_topic_job("create mlbus.ingest.validated.v1 12\n", set())


def test_incomplete_topics_job_is_rejected() -> None:
    import copy

    job, configmaps = k8s_topics_job()
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert cli_params(container["command"])["control_partitions"] == 3
    ensure = ["mlbus", "topics", "ensure"]
    no_spec_env = {
        name: {k: v for k, v in data.items() if k != "MLBUS_SPEC"}
        for name, data in configmaps.items()
    }
    broken = [
        (ensure, no_spec_env, "no --spec"),  # MLBUS_SPEC from the ConfigMap would do
        (["mlbus", "topics", "lsit"], configmaps, "no such mlbus command"),
        ([*ensure, "--spec", "/elsewhere/mlbus.yaml"], configmaps, "not mounted"),
        ([*ensure, "--partitions", "2"], configmaps, "too few partitions"),
    ]
    for command, maps, reason in broken:
        bad = copy.deepcopy(job)
        bad["spec"]["template"]["spec"]["containers"][0]["command"] = command
        with pytest.raises(AssertionError, match=reason):
            check_k8s_topics_job(bad, maps)
    single_copy = {
        name: {**data, "MLBUS_KAFKA_REPLICATION_FACTOR": "1"} for name, data in configmaps.items()
    }
    with pytest.raises(AssertionError, match="3 copies"):
        check_k8s_topics_job(job, single_copy)


def test_unknown_dashboard_metric_is_rejected() -> None:
    good = {"panels": [{"targets": [{"expr": "sum(rate(mlbus_ingest_accepted_total[5m]))"}]}]}
    check_dashboard(json.dumps(good))
    for expr in (
        "sum(rate(mlbus_ingest_accepted[5m]))",
        "rate(mlbus_inference_latency_bucket[5m])",
    ):
        bad = {"panels": [{"targets": [{"expr": expr}]}]}
        with pytest.raises(AssertionError, match="not exported"):
            check_dashboard(json.dumps(bad))
    with pytest.raises(json.JSONDecodeError):
        check_dashboard("{not json")
