"""Issue 18, section 2: faults injected into real processes, against a real SeaweedFS S3 server.

Every fault hits a real process: a SeaweedFS server this test owns is SIGKILLed in the middle of an
upload and restarted on the same ports and data directory; objects are overwritten behind kubetune's
back with boto3; the train step of a pipeline run by the KFP local runner gets SIGTERM, and SIGKILL;
two pipeline runs share one S3 at the same time, and two publishers race for one release version; the
quantize step's disk (a small tmpfs) fills up while it converts. No mocks.

What each must show: the work completes, or fails with a non-zero exit and a message naming the object
(or the disk); nothing incomplete ever gets a `_manifest.json`; corrupt bytes are never handed to a
reader; and what a fault interrupted, a retry finishes with the same result as an uninterrupted run.

The pipeline tests (module fixture `concurrent_runs` and the preemption tests) run the whole pipeline
on the tiny random demo model through `pipelines.local.run_local(retries=1)`; they are marked slow.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from demo_run import environ
from faults_helpers import (
    HERE,
    OwnedS3,
    bucket_objects,
    clean_env,
    count_objects,
    fill_disk,
    kubetune,
    object_sha256,
    pipeline_config,
    start,
    step_process,
    tmpfs,
    wait_until,
    write_random_files,
)

from components.common import cache, storage

BUCKET = "kt-faults"
KiB, MiB = 1024, 1024 * 1024


def no_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" not in text


# ---- 1. S3 killed in the middle of an upload ---------------------------------------------------
@pytest.fixture
def owned_s3(tmp_path):
    """A SeaweedFS server of this test's own (never the session's shared one), bucket kt-faults."""
    server = OwnedS3(tmp_path / "seaweedfs").start()
    try:
        server.server.ensure_bucket(BUCKET)
        yield server
    finally:
        server.stop()


def _kill_mid_upload(owned_s3, proc, prefix: str, total: int, at_least: int) -> int:
    """SIGKILL the server once `at_least` of the `total` objects are under the prefix; returns how many
    were there (asserting the upload was really in its middle)."""
    client = owned_s3.client()
    seen = wait_until(lambda: (n := count_objects(client, BUCKET, prefix)) >= at_least and n,
                      timeout=120, what=f"{at_least} objects under {prefix}", proc=proc)
    owned_s3.kill()
    assert seen < total, f"the upload finished ({seen} of {total} objects) before the server was killed"
    return seen


def _assert_objects_complete(owned_s3, prefix: str, shas: dict[str, str]) -> dict[str, int]:
    """Every object under the prefix holds exactly one local file's bytes, and its sha256 metadata says so."""
    client = owned_s3.client()
    objects = bucket_objects(client, BUCKET, prefix)
    for key in objects:
        rel = key[len(prefix):]
        if rel == storage.MANIFEST_NAME:
            continue
        assert rel in shas, f"unexpected object {key}"
        body, meta = object_sha256(client, BUCKET, key)
        assert body == shas[rel] == meta, f"s3://{BUCKET}/{key} is incomplete or wrong after the restart"
    return objects


def test_cp_recursive_retries_across_a_killed_and_restarted_server(owned_s3, tmp_path):
    """`kubetune s3 cp --recursive` of 10 MiB: S3 is SIGKILLed after a few files and restarted a second
    later on the same ports and data: the CLI's retries carry the copy through, every object complete."""
    shas = write_random_files(tmp_path / "upload", n=40, size=256 * KiB)
    env = clean_env(owned_s3.env(), AWS_MAX_ATTEMPTS="10", KUBETUNE_CACHE=str(tmp_path / "cache"))
    log = tmp_path / "cp.log"
    proc = start(["-m", "pipelines.cli", "s3", "cp", str(tmp_path / "upload"), f"s3://{BUCKET}/data",
                  "--recursive"], env, log)
    try:
        _kill_mid_upload(owned_s3, proc, "data/", total=len(shas), at_least=6)
        time.sleep(1.0)  # down for a second: the client sees refused connections and backs off
        owned_s3.restart()
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert rc == 0, out
    assert "copied 40 files, 10485760 bytes" in out
    objects = _assert_objects_complete(owned_s3, "data/", shas)
    assert len(objects) == len(shas)


