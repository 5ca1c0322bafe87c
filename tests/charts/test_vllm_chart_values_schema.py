"""values.schema.json: helm rejects bad values, the schema covers every value, the README documents it."""

from __future__ import annotations

import json
import re

import pytest
import yaml

OK_URI = "s3://b/kubetune/releases/contracts/v3/"

INVALID = {
    "missing release uri": ({}, "/release"),
    "latest as version": ({"release": {"uri": "s3://b/p/releases/contracts/latest/"}}, "/release/uri"),
    "latest anywhere, any case": ({"release": {"uri": "s3://b/p/releases/contracts/v2-LATEST"}},
                                  "/release/uri"),
    "not a release directory": ({"release": {"uri": "s3://b/p/models/contracts"}}, "/release/uri"),
    "not s3 or file": ({"release": {"uri": "hf://org/releases/contracts/v1"}}, "/release/uri"),
    "negative gpu count": ({"gpu": {"count": -1}}, "/gpu/count"),
    "unknown top-level key": ({"replicas": 2}, "additional properties 'replicas'"),
    "unknown nested key": ({"vllm": {"maxModelLen": 2048}}, "additional properties 'maxModelLen'"),
    "misspelt alert threshold": ({"metrics": {"prometheusRule": {"alerts": {"queue": {"treshold": 3}}}}},
                                 "additional properties 'treshold'"),
    "gpu memory utilization over 1": ({"vllm": {"gpuMemoryUtilization": 1.5}}, "/vllm/gpuMemoryUtilization"),
    "max model len zero": ({"model": {"maxModelLen": 0}}, "/model/maxModelLen"),
    "max model len not an integer": ({"model": {"maxModelLen": "4k"}}, "/model/maxModelLen"),
    "unknown model source": ({"model": {"source": "gguf"}}, "/model/source"),
    "unknown autoscaler": ({"autoscaling": {"kind": "vpa"}}, "/autoscaling/kind"),
    "image tag latest": ({"image": {"tag": "latest"}}, "/image/tag"),
    "adapter name with =": ({"lora": {"adapters": [{"name": "a=b", "path": "adapter"}]}},
                            "/lora/adapters/0/name"),
    "adapter without path": ({"lora": {"adapters": [{"name": "a"}]}}, "/lora/adapters/0"),
    "unknown cache type": ({"cache": {"type": "hostPath"}}, "/cache/type"),
    "bad duration": ({"metrics": {"prometheusRule": {"rateWindow": "5 minutes"}}},
                     "/metrics/prometheusRule/rateWindow"),
    "unknown scrape protocol": ({"metrics": {"serviceMonitor": {"scrapeProtocols": ["JSON"]}}},
                                "/metrics/serviceMonitor/scrapeProtocols/0"),
}


@pytest.mark.parametrize("case", INVALID)
def test_helm_rejects_invalid_values(chart, case):
    values, where = INVALID[case]
    if "release" not in values and case != "missing release uri":
        values = {"release": {"uri": OK_URI}, **values}
    proc = chart.template_raw(values, defaults=False)
    assert proc.returncode != 0, f"accepted: {values}"
    assert "schema" in proc.stderr and where in proc.stderr, proc.stderr


@pytest.mark.parametrize("uri", [
    OK_URI,
    "s3://b/kubetune/releases/contracts/20261129T120000Z-0a1b2c3",
    "file:///srv/kubetune/releases/contracts/v1/",
])
def test_helm_accepts_release_uris(chart, uri):
    proc = chart.template_raw({"release": {"uri": uri}}, defaults=False)
    assert proc.returncode == 0, proc.stderr


def test_lint_rejects_the_defaults_without_a_release(chart):
    proc = chart.lint(defaults=False)
    assert proc.returncode != 0 and "/release/uri" in proc.stdout + proc.stderr


def _closed(schema) -> bool:
    return schema.get("type") == "object" and schema.get("additionalProperties") is False


def _schema_at(schema, path):
    """The schema of a value path; an open object (a Kubernetes passthrough) covers all below it."""
    for key in path:
        props = schema.get("properties", {})
        if key in props:
            schema = props[key]
        elif isinstance(schema.get("additionalProperties"), dict):
            schema = schema["additionalProperties"]  # a map: labels, annotations, ...
        elif schema.get("type") == "object" and not _closed(schema):
            return schema
        else:
            return None
    return schema


def _leaves(node, prefix=()):
    """Every leaf path of values.yaml (an empty map or list is a leaf)."""
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaves(v, (*prefix, k))
    else:
        yield prefix


def _documented_keys(node, schema, prefix=()):
    """The value paths the README documents: down through the chart's own (closed) objects, stopping
    at Kubernetes passthroughs such as resources or podSecurityContext."""
    sub = _schema_at(schema, prefix) if prefix else schema
    if isinstance(node, dict) and sub is not None and _closed(sub):
        for k, v in node.items():
            yield from _documented_keys(v, schema, (*prefix, k))
    else:
        yield ".".join(prefix)


def _values_and_schema(chart):
    values = yaml.safe_load((chart.dir / "values.yaml").read_text())
    schema = json.loads((chart.dir / "values.schema.json").read_text())
    return values, schema


def test_schema_covers_every_value(chart):
    values, schema = _values_and_schema(chart)
    missing = [".".join(p) for p in _leaves(values) if _schema_at(schema, p) is None]
    assert not missing, f"values without a schema: {missing}"


def test_schema_closes_every_chart_owned_object(chart):
    """Objects the chart defines forbid unknown keys; only Kubernetes passthroughs stay open."""
    _, schema = _values_and_schema(chart)
    open_objects = []

    def walk(node, path):
        if node.get("description", "").startswith(("Kubernetes", "HorizontalPodAutoscaler")):
            return  # a Kubernetes type, passed through as is
        if node.get("type") == "object" and "properties" in node and not _closed(node):
            open_objects.append(".".join(path))
        for k, v in node.get("properties", {}).items():
            walk(v, (*path, k))
        if isinstance(node.get("items"), dict):
            walk(node["items"], (*path, "[]"))

    walk(schema, ("values",))
    assert not open_objects, open_objects


def test_readme_documents_every_value(chart):
    values, schema = _values_and_schema(chart)
    readme = (chart.dir / "README.md").read_text().split("\n## Values\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\|\s*`([^`]+)`\s*\|", readme, flags=re.M))
    expected = set(_documented_keys(values, schema))
    assert not expected - documented, f"values missing from the README: {sorted(expected - documented)}"
    assert not documented - expected, f"the README documents unknown values: {sorted(documented - expected)}"


def test_release_snippet_in_readme_renders(chart):
    """The README's "Values set by a kubetune release" example is exactly what publish writes."""
    readme = (chart.dir / "README.md").read_text()
    section = readme.split("## Values set by a kubetune release", 1)[1]
    snippet = re.search(r"```yaml\n(.*?)```", section, flags=re.S).group(1)
    values = yaml.safe_load(snippet)
    assert set(values) <= {"release", "model", "lora", "vllm"}
    docs = chart.render(values, defaults=False)
    args = chart.container(docs)["args"]
    assert f"--served-model-name={values['model']['servedName']}" in args
    assert f"--max-model-len={values['model']['maxModelLen']}" in args
