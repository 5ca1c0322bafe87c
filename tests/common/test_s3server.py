"""The local SeaweedFS S3 server (pipelines.local_s3) and `kubetune s3 serve`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from pipelines.local_s3 import LocalS3, S3ServerError, _port_open

REPO = Path(__file__).resolve().parents[2]


def client(endpoint: str, key: str | None, secret: str | None, **cfg):
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
        region_name="us-east-1", config=Config(retries={"max_attempts": 1}, **cfg))


def test_server_enforces_signatures(s3_server):
    bucket = s3_server.ensure_bucket("kt-signatures")
    good = client(s3_server.endpoint, s3_server.access_key, s3_server.secret_key)
    good.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert good.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    wrong = client(s3_server.endpoint, s3_server.access_key, s3_server.secret_key + "x")
    with pytest.raises(ClientError) as e:
        wrong.get_object(Bucket=bucket, Key="k")
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as e:
        wrong.put_object(Bucket=bucket, Key="k2", Body=b"v")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    anonymous = client(s3_server.endpoint, None, None, signature_version=UNSIGNED)
    with pytest.raises(ClientError) as e:
        anonymous.list_objects_v2(Bucket=bucket)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # buckets are not created implicitly by an upload (as on AWS)
    with pytest.raises(ClientError) as e:
        good.put_object(Bucket="kt-never-created", Key="k", Body=b"v")
    assert e.value.response["Error"]["Code"] == "NoSuchBucket"


def test_env_points_at_the_server(s3_server):
    env = s3_server.env()
    assert env == {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{s3_server.port}",
                   "AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
                   "AWS_DEFAULT_REGION": "us-east-1"}


def test_delete_bucket_gives_its_volume_back(s3_server):
    # SeaweedFS gives each bucket a volume and has a fixed number of them; the s3_env fixture
    # deletes each test's bucket so that a long session never runs out (it did: InternalError).
    bucket = s3_server.ensure_bucket("kt-volume-back")
    _, free_before = s3_server.volume_slots()
    c = s3_server.client()
    keys = [f"many/{i:04d}" for i in range(1001)]  # more than one list page, so paging is exercised
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: c.put_object(Bucket=bucket, Key=key, Body=b"v"), keys))
    assert s3_server.volume_slots()[1] == free_before - 1
    assert s3_server.delete_bucket(bucket) == len(keys)
    assert bucket not in [b["Name"] for b in c.list_buckets()["Buckets"]]
    assert s3_server.volume_slots()[1] == free_before
    assert s3_server.delete_bucket(bucket) == 0  # already gone: nothing to do, no error


def test_start_stop_and_credentials_kept(tmp_path):
    data = tmp_path / "s3"
    with LocalS3(data) as s3:
        pgid = os.getpgid(s3._proc.pid)
        port = s3.port
        assert _port_open(port)
        assert s3.ensure_bucket("kt-life") == s3.ensure_bucket("kt-life")
        names = [b["Name"] for b in s3.client().list_buckets()["Buckets"]]
        assert "kt-life" in names
        assert oct((data / "s3cfg.json").stat().st_mode & 0o777) == "0o600"
        keys = (s3.access_key, s3.secret_key)
    assert not _port_open(port)
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # the whole process group is gone
    assert not [p for p in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")]
    again = LocalS3(data)
    assert (again.access_key, again.secret_key) == keys  # exported shell variables stay valid
    with again:  # and the data survived the restart
        assert "kt-life" in [b["Name"] for b in again.client().list_buckets()["Buckets"]]


def test_taken_port_is_a_clear_error(s3_server, tmp_path):
    with pytest.raises(S3ServerError, match=f"127.0.0.1:{s3_server.port}.*already in use"):
        LocalS3(tmp_path / "x", port=s3_server.port).start()


def test_failed_start_reports_the_log(tmp_path, monkeypatch):
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\necho 'weed: cannot open volume directory' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr("pipelines.local_s3.weed_binary", lambda: str(fake))
    with pytest.raises(S3ServerError, match=r"(?s)exited with code 3.*cannot open volume directory"):
        LocalS3(tmp_path / "s3", port=None).start()


def test_cli_serve_prints_exports_and_stops_on_ctrl_c(tmp_path):
    cmd = [sys.executable, "-m", "pipelines.cli", "s3", "serve", "--dir", str(tmp_path / "d"),
           "--port", "0", "--bucket", "kt-cli", "--bucket", "kt-cli2"]
    proc = subprocess.Popen(cmd,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if "Ctrl-C" in line:
                break
        exports = dict(line[len("export "):].split("=", 1) for line in lines if line.startswith("export "))
        assert set(exports) == {"AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                "AWS_DEFAULT_REGION"}, lines
        c = client(exports["AWS_ENDPOINT_URL_S3"], exports["AWS_ACCESS_KEY_ID"],
                   exports["AWS_SECRET_ACCESS_KEY"])
        assert {"kt-cli", "kt-cli2"} <= {b["Name"] for b in c.list_buckets()["Buckets"]}
        room = [line for line in lines if line.startswith("# room for ")]
        assert len(room) == 1 and int(room[0].split()[3]) >= 0, lines
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        stderr = proc.stderr.read()
        assert exports["AWS_SECRET_ACCESS_KEY"] not in stderr  # the secret only in the export lines
        assert sum(exports["AWS_SECRET_ACCESS_KEY"] in line for line in lines) == 1
        assert not _port_open(int(exports["AWS_ENDPOINT_URL_S3"].rsplit(":", 1)[1]))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
