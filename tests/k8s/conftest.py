"""Fixtures for tests/k8s: images/, k8s/, promotion, preflight and the deploy guide. Paths and helpers are in
k8s_helpers.py.

Tools come from the venv (`make install`, `make install-helm`, `make install-checkov`); a test that
needs a missing tool fails and says which make target provides it (nothing is skipped).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # k8s_helpers and the stand-in module next to this file
    sys.path.insert(0, str(HERE))

from k8s_helpers import tool  # noqa: E402


@pytest.fixture(scope="session")
def helm() -> str:
    return tool("helm", "install-helm")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return tool("kubectl", "install-helm")


@pytest.fixture
def kube_api():
    """A running stand-in of the Kubernetes API (tests/k8s/kube_api_standin.py), healthy by default."""
    from kube_api_standin import StandInKubeAPI

    server = StandInKubeAPI().start()
    yield server
    server.stop()


@pytest.fixture
def kubeconfig(kube_api, tmp_path) -> Path:
    return kube_api.kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def release_root(tmp_path_factory) -> str:
    """A file:// root for releases. Not under the test's own tmp_path: a test name containing "latest"
    would put that word into every release URI, which promote rightly refuses."""
    return tmp_path_factory.mktemp("store").as_uri()
