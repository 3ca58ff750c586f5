"""``AdaptiveSamplerHandler``: where the sampler, the ratio policy and the validation metrics meet."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from monai.utils import IgniteInfo, min_version, optional_import

from monai_breastlt.data.sampler import AdaptiveRatioSampler
from monai_breastlt.rl.policies import RatioPolicy

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
mlflow, _ = optional_import("mlflow")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator")

__all__ = ["AdaptiveSamplerHandler"]


class AdaptiveSamplerHandler:
    """
    After each validation, feed the per-class report to the ratio policy and set the sampler's ratios.

    Attach it to the **trainer** (in ``train_handlers``); it acts whenever ``evaluator`` completes a run, so it
    follows MONAI's ``ValidationHandler`` wherever that validates: once per epoch (``epoch_level=True``) or every
    ``interval`` iterations (``epoch_level=False``), which gives the policy many decisions in a short run. The
    sampler re-plans the rest of an epoch when its ratios change, so a decision made mid-epoch takes effect at once.
    It reads the report of the evaluator's :py:class:`monai_breastlt.metrics.LongTailMetric` named
    ``metric_name``. The ratios are

    - kept per decision in ``trainer.state.ratio_history`` (``{"epoch", "iteration", "ratios", "ppo_updates"}`` rows;
      ``ppo_updates``: the policy's learning updates so far, 0 for policies that do not learn);
    - put in ``trainer.state.metrics`` as ``ratio/<class>``, so MONAI's ``MLFlowHandler`` (``--tracking mlflow``)
      logs them per epoch;
    - logged to the active MLflow run, if the user started one with ``mlflow.start_run()``.

    MLflow failures are logged as warnings; training goes on.

    Args:
        sampler: the training loader's :py:class:`~monai_breastlt.data.AdaptiveRatioSampler`.
        policy: any :py:class:`~monai_breastlt.rl.RatioPolicy` (fixed, heuristic, multi-agent PPO).
        evaluator: the validation engine run by ``ValidationHandler``.
        metric_name: name of the ``LongTailMetric`` in the evaluator.
        class_names: names used in logs (default ``class_<i>``).
        log_mlflow: log ratios to an active fluent MLflow run.
        initial_ratios: ratios before the first validation (default: the sampler's current ones).
        decide_every: act on every ``decide_every``-th validation only (e.g. once an epoch while validating twice an
            epoch for checkpoint selection).
    """

    def __init__(
        self,
        sampler: AdaptiveRatioSampler,
        policy: RatioPolicy,
        evaluator: Engine,
        metric_name: str = "long_tail",
        class_names: Sequence[str] | None = None,
        log_mlflow: bool = True,
        initial_ratios: float | Sequence[float] | None = None,
        decide_every: int = 1,
    ) -> None:
        if isinstance(decide_every, bool) or not isinstance(decide_every, int) or decide_every < 1:
            raise ValueError(f"decide_every must be a positive integer, got {decide_every!r}.")
        self.decide_every = decide_every
        self.validations = 0
        self.sampler = sampler
        self.policy = policy
        self.evaluator = evaluator
        self.metric_name = metric_name
        self.class_names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(sampler.num_classes)]
        if len(self.class_names) != sampler.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names for {sampler.num_classes} classes.")
        self.log_mlflow = log_mlflow
        if initial_ratios is not None:
            sampler.set_ratios(initial_ratios)
        self.policy.reset(sampler.real_counts, sampler.ratios)
        self.sampler.set_ratios(self.policy.ratios)
        self.seconds = 0.0
        self.history: list[dict] = []  # shared with trainer.state.ratio_history, restored on resume
        self.logger = logging.getLogger(__name__)

        self.trainer: Engine | None = None

    def attach(self, engine: Engine) -> None:
        """Attach to the trainer ``engine``: act on every ``COMPLETED`` of the evaluator."""
        self.trainer = engine
        if not self.evaluator.has_event_handler(self, Events.COMPLETED):
            self.evaluator.add_event_handler(Events.COMPLETED, self)
        engine.state.ratio_history = self.history

    @property
    def decisions(self) -> int:
        """Policy decisions so far (one per validation)."""
        return len(self.history)

    def __call__(self, engine: Engine) -> None:
        """Act on a completed validation (``engine`` is the evaluator) of the attached trainer."""
        if self.trainer is None:
            raise RuntimeError("AdaptiveSamplerHandler: attach(trainer) before the evaluator runs.")
        self.validations += 1
        if self.validations % self.decide_every:
            return
        start = time.perf_counter()
        details = getattr(self.evaluator.state, "metric_details", None) or {}
        if self.metric_name not in details:
            raise KeyError(
                f"AdaptiveSamplerHandler: the evaluator has no LongTailMetric named '{self.metric_name}' "
                f"(metric details present: {sorted(details)})."
            )
        state = self.trainer.state
        total = (state.max_epochs or 1) * (state.epoch_length or 1)
        progress = min(state.iteration / total, 1.0)
        ratios = np.asarray(self.policy.update(details[self.metric_name], progress), dtype=float)
        self.sampler.set_ratios(ratios)
        row = {"epoch": int(state.epoch), "iteration": int(state.iteration), "ratios": self.sampler.effective_ratios(),
               "ppo_updates": int(getattr(self.policy, "num_updates", 0))}
        self.history.append(row)
        state.ratio_history = self.history
        named = {f"ratio/{n}": r for n, r in zip(self.class_names, row["ratios"])}
        state.metrics.update(named)
        self.seconds += time.perf_counter() - start
        self.logger.info("epoch %d iteration %d synthetic ratios: %s", state.epoch, state.iteration,
                         ", ".join(f"{r:.2f}" for r in row["ratios"]))
        if self.log_mlflow:
            self._log_mlflow(named, row["iteration"])

    def _log_mlflow(self, named: dict[str, float], step: int) -> None:
        try:
            if mlflow.active_run() is None:
                return
            mlflow.log_metrics(named, step=step)
        except Exception as e:  # a locked or full store must not stop training
            self.logger.warning("MLflow logging of the synthetic ratios failed (%s); training goes on.", e)

    def state_dict(self) -> dict:
        """Policy and sampler state (use with ``CheckpointSaver`` to resume)."""
        return {"policy": self.policy.state_dict(), "sampler": self.sampler.state_dict(), "history": list(self.history),
                "validations": self.validations}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.sampler.load_state_dict(state["sampler"])
        self.history[:] = state.get("history", [])
        self.validations = int(state.get("validations", len(self.history) * self.decide_every))
