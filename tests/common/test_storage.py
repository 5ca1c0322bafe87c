"""components.common.storage against a real SeaweedFS S3 server (never a fake), plus file:// and paths."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from components.common import s3, storage
from components.common.storage import (
    MANIFEST_NAME,
    AccessDenied,
    EndpointUnreachable,
    FileEntry,
    HashMismatch,
    Manifest,
    NotFound,
    StorageError,
    fetch_dir,
    fetch_file,
    fetch_model,
    join_uri,
    list_objects,
    local_path,
    publish_dir,
    read_manifest,
    split_s3,
    transfer_stats,
)
from pipelines.local_s3 import free_ports

MiB = 1024 * 1024


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


SMALL = {"config.json": b'{"a": 1}', "weights/model.safetensors": b"\x00" * 1000 + b"w",
         "tokenizer/tokenizer.json": b'{"t": true}', "README.md": b"# readme\n", "empty.txt": b""}


# ---- URIs and manifests (no server) ----------------------------------------------------------
def test_uri_helpers():
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/tmp/x") and not storage.is_s3("file:///x")
    assert split_s3("s3://my-bucket/k/x.json") == ("my-bucket", "k/x.json")
    assert split_s3("s3://my-bucket") == ("my-bucket", "")
    assert split_s3("s3://my-bucket/") == ("my-bucket", "")
    for bad in ("s3://", "s3:///key", "http://b/k", "s3://B_ad/k", "s3://ab/k"):
        with pytest.raises(StorageError, match="s3://"):
            split_s3(bad)
    assert join_uri("s3://b/runs/", "r1", "/train/") == "s3://b/runs/r1/train"
    assert join_uri("s3://b", "x") == "s3://b/x"
    assert join_uri("file:///tmp/a", "b", "c.txt") == "file:///tmp/a/b/c.txt"
    assert join_uri("/tmp/a/", "b") == "/tmp/a/b"
    assert join_uri("rel", "b") == "rel/b"
    assert join_uri("/", "b") == "/b"
    assert local_path("file:///tmp/a%20b/c") == Path("/tmp/a b/c")
    assert local_path("file://localhost/tmp/x") == Path("/tmp/x")
    assert local_path("/tmp/x") == Path("/tmp/x")
    with pytest.raises(StorageError, match="file://"):
        local_path("s3://b/k")
    with pytest.raises(StorageError, match="no host"):
        local_path("file://otherhost/x")


def test_manifest_content_hash_and_roundtrip():
    files = [FileEntry("b.txt", 2, "bb" * 32), FileEntry("a/x.bin", 1, "aa" * 32)]
    m1 = Manifest("s3://b/one", "train", "2026-01-01T00:00:00Z", files, {"base": "tiny"})
    m2 = Manifest("file:///elsewhere", "other", "2027-01-01T00:00:00Z", list(reversed(files)), {})
    assert m1.content_hash() == m2.content_hash()  # same content, wherever and whoever
    m3 = Manifest("s3://b/one", "train", "2026-01-01T00:00:00Z", [FileEntry("b.txt", 2, "cc" * 32)], {})
    assert m3.content_hash() != m1.content_hash()
    back = Manifest.from_dict(storage.json.loads(m1.to_json()))
    assert back == m1 and back.to_dict()["content_hash"] == m1.content_hash()
    edited = m1.to_dict()
    edited["files"][0]["sha256"] = "dd" * 32
    with pytest.raises(StorageError, match="content_hash"):
        Manifest.from_dict(edited)
    with pytest.raises(StorageError, match="expected keys"):
        Manifest.from_dict({"uri": "s3://b/x"})
    for unsafe in ("../escape.txt", "/etc/passwd", "a/../../b", ""):
        bad = Manifest("s3://b/x", "p", "t", [FileEntry(unsafe, 1, "aa" * 32)], {}).to_dict()
        with pytest.raises(StorageError, match="unsafe file path"):
            Manifest.from_dict(bad)


# ---- S3 round trips ---------------------------------------------------------------------------
def test_multipart_upload_roundtrip(s3_env, tmp_path, monkeypatch):
    monkeypatch.setattr(s3, "MULTIPART_THRESHOLD", 8 * MiB)
    monkeypatch.setattr(s3, "MULTIPART_CHUNKSIZE", 5 * MiB)  # the S3 minimum part size
    data = os.urandom(20 * MiB + 123)
    src = make_tree(tmp_path / "src", {"big.bin": data, "small.txt": b"small"})
    dest = s3_env.uri("runs/r1/merge")
    m = publish_dir(src, dest, producer="merge", lineage={"base_model": "tiny"})
    assert {f.path: f.size for f in m.files} == {"big.bin": len(data), "small.txt": 5}
    assert transfer_stats.bytes_uploaded == len(data) + 5
    head = s3_env.client().head_object(Bucket=s3_env.bucket, Key="runs/r1/merge/big.bin")
    assert head["ETag"].strip('"').endswith("-5"), head["ETag"]  # 20 MiB + 123 B in 5 MiB parts
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    small = s3_env.client().head_object(Bucket=s3_env.bucket, Key="runs/r1/merge/small.txt")
    assert "-" not in small["ETag"]

    got = fetch_dir(dest)
    assert tree(got) == {"big.bin": data, "small.txt": b"small"}  # exactly the files, no manifest
    assert transfer_stats.bytes_downloaded == len(data) + 5
    back = read_manifest(dest)
    assert back.producer == "merge" and back.lineage == {"base_model": "tiny"}
    assert back.content_hash() == m.content_hash()
    assert back.created_at.endswith("Z")


def test_directory_with_many_small_files(s3_env, tmp_path):
    files = {f"d{i % 7}/sub{i % 3}/f{i:03d}.txt": f"file {i}\n".encode() * (i + 1) for i in range(300)}
    src = make_tree(tmp_path / "src", files)
    dest = s3_env.uri("data/many")
    m = publish_dir(src, dest, producer="prepare")
    assert len(m.files) == 300
    assert transfer_stats.files_uploaded == 300
    listed = list_objects(dest)
    assert len(listed) == 301 and [o.uri for o in listed] == sorted(o.uri for o in listed)
    assert {o.uri for o in listed} == {join_uri(dest, p) for p in files} | {join_uri(dest, MANIFEST_NAME)}
    assert tree(fetch_dir(dest)) == files


def test_manifest_is_written_last(s3_env, tmp_path):
    src = make_tree(tmp_path / "src", {f"f{i}.bin": os.urandom(1000) for i in range(20)})
    dest = s3_env.uri("runs/last")
    publish_dir(src, dest, producer="t")
    objs = s3_env.client().list_objects_v2(Bucket=s3_env.bucket, Prefix="runs/last/")["Contents"]
    manifest_time = next(o["LastModified"] for o in objs if o["Key"].endswith(MANIFEST_NAME))
    assert all(o["LastModified"] <= manifest_time for o in objs)


def test_failed_upload_leaves_no_manifest(s3_env, tmp_path, monkeypatch):
    src = make_tree(tmp_path / "src", {f"f{i:02d}.bin": os.urandom(5000) for i in range(30)})
    real = storage.sha256_file

    def hash_then_lose_one(path):  # instrument: one file disappears between hashing and uploading
        digest = real(path)
        if Path(path).name == "f17.bin":
            Path(path).unlink()
        return digest

    monkeypatch.setattr(storage, "sha256_file", hash_then_lose_one)
    dest = s3_env.uri("runs/broken")
    with pytest.raises(NotFound, match="f17.bin"):
        publish_dir(src, dest, producer="t")
    assert read_manifest(dest) is None
    keys = [o.uri for o in list_objects(dest)]
    assert not any(k.endswith(MANIFEST_NAME) for k in keys)
    with pytest.raises(NotFound, match="manifest"):
        fetch_dir(dest)


def test_second_fetch_is_a_cache_hit(s3_env, tmp_path, monkeypatch):
    files = {"a.bin": os.urandom(300_000), "b/c.bin": os.urandom(200_000)}
    src = make_tree(tmp_path / "src", files)
    publish_dir(src, s3_env.uri("one"), producer="t")
    first = fetch_dir(s3_env.uri("one"))
    assert transfer_stats.bytes_downloaded == 500_000
    transfer_stats.reset()
    second = fetch_dir(s3_env.uri("one"))
    assert second == first and tree(second) == files
    assert transfer_stats.bytes_downloaded == 0 and transfer_stats.files_downloaded == 0
    # the same content published elsewhere is the same cache entry
    publish_dir(src, s3_env.uri("two"), producer="other")
    transfer_stats.reset()
    assert fetch_dir(s3_env.uri("two")) == first
    assert transfer_stats.bytes_downloaded == 0
    # a fresh cache downloads again (so the counter above can fail)
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "fresh-cache"))
    assert tree(fetch_dir(s3_env.uri("one"))) == files
    assert transfer_stats.bytes_downloaded == 500_000


def test_shared_blobs_are_downloaded_once(s3_env, tmp_path):
    shared, own_a, own_b = os.urandom(100_000), os.urandom(10_000), os.urandom(20_000)
    publish_dir(make_tree(tmp_path / "a", {"shared.bin": shared, "a.bin": own_a}), s3_env.uri("a"),
                producer="t")
    publish_dir(make_tree(tmp_path / "b", {"w/shared.bin": shared, "b.bin": own_b, "b2.bin": own_b}),
                s3_env.uri("b"), producer="t")
    fetch_dir(s3_env.uri("a"))
    transfer_stats.reset()
    got = fetch_dir(s3_env.uri("b"))
    assert tree(got) == {"w/shared.bin": shared, "b.bin": own_b, "b2.bin": own_b}
    assert transfer_stats.bytes_downloaded == 20_000  # only the new content, and only once


def test_tampered_object_is_detected(s3_env, tmp_path):
    src = make_tree(tmp_path / "src", SMALL)
    dest = s3_env.uri("runs/tamper")
    m = publish_dir(src, dest, producer="t")
    expected = next(f.sha256 for f in m.files if f.path == "weights/model.safetensors")
    evil = b"\x01" * 1001
    s3_env.client().put_object(Bucket=s3_env.bucket, Key="runs/tamper/weights/model.safetensors", Body=evil,
                               Metadata={"sha256": expected})  # even with the old metadata
    with pytest.raises(HashMismatch) as e:
        fetch_dir(dest)
    msg = str(e.value)
    assert "weights/model.safetensors" in msg and expected in msg
    assert hashlib.sha256(evil).hexdigest() in msg
    with pytest.raises(HashMismatch, match=expected):
        fetch_file(join_uri(dest, "weights/model.safetensors"))
    cache_root = Path(os.environ["KUBETUNE_CACHE"])
    assert not any((cache_root / "dirs").glob("*"))  # nothing that looks complete was materialized
    assert not (cache_root / "blobs" / hashlib.sha256(evil).hexdigest()[:2]).exists()


def test_changed_cache_copy_is_repaired(s3_env, tmp_path):
    src = make_tree(tmp_path / "src", SMALL)
    publish_dir(src, s3_env.uri("heal"), producer="t")
    got = fetch_dir(s3_env.uri("heal"))
    (got / "config.json").write_bytes(b'{"a": 2}')  # someone edits the fetched copy in place
    transfer_stats.reset()
    again = fetch_dir(s3_env.uri("heal"))
    assert tree(again) == SMALL
    assert transfer_stats.bytes_downloaded == len(SMALL["config.json"])  # only the damaged blob


# ---- errors -----------------------------------------------------------------------------------
def test_missing_bucket(s3_env, tmp_path):
    src = make_tree(tmp_path / "src", SMALL)
    for call in (lambda: publish_dir(src, "s3://kt-no-such-bucket/x", producer="t"),
                 lambda: fetch_dir("s3://kt-no-such-bucket/x"),
                 lambda: read_manifest("s3://kt-no-such-bucket/x"),
                 lambda: fetch_file("s3://kt-no-such-bucket/x/a.json"),
                 lambda: list_objects("s3://kt-no-such-bucket/x")):
        with pytest.raises(NotFound, match="bucket 'kt-no-such-bucket' does not exist"):
            call()


def test_missing_key_and_missing_manifest(s3_env, tmp_path):
    with pytest.raises(NotFound, match=r"key 'nope/a\.jsonl' in bucket") as e:
        fetch_file(s3_env.uri("nope/a.jsonl"))
    assert s3_env.bucket in str(e.value)
    assert read_manifest(s3_env.uri("nope")) is None
    storage.upload_file(make_tree(tmp_path, {"x.txt": b"x"}) / "x.txt", s3_env.uri("plain/x.txt"))
    with pytest.raises(NotFound, match=f"no {MANIFEST_NAME} under this prefix.*publish_dir"):
        fetch_dir(s3_env.uri("plain"))
    with pytest.raises(NotFound, match="local directory not found"):
        publish_dir(tmp_path / "does-not-exist", s3_env.uri("y"), producer="t")


def test_wrong_credentials_are_access_denied(s3_env, tmp_path, monkeypatch):
    src = make_tree(tmp_path / "src", SMALL)
    publish_dir(src, s3_env.uri("ok"), producer="t")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(AccessDenied, match="SignatureDoesNotMatch"):
        publish_dir(src, s3_env.uri("denied"), producer="t")
    with pytest.raises(AccessDenied, match=s3_env.bucket):
        fetch_dir(s3_env.uri("ok"))
    with pytest.raises(AccessDenied):
        fetch_file(s3_env.uri("ok/config.json"))  # HEAD: a 403 without a body
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "NOSUCHKEY")
    with pytest.raises(AccessDenied, match="AWS_ACCESS_KEY_ID"):
        list_objects(s3_env.uri("ok"))


def test_unreachable_endpoint_fails_fast(s3_env, monkeypatch):
    port = free_ports(1)[0]  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(EndpointUnreachable, match=f"http://127.0.0.1:{port}"):
        fetch_dir(s3_env.uri("anything"))
    assert time.monotonic() - start < 10
    with pytest.raises(EndpointUnreachable, match="AWS_ENDPOINT_URL_S3"):
        list_objects(s3_env.uri("anything"))


def test_publish_refuses_overwrite_unless_asked(s3_env, tmp_path):
    src = make_tree(tmp_path / "src", SMALL)
    dest = s3_env.uri("runs/once")
    first = publish_dir(src, dest, producer="train")
    with pytest.raises(StorageError, match="already published by train"):
        publish_dir(src, dest, producer="train")
    (src / "README.md").unlink()
    (src / "new.txt").write_bytes(b"new")
    second = publish_dir(src, dest, producer="train", overwrite=True)
    assert second.content_hash() != first.content_hash()
    assert read_manifest(dest).content_hash() == second.content_hash()
    keys = {o.uri.rsplit("/", 1)[-1] for o in list_objects(dest)}
    assert "README.md" not in keys and "new.txt" in keys  # stale files of the old publish are gone
    assert "README.md" not in tree(fetch_dir(dest))


def test_list_objects_prefix_and_suffixes(s3_env, tmp_path):
    c = s3_env.client()
    for key in ("data/b.jsonl", "data/a.jsonl", "data/sub/c.parquet", "data/notes.txt", "data2/x.jsonl"):
        c.put_object(Bucket=s3_env.bucket, Key=key, Body=key.encode())
    got = list_objects(s3_env.uri("data"), suffixes=(".jsonl", ".parquet"))
    expected = ("data/a.jsonl", "data/b.jsonl", "data/sub/c.parquet")
    assert [o.uri for o in got] == [s3_env.uri(k) for k in expected]
    assert got[0].size == len(b"data/a.jsonl") and got[0].etag == hashlib.md5(b"data/a.jsonl").hexdigest()
    assert len(list_objects(s3_env.uri("data/"))) == 4
    assert list_objects(s3_env.uri("empty-prefix")) == []
    # local directories list the same way
    local = make_tree(tmp_path / "data",
                      {"b.jsonl": b"1", "a.jsonl": b"22", "sub/c.parquet": b"3", "n.txt": b""})
    got = list_objects(str(local), suffixes=(".jsonl", ".parquet"))
    assert [o.uri for o in got] == [f"{local}/a.jsonl", f"{local}/b.jsonl", f"{local}/sub/c.parquet"]
    assert [o.size for o in got] == [2, 1, 1]
    assert [o.uri for o in list_objects(f"file://{local}", (".txt",))] == [f"file://{local}/n.txt"]
    with pytest.raises(NotFound, match="local directory not found"):
        list_objects(str(tmp_path / "missing"))


def test_fetch_file_caches_objects(s3_env, tmp_path):
    c = s3_env.client()
    c.put_object(Bucket=s3_env.bucket, Key="raw/train.jsonl", Body=b'{"x": 1}\n')  # no sha256 metadata
    p = fetch_file(s3_env.uri("raw/train.jsonl"))
    assert p.name == "train.jsonl" and p.read_bytes() == b'{"x": 1}\n'
    assert transfer_stats.bytes_downloaded == 9
    assert fetch_file(s3_env.uri("raw/train.jsonl")) == p and transfer_stats.bytes_downloaded == 9
    c.put_object(Bucket=s3_env.bucket, Key="raw/train.jsonl", Body=b'{"x": 2}\n')  # new ETag: refetch
    assert fetch_file(s3_env.uri("raw/train.jsonl")).read_bytes() == b'{"x": 2}\n'
    assert transfer_stats.bytes_downloaded == 18
    # with sha256 metadata (upload_file sets it) a cached blob costs nothing, even under another key
    local = make_tree(tmp_path / "up", {"eval.parquet": b"PAR1" * 100}) / "eval.parquet"
    sha = storage.upload_file(local, s3_env.uri("a/eval.parquet"))
    storage.upload_file(local, s3_env.uri("b/eval.parquet"), sha256=sha)
    transfer_stats.reset()
    assert fetch_file(s3_env.uri("a/eval.parquet")).read_bytes() == b"PAR1" * 100
    assert fetch_file(s3_env.uri("b/eval.parquet")).read_bytes() == b"PAR1" * 100
    assert transfer_stats.bytes_downloaded == 400
    out = storage.download_file(s3_env.uri("a/eval.parquet"), tmp_path / "dl" / "e.parquet")
    assert out.read_bytes() == b"PAR1" * 100


# ---- file:// and plain paths ------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["file", "path"])
def test_local_roundtrip(tmp_path, scheme, monkeypatch):
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    src = make_tree(tmp_path / "src", SMALL)
    dest_path = tmp_path / "store" / "runs" / "r1"
    dest = f"file://{dest_path}" if scheme == "file" else str(dest_path)
    m = publish_dir(src, dest, producer="eval", lineage={"dataset": "abc"})
    assert m.uri == dest and (dest_path / MANIFEST_NAME).is_file()
    assert not list(dest_path.parent.glob(".*tmp"))  # no temp files left behind
    assert read_manifest(dest).content_hash() == m.content_hash()
    assert read_manifest(join_uri(dest, MANIFEST_NAME)) == read_manifest(dest)
    got = fetch_dir(dest)
    assert got == dest_path
    assert {k: v for k, v in tree(got).items() if k != MANIFEST_NAME} == SMALL
    assert fetch_file(join_uri(dest, "config.json")).read_bytes() == SMALL["config.json"]
    assert fetch_model(dest) == dest_path
    with pytest.raises(StorageError, match="already published"):
        publish_dir(src, dest, producer="eval")
    (dest_path / "README.md").write_bytes(b"changed")
    with pytest.raises(HashMismatch, match="README.md"):
        fetch_dir(dest)
    (dest_path / "README.md").unlink()
    with pytest.raises(NotFound, match="README.md"):
        fetch_dir(dest)
    with pytest.raises(NotFound):
        fetch_file(join_uri(dest, "missing.txt"))
    with pytest.raises(NotFound):
        fetch_dir(str(tmp_path / "nowhere"))


def test_local_dir_without_manifest_is_returned_as_is(tmp_path):
    d = make_tree(tmp_path / "mymodel", {"config.json": b"{}"})
    assert fetch_dir(str(d)) == d and fetch_model(f"file://{d}") == d
    assert read_manifest(str(d)) is None


def test_publish_empty_dir_to_new_local_destination(tmp_path):
    (tmp_path / "empty").mkdir()
    m = publish_dir(tmp_path / "empty", str(tmp_path / "a" / "b"), producer="t")
    assert m.files == [] and read_manifest(str(tmp_path / "a" / "b")).content_hash() == m.content_hash()


def test_publish_in_place_and_not_inside_itself(tmp_path):
    d = make_tree(tmp_path / "out", SMALL)
    m = publish_dir(d, str(d), producer="t")
    assert len(m.files) == len(SMALL) and tree(fetch_dir(str(d))).keys() == set(SMALL) | {MANIFEST_NAME}
    with pytest.raises(StorageError, match="inside"):
        publish_dir(d, str(d / "nested"), producer="t")


def test_s3_publish_from_a_local_fetch_to_s3(s3_env, tmp_path):
    """file:// -> s3:// -> local: the manifest of the source is not itself a published file."""
    d = make_tree(tmp_path / "out", SMALL)
    publish_dir(d, str(d), producer="t")
    m = publish_dir(d, s3_env.uri("copy"), producer="t")
    assert MANIFEST_NAME not in {f.path for f in m.files}
    assert tree(fetch_dir(s3_env.uri("copy"))) == SMALL


