"""Checkpoints that survive preemption: upload after every save, resume from the newest complete one,
and turn SIGTERM into "save at the next step boundary, upload, exit non-zero".

Layout: ``<checkpoint_uri>/checkpoint-<step>/`` holds what the Trainer wrote (adapter or weights,
optimizer, scheduler, RNG and trainer state), and its ``_manifest.json`` is written last by
`publish_dir`. So a checkpoint without a manifest is an interrupted upload, and one whose files do
not match their manifest's sha256 is corrupt; both are skipped with a warning, never loaded.

Exit code: a run stopped by SIGTERM exits with ``EXIT_PREEMPTED`` (75, EX_TEMPFAIL: "try again"),
after its checkpoint is uploaded, so that the KFP retry resumes from it.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from components.common import storage
from components.common.errors import KubetuneError

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75
MANIFEST = "_manifest.json"
_CKPT_RE = re.compile(r"checkpoint-(\d+)/(.+)$")


class Preempted(KubetuneError):
    """Training stopped on SIGTERM after saving and uploading a checkpoint; retry to resume."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, step: int, uri: str | None):
        self.step, self.uri = step, uri
        where = f"uploaded to {uri}" if uri else "saved locally (no checkpoint URI)"
        super().__init__(f"stopped by SIGTERM at step {step}; checkpoint {where}. Exiting with code "
                         f"{EXIT_PREEMPTED} so that a retry resumes from it")


@dataclass
class Resume:
    step: int
    uri: str
    local_dir: Path


def list_checkpoints(checkpoint_uri: str) -> tuple[dict[int, str], set[int]]:
    """({step: dir uri} of checkpoints with a manifest, {steps with files but no manifest})."""
    if storage.is_s3(checkpoint_uri):
        prefix = str(checkpoint_uri).rstrip("/") + "/"
        try:
            rels = [o.uri[len(prefix):] for o in storage.list_objects(prefix) if o.uri.startswith(prefix)]
        except storage.NotFound:
            return {}, set()
    else:
        root = storage.local_path(checkpoint_uri)
        files = [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else []
        rels = [p.relative_to(root).as_posix() for p in files]
    complete: dict[int, str] = {}
    seen: set[int] = set()
    for rel in rels:
        m = _CKPT_RE.match(rel)
        if not m:
            continue
        step = int(m.group(1))
        seen.add(step)
        if m.group(2) == MANIFEST:
            complete[step] = storage.join_uri(checkpoint_uri, f"checkpoint-{step}")
    return complete, seen - set(complete)


def _usable(local: Path, step: int) -> str | None:
    """Why a fetched checkpoint cannot be resumed from, or None when it can."""
    state = local / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json"
    try:
        got = json.loads(state.read_text()).get("global_step")
    except ValueError:
        return "trainer_state.json is not valid JSON"
    if got != step:
        return f"trainer_state.json says step {got}"
    if not any(local.glob("*.safetensors")):
        return "no *.safetensors weights"
    return None


def find_resume(checkpoint_uri: str | None, config_hash: str | None = None) -> Resume | None:
    """The newest complete, verified checkpoint under checkpoint_uri; None to start from step 0."""
    if not checkpoint_uri:
        return None
    complete, incomplete = list_checkpoints(checkpoint_uri)
    for step in sorted(incomplete, reverse=True):
        if not complete or step > max(complete):
            log.warning("checkpoint-%d under %s has files but no %s (an interrupted upload): skipped",
                        step, checkpoint_uri, MANIFEST)
    for step in sorted(complete, reverse=True):
        uri = complete[step]
        try:
            manifest = storage.read_manifest(uri)
            lineage = manifest.lineage if manifest else {}
            if config_hash and lineage.get("config_hash") not in (None, config_hash):
                log.warning("checkpoint-%d (%s) was written with another config (hash %s, now %s): skipped",
                            step, uri, str(lineage.get("config_hash"))[:12], config_hash[:12])
                continue
            local = storage.fetch_dir(uri)
        except storage.StorageError as e:
            log.warning("checkpoint-%d (%s) is corrupt or unreadable, skipped: %s", step, uri, e)
            continue
        why = _usable(Path(local), step)
        if why:
            log.warning("checkpoint-%d (%s) is incomplete (%s): skipped", step, uri, why)
            continue
        log.info("resuming from checkpoint-%d (%s)", step, uri)
        return Resume(step=step, uri=uri, local_dir=Path(local))
    return None


class UploadCheckpoints(TrainerCallback):
    """After the Trainer saved checkpoint-<step> locally, publish it (files, then manifest)."""

    def __init__(self, checkpoint_uri: str | None, lineage: dict):
        self.checkpoint_uri = checkpoint_uri
        self.lineage = lineage
        self.last_uploaded: tuple[int, str] | None = None

    def on_save(self, args, state, control, **kwargs):
        if not self.checkpoint_uri or not state.is_world_process_zero:
            return
        step = state.global_step
        local = Path(args.output_dir) / f"checkpoint-{step}"
        dest = storage.join_uri(self.checkpoint_uri, f"checkpoint-{step}")
        t0 = time.monotonic()
        try:
            storage.publish_dir(local, dest, producer="train", lineage={**self.lineage, "step": step},
                                overwrite=True)
        except storage.StorageError as e:
            # Training can go on; a preemption now would lose the steps since the last upload.
            log.error("checkpoint-%d: upload to %s failed: %s", step, dest, e)
            return
        self.last_uploaded = (step, dest)
        log.info("checkpoint-%d uploaded to %s in %.1fs", step, dest, time.monotonic() - t0)


class StopOnSignal(TrainerCallback):
    """SIGTERM sets a flag; at the next optimizer-step boundary the Trainer saves and stops."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self.received: int | None = None
        self.stopped_at: int | None = None
        self._signals = signals
        self._previous: dict = {}

    def install(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in self._signals:
                self._previous[s] = signal.signal(s, self._handle)
        else:
            log.warning("not on the main thread: SIGTERM will not trigger a checkpoint")
        return self

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            log.warning("received %s: saving a checkpoint at the next step boundary, then exiting with %d",
                        signal.Signals(signum).name, EXIT_PREEMPTED)
        self.received = signum

    def on_step_end(self, args, state, control, **kwargs):
        if self.received is not None and self.stopped_at is None:
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control
