"""images/ and the Makefile's image targets: what each Dockerfile pins and installs, the tags `make images`
builds and pushes, and the compiled pipeline (k8s/pipeline/) referencing exactly those tags."""

from __future__ import annotations

import re
import shlex
import tomllib

import pytest
import yaml
from k8s_helpers import DOCKERFILES, IMAGES, K8S, REPO, run


def import_image_tool(name: str):
    """A script of images/gguf (development and image tooling, not in the kubetune package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, IMAGES / "gguf" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
OCI_LABELS = ("title", "description", "version", "revision", "created", "source", "licenses")
COMMITTED = K8S / "pipeline" / "llama3.1-8b-qlora-k8s.yaml"
# The image each step runs on, by what it imports: torch/peft steps on `train`, llama.cpp on `gguf`.
STEP_IMAGES = {"exec-prepare": "base", "exec-publish": "base", "exec-train": "train", "exec-evaluate": "train",
               "exec-merge": "train", "exec-quantize": "gguf"}


def instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        buf += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def final_stage(path) -> list[tuple[str, str]]:
    ins = instructions(path)
    last = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last:]


def pin(requirement: str) -> str:
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", requirement.strip())
    assert m, f"not an exact pin: {requirement}"
    return m.group(2)


def extra_pin(extra: str, name: str) -> str:
    reqs = PYPROJECT["project"]["optional-dependencies"][extra]
    return pin(next(r for r in reqs if re.split(r"[=<>]", r)[0].strip().lower() == name))


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_is_pinned_non_root_labelled_and_installs_from_the_repo(name):
    path = DOCKERFILES[name]
    ins = instructions(path)
    froms = [args.split()[0] for word, args in ins if word == "FROM"]
    stages = {args.split()[-1] for word, args in ins if word == "FROM" and " AS " in args.upper()}
    for image in froms:
        if image in stages or "${" in image:  # a stage of this file
            continue
        repo, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: unpinned base image {image}"
    final = final_stage(path)
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1] in ("1000:1000", "1000", "kubetune"), f"{name}: final stage must run as uid 1000"
    assert any(word == "HEALTHCHECK" and "CMD" in args for word, args in final), f"{name}: no HEALTHCHECK"
    labels = " ".join(args for word, args in final if word == "LABEL")
    for label in OCI_LABELS:
        assert f"org.opencontainers.image.{label}=" in labels, f"{name}: no OCI label {label}"
    assert f'org.opencontainers.image.title="kubetune-{name}"' in labels
    # kubetune comes from this repository with its extras; any other pip package is pinned exactly.
    installs = [args for word, args in ins if word == "RUN" and "pip install" in args]
    project = [a for a in installs if re.search(r'pip install [^&]*"?\./(\[[a-z,]+\])?"?', a)
               or re.search(r"pip install [^&]* \.( |$)", a)]
    assert project, f"{name}: kubetune is not installed from the repository"
    for extras in re.findall(r'"\./\[([a-z,]+)\]"', " ".join(installs)):
        assert set(extras.split(",")) <= set(PYPROJECT["project"]["optional-dependencies"]), extras
    for args in installs:
        for cmd in args.split("&&"):
            if "pip install" not in cmd:
                continue
            words = shlex.split(cmd.split("pip install", 1)[1])
            with_value = {"-c", "--constraint", "--find-links", "--only-binary", "--extra-index-url", "-r"}
            targets = [w for i, w in enumerate(words) if not w.startswith("-") and words[i - 1] not in with_value]
            for w in targets:
                if w == "." or w.startswith("./"):
                    continue
                if re.fullmatch(r"[A-Za-z0-9_.-]+==\S+", w.replace("${FLASH_ATTN_VERSION}", "1.0")):
                    continue
                pytest.fail(f"{name}: pip installs {w!r}, which is neither the repository nor pinned")


def test_hadolint_and_checkov_directives_are_justified():
    for name, path in DOCKERFILES.items():
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if "hadolint ignore" in line or "checkov:skip" in line:
                context = " ".join(lines[max(0, i - 3):i + 1])
                assert re.search(r"checkov:skip=\S+: .{20,}", line) or \
                    ("hadolint ignore" in line and len(context) > 80), f"{name}:{i + 1}: unjustified: {line}"


def test_gguf_image_provides_llama_cpp_where_the_quantize_step_looks():
    from components.quantize import convert

    install_converter = import_image_tool("install_converter")

    text = DOCKERFILES["gguf"].read_text()
    env = " ".join(args for word, args in final_stage(DOCKERFILES["gguf"]) if word == "ENV")
    m = re.search(rf"{convert.ENV_VAR}=(\S+)", env)
    assert m, f"images/gguf must set {convert.ENV_VAR}"
    llama_dir = m.group(1)
    # install_converter puts convert_hf_to_gguf.py, conversion/ and gguf-py/ (convert.REQUIRED) there,
    # and the tools are built from the same tree into <dir>/bin, which is on PATH.
    assert f"install_converter.py {llama_dir} " in text
    assert set(convert.REQUIRED) <= {w.rstrip("/") + ("/__init__.py" if w.endswith("/") else "")
                                     for w in install_converter.WANTED} | {"gguf-py/gguf/__init__.py"}
    # the tools: built by build_llama_tools.py (the script `make install-llama-cpp` runs) into <dir>/bin
    assert re.search(rf"build_llama_tools\.py {re.escape(llama_dir)}/bin --target llama-quantize "
                     r"--target llama-perplexity\s", text)
    assert '--sdist "$sdist"' in text.split("build_llama_tools.py /opt", 1)[1].split("\n")[1]
    assert f"{llama_dir}/bin" in env.split("PATH=", 1)[1].split()[0]
    # One llama.cpp: the pinned sdist's hash, version equal to the gguf extra, and the tools, converter
    # and the llama_cpp wheel all built from it.
    pins = (IMAGES / "gguf" / "llama-cpp-python.txt").read_text()
    m = re.search(r"^llama-cpp-python==(\S+) --hash=sha256:([0-9a-f]{64})$", pins, re.M)
    assert m and m.group(1) == extra_pin("gguf", "llama-cpp-python") == install_converter.VERSION
    assert "--require-hashes" in text and "pip wheel" in text and "--only-binary llama-cpp-python" in text
    # torch: the CPU build of exactly the version the train extra pins.
    constraints = (IMAGES / "gguf" / "constraints.txt").read_text()
    assert re.search(rf"^torch=={re.escape(extra_pin('train', 'torch'))}\+cpu$", constraints, re.M)


def test_dockerignore_lets_in_what_the_dockerfiles_copy():
    for name, path in DOCKERFILES.items():
        ignore = path.with_name("Dockerfile.dockerignore").read_text().splitlines()
        assert ignore[ignore.index("*") if "*" in ignore else 0] == "*" or "*" in ignore, name
        allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
        for word, args in instructions(path):
            if word == "COPY" and "--from" not in args:
                for src in args.split()[:-1]:
                    parts = src.rstrip("/").split("/")
                    assert any("/".join(parts[:i]) in allowed for i in range(1, len(parts) + 1)), \
                        f"{name}: COPY {src} is excluded by the .dockerignore"
        assert ".venv" not in allowed and "tests" not in allowed


def test_image_tag_is_version_and_git_sha():
    sha = run(["git", "rev-parse", "--short", "HEAD"]).stdout.strip()
    assert run(["make", "-s", "image-tag"]).stdout.strip() == f"{VERSION}-{sha}"
    assert run(["make", "-s", "image-tag", "TAG=1.2.3"]).stdout.strip() == "1.2.3"


def test_make_images_and_push_build_and_push_every_image(tmp_path):
    """`make images` / `make push` run for real, with DOCKER set to a stand-in that records its arguments
    (no Docker engine runs here)."""
    log = tmp_path / "docker.log"
    fake = tmp_path / "fake-docker"
    fake.write_text(f'#!/bin/sh\n# stand-in for docker: records the command line\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    tag = run(["make", "-s", "image-tag"]).stdout.strip()
    run(["make", "-s", "images", "REGISTRY=registry.example.com/ml", f"DOCKER={fake}"])
    builds = log.read_text().splitlines()
    assert len(builds) == 3
    for name, line in zip(("base", "train", "gguf"), builds, strict=True):
        args = shlex.split(line)
        assert args[0] == "build" and args[-1] == "."
        assert args[args.index("-f") + 1] == f"images/{name}/Dockerfile"
        assert args[args.index("-t") + 1] == f"registry.example.com/ml/kubetune-{name}:{tag}"
        build_args = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--build-arg")
        assert build_args["VERSION"] == VERSION
        assert build_args["REVISION"] == run(["git", "rev-parse", "HEAD"]).stdout.strip()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", build_args["CREATED"])
    log.unlink()
    run(["make", "-s", "push", "REGISTRY=registry.example.com/ml", "TAG=9.9.9", f"DOCKER={fake}"])
    assert log.read_text().splitlines() == [f"push registry.example.com/ml/kubetune-{n}:9.9.9"
                                            for n in ("base", "train", "gguf")]


def executor_images(path) -> dict[str, str]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    pv = next(d for d in docs if d["kind"] == "PipelineVersion")
    return {k: v["container"]["image"] for k, v in pv["spec"]["pipelineSpec"]["deploymentSpec"]["executors"].items()}


def test_compiled_pipeline_references_exactly_the_make_tags(tmp_path):
    tag = run(["make", "-s", "image-tag"]).stdout.strip()
    run(["make", "-s", "k8s-manifests", "REGISTRY=registry.example.com/ml", f"K8S_PIPELINE_DIR={tmp_path}"])
    images = executor_images(tmp_path / "llama3.1-8b-qlora-k8s.yaml")
    refs = {f"registry.example.com/ml/kubetune-{n}:{tag}" for n in ("base", "train", "gguf")}
    assert set(images.values()) <= refs and len(set(images.values())) == 3, images
    assert set(images) == set(STEP_IMAGES)
    for step, family in STEP_IMAGES.items():
        assert images[step] == f"registry.example.com/ml/kubetune-{family}:{tag}", step


def test_steps_that_need_torch_run_on_the_train_image():
    images = executor_images(COMMITTED)
    assert images["exec-merge"] == images["exec-evaluate"] == images["exec-train"]


def test_committed_pipeline_manifests_are_up_to_date(tmp_path):
    header = COMMITTED.read_text().splitlines()[0]
    m = re.fullmatch(r"# Generated by: (make k8s-manifests REGISTRY=(\S+) TAG=(\S+) PIPELINE_CONFIG=(\S+))", header)
    assert m, header
    assert m.group(2) == "ghcr.io/kubetune" and m.group(3) == VERSION, \
        "k8s/pipeline/ pins the release images ghcr.io/kubetune/kubetune-*:<package version>"
    command = shlex.split(m.group(1)) + [f"K8S_PIPELINE_DIR={tmp_path}"]
    run(command)
    fresh = (tmp_path / COMMITTED.name).read_text()
    assert fresh == COMMITTED.read_text(), \
        f"{COMMITTED.relative_to(REPO)} is stale: regenerate it with `{m.group(1)}` and commit it"


def test_committed_pipeline_version_is_named_after_its_spec():
    """<pipeline>-<sha256(IR YAML)[:12]>, as `kubetune submit` names versions (pipelines/kfp_client.py)."""
    docs = [d for d in yaml.safe_load_all(COMMITTED.read_text()) if d]
    assert [d["kind"] for d in docs] == ["Pipeline", "PipelineVersion"]
    pipeline, version = docs
    assert version["spec"]["pipelineName"] == pipeline["metadata"]["name"] == "kubetune-contracts-llama31-8b"
    assert re.fullmatch(rf"{pipeline['metadata']['name']}-[0-9a-f]{{12}}", version["metadata"]["name"])
    assert set(executor_images(COMMITTED).values()) == {f"ghcr.io/kubetune/kubetune-{n}:{VERSION}"
                                                        for n in ("base", "train", "gguf")}
    kustomization = yaml.safe_load((K8S / "pipeline" / "kustomization.yaml").read_text())
    assert COMMITTED.name in kustomization["resources"]


def test_pin_images_changes_only_the_images(tmp_path):
    src = REPO / "pipelines" / "configs" / "llama3.1-8b-qlora.yaml"
    out = tmp_path / "cfg.yaml"
    run([str(REPO / ".venv" / "bin" / "python"), "images/pin_images.py", "config", str(src),
         "--registry", "r.example.com/x/", "--tag", "7.7.7", "--output", str(out)])
    old, new = src.read_text().splitlines(), out.read_text().splitlines()
    assert new[0].startswith("# Generated from")
    diff = [(a, b) for a, b in zip(old, new[1:], strict=True) if a != b]
    assert [b.split(":")[0].strip() for _, b in diff] == ["base", "train", "gguf"]
    assert [b.strip() for _, b in diff] == [f"{n}: r.example.com/x/kubetune-{n}:7.7.7"
                                            for n in ("base", "train", "gguf")]

