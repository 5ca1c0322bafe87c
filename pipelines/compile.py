"""Compiling the pipeline: KFP IR YAML, and Kubernetes-native Pipeline/PipelineVersion manifests."""

from __future__ import annotations

from pathlib import Path

from components.common.config import KubetuneConfig
from components.common.errors import KubetuneError


def check_images(cfg: KubetuneConfig, source: str = "config") -> None:
    """A cluster needs real images for every step; an empty name would silently become python:3.11-slim."""
    missing = [name for name, image in cfg.cluster.images.model_dump().items() if not image]
    if missing:
        raise KubetuneError(f"{source}: cluster.images.{missing[0]}: empty; expected an image reference such "
                            f"as registry.example.com/kubetune-{missing[0]}:<tag> (see `make images`); "
                            f"empty: {', '.join(missing)}")


def compile_pipeline(cfg: KubetuneConfig, output: Path, *, kubernetes_dir: str | Path | None = None,
                     require_images: bool = True, source: str = "config") -> list[Path]:
    from kfp import compiler
    from kfp.compiler.compiler_utils import KubernetesManifestOptions

    from pipelines.finetune import build_pipeline

    if require_images:
        check_images(cfg, source)
    pipeline = build_pipeline(cfg)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(output))
    written = [output]
    if kubernetes_dir is not None:
        out_dir = Path(kubernetes_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        manifests = out_dir / f"{output.stem}-k8s.yaml"
        # The Pipeline resource too: a GitOps repo must be able to create the pipeline, not only versions.
        options = KubernetesManifestOptions(include_pipeline_manifest=True)
        compiler.Compiler().compile(pipeline, str(manifests), kubernetes_manifest_format=True,
                                    kubernetes_manifest_options=options)
        written.append(manifests)
    return written
