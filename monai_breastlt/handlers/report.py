"""``LongTailReportHandler``: report JSON, confusion matrix and ratio plots, logged to MLflow as artifacts;
``ClassProbabilityCSVSaver``: per-image class probabilities under a header of class names."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from monai.data import CSVSaver
from monai.utils import IgniteInfo, min_version, optional_import

from monai_breastlt.utils import atomic_open, atomic_write_json, rank_and_world_size
from monai_breastlt.visualize import plot_confusion_matrix, plot_ratio_trajectory

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
mlflow, _ = optional_import("mlflow")
MLFlowHandler, _ = optional_import("monai.handlers", name="MLFlowHandler")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator")

__all__ = ["ClassProbabilityCSVSaver", "LongTailReportHandler", "PredictionTable", "ValidationHistory"]


class PredictionTable:
    """
    Write an evaluator's per-image predictions to a CSV when it completes: ``image``, ``label``, ``predicted`` and one
    probability column per class (softmax of the logits), one row per item in the order of ``items`` (the loader must
    not shuffle). Per-image rows let results be re-scored later (bootstrap intervals, a malignancy reading...).

    Args:
        output_path: the CSV (written atomically).
        items: the evaluated datalist entries, in loader order (their ``image`` names the rows).
        class_names: class names in label order (the header).
    """

    def __init__(self, output_path: str | os.PathLike, items: Sequence[dict], class_names: Sequence[str]) -> None:
        self.output_path = Path(output_path)
        self.items, self.class_names = list(items), list(class_names)
        self.rows: list[tuple] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self)

    def _collect(self, engine: Engine) -> None:
        import torch
        from monai.handlers import from_engine

        preds, labels = from_engine(["pred", "label"])(engine.state.output)
        for p, y in zip(preds, labels):
            prob = torch.softmax(torch.as_tensor(p).float().flatten(), 0)
            self.rows.append((int(torch.as_tensor(y).flatten()[0]), prob.tolist()))

    def __call__(self, engine: Engine) -> None:
        import csv
        import io

        if len(self.rows) != len(self.items):
            raise RuntimeError(f"PredictionTable: {len(self.rows)} predictions for {len(self.items)} items.")
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["image", "label", "predicted", *(f"p_{c}" for c in self.class_names)])
        for item, (label, prob) in zip(self.items, self.rows):
            writer.writerow([item["image"], self.class_names[label], self.class_names[max(range(len(prob)), key=prob.__getitem__)],
                             *(f"{p:.6f}" for p in prob)])
        with atomic_open(self.output_path, "w", newline="") as f:
            f.write(buf.getvalue())


class ValidationHistory:
    """
    Keep the evaluator's long-tail figures of every validation of a training run, in
    ``trainer.state.val_history`` (rows ``{"epoch", "iteration", "macro_f1", "balanced_accuracy", "head_recall",
    "tail_recall"}``), so a report can show whether the validation score had stopped rising. Put it in the resume
    handlers' ``save_dict`` / ``load_dict`` so a resumed run keeps the rows from before.

    Args:
        evaluator: the validation engine (run by MONAI's ``ValidationHandler``).
        metric_name: the name of its :py:class:`~monai_breastlt.metrics.LongTailMetric`.
    """

    keys = ("macro_f1", "balanced_accuracy", "head_recall", "tail_recall")

    def __init__(self, evaluator: Engine, metric_name: str = "long_tail") -> None:
        self.evaluator, self.metric_name = evaluator, metric_name
        self.rows: list[dict] = []
        self.trainer: Engine | None = None

    def attach(self, engine: Engine) -> None:
        """Attach to the trainer ``engine``: record on every ``COMPLETED`` of the evaluator."""
        self.trainer = engine
        if not self.evaluator.has_event_handler(self, Events.COMPLETED):
            self.evaluator.add_event_handler(Events.COMPLETED, self)
        engine.state.val_history = self.rows

    def __call__(self, engine: Engine) -> None:
        details = (getattr(engine.state, "metric_details", None) or {}).get(self.metric_name)
        if details is None or self.trainer is None:
            return
        state = self.trainer.state
        self.rows.append({"epoch": int(state.epoch), "iteration": int(state.iteration),
                          **{k: float(details[k]) for k in self.keys if k in details}})

    def state_dict(self) -> dict:
        return {"rows": list(self.rows)}

    def load_state_dict(self, state: dict) -> None:
        self.rows[:] = state.get("rows", [])


def _newest_match(path: Path) -> Path | None:
    """``path`` itself, or for a name with ``*`` the newest file it matches (``None`` when none does)."""
    if "*" not in path.name:
        return path
    found = [p for p in path.parent.glob(path.name) if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


class LongTailReportHandler:
    """
    When the engine completes, write ``<output_dir>/<prefix>report.json`` (the evaluator's long-tail report, with the
    trainer's ``ratio_history`` and ``val_history`` where it keeps them),
    ``confusion_matrix.png`` and, for a trainer with a ratio history, ``ratio_trajectory.png``; then log them as
    artifacts of the run of MONAI's ``MLFlowHandler`` attached to the same engine (``--tracking mlflow``), or of
    the active fluent MLflow run. MLflow failures are warnings.

    Attach it before MONAI's ``MLFlowHandler`` closes the run: list it in the engine's handlers (the tracking
    patch appends its handler last). In a multi-process run only rank 0 writes and logs.

    Args:
        output_dir: folder of the files.
        class_names: class names in label order.
        evaluator: the engine holding the ``LongTailMetric`` details (default: the attached engine).
        metric_name: the ``LongTailMetric`` name.
        prefix: file name prefix (e.g. ``"test_"``).
        extra_artifacts: further files or folders to log (e.g. the checkpoint, the pool's sample grid); missing
            ones are skipped. A name with ``*`` logs the newest file it matches (e.g. ``OUT/config_*.json``: the
            executed config that MONAI's tracking writes, whose own artifact path is lost with a plain ``--output_dir``).
        params: run parameters to log (e.g. the policy and sampler settings of the bundle config).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str],
        evaluator: Engine | None = None,
        metric_name: str = "long_tail",
        prefix: str = "",
        extra_artifacts: Sequence[str | os.PathLike] = (),
        params: dict | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.evaluator, self.metric_name, self.prefix = evaluator, metric_name, prefix
        self.extra_artifacts = [Path(p) for p in extra_artifacts]
        self.params = {str(k): str(v) for k, v in (params or {}).items()}
        self.files: list[Path] = []
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if rank_and_world_size()[0] != 0:  # a multi-process run reports once, from rank 0
            return
        source = self.evaluator or engine
        report = (getattr(source.state, "metric_details", None) or {}).get(self.metric_name)
        history = getattr(engine.state, "ratio_history", [])
        self.files = []
        out = self.output_dir
        if report is not None:
            atomic_write_json({"classes": self.class_names, **report, "ratio_history": history,
                               "val_history": getattr(engine.state, "val_history", [])}, out / f"{self.prefix}report.json")
            plot_confusion_matrix(report["confusion_matrix"], self.class_names, out / f"{self.prefix}confusion_matrix.png")
            self.files += [out / f"{self.prefix}report.json", out / f"{self.prefix}confusion_matrix.png"]
        if history:
            plot_ratio_trajectory(history, self.class_names, out / f"{self.prefix}ratio_trajectory.png")
            self.files.append(out / f"{self.prefix}ratio_trajectory.png")
        self._log_artifacts(engine)

    def _log_artifacts(self, engine: Engine) -> None:
        paths = self.files + [p for p in map(_newest_match, self.extra_artifacts) if p is not None and p.exists()]
        try:
            handler = next(
                (getattr(h, "__self__", h) for h, *_ in engine._event_handlers.get(Events.COMPLETED, [])
                 if isinstance(getattr(h, "__self__", h), MLFlowHandler)),
                None,
            )
            if handler is not None and handler.cur_run is not None:
                for k, v in self.params.items():
                    handler.client.log_param(handler.cur_run.info.run_id, k, v)
            elif self.params and mlflow.active_run() is not None:
                mlflow.log_params(self.params)
            for p in paths:
                if handler is not None and handler.cur_run is not None:
                    log = handler.client.log_artifacts if p.is_dir() else handler.client.log_artifact
                    log(handler.cur_run.info.run_id, str(p))
                elif mlflow.active_run() is not None:
                    (mlflow.log_artifacts if p.is_dir() else mlflow.log_artifact)(str(p))
        except Exception as e:  # a locked or full store must not fail the run
            self.logger.warning("MLflow artifact logging failed (%s); the files stay in %s.", e, self.output_dir)


class ClassProbabilityCSVSaver(CSVSaver):
    """
    MONAI's ``CSVSaver`` for class probabilities, with a header row ``filename,<class 0>,<class 1>,...``; the file is
    written whole and atomically when ``finalize`` is called (an earlier file is replaced only then). Give it as
    ``saver`` to MONAI's ``ClassificationSaver``, which gathers the ranks' rows and finalizes on its ``save_rank``.

    Args:
        class_names: class names in label order (the header, one column per class).
        output_dir: folder of the file.
        filename: file name.
        delimiter: column separator.
    """

    def __init__(self, class_names: Sequence[str], output_dir: str | os.PathLike = "./", filename: str = "predictions.csv",
                 delimiter: str = ",") -> None:
        super().__init__(output_dir=output_dir, filename=filename, overwrite=False, delimiter=delimiter)
        self.class_names = list(class_names)

    def finalize(self) -> None:
        """Write the header and one row per image, then clear the cache.

        Raises:
            ValueError: a row holds another number of values than there are classes.
        """
        with atomic_open(self._filepath, "w", newline="") as f:
            writer = csv.writer(f, delimiter=self.delimiter)
            writer.writerow(["filename", *self.class_names])
            for name, values in self._cache_dict.items():
                values = values.flatten()
                if len(values) != len(self.class_names):
                    raise ValueError(f"{name}: {len(values)} values for {len(self.class_names)} classes {self.class_names}.")
                writer.writerow([name, *(float(v) for v in values)])
        self.reset_cache()
