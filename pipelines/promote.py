"""GitOps promotion: pin a published release in an environment's charts/vllm values file.

    promote(release_uri, values_path, force=False, dry_run=False, git_commit=False) -> Promotion

It reads the release's `release.json` (a complete release: its manifest must exist), refuses a release
whose eval gate failed unless `force`, and rewrites exactly the keys a release sets (see
charts/vllm/README.md, "Values set by a kubetune release"):

* `release.uri`        the release directory, normalised to end in "/"; never anything containing
                       "latest" (the chart's schema rejects it too): a pin is immutable.
* `model.servedName`   release.json `serving.served_model_name`
* `model.maxModelLen`  release.json `serving.max_model_len`

and keeps one comment line directly above `release.uri`, `# kubetune promote: <model> <version> (...)`,
which says what was promoted and whether the gate passed or `--force` overrode a failed gate.
Everything else in the file (comments, order, quoting, indentation) is kept: a ruamel.yaml round trip
in the file's own style (pipelines/yaml_roundtrip.py), then a check that no other value changed.
`git_commit` commits only that file, with a message naming the release and its eval deltas.

When an MLflow tracking URI is configured (`mlflow_uri`, else MLFLOW_TRACKING_URI), the registered
model version of the release (publish registered it, components/common/tracking.py) gets the registry
alias of the environment: the values file's folder name, e.g. `staging` or `production`. It is set
before the file is written, so a release missing from the registry changes nothing; a refused release
(failed gate) moves no alias either.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from components.common.errors import KubetuneError
from pipelines.yaml_roundtrip import RoundTrip, unified_diff

RECORD_PREFIX = "# kubetune promote:"
# What charts/vllm/values.schema.json accepts as release.uri (s3:// or file://, a version directory).
RELEASE_URI = re.compile(r"^(s3|file)://\S+/releases/[^/\s]+/[^/\s]+/?$")
LATEST = re.compile(r"latest", re.IGNORECASE)


class PromoteError(KubetuneError):
    """A release that must not be pinned, or a values file that cannot be updated."""


@dataclass
class Promotion:
    values_path: Path
    uri: str
    release: dict
    forced: bool
    old_text: str
    new_text: str
    diff: str
    written: bool = False
    commit: str | None = None
    alias: tuple[str, str] | None = None  # (MLflow registry alias, model version) that now points here

    @property
    def changed(self) -> bool:
        return self.old_text != self.new_text

    @property
    def environment(self) -> str:
        return self.values_path.resolve().parent.name


def check_uri(uri: str) -> str:
    """The pinned form of a release URI (trailing "/"), or a PromoteError; "latest" is never accepted."""
    uri = uri.strip()
    if LATEST.search(uri):
        raise PromoteError(f"--release {uri}: contains 'latest'; a values file pins an immutable release "
                           "version, e.g. s3://bucket/prefix/releases/<model>/<version>/")
    if not RELEASE_URI.match(uri):
        raise PromoteError(f"--release {uri}: not a release directory; expected "
                           "s3://<bucket>/<prefix>/releases/<model>/<version>/ (or file://...)")
    return uri if uri.endswith("/") else uri + "/"


def gate_summary(gate: dict) -> tuple[bool, str]:
    """(passed, a one-line reason listing the failed checks)."""
    passed = gate.get("passed") is True
    failed = [c for c in gate.get("checks", []) if not c.get("passed")]
    if passed:
        return True, "gate passed"
    if not gate:
        return False, "no gate verdict in release.json"
    names = ", ".join(c.get("name", "?") for c in failed) or "no check passed"
    return False, f"gate FAILED: {names}"


def eval_deltas(release: dict) -> list[str]:
    """`metric: base -> tuned (delta)` for every metric in release.json's eval results."""
    lines = []
    for name, m in (release.get("eval") or {}).get("metrics", {}).items():
        if not isinstance(m, dict) or m.get("tuned") is None:
            continue
        base, tuned, delta = m.get("base"), m.get("tuned"), m.get("delta")
        if delta is None and base is not None:
            delta = tuned - base
        text = f"{name}: {_num(base)} -> {_num(tuned)}"
        lines.append(text + (f" ({delta:+.4g})" if delta is not None else ""))
    return lines


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def record_line(release: dict, forced: bool) -> str:
    passed, reason = gate_summary(release.get("gate") or {})
    what = f"{release.get('model', '?')} {release.get('version', '?')}"
    if passed:
        return f"{RECORD_PREFIX} {what} ({reason})"
    return f"{RECORD_PREFIX} {what} FORCED with --force ({reason})"


def _set_record(text: str, line: int, col: int, record: str) -> str:
    """Put `record` on its own line directly above line `line` (0-based), replacing an earlier record
    in the comment block right above it."""
    lines = text.splitlines(keepends=True)
    indent = " " * col
    i = line - 1
    while i >= 0 and lines[i].strip().startswith("#"):
        if lines[i].strip().startswith(RECORD_PREFIX):
            lines[i] = indent + record + "\n"
            return "".join(lines)
        i -= 1
    lines.insert(line, indent + record + "\n")
    return "".join(lines)


def _plain(text: str) -> dict:
    data = yaml.safe_load(text)
    return data if isinstance(data, dict) else {}


