"""`kubetune schedule --config CFG --host URL --cron EXPR [--max-concurrency N] [--no-catchup] [--experiment NAME]
[--service-account SA]`

Creates a KFP recurring run of the pipeline for CFG (uploaded or versioned as by `kubetune submit`)
with the pipeline parameter `scheduled=true`: each run reads the dataset URIs at run time and, by
default, ends early with "no new data" when the data hash equals that of the latest release.

--cron takes a standard 5-field cron (minute hour day-of-month month day-of-week, e.g.
"0 3 * * MON") and turns it into KFP's 6 fields, seconds first ("0 0 3 * * MON"); 6 fields are used
as given, and @daily, @weekly and the like too. Every field is checked (ranges, lists, steps, the
names JAN-DEC and SUN-SAT; day-of-week is 0-6, Sunday 0) before anything is compiled or sent.
Schedules run in the KFP server's time zone (usually UTC).
--max-concurrency (1-10, default 1) caps the runs in flight; --no-catchup runs only the latest missed
interval after a pause instead of every one. --name names the recurring run (default
`<pipeline>-schedule`); an existing one of that name in the experiment is an error, not a duplicate.
--service-account runs every scheduled run's pods as that ServiceAccount (default: KFP's).
It prints the recurring run's URL, `<host>/#/recurringrun/details/<id>`.

Example:
    kubetune schedule --config pipelines/configs/llama3.1-8b-qlora.yaml --host http://localhost:8888 \\
        --cron "0 3 * * MON" --no-catchup
"""

import tempfile
from pathlib import Path


def add_arguments(parser):
    from pipelines.kfp_client import (
        DEFAULT_EXPERIMENT,
        MAX_CONCURRENCY,
        add_connection_arguments,
        add_service_account_argument,
    )

    parser.add_argument("--config", required=True, metavar="FILE")
    add_connection_arguments(parser)
    parser.add_argument("--cron", required=True, metavar="EXPR",
                        help='5-field cron ("0 3 * * MON") or KFP\'s 6 fields, seconds first')
    parser.add_argument("--max-concurrency", type=int, default=1, metavar="N",
                        help=f"runs in flight at most ({MAX_CONCURRENCY[0]}-{MAX_CONCURRENCY[1]}, default 1)")
    parser.add_argument("--no-catchup", action="store_true",
                        help="after a pause, run only the latest missed interval (default: run every one)")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, metavar="NAME",
                        help=f"KFP experiment, created if missing (default: {DEFAULT_EXPERIMENT})")
    parser.add_argument("--name", metavar="NAME", help="the recurring run's name (default: <pipeline>-schedule)")
    add_service_account_argument(parser)


def run(args) -> int:
    from components.common.config import load_config
    from components.common.errors import KubetuneError
    from pipelines.kfp_client import MAX_CONCURRENCY, KfpSession, compile_for_cluster, normalize_host, to_kfp_cron

    cron = to_kfp_cron(args.cron)
    low, high = MAX_CONCURRENCY
    if not low <= args.max_concurrency <= high:
        raise KubetuneError(f"--max-concurrency {args.max_concurrency}: expected {low}-{high} (the KFP limit)")
    normalize_host(args.host)
    cfg = load_config(args.config)
    with tempfile.TemporaryDirectory(prefix="kubetune-schedule-") as tmp:
        compiled = compile_for_cluster(cfg, Path(tmp), source=args.config)
        if compiled.parameters.get("scheduled") != "BOOLEAN":
            raise KubetuneError(f"{args.config}: the compiled pipeline has no boolean `scheduled` parameter")
        session = KfpSession.from_args(args).connect()
        pipeline_id, version_id, what = session.ensure_pipeline(compiled)
        experiment_id = session.ensure_experiment(args.experiment)
        name = args.name or f"{compiled.name}-schedule"
        job_id = session.schedule(experiment_id, pipeline_id, version_id, name, cron=cron,
                                  max_concurrency=args.max_concurrency, no_catchup=args.no_catchup,
                                  params={"scheduled": True},
                                  description=f"kubetune: {compiled.name} on cron {cron!r} from {args.config}",
                                  service_account=args.service_account)
    print(f"pipeline: {compiled.name} ({what}; pipeline {pipeline_id}, version {version_id})")
    print(f"experiment: {args.experiment} ({experiment_id})")
    print(f"cron (KFP, seconds first): {cron}")
    print(f"recurring run: {session.recurring_run_url(job_id)}")
    return 0
