"""docs/deploy.md ("Deploy to a cluster"): every command in its code blocks is run, in the guide's order,
or, where it needs a cluster, the offline part of it (the table at the end of the guide says which).

Stand-ins replace what cannot run here: the Kubernetes API (tests/k8s/kube_api_standin.py), the KFP
API (tests/pipelines/kfp_standin.py), Docker (a script that records its arguments) and the GitOps
remote (a bare repository in a temporary directory). A command that no handler below knows fails the
test: a new command in the guide needs a way to be exercised."""

from __future__ import annotations

import base64
import re
import shutil
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from k8s_helpers import K8S, REPO, publish_release, run, tool
from kube_api_standin import StandInKubeAPI
from test_k8s_manifests import kustomization_dirs, manifest_files

DOC = REPO / "docs" / "deploy.md"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
S3_ENV = {"AWS_ACCESS_KEY_ID": "AKIADOCTEST", "AWS_SECRET_ACCESS_KEY": "doc-test-secret",
          "AWS_ENDPOINT_URL_S3": "https://s3.doc-test.example.com"}


def doc_commands(text: str | None = None) -> list[str]:
    """The shell commands of the guide's ```bash blocks: continuation lines joined, comments dropped."""
    text = DOC.read_text() if text is None else text
    commands = []
    for block in re.findall(r"^```(?:bash|sh|shell|console)\n(.*?)^```", text, re.S | re.M):
        for cmd in re.sub(r"\\\n\s*", "", block).splitlines():
            cmd = cmd.strip()
            if cmd and not cmd.startswith("#"):
                commands.append(cmd)
    return commands


@dataclass
class Deploy:
    tmp: Path
    env: dict
    kube: StandInKubeAPI
    kfp: object
    gitops: Path
    origin: Path
    docker_log: Path
    fake_docker: Path
    image_tag: str
    ran: list[str] = field(default_factory=list)

    def sub(self, cmd: str) -> str:
        """Outputs the guide writes into the working directory go to the temporary directory."""
        return cmd.replace("my-config.yaml", str(self.tmp / "my-config.yaml"))

    def sh(self, cmd: str, cwd: Path = REPO, check: bool = True):
        return run(["bash", "-euo", "pipefail", "-c", cmd], cwd=cwd, env=self.env, check=check, timeout=900)


