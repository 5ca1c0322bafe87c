"""hf:// URIs through the Hugging Face cache (HF_HOME): one file of a dataset repo, or a model snapshot.

    hf://ORG/NAME[@REVISION]                     a model repo (fetch_model)
    hf://datasets/ORG/NAME/PATH[@REVISION]       one file of a dataset repo (fetch_file)
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from components.common.storage_errors import AccessDenied, EndpointUnreachable, NotFound, StorageError

PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt"]  # skipped unless allow_pickle: loading runs code


def hf_file(uri: str) -> Path:
    from huggingface_hub import hf_hub_download

    kind, repo, path, rev = parse_hf(uri)
    if not path:
        raise StorageError(f"{uri}: expected a file inside the repo, as in hf://datasets/ORG/NAME/PATH[@REV]")
    with _hf_errors(uri):
        return Path(hf_hub_download(repo_id=repo, filename=path, repo_type=kind, revision=rev))


def hf_snapshot(uri: str, *, allow_pickle: bool = False) -> Path:
    from huggingface_hub import snapshot_download

    kind, repo, path, rev = parse_hf(uri)
    if path:
        raise StorageError(f"{uri}: expected a whole repo, as in hf://ORG/NAME[@REVISION], "
                           "not a path inside it")
    with _hf_errors(uri):
        snap = Path(snapshot_download(repo_id=repo, repo_type=kind, revision=rev,
                                      ignore_patterns=None if allow_pickle else PICKLE_PATTERNS))
    weights = [p for pat in ("*.safetensors", "*.gguf") for p in snap.glob(pat)]
    if not allow_pickle and (snap / "config.json").is_file() and not weights:
        raise StorageError(f"{uri}: no *.safetensors weights in this snapshot; pickle weights "
                           f"({', '.join(PICKLE_PATTERNS)}) are skipped because loading them can "
                           "run code. Expected a repo with safetensors, or allow_pickle=True for a repo "
                           "you trust")
    return snap


def parse_hf(uri: str) -> tuple[str, str, str, str | None]:
    from huggingface_hub.errors import HfUriError
    from huggingface_hub.utils import parse_hf_uri

    try:
        u = parse_hf_uri(uri)
    except HfUriError as e:
        raise StorageError(f"{uri}: {e}; expected hf://[datasets/]ORG/NAME[@REVISION][/PATH]") from e
    if u.type not in ("model", "dataset"):
        raise StorageError(f"{uri}: a {u.type} URI; expected a model (hf://ORG/NAME) or a dataset "
                           "(hf://datasets/ORG/NAME/PATH)")
    path, rev = u.path_in_repo, u.revision
    if rev is None and "@" in path:  # also accept hf://datasets/ORG/NAME/PATH@REV
        path, rev = path.rsplit("@", 1)
    return u.type, u.id, path, rev


@contextmanager
def _hf_errors(uri: str):
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = constants.ENDPOINT
    try:
        yield
    except LocalEntryNotFoundError as e:
        if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            raise NotFound(f"{uri}: not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                           "HF_HUB_OFFLINE is set; expected it downloaded beforehand, or unset "
                           "HF_HUB_OFFLINE where the network allows") from e
        raise EndpointUnreachable(f"{uri}: could not download from {endpoint} and it is not in the local "
                                  f"Hugging Face cache ({constants.HF_HUB_CACHE}): {e}") from e
    except GatedRepoError as e:
        raise AccessDenied(f"{uri}: gated repository on {endpoint}; expected its terms accepted on "
                           "the Hub and HF_TOKEN set") from e
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        raise NotFound(f"{uri}: {type(e).__name__} on {endpoint}: {str(e).splitlines()[0]}; expected an "
                       "existing repo, revision and path (private repos need HF_TOKEN)") from e
    except OfflineModeIsEnabled as e:
        raise NotFound(f"{uri}: HF_HUB_OFFLINE is set and this is not cached locally") from e
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        cls = AccessDenied if status in (401, 403) else StorageError
        raise cls(f"{uri}: {endpoint} answered {status}: {str(e).splitlines()[0]}") from e


# ---- what a model directory may carry: custom code, and the safetensors headers ----------------------
# Hugging Face model directories (from the Hub, S3 or disk) are checked with these before any step
# loads them: transformers runs shipped Python only with trust_remote_code, and safetensors' own
# errors on a damaged file are a bare SafetensorError without the file's name.
CODE_CONFIGS = ("config.json", "tokenizer_config.json")


def _read_json(path: Path) -> dict:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # unreadable: the loader reports it with its own message
    return data if isinstance(data, dict) else {}


def auto_map_modules(auto_map: dict) -> list[str]:
    """The Python files an `auto_map` refers to ("mod.Class" or "repo--mod.Class" -> "mod.py")."""
    refs = []
    for value in auto_map.values():
        refs += value if isinstance(value, (list, tuple)) else [value]
    names = {ref.split("--")[-1].rsplit(".", 1)[0] + ".py" for ref in refs if isinstance(ref, str) and "." in ref}
    return sorted(names)


def custom_code(model_dir: str | Path) -> dict[str, dict]:
    """{config file: its auto_map} for each of config.json / tokenizer_config.json that maps Auto classes
    to Python code shipped with the model (empty: none)."""
    found = {}
    for name in CODE_CONFIGS:
        auto_map = _read_json(Path(model_dir) / name).get("auto_map")
        if auto_map:
            found[name] = auto_map
    return found


def check_custom_code(model_dir: str | Path, trust_remote_code: bool, what: str,
                      error: type[Exception] = StorageError) -> None:
    """Refuse a model directory that ships its own Python (an `auto_map`) unless trust_remote_code;
    `what` names the model in the message (e.g. "model.base s3://...").

    transformers would otherwise ignore that code silently when the architecture is also built in (and
    load something other than what the model's authors wrote), or fail with a long generic message."""
    if trust_remote_code:
        return
    found = custom_code(model_dir)
    if not found:
        return
    files = sorted({m for auto_map in found.values() for m in auto_map_modules(auto_map)})
    present = [f for f in files if (Path(model_dir) / f).is_file()]
    where = "; ".join(f"{name} auto_map {sorted(auto_map)}" for name, auto_map in found.items())
    raise error(f"{what} ships custom code ({where} -> {', '.join(files) or '?'}"
                f"{'' if present == files else ', not all present'}); kubetune runs code that comes with a "
                "model only with model.trust_remote_code: true (for a model you trust). To use transformers' "
                "own implementation instead, remove auto_map from those files")


def check_safetensors(model_dir: str | Path, error: type[Exception] = StorageError) -> list[Path]:
    """Every *.safetensors file in model_dir has a well-formed header: safetensors' own `safe_open`
    reads it (length, JSON, tensor byte ranges covering the file) without loading a tensor. Its errors
    do not name the file, so this raises `error` naming the first bad one. Returns the files."""
    from safetensors import SafetensorError, safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError, ValueError) as e:
            raise error(f"{path}: not a valid safetensors file ({e}); expected weights saved by save_pretrained "
                        "(safetensors), not a damaged or forged file") from None
    return files
