"""`kubetune plan --config CFG [--model-config config.json] [--gpu TYPE] [--seq-len N] [--batch N] [--json]`

GPU memory estimate for the config's training setup, from the model's config.json alone (no
weights): exact LoRA parameter counts (meta device), a per-method breakdown with and without
gradient checkpointing, and a recommended method and GPU count for a GPU type.
"""

from __future__ import annotations

import json


def add_arguments(parser):
    from components.train.plan import GPUS  # light: no torch at import

    parser.add_argument("--config", required=True, metavar="FILE", help="kubetune config YAML")
    parser.add_argument("--model-config", metavar="FILE|DIR|URI",
                        help="the model's config.json (default: the one of model.base, fetched alone)")
    parser.add_argument("--gpu", default="a100-80gb", metavar="TYPE",
                        help=f"GPU type (default a100-80gb): {', '.join(GPUS)}")
    parser.add_argument("--seq-len", type=int, metavar="N",
                        help="tokens per sequence (default prepare.max_seq_len)")
    parser.add_argument("--batch", type=int, metavar="N",
                        help="sequences per device and step (default train.per_device_batch_size)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def run(args) -> int:
    from pathlib import Path

    from components.common import storage
    from components.common.config import load_config
    from components.train import plan
    from components.train.model import fetch_model_config

    cfg = load_config(args.config)
    source = args.model_config or cfg.model.base
    if args.model_config and not (storage.is_s3(source) or storage.is_hf(source)) and Path(source).exists():
        path = Path(source)
    else:
        path = fetch_model_config(source)
    p = plan.plan(cfg, path, args.gpu, seq_len=args.seq_len, batch_size=args.batch)
    print(json.dumps(p.to_dict(), indent=2) if args.json else plan.render(p))
    return 0
