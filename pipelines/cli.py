"""The `kubetune` command line.

Each subcommand lives in its own module under `pipelines/commands/` with two functions:
`add_arguments(parser)` and `run(args) -> int`. This file only wires them together, so that
`kubetune --help` stays cheap (heavy imports such as torch happen inside `run`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from components.common.errors import KubetuneError

# (command name, module under pipelines.commands, one-line help)
COMMANDS: list[tuple[str, str, str]] = [
    ("config", "config", "Print the config JSON schema or validate a config file."),
    ("s3", "s3", "A local SeaweedFS S3 server for development (serve); copy files to and from S3 (cp)."),
    ("demo-assets", "demo_assets", "Build the tiny demo base model, tokenizer and synthetic dataset."),
    ("prepare", "prepare", "Validate, dedup, filter and split a dataset."),
    ("eval", "eval", "Compare base and tuned on the test split, write the report and the gate verdict."),
    ("merge", "merge", "Merge a LoRA adapter into its base, verify the logits, save sharded safetensors."),
    ("train", "train", "Fine-tune (LoRA, QLoRA or full) on a prepared dataset; resumes from checkpoints."),
    ("plan", "plan", "Estimate GPU memory for a training config from config.json alone."),
    ("fetch", "fetch", "Download a release for serving, verifying every file's sha256."),
    ("serve-local", "serve_local", "Serve a release locally with the chart's vLLM args (CPU build) or GGUF."),
    ("compile", "compile", "Compile the pipeline to KFP YAML (and Kubernetes-native manifests)."),
    ("run-local", "run_local", "Run the whole pipeline locally with the KFP SubprocessRunner."),
    ("submit", "submit", "Upload (or version) the pipeline to KFP and start a run; prints the run URL."),
    ("schedule", "schedule", "Create a KFP recurring run (cron) of the pipeline with scheduled=true."),
    ("runs", "runs", "List the runs on a KFP server and their states."),
    ("demo", "demo", "The main job: build the demo assets, start a local S3, run the pipeline locally."),
    ("promote", "promote", "Pin a published release in an environment's charts/vllm values file (GitOps)."),
    ("doctor", "doctor", "Check a cluster before the first run: GPU nodes, namespace, Secret, PVC, KFP."),
    ("quantize", "quantize", "Convert a merged model to verified GGUF files (llama.cpp) with Ollama Modelfiles."),
]


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the selected command's module is imported (all of them for --help)."""
    parser = argparse.ArgumentParser(prog="kubetune", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name, help_text in COMMANDS:
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if selected in (None, name):
            module = importlib.import_module(f"pipelines.commands.{module_name}")
            module.add_arguments(cmd)
            cmd.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = {name for name, _, _ in COMMANDS}
    selected = next((a for a in argv if a in names), None)
    args = build_parser(selected).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args._module.run(args) or 0)
    except KubetuneError as e:
        # Expected failures (bad input, missing objects, failed gates) get one clear line, no traceback.
        print(f"kubetune {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