def test_cp_recursive_fails_clearly_while_the_server_stays_down(owned_s3, tmp_path):
    """The same copy with the server down for good (and 2 attempts per request): a non-zero exit and one
    line naming the object and the endpoint; what did reach S3 is complete; a rerun after the restart
    copies everything."""
    shas = write_random_files(tmp_path / "upload", n=40, size=256 * KiB)
    env = clean_env(owned_s3.env(), AWS_MAX_ATTEMPTS="2", KUBETUNE_CACHE=str(tmp_path / "cache"))
    log = tmp_path / "cp.log"
    args = ["-m", "pipelines.cli", "s3", "cp", str(tmp_path / "upload"), f"s3://{BUCKET}/data", "--recursive"]
    proc = start(args, env, log)
    try:
        _kill_mid_upload(owned_s3, proc, "data/", total=len(shas), at_least=6)
        started = time.monotonic()
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert rc == 2, out
    assert time.monotonic() - started < 60, "a dead endpoint must fail within a bounded time"
    assert no_traceback(out), out
    error = next(line for line in out.splitlines() if line.startswith("kubetune s3: error:"))
    assert f"s3://{BUCKET}/data/part-" in error and owned_s3.endpoint in error and "unreachable" in error, error

    owned_s3.restart()
    partial = _assert_objects_complete(owned_s3, "data/", shas)
    assert 0 < len(partial) < len(shas)
    again = subprocess.run([sys.executable, *args], cwd=HERE.parents[2], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(_assert_objects_complete(owned_s3, "data/", shas)) == len(shas)


def _publish_dir_proc(owned_s3, src: Path, uri: str, tmp_path: Path, attempts: str, log: Path):
    env = clean_env(owned_s3.env(), AWS_MAX_ATTEMPTS=attempts, KUBETUNE_CACHE=str(tmp_path / "cache"))
    return start([str(HERE), "publish-dir", str(src), uri], env, log), env


def test_publish_killed_mid_upload_writes_no_manifest(owned_s3, tmp_path):
    """A step's publish (storage.publish_dir, one transfer at a time) with S3 killed in its middle and
    down: it fails naming the object; after the restart the prefix holds files but no _manifest.json, so
    no reader takes it; publishing again completes it, and a cold fetch verifies every file."""
    src = tmp_path / "out"
    shas = write_random_files(src, n=48, size=256 * KiB)
    uri = f"s3://{BUCKET}/runs/r1/merge"
    log = tmp_path / "publish.log"
    proc, env = _publish_dir_proc(owned_s3, src, uri, tmp_path, "2", log)
    try:
        _kill_mid_upload(owned_s3, proc, "runs/r1/merge/", total=len(shas), at_least=6)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert rc == 2, out
    assert f"{uri}/part-" in out and "unreachable" in out and no_traceback(out), out

    owned_s3.restart()
    partial = _assert_objects_complete(owned_s3, "runs/r1/merge/", shas)
    assert f"runs/r1/merge/{storage.MANIFEST_NAME}" not in partial, "a manifest for an incomplete upload"
    assert 0 < len(partial) < len(shas)
    with environ(env):
        assert storage.read_manifest(uri) is None
        with pytest.raises(storage.NotFound, match=r"no _manifest\.json under this prefix"):
            storage.fetch_dir(uri)
    # the retry (a KFP retry of the step does the same) completes it
    rc = start([str(HERE), "publish-dir", str(src), uri], env, log).wait(timeout=300)
    assert rc == 0, log.read_text()
    with environ({**env, "KUBETUNE_CACHE": str(tmp_path / "cold")}):
        local = storage.fetch_dir(uri)  # every sha256 checked against the manifest
        assert {p.relative_to(local).as_posix(): storage.sha256_file(p)
                for p in local.rglob("*") if p.is_file()} == shas


def test_publish_across_a_killed_and_restarted_server_completes_verified(owned_s3, tmp_path):
    """The same publish, the server restarted a second after the kill: the upload's retries complete
    it, the manifest is written last, and every file it lists is really there after the crash (a cold
    fetch verifies all 48 against it)."""
    src = tmp_path / "out"
    shas = write_random_files(src, n=48, size=256 * KiB)
    uri = f"s3://{BUCKET}/runs/r2/merge"
    log = tmp_path / "publish.log"
    proc, env = _publish_dir_proc(owned_s3, src, uri, tmp_path, "10", log)
    try:
        _kill_mid_upload(owned_s3, proc, "runs/r2/merge/", total=len(shas), at_least=6)
        time.sleep(1.0)
        owned_s3.restart()
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, log.read_text()
    objects = _assert_objects_complete(owned_s3, "runs/r2/merge/", shas)
    assert len(objects) == len(shas) + 1  # the files and the manifest
    with environ({**env, "KUBETUNE_CACHE": str(tmp_path / "cold")}):
        manifest = storage.read_manifest(uri)
        assert {f.path: f.sha256 for f in manifest.files} == shas
        local = storage.fetch_dir(uri)
        assert sum(1 for p in local.rglob("*") if p.is_file()) == len(shas)


# ---- 2. an object corrupted after upload -------------------------------------------------------
def _corrupt(client, bucket: str, key: str, *, keep_metadata: bool) -> bytes:
    """Overwrite the object with the same number of bytes, one of them flipped; with keep_metadata the
    sha256 metadata of the good content stays (so only the manifest can tell). Returns the good bytes."""
    got = client.get_object(Bucket=bucket, Key=key)
    good = got["Body"].read()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    extra = {"Metadata": got.get("Metadata", {})} if keep_metadata else {}
    client.put_object(Bucket=bucket, Key=key, Body=bytes(bad), **extra)
    return good


def _published_dir(s3_env, tmp_path, name: str = "prepare") -> tuple[str, dict[str, bytes]]:
    src = tmp_path / f"src-{name}"
    src.mkdir()
    files = {"weights.bin": os.urandom(1 * MiB),
             "train.jsonl": b"".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}).encode() + b"\n"
                                     for i in range(50)),
             "stats.json": b'{"records": 50}\n'}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    uri = s3_env.uri(f"runs/r1/{name}")
    storage.publish_dir(src, uri, producer=name)
    return uri, files


