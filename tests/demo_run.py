"""The session's one run of the demo pipeline (the `demo_run` fixture of tests/conftest.py): what the
tests that read it import by module name (not from conftest.py, whose name several folders share)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path


@contextlib.contextmanager
def environ(values: dict[str, str]):
    """os.environ with `values` set inside the block (subprocesses, like KFP's local runner, inherit
    it), restored afterwards."""
    import os

    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# The demo config with a shorter eval (the demo itself runs the full config). Training keeps the
# demo's steps: the test checks that the demo's own recipe learns the task (field F1), and a shorter
# run once made the tests depend on the machine (the same steps passed on one CPU and failed on
# another whose floating point differs).
# Tracking off: the demo config tracks into the MLflow server `kubetune demo` starts, which tests don't
# (demo_run turns it on again, into the session's server: DEMO_RUN_TRACKING).
DEMO_RUN_SHORTER = {"eval.max_examples": 24, "quantize.eval_records": 8,
                    "quantize.generate_records": 8, "tracking.mlflow_uri": None}
# Tracking on (tests/tracking reads the run back from MLflow); tracking.mlflow_uri is the session's
# mlflow_server. It changes nothing the run computes (not even the config hash).
DEMO_RUN_TRACKING = {"tracking.experiment": "kubetune-tests", "tracking.required": True}
# Given to the run's steps as MLflow's credential variables: none of them may be logged anywhere.
DEMO_RUN_MLFLOW_CREDENTIALS = {"MLFLOW_TRACKING_USERNAME": "kt-test-user",
                               "MLFLOW_TRACKING_PASSWORD": "kt-test-password-6f1d0c9e"}


@dataclass
class DemoRun:
    """The session's one run of the demo pipeline: `result` is pipelines.local.LocalRun (its release,
    run root and step outcomes); `env` the AWS environment (and private cache) to read its outputs with."""

    cfg: object
    result: object
    assets: object
    pipeline_root: Path
    env: dict
    mlflow_url: str = ""

    def step_dir(self, step: str) -> Path:
        """A step's published output of the run, fetched (verified) into the run's private cache."""
        from components.common import storage

        with environ(self.env):
            return storage.fetch_dir(storage.join_uri(self.result.run_root, step))
