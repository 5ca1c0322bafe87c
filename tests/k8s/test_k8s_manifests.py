"""k8s/: every manifest and every kustomize build validates with `kubernetes-validate --strict`; custom
resources parse with the right apiVersion and kind; names agree with the pipeline and configs; the
runner's RBAC is least privilege; the Secret is a template with no values."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from k8s_helpers import K8S, REPO, load_docs, run, tool

# The oldest Kubernetes we support (as charts/vllm) and the newest schemas kubernetes-validate bundles.
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
# Custom resources: no schema in kubernetes-validate; they must parse with exactly these apiVersions.
CRDS = {
    "Application": "argoproj.io/v1alpha1",
    "HelmRelease": "helm.toolkit.fluxcd.io/v2",
    "GitRepository": "source.toolkit.fluxcd.io/v1",
    "HelmRepository": "source.toolkit.fluxcd.io/v1",
    "Pipeline": "pipelines.kubeflow.org/v2beta1",
    "PipelineVersion": "pipelines.kubeflow.org/v2beta1",
}
NOT_MANIFESTS = {"kustomization.yaml", "values.yaml"}  # kustomize input and Helm values, checked elsewhere


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name not in NOT_MANIFESTS)


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def rel(p: Path) -> str:
    return p.relative_to(REPO).as_posix()


def validate_cli(paths: list[Path], version: str) -> str:
    """`kubernetes-validate --strict` on files; returns its output (it must exit 0)."""
    proc = run([tool("kubernetes-validate", "install"), "--strict", "-k", version, *map(str, paths)], check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def check_validated(docs_by_file: dict[Path, list[dict]], out: str) -> None:
    """Each built-in object passed; each custom resource was only skipped for lack of a schema."""
    for path, docs in docs_by_file.items():
        for doc in docs:
            kind, api = doc["kind"], doc["apiVersion"]
            if kind in CRDS:
                assert api == CRDS[kind], f"{path}: {kind} has apiVersion {api}, expected {CRDS[kind]}"
                assert f"Couldn't find schema for kind {kind} with api version {api}" in out
            else:
                name = doc["metadata"]["name"]
                assert re.search(rf"{re.escape(str(path))} passed for resource {kind.lower()}/{re.escape(name)} ",
                                 out), f"{path}: {kind} {name} not validated:\n{out}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_strictly(version):
    files = manifest_files()
    assert {rel(p) for p in files} >= {"k8s/namespace.yaml", "k8s/rbac.yaml", "k8s/model-cache-pvc.yaml",
                                       "k8s/s3-secret.template.yaml", "k8s/gitops/argocd/application-prod.yaml",
                                       "k8s/gitops/flux/helmrelease-prod.yaml", "k8s/gitops/flux/gitrepository.yaml"}
    out = validate_cli(files, version)
    check_validated({p: load_docs(p) for p in files}, out)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("directory", [rel(d) for d in kustomization_dirs()])
def test_kustomize_build_validates_strictly(kubectl, tmp_path, directory, version):
    built = run([kubectl, "kustomize", directory]).stdout
    path = tmp_path / "built.yaml"
    path.write_text(built)
    docs = [d for d in yaml.safe_load_all(built) if d]
    assert docs, f"kubectl kustomize {directory} built nothing"
    check_validated({path: docs}, validate_cli([path], version))


def test_kustomizations_list_every_manifest_of_their_directory():
    """A manifest nobody applies is a bug; the Secret template is the one deliberate exception."""
    for d in kustomization_dirs():
        listed = set(yaml.safe_load((d / "kustomization.yaml").read_text())["resources"])
        present = {p.name for p in d.glob("*.yaml") if p.name != "kustomization.yaml"}
        assert listed <= present | {r for r in listed if r.endswith("/")}, d
        assert present - listed <= {"s3-secret.template.yaml"}, f"{rel(d)}: not in kustomization.yaml: " \
                                                                 f"{sorted(present - listed)}"


def test_strict_validation_can_fail(tmp_path):
    broken = yaml.safe_load((K8S / "model-cache-pvc.yaml").read_text())
    broken["spec"]["accessMode"] = ["ReadWriteOnce"]  # misspelt field
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    proc = run([tool("kubernetes-validate", "install"), "--strict", str(path)], check=False)
    assert proc.returncode != 0 and "accessMode" in proc.stdout + proc.stderr


def test_base_install_is_namespaced_consistently(kubectl):
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    ns = kustomization["namespace"]
    assert ns == "kubetune"
    docs = [d for d in yaml.safe_load_all(run([kubectl, "kustomize", "k8s"]).stdout) if d]
    assert sorted(d["kind"] for d in docs) == ["Namespace", "PersistentVolumeClaim", "Role", "RoleBinding",
                                               "ServiceAccount"]
    for d in docs:
        if d["kind"] == "Namespace":
            assert d["metadata"]["name"] == ns
            assert d["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"
        else:
            assert d["metadata"]["namespace"] == ns
    for name in ("namespace.yaml", "rbac.yaml", "model-cache-pvc.yaml", "s3-secret.template.yaml"):
        for d in load_docs(K8S / name):
            assert d["metadata"].get("namespace", d["metadata"]["name"]) == ns, name


def test_names_match_the_pipeline_and_configs():
    from components.common.config import ClusterConfig, load_config
    from pipelines.doctor import S3_KEYS, DoctorOptions
    from pipelines.finetune import S3_SECRET_KEYS

    secret = load_docs(K8S / "s3-secret.template.yaml")[0]
    pvc = load_docs(K8S / "model-cache-pvc.yaml")[0]
    sa = next(d for d in load_docs(K8S / "rbac.yaml") if d["kind"] == "ServiceAccount")
    assert secret["metadata"]["name"] == ClusterConfig().s3_secret_name
    for config in ("llama3.1-8b-qlora", "mistral-7b-lora"):
        cluster = load_config(REPO / "pipelines" / "configs" / f"{config}.yaml").cluster
        assert cluster.s3_secret_name == secret["metadata"]["name"], config
        assert cluster.cache_pvc in (None, pvc["metadata"]["name"]), config
    assert load_config(REPO / "pipelines" / "configs" / "llama3.1-8b-qlora.yaml").cluster.cache_pvc == \
        pvc["metadata"]["name"]
    # Every key the steps read from the Secret is in the template, and doctor checks the same keys.
    assert set(secret["stringData"]) == set(S3_SECRET_KEYS) == set(S3_KEYS)
    d = DoctorOptions()
    assert (d.namespace, d.secret, d.pvc, d.service_account) == (
        secret["metadata"]["namespace"], secret["metadata"]["name"], pvc["metadata"]["name"], sa["metadata"]["name"])


def test_secret_template_holds_no_values():
    text = (K8S / "s3-secret.template.yaml").read_text()
    secret = load_docs(K8S / "s3-secret.template.yaml")[0]
    assert "data" not in secret
    assert all(v == "" for v in secret["stringData"].values())
    assert "TEMPLATE" in text and "kustomization.yaml" in text


def test_runner_rbac_is_least_privilege():
    docs = load_docs(K8S / "rbac.yaml")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Role", "RoleBinding", "ServiceAccount"]  # namespaced only: no ClusterRole(Binding)
    role = next(d for d in docs if d["kind"] == "Role")
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
    allowed = {("argoproj.io", "workflowtaskresults"): {"create", "patch"},
               ("", "configmaps"): {"get"}, ("", "secrets"): {"get"}}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource) and "*" not in rule["verbs"], rule
                assert (group, resource) in allowed, f"unexpected permission on {group or 'core'}/{resource}"
                assert set(rule["verbs"]) <= allowed[(group, resource)], rule
                if resource in ("secrets", "configmaps"):  # never "any Secret": only named ones
                    assert rule.get("resourceNames"), rule
    secret_names = {n for r in role["rules"] if "secrets" in r["resources"] for n in r["resourceNames"]}
    assert "kubetune-s3" not in secret_names  # the steps get it as env from the kubelet; no API read needed


def test_model_cache_pvc():
    pvc = load_docs(K8S / "model-cache-pvc.yaml")[0]
    assert pvc["spec"]["accessModes"] in (["ReadWriteOnce"], ["ReadWriteMany"])
    assert re.fullmatch(r"\d+Gi", pvc["spec"]["resources"]["requests"]["storage"])
