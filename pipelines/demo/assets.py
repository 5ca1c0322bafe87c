"""Build (once) and find the demo assets: the tiny base model and the synthetic datasets.

    root/
      models/tiny-llama/        config.json, model.safetensors, generation_config.json,
                                tokenizer.json, tokenizer_config.json, chat_template.jinja
      datasets/contracts/       alpaca.jsonl, chat.jsonl, prompt_completion.jsonl, text.jsonl
      datasets/general/         prompt_completion.jsonl, heldout.jsonl
      .state/model.json         marker of a finished model build: its key and figures
      .state/datasets.json      marker of a finished datasets build

Each part is built in a temporary folder, moved into place, and its marker is written last; the
marker holds a key hashed from the builder's parameters, its source code and library versions, so
an interrupted build or a changed builder means a rebuild, and anything else means no work.
Concurrent callers (pytest-xdist workers, two terminals) serialize on a lock file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

BUILDER_VERSION = 1
DEFAULT_SEED = 0
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "chat_template.jinja")
DATASET_FILES = {
    "alpaca": "contracts/alpaca.jsonl", "chat": "contracts/chat.jsonl",
    "prompt_completion": "contracts/prompt_completion.jsonl", "text": "contracts/text.jsonl",
    "general": "general/prompt_completion.jsonl", "general_heldout": "general/heldout.jsonl",
}
_SOURCES = ("words.py", "general.py", "dataset.py", "corpus.py", "tokenizer.py", "tiny_model.py", "copy_task.py")


@dataclass(frozen=True)
class DemoAssets:
    root: Path
    model_dir: Path
    dataset_dir: Path
    alpaca: Path
    chat: Path
    prompt_completion: Path
    text: Path
    general: Path
    general_heldout: Path
    model_info: dict = field(default_factory=dict)  # parameters, pre-training figures
    built: tuple[str, ...] = ()  # the parts this call (re)built: "model", "datasets"

    def dataset_files(self) -> dict[str, Path]:
        return {name: getattr(self, name) for name in DATASET_FILES}


def default_root() -> Path:
    env = os.environ.get("KUBETUNE_DEMO_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kubetune" / "demo"


def _source_hash() -> str:
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update(name.encode() + b"\0" + (here / name).read_bytes())
    return h.hexdigest()


def _key(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def _dataset_params(seed: int) -> dict:
    return {"part": "datasets", "version": BUILDER_VERSION, "seed": seed, "source": _source_hash()}


def _model_params(seed: int, pretrain_steps: int) -> dict:
    import tokenizers
    import torch
    import transformers

    from pipelines.demo.tiny_model import MODEL_SHAPE, PretrainSettings, training_threads

    # The thread count is in the key: it changes the pre-trained weights (tiny_model.training_threads).
    return {"part": "model", "version": BUILDER_VERSION, "seed": seed, "source": _source_hash(),
            "shape": MODEL_SHAPE, "pretrain": asdict(PretrainSettings(steps=pretrain_steps, seed=seed)),
            "threads": training_threads(),
            "libs": [torch.__version__, transformers.__version__, tokenizers.__version__]}


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def _lock(root: Path):
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _up_to_date(marker: Path, key: str, target: Path, files) -> bool:
    data = _read_marker(marker)
    return bool(data and data.get("key") == key and all((target / f).is_file() for f in files))


def _replace_dir(tmp: Path, target: Path) -> None:
    tmp.chmod(0o755)  # mkdtemp makes it private
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def build_datasets(out_dir: Path, seed: int = DEFAULT_SEED) -> dict[str, Path]:
    from pipelines.demo.dataset import write_datasets

    return write_datasets(out_dir, seed=seed)


@functools.lru_cache(maxsize=4)
def _tokenizer_json(seed: int) -> str:
    """The trained tokenizer, kept for the process: training is deterministic and takes seconds."""
    from pipelines.demo.corpus import tokenizer_texts
    from pipelines.demo.tokenizer import train_tokenizer

    return train_tokenizer(tokenizer_texts(seed)).backend_tokenizer.to_str()


def build_model(out_dir: Path, *, seed: int = DEFAULT_SEED, pretrain_steps: int | None = None,
                progress: bool = True) -> dict:
    """Train the tokenizer, initialise and pre-train the model, save both to `out_dir`."""
    from tokenizers import Tokenizer

    from pipelines.demo.tiny_model import PretrainSettings, init_model, param_count, pretrain, save_model
    from pipelines.demo.tokenizer import wrap

    settings = PretrainSettings(seed=seed)
    if pretrain_steps is not None:
        settings = PretrainSettings(steps=pretrain_steps, seed=seed)
    tokenizer = wrap(Tokenizer.from_str(_tokenizer_json(seed)))
    model = init_model(tokenizer, seed)
    info: dict = {"parameters": param_count(model), "vocab_size": len(tokenizer)}
    if settings.steps > 0:
        info["pretrain"] = pretrain(model, tokenizer, settings, progress=progress)
    save_model(model, tokenizer, out_dir)
    return info


def ensure_demo_assets(root: Path | str | None = None, *, pretrain_steps: int | None = None,
                       force: bool = False, seed: int = DEFAULT_SEED, progress: bool = True) -> DemoAssets:
    """Build whatever is missing or stale under `root` and return where everything is.

    `pretrain_steps`: None means the default (a few CPU minutes); 0 skips pre-training (a random
    model, built in seconds: what tests use). A different value from the cached build's rebuilds.
    `force` rebuilds both parts regardless.
    """
    from pipelines.demo.tiny_model import PretrainSettings

    root = Path(root).expanduser() if root is not None else default_root()
    steps = PretrainSettings().steps if pretrain_steps is None else int(pretrain_steps)
    if steps < 0:
        raise ValueError(f"pretrain_steps must be >= 0, got {steps}")
    model_dir, dataset_dir, state = root / "models" / "tiny-llama", root / "datasets", root / ".state"
    built = []
    with _lock(root):
        for stale in [*root.glob(".datasets-*"), *root.glob(".model-*")]:  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        key = _key(_dataset_params(seed))
        if force or not _up_to_date(state / "datasets.json", key, dataset_dir, DATASET_FILES.values()):
            log.info("building demo datasets in %s", dataset_dir)
            (state / "datasets.json").unlink(missing_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".datasets-", dir=root))
            try:
                build_datasets(tmp, seed)
                _replace_dir(tmp, dataset_dir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            _write_json_atomic(state / "datasets.json", {"key": key, "params": _dataset_params(seed)})
            built.append("datasets")

        params = _model_params(seed, steps)
        key = _key(params)
        if force or not _up_to_date(state / "model.json", key, model_dir, MODEL_FILES):
            log.info("building demo model in %s (%d pre-training steps)", model_dir, steps)
            (state / "model.json").unlink(missing_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=root))
            try:
                info = build_model(tmp, seed=seed, pretrain_steps=steps, progress=progress)
                _replace_dir(tmp, model_dir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            _write_json_atomic(state / "model.json", {"key": key, "params": params, "info": info})
            built.append("model")
        info = (_read_marker(state / "model.json") or {}).get("info", {})
    return DemoAssets(root=root, model_dir=model_dir, dataset_dir=dataset_dir,
                      **{name: dataset_dir / rel for name, rel in DATASET_FILES.items()},
                      model_info=info, built=tuple(built))
