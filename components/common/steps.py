"""What a pipeline step is, declared once: `StepSpec`, and the order the pipeline runs them in.

Each step declares its own spec beside its component (`components/<step>/component.py`, `SPEC`);
everything that needs to know the steps (the pipeline, the CLI, the local runner's summary, the
cache, the images) derives it from those specs, in the order of `STEP_NAMES`. The names are also
the folders of a run (`<root>/runs/<run-id>/<name>/`) and the keys of `cluster.steps` in a config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # annotations only: config imports this module (StepName), not the other way
    from components.common.config import KubetuneConfig, StepOptions

# The pipeline's steps, in the order they run. `pipelines/steps.py` maps each to its component's SPEC.
STEP_NAMES = ("prepare", "train", "eval", "merge", "quantize", "publish")
StepName = Literal["prepare", "train", "eval", "merge", "quantize", "publish"]
# The images `make images` builds (images/<name>/Dockerfile); a step runs on one of them.
ImageName = Literal["base", "train", "gguf"]


@dataclass(frozen=True)
class StepSpec:
    """One step: its name, the image it runs on, the config sections its output depends on (they key
    its explicit cache; empty: never cached), whether it asks for a GPU by default, and a title."""

    name: StepName
    image: ImageName
    cache_sections: tuple[str, ...]
    uses_gpu: bool
    title: str

    @property
    def cached(self) -> bool:
        return bool(self.cache_sections)

    def options(self, cfg: KubetuneConfig) -> StepOptions:
        """This step's cluster options (`cluster.steps.<name>`); by default it uses a GPU when its
        spec says so, is cached when it has cache sections, and is retried twice."""
        return cfg.step_options(self.name, uses_gpu=self.uses_gpu)

    def base_image(self, cfg: KubetuneConfig) -> str:
        """The container image this step's KFP component runs on (`cluster.images.<image>`)."""
        return getattr(cfg.cluster.images, self.image) or "python:3.11-slim"