def _without_pins(data: dict) -> dict:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for section, key in (("release", "uri"), ("model", "servedName"), ("model", "maxModelLen")):
        if isinstance(data.get(section), dict):
            data[section].pop(key, None)
            if not data[section]:
                data.pop(section)
    return data


def update_values(text: str, uri: str, release: dict, forced: bool, path: str = "values.yaml") -> str:
    """The values file's new text: the release pinned, everything else as it was."""
    from ruamel.yaml.comments import CommentedMap

    rt = RoundTrip(text) if text.strip() else None
    data = rt.data if rt else CommentedMap()
    if data is None:
        data = CommentedMap()
    if not isinstance(data, dict):
        raise PromoteError(f"{path}: not a YAML mapping; expected a charts/vllm values file")
    for section in ("release", "model"):
        if section in data and not isinstance(data[section], dict):
            raise PromoteError(f"{path}: `{section}` is not a mapping; expected charts/vllm values")
    if "release" not in data:
        data.insert(0, "release", CommentedMap())
    data["release"]["uri"] = uri
    serving = release.get("serving") or {}
    if serving.get("served_model_name") or serving.get("max_model_len"):
        if "model" not in data:
            data.insert(list(data).index("release") + 1, "model", CommentedMap())
        if serving.get("served_model_name"):
            data["model"]["servedName"] = str(serving["served_model_name"])
        if serving.get("max_model_len"):
            data["model"]["maxModelLen"] = int(serving["max_model_len"])
    new = rt.dump(data) if rt else RoundTrip("{}\n").dump(data)
    reparsed = (rt or RoundTrip("{}\n")).load(new)
    line, col = reparsed["release"].lc.key("uri")
    new = _set_record(new, line, col, record_line(release, forced))
    # The round trip must not have touched anything but the pins.
    before, after = _plain(text), _plain(new)
    if _without_pins(before) != _without_pins(after):
        raise PromoteError(f"{path}: updating the release would change other values too; refusing "
                           "(please report this file's layout)")
    if after.get("release", {}).get("uri") != uri or LATEST.search(str(after["release"]["uri"])):
        raise PromoteError(f"{path}: release.uri did not come out as {uri}")
    return new


def promote(release_uri: str, values_path: str | Path, *, force: bool = False, dry_run: bool = False,
            git_commit: bool = False, mlflow_uri: str | None = None) -> Promotion:
    from components.common.release import read_release

    uri = check_uri(release_uri)
    values_path = Path(values_path)
    if not values_path.is_file():
        raise PromoteError(f"--values {values_path}: file not found; expected an environment's charts/vllm "
                           "values file, e.g. k8s/gitops/staging/values.yaml")
    release = read_release(uri)
    passed, reason = gate_summary(release.get("gate") or {})
    if not passed and not force:
        checks = "; ".join(c.get("reason") or c.get("name", "?") for c in (release.get("gate") or {}).get(
            "checks", []) if not c.get("passed"))
        raise PromoteError(f"{uri}: refusing to promote: the eval {reason}" + (f" ({checks})" if checks else "")
                           + f"; nothing written to {values_path}. Use --force to promote it anyway "
                           "(recorded as a comment in the values file)")
    old = values_path.read_text(encoding="utf-8")
    new = update_values(old, uri, release, forced=not passed, path=str(values_path))
    result = Promotion(values_path=values_path, uri=uri, release=release, forced=not passed, old_text=old,
                       new_text=new, diff=unified_diff(old, new, str(values_path)))
    if dry_run:
        return result
    mlflow_uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if mlflow_uri:
        from components.common import tracking

        alias = result.environment
        try:
            result.alias = (alias, tracking.set_alias(mlflow_uri, release["model"], uri, alias))
        except tracking.TrackingError as e:
            raise PromoteError(f"{e}; nothing written to {values_path}") from None
    if not result.changed:
        return result
    if git_commit:  # before writing: outside a repository, nothing is written
        _git(values_path.resolve().parent, "rev-parse", "--show-toplevel")
    values_path.write_text(new, encoding="utf-8")
    result.written = True
    if git_commit:
        result.commit = commit(result)
    return result


def commit_message(p: Promotion) -> str:
    r = p.release
    passed, reason = gate_summary(r.get("gate") or {})
    subject = f"promote {r.get('model', '?')} {r.get('version', '?')} to {p.environment}"
    body = [f"Release: {p.uri}", f"Values: {p.values_path}",
            "Gate: passed" if passed else f"Gate: FAILED, promoted with --force ({reason})"]
    serving = r.get("serving") or {}
    if serving:
        body.append(f"Serving: {serving.get('served_model_name')} (max_model_len {serving.get('max_model_len')})")
    deltas = eval_deltas(r)
    if deltas:
        body += ["", "Eval, base -> tuned (delta):", *(f"  {d}" for d in deltas)]
    return subject + "\n\n" + "\n".join(body) + "\n"


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PromoteError(f"git {' '.join(args[:2])} in {cwd}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


def commit(p: Promotion) -> str:
    """Commit only the values file; returns the new commit's id."""
    here = p.values_path.resolve().parent
    top = Path(_git(here, "rev-parse", "--show-toplevel"))
    rel = p.values_path.resolve().relative_to(top.resolve()).as_posix()
    _git(top, "add", "--", rel)
    _git(top, "commit", "--quiet", "-m", commit_message(p), "--", rel)
    return _git(top, "rev-parse", "HEAD")
