"""`kubetune s3 serve`: a local SeaweedFS S3 server in the foreground, for development, and
`kubetune s3 cp`: copy files between this machine and S3.

`serve` prints the `export ...` lines that point kubetune (and any AWS tool) at it. The credential is a
local development credential, kept in <dir>/s3cfg.json and reused on the next start. Ctrl-C (SIGINT)
or SIGTERM stops it.

`cp` copies a local file or directory to s3://BUCKET/KEY, or an object or prefix back here, through
kubetune's storage layer (boto3), so it reaches the S3 of the standard AWS environment:
AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (what `serve` prints), or IRSA on a cluster.
Uploads store each file's sha256 as object metadata, and downloads of such objects are verified.
"""

from __future__ import annotations

import logging
import shlex
import signal
import sys
from dataclasses import dataclass

# weed mini stops in about 1.5 s after SIGTERM; one that takes longer than this is killed, so that a
# Ctrl-C always ends `serve` within 10 s.
STOP_TIMEOUT_S = 5.0


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", required=True)
    serve = sub.add_parser("serve", help="Run a local S3 server (SeaweedFS) until Ctrl-C.")
    serve.add_argument("--dir", default=".kubetune/s3",
                       help="data directory (default .kubetune/s3); the credential is kept there too")
    serve.add_argument("--port", type=int, default=8333,
                       help="S3 port on 127.0.0.1 (default 8333; 0 picks a free one)")
    serve.add_argument("--bucket", action="append", default=[], metavar="NAME",
                       help="create this bucket if missing (repeatable)")
    cp = sub.add_parser(
        "cp", help="Copy a local file or directory to S3, or an S3 object or prefix to here.",
        description="Copy between this machine and the S3 of the AWS environment (AWS_ENDPOINT_URL_S3, "
                    "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: the lines `kubetune s3 serve` prints). "
                    "A destination key ending in / (or an existing local directory) takes the source's "
                    "file name.")
    cp.add_argument("source", metavar="SRC", help="a local path, or s3://BUCKET/KEY")
    cp.add_argument("dest", metavar="DST", help="s3://BUCKET/KEY, or a local path")
    cp.add_argument("--recursive", "-r", action="store_true",
                    help="copy every file under a local directory, or every object under an s3:// prefix")


def run(args) -> int:
    if args.action == "cp":
        return copy(args.source, args.dest, recursive=args.recursive)
    return serve(args)


# ---- serve ------------------------------------------------------------------------------------
def _stop_requested(signum, frame):
    raise KeyboardInterrupt


def serve(args) -> int:
    from pipelines.local_s3 import LocalS3

    server = LocalS3(args.dir, port=args.port or None)
    # Both handlers are set explicitly: a job started in the background by a non-interactive shell
    # (a script, a Makefile recipe, a tool runner) inherits SIGINT as *ignored*, and Python keeps it
    # ignored, so without this a Ctrl-C / `kill -INT` did nothing there while SIGTERM worked.
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, _stop_requested) for signum in stop_signals}
    try:
        server.start()
        for bucket in args.bucket:
            server.ensure_bucket(bucket)
        print(f"# local S3 (SeaweedFS) at {server.endpoint}, data in {server.data_dir}", flush=True)
        print("# a local development credential; paste these lines into your shell:")
        for key, value in server.env().items():
            print(f"export {key}={shlex.quote(value)}")
        if args.bucket:
            print(f"# buckets: {', '.join(args.bucket)}")
        # SeaweedFS gives each bucket a volume of its own; once they run out, writes to new buckets
        # fail with a bare InternalError, so say up front how many there are.
        _, free = server.volume_slots()
        print(f"# room for {free} more buckets (one volume each, about one per GiB of free disk)")
        print("# Ctrl-C stops the server.", flush=True)
        code = server.wait()
        print(f"kubetune s3 serve: weed exited with code {code}; log {server.log_path}:\n{server.log_tail()}",
              file=sys.stderr)
        return code or 1
    except KeyboardInterrupt:
        print("\nstopping local S3 ...", file=sys.stderr)
        return 0
    finally:
        # weed runs in a session of its own (the terminal's Ctrl-C never reaches it), so only this
        # process can stop it: a second Ctrl-C while it stops must not abort the cleanup and leave
        # weed running on the port.
        for signum in stop_signals:
            signal.signal(signum, signal.SIG_IGN)
        server.stop(timeout=STOP_TIMEOUT_S)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ---- cp ---------------------------------------------------------------------------------------
@dataclass
class Copied:
    source: str
    dest: str
    size: int


