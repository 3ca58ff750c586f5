"""``bench lt``: every long-tail arm with the same backbone, epoch budget, split and seeds, through the
classification bundle; a table with the spread over seeds, paired differences with bootstrap intervals against the
best baseline, an optional second test set (another hospital's), a bar plot, one MLflow experiment; resumable."""

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

from monai_breastlt.bench.lt_stats import bootstrap_difference, group_reading, has_plateaued, read_predictions, read_probabilities
from monai_breastlt.data import load_datalist, load_datalist_file, long_tail_profile, read_any_source, write_datalist
from monai_breastlt.handlers import mlflow_tracking_settings
from monai_breastlt.utils import atomic_open, atomic_write_json, read_json
from monai_breastlt.workflows import find_bundles, run_bundle

__all__ = ["ARMS", "BASELINE_ARMS", "MODIFIERS", "RL_ARMS", "SYNTHETIC_ARMS", "LongTailBenchmark", "arm_options",
           "prepare_external_test", "summarize_runs"]

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
    "crt": {"stage1": "ce", "crt": True},
    "syn_fill": {"policy_name": "fill", "sampler_target": "balanced", "synthetic": True},
    "syn_fixed": {"policy_name": "fixed", "sampler_target": "balanced", "synthetic": True},
    "syn_heuristic": {"policy_name": "heuristic", "sampler_target": "balanced", "synthetic": True, "adaptive": True},
    "syn_rl": {"policy_name": "rl", "sampler_target": "balanced", "synthetic": True, "adaptive": True, "rl": True},
    # the same agents, warm-started on a proxy of the run (ToyRatioProcess with the training counts), then online
    "syn_rl_pretrained": {"policy_name": "rl", "sampler_target": "balanced", "synthetic": True, "adaptive": True, "rl": True,
                          "pretrain": True},
}
RL_ARMS = ("syn_rl", "syn_rl_pretrained")
SYNTHETIC_ARMS = tuple(a for a, o in ARMS.items() if o.get("synthetic"))
BASELINE_ARMS = tuple(a for a in ARMS if a not in SYNTHETIC_ARMS)

# additions to an arm, written ``arm+mod+mod`` (e.g. ``syn_rl+freq+smooth+w+crt``); "needs": what the arm must be
MODIFIERS: dict[str, dict] = {
    "raw": {"pool": "raw", "needs": "synthetic"},  # the pool as generated, without the audit's filter
    "xc": {"pool": "xc", "needs": "synthetic"},  # the pool made with cross-class sketches (filtered)
    "w": {"synthetic_weight": 0.5, "needs": "synthetic"},  # synthetic items count half in the loss
    "smooth": {"reward_smoothing": 0.7, "needs": "rl"},  # agents see and are rewarded by moving averages
    "lr": {"ppo_learning_rate": 3e-3, "ppo_n_epochs": 20, "needs": "rl"},  # PPO updates that move the policy
    "freq": {"decide_every": 1, "needs": "adaptive"},  # the policy acts at every validation, not once an epoch
    "crt": {"crt": True, "needs": None},  # then a real-only, class-balanced re-training of the classifier layer
}
RL_SETTINGS = ("reward_smoothing", "ppo_learning_rate", "ppo_n_epochs")  # bundle keys of the modifiers for the agents
METRICS = ("macro_f1", "balanced_accuracy", "g_mean", "head_recall", "medium_recall", "tail_recall", "accuracy")


