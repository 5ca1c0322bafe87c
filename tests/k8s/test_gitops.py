"""k8s/gitops/: the Argo CD Applications and Flux HelmReleases serve charts/vllm with each environment's
values file, and each values file renders the chart into objects that validate strictly."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml
from k8s_helpers import CHART, ENVIRONMENTS, K8S, REPO, load_docs, run

GITOPS = K8S / "gitops"
CHART_CRDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def application(env: str) -> dict:
    return load_docs(GITOPS / "argocd" / f"application-{env}.yaml")[0]


def helmrelease(env: str) -> dict:
    return load_docs(GITOPS / "flux" / f"helmrelease-{env}.yaml")[0]


def test_every_environment_has_both_gitops_entries():
    envs = sorted(p.parent.name for p in GITOPS.glob("*/values.yaml"))
    assert envs == sorted(ENVIRONMENTS)
    assert sorted(p.stem.removeprefix("application-") for p in (GITOPS / "argocd").glob("application-*.yaml")) == envs
    assert sorted(p.stem.removeprefix("helmrelease-") for p in (GITOPS / "flux").glob("helmrelease-*.yaml")) == envs


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_argocd_application(env):
    app = application(env)
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    assert app["metadata"]["namespace"] == "argocd"
    src = app["spec"]["source"]
    chart_dir = REPO / src["path"]
    assert chart_dir == CHART and (chart_dir / "Chart.yaml").is_file()
    # Argo CD resolves valueFiles relative to the chart directory; each must be this environment's file.
    files = [(chart_dir / f).resolve() for f in src["helm"]["valueFiles"]]
    assert files == [(GITOPS / env / "values.yaml").resolve()]
    assert all(f.is_file() for f in files)
    assert app["spec"]["destination"]["namespace"] == f"llm-{env}"
    sync = app["spec"]["syncPolicy"]
    assert sync["automated"] == {"prune": True, "selfHeal": True}
    assert "CreateNamespace=true" in sync["syncOptions"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_flux_helmrelease_tests_and_remediates(env):
    hr = helmrelease(env)
    assert (hr["apiVersion"], hr["kind"]) == ("helm.toolkit.fluxcd.io/v2", "HelmRelease")
    spec = hr["spec"]
    assert spec["test"]["enable"] is True
    assert spec["install"]["remediation"]["retries"] >= 1
    assert spec["upgrade"]["remediation"]["retries"] >= 1
    assert spec["upgrade"]["remediation"]["strategy"] == "rollback"
    assert spec["upgrade"]["remediation"]["remediateLastFailure"] is True
    assert spec["targetNamespace"] == f"llm-{env}"
    chart = spec["chart"]["spec"]
    assert (REPO / chart["chart"]).resolve() == CHART
    # valuesFiles are relative to the source's root, and replace the chart's values.yaml: list it first.
    assert chart["valuesFiles"] == ["charts/vllm/values.yaml", f"k8s/gitops/{env}/values.yaml"]
    assert all((REPO / f).is_file() for f in chart["valuesFiles"])
    source = load_docs(GITOPS / "flux" / "gitrepository.yaml")[0]
    assert (source["apiVersion"], source["kind"]) == ("source.toolkit.fluxcd.io/v1", "GitRepository")
    assert chart["sourceRef"] == {"kind": "GitRepository", "name": source["metadata"]["name"],
                                  "namespace": source["metadata"]["namespace"]}
    assert chart["reconcileStrategy"] == "Revision"
    # Argo CD and Flux follow the same repository and branch.
    app_src = application(env)["spec"]["source"]
    assert (source["spec"]["url"], source["spec"]["ref"]["branch"]) == (app_src["repoURL"], app_src["targetRevision"])


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_environment_values_render_valid_objects(helm, env, version):
    out = run([helm, "template", "contracts", str(CHART), "--namespace", f"llm-{env}",
               "-f", str(GITOPS / env / "values.yaml")]).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ServiceAccount"} <= kinds
    for doc in docs:
        if doc["kind"] in CHART_CRDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{env}: {doc['kind']} {doc['metadata']['name']}: {e.message} at {list(e.path)}")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    values = yaml.safe_load((GITOPS / env / "values.yaml").read_text())
    assert dep["metadata"]["annotations"]["kubetune.io/release-uri"] == values["release"]["uri"]
    vllm = next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm")
    assert f"--served-model-name={values['model']['servedName']}" in vllm["args"]
    assert f"--max-model-len={values['model']['maxModelLen']}" in vllm["args"]


def test_values_with_latest_do_not_render(helm, tmp_path):
    """The chart's schema backs promote up: a values file pinning "latest" cannot be deployed."""
    values = yaml.safe_load((GITOPS / "staging" / "values.yaml").read_text())
    values["release"]["uri"] = "s3://ml-artifacts/kubetune/releases/contracts-llama31-8b/latest/"
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    proc = run([helm, "template", "contracts", str(CHART), "-f", str(path)], check=False)
    assert proc.returncode != 0 and "/release/uri" in proc.stderr
