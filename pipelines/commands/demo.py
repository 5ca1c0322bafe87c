"""`kubetune demo` (`make demo`): the whole pipeline on this machine, on a tiny model."""

from pathlib import Path


def add_arguments(parser):
    parser.add_argument("--work-dir", default=".kubetune", type=Path,
                        help="local S3 data, KFP local outputs and copied reports (default: .kubetune)")
    parser.add_argument("--run-id", help="default: local-<UTC time>")


def run(args) -> int:
    from pipelines.local_demo import run_demo
    from pipelines.summary import print_summary

    result, reports, samples = run_demo(work_dir=args.work_dir, run_id=args.run_id)
    print_summary(result, samples)
    print(f"reports and plots: {reports}/<step>/ (report.md, *.png)")
    print(f"the local S3 data is in {args.work_dir / 's3'}; `kubetune s3 serve --dir {args.work_dir / 's3'}` "
          "serves it again")
    return 0