def _read_dir(local: Path) -> dict[str, bytes]:
    return {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}


def test_corrupted_object_is_refused_by_the_next_fetch(s3_env, tmp_path, monkeypatch):
    uri, files = _published_dir(s3_env, tmp_path)
    key = uri.split("/", 3)[3] + "/weights.bin"
    expected = hashlib.sha256(files["weights.bin"]).hexdigest()
    _corrupt(s3_env.client(), s3_env.bucket, key, keep_metadata=True)
    cold = tmp_path / "cold-cache"
    monkeypatch.setenv("KUBETUNE_CACHE", str(cold))

    with pytest.raises(storage.HashMismatch) as err:
        storage.fetch_dir(uri)
    message = str(err.value)
    assert f"{uri}/weights.bin: sha256 mismatch" in message and expected in message, message
    # nothing of the corrupt download is kept: no directory, no blob but the good files', no temp file
    assert not (cold / "dirs").exists() or not any((cold / "dirs").iterdir())
    blobs = {p.name for p in (cold / "blobs").rglob("*") if p.is_file() and not p.name.endswith(".ok")}
    good = {hashlib.sha256(d).hexdigest() for d in files.values()}
    assert blobs <= good and expected not in blobs
    assert not any((cold / "tmp").iterdir())

    # the object alone (fetch_file): its sha256 metadata no longer matches the bytes either
    with pytest.raises(storage.HashMismatch, match=f"{uri}/weights.bin: sha256 mismatch"):
        storage.fetch_file(f"{uri}/weights.bin")
    # a corruption that drops the metadata too (a plain `aws s3 cp` over it) is still caught by the
    # manifest (weights.bin repaired first, and a cache of its own: train.jsonl's good blob is cached here)
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=key, Body=files["weights.bin"],
                               Metadata={"sha256": expected})
    _corrupt(s3_env.client(), s3_env.bucket, uri.split("/", 3)[3] + "/train.jsonl", keep_metadata=False)
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cold-cache-2"))
    with pytest.raises(storage.HashMismatch, match=f"{uri}/train.jsonl: sha256 mismatch"):
        storage.fetch_dir(uri)


