"""`kubetune promote --release URI --values FILE [--force] [--dry-run] [--git-commit]`

Pins a published release in an environment's charts/vllm values file (k8s/gitops/<env>/values.yaml):
`release.uri`, `model.servedName` and `model.maxModelLen` from the release's release.json, keeping the
file's comments and formatting, and prints the diff. A release whose eval gate failed is refused
unless --force, which is recorded as a comment in the file. "latest" is never written: a pin names one
immutable version. --dry-run prints the diff and writes nothing; --git-commit commits the file alone
with a message naming the release and its eval deltas. Argo CD or Flux then syncs the change.
With an MLflow tracking URI (--mlflow-uri, or MLFLOW_TRACKING_URI), the release's registered model
version also gets the environment's registry alias (the values file's folder: staging, production).
"""


def add_arguments(parser):
    parser.add_argument("--release", required=True, metavar="URI",
                        help="the release directory, s3://<bucket>/<prefix>/releases/<model>/<version>/")
    parser.add_argument("--values", required=True, metavar="FILE",
                        help="the environment's values file, e.g. k8s/gitops/staging/values.yaml")
    parser.add_argument("--force", action="store_true",
                        help="promote even though the release's eval gate failed (recorded in the file)")
    parser.add_argument("--dry-run", action="store_true", help="print the diff only; write nothing")
    parser.add_argument("--git-commit", action="store_true",
                        help="commit the values file (alone) with a message naming the release and its eval deltas")
    parser.add_argument("--mlflow-uri", metavar="URL",
                        help="MLflow server whose registry alias of the environment to move to this release "
                             "(default: $MLFLOW_TRACKING_URI; neither: no alias)")


def run(args) -> int:
    import sys

    from pipelines.promote import promote

    p = promote(args.release, args.values, force=args.force, dry_run=args.dry_run, git_commit=args.git_commit,
                mlflow_uri=args.mlflow_uri)
    if p.alias:
        print(f"MLflow: {p.release.get('model')} version {p.alias[1]} is now {p.alias[0]!r}")
    if p.forced:
        print(f"WARNING: {p.uri}: the eval gate failed; promoting because of --force (recorded in {p.values_path})",
              file=sys.stderr)
    if not p.changed:
        print(f"{p.values_path}: already pins {p.uri}; nothing to change")
        return 0
    sys.stdout.write(p.diff)
    if args.dry_run:
        print(f"dry run: {p.values_path} not written")
    else:
        print(f"wrote {p.values_path}: {p.release.get('model')} {p.release.get('version')} -> {p.environment}")
        if p.commit:
            print(f"committed {p.commit[:12]}: promote {p.release.get('model')} {p.release.get('version')} "
                  f"to {p.environment}")
    return 0
