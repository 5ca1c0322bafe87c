"""`kubetune doctor [--kubeconfig PATH] [--context NAME] [--namespace NS] [--kfp-host URL] ...`

Checks a cluster before the first run, with the `kubernetes` client and read-only calls: the API
server, GPU nodes with nvidia.com/gpu allocatable, the namespace, the runner ServiceAccount, the S3
Secret (its keys), the model-cache PVC, and KFP's health endpoint (at --kfp-host, or through the API
server's service proxy). It prints PASS, FAIL or SKIP per check and exits 1 when any check failed.
"""


def add_arguments(parser):
    from pipelines.doctor import DoctorOptions

    d = DoctorOptions()
    parser.add_argument("--kubeconfig", metavar="PATH", help="kube config file (default: $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--context", metavar="NAME", help="kube config context (default: the current one)")
    parser.add_argument("--namespace", default=d.namespace, metavar="NS",
                        help=f"where the pipeline runs execute (default: {d.namespace})")
    parser.add_argument("--secret", default=d.secret, metavar="NAME",
                        help=f"the S3 Secret, config cluster.s3_secret_name (default: {d.secret})")
    parser.add_argument("--pvc", default=d.pvc, metavar="NAME",
                        help=f"the model-cache PVC, config cluster.cache_pvc (default: {d.pvc})")
    parser.add_argument("--service-account", default=d.service_account, metavar="NAME",
                        help=f"the pipeline runner ServiceAccount (default: {d.service_account})")
    parser.add_argument("--kfp-host", metavar="URL",
                        help="KFP API URL to check (default: the ml-pipeline service through the API server proxy)")
    parser.add_argument("--kfp-namespace", default=d.kfp_namespace, metavar="NS",
                        help=f"KFP's namespace, for the service proxy check (default: {d.kfp_namespace})")
    parser.add_argument("--timeout", type=float, default=d.timeout, metavar="SECONDS",
                        help=f"per request (default: {d.timeout:g})")


def run(args) -> int:
    from pipelines.doctor import DoctorOptions, run_checks

    opts = DoctorOptions(namespace=args.namespace, secret=args.secret, pvc=args.pvc,
                         service_account=args.service_account, kfp_host=args.kfp_host,
                         kfp_namespace=args.kfp_namespace, kubeconfig=args.kubeconfig, context=args.context,
                         timeout=args.timeout)
    report = run_checks(opts)
    for check in report.checks:
        print(check.line())
    failed = [c.name for c in report.checks if c.status == "FAIL"]
    print(f"\n{'all checks passed' if report.ok else 'FAILED: ' + ', '.join(failed)}")
    return 0 if report.ok else 1
