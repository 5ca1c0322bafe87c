"""`kubetune run-local --config CFG [--run-id ID]`: the whole pipeline on this machine.

The KFP local SubprocessRunner runs the same pipeline function a cluster runs; S3 comes from the
standard AWS environment (start one with `kubetune s3 serve`, or use `kubetune demo`).
"""


def add_arguments(parser):
    parser.add_argument("--config", required=True, metavar="FILE")
    parser.add_argument("--run-id", help="default: local-<UTC time>")
    parser.add_argument("--pipeline-root", default=".kubetune/kfp-local",
                        help="where KFP local keeps its small artifacts (the heavy bytes go to storage.root)")
    parser.add_argument("--scheduled", action="store_true",
                        help="behave like a scheduled run (end early when there is no new data)")


def run(args) -> int:
    from components.common.config import load_config
    from pipelines.local import run_local
    from pipelines.summary import print_summary

    cfg = load_config(args.config)
    result = run_local(cfg, pipeline_root=args.pipeline_root, run_id=args.run_id, scheduled=args.scheduled)
    print_summary(result)
    return 0
