"""`kubetune submit --config CFG --host URL [--experiment NAME] [--param NAME=VALUE ...] [--service-account SA]`

Compiles the pipeline for CFG (every `cluster.images` name must be set), uploads it to the KFP API at
URL (a new pipeline, or a new version named `<pipeline>-<spec sha256[:12]>` when the pipeline exists;
the same spec reuses its version), finds or creates the experiment (default `kubetune`) and starts a
run. It prints the run's URL, `<host>/#/runs/details/<run id>`.

--param sets a pipeline parameter for this run; the valid names are the pipeline's parameters:
`config` (the whole config: JSON, or @FILE for a YAML config; validated), `run_id` (letters, digits,
'.', '_', '-'; empty: the KFP run's id) and `scheduled` (true/false). The token comes from
$KF_PIPELINES_TOKEN or $KUBETUNE_KFP_TOKEN, else a pod's service-account token, else the kube config
(see pipelines/kfp_client.py). An unreachable host fails within --timeout seconds, naming the URL.
--service-account runs the pods as that ServiceAccount (k8s/rbac.yaml's kubetune-pipeline-runner is
least-privilege); without it KFP's default is used.

Example:
    kubetune submit --config pipelines/configs/llama3.1-8b-qlora.yaml --host http://localhost:8888 \\
        --experiment contracts --param run_id=contracts-2025-06
"""

import tempfile
from pathlib import Path


def add_arguments(parser):
    from pipelines.kfp_client import DEFAULT_EXPERIMENT, add_connection_arguments, add_service_account_argument

    parser.add_argument("--config", required=True, metavar="FILE")
    add_connection_arguments(parser)
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, metavar="NAME",
                        help=f"KFP experiment, created if missing (default: {DEFAULT_EXPERIMENT})")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a pipeline parameter for this run (config, run_id, scheduled); repeatable")
    parser.add_argument("--run-name", metavar="NAME", help="the run's display name (default: <pipeline>-<UTC time>)")
    add_service_account_argument(parser)


def run(args) -> int:
    from components.common.config import load_config
    from pipelines.kfp_client import KfpSession, compile_for_cluster, default_run_name, normalize_host, parse_params

    normalize_host(args.host)  # a missing or malformed --host fails before compiling
    cfg = load_config(args.config)
    with tempfile.TemporaryDirectory(prefix="kubetune-submit-") as tmp:
        compiled = compile_for_cluster(cfg, Path(tmp), source=args.config)
        params = parse_params(args.param, compiled.parameters)
        session = KfpSession.from_args(args).connect()
        pipeline_id, version_id, what = session.ensure_pipeline(compiled)
        experiment_id = session.ensure_experiment(args.experiment)
        run_name = args.run_name or default_run_name(compiled.name)
        run_id = session.submit(experiment_id, pipeline_id, version_id, run_name, params,
                                service_account=args.service_account)
    print(f"pipeline: {compiled.name} ({what}; pipeline {pipeline_id}, version {version_id})")
    print(f"experiment: {args.experiment} ({experiment_id})")
    print(f"run: {session.run_url(run_id)}")
    return 0