# ---- hf:// (offline here: only parsing and the offline error) --------------------------------
def test_hf_uris_and_offline_error(tmp_path, monkeypatch):
    from components.common.hf_hub import parse_hf

    assert parse_hf("hf://datasets/org/name/train.jsonl@v1") == ("dataset", "org/name", "train.jsonl", "v1")
    assert parse_hf("hf://datasets/org/name@main/sub/x.json") == ("dataset", "org/name", "sub/x.json", "main")
    assert parse_hf("hf://org/model@abc123") == ("model", "org/model", "", "abc123")
    with pytest.raises(StorageError, match="expected hf://"):
        parse_hf("hf://only-one-part")
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(NotFound, match="HF_HUB_OFFLINE"):
        fetch_model("hf://kubetune-test/not-cached-model")
    with pytest.raises(NotFound, match="HF_HUB_OFFLINE"):
        fetch_file("hf://datasets/kubetune-test/not-cached/train.jsonl")
    with pytest.raises(StorageError, match="file inside the repo"):
        fetch_file("hf://datasets/kubetune-test/not-cached")


def test_hf_model_from_the_offline_cache(tmp_path, monkeypatch):
    """A model already in the Hugging Face cache resolves offline; pickle-only snapshots are refused."""
    import huggingface_hub.constants as hfc

    hub = tmp_path / "hf"
    for name, weights in (("good", "model.safetensors"), ("pickled", "pytorch_model.bin")):
        repo = hub / f"models--kubetune-test--{name}"
        snap = repo / "snapshots" / ("c0ffee" * 6 + "beef")
        make_tree(snap, {"config.json": b"{}", weights: b"w"})
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("c0ffee" * 6 + "beef")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(hub))
    got = fetch_model("hf://kubetune-test/good")
    assert (got / "model.safetensors").read_bytes() == b"w"
    with pytest.raises(StorageError, match="allow_pickle"):
        fetch_model("hf://kubetune-test/pickled")
    assert (fetch_model("hf://kubetune-test/pickled", allow_pickle=True) / "pytorch_model.bin").is_file()