def arm_options(name: str) -> dict:
    """The options of an arm name: a key of :data:`ARMS`, optionally followed by ``+modifier`` (:data:`MODIFIERS`).
    A ``+crt`` arm starts from the arm without it (its stage 1), so ``syn_rl`` and ``syn_rl+crt`` share one training.

    Raises:
        ValueError: an unknown arm or modifier, or a modifier the arm cannot take.
    """
    base, *mods = name.split("+")
    if base not in ARMS:
        raise ValueError(f"unknown arm '{base}' in '{name}'; choose from {', '.join(ARMS)}.")
    if "crt" in mods:  # a cRT stage on the model of the arm without it
        if mods[-1] != "crt" or mods.count("crt") > 1:
            raise ValueError(f"arm '{name}': '+crt' must come last, once.")
        stage1 = name[: -len("+crt")]
        if arm_options(stage1).get("stage1"):
            raise ValueError(f"arm '{name}': '+crt' cannot follow an arm that already starts from another one.")
        return {"stage1": stage1, "crt": True, "base": base}
    opts = {**ARMS[base], "base": base}
    for m in mods:
        if m not in MODIFIERS:
            raise ValueError(f"unknown modifier '+{m}' in arm '{name}'; choose from {', '.join('+' + k for k in MODIFIERS)}.")
        needs = MODIFIERS[m]["needs"]
        if needs and not opts.get(needs):
            raise ValueError(f"arm '{name}': '+{m}' applies to {needs} arms only, not to '{base}'.")
        opts.update({k: v for k, v in MODIFIERS[m].items() if k != "needs"})
    return opts


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summarize_runs(runs: Sequence[dict], arms: Sequence[str]) -> list[dict]:
    """Mean and standard deviation over seeds of every metric, one row per arm (in ``arms`` order), with how many of
    its runs had stopped improving on validation and its mean policy decisions and PPO updates."""
    rows = []
    for arm in arms:
        sel = [r for r in runs if r["arm"] == arm]
        if not sel:
            continue
        row: dict = {"arm": arm, "seeds": len(sel)}
        for m in METRICS:
            row[f"{m}_mean"], row[f"{m}_std"] = _mean_std([r[m] for r in sel])
        judged = [r["plateaued"] for r in sel if r.get("plateaued") is not None]
        row["plateaued"] = f"{sum(judged)}/{len(judged)}" if judged else "n/a"
        row["decisions"] = _mean_std([r.get("decisions") for r in sel])[0]
        row["ppo_updates"] = _mean_std([r.get("ppo_updates") for r in sel])[0]
        rows.append(row)
    return rows


