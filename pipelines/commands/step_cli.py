"""What the step commands (`kubetune prepare|train|eval|merge|quantize`) share: the CLI front door of
the step lifecycle.

Each command parses its flags into a config (with --set overrides) and named inputs, then calls
`run_step_command`, which goes through the same two calls as the KFP component
(`components.common.lifecycle.resolve_inputs` and `run_and_publish`): the same manifest, lineage
and cache key, the output published with its manifest last, nothing published on failure, and the
staging directory removed either way.
"""

from __future__ import annotations

import hashlib
import os
import re


def add_common_arguments(parser, *, output_help: str, overwrite: bool = True, progress: bool = True,
                         set_example: str = "train.max_steps=50") -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="kubetune config YAML")
    parser.add_argument("--output", required=True, metavar="DIR|URI", help=output_help)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config value, e.g. {set_example} (value parsed as YAML)")
    if overwrite:
        parser.add_argument("--overwrite", action="store_true", help="replace an existing published output")
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def load(args, **set_values):
    """The config of args.config with --set overrides, plus `set_values` (dotted path -> value) from
    the command's own flags (e.g. eval --base is model.base)."""
    from components.common.config import load_config, parse_overrides

    overrides = parse_overrides(args.set)
    for path, value in set_values.items():
        if value is not None:
            overrides[path] = value
    return load_config(args.config, overrides)


def run_id_for(output: str, given: str | None = None) -> str:
    """The run id: given, else $KUBETUNE_RUN_ID, else the <id> of .../runs/<id>/... in the output (as
    the pipeline lays runs out), else derived from the output."""
    if given:
        return given
    if os.environ.get("KUBETUNE_RUN_ID"):
        return os.environ["KUBETUNE_RUN_ID"]
    m = re.search(r"(?:^|/)runs/([^/]+)/", output.rstrip("/") + "/")
    if m:
        return m.group(1)
    return "local-" + hashlib.sha256(output.encode()).hexdigest()[:10]


def run_step_command(name: str, cfg, refs: dict, args, *, run_id: str | None = None, work_dir=None, on_output=None):
    """Resolve `refs` (input name -> URI/path, None for absent) and run step `name` into args.output."""
    from components.common.lifecycle import resolve_inputs, run_and_publish
    from pipelines.steps import component_module

    module = component_module(name)
    output = args.output.rstrip("/")
    inputs = resolve_inputs(refs)
    return run_and_publish(module.SPEC, cfg, inputs, module.execute, run_id=run_id_for(output, run_id),
                           output_uri=output, overwrite=getattr(args, "overwrite", False), use_cache=False,
                           progress=not getattr(args, "no_progress", False), work_dir=work_dir,
                           on_output=on_output)
