"""`kubetune promote`: pins a release in an environment values file, keeps the file's comments and
formatting, refuses failed gates (unless --force, recorded), never writes "latest", --dry-run and
--git-commit."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml
from k8s_helpers import ENVIRONMENTS, FAILED_GATE, K8S, load_docs, publish_release, run, tool

from pipelines.cli import main
from pipelines.promote import PromoteError, check_uri, update_values

STAGING = K8S / "gitops" / "staging" / "values.yaml"


@pytest.fixture
def values(tmp_path):
    """A copy of the staging values file, in an environment directory named `staging`."""
    path = tmp_path / "gitops" / "staging" / "values.yaml"
    path.parent.mkdir(parents=True)
    shutil.copy(STAGING, path)
    return path


def promote(*args: str) -> int:
    return main(["promote", *args])


def changed(diff: str) -> tuple[list[str], list[str]]:
    minus = [line[1:] for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    plus = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return minus, plus


def comments(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")]


def test_promote_pins_release_and_keeps_everything_else(values, release_root, capsys):
    before = values.read_text()
    uri = publish_release(release_root)
    assert promote("--release", uri, "--values", str(values)) == 0
    out = capsys.readouterr().out
    after = values.read_text()
    data = yaml.safe_load(after)
    assert data["release"]["uri"] == uri + "/"
    assert data["model"] == {"servedName": "contracts-llama-v2", "maxModelLen": 4096}
    # Exactly the pinned lines and the promote record changed; the diff printed is that change.
    minus, plus = changed(out)
    assert [m.strip().split(":")[0] for m in minus] == ["# kubetune promote", "uri", "servedName", "maxModelLen"]
    assert [p.strip().split(":")[0] for p in plus] == ["# kubetune promote", "uri", "servedName", "maxModelLen"]
    assert "# kubetune promote: contracts-llama31-8b 20261130-101500-run42 (gate passed)" in plus[0]
    # Every other comment and line is kept byte for byte, and in order.
    old_comments = [c for c in comments(before) if not c.startswith("# kubetune promote:")]
    new_comments = [c for c in comments(after) if not c.startswith("# kubetune promote:")]
    assert new_comments == old_comments
    assert len(after.splitlines()) == len(before.splitlines())
    untouched = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert len(untouched) == 4
    # Nothing else in the values changed.
    old = yaml.safe_load(before)
    for key in set(old) - {"release", "model"}:
        assert data[key] == old[key], key


def test_promoting_the_same_release_again_changes_nothing(values, release_root, capsys):
    uri = publish_release(release_root)
    assert promote("--release", uri, "--values", str(values)) == 0
    text = values.read_text()
    capsys.readouterr()
    assert promote("--release", uri + "/", "--values", str(values)) == 0
    assert "already pins" in capsys.readouterr().out
    assert values.read_text() == text


def test_failed_gate_is_refused(values, release_root, capsys):
    before = values.read_text()
    uri = publish_release(release_root, gate=FAILED_GATE)
    assert promote("--release", uri, "--values", str(values)) == 2
    err = capsys.readouterr().err
    assert "refusing to promote" in err and "gate FAILED: primary_improvement" in err
    assert "improvement +0.005" in err and "--force" in err
    assert values.read_text() == before


def test_missing_gate_verdict_is_a_failed_gate(values, release_root, capsys):
    uri = publish_release(release_root, gate={})
    assert promote("--release", uri, "--values", str(values)) == 2
    assert "no gate verdict" in capsys.readouterr().err


def test_force_promotes_a_failed_gate_and_records_it(values, release_root, capsys):
    uri = publish_release(release_root, gate=FAILED_GATE, version="20261130-120000-forced")
    assert promote("--release", uri, "--values", str(values), "--force") == 0
    captured = capsys.readouterr()
    assert "WARNING" in captured.err and "--force" in captured.err
    text = values.read_text()
    record = [line for line in text.splitlines() if "# kubetune promote:" in line]
    assert record == ["  # kubetune promote: contracts-llama31-8b 20261130-120000-forced FORCED with --force "
                      "(gate FAILED: primary_improvement)"]
    # The record sits directly above the pinned URI.
    lines = text.splitlines()
    assert lines[lines.index(record[0]) + 1].strip() == f"uri: {uri}/"
    # A later promotion of a passing release replaces the record instead of piling up lines.
    good = publish_release(release_root, version="20261130-130000-good")
    assert promote("--release", good, "--values", str(values)) == 0
    records = [line for line in values.read_text().splitlines() if "# kubetune promote:" in line]
    assert records == ["  # kubetune promote: contracts-llama31-8b 20261130-130000-good (gate passed)"]


@pytest.mark.parametrize("bad", [
    "s3://ml-artifacts/kubetune/releases/contracts-llama31-8b/latest/",
    "s3://ml-artifacts/kubetune/releases/contracts-llama31-8b/LATEST",
    "s3://ml-artifacts/kubetune/releases/contracts-latest/20261130-101500-run42/",
    "s3://latest-models/kubetune/releases/m/20261130-101500-run42/",
])
def test_latest_is_never_written(values, bad, capsys):
    before = values.read_text()
    assert promote("--release", bad, "--values", str(values), "--force") == 2
    assert "contains 'latest'" in capsys.readouterr().err
    assert values.read_text() == before


def test_latest_is_refused_even_below_the_cli():
    with pytest.raises(PromoteError, match="latest"):
        check_uri("file:///srv/releases/m/Latest")
    # update_values re-checks what it wrote, whatever it was asked to write.
    with pytest.raises(PromoteError):
        update_values(STAGING.read_text(), "s3://b/p/releases/m/latest/", {"serving": {}}, forced=False)


def test_latest_release_published_under_such_a_version_is_refused(values, release_root, capsys):
    uri = publish_release(release_root, version="latest")
    assert promote("--release", uri, "--values", str(values)) == 2
    assert "latest" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["s3://bucket/prefix/contracts/v1/", "/srv/releases/m/v1", "https://x/releases/m/v"])
def test_not_a_release_directory_is_refused(values, bad, capsys):
    assert promote("--release", bad, "--values", str(values)) == 2
    assert "not a release directory" in capsys.readouterr().err


def test_unpublished_release_is_refused(values, release_root, capsys):
    assert promote("--release", f"{release_root}/releases/m/never-published/", "--values", str(values)) == 2
    assert "no complete release here" in capsys.readouterr().err


def test_dry_run_prints_the_diff_and_writes_nothing(values, release_root, capsys):
    before, mtime = values.read_text(), values.stat().st_mtime_ns
    uri = publish_release(release_root)
    assert promote("--release", uri, "--values", str(values), "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"+  uri: {uri}/" in out and "dry run" in out
    assert values.read_text() == before and values.stat().st_mtime_ns == mtime


def test_git_commit_commits_only_the_values_file(tmp_path, release_root, capsys):
    git = tool("git", "install")
    repo = tmp_path / "gitops-repo"
    values = repo / "k8s" / "gitops" / "prod" / "values.yaml"
    values.parent.mkdir(parents=True)
    shutil.copy(K8S / "gitops" / "prod" / "values.yaml", values)
    (repo / "README.md").write_text("gitops\n")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com"}
    run([git, "init", "-q", "-b", "main"], cwd=repo)
    for k, v in (("user.name", "t"), ("user.email", "t@example.com")):
        run([git, "config", k, v], cwd=repo)
    run([git, "add", "."], cwd=repo, env=env)
    run([git, "commit", "-q", "-m", "initial"], cwd=repo, env=env)
    (repo / "README.md").write_text("an unrelated local edit that must not be committed\n")
    uri = publish_release(release_root)
    assert promote("--release", uri, "--values", str(values), "--git-commit") == 0
    assert "committed" in capsys.readouterr().out
    log = run([git, "log", "--format=%B%x00", "-n", "1"], cwd=repo).stdout
    assert log.startswith("promote contracts-llama31-8b 20261130-101500-run42 to prod\n")
    assert f"Release: {uri}/" in log and "Gate: passed" in log
    assert "json_field_f1: 0.41 -> 0.83 (+0.42)" in log and "json_valid: 0.62 -> 0.99 (+0.37)" in log
    files = run([git, "show", "--name-only", "--format=", "HEAD"], cwd=repo).stdout.split()
    assert files == ["k8s/gitops/prod/values.yaml"]
    status = run([git, "status", "--porcelain"], cwd=repo).stdout
    assert status.strip() == "M README.md"
    assert subprocess.run([git, "rev-list", "--count", "HEAD"], cwd=repo, capture_output=True,
                          text=True).stdout.strip() == "2"


def test_git_commit_outside_a_repository_is_a_clear_error(values, release_root, capsys):
    before = values.read_text()
    uri = publish_release(release_root)
    assert promote("--release", uri, "--values", str(values), "--git-commit") == 2
    assert "git rev-parse" in capsys.readouterr().err
    assert values.read_text() == before  # nothing half-done


def test_values_without_the_keys_get_them(tmp_path, release_root):
    values = tmp_path / "dev" / "values.yaml"
    values.parent.mkdir()
    values.write_text("# dev cluster\ngpu:\n    count: 0   # CPU only\nvllm:\n    extraArgs: ['--enforce-eager']\n")
    uri = publish_release(release_root)
    assert promote("--release", uri, "--values", str(values)) == 0
    text = values.read_text()
    data = yaml.safe_load(text)
    assert data["release"]["uri"] == uri + "/"
    assert data["model"]["servedName"] == "contracts-llama-v2"
    assert data["gpu"] == {"count": 0} and data["vllm"] == {"extraArgs": ["--enforce-eager"]}
    assert "    count: 0   # CPU only" in text and "['--enforce-eager']" in text and "# dev cluster" in text


def test_other_indentation_styles_are_kept(tmp_path, release_root):
    values = tmp_path / "qa" / "values.yaml"
    values.parent.mkdir()
    original = ("release:\n    # pinned\n    uri: \"s3://b/p/releases/m/old/\"\nmodel:\n    servedName: 'm'\n"
                "    maxModelLen: 2048\ntolerations:\n-   key: nvidia.com/gpu\n    operator: Exists\n")
    values.write_text(original)
    uri = publish_release(release_root)
    assert promote("--release", uri, "--values", str(values)) == 0
    new = values.read_text().splitlines()
    old = original.splitlines()
    assert new[-2:] == old[-2:] and new[0] == "release:" and new[1] == "    # pinned"
    assert re.fullmatch(r'    uri: "file://.*/releases/contracts-llama31-8b/20261130-101500-run42/"', new[3])
    assert new[4:7] == ["model:", "    servedName: 'contracts-llama-v2'", "    maxModelLen: 4096"]


def test_promote_reads_a_release_from_s3(values, s3_env, capsys):
    uri = publish_release(s3_env.uri("kubetune"))
    assert uri.startswith("s3://")
    assert promote("--release", uri, "--values", str(values), "--dry-run") == 0
    assert f"+  uri: {uri}/" in capsys.readouterr().out


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_shipped_values_files_pin_a_release_the_way_promote_writes_it(env):
    path = K8S / "gitops" / env / "values.yaml"
    text = path.read_text()
    data = yaml.safe_load(text)
    assert check_uri(data["release"]["uri"]) == data["release"]["uri"]
    lines = text.splitlines()
    uri_line = next(i for i, line in enumerate(lines) if line.strip().startswith("uri:"))
    assert lines[uri_line - 1].strip().startswith("# kubetune promote:")
    assert load_docs(path)  # one YAML document
