"""`kubetune fetch RELEASE_URI DEST`: download a release for serving, verifying every sha256.

This is what the Helm chart's init container runs. Files already in DEST with the right hash are
kept, so a restart on a warm PVC downloads nothing; a wrong URI, a missing object or a hash mismatch
exits non-zero with one clear line, and a corrupted model is never left in place.
"""

import argparse

from components.common.release import FETCHABLE


def _parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in FETCHABLE]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(unknown) or '(none)'}; "
                                         f"expected a comma-separated list of {', '.join(FETCHABLE)}")
    return parts


def add_arguments(parser):
    parser.add_argument("release", help="release URI, e.g. s3://bucket/prefix/releases/<model>/<version>")
    parser.add_argument("dest", help="local directory (the serving volume)")
    parser.add_argument("--parts", type=_parts, action="extend", default=[],
                        help=f"comma-separated parts to fetch: {', '.join(FETCHABLE)} (default: merged)")


def run(args) -> int:
    from components.common.release import fetch_release

    parts = tuple(dict.fromkeys(args.parts or ["merged"]))
    counts = fetch_release(args.release, args.dest, parts)
    print(f"fetched {', '.join(parts)} of {args.release} into {args.dest}: {counts['downloaded']} file(s) "
          f"downloaded ({counts['bytes'] / 1e6:.1f} MB), {counts['reused']} already present and verified")
    return 0