def test_a_step_refuses_a_corrupted_input(s3_env, tmp_path):
    """`kubetune train` on a published dataset whose train.jsonl was changed after publishing: exit 2,
    the object named, nothing published."""
    uri, _ = _published_dir(s3_env, tmp_path)
    _corrupt(s3_env.client(), s3_env.bucket, uri.split("/", 3)[3] + "/train.jsonl", keep_metadata=True)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": "faults-tiny", "base": s3_env.uri("models/none")},
                                   "data": {"sources": [{"uri": "unused.jsonl"}]},
                                   "storage": {"root": s3_env.uri("")}}))
    out = s3_env.uri("runs/r1/train")
    r = kubetune("train", "--config", str(cfg), "--dataset", uri, "--output", out, "--no-progress",
                 env=clean_env(s3_env.env, KUBETUNE_CACHE=str(tmp_path / "cache")), timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"kubetune train: error: {uri}/train.jsonl: sha256 mismatch" in r.stderr, r.stderr
    assert no_traceback(r.stderr), r.stderr
    assert bucket_objects(s3_env.client(), s3_env.bucket, "runs/r1/train/") == {}


def test_warm_cache_never_serves_corrupt_bytes(s3_env, tmp_path, monkeypatch):
    """The cache is keyed by the manifest's sha256: with it warm, a corrupted S3 object is not even read
    (the verified blob serves). A cached blob changed on disk is noticed, dropped and downloaded again,
    and then the corrupt object is refused; once the object is repaired the fetch works again."""
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "warm"))
    uri, files = _published_dir(s3_env, tmp_path)
    key = uri.split("/", 3)[3] + "/weights.bin"
    first = storage.fetch_dir(uri)
    assert _read_dir(first) == files

    good = _corrupt(s3_env.client(), s3_env.bucket, key, keep_metadata=True)
    storage.transfer_stats.reset()
    again = storage.fetch_dir(uri)
    assert storage.transfer_stats.bytes_downloaded == 0
    assert _read_dir(again) == files

    sha = hashlib.sha256(good).hexdigest()
    blob = cache.blob_path(sha)
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:  # the cached copy rots in place (same size)
        f.seek(100)
        f.write(b"\0" * 16)
    for _ in range(2):  # refused, and refused again: the corrupt bytes never become a cached blob
        with pytest.raises(storage.HashMismatch, match=f"{uri}/weights.bin: sha256 mismatch"):
            storage.fetch_dir(uri)
        assert cache.trusted_blob(sha) is None

    s3_env.client().put_object(Bucket=s3_env.bucket, Key=key, Body=good, Metadata={"sha256": sha})
    assert _read_dir(storage.fetch_dir(uri)) == files


@pytest.fixture
def release_parts(tmp_path):
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "model.safetensors").write_bytes(os.urandom(256 * KiB))
    (merged / "chat_template.jinja").write_text("{{ messages }}")
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "gate.json").write_text(json.dumps({"passed": True, "checks": []}))
    (eval_dir / "eval_results.json").write_text(json.dumps({"metrics": {}}))
    return {"merged": merged, "eval_dir": eval_dir}


def _release_cfg(root: str, **publish):
    from components.common.config import config_from_dict

    return config_from_dict({"model": {"name": "faults-tiny", "base": "/models/base"},
                             "data": {"sources": [{"uri": "d.jsonl"}]}, "storage": {"root": root},
                             "publish": publish})


def test_a_tampered_release_is_refused(s3_env, tmp_path, release_parts):
    """release.json rewritten after publishing (a plain put: no sha256 metadata), then a model file
    corrupted: reading the release and `kubetune fetch` refuse each, naming the object."""
    from components.common.release import read_release
    from components.publish import step as publish

    rel = publish.run(_release_cfg(s3_env.uri("kt")), **release_parts, run_id="r1", version="v1")
    client, prefix = s3_env.client(), rel.uri.split("/", 3)[3]
    env = clean_env(s3_env.env, KUBETUNE_CACHE=str(tmp_path / "cli-cache"))

    model_key = f"{prefix}/merged/model.safetensors"
    _corrupt(client, s3_env.bucket, model_key, keep_metadata=False)
    dest = tmp_path / "serve"
    r = kubetune("fetch", rel.uri, str(dest), env=env)
    assert r.returncode == 2 and f"{rel.uri}/merged/model.safetensors: sha256 mismatch" in r.stderr, r.stderr
    assert not (dest / "merged" / "model.safetensors").exists()
    assert not (dest / ".kubetune-release.json").exists()

    release = json.loads(client.get_object(Bucket=s3_env.bucket, Key=f"{prefix}/release.json")["Body"].read())
    release["gate"]["passed"] = False
    client.put_object(Bucket=s3_env.bucket, Key=f"{prefix}/release.json",
                      Body=json.dumps(release, indent=2).encode())
    with pytest.raises(storage.HashMismatch, match=f"{rel.uri}/release.json: sha256 mismatch"):
        read_release(rel.uri)
    r = kubetune("fetch", rel.uri, str(dest), env=env)
    assert r.returncode == 2 and f"{rel.uri}/release.json: sha256 mismatch" in r.stderr, r.stderr
    assert no_traceback(r.stderr)


