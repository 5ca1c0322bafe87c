"""`kubetune s3 serve`: a local SeaweedFS S3 server in the foreground, for development.

It prints the `export ...` lines that point kubetune (and any AWS tool) at it. The credential is a
local development credential, kept in <dir>/s3cfg.json and reused on the next start. Ctrl-C stops it.
"""

from __future__ import annotations

import shlex
import signal
import sys


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", required=True)
    serve = sub.add_parser("serve", help="Run a local S3 server (SeaweedFS) until Ctrl-C.")
    serve.add_argument("--dir", default=".kubetune/s3",
                       help="data directory (default .kubetune/s3); the credential is kept there too")
    serve.add_argument("--port", type=int, default=8333,
                       help="S3 port on 127.0.0.1 (default 8333; 0 picks a free one)")
    serve.add_argument("--bucket", action="append", default=[], metavar="NAME",
                       help="create this bucket if missing (repeatable)")


def run(args) -> int:
    from pipelines.local_s3 import LocalS3

    server = LocalS3(args.dir, port=args.port or None)
    # SIGTERM (e.g. from a process manager) stops the server like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
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
        server.stop()