def copy(source: str, dest: str, *, recursive: bool = False) -> int:
    """Copy local -> S3 or S3 -> local; prints one line per file and the totals."""
    from components.common import storage

    # boto3 logs "Found credentials in environment variables" at INFO on every run: noise next to the copy lines
    logging.getLogger("botocore.credentials").setLevel(logging.WARNING)
    source_is_s3, dest_is_s3 = _is_s3_side(source), _is_s3_side(dest)
    if source_is_s3 == dest_is_s3:
        where = "both are s3:// URIs" if source_is_s3 else "neither is an s3:// URI"
        raise storage.StorageError(f"kubetune s3 cp {source} {dest}: {where}; expected one local path and "
                                   "one s3://BUCKET/KEY (local -> S3, or S3 -> local)")
    if dest_is_s3:
        copied = _upload(source, dest, recursive)
        verb = "upload"
    else:
        copied = _download(source, dest, recursive)
        verb = "download"
    for c in copied:
        print(f"{verb}: {c.source} -> {c.dest} ({c.size} bytes)")
    total = sum(c.size for c in copied)
    print(f"copied {len(copied)} file{'s' if len(copied) != 1 else ''}, {total} bytes ({_human_size(total)})")
    return 0


def _is_s3_side(arg: str) -> bool:
    """Whether arg names S3; a malformed S3 URI (s3:/b/k, S3://B, s3://bad_bucket) is an error, not a path."""
    from components.common import storage

    if not arg.lower().startswith("s3:"):
        return False
    storage.split_s3(arg)  # raises StorageError naming the URI and the expected s3://BUCKET/KEY form
    return True


def _require_bucket(bucket: str, uri: str) -> None:
    """Fail before any transfer when the bucket is missing (S3 never creates one on upload)."""
    from components.common import storage
    from components.common.s3 import translated

    client = storage.s3_client()
    try:
        with translated(uri, "checking the bucket", client):
            client.head_bucket(Bucket=bucket)
    except storage.NotFound:
        raise storage.NotFound(f"{uri}: bucket {bucket!r} does not exist on {client.meta.endpoint_url}; "
                               f"expected an existing bucket (`kubetune s3 serve --bucket {bucket}` creates it "
                               f"on a local server, `aws s3 mb s3://{bucket}` on any S3)") from None


def _upload(source: str, dest_uri: str, recursive: bool) -> list[Copied]:
    from components.common import storage

    src = storage.local_path(source)
    bucket, key = storage.split_s3(dest_uri)
    if not src.exists():
        raise storage.NotFound(f"{source}: local source not found (expected a file, or a directory with "
                               "--recursive)")
    if src.is_dir() and not recursive:
        raise storage.StorageError(f"{source}: is a directory; pass --recursive to copy every file under it "
                                   f"to {dest_uri.rstrip('/')}/")
    _require_bucket(bucket, dest_uri)
    if src.is_file():
        if not key or key.endswith("/"):  # s3://b/ or s3://b/datasets/: keep the file's name
            key += src.name
        files = [(src, f"s3://{bucket}/{key}")]
    else:
        prefix = key.strip("/")
        local_files = sorted(p for p in src.rglob("*") if p.is_file())
        if not local_files:
            raise storage.NotFound(f"{source}: no files under this directory (expected at least one to copy)")
        files = [(p, f"s3://{bucket}/{storage.join_uri(prefix, p.relative_to(src).as_posix())}")
                 for p in local_files]
    copied = []
    for path, uri in files:
        storage.upload_file(path, uri)
        copied.append(Copied(str(path), uri, path.stat().st_size))
    return copied


def _download(source_uri: str, dest: str, recursive: bool) -> list[Copied]:
    from components.common import storage

    bucket, key = storage.split_s3(source_uri)
    dst = storage.local_path(dest)
    _require_bucket(bucket, source_uri)
    if not recursive:
        if not key or key.endswith("/"):
            raise storage.StorageError(f"{source_uri}: is a prefix, not an object; pass --recursive to copy "
                                       f"every object under it to {dest}")
        target = dst / key.rsplit("/", 1)[-1] if dst.is_dir() or dest.endswith("/") else dst
        try:
            storage.download_file(source_uri, target)
        except storage.NotFound:
            under = storage.list_objects(source_uri)
            if under:
                raise storage.StorageError(f"{source_uri}: is a prefix with {len(under)} objects under it, not "
                                           f"an object; pass --recursive to copy them to {dest}") from None
            raise
        return [Copied(source_uri, str(target), target.stat().st_size)]
    if dst.exists() and not dst.is_dir():
        raise storage.StorageError(f"{dest}: is a file; expected a directory to copy the objects under "
                                   f"{source_uri} into")
    objects = storage.list_objects(source_uri)
    if not objects:
        raise storage.NotFound(f"{source_uri}: no objects under this prefix in bucket {bucket!r}")
    prefix_uri = f"s3://{bucket}/{key.strip('/')}/" if key.strip("/") else f"s3://{bucket}/"
    root = dst.resolve()
    copied = []
    for obj in objects:
        target = dst / obj.uri[len(prefix_uri):]
        # S3 keys may hold `..`: never write outside the destination directory.
        if not target.resolve().is_relative_to(root):
            raise storage.StorageError(f"{obj.uri}: its key leads outside {dest} ({target}); expected keys "
                                       "without `..` segments")
        storage.download_file(obj.uri, target)
        copied.append(Copied(obj.uri, str(target), target.stat().st_size))
    return copied


def _human_size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}"
        size /= 1024