# ---- 3 and 4. the pipeline: preemption, and two runs at once ------------------------------------
@pytest.fixture(scope="module")
def pipeline_s3(s3_server, demo, tmp_path_factory):
    """A bucket of the session's S3 with the tiny random demo model and its contract chats, and the
    environment of the pipeline processes (no AWS setting of the developer's, one OpenMP thread)."""
    bucket = s3_server.ensure_bucket(f"kt-faults-{uuid.uuid4().hex[:8]}")
    home = tmp_path_factory.mktemp("faults-pipeline")
    env = clean_env(s3_server.env(), KUBETUNE_CACHE=str(home / "cache"))
    with environ(env):
        storage.publish_dir(demo.model_dir, f"s3://{bucket}/models/tiny-llama", producer="test")
        storage.upload_file(demo.chat, f"s3://{bucket}/datasets/chat.jsonl")
    yield {"bucket": bucket, "env": env, "home": home, "root": f"s3://{bucket}/faults",
           "model": f"s3://{bucket}/models/tiny-llama", "data": f"s3://{bucket}/datasets/chat.jsonl"}
    s3_server.delete_bucket(bucket)


def _start_pipeline(pipeline_s3, run_id: str, *, retries: int = 0, **overrides):
    from components.common.config import config_from_dict

    home = pipeline_s3["home"]
    cfg = config_from_dict(pipeline_config(root=pipeline_s3["root"], model_uri=pipeline_s3["model"],
                                           data_uri=pipeline_s3["data"], **overrides))
    config = home / f"{run_id}.json"
    config.write_text(cfg.model_dump_json())
    out, log = home / f"{run_id}.result.json", home / f"{run_id}.log"
    proc = start([str(HERE), "pipeline", str(config), run_id, str(home / "kfp-local"), str(retries), str(out)],
                 pipeline_s3["env"], log)
    return proc, out, log


def _finish(proc, out: Path, log: Path, timeout: float = 900) -> dict:
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, log.read_text()[-6000:]
    return json.loads(out.read_text())


def _train_metrics(pipeline_s3, run_root: str) -> dict:
    with environ(pipeline_s3["env"]):
        return json.loads((storage.fetch_dir(f"{run_root}/train") / "train_metrics.json").read_text())


@pytest.fixture(scope="module")
def concurrent_runs(pipeline_s3):
    """Two whole pipeline runs started at the same moment on the same S3 and the same KFP pipeline root,
    different run ids and training seeds. Run a is also the uninterrupted reference of section 3."""
    started = time.monotonic()
    a = _start_pipeline(pipeline_s3, "conc-a", seed=7)
    b = _start_pipeline(pipeline_s3, "conc-b", seed=8)
    runs = {"a": _finish(*a), "b": _finish(*b)}
    runs["seconds"] = time.monotonic() - started
    return runs


def _verified_outputs(pipeline_s3, run_root: str) -> dict[str, storage.Manifest]:
    """Each step's output manifest under run_root; every file fetched cold and verified."""
    from components.common.steps import STEP_NAMES

    out = {}
    with environ({**pipeline_s3["env"], "KUBETUNE_CACHE": str(pipeline_s3["home"] / f"cold-{uuid.uuid4().hex[:6]}")}):
        for step in STEP_NAMES:
            uri = f"{run_root}/{step}"
            manifest = storage.read_manifest(uri)
            assert manifest is not None, f"{uri}: no manifest"
            assert manifest.uri == uri and manifest.producer == step
            storage.fetch_dir(uri)
            out[step] = manifest
    return out