def _fmt(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{100 * mean:.1f} ± {100 * std:.1f}"


def format_markdown(rows: Sequence[dict], comparisons: Sequence[dict] = ()) -> str:
    """Markdown table (percent, mean ± std over seeds) and each method's comparison against the best baseline."""
    cols = [("macro_f1", "macro-F1"), ("balanced_accuracy", "balanced acc."), ("g_mean", "G-mean"),
            ("head_recall", "head recall"), ("medium_recall", "medium recall"), ("tail_recall", "tail recall")]
    lines = ["| arm | seeds | " + " | ".join(c for _, c in cols) + " | val. plateaued | decisions / PPO updates |",
             "|---|---|" + "---|" * len(cols) + "---|---|"]
    for r in rows:
        decisions, updates = r.get("decisions"), r.get("ppo_updates")
        counts = "-" if decisions is None or math.isnan(decisions) else f"{decisions:.0f} / " + ("-" if updates is None or math.isnan(updates) else f"{updates:.0f}")
        lines.append(f"| {r['arm']} | {r['seeds']} | " + " | ".join(_fmt(r[f'{m}_mean'], r[f'{m}_std']) for m, _ in cols)
                     + f" | {r.get('plateaued', 'n/a')} | {counts} |")
    if comparisons:
        lines.append("")
    for c in comparisons:
        lines.append(_comparison_line(c))
    return "\n".join(lines) + "\n"


def _comparison_line(c: dict) -> str:
    """One method against the best baseline: paired differences, intervals, verdicts against the targets."""
    def part(key: str, label: str, target: float) -> str:
        d = c.get("bootstrap", {}).get(key)
        mean = 100 * (d["mean"] if d else c[f"d_{key}"])
        text = f"{label} {mean:+.1f}"
        if d:
            lo, hi = (100 * x for x in d["ci95"])
            seeds = ", ".join(f"{100 * x:+.1f}" for x in d["per_seed"])
            text += f" (per seed {seeds}; 95 % CI over test images [{lo:+.1f}, {hi:+.1f}]{', includes 0' if lo <= 0 <= hi else ''})"
        return text + f" target >= +{target:.0f}: {'met' if mean >= target else 'not met'}"

    head = 100 * c["d_head_recall_vs_ce"]
    return (f"- **{c['method']}** vs the best baseline by macro-F1 (**{c['best_baseline']}**): {part('macro_f1', 'macro-F1', 3)}; "
            f"{part('tail_recall', 'tail recall', 5)}; head recall vs ce {head:+.1f} (target >= -2: "
            f"{'met' if head >= -2 else 'not met'}). Percentage points.")


def compare_to_baselines(rows: Sequence[dict], method: str = "syn_rl", baselines: Sequence[str] = BASELINE_ARMS) -> dict | None:
    """Differences (fractions) of ``method`` against the best of ``baselines`` by macro-F1 and against CE."""
    by = {r["arm"]: r for r in rows}
    base = [r for r in rows if r["arm"] in baselines and not math.isnan(r["macro_f1_mean"])]
    if method not in by or not base:
        return None
    best = max(base, key=lambda r: r["macro_f1_mean"])
    m = by[method]
    ce = by.get("ce", best)
    return {
        "method": method, "best_baseline": best["arm"],
        "d_macro_f1": m["macro_f1_mean"] - best["macro_f1_mean"],
        "d_tail_recall": m["tail_recall_mean"] - best["tail_recall_mean"],
        "d_head_recall_vs_ce": m["head_recall_mean"] - ce["head_recall_mean"],
    }


def prepare_external_test(source: str | os.PathLike, class_map: str | os.PathLike, classes: Sequence[str], out_dir: str | os.PathLike) -> dict:
    """A second test set mapped onto the training classes, for ``bench lt --test``.

    ``class_map`` is a JSON object: ``"classes"`` sends the test set's label names onto training classes (``null``:
    no training class); optional ``"groups"`` (training class -> group, e.g. benign/malignant), ``"label_groups"``
    (test label -> group, for labels without a training class, e.g. a set with pathology labels only) and
    ``"positive"`` (the group read as positive, default ``"malignant"``). Writes ``datalist.json`` (the mapped
    items, training classes), ``grouped.json`` (every item with a group; classes: the groups) and ``mapping.json``
    (counts per label: mapped, grouped, and unmapped, which are reported, never dropped silently).

    Raises:
        ValueError: the map names an unknown training class or test label, or has no usable entry.
        FileNotFoundError: test images are missing (the first ones named).
    """
    spec = read_json(class_map)
    if not isinstance(spec, dict) or not isinstance(spec.get("classes", {}), dict):
        raise ValueError(f"{class_map}: expected an object with 'classes': {{test label: training class or null}}.")
    sections, labels = read_any_source(source)
    items = sections.get("test") or [i for v in sections.values() for i in v]
    mapping, groups, label_groups = spec.get("classes", {}), spec.get("groups", {}), spec.get("label_groups", {})
    positive = spec.get("positive", "malignant")
    for where, names, known in ((f"{class_map}: 'classes' values", [v for v in mapping.values() if v is not None], classes),
                                (f"{class_map}: 'groups' keys", list(groups), classes),
                                (f"{class_map}: 'classes' keys", list(mapping), labels),
                                (f"{class_map}: 'label_groups' keys", list(label_groups), labels)):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"{where} name unknown classes {unknown} (known: {list(known)}).")
    missing = [i["image"] for i in items if not Path(i["image"]).is_file()]
    if missing:
        raise FileNotFoundError(f"{source}: {len(missing)} test image(s) missing, first: {', '.join(missing[:3])}.")
    group_names = sorted({*groups.values(), *label_groups.values()})
    if group_names and positive not in group_names:
        raise ValueError(f"{class_map}: positive group '{positive}' is none of the groups {group_names}.")
    mapped, grouped, counts = [], [], {}
    for item in items:
        name = labels[int(item["label"])]
        target = mapping.get(name)
        group = groups.get(target) if target is not None else label_groups.get(name)
        c = counts.setdefault(name, {"images": 0, "mapped_to": target, "group": group})
        c["images"] += 1
        entry = {k: v for k, v in item.items() if k in ("image", "group", "mask")}
        if target is not None:
            mapped.append({**entry, "label": classes.index(target)})
        if group is not None:
            grouped.append({**entry, "label": group_names.index(group)})
    if not mapped and not grouped:
        raise ValueError(f"{class_map}: no test label maps to a training class or a group.")
    out = Path(out_dir)
    if mapped:
        write_datalist(out / "datalist.json", {"test": mapped}, list(classes))
    if grouped:
        write_datalist(out / "grouped.json", {"test": grouped}, group_names)
    doc = {"source": str(source), "class_map": str(class_map), "positive": positive, "groups": groups,
           "group_names": group_names, "labels": counts, "mapped": len(mapped), "grouped": len(grouped),
           "unmapped": {n: c["images"] for n, c in counts.items() if c["mapped_to"] is None and c["group"] is None}}
    atomic_write_json(doc, out / "mapping.json")
    return doc


