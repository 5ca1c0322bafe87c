"""`kubetune serve-local --release URI|DIR [--gguf] [--port N] [--values FILE]...`

Serves a release on this machine. By default vLLM's CPU build (`.venv-vllm`, made by `make install`)
runs with the arguments charts/vllm renders for the release (read back from `helm template`); with
`--gguf`, a GGUF file of the release's gguf/ part is served by llama.cpp's server. The release is
fetched first and every file's sha256 is checked: a wrong URI, a missing object or a hash mismatch
exits non-zero with one clear line, and nothing is served. pipelines/serve_local.py has the details.
"""

from __future__ import annotations

import json


def add_arguments(parser):
    parser.add_argument("--release", required=True, metavar="URI|DIR",
                        help="release URI (s3://bucket/prefix/releases/<model>/<version>, file://...) or a "
                             "local release directory")
    parser.add_argument("--values", action="append", default=[], metavar="FILE",
                        help="charts/vllm values applied over the release's values.yaml snippet (repeatable), "
                             "e.g. lora.adapters to serve the release's adapter")
    parser.add_argument("--port", type=int, help="port to listen on (default: the chart's vllm.port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; the chart's "
                                                            "0.0.0.0 is for the pod network)")
    parser.add_argument("--dest", metavar="DIR",
                        help="local release directory (default $KUBETUNE_CACHE/serve/<model>/<version>)")
    parser.add_argument("--gguf", action="store_true", help="serve a GGUF file of the release with llama.cpp's "
                                                            "server instead of vLLM")
    parser.add_argument("--gguf-file", metavar="NAME|TYPE",
                        help="which GGUF file (file name, or a type such as Q8_0; default: Q4_K_M if present)")
    parser.add_argument("--dry-run", action="store_true",
                        help="render and print the server command as JSON (nothing is fetched or started)")


def run(args) -> int:
    from components.common import storage
    from pipelines import serve_local

    common = {"dest": args.dest, "values": args.values, "host": args.host, "port": args.port,
              "fetch": not args.dry_run}
    if args.gguf:
        plan = serve_local.plan_gguf(args.release, gguf_file=args.gguf_file, **common)
    else:
        if args.gguf_file:
            raise serve_local.ServeLocalError("--gguf-file needs --gguf")
        plan = serve_local.plan_vllm(args.release, **common)
    if args.dry_run:
        print(json.dumps({"kind": plan.kind, "command": plan.command, "env": plan.env, "chart_args": plan.chart_args,
                          "local_dir": str(plan.local_dir), "served_model_name": plan.served_name,
                          "url": plan.url, "notes": plan.notes}, indent=2))
        return 0
    f = plan.fetched
    # The bytes: a warm release directory (and cache) must download nothing, release.json included.
    print(f"serve-local: {args.release} in {plan.local_dir} ({f['downloaded']} file(s) downloaded "
          f"({f['bytes']} bytes), {f['reused']} already present, all verified; "
          f"{storage.transfer_stats.bytes_downloaded} bytes read from S3)")
    for note in plan.notes:
        print(f"serve-local: {note}")
    print(f"serve-local: {plan.kind} serving {plan.served_name!r} on {plan.url}/v1: {' '.join(plan.command)}")
    serve_local.exec_plan(plan)
    return 0  # not reached: exec_plan replaces this process
