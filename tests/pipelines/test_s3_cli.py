"""`kubetune s3 cp` against the real SeaweedFS server, and `kubetune s3 serve` stopping on Ctrl-C.

cp runs through the CLI's own entry point (pipelines.cli.main: the exit status and the one-line error it
prints) in this process, with the s3_env fixture's AWS environment; serve runs as a subprocess in a process
group of its own, as a terminal starts it, and gets SIGINT sent to that whole group.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from components.common import s3 as s3_transfer
from pipelines.cli import main
from pipelines.local_s3 import _port_open

REPO = Path(__file__).resolve().parents[2]
KUBETUNE = [sys.executable, "-m", "pipelines.cli"]


def kubetune_cp(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["s3", "cp", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def object_bytes(s3_env, key: str) -> bytes:
    return s3_env.client().get_object(Bucket=s3_env.bucket, Key=key)["Body"].read()


def make_tree(root: Path) -> dict[str, bytes]:
    """A directory with nested folders, an empty file and a name with a space; {relative path: content}."""
    files = {
        "train.jsonl": b'{"prompt": "2+2?", "completion": "4"}\n{"prompt": "3+3?", "completion": "6"}\n',
        "nested/deeper/weights.bin": bytes(range(256)) * 64,
        "nested/empty.txt": b"",
        "with space/notes é.md": "# notes\nnon-ASCII: é ü 中\n".encode(),
    }
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    return files


# ---- cp: round trips --------------------------------------------------------------------------
def test_cp_file_up_and_back_is_byte_identical(s3_env, tmp_path, capsys, monkeypatch):
    # Above the (lowered) multipart threshold, so the upload goes in parts as a large dataset would.
    monkeypatch.setattr(s3_transfer, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    monkeypatch.setattr(s3_transfer, "MULTIPART_CHUNKSIZE", 5 * 1024 * 1024)
    local = tmp_path / "my.jsonl"
    content = os.urandom(6 * 1024 * 1024 + 17)
    local.write_bytes(content)

    code, out, err = kubetune_cp(capsys, local, s3_env.uri("datasets/my.jsonl"))
    assert code == 0, err
    assert object_bytes(s3_env, "datasets/my.jsonl") == content  # read back with plain boto3
    assert f"copied 1 file, {len(content)} bytes" in out
    assert s3_env.uri("datasets/my.jsonl") in out

    # a destination ending in / keeps the file's name
    code, _, err = kubetune_cp(capsys, local, s3_env.uri("other") + "/")
    assert code == 0, err
    assert object_bytes(s3_env, "other/my.jsonl") == content

    back = tmp_path / "back.jsonl"
    code, out, err = kubetune_cp(capsys, s3_env.uri("datasets/my.jsonl"), back)
    assert code == 0, err
    assert back.read_bytes() == content
    assert f"copied 1 file, {len(content)} bytes" in out

    into_dir = tmp_path / "into"
    into_dir.mkdir()
    code, _, err = kubetune_cp(capsys, s3_env.uri("datasets/my.jsonl"), into_dir)
    assert code == 0, err
    assert (into_dir / "my.jsonl").read_bytes() == content


def test_cp_directory_up_and_back_is_byte_identical(s3_env, tmp_path, capsys):
    src = tmp_path / "dataset"
    files = make_tree(src)

    code, out, err = kubetune_cp(capsys, src, s3_env.uri("datasets/mine"), "--recursive")
    assert code == 0, err
    listed = s3_env.client().list_objects_v2(Bucket=s3_env.bucket, Prefix="datasets/mine/")["Contents"]
    assert {o["Key"] for o in listed} == {f"datasets/mine/{rel}" for rel in files}
    for rel, content in files.items():
        assert object_bytes(s3_env, f"datasets/mine/{rel}") == content
    total = sum(map(len, files.values()))
    assert f"copied {len(files)} files, {total} bytes" in out

    back = tmp_path / "back"
    code, out, err = kubetune_cp(capsys, s3_env.uri("datasets/mine"), back, "--recursive")
    assert code == 0, err
    assert {p.relative_to(back).as_posix() for p in back.rglob("*") if p.is_file()} == set(files)
    for rel, content in files.items():
        assert (back / rel).read_bytes() == content
    assert f"copied {len(files)} files, {total} bytes" in out


# ---- cp: bad input ----------------------------------------------------------------------------
def test_cp_missing_local_source(s3_env, tmp_path, capsys):
    missing = tmp_path / "no-such.jsonl"
    code, _, err = kubetune_cp(capsys, missing, s3_env.uri("x.jsonl"))
    assert code != 0
    assert str(missing) in err and "not found" in err


@pytest.mark.parametrize("bad_uri", ["s3:/kt-bucket/x.jsonl", "S3://kt-bucket/x.jsonl", "s3://Not_A_Bucket/x",
                                     "s3://"])
def test_cp_malformed_s3_uri(s3_env, tmp_path, capsys, bad_uri):
    local = tmp_path / "my.jsonl"
    local.write_text("{}\n")
    for args in ((local, bad_uri), (bad_uri, tmp_path / "out.jsonl")):
        code, _, err = kubetune_cp(capsys, *args)
        assert code != 0
        assert bad_uri in err and "s3://BUCKET/KEY" in err, err


def test_cp_bucket_that_does_not_exist(s3_env, tmp_path, capsys):
    bucket = f"kt-missing-{uuid.uuid4().hex[:8]}"
    local = tmp_path / "my.jsonl"
    local.write_text("{}\n")
    for args in ((local, f"s3://{bucket}/x.jsonl"), (f"s3://{bucket}/x.jsonl", tmp_path / "out.jsonl"),
                 (f"s3://{bucket}/prefix", tmp_path / "out", "--recursive")):
        code, _, err = kubetune_cp(capsys, *args)
        assert code != 0
        assert f"bucket {bucket!r} does not exist" in err, err
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out").exists()


def test_cp_directory_needs_recursive(s3_env, tmp_path, capsys):
    src = tmp_path / "dataset"
    make_tree(src)
    code, _, err = kubetune_cp(capsys, src, s3_env.uri("datasets/mine"))
    assert code != 0
    assert str(src) in err and "--recursive" in err
    assert "Contents" not in s3_env.client().list_objects_v2(Bucket=s3_env.bucket)  # nothing was uploaded


def test_cp_prefix_needs_recursive_and_missing_objects_are_named(s3_env, tmp_path, capsys):
    s3_env.client().put_object(Bucket=s3_env.bucket, Key="datasets/mine/a.jsonl", Body=b"{}\n")
    code, _, err = kubetune_cp(capsys, s3_env.uri("datasets/mine"), tmp_path / "out")
    assert code != 0
    assert s3_env.uri("datasets/mine") in err and "--recursive" in err

    code, _, err = kubetune_cp(capsys, s3_env.uri("datasets/nothing.jsonl"), tmp_path / "out.jsonl")
    assert code != 0
    assert "datasets/nothing.jsonl" in err and "no object" in err

    code, _, err = kubetune_cp(capsys, s3_env.uri("datasets/empty"), tmp_path / "out", "--recursive")
    assert code != 0
    assert s3_env.uri("datasets/empty") in err and "no objects" in err


def test_cp_needs_exactly_one_s3_side(s3_env, tmp_path, capsys):
    code, _, err = kubetune_cp(capsys, tmp_path / "a", tmp_path / "b")
    assert code != 0 and "neither is an s3:// URI" in err
    code, _, err = kubetune_cp(capsys, s3_env.uri("a"), s3_env.uri("b"))
    assert code != 0 and "both are s3:// URIs" in err


# ---- serve: the README's flow, and Ctrl-C -----------------------------------------------------
def child_pids(pid: int) -> list[int]:
    """The processes whose parent is pid, from /proc/<n>/stat (the field after the name is the state,
    then the parent's pid)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def start_serve(tmp_path: Path, *, sigint_ignored: bool = False, buckets: tuple[str, ...] = ()):
    """`kubetune s3 serve` in a process group of its own; returns (process, exported variables, weed pid).

    sigint_ignored: start it as a non-interactive shell starts a background job (`kubetune s3 serve &` in a
    script or a Makefile recipe), with SIGINT ignored, which the child inherits.
    """
    cmd = [*KUBETUNE, "s3", "serve", "--dir", str(tmp_path / "s3"), "--port", "0",
           *[arg for bucket in buckets for arg in ("--bucket", bucket)]]
    if sigint_ignored:
        cmd = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *cmd]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            process_group=0)
    lines = []
    for line in proc.stdout:  # serve gives up (and closes stdout) if weed is not up within 60 s
        lines.append(line.rstrip("\n"))
        if "Ctrl-C stops" in line:
            break
    exports = dict(line[len("export "):].split("=", 1) for line in lines if line.startswith("export "))
    assert "AWS_ENDPOINT_URL_S3" in exports, (lines, proc.poll())
    weeds = [pid for pid in child_pids(proc.pid) if "weed" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert len(weeds) == 1, weeds
    return proc, exports, weeds[0]


def assert_stopped_within(proc, weed_pid: int, port: int, seconds: float, started: float) -> str:
    """The serve process exited 0 within `seconds` of `started`, weed and its group are gone, the port is free."""
    try:
        code = proc.wait(timeout=max(0.1, seconds - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        pytest.fail(f"kubetune s3 serve still running {seconds:.0f} s after SIGINT")
    stderr = proc.stderr.read()
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr
    with pytest.raises(ProcessLookupError):
        os.killpg(weed_pid, 0)  # weed leads its own process group: nothing of it is left
    assert not _port_open(port)
    with socket.socket() as s:  # and the port can be taken again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    return stderr


def stop_leftovers(proc, weed_pid: int) -> None:
    for pid_group in (proc.pid, weed_pid):
        try:
            os.killpg(pid_group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["from-a-terminal", "background-job-of-a-script"])
def test_serve_stops_on_ctrl_c_within_10s(tmp_path, sigint_ignored):
    proc, exports, weed_pid = start_serve(tmp_path, sigint_ignored=sigint_ignored)
    try:
        port = int(exports["AWS_ENDPOINT_URL_S3"].rsplit(":", 1)[1])
        assert _port_open(port)
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the terminal's whole foreground group
        assert "stopping local S3" in assert_stopped_within(proc, weed_pid, port, 10, started)
    finally:
        stop_leftovers(proc, weed_pid)


def test_serve_second_ctrl_c_does_not_abort_the_stop(tmp_path):
    proc, exports, weed_pid = start_serve(tmp_path)
    try:
        port = int(exports["AWS_ENDPOINT_URL_S3"].rsplit(":", 1)[1])
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.3)  # while weed is stopping: an impatient second Ctrl-C
        os.killpg(proc.pid, signal.SIGINT)
        assert_stopped_within(proc, weed_pid, port, 10, started)
    finally:
        stop_leftovers(proc, weed_pid)


def test_readme_flow_serve_export_then_cp(tmp_path):
    """README "bring your own dataset": serve, export the printed lines, kubetune s3 cp, read it back."""
    proc, exports, weed_pid = start_serve(tmp_path, buckets=("kt-own-data",))
    try:
        dataset = tmp_path / "my.jsonl"
        dataset.write_text('{"prompt": "2+2?", "completion": "4"}\n')
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
               **{k: shlex.split(v)[0] for k, v in exports.items()}}  # as the shell reads the export lines
        cp = subprocess.run([*KUBETUNE, "s3", "cp", str(dataset), "s3://kt-own-data/datasets/my.jsonl"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert cp.returncode == 0, cp.stderr
        assert "copied 1 file" in cp.stdout
        missing = subprocess.run([*KUBETUNE, "s3", "cp", str(dataset), "s3://kt-not-made/my.jsonl"],
                                 cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert missing.returncode != 0 and "'kt-not-made' does not exist" in missing.stderr
        from pipelines.local_s3 import LocalS3

        server = LocalS3(tmp_path / "s3")  # the same credential, read back from <dir>/s3cfg.json
        server.port = int(exports["AWS_ENDPOINT_URL_S3"].rsplit(":", 1)[1])
        body = server.client().get_object(Bucket="kt-own-data", Key="datasets/my.jsonl")["Body"].read()
        assert body == dataset.read_bytes()
        port = server.port
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        assert_stopped_within(proc, weed_pid, port, 10, started)
    finally:
        stop_leftovers(proc, weed_pid)
