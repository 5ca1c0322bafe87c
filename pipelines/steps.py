"""The pipeline's steps, in order: each name in `STEP_NAMES` is the package `components/<name>/`, whose
`component.py` declares its `SPEC` and holds its `execute` (the step behind both doors) and its KFP
component `build(cfg)`. The pipeline, the CLI step commands, the local runner and the summary all take
the steps from here, so a step is declared once, beside its component."""

from __future__ import annotations

import importlib
from types import ModuleType

from components.common.steps import STEP_NAMES, StepSpec


def component_module(name: str) -> ModuleType:
    """components.<name>.component (imported on first use: it pulls in kfp and the step's code)."""
    if name not in STEP_NAMES:
        raise KeyError(f"{name!r}: not a pipeline step; expected one of {', '.join(STEP_NAMES)}")
    return importlib.import_module(f"components.{name}.component")


def spec(name: str) -> StepSpec:
    return component_module(name).SPEC


def specs() -> list[StepSpec]:
    """Every step's SPEC, in pipeline order."""
    return [spec(name) for name in STEP_NAMES]