@pytest.fixture(scope="module")
def deploy(tmp_path_factory):
    sys.path.insert(0, str(REPO / "tests" / "pipelines"))
    from kfp_standin import FakeKfpApiServer

    tmp = tmp_path_factory.mktemp("deploy")
    kube = StandInKubeAPI().start()
    kfp = FakeKfpApiServer().start()
    kubeconfig = kube.kubeconfig(tmp / "kubeconfig")
    git = tool("git", "install")
    # The GitOps repository: a bare "origin" and a clone holding the environments' values files.
    origin, gitops = tmp / "origin.git", tmp / "gitops"
    for env in ("staging", "prod"):
        (gitops / "k8s" / "gitops" / env).mkdir(parents=True)
        shutil.copy(K8S / "gitops" / env / "values.yaml", gitops / "k8s" / "gitops" / env / "values.yaml")
    git_env = {"GIT_AUTHOR_NAME": "doc", "GIT_AUTHOR_EMAIL": "doc@example.com", "GIT_COMMITTER_NAME": "doc",
               "GIT_COMMITTER_EMAIL": "doc@example.com"}
    run([git, "init", "-q", "--bare", "-b", "main", str(origin)])
    run([git, "init", "-q", "-b", "main"], cwd=gitops)
    run([git, "add", "."], cwd=gitops, env=git_env)
    run([git, "commit", "-q", "-m", "environments"], cwd=gitops, env=git_env)
    run([git, "remote", "add", "origin", str(origin)], cwd=gitops)
    run([git, "push", "-q", "-u", "origin", "main"], cwd=gitops, env=git_env)
    docker_log, fake_docker = tmp / "docker.log", tmp / "fake-docker"
    fake_docker.write_text(f'#!/bin/sh\n# stand-in for docker: records the command line\necho "$*" >> {docker_log}\n')
    fake_docker.chmod(0o755)
    release = publish_release(tmp_path_factory.mktemp("store").as_uri())
    home = tmp / "home"
    home.mkdir()
    env = {**S3_ENV, **git_env, "KUBECONFIG": str(kubeconfig), "KFP_HOST": kfp.url, "RELEASE": release,
           "HOME": str(home), "KF_PIPELINES_SA_TOKEN_PATH": str(tmp / "no-sa-token")}
    for name in ("KF_PIPELINES_TOKEN", "KUBETUNE_KFP_TOKEN", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT"):
        env[name] = ""
    tag = run(["make", "-s", "image-tag"]).stdout.strip()
    yield Deploy(tmp=tmp, env=env, kube=kube, kfp=kfp, gitops=gitops, origin=origin, docker_log=docker_log,
                 fake_docker=fake_docker, image_tag=tag)
    kfp.stop()
    kube.stop()


# ---- handlers: (pattern, function(deploy, command, match)) ---------------------------------------
def kubectl_apply_k(d: Deploy, cmd: str, m: re.Match) -> None:
    directory = (REPO / m.group(1)).resolve()
    assert directory in [p.resolve() for p in kustomization_dirs()], f"{m.group(1)} is not a validated kustomization"
    built = d.sh(f"kubectl kustomize {m.group(1)}").stdout
    assert [doc for doc in yaml.safe_load_all(built) if doc]


def kubectl_apply_f(d: Deploy, cmd: str, m: re.Match) -> None:
    path = (REPO / m.group(1)).resolve()
    assert path in [p.resolve() for p in manifest_files()], f"{m.group(1)} is not a validated manifest"


def kubectl_create(d: Deploy, cmd: str, m: re.Match) -> None:
    obj = yaml.safe_load(d.sh(cmd + " --dry-run=client -o yaml").stdout)
    if obj["kind"] == "Secret":
        template = yaml.safe_load((K8S / "s3-secret.template.yaml").read_text())
        assert obj["metadata"]["name"] == template["metadata"]["name"]
        assert {k: base64.b64decode(v).decode() for k, v in obj["data"].items()} == S3_ENV
        assert set(obj["data"]) == set(template["stringData"])
    else:
        assert obj["kind"] == "Namespace"


def kubetune_doctor(d: Deploy, cmd: str, m: re.Match) -> None:
    proc = d.sh(cmd)
    assert "all checks passed" in proc.stdout, proc.stdout
    if "--kfp-host" in cmd:
        assert any(r.path.endswith("/healthz") for r in d.kfp.requests)


def make_images_or_push(d: Deploy, cmd: str, m: re.Match) -> None:
    registry = re.search(r"REGISTRY=(\S+)", cmd).group(1)
    d.docker_log.unlink(missing_ok=True)
    d.sh(f"{cmd} DOCKER={d.fake_docker}")
    lines = d.docker_log.read_text().splitlines()
    refs = [f"{registry}/kubetune-{n}:{d.image_tag}" for n in ("base", "train", "gguf")]
    if m.group(1) == "push":
        assert lines == [f"push {ref}" for ref in refs]
    else:
        assert [re.search(r"-t (\S+)", line).group(1) for line in lines] == refs


def make_image_tag(d: Deploy, cmd: str, m: re.Match) -> None:
    sha = run(["git", "rev-parse", "--short", "HEAD"]).stdout.strip()
    assert d.sh(cmd).stdout.strip() == f"{VERSION}-{sha}" == d.image_tag


def make_k8s_manifests(d: Deploy, cmd: str, m: re.Match) -> None:
    registry = re.search(r"REGISTRY=(\S+)", cmd).group(1)
    out = d.tmp / "k8s-pipeline"
    out.mkdir(exist_ok=True)
    d.sh(f"{cmd} K8S_PIPELINE_DIR={out}")
    text = (out / "llama3.1-8b-qlora-k8s.yaml").read_text()
    images = set(re.findall(r"image: (\S+)", text))
    assert images == {f"{registry}/kubetune-{n}:{d.image_tag}" for n in ("base", "train", "gguf")}


def pin_images(d: Deploy, cmd: str, m: re.Match) -> None:
    d.sh(d.sub(cmd))
    cfg = yaml.safe_load((d.tmp / "my-config.yaml").read_text())
    registry = re.search(r"--registry (\S+)", cmd).group(1)
    assert cfg["cluster"]["images"] == {n: f"{registry}/kubetune-{n}:{d.image_tag}" for n in ("base", "train", "gguf")}


def kubetune_submit_or_schedule(d: Deploy, cmd: str, m: re.Match) -> None:
    before = len(d.kfp.requests)
    proc = d.sh(d.sub(cmd))
    new = d.kfp.requests[before:]
    uploads = [r for r in new if r.method == "POST" and "upload" in r.path]
    # The pipeline uploaded (or reused) runs the images `make images` built and `make push` pushed.
    for r in uploads:
        spec = next(yaml.safe_load_all(r.files["uploadfile"][1]))  # pipeline spec, then platform spec
        images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
        assert all(i.endswith(f":{d.image_tag}") for i in images), images
    if m.group(1) == "submit":
        assert uploads, "submit uploaded no pipeline"
        (created,) = [r for r in new if r.method == "POST" and r.path.endswith("/runs")]
        assert "run:" in proc.stdout
    else:
        (created,) = [r for r in new if r.method == "POST" and r.path.endswith("/recurringruns")]
        assert created.json["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * MON"
    # the runs' pods use the runner ServiceAccount `kubectl apply -k k8s/` created
    sa = re.search(r"--service-account (\S+)", cmd)
    assert sa and created.json["service_account"] == sa.group(1)
    assert sa.group(1) in {d["metadata"]["name"] for d in yaml.safe_load_all((REPO / "k8s" / "rbac.yaml").read_text())
                           if d and d["kind"] == "ServiceAccount"}


def kubetune_promote(d: Deploy, cmd: str, m: re.Match) -> None:
    values = d.gitops / re.search(r"--values (\S+)", cmd).group(1)
    before = values.read_text()
    head = run(["git", "rev-parse", "HEAD"], cwd=d.gitops).stdout
    proc = d.sh(cmd, cwd=d.gitops)
    pinned = yaml.safe_load(values.read_text())["release"]["uri"] if "--dry-run" not in cmd else None
    if "--dry-run" in cmd:
        assert values.read_text() == before and "dry run" in proc.stdout
    else:
        assert pinned == d.env["RELEASE"] + "/"
    if "--git-commit" in cmd:
        assert run(["git", "rev-parse", "HEAD"], cwd=d.gitops).stdout != head
        assert not run(["git", "status", "--porcelain"], cwd=d.gitops).stdout.strip()


def git_push(d: Deploy, cmd: str, m: re.Match) -> None:
    d.sh(cmd, cwd=d.gitops)
    local = run(["git", "rev-parse", "HEAD"], cwd=d.gitops).stdout
    assert run(["git", "rev-parse", "main"], cwd=d.origin).stdout == local


HANDLERS = [
    (r"kubectl apply -k (\S+)", kubectl_apply_k),
    (r"kubectl apply -f (\S+)", kubectl_apply_f),
    (r"kubectl (?:-n \S+ )?create (?:secret generic|namespace) .+", kubectl_create),
    (r"kubetune doctor( .*)?", kubetune_doctor),
    (r"make (images|push) REGISTRY=\S+", make_images_or_push),
    (r"make -s image-tag", make_image_tag),
    (r"make k8s-manifests REGISTRY=\S+", make_k8s_manifests),
    (r"\.venv/bin/python images/pin_images\.py config .+", pin_images),
    (r"kubetune (submit|schedule) .+", kubetune_submit_or_schedule),
    (r"kubetune promote .+", kubetune_promote),
    (r"git push", git_push),
]


def handler(cmd: str):
    found = [(fn, m) for pattern, fn in HANDLERS if (m := re.fullmatch(pattern, cmd))]
    return found[0] if len(found) == 1 else (None, None)


def test_the_guide_covers_the_deployment():
    text = DOC.read_text()
    assert text.startswith("# Deploy to a cluster\n")
    sections = re.findall(r"^## (.+)$", text, re.M)
    for wanted in ("Prerequisites", "Apply k8s/", "Build and push the images", "Compile and submit",
                   "Schedule weekly retraining", "Promote through Argo CD", "How this guide is tested"):
        assert any(wanted in s for s in sections), wanted
    commands = doc_commands()
    assert len(commands) >= 15
    assert any("--cron" in c for c in commands) and any("kubetune promote" in c for c in commands)


def test_every_command_has_a_way_to_be_exercised():
    unknown = [c for c in doc_commands() if handler(c)[0] is None]
    assert not unknown, f"commands in docs/deploy.md that no test exercises: {unknown}"


def test_an_unknown_command_is_caught():
    md = "```bash\nkubectl delete namespace kubetune\nkubetune doctor\n```\n"
    assert [handler(c)[0] for c in doc_commands(md)] == [None, kubetune_doctor]


def test_every_command_of_the_guide_runs(deploy):
    """The guide, top to bottom."""
    for cmd in doc_commands():
        fn, m = handler(cmd)
        assert fn, cmd
        try:
            fn(deploy, cmd, m)
        except (AssertionError, pytest.fail.Exception) as e:
            pytest.fail(f"docs/deploy.md: `{cmd}` failed: {e}", pytrace=False)
        deploy.ran.append(cmd)
    assert deploy.ran == doc_commands()
    # Both environments were promoted and pushed.
    log = run(["git", "log", "--format=%s"], cwd=deploy.origin).stdout.splitlines()
    assert log[:2] == ["promote contracts-llama31-8b 20261130-101500-run42 to prod",
                       "promote contracts-llama31-8b 20261130-101500-run42 to staging"]