class LongTailBenchmark:
    """
    Train and test every arm for every seed with the classification bundle, under one budget.

    Each run lives in ``<out_dir>/runs/<arm>/seed<k>/`` with its best checkpoint (``models/model.pt``), its
    validation history and its per-image test predictions; a run with a ``test_report.json`` is finished and never
    re-run, an unfinished one resumes from its last checkpoint (the bundle's ``--resume True``). Every run logs to the
    MLflow experiment ``experiment`` in ``<out_dir>/mlruns.db``; test figures are added to the run.

    Arms are keys of :data:`ARMS`, optionally with ``+modifier`` additions (:data:`MODIFIERS`). Synthetic arms read
    ``<pool>/pool_filtered.json`` (the pool after the audit's filter) unless ``unfiltered`` or ``+raw``;
    ``+xc`` reads the pool made with cross-class sketches (``pool_xc``).

    Args:
        datalist: the benchmark datalist (see :func:`~monai_breastlt.data.prepare_benchmark_data`).
        out_dir: output folder.
        pool: the synthetic pool folder (``pool.json``, ``pool_filtered.json``) or a manifest in it.
        arms: arm names, in table order.
        seeds: seeds (each seeds the network, the sampler, the policy and the augmentation).
        epochs: training epochs of every arm (a cRT stage: ``crt_epochs``).
        epoch_size: samples per epoch of every arm (``None``: each sampler target's own size).
        image_size: side of the network input.
        batch_size: batch size.
        fixed_ratio: the synthetic ratio of ``syn_fixed`` and the starting ratio of the adaptive policies.
        crt_epochs: epochs of a cRT stage (default: a quarter of ``epochs``, at least 1).
        ppo_n_steps: decisions per PPO update of the RL arms.
        pretrain_steps: class-agent steps of the proxy pre-training of ``syn_rl_pretrained``.
        val_every: validate every this many iterations in every arm (``None``: once an epoch); the adaptive policies
            then act once an epoch unless ``+freq``. Needs ``epoch_size``.
        pool_xc: the pool folder made with cross-class sketches, for ``+xc`` arms.
        unfiltered: synthetic arms read ``pool.json`` instead of ``pool_filtered.json``.
        test_sets: further test sets ``{name: folder}`` made by :func:`prepare_external_test`.
        experiment: MLflow experiment name.
        bundles_dir: folder holding the bundles (default: the package's).
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
        val_every: int | None = None,
        pool_xc: str | os.PathLike | None = None,
        unfiltered: bool = False,
        test_sets: dict[str, str | os.PathLike] | None = None,
        experiment: str = "breastlt_bench_lt",
        bundles_dir: str | os.PathLike | None = None,
        overrides: dict | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        if not arms or not seeds:
            raise ValueError("bench lt needs at least one arm and one seed.")
        self.options = {a: arm_options(a) for a in arms}
        for a, o in list(self.options.items()):  # stage-1 arms of +crt arms are trained (not tabled) when not listed
            while o.get("stage1") and o["stage1"] not in self.options:
                self.options[o["stage1"]] = o = arm_options(o["stage1"])
        if val_every is not None and (val_every < 1 or not epoch_size):
            raise ValueError(f"val_every must be a positive number of iterations, with epoch_size set (got {val_every}, {epoch_size}).")
        self.datalist = Path(datalist).resolve()
        self.classes = load_datalist_file(self.datalist)["classes"]
        self.pools = self._find_pools(pool, pool_xc, unfiltered)
        self.out = Path(out_dir).resolve()
        self.arms, self.seeds = list(arms), [int(s) for s in seeds]
        self.epochs, self.epoch_size, self.image_size, self.batch_size = epochs, epoch_size, image_size, batch_size
        self.fixed_ratio, self.ppo_n_steps, self.pretrain_steps = fixed_ratio, ppo_n_steps, pretrain_steps
        self.crt_epochs = crt_epochs or max(1, epochs // 4)
        self.val_every = val_every
        self.test_sets = {k: Path(v) for k, v in (test_sets or {}).items()}
        self.experiment = experiment
        self.tracking_uri = f"sqlite:///{self.out / 'mlruns.db'}"
        self.overrides = dict(overrides or {})
        self.log = log
        self.cls = find_bundles(bundles_dir)[1]

    def _find_pools(self, pool, pool_xc, unfiltered: bool) -> dict[str, Path]:
        """The manifest each pool option reads, checked now rather than after hours of training."""
        needed = {o.get("pool", "default") for o in self.options.values() if o.get("synthetic")}
        found: dict[str, Path] = {}
        for key, folder in (("default", pool), ("raw", pool), ("xc", pool_xc)):
            if key not in needed:
                continue
            if folder is None:
                what = "--pool-xc POOL_XC" if key == "xc" else "--pool POOL"
                raise ValueError(f"arms {[a for a, o in self.options.items() if o.get('synthetic') and o.get('pool', 'default') == key]} need {what}.")
            folder = Path(folder)
            folder = folder.parent if folder.suffix == ".json" else folder
            name = "pool.json" if key == "raw" or unfiltered else "pool_filtered.json"
            path = (folder / name).resolve()
            if not path.is_file():
                hint = " (run the audit with filtering, or pass --unfiltered)" if name == "pool_filtered.json" else ""
                raise FileNotFoundError(f"{path}: synthetic pool manifest not found{hint}.")
            classes = load_datalist_file(path)["classes"]
            if classes != self.classes:
                raise ValueError(f"{path}: its classes {classes} differ from the datalist's {self.classes} ({self.datalist}); "
                                 "make the pool from this datalist.")
            found[key] = path
        return found

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

    def _schedule(self, opts: dict) -> dict:
        """Validation interval and how often the policy acts: with ``val_every``, every arm validates at that interval
        (the same checkpoint selection for all) and an adaptive policy acts once an epoch, or at every validation
        with ``+freq``."""
        if self.val_every is None:
            return {}
        per_epoch = max(1, math.ceil(self.epoch_size / self.batch_size) // self.val_every)
        return {"val_every_iterations": self.val_every, "decide_every": opts.get("decide_every", per_epoch)}

    def _common(self, arm: str, seed: int) -> dict:
        opts = self.options[arm]
        if opts.get("crt"):  # the stage-1 arm's settings, re-training on class-balanced real data with plain CE
            common = {**self._common(opts["stage1"], seed), "output_dir": str(self.run_dir(arm, seed)), "pool": None,
                      "policy_name": "none", "sampler_target": "balanced", "loss_name": "ce"}
            for key in ("decide_every", "synthetic_weight", *RL_SETTINGS, "policy_model_path"):
                common.pop(key, None)
            return common
        extra = {"policy_model_path": str(self.pretrained_policy(seed))} if opts.get("pretrain") else {}
        pool = self.pools.get(opts.get("pool", "default")) if opts.get("synthetic") else None
        settings = {k: opts[k] for k in ("synthetic_weight", *RL_SETTINGS) if k in opts}
        return {
            **extra, **settings, **self._schedule(opts),
            "dataset_dir": str(self.out), "datalist": str(self.datalist), "output_dir": str(self.run_dir(arm, seed)),
            "pool": str(pool) if pool else None, "seed": seed, "image_size": self.image_size,
            "batch_size": self.batch_size, "epoch_size": self.epoch_size,
            "policy_name": opts.get("policy_name", "none"), "sampler_target": opts.get("sampler_target", "real"),
            "loss_name": opts.get("loss_name", "ce"), "initial_ratio": self.fixed_ratio, "ppo_n_steps": self.ppo_n_steps,
            **self.overrides,
        }

    def _epochs(self, arm: str) -> int:
        return self.crt_epochs if self.options[arm].get("crt") else self.epochs

    def _trained(self, arm: str, seed: int) -> bool:
        """Whether the run has trained for this benchmark's epochs (a run made with fewer resumes to more: a budget can
        be extended later, and the run's test is then repeated)."""
        done = self.run_dir(arm, seed) / "train_done.json"
        return done.is_file() and read_json(done).get("epochs", 0) >= self._epochs(arm)

    def _train(self, arm: str, seed: int) -> None:
        """Train (or resume) one arm/seed: its own training, or a cRT stage on its stage-1 model."""
        opts, rdir = self.options[arm], self.run_dir(arm, seed)
        if opts.get("crt") and not self._trained(opts["stage1"], seed):
            (rdir / "train_done.json").unlink(missing_ok=True)  # a re-trained stage 1 needs a new cRT stage from scratch
            for ckpt in (rdir / "models").glob("checkpoint*.pt"):
                ckpt.unlink()
        if self._trained(arm, seed):
            return
        common, train = self._common(arm, seed), {"max_epochs": self._epochs(arm), "resume": True}
        if opts.get("crt"):  # classifier layer only, class-balanced real data, from the stage-1 model
            self._train(opts["stage1"], seed)
            train.update(init_ckpt=str(self.run_dir(opts["stage1"], seed) / "models" / "model.pt"), classifier_only=True)
        self.log(f"bench lt: train {arm} seed {seed}")
        done = rdir / "train_done.json"
        before = read_json(done)["seconds"] if done.is_file() else 0.0
        start = time.time()
        run_bundle(self.cls, ["train.yaml"], tracking=mlflow_tracking_settings(), tracking_uri=self.tracking_uri,
                   experiment_name=self.experiment, run_name=f"{arm}-seed{seed}", **common, **train)
        atomic_write_json({"seconds": before + time.time() - start, "epochs": self._epochs(arm)}, done)
        (rdir / "test_report.json").unlink(missing_ok=True)  # the test of a shorter training is stale

    def run_one(self, arm: str, seed: int) -> dict:
        """Train (or resume) and test one arm/seed; returns its test report."""
        opts, rdir = self.options[arm], self.run_dir(arm, seed)
        report_path = rdir / "test_report.json"
        if not self._trained(self._model_arm(arm), seed) or (opts.get("crt") and not self._trained(opts["stage1"], seed)):
            report_path.unlink(missing_ok=True)
            for old in (rdir / "external").glob("*/*") if (rdir / "external").is_dir() else []:
                old.unlink()
        if not report_path.is_file():
            evaluate, common = {}, self._common(arm, seed)
            if "posthoc_tau" in opts:  # no training: the stage-1 model, logits adjusted at test time
                self._train(opts["stage1"], seed)
                common = {**self._common(opts["stage1"], seed), "output_dir": str(rdir)}
                evaluate = {"ckpt_dir": str(self.run_dir(opts["stage1"], seed) / "models"), "posthoc_tau": opts["posthoc_tau"]}
            else:
                self._train(arm, seed)
            self.log(f"bench lt: test {arm} seed {seed}")
            run_bundle(self.cls, ["train.yaml", "evaluate.yaml"], workflow_type="infer", **common, **evaluate)
            self._log_mlflow(arm, seed, read_json(report_path))
        for name, folder in self.test_sets.items():
            self._test_external(arm, seed, name, folder)
        return read_json(report_path)

    def _model_arm(self, arm: str) -> str:
        """The arm whose trained model this arm tests: its stage 1 for a post-hoc adjustment, else itself."""
        opts = self.options[arm]
        return opts["stage1"] if "posthoc_tau" in opts else arm

    def _test_external(self, arm: str, seed: int, name: str, folder: Path) -> None:
        """Score the arm's model on another test set: subtype figures on its mapped images, class probabilities of
        every grouped image (for the malignancy reading)."""
        opts, source = self.options[arm], self._model_arm(arm)
        out = self.run_dir(arm, seed) / "external" / name
        common = {**self._common(source, seed), "output_dir": str(out), "ckpt_dir": str(self.run_dir(source, seed) / "models")}
        tau = {"posthoc_tau": opts["posthoc_tau"]} if "posthoc_tau" in opts else {}
        if (folder / "datalist.json").is_file() and not (out / "test_report.json").is_file():
            run_bundle(self.cls, ["train.yaml", "evaluate.yaml"], workflow_type="infer", test_datalist=str(folder / "datalist.json"),
                       **common, **tau)
        if (folder / "grouped.json").is_file() and not (out / "grouped_predictions.csv").is_file():
            run_bundle(self.cls, ["train.yaml", "inference.yaml"], workflow_type="infer", **common, **tau,
                       infer_source=str(folder / "grouped.json"), infer_section="test", predictions_file="grouped_predictions.csv")

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

    def _run_record(self, arm: str, seed: int, report: dict) -> dict:
        """One row of ``runs.csv``: test figures, whether validation had stopped rising, decisions and PPO updates; for
        a cRT or post-hoc arm these come from the training of its stage-1 model (a cRT stage adds its seconds)."""
        source = self.options[arm].get("stage1", arm)
        trained, src = self.run_dir(source, seed), self.options[source]
        val = read_json(trained / "val_report.json") if (trained / "val_report.json").is_file() else {}
        curve = [r.get("macro_f1") for r in val.get("val_history", [])]
        history = val.get("ratio_history", []) if src.get("adaptive") else []
        dirs = {trained, self.run_dir(arm, seed)}
        seconds = sum(read_json(d / "train_done.json")["seconds"] for d in dirs if (d / "train_done.json").is_file())
        return {"arm": arm, "seed": seed, **{m: report.get(m) for m in METRICS}, "plateaued": has_plateaued(curve),
                "validations": len(curve), "decisions": len(history) if history else None,
                "ppo_updates": history[-1].get("ppo_updates") if history and src.get("rl") else None, "train_seconds": seconds}

    def run(self) -> list[dict]:
        """Every arm for every seed (finished ones are read back), then the tables, the comparison and the plot."""
        start = time.time()
        runs = []
        for seed in self.seeds:
            for arm in self.arms:
                runs.append(record := self._run_record(arm, seed, self.run_one(arm, seed)))
                self.log(f"bench lt: {arm} seed {seed}: test macro-F1 {100 * record['macro_f1']:.1f}, {record['validations']} validations "
                         f"(stopped rising: {record['plateaued']}), policy decisions {record['decisions']}, PPO updates {record['ppo_updates']}")
        rows = summarize_runs(runs, self.arms)
        comparisons = [c for c in (self.compare(rows, m) for m in self.arms if self.options[m]["base"] in SYNTHETIC_ARMS) if c]
        self.write_results(runs, rows, comparisons, time.time() - start)
        return rows

    def compare(self, rows: Sequence[dict], method: str) -> dict | None:
        """:func:`compare_to_baselines` plus the paired per-seed differences and bootstrap intervals over test images."""
        c = compare_to_baselines(rows, method, [a for a in self.arms if self.options[a]["base"] not in SYNTHETIC_ARMS])
        if c is None:
            return None
        seeds = [s for s in self.seeds if all((self.run_dir(a, s) / "test_predictions.csv").is_file() for a in (method, c["best_baseline"]))]
        if seeds:
            loaded = {a: [read_predictions(self.run_dir(a, s) / "test_predictions.csv", self.classes) for s in seeds]
                      for a in (method, c["best_baseline"])}
            labels = loaded[method][0][1]
            train = [int(i["label"]) for i in load_datalist_file(self.datalist)["training"]]
            tail = [g == "tail" for g in long_tail_profile(train, self.classes).groups]
            c["bootstrap"] = bootstrap_difference(labels, [p.argmax(1) for _, _, p in loaded[method]],
                                                  [p.argmax(1) for _, _, p in loaded[c["best_baseline"]]], len(self.classes), tail)
            c["bootstrap"]["seeds"] = seeds
        return c

    def external_results(self) -> dict:
        """Per further test set and arm: subtype figures (mean ± std over seeds) and the malignancy reading."""
        out: dict = {}
        for name, folder in self.test_sets.items():
            mapping = read_json(folder / "mapping.json")
            per_arm = {}
            for arm in self.arms:
                reads, reports = [], []
                for s in self.seeds:
                    ext = self.run_dir(arm, s) / "external" / name
                    if (ext / "test_report.json").is_file():
                        reports.append(read_json(ext / "test_report.json"))
                    if (ext / "grouped_predictions.csv").is_file():
                        reads.append(self._malignancy(ext / "grouped_predictions.csv", folder, mapping))
                per_arm[arm] = {
                    **{m: _mean_std([r.get(m) for r in reports]) for m in ("macro_f1", "balanced_accuracy")},
                    **{k: _mean_std([r[k] for r in reads]) for k in ("auc", "sensitivity")},
                }
            out[name] = {"mapping": mapping, "arms": per_arm}
        return out

    def _malignancy(self, path: Path, folder: Path, mapping: dict) -> dict:
        """The malignancy reading of one run: the probability of the positive group's training classes (renormalised
        over the classes that have a group) against each image's group."""
        items, group_names = load_datalist(folder / "grouped.json", "test")
        probs = read_probabilities(path, len(self.classes))
        model = np.asarray([probs[i["image"]] for i in items])
        groups = [mapping["groups"].get(c) for c in self.classes]
        grouped = np.asarray([g is not None for g in groups])
        pos = np.asarray([g == mapping["positive"] for g in groups])
        score = model[:, pos].sum(1) / np.clip(model[:, grouped].sum(1), 1e-12, None)
        truth = np.asarray([group_names[int(i["label"])] == mapping["positive"] for i in items])
        return group_reading(truth, score)

    def write_results(self, runs: Sequence[dict], rows: Sequence[dict], comparisons: Sequence[dict], seconds: float) -> None:
        from monai_breastlt.visualize import plot_arm_bars

        for name, data in (("runs.csv", runs), ("results.csv", rows)):
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)
            with atomic_open(self.out / name, "w", newline="") as f:
                f.write(buf.getvalue())
        atomic_write_json({"comparisons": list(comparisons), "external": self.external_results()}, self.out / "comparisons.json")
        text = format_markdown(rows, comparisons) + self._format_external()
        with atomic_open(self.out / "results.md", "w") as f:
            f.write(text + f"\n{len(runs)} runs; this invocation took {seconds:.0f} s (finished runs are read back, not re-run).\n")
        plot_arm_bars(rows, self.out / "results.png")

    def _format_external(self) -> str:
        lines = []
        for name, res in self.external_results().items():
            m = res["mapping"]
            lines += ["", f"Test set '{name}' ({m['source']}): {m['mapped']} images mapped onto training classes, {m['grouped']} "
                      f"with a group; unmapped labels (not scored): {m['unmapped'] or 'none'}.", "",
                      "| arm | macro-F1 | balanced acc. | malignancy AUC | sensitivity at 90 % specificity |", "|---|---|---|---|---|"]
            for arm, v in res["arms"].items():
                lines.append(f"| {arm} | {_fmt(*v['macro_f1'])} | {_fmt(*v['balanced_accuracy'])} | {_fmt(*v['auc'])} | {_fmt(*v['sensitivity'])} |")
        return "\n".join(lines) + ("\n" if lines else "")
