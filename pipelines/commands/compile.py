"""`kubetune compile --config CFG --output pipeline.yaml [--kubernetes-manifests DIR]`

Compiles the pipeline for one config to KFP IR YAML. With --kubernetes-manifests it also writes the
Kubernetes-native Pipeline and PipelineVersion resources (for KFP in Kubernetes-native API mode), so
that GitOps (Argo CD, Flux) can apply the very same pipeline that `kubetune submit` uploads.
"""

from pathlib import Path


def add_arguments(parser):
    parser.add_argument("--config", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, metavar="pipeline.yaml")
    parser.add_argument("--kubernetes-manifests", metavar="DIR",
                        help="also write Pipeline and PipelineVersion custom resources into DIR")
    parser.add_argument("--local", action="store_true",
                        help="allow empty cluster.images (they default to python:3.11-slim); for inspection only")


def run(args) -> int:
    from components.common.config import load_config
    from pipelines.compile import compile_pipeline

    cfg = load_config(args.config)
    written = compile_pipeline(cfg, Path(args.output), kubernetes_dir=args.kubernetes_manifests,
                               require_images=not args.local, source=args.config)
    for path in written:
        print(f"wrote {path}")
    return 0
