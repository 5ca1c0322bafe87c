"""The local demo's own assets: a tiny Llama-architecture base model with a locally trained BPE
tokenizer and ChatML chat template, and a synthetic contract-extraction dataset.

Entry point: `ensure_demo_assets(root)` (or `kubetune demo-assets`). See README.md here.
Importing this package is cheap; torch and transformers load only when something is built.
"""

from pipelines.demo.assets import DemoAssets, default_root, ensure_demo_assets

__all__ = ["DemoAssets", "default_root", "ensure_demo_assets"]
