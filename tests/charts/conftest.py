"""Fixtures for the static tests of charts/vllm: a real helm binary renders the chart, and promtool
checks its alert rules. Neither is skipped when missing: CI installs both (`make install`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "vllm"
TOOLS = REPO / ".venv" / "tools"
RELEASE = "kt"
NAMESPACE = "serving"
FULLNAME = f"{RELEASE}-vllm"
DEFAULT_URI = "s3://kubetune-demo/demo/releases/contracts-tiny/20261129T120000Z-0a1b2c3/"
RELEASE_DIR = "/models/contracts-tiny/20261129T120000Z-0a1b2c3"


def find_tool(name: str, make_target: str) -> str:
    """The tool on PATH, else in .venv/tools; a test that needs it fails (never skips) without it."""
    found = shutil.which(name) or (str(TOOLS / name) if os.access(TOOLS / name, os.X_OK) else None)
    if not found:
        pytest.fail(f"{name} not found on PATH nor in {TOOLS}: run `make install` "
                    f"(or `make {make_target}`) first", pytrace=False)
    return found


class Chart:
    """Renders charts/vllm with helm and picks objects out of the result."""

    dir = CHART
    release = RELEASE
    namespace = NAMESPACE
    fullname = FULLNAME
    default_uri = DEFAULT_URI
    release_dir = RELEASE_DIR

    def __init__(self, helm: str, tmp: Path):
        self.helm = helm
        self.tmp = tmp
        self._n = 0

    def _values_args(self, values: dict | None, files: tuple[str, ...], defaults: bool) -> list[str]:
        args: list[str] = []
        if defaults:
            args += ["-f", str(CHART / "ci" / "default-values.yaml")]
        for f in files:
            args += ["-f", str(CHART / "ci" / f) if "/" not in f else f]
        if values is not None:
            self._n += 1
            path = self.tmp / f"values-{self._n}.yaml"
            path.write_text(yaml.safe_dump(values, sort_keys=False))
            args += ["-f", str(path)]
        return args

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.helm, *args], capture_output=True, text=True, timeout=120)

    def template_raw(self, values: dict | None = None, *files: str, defaults: bool = True,
                     extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        return self.run("template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                        *self._values_args(values, files, defaults), *extra)

    def render(self, values: dict | None = None, *files: str, defaults: bool = True) -> list[dict[str, Any]]:
        proc = self.template_raw(values, *files, defaults=defaults)
        assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
        return [d for d in yaml.safe_load_all(proc.stdout) if d]

    def lint(self, values: dict | None = None, *files: str,
             defaults: bool = True) -> subprocess.CompletedProcess:
        return self.run("lint", "--strict", str(CHART), "--namespace", NAMESPACE,
                        *self._values_args(values, files, defaults))

    @staticmethod
    def kinds(docs: list[dict]) -> list[str]:
        return sorted(d["kind"] for d in docs)

    @staticmethod
    def one(docs: list[dict], kind: str) -> dict:
        found = [d for d in docs if d["kind"] == kind]
        assert len(found) == 1, f"expected one {kind}, got {len(found)}: {Chart.kinds(docs)}"
        return found[0]

    @staticmethod
    def container(docs: list[dict], name: str = "vllm") -> dict:
        spec = Chart.one(docs, "Deployment")["spec"]["template"]["spec"]
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            if c["name"] == name:
                return c
        raise AssertionError(f"no container {name!r} in the Deployment")

    @staticmethod
    def test_pod(docs: list[dict]) -> dict:
        pods = [d for d in docs if d["kind"] == "Pod"
                and d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
        assert len(pods) == 1, "expected one helm test Pod"
        return pods[0]


@pytest.fixture(scope="session")
def helm() -> str:
    return find_tool("helm", "install-helm")


@pytest.fixture(scope="session")
def promtool() -> str:
    return find_tool("promtool", "install-prometheus")


@pytest.fixture(scope="session")
def chart(helm: str, tmp_path_factory: pytest.TempPathFactory) -> Chart:
    return Chart(helm, tmp_path_factory.mktemp("chart-values"))
