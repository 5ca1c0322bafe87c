"""Live training metrics pushed to a Prometheus Pushgateway (prometheus-client).

Enabled when ``train.pushgateway`` or the ``PROMETHEUS_PUSHGATEWAY`` environment variable is set.
Every Trainer log event replaces the group ``job="kubetune_train", run_id="<run id>"`` with:

    kubetune_train_loss               training loss of the last logging window
    kubetune_train_eval_loss          last eval loss (once an evaluation ran)
    kubetune_train_learning_rate      current learning rate
    kubetune_train_tokens_per_second  non-pad tokens per second since the previous push
    kubetune_train_step               optimizer step
    kubetune_train_epoch              fractional epoch

A failing push is logged (once per failure streak) and never stops training.
"""

from __future__ import annotations

import logging
import os
import time

from transformers import TrainerCallback

log = logging.getLogger(__name__)

JOB = "kubetune_train"
ENV = "PROMETHEUS_PUSHGATEWAY"
GAUGES = {
    "loss": "Training loss (mean over the last logging window)",
    "eval_loss": "Loss on the test split at the last evaluation",
    "learning_rate": "Learning rate",
    "tokens_per_second": "Non-pad training tokens per second since the previous push",
    "step": "Optimizer step",
    "epoch": "Fractional epoch",
}


def pushgateway_url(configured: str | None) -> str | None:
    return configured or os.environ.get(ENV) or None


class LiveCurveCallback(TrainerCallback):
    """What both live views of training (the Pushgateway, MLflow) read at every Trainer log event:
    `curve_point` gives loss, eval_loss and learning_rate when the event has them, and the non-pad
    tokens per second since the previous event."""

    _last: tuple[float, int] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = (time.monotonic(), state.num_input_tokens_seen)

    def curve_point(self, state, logs: dict | None) -> dict[str, float]:
        logs = logs or {}
        point = {key: logs[key] for key in ("loss", "eval_loss", "learning_rate")
                 if isinstance(logs.get(key), int | float)}
        now, tokens = time.monotonic(), state.num_input_tokens_seen
        if self._last is not None and now > self._last[0] and tokens > self._last[1]:
            point["tokens_per_second"] = (tokens - self._last[1]) / (now - self._last[0])
            self._last = (now, tokens)
        return point


class PushgatewayCallback(LiveCurveCallback):
    def __init__(self, url: str, run_id: str, job: str = JOB, timeout: float = 5.0):
        from prometheus_client import CollectorRegistry, Gauge

        self.url, self.run_id, self.job, self.timeout = url, run_id, job, timeout
        self.registry = CollectorRegistry()
        self.gauges = {k: Gauge(f"{job}_{k}", doc, registry=self.registry) for k, doc in GAUGES.items()}
        self._failing = False
        self.pushes = 0

    def push(self) -> bool:
        from prometheus_client import push_to_gateway

        try:
            push_to_gateway(self.url, job=self.job, registry=self.registry,
                            grouping_key={"run_id": self.run_id}, timeout=self.timeout)
        except Exception as e:  # network errors, HTTP errors: metrics are best effort
            if not self._failing:
                log.warning("Pushgateway %s: push failed (%s: %s); training continues, retrying at each log",
                            self.url, type(e).__name__, e)
            self._failing = True
            return False
        if self._failing:
            log.info("Pushgateway %s: pushing again", self.url)
        self._failing = False
        self.pushes += 1
        return True

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key, value in self.curve_point(state, logs).items():
            self.gauges[key].set(value)
        self.gauges["step"].set(state.global_step)
        self.gauges["epoch"].set(state.epoch or 0.0)
        self.push()

    def on_train_end(self, args, state, control, **kwargs):
        self.gauges["step"].set(state.global_step)
        self.push()


class TrackingCallback(LiveCurveCallback):
    """The training curve into the pipeline run's MLflow run (components/common/tracking.py), at every
    Trainer log event: train.loss, train.eval_loss, train.learning_rate and train.tokens_per_second
    (non-pad tokens per second since the previous event), at the optimizer step. The tracker never
    raises: when the server goes away it warns once and training goes on."""

    def __init__(self, tracker):
        self.tracker = tracker

    def on_log(self, args, state, control, logs=None, **kwargs):
        metrics = {f"train.{key}": value for key, value in self.curve_point(state, logs).items()}
        self.tracker.log_metrics(metrics, step=state.global_step)
