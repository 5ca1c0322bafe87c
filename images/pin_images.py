"""Point a kubetune config at the images `make images` builds, and finish the compiled Kubernetes manifests.

    python images/pin_images.py config CONFIG --registry R --tag T --output OUT
    python images/pin_images.py manifests K8S_YAML --ir PIPELINE_YAML --output OUT --header TEXT

`config` writes a copy of CONFIG whose `cluster.images` are exactly `R/kubetune-{base,train,gguf}:T`
(comments and formatting kept: pipelines/yaml_roundtrip.py), so that the compiled pipeline runs the
images that `make images REGISTRY=R TAG=T` built and `make push` pushed. `make k8s-manifests` uses it.

`manifests` names the PipelineVersion of a `kubetune compile --kubernetes-manifests` output
`<pipeline>-<sha256 of the compiled IR YAML>[:12]`, the name `kubetune submit` gives the same spec
(pipelines/kfp_client.py), because KFP's webhook makes a PipelineVersion's spec immutable: a GitOps
sync of a changed spec under the old name would be rejected, while a new name is a new version. It
also prepends each TEXT as a comment line saying how the file was generated. The YAML itself is written
exactly as KFP's compiler writes it (PyYAML, sorted keys).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

import yaml

IMAGES = ("base", "train", "gguf")
VERSION_NAME_MAX = 63  # a DNS-1123 label: what every KFP mode accepts as a resource name


def image_refs(registry: str, tag: str) -> dict[str, str]:
    """The image of each step family, as `make images` tags it."""
    registry = registry.rstrip("/")
    if not registry or not tag:
        raise SystemExit("pin_images: --registry and --tag must not be empty")
    return {name: f"{registry}/kubetune-{name}:{tag}" for name in IMAGES}


def write_config(src: Path, dst: Path, registry: str, tag: str) -> dict[str, str]:
    from pipelines.yaml_roundtrip import RoundTrip

    rt = RoundTrip(src.read_text(encoding="utf-8"))
    data = rt.data
    cluster = data.setdefault("cluster", {})
    images = cluster.setdefault("images", {})
    refs = image_refs(registry, tag)
    for name, ref in refs.items():
        images[name] = ref
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "w", encoding="utf-8") as f:
        f.write(f"# Generated from {src} by images/pin_images.py: cluster.images = {registry}/kubetune-*:{tag}\n")
        f.write(rt.dump())
    return refs


def version_name(pipeline: str, ir_bytes: bytes) -> str:
    digest = hashlib.sha256(ir_bytes).hexdigest()[:12]
    base = re.sub(r"[^a-z0-9-]+", "-", pipeline.lower()).strip("-")
    return f"{base[:VERSION_NAME_MAX - 13]}-{digest}"


def finish_manifests(src: Path, ir: Path, dst: Path, header: list[str]) -> str:
    docs = list(yaml.safe_load_all(src.read_text(encoding="utf-8")))
    versions = [d for d in docs if d and d.get("kind") == "PipelineVersion"]
    if len(versions) != 1:
        raise SystemExit(f"pin_images: {src}: expected one PipelineVersion, found {len(versions)}")
    pv = versions[0]
    name = version_name(pv["spec"]["pipelineName"], ir.read_bytes())
    pv["metadata"]["name"] = name
    body = yaml.dump_all(docs, sort_keys=True)  # as kfp.compiler writes it
    lines = [f"# {line}".rstrip() for line in header]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(lines) + "\n" + body, encoding="utf-8")
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("config", help="a copy of CONFIG with cluster.images set to the Makefile's tags")
    c.add_argument("config", type=Path)
    c.add_argument("--registry", required=True)
    c.add_argument("--tag", required=True)
    c.add_argument("--output", required=True, type=Path)
    m = sub.add_parser("manifests", help="name the PipelineVersion after the spec and add a header")
    m.add_argument("manifests", type=Path)
    m.add_argument("--ir", required=True, type=Path, help="the compiled IR YAML of the same pipeline")
    m.add_argument("--output", required=True, type=Path)
    m.add_argument("--header", required=True, action="append", help="a header comment line (repeatable)")
    args = parser.parse_args(argv)
    if args.cmd == "config":
        for name, ref in write_config(args.config, args.output, args.registry, args.tag).items():
            print(f"cluster.images.{name} = {ref}")
    else:
        name = finish_manifests(args.manifests, args.ir, args.output, args.header)
        print(f"wrote {args.output} (PipelineVersion {name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