@pytest.mark.slow
def test_two_concurrent_runs_do_not_collide(concurrent_runs, pipeline_s3):
    a, b = concurrent_runs["a"], concurrent_runs["b"]
    assert a["run_root"] == f"{pipeline_s3['root']}/runs/conc-a"
    assert b["run_root"] == f"{pipeline_s3['root']}/runs/conc-b"
    out_a, out_b = _verified_outputs(pipeline_s3, a["run_root"]), _verified_outputs(pipeline_s3, b["run_root"])
    # each run wrote only under its own prefix, computed its own outputs (no step is cached), and the
    # seeds differ, so a file of one run landing in the other would break that run's hashes above
    assert out_a["train"].content_hash() != out_b["train"].content_hash()
    split = {"train.jsonl", "test.jsonl"}  # same data and seed: the same split (reports hold timings)
    assert {f.path: f.sha256 for f in out_a["prepare"].files if f.path in split} == \
        {f.path: f.sha256 for f in out_b["prepare"].files if f.path in split}
    for step, m in out_a.items():
        assert not m.lineage.get("cached_from") and not out_b[step].lineage.get("cached_from"), step
    assert out_b["train"].lineage["step_inputs"]["dataset"]["uri"] == f"{b['run_root']}/prepare"
    with environ(pipeline_s3["env"]):
        keys_a = {o.uri for o in storage.list_objects(f"{a['run_root']}/train/checkpoints")}
        keys_b = {o.uri for o in storage.list_objects(f"{b['run_root']}/train/checkpoints")}
    assert keys_a and keys_b and not keys_a & keys_b
    # two releases, each complete and its own
    ra, rb = a["release"], b["release"]
    assert ra["version"] != rb["version"] and ra["uri"] != rb["uri"]
    assert ra["run_id"] == "conc-a" and rb["run_id"] == "conc-b"
    assert ra["artifacts"]["adapter"] != rb["artifacts"]["adapter"]
    from components.common.release import fetch_release

    with environ(pipeline_s3["env"]):
        for r in (ra, rb):
            dest = pipeline_s3["home"] / f"serve-{r['run_id']}"
            counts = fetch_release(r["uri"], dest, ("merged", "adapter", "gguf"))
            assert counts["downloaded"] == sum(len(r["artifacts"][p]["files"]) for p in ("merged", "adapter", "gguf"))


def _run_outputs_for_publish(pipeline_s3, run_root: str) -> dict[str, str]:
    with environ(pipeline_s3["env"]):
        return {"merged": str(storage.fetch_dir(f"{run_root}/merge")),
                "adapter": str(storage.fetch_dir(f"{run_root}/train")),
                "gguf": str(storage.fetch_dir(f"{run_root}/quantize")),
                "eval_dir": str(storage.fetch_dir(f"{run_root}/eval"))}


@pytest.mark.slow
def test_publishing_a_published_version_again_is_refused(concurrent_runs, pipeline_s3):
    """Publishing run a's version again (from run a's own outputs) is refused and leaves it intact."""
    from components.common.config import config_from_dict
    from components.common.release import ReleaseError, read_release
    from components.publish import step as publish

    a = concurrent_runs["a"]
    parts = _run_outputs_for_publish(pipeline_s3, a["run_root"])
    cfg = config_from_dict(pipeline_config(root=pipeline_s3["root"], model_uri=pipeline_s3["model"],
                                           data_uri=pipeline_s3["data"]))
    first = a["release"]
    with environ(pipeline_s3["env"]):
        before = storage.read_manifest(first["uri"])
        with pytest.raises(ReleaseError, match=f"{first['uri']}: version {first['version']} is already published"):
            publish.run(cfg, merged=Path(parts["merged"]), adapter=Path(parts["adapter"]), gguf=Path(parts["gguf"]),
                        eval_dir=Path(parts["eval_dir"]), run_id="again", version=first["version"])
        after = storage.read_manifest(first["uri"])
        assert after.content_hash() == before.content_hash() and after.created_at == before.created_at
        assert read_release(first["uri"])["run_id"] == "conc-a"


