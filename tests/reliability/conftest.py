"""Fixtures for tests/reliability: the kubetune CLI in a subprocess, a small tokenizer, and a real S3 server
with restricted identities.

  kubetune_cli        (session) `run(argv, env=..., timeout=...) -> CliResult`: `.venv/bin/kubetune` in a
                      subprocess with a clean environment (no AWS or MLflow settings of the developer's, the
                      Hugging Face Hub offline, one OpenMP thread, a private cache), timed.
  bad_tokenizer_dir   (session) a byte-level BPE with a ChatML template, written with `tokenizers` alone
                      (no transformers import in the test process), as a model directory's tokenizer.
  restricted_s3       (module) a real SeaweedFS (`LocalS3`) whose s3cfg.json holds, besides its admin
                      identity, `nobody` (no permission at all) and `reader` (Read and List on one bucket,
                      RESTRICTED_BUCKET, and nothing else). `.env(identity)` gives the AWS environment of
                      one of them ("admin", "nobody", "reader").
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

KUBETUNE = Path(sys.executable).parent / "kubetune"
RESTRICTED_BUCKET = "kt-bad-inputs"
CHATML = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{- '\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# The developer's settings that would point a subprocess elsewhere than the test's servers.
_NOISE_PREFIXES = ("AWS_", "MLFLOW_", "HF_", "KUBETUNE_", "PROMETHEUS_")


@dataclass
class CliResult:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    seconds: float

    def __str__(self) -> str:  # what an assertion shows
        return (f"kubetune {' '.join(self.argv)}\n  rc {self.rc} in {self.seconds:.1f} s\n"
                f"  stdout: {self.stdout[-3000:]}\n  stderr: {self.stderr[-3000:]}")


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_NOISE_PREFIXES)}
    env.update({
        "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "KUBETUNE_PROGRESS": "0",
        "HF_HOME": str(tmp / "hf-home"), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
        "KUBETUNE_CACHE": str(tmp / "kubetune-cache"),
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-creds"),
        "AWS_EC2_METADATA_DISABLED": "true", "MPLBACKEND": "Agg",
    })
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def kubetune_cli(tmp_path_factory):
    home = tmp_path_factory.mktemp("cli-env")

    def run(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 180) -> CliResult:
        started = time.monotonic()
        proc = subprocess.run([str(KUBETUNE), *argv], env=clean_env(home, **(env or {})), cwd=home,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return CliResult(argv, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)

    return run


@pytest.fixture(scope="session")
def bad_tokenizer_dir(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out = tmp_path_factory.mktemp("tokenizer")
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|im_end|>", "<|im_start|>", "<|pad|>"]
    words = ("the quick brown fox jumps over a lazy dog while contract parties agree on dates amounts and terms "
             "of payment delivery notice termination governing law seller buyer licensor licensee item")
    tok.train_from_iterator([words] * 20, trainers.BpeTrainer(
        vocab_size=400, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=specials))
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": specials[0], "eos_token": specials[1],
        "pad_token": specials[3], "model_max_length": 4096, "chat_template": CHATML}, indent=2))
    return out


class RestrictedS3:
    """A LocalS3 with an admin identity and two restricted ones (see the module docstring)."""

    def __init__(self, data_dir: Path):
        from pipelines.local_s3 import LocalS3

        self.keys = {name: ("KT" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))
                     for name in ("nobody", "reader")}
        keys = self.keys

        class _Server(LocalS3):
            def _write_config(self) -> None:  # the admin identity LocalS3 writes, plus two restricted ones
                super()._write_config()
                cfg = json.loads(self.config_path.read_text())
                actions = {"nobody": [], "reader": [f"Read:{RESTRICTED_BUCKET}", f"List:{RESTRICTED_BUCKET}"]}
                cfg["identities"] += [{"name": name, "actions": actions[name],
                                       "credentials": [{"accessKey": key, "secretKey": secret}]}
                                      for name, (key, secret) in keys.items()]
                self.config_path.write_text(json.dumps(cfg, indent=2))

        self.server = _Server(data_dir)
        self.bucket = RESTRICTED_BUCKET

    def env(self, identity: str = "admin") -> dict[str, str]:
        env = self.server.env()
        if identity != "admin":
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = self.keys[identity]
        return env

    def keys_under(self, bucket: str, prefix: str) -> list[str]:
        """Every key under the prefix, listed with the admin identity."""
        pages = self.server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture(scope="module")
def restricted_s3(tmp_path_factory):
    s3 = RestrictedS3(tmp_path_factory.mktemp("seaweedfs-restricted"))
    s3.server.start()
    s3.server.ensure_bucket(RESTRICTED_BUCKET)
    yield s3
    s3.server.stop()
