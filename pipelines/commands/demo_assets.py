"""`kubetune demo-assets [--root DIR] [--force] [--pretrain-steps N]`: build the demo's tiny base
model and synthetic datasets (if missing or stale) and print where they are."""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser):
    parser.add_argument("--root", type=Path, default=None,
                        help="Where to build (default: $KUBETUNE_DEMO_DIR or ~/.cache/kubetune/demo).")
    parser.add_argument("--force", action="store_true", help="Rebuild even if an up-to-date build exists.")
    parser.add_argument("--pretrain-steps", type=int, default=None, metavar="N",
                        help="Pre-training steps for the base model (default: the builder's, a few CPU "
                             "minutes; 0: no pre-training, a random model in seconds).")
    parser.add_argument("--seed", type=int, default=None,
                        help="Seed for the model and the datasets (default 0).")


def run(args) -> int:
    from components.common.errors import KubetuneError
    from pipelines.demo.assets import DEFAULT_SEED, ensure_demo_assets

    if args.pretrain_steps is not None and args.pretrain_steps < 0:
        raise KubetuneError(f"--pretrain-steps must be >= 0, got {args.pretrain_steps}")
    assets = ensure_demo_assets(args.root, pretrain_steps=args.pretrain_steps, force=args.force,
                                seed=DEFAULT_SEED if args.seed is None else args.seed)
    built = ", ".join(assets.built) if assets.built else "nothing (all up to date)"
    print(f"built: {built}")
    print(f"root: {assets.root}")
    info = assets.model_info
    pre = info.get("pretrain")
    detail = (f"{info.get('parameters', 0) / 1e6:.2f}M parameters, vocab {info.get('vocab_size')}, "
              + (f"pre-trained {pre['steps']} steps in {pre['seconds']}s, loss {pre['first_loss']} -> "
                 f"{pre['final_loss']} (held-out {pre['heldout_loss_before']} -> {pre['heldout_loss_after']})"
                 if pre else "not pre-trained"))
    print(f"model: {assets.model_dir}  ({detail})")
    print(f"datasets: {assets.dataset_dir}")
    for name, path in assets.dataset_files().items():
        with open(path, encoding="utf-8") as f:
            count = sum(1 for _ in f)
        print(f"  {name:<18} {path}  ({count} records)")
    return 0
