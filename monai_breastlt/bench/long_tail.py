"""``bench lt``: every long-tail arm with the same backbone, epoch budget, split and seeds, through the
classification bundle; a table with the spread over seeds, a bar plot, one MLflow experiment; resumable."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from monai_breastlt.workflows import find_bundles, run_bundle
from monai_breastlt.data import load_datalist_file, prepare_benchmark_data
from monai_breastlt.handlers import mlflow_tracking_settings
from monai_breastlt.utils import atomic_open, atomic_write_json, read_json

__all__ = ["ARMS", "BASELINE_ARMS", "RL_ARMS", "SYNTHETIC_ARMS", "LongTailBenchmark", "summarize_runs"]

logger = logging.getLogger(__name__)

# bundle overrides of each arm; "stage1": the arm whose trained model this one starts from (trained first)
ARMS: dict[str, dict] = {
    "ce": {"loss_name": "ce"},
    "weighted_ce": {"loss_name": "weighted_ce"},
    "focal": {"loss_name": "focal"},
    "cb_focal": {"loss_name": "cb_focal"},
    "ldam_drw": {"loss_name": "ldam_drw"},
    "balanced_softmax": {"loss_name": "balanced_softmax"},
    "logit_adjusted": {"loss_name": "logit_adjusted"},
    "logit_adjusted_posthoc": {"stage1": "ce", "posthoc_tau": 1.0},  # evaluation of the CE model only
    "cb_oversampling": {"sampler_target": "balanced"},
    "crt": {"stage1": "ce", "classifier_only": True, "sampler_target": "balanced"},
    "syn_fill": {"policy_name": "fill", "sampler_target": "balanced", "synthetic": True},
    "syn_fixed": {"policy_name": "fixed", "sampler_target": "balanced", "synthetic": True},
    "syn_heuristic": {"policy_name": "heuristic", "sampler_target": "balanced", "synthetic": True},
    "syn_rl": {"policy_name": "rl", "sampler_target": "balanced", "synthetic": True},
    # the same agents, warm-started on a proxy of the run (ToyRatioProcess with the training counts), then online
    "syn_rl_pretrained": {"policy_name": "rl", "sampler_target": "balanced", "synthetic": True, "pretrain": True},
}
RL_ARMS = ("syn_rl", "syn_rl_pretrained")
SYNTHETIC_ARMS = tuple(a for a, o in ARMS.items() if o.get("synthetic"))
BASELINE_ARMS = tuple(a for a in ARMS if a not in SYNTHETIC_ARMS)
METRICS = ("macro_f1", "balanced_accuracy", "g_mean", "head_recall", "medium_recall", "tail_recall", "accuracy")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summarize_runs(runs: Sequence[dict], arms: Sequence[str]) -> list[dict]:
    """Mean and standard deviation over seeds of every metric, one row per arm (in ``arms`` order)."""
    rows = []
    for arm in arms:
        sel = [r for r in runs if r["arm"] == arm]
        if not sel:
            continue
        row: dict = {"arm": arm, "seeds": len(sel)}
        for m in METRICS:
            row[f"{m}_mean"], row[f"{m}_std"] = _mean_std([r[m] for r in sel])
        rows.append(row)
    return rows


def _fmt(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{100 * mean:.1f} ± {100 * std:.1f}"


def format_markdown(rows: Sequence[dict], comparison: dict | Sequence[dict] | None = None) -> str:
    """Markdown table (percent, mean ± std over seeds) and the comparison against the best baseline."""
    cols = [("macro_f1", "macro-F1"), ("balanced_accuracy", "balanced acc."), ("g_mean", "G-mean"),
            ("head_recall", "head recall"), ("medium_recall", "medium recall"), ("tail_recall", "tail recall")]
    lines = ["| arm | seeds | " + " | ".join(c for _, c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['seeds']} | " + " | ".join(_fmt(r[f'{m}_mean'], r[f'{m}_std']) for m, _ in cols) + " |")
    comparisons = [comparison] if isinstance(comparison, dict) else [c for c in comparison or [] if c]
    if comparisons:
        lines.append("")
    for c in comparisons:
        lines += [
            f"{c['method']} vs the best baseline by macro-F1 ({c['best_baseline']}): macro-F1 {c['d_macro_f1']:+.1f} "
            f"(target >= +3), tail recall {c['d_tail_recall']:+.1f} (target >= +5); head recall vs ce "
            f"{c['d_head_recall_vs_ce']:+.1f} (target within 1 point). Percentage points, means over seeds.",
        ]
    return "\n".join(lines) + "\n"


def compare_to_baselines(rows: Sequence[dict], method: str = "syn_rl") -> dict | None:
    """Differences (percentage points) of ``method`` against the best baseline arm by macro-F1 and against CE."""
    by = {r["arm"]: r for r in rows}
    base = [r for r in rows if r["arm"] in BASELINE_ARMS and not math.isnan(r["macro_f1_mean"])]
    if method not in by or not base:
        return None
    best = max(base, key=lambda r: r["macro_f1_mean"])
    m = by[method]
    ce = by.get("ce", best)
    return {
        "method": method, "best_baseline": best["arm"],
        "d_macro_f1": 100 * (m["macro_f1_mean"] - best["macro_f1_mean"]),
        "d_tail_recall": 100 * (m["tail_recall_mean"] - best["tail_recall_mean"]),
        "d_head_recall_vs_ce": 100 * (m["head_recall_mean"] - ce["head_recall_mean"]),
    }


class LongTailBenchmark:
    """
    Train and test every arm of :data:`ARMS` for every seed with the classification bundle, under one budget.

    Each run lives in ``<out_dir>/runs/<arm>/seed<k>/``; a run with a ``test_report.json`` is finished and never
    re-run, an unfinished one resumes from its last checkpoint (the bundle's ``--resume True``). Every run logs
    to the MLflow experiment ``experiment`` in ``<out_dir>/mlruns.db``; test figures are added to the run.

    Args:
        datalist: the benchmark datalist (see :func:`prepare_benchmark_data`).
        out_dir: output folder.
        pool: synthetic pool manifest (``pool.json``) for the synthetic arms; the same pool for all of them.
        arms: arm names (a subset of :data:`ARMS`, in table order).
        seeds: seeds (each seeds the network, the sampler, the policy and the augmentation).
        epochs: training epochs of every arm (cRT's second stage: ``crt_epochs``).
        epoch_size: samples per epoch of every arm (``None``: each sampler target's own size).
        image_size: side of the network input.
        batch_size: batch size.
        fixed_ratio: the synthetic ratio of ``syn_fixed`` and the starting ratio of the adaptive policies.
        crt_epochs: epochs of cRT's classifier re-training (default: a quarter of ``epochs``, at least 1).
        ppo_n_steps: validations per PPO update of ``syn_rl`` / ``syn_rl_pretrained``.
        pretrain_steps: class-agent steps of the proxy pre-training of ``syn_rl_pretrained``.
        experiment: MLflow experiment name.
        bundles_dir: folder holding the bundles (default: the repository's).
        overrides: further classification-bundle overrides for every run (e.g. ``{"learning_rate": 3e-4}``).
        log: progress printer.
    """

    def __init__(
        self,
        datalist: str | os.PathLike,
        out_dir: str | os.PathLike,
        pool: str | os.PathLike | None = None,
        arms: Sequence[str] = tuple(ARMS),
        seeds: Sequence[int] = (0, 1, 2),
        epochs: int = 20,
        epoch_size: int | None = None,
        image_size: int = 64,
        batch_size: int = 32,
        fixed_ratio: float = 0.3,
        crt_epochs: int | None = None,
        ppo_n_steps: int = 4,
        pretrain_steps: int = 12_000,
        experiment: str = "breastlt_bench_lt",
        bundles_dir: str | os.PathLike | None = None,
        overrides: dict | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        unknown = [a for a in arms if a not in ARMS]
        if unknown:
            raise ValueError(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}.")
        if not arms or not seeds:
            raise ValueError("bench lt needs at least one arm and one seed.")
        if pool is None and any(a in SYNTHETIC_ARMS for a in arms):
            raise ValueError(f"arms {[a for a in arms if a in SYNTHETIC_ARMS]} need a synthetic pool (--pool POOL/pool.json).")
        if pool is not None and not Path(pool).is_file():
            raise FileNotFoundError(f"{pool}: synthetic pool manifest not found (expected POOL/pool.json).")
        self.datalist = Path(datalist).resolve()
        self.out = Path(out_dir).resolve()
        self.pool = str(Path(pool).resolve()) if pool else None
        self.arms, self.seeds = list(arms), [int(s) for s in seeds]
        self.epochs, self.epoch_size, self.image_size, self.batch_size = epochs, epoch_size, image_size, batch_size
        self.fixed_ratio, self.ppo_n_steps, self.pretrain_steps = fixed_ratio, ppo_n_steps, pretrain_steps
        self.crt_epochs = crt_epochs or max(1, epochs // 4)
        self.experiment = experiment
        self.tracking_uri = f"sqlite:///{self.out / 'mlruns.db'}"
        self.overrides = dict(overrides or {})
        self.log = log
        self.cls = find_bundles(bundles_dir)[1]

    def run_dir(self, arm: str, seed: int) -> Path:
        return self.out / "runs" / arm / f"seed{seed}"

    def pretrained_policy(self, seed: int) -> Path:
        """The warm start of ``syn_rl_pretrained``: the shared PPO policy trained on a :class:`ToyRatioProcess` with
        this benchmark's training class counts and epoch budget (about 10 s), saved once per seed as SB3 weights."""
        path = self.out / "rl_pretrained" / f"seed{seed}.zip"
        if path.is_file():
            return path
        from monai_breastlt.rl import MultiAgentRatioPolicy, ToyRatioProcess

        doc = load_datalist_file(self.datalist)
        counts = np.bincount([int(i["label"]) for i in doc["training"]], minlength=len(doc["classes"]))
        policy = MultiAgentRatioPolicy(n_steps=self.ppo_n_steps, seed=seed)
        policy.pretrain(ToyRatioProcess(counts, horizon=self.epochs, seed=seed), total_timesteps=self.pretrain_steps)
        with atomic_open(path, "wb") as f:  # a killed pre-training leaves no half-written warm start
            policy.model.save(f)
        return path

    def _common(self, arm: str, seed: int) -> dict:
        opts = ARMS[arm]
        extra = {"policy_model_path": str(self.pretrained_policy(seed))} if opts.get("pretrain") else {}
        return {
            **extra,
            "dataset_dir": str(self.out), "datalist": str(self.datalist), "output_dir": str(self.run_dir(arm, seed)),
            "pool": self.pool if opts.get("synthetic") else None, "seed": seed, "image_size": self.image_size,
            "batch_size": self.batch_size, "epoch_size": self.epoch_size,
            "policy_name": opts.get("policy_name", "none"), "sampler_target": opts.get("sampler_target", "real"),
            "loss_name": opts.get("loss_name", "ce"), "initial_ratio": self.fixed_ratio, "ppo_n_steps": self.ppo_n_steps,
            **self.overrides,
        }

    def run_one(self, arm: str, seed: int) -> dict:
        """Train (or resume) and test one arm/seed; returns its test report."""
        opts, rdir = ARMS[arm], self.run_dir(arm, seed)
        report_path = rdir / "test_report.json"
        if report_path.is_file():
            return read_json(report_path)
        common = self._common(arm, seed)
        stage1 = opts.get("stage1")
        evaluate = {}
        if stage1 and "posthoc_tau" in opts:  # no training: the stage-1 model, logits adjusted at test time
            self.run_one(stage1, seed)
            common = {**self._common(stage1, seed), "output_dir": str(rdir)}
            evaluate = {"ckpt_dir": str(self.run_dir(stage1, seed) / "models"), "posthoc_tau": opts["posthoc_tau"]}
        elif not (rdir / "train_done.json").is_file():
            train = {"max_epochs": self.epochs, "resume": True}
            if stage1:
                self.run_one(stage1, seed)
                train.update(init_ckpt=str(self.run_dir(stage1, seed) / "models" / "model.pt"),
                             classifier_only=opts.get("classifier_only", False), max_epochs=self.crt_epochs)
            self.log(f"bench lt: train {arm} seed {seed}")
            start = time.time()
            run_bundle(self.cls, ["train.yaml"], tracking=mlflow_tracking_settings(), tracking_uri=self.tracking_uri,
                       experiment_name=self.experiment, run_name=f"{arm}-seed{seed}", **common, **train)
            atomic_write_json({"seconds": time.time() - start}, rdir / "train_done.json")
        self.log(f"bench lt: test {arm} seed {seed}")
        run_bundle(self.cls, ["train.yaml", "evaluate.yaml"], workflow_type="infer", **common, **evaluate)
        report = read_json(report_path)
        self._log_mlflow(arm, seed, report)
        return report

    def _log_mlflow(self, arm: str, seed: int, report: dict) -> None:
        """Add the test figures to the arm's MLflow run (a new run for evaluation-only arms); failures only warn."""
        try:
            import mlflow

            client = mlflow.MlflowClient(self.tracking_uri)
            exp = client.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp else client.create_experiment(self.experiment)
            name = f"{arm}-seed{seed}"
            found = client.search_runs([exp_id], f"tags.mlflow.runName = '{name}'", max_results=1)
            run_id = found[0].info.run_id if found else client.create_run(exp_id, run_name=name).info.run_id
            for m in METRICS:
                v = report.get(m)
                if v is not None and not math.isnan(v):
                    client.log_metric(run_id, f"test_{m}", float(v))
            client.set_tag(run_id, "bench_arm", arm)
            if not found:
                client.log_param(run_id, "seed", seed)
                client.set_terminated(run_id)
        except Exception as e:  # noqa: BLE001 - the results are on disk; a tracking failure must not stop the benchmark
            logger.warning(f"MLflow logging of {arm} seed {seed} failed ({type(e).__name__}: {e}); results kept in {self.out}.")

    def run(self) -> list[dict]:
        """Every arm for every seed (finished ones are read back), then the tables and the plot."""
        start = time.time()
        runs = []
        for seed in self.seeds:
            for arm in self.arms:
                rep = self.run_one(arm, seed)
                runs.append({"arm": arm, "seed": seed, **{m: rep.get(m) for m in METRICS}})
        rows = summarize_runs(runs, self.arms)
        self.write_results(runs, rows, time.time() - start)
        return rows

    def write_results(self, runs: Sequence[dict], rows: Sequence[dict], seconds: float) -> None:
        from monai_breastlt.visualize import plot_arm_bars

        for name, data in (("runs.csv", runs), ("results.csv", rows)):
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)
            with atomic_open(self.out / name, "w", newline="") as f:
                f.write(buf.getvalue())
        text = format_markdown(rows, [compare_to_baselines(rows, m) for m in RL_ARMS])
        with atomic_open(self.out / "results.md", "w") as f:
            f.write(text + f"\n{len(runs)} runs; this invocation took {seconds:.0f} s (finished runs are read back, not re-run).\n")
        plot_arm_bars(rows, self.out / "results.png")
