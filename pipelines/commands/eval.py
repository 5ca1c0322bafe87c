"""`kubetune eval --config CFG [--base MODEL] --adapter DIR|URI --dataset DIR|URI --output DIR|URI`

Evaluates base (model.base, or --base) against the train step's output (a LoRA adapter or full
weights) on the prepared dataset's test split and data.general_eval, through the same lifecycle as the
pipeline's component (pipelines/commands/step_cli.py): every input verified against its manifest,
eval_results.json, gate.json, samples.jsonl, report.md/.html and eval_chart.png published with
`_manifest.json` written last.

Exit codes: 0 evaluated and published, whatever the gate says (the pipeline branches on gate.json);
3 the gate failed and --fail-on-gate was given; 2 bad input, with one clear line.
"""

from __future__ import annotations

import json

from pipelines.commands import step_cli

EXIT_GATE_FAILED = 3


def add_arguments(parser):
    parser.add_argument("--base", metavar="MODEL", help="base model: path, file://, s3:// or hf://ORG/NAME "
                                                        "(default: model.base)")
    parser.add_argument("--adapter", required=True, metavar="DIR|URI",
                        help="the train step's output: a LoRA adapter, or full weights for train.method full")
    parser.add_argument("--dataset", required=True, metavar="DIR|URI",
                        help="the prepare step's output (its test split is evaluated)")
    parser.add_argument("--fail-on-gate", action="store_true",
                        help=f"exit {EXIT_GATE_FAILED} when the gate fails (default: exit 0, see gate.json)")
    step_cli.add_common_arguments(parser, output_help="where to publish the results",
                                  set_example="eval.max_examples=32")


def run(args) -> int:
    from components.common import storage

    cfg = step_cli.load(args, **{"model.base": args.base})
    shown = {}

    def read_results(published, local):
        shown["results"] = json.loads((local / "eval_results.json").read_text())
        shown["gate"] = json.loads((local / "gate.json").read_text())

    published = step_cli.run_step_command("eval", cfg, {"adapter": args.adapter, "dataset": args.dataset}, args,
                                          on_output=read_results)
    results, gate = shown["results"], shown["gate"]
    for name, e in results["metrics"].items():
        print(f"eval: {name:22s} base {_f(e['base'])}  tuned {_f(e['tuned'])}  delta {_f(e['delta'], sign=True)}")
    lm = results["lm_eval"]
    if lm["status"] == "skipped":
        print(f"eval: lm-eval tasks {', '.join(lm['tasks'])} skipped: {lm['reason']}")
    for c in gate["checks"]:
        print(f"eval: gate {'pass' if c['passed'] else 'FAIL'}: {c['reason']}")
    passed = bool(published.outcome.flags["gate_passed"])
    output = published.manifest.uri
    print(f"eval: gate {'PASSED' if passed else 'FAILED'}; published to {output} "
          f"(report: {storage.join_uri(output, 'report.md')})")
    return EXIT_GATE_FAILED if args.fail_on_gate and not passed else 0


def _f(v, sign: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.4f}" if sign else f"{v:.4f}"
