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
DEMO_RUN_SHORTER = {"train.eval_steps": 150, "eval.max_examples": 24, "quantize.eval_records": 8,
                    "quantize.generate_records": 8}


@dataclass
class DemoRun:
    """The session's one run of the demo pipeline: `result` is pipelines.local.LocalRun (its release,
    run root and step outcomes); `env` the AWS environment (and private cache) to read its outputs with."""

    cfg: object
    result: object
    assets: object
    pipeline_root: Path
    env: dict

    def step_dir(self, step: str) -> Path:
        """A step's published output of the run, fetched (verified) into the run's private cache."""
        from components.common import storage

        with environ(self.env):
            return storage.fetch_dir(storage.join_uri(self.result.run_root, step))
