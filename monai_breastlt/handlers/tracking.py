"""MLflow tracking that never stops training: a locked, unreachable or broken store turns into one warning."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai.handlers import MLFlowHandler
from monai.utils import IgniteInfo, ensure_tuple, min_version, optional_import

if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator")

__all__ = ["FaultTolerantMLFlowHandler", "executed_config_path", "mlflow_tracking_settings"]


# what MONAI's tracking patch records as the executed config's path when ``output_dir`` is a plain path (not a ``$``
# expression): it appends `` + '/config_<time>.json'`` to the raw value, which then resolves to that literal string
_LITERAL_JOIN = re.compile(r"^(?P<folder>[^$].*) \+ '(?P<name>/[^']+)'$")


def executed_config_path(path: str | os.PathLike) -> str:
    """The file of MONAI's executed-config record (``save_execute_config``), whether ``output_dir`` was an expression
    (the default ``$@bundle_root + '/outputs'``) or a plain path (``--output_dir runs/cls``): in the second case MONAI's
    tracking patch leaves ``"runs/cls + '/config_<time>.json'"``, which is read here as
    ``runs/cls/config_<time>.json``. Any other path is returned unchanged."""
    text = str(path)
    m = _LITERAL_JOIN.match(text)
    return m.group("folder") + m.group("name") if m and not os.path.exists(text) else text


class FaultTolerantMLFlowHandler(MLFlowHandler):
    """
    MONAI's ``MLFlowHandler`` for runs that must not die because of tracking: the first failure of the store
    (locked sqlite file, unreachable server, full disk...) is logged once as a warning, MLflow logging is switched
    off for the rest of the run, and every epoch's metrics from then on are appended to
    ``<fallback_dir>/mlflow_fallback_metrics.jsonl`` so nothing is lost. The executed config that MONAI's tracking
    patch writes is logged as an artifact also when ``output_dir`` is a plain path (:func:`executed_config_path`).
    Same arguments as ``MLFlowHandler`` plus:

    Args:
        fallback_dir: folder of the local metrics file (default: the current folder).
        kwargs: passed to ``MLFlowHandler``.
    """

    def __init__(self, fallback_dir: str | os.PathLike | None = None, **kwargs: Any) -> None:
        if "artifacts" in kwargs:
            kwargs["artifacts"] = [executed_config_path(a) for a in ensure_tuple(kwargs["artifacts"]) if a]
        self.fallback_path = Path(fallback_dir or ".") / "mlflow_fallback_metrics.jsonl"
        self.failed: BaseException | None = None
        self._uri = kwargs.get("tracking_uri")
        self._log = logging.getLogger(__name__)
        try:
            super().__init__(**kwargs)
        except Exception as e:  # noqa: BLE001 - e.g. a corrupt sqlite store fails when the client is created
            # the attributes ``attach`` reads, so the handler still registers and keeps metrics locally
            self.iteration_log, self.epoch_log = kwargs.get("iteration_log", True), kwargs.get("epoch_log", True)
            self.close_on_complete, self.client = kwargs.get("close_on_complete", False), None
            self._fail(e)

    def _fail(self, e: BaseException) -> None:
        self.failed = e
        self._log.warning(
            f"MLflow tracking at {self._uri} failed ({type(e).__name__}: {str(e)[:300]}); training "
            f"continues without MLflow, epoch metrics go to {self.fallback_path}."
        )

    def _try(self, method, *args) -> None:
        if self.failed is None:
            try:
                method(*args)
            except Exception as e:  # noqa: BLE001 - any store failure; training must go on
                self._fail(e)

    def _keep_locally(self, engine: Engine) -> None:
        metrics = {k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))}
        if not metrics:
            return
        row = {"time": time.time(), "epoch": int(engine.state.epoch), "iteration": int(engine.state.iteration), "metrics": metrics}
        try:
            self.fallback_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.fallback_path, "a") as f:  # append-only log: a torn last line never corrupts earlier ones
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            self._log.warning(f"could not keep metrics in {self.fallback_path}: {e}")

    def start(self, engine: Engine) -> None:
        self._try(super().start, engine)

    def iteration_completed(self, engine: Engine) -> None:
        self._try(super().iteration_completed, engine)

    def epoch_completed(self, engine: Engine) -> None:
        self._try(super().epoch_completed, engine)
        if self.failed is not None:
            self._keep_locally(engine)

    def complete(self) -> None:  # MONAI's ``complete`` takes no engine (ignite passes one only if asked for)
        self._try(super().complete)

    def close(self) -> None:
        if self.client is None:
            return
        try:
            super().close()
        except Exception as e:  # noqa: BLE001
            self._log.warning(f"closing the MLflow run failed ({type(e).__name__}: {str(e)[:300]}).")


def mlflow_tracking_settings(**configs: Any) -> dict:
    """MONAI's default MLflow tracking settings with :py:class:`FaultTolerantMLFlowHandler` instead of
    ``MLFlowHandler``; pass as ``tracking=`` of ``ConfigWorkflow`` / ``monai.bundle.run``. Keyword arguments
    override the settings' ``configs`` (e.g. ``tracking_uri``, ``experiment_name``, ``run_name``)."""
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    settings = copy.deepcopy(DEFAULT_MLFLOW_SETTINGS)
    for key in settings["handlers_id"]:
        handler = settings["configs"][key]
        handler["_target_"] = "monai_breastlt.handlers.FaultTolerantMLFlowHandler"
        handler["fallback_dir"] = "@output_dir"
    settings["configs"].update(configs)
    return settings
