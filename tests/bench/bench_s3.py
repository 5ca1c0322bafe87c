"""Loopback S3 throughput of components.common.storage against a real SeaweedFS server.

Figures, not a pass/fail test:  `python tests/bench/bench_s3.py [--big-mb 200]`  or  `make bench`
(pytest collects bench_*.py only under tests/bench and only when tests/bench is named).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from components.common import s3, storage  # noqa: E402
from pipelines.local_s3 import LocalS3  # noqa: E402

MiB = 1024 * 1024


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _write(root: Path, files: dict[str, int]) -> Path:
    for rel, size in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            remaining = size
            while remaining:
                n = min(remaining, 8 * MiB)
                f.write(os.urandom(n))
                remaining -= n
    return root


def run_bench(work: Path, bucket: str, big_mb: int = 200, small_n: int = 500,
              small_kb: int = 64) -> list[str]:
    cases = {"one big file": {"model.safetensors": big_mb * MiB},
             "many small files": {f"d{i % 10}/f{i:04d}.bin": small_kb * 1024 for i in range(small_n)}}
    rows, saved_cache = [], os.environ.get("KUBETUNE_CACHE")
    try:
        for name, files in cases.items():
            rows.append(_bench_case(work, bucket, name, files))
    finally:
        if saved_cache is None:
            os.environ.pop("KUBETUNE_CACHE", None)
        else:
            os.environ["KUBETUNE_CACHE"] = saved_cache
    return rows


def _bench_case(work: Path, bucket: str, name: str, files: dict[str, int]) -> str:
    src = _write(work / name.replace(" ", "-"), files)
    total = sum(files.values()) / MiB
    dest = f"s3://{bucket}/bench/{src.name}"
    _, t_up = _timed(lambda: storage.publish_dir(src, dest, producer="bench"))
    os.environ["KUBETUNE_CACHE"] = str(work / f"cache-{src.name}")  # cold cache
    _, t_down = _timed(lambda: storage.fetch_dir(dest))
    storage.transfer_stats.reset()
    _, t_hit = _timed(lambda: storage.fetch_dir(dest))
    assert storage.transfer_stats.bytes_downloaded == 0
    return (f"{name:16s} {len(files):4d} files {total:6.1f} MiB | upload {total / t_up:6.1f} MiB/s "
            f"({t_up:5.2f}s, incl. sha256) | download {total / t_down:6.1f} MiB/s ({t_down:5.2f}s, "
            f"incl. verify) | cache hit {t_hit:5.2f}s")


def _report(rows: list[str]) -> None:
    print(f"\nS3 loopback throughput (SeaweedFS weed mini, multipart threshold "
          f"{s3.MULTIPART_THRESHOLD // MiB} MiB, chunk {s3.MULTIPART_CHUNKSIZE // MiB} MiB, "
          f"concurrency {s3.MAX_CONCURRENCY}, {os.cpu_count()} CPUs)")
    for row in rows:
        print("  " + row)


def test_bench_s3(s3_env, tmp_path):
    _report(run_bench(tmp_path, s3_env.bucket, big_mb=int(os.environ.get("KUBETUNE_BENCH_BIG_MB", "200"))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--small-n", type=int, default=500)
    parser.add_argument("--small-kb", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp, LocalS3(Path(tmp) / "s3") as s3:
        os.environ.update(s3.env())
        rows = run_bench(Path(tmp), s3.ensure_bucket("kt-bench"), args.big_mb, args.small_n, args.small_kb)
    _report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
