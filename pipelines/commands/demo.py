"""`kubetune demo` (`make demo`): the whole pipeline on this machine, on a tiny model."""

from pathlib import Path


def add_arguments(parser):
    parser.add_argument("--work-dir", default=".kubetune", type=Path,
                        help="local S3 data, KFP local outputs and copied reports (default: .kubetune)")
    parser.add_argument("--run-id", help="default: local-<UTC time>")
    parser.add_argument("--serve", action="store_true",
                        help="after the run, keep the local S3 and MLflow servers up until Ctrl-C, to browse the run")


def run(args) -> int:
    from pipelines.local_demo import run_demo
    from pipelines.summary import print_summary

    result, reports, samples = run_demo(work_dir=args.work_dir, run_id=args.run_id, serve=args.serve)
    print_summary(result, samples)
    print(f"reports and plots: {reports}/<step>/ (report.md, *.png)")
    if result.mlflow_run_url:
        print(f"MLflow run: {result.mlflow_run_url} (the demo's MLflow server has stopped; `kubetune demo --serve` "
              "keeps it up after the run)")
    print(f"the local S3 data is in {args.work_dir / 's3'}; `kubetune s3 serve --dir {args.work_dir / 's3'}` "
          "serves it again")
    return 0