def test_two_publishers_racing_for_one_version(s3_env, tmp_path):
    """Two processes publish the same new version at the same moment (both pass the "already
    published?" check before either has uploaded anything): exactly one wins, the other is refused with
    a clear error, and the release is the winner's, whole. A 64 MiB model makes the race window wide."""
    from components.common.release import fetch_release, read_release

    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "model.safetensors").write_bytes(os.urandom(64 * MiB))
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "gate.json").write_text(json.dumps({"passed": True}))
    (eval_dir / "eval_results.json").write_text("{}")
    config = tmp_path / "cfg.json"
    config.write_text(_release_cfg(s3_env.uri("kt")).model_dump_json())
    dirs = tmp_path / "dirs.json"
    dirs.write_text(json.dumps({"merged": str(merged), "eval_dir": str(eval_dir), "adapter": None, "gguf": None}))
    go = tmp_path / "go"
    env = clean_env(s3_env.env, KUBETUNE_CACHE=str(tmp_path / "cache"))
    procs = {name: start([str(HERE), "publish", str(config), str(dirs), "race-1", name, str(go)], env,
                         tmp_path / f"{name}.log") for name in ("racer-1", "racer-2")}
    time.sleep(6)  # both have imported everything and wait for the same moment
    go.touch()
    codes = {name: p.wait(timeout=300) for name, p in procs.items()}
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in procs}
    assert sorted(codes.values()) == [0, 2], logs
    winner = next(n for n, c in codes.items() if c == 0)
    loser = next(n for n, c in codes.items() if c == 2)
    uri = s3_env.uri("kt", "releases", "faults-tiny", "race-1")
    assert (f"{uri}: version race-1 is already published or being published by run {winner}" in logs[loser]
            or f"{uri}: version race-1 is already published" in logs[loser]), logs[loser]
    with environ({"KUBETUNE_CACHE": str(tmp_path / "cold")}):
        release = read_release(uri)
        assert release["run_id"] == winner
        storage.fetch_dir(uri)  # every file matches the manifest
        assert fetch_release(uri, tmp_path / "serve", ("merged",))["downloaded"] == 1


def _preempted_run(pipeline_s3, run_id: str, sig: int, after_checkpoint: int) -> tuple[dict, str, int]:
    """The pipeline with one retry per step; `sig` to the train task's process once checkpoint-N is in
    S3. Returns (the run's summary, its log, the newest complete checkpoint at the signal)."""
    from components.train.checkpoints import list_checkpoints

    proc, out, log = _start_pipeline(pipeline_s3, run_id, retries=1)
    checkpoints = f"{pipeline_s3['root']}/runs/{run_id}/train/checkpoints"
    try:
        with environ(pipeline_s3["env"]):
            wait_until(lambda: after_checkpoint in list_checkpoints(checkpoints)[0], timeout=600, interval=0.05,
                       what=f"checkpoint-{after_checkpoint} of {run_id}", proc=proc)
            train = step_process(proc.pid, "train")
            assert train is not None, "no train task process under the local run"
            newest = max(list_checkpoints(checkpoints)[0])
            train.send_signal(sig)
    except BaseException:
        proc.kill()
        raise
    result = _finish(proc, out, log)
    return result, log.read_text(), newest


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_preempted_train_step_is_retried_and_resumes(pipeline_s3, concurrent_runs, sig):
    """SIGTERM (the train step saves at the next step, uploads, exits 75) and SIGKILL (nothing saved)
    to the train task of a whole pipeline run: KFP's local runner retries the step, which resumes from
    the newest checkpoint in S3, and the release has the uninterrupted run's step count.
    (tests/train/test_train_preemption.py covers the step itself, run from the CLI.)"""
    from components.train.checkpoints import list_checkpoints

    run_id = f"preempt-{signal.Signals(sig).name.lower()}"
    after = 5 if sig == signal.SIGTERM else 10
    result, log, newest_at_signal = _preempted_run(pipeline_s3, run_id, sig, after_checkpoint=after)
    reference = concurrent_runs["a"]
    metrics = _train_metrics(pipeline_s3, result["run_root"])
    ref_metrics = _train_metrics(pipeline_s3, reference["run_root"])
    assert "Retrying in" in log and "train" in log
    with environ(pipeline_s3["env"]):
        complete, incomplete = list_checkpoints(f"{result['run_root']}/train/checkpoints")
    if sig == signal.SIGTERM:
        stopped = int(log.split("stopped by SIGTERM at step ")[1].split(";")[0])
        assert newest_at_signal <= stopped < 30 and stopped in complete
        assert metrics["resumed_from_step"] == stopped
    else:
        assert metrics["resumed_from_step"] >= newest_at_signal and metrics["resumed_from_step"] % 5 == 0
        assert metrics["resumed_from_step"] < 30
    assert metrics["global_step"] == ref_metrics["global_step"] == 30
    assert ref_metrics.get("resumed_from_step") is None
    release, ref_release = result["release"], reference["release"]
    assert release["lineage"]["train_steps"] == ref_release["lineage"]["train_steps"] == 30
    assert release["run_id"] == run_id
    _verified_outputs(pipeline_s3, result["run_root"])


