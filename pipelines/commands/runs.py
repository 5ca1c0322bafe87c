"""`kubetune runs --host URL [--experiment NAME] [--limit N]`

Lists the newest runs on the KFP API at URL (all experiments, or one): state, creation time (UTC),
run id, name and URL (`<host>/#/runs/details/<id>`); a failed run's error message follows its row.
The token is found as for `kubetune submit`.
"""


def add_arguments(parser):
    from pipelines.kfp_client import add_connection_arguments

    add_connection_arguments(parser)
    parser.add_argument("--experiment", metavar="NAME", help="only the runs of this experiment")
    parser.add_argument("--limit", type=int, default=20, metavar="N", help="at most N runs, newest first (20)")


def run(args) -> int:
    from components.common.errors import KubetuneError
    from pipelines.kfp_client import KfpSession

    if args.limit < 1:
        raise KubetuneError(f"--limit {args.limit}: expected at least 1")
    session = KfpSession.from_args(args).connect()
    runs = session.list_runs(limit=args.limit, experiment=args.experiment)
    if not runs:
        print("no runs" + (f" in experiment {args.experiment}" if args.experiment else ""))
        return 0
    print(f"{'STATE':<10} {'CREATED (UTC)':<19} {'RUN ID':<36} {'NAME':<40} URL")
    for r in runs:
        created = r.created_at.strftime("%Y-%m-%d %H:%M:%S") if r.created_at else "-"
        print(f"{r.state or 'UNKNOWN':<10} {created:<19} {r.run_id:<36} {r.display_name or '-':<40} "
              f"{session.run_url(r.run_id)}")
        if r.error and r.error.message:
            print(f"  error: {r.error.message}")
    return 0
