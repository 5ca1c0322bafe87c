"""One lifecycle, two front doors: the same step run by the CLI (`kubetune prepare`) and by its KFP
component (in the real KFP local SubprocessRunner) publishes the same `_manifest.json`, apart from the
run id and the time, so both doors give the same files, lineage and cache key; and a CLI run leaves
no staging directory behind, whether it succeeds or fails (real SeaweedFS)."""

import json
import re
import tempfile
from pathlib import Path

import pytest
import yaml

from components.common import storage
from pipelines.cli import main


def write_config(path: Path, demo, root: str) -> Path:
    cfg = {"model": {"name": "contracts-tiny", "base": str(demo.model_dir)},
           "data": {"sources": [{"uri": str(demo.chat), "name": "contracts", "weight": 0.95},
                                {"uri": str(demo.prompt_completion), "name": "general", "weight": 0.05}]},
           "storage": {"root": root}, "prepare": {"max_seq_len": 512, "seed": 7}}
    path.write_text(yaml.safe_dump(cfg))
    return path


TIMED = ("step_outcome.json", "stats.json", "report.md")  # files that record how long the step took


def comparable(manifest: storage.Manifest, run_id: str) -> str:
    """The manifest JSON with its run id and times taken out: what must be the same across doors."""
    d = manifest.to_dict()
    for key in ("created_at", "content_hash", "total_bytes"):  # the time, and sums over files holding times
        d.pop(key)
    d["files"] = [f if f["path"] not in TIMED else {**f, "sha256": "<timed>", "size": "<timed>"}
                  for f in d["files"]]
    return re.sub(re.escape(run_id), "<run>", json.dumps(d, indent=2, sort_keys=True))


def without_times(path: Path) -> str:
    text = path.read_text()
    return re.sub(r'("?\w*seconds"?[:=|]\s*|in )[0-9.]+( s)?', r"\1<t>", text)


def test_cli_and_kfp_component_publish_the_same_manifest(s3_env, demo, tmp_path):
    from kfp import local

    from components.common.config import load_config
    from components.prepare import component

    config = write_config(tmp_path / "cfg.yaml", demo, s3_env.uri("root"))
    cfg = load_config(config)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"),
               raise_on_error=True)
    task = component.build(cfg)(config=cfg.model_dump_json(), run_id="kfp-door", job_id="job", scheduled=False)
    assert task.outputs["Output"] is True  # new data: the pipeline would go on to train
    by_kfp = storage.read_manifest(s3_env.uri("root", "runs", "kfp-door", "prepare"))

    cli_output = s3_env.uri("root", "runs", "cli-door", "prepare")
    assert main(["prepare", "--config", str(config), "--output", cli_output]) == 0
    by_cli = storage.read_manifest(s3_env.uri("root", "runs", "cli-door", "prepare"))

    assert by_kfp is not None and by_cli is not None
    assert by_kfp.lineage["cache_key"] == by_cli.lineage["cache_key"]
    assert comparable(by_kfp, "kfp-door") == comparable(by_cli, "cli-door")
    kfp_dir, cli_dir = storage.fetch_dir(by_kfp.uri), storage.fetch_dir(by_cli.uri)
    for name in TIMED:  # the timed files are the same too, once their times are taken out
        assert without_times(kfp_dir / name) == without_times(cli_dir / name), name


def kubetune_temp_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("kubetune-"))


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_a_cli_step_leaves_no_temporary_directory(s3_env, demo, tmp_path, monkeypatch, outcome):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    config = write_config(tmp_path / "cfg.yaml", demo, s3_env.uri("root"))
    before = kubetune_temp_dirs(scratch)
    output = s3_env.uri("root", "runs", outcome, "prepare")
    # A failure after the step wrote its files: a split ratio that leaves no test records is refused
    # by the step at the end of its work.
    extra = [] if outcome == "success" else ["--set", "prepare.max_seq_len=8"]
    rc = main(["prepare", "--config", str(config), "--output", output, *extra])
    assert (rc == 0) == (outcome == "success")
    assert (storage.read_manifest(output) is not None) == (outcome == "success")
    assert before == [] and kubetune_temp_dirs(scratch) == []