# ---- 5. the disk fills during quantize ---------------------------------------------------------
def _quantize_config(tmp_path, model_dir) -> Path:
    cfg = tmp_path / "quantize.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name": "faults-tiny", "base": str(model_dir)},
        "data": {"sources": [{"uri": "unused.jsonl"}]}, "storage": {"root": str(tmp_path / "root")},
        "quantize": {"types": ["Q8_0"], "eval_records": 2, "generate_records": 1, "generate_tokens": 4,
                     "eval_max_tokens": 64, "hf_reference": False, "max_ppl_delta_pct": 1000.0, "threads": 1}}))
    return cfg


@pytest.mark.slow
def test_disk_full_during_quantize_fails_clearly_and_publishes_nothing(demo, s3_env, tmp_path):
    """The quantize step's staging directory on a small tmpfs (TMPDIR). Too small from the start: the
    step refuses before any work. Big enough, but filled by another writer as soon as the conversion
    starts: a clear error naming the disk space, exit 2, no object under the output prefix, and the
    staging directory removed."""
    from components.quantize import quant_types

    needed = quant_types.required_bytes(quant_types.count_parameters(demo.model_dir), "f16", ["Q8_0"])
    cfg = _quantize_config(tmp_path, demo.model_dir)
    out = s3_env.uri("runs/r1/quantize")
    args = ["quantize", "--config", str(cfg), "--model", str(demo.model_dir), "--dataset", str(demo.chat),
            "--output", out]
    try:
        small = tmpfs(tmp_path / "small", f"{needed // 2 // KiB}k")
        small.__enter__()
    except OSError as e:
        pytest.skip(f"cannot make a size-limited filesystem here: {e}")
    try:
        env = clean_env(s3_env.env, TMPDIR=str(tmp_path / "small"), KUBETUNE_CACHE=str(tmp_path / "cache"))
        r = kubetune(*args, env=env)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "not enough disk space" in r.stderr and str(tmp_path / "small") in r.stderr, r.stderr
        assert no_traceback(r.stderr)
        assert list((tmp_path / "small").iterdir()) == []
    finally:
        small.__exit__(None, None, None)
    assert bucket_objects(s3_env.client(), s3_env.bucket, "runs/r1/quantize") == {}

    with tmpfs(tmp_path / "disk", f"{2 * needed // KiB}k") as disk:
        env = clean_env(s3_env.env, TMPDIR=str(disk), KUBETUNE_CACHE=str(tmp_path / "cache"))
        log = tmp_path / "quantize.log"
        proc = start(["-m", "pipelines.cli", *args], env, log)
        filled = {}
        try:
            wait_until(lambda: next(disk.glob("kubetune-quantize-*/.work"), None), timeout=300, interval=0.01,
                       what="the conversion's work directory", proc=proc)
            filled["bytes"] = fill_disk(disk)
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        text = log.read_text()
        assert filled["bytes"] > 0
        assert rc == 2, text
        error = next((line for line in text.splitlines() if line.startswith("kubetune quantize: error:")), "")
        assert "no space left on device while quantizing" in error, text[-4000:]
        assert str(disk) in error, error
        assert no_traceback(text.split("kubetune quantize: error:")[-1]), text[-4000:]
        leftovers = [p.name for p in disk.iterdir() if not p.name.startswith("filler-")]
        assert leftovers == [], leftovers
    assert bucket_objects(s3_env.client(), s3_env.bucket, "runs/r1/quantize") == {}
