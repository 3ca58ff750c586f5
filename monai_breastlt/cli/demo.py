"""``demo``: the method end to end on the built-in phantom, the RL sampler against plain cross-entropy, and a one-page
summary.

By default the synthetic pool comes from the pretrained phase-1 models shipped with the package
(:mod:`monai_breastlt.pretrained`), so the demo spends its minutes on phase 2; ``--train-synthesis`` trains phase 1
here first (a few epochs per stage: a weak generator). ``--fast`` makes everything tiny (for tests): it trains tiny
phase-1 networks, unless ``--models`` gives pretrained ones.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from monai_breastlt.data import DEFAULT_SUBTYPES, generate_phantom, load_datalist
from monai_breastlt.handlers import mlflow_tracking_settings
from monai_breastlt.pretrained import phantom_models_dir, read_pretrained
from monai_breastlt.utils import atomic_open, read_json
from monai_breastlt.visualize import plot_demo_summary
from monai_breastlt.workflows import TINY_NETS, find_bundles, pretrained_overrides, run_bundle, train_synthesis

# CPU-sized settings. "default": a phantom of 150 head images (at the pretrained models' image size when they are used);
# its phase-1 epochs apply with --train-synthesis only. "fast": tiny everything, for tests.
PROFILES = {
    "fast": dict(image_size=32, head_count=24, imbalance_ratio=8, autoencoder_epochs=1, perception_epochs=1, unet_epochs=1,
                 controlnet_epochs=1, steps=3, cls_epochs=3, batch_size=8, tiny=True),
    "default": dict(image_size=64, head_count=150, imbalance_ratio=50, autoencoder_epochs=3, perception_epochs=3, unet_epochs=10,
                    controlnet_epochs=5, steps=8, cls_epochs=10, batch_size=16, tiny=False),
}
# plain CE first: with a trained phase 1 its real-data-only classifier audits the pool, and the RL run then logs the
# audit to MLflow
ARMS = {"plain_ce": {"policy_name": "none", "sampler_target": "real", "pool": "missing_pool.json"},
        "rl_sampler": {"policy_name": "rl", "sampler_target": "balanced"}}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="both phases on the built-in phantom: the RL sampler against plain CE, with a one-page summary",
                       description="Default: a synthetic pool from the pretrained phase-1 models shipped with the package, then "
                       "phase 2 (the RL sampler against plain cross-entropy, same seed), then OUT/summary.md and summary.png.")
    p.add_argument("--out", default="breastlt_demo", help="output folder (data, models, MLflow store, summary)")
    p.add_argument("--models", default=None, help="pretrained phase-1 models folder (default: the package's, "
                   "monai_breastlt/pretrained/phantom; made by `export-models`)")
    p.add_argument("--train-synthesis", action="store_true", help="train phase 1 here instead of using pretrained models (short: a weak generator)")
    p.add_argument("--fast", action="store_true", help="tiny data, networks and epochs (under a minute), for tests; phase 1 "
                   "is trained here unless --models is given")
    p.add_argument("--seed", type=int, default=0, help="seed of the networks, the sampling and the classifiers")
    p.add_argument("--data-seed", type=int, default=1, help="seed of the phantom; must differ from the one the pretrained "
                   "models learnt from (0), so that no test image was a training image of the generator")
    p.add_argument("--bundles", default=None, help="folder holding the two bundles (default: the package's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--verbose", action="store_true", help="the bundles' per-iteration logs instead of progress bars")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    if args.models and args.train_synthesis:
        raise ValueError("--models gives pretrained phase-1 models, --train-synthesis trains them here: pass one or the other.")
    cfg = PROFILES["fast" if args.fast else "default"]
    models = Path(args.models) if args.models else None if args.fast or args.train_synthesis else phantom_models_dir()
    manifest = read_pretrained(models) if models else None  # a missing or altered model fails here, before any work
    if manifest:
        _check_models(manifest, models, args.data_seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    syn, cls = find_bundles(args.bundles)
    data = out / "data"
    clock = _Clock()
    image_size = manifest["image_size"] if manifest else cfg["image_size"]
    clock.stage(f"phantom: {cfg['head_count']} head images, imbalance {cfg['imbalance_ratio']}, {image_size} px -> {data}")
    generate_phantom(data, cfg["head_count"], cfg["imbalance_ratio"], image_size, args.data_seed, overwrite=True)  # its own folder
    common = {"dataset_dir": str(data), "output_dir": str(out / "synthesis"), "image_size": image_size,
              "batch_size": cfg["batch_size"], "seed": args.seed}
    if manifest:
        common.update(pretrained_overrides(models))
        clock.stage(f"synthesis bundle: inference.yaml (pool, from the pretrained models in {models})")
        run_bundle(syn, ["common.yaml", "inference.yaml"], workflow_type="infer", verbose=args.verbose, progress=not args.verbose,
                   **common, **manifest["sampling"])
        judge = models / "judge.pt"
    else:
        common.update(TINY_NETS if cfg["tiny"] else {})
        epochs = {k: cfg[f"{k}_epochs"] for k in ("autoencoder", "perception", "unet", "controlnet")}
        train_synthesis(syn, common, epochs, generate={"num_inference_steps": cfg["steps"], "progress": not args.verbose},
                        log=clock.stage, verbose=args.verbose)
        judge = None
    reports = _phase_two(args, cfg, cls, syn, out, common, judge, clock)
    audit = read_json(data / "pool" / "audit" / "audit_report.json")
    clock.stage("summary")
    summary = write_summary(out, reports, audit, args, image_size, models, manifest, clock)
    print()
    print(format_table(reports))
    print("\n" + _audit_line(audit, "the shipped judge" if manifest else "the plain-CE classifier"))
    print(f"\nfinished in {clock.elapsed():.0f} s")
    print(f"summary      : {summary} and {summary.with_suffix('.png')}")
    print(f"MLflow store : mlflow ui --backend-store-uri sqlite:///{out / 'mlruns.db'}")
    return 0


def _check_models(manifest: dict, models: Path, data_seed: int) -> None:
    """Pretrained models fit the demo's phantom: its subtypes, and another phantom than the one they learnt from."""
    phantom = [s.name for s in DEFAULT_SUBTYPES]
    if manifest["classes"] != phantom:
        raise ValueError(f"{models}: entry 'classes' is {manifest['classes']}; the demo's phantom has {phantom}.")
    if data_seed == manifest["data_seed"]:
        raise ValueError(f"--data-seed {data_seed}: the pretrained models in {models} learnt from the phantom of that seed, "
                         "whose images would then be in the test split; pass another one.")


def _phase_two(args: argparse.Namespace, cfg: dict, cls: Path, syn: Path, out: Path, common: dict, judge: Path | None,
               clock: _Clock) -> dict[str, dict]:
    """Both arms through the classification bundle (train, then the test split), the pool's audit after plain CE."""
    data = Path(common["dataset_dir"])
    reports = {}
    for arm, extra in ARMS.items():
        arm_out = out / "classification" / arm
        extra = {**extra, "pool": str(data / extra["pool"])} if "pool" in extra else extra
        shared = {"dataset_dir": str(data), "output_dir": str(arm_out), "image_size": common["image_size"],
                  "batch_size": cfg["batch_size"], "seed": args.seed, **extra}
        clock.stage(f"classification bundle: train.yaml ({arm} training, {cfg['cls_epochs']} epochs)")
        run_bundle(cls, ["train.yaml"], max_epochs=cfg["cls_epochs"], tracking=mlflow_tracking_settings(),
                   tracking_uri=f"sqlite:///{out / 'mlruns.db'}", experiment_name="breastlt_demo", run_name=arm, verbose=args.verbose, **shared)
        clock.stage(f"classification bundle: evaluate.yaml ({arm} test, on the test split)")
        run_bundle(cls, ["train.yaml", "evaluate.yaml"], workflow_type="infer", verbose=args.verbose, **shared)
        reports[arm] = read_json(arm_out / "test_report.json")
        if arm == "plain_ce":
            who = "the judge shipped with the models" if judge else "the plain-CE classifier (real images only)"
            clock.stage(f"synthesis bundle: audit.yaml (audit, the pool against the real images, judged by {who})")
            run_bundle(syn, ["common.yaml", "audit.yaml"], workflow_type="infer", verbose=args.verbose,
                       classifier_ckpt=str(judge or arm_out / "models" / "model.pt"), **common)
    return {k: reports[k] for k in ("rl_sampler", "plain_ce")}


class _Clock:
    """Seconds since the start; one printed line per stage, and the seconds each stage took (named by the word in
    brackets of its line up to a comma, e.g. ``(unet)``, else by what precedes the first colon)."""

    def __init__(self) -> None:
        self.start = self.last = time.time()
        self.stages: list[list] = []

    def elapsed(self) -> float:
        return time.time() - self.start

    def stage(self, msg: str) -> None:
        now = time.time()
        if self.stages:
            self.stages[-1][1] = now - self.last
        named = re.search(r"\(([^,)]+)", msg)
        self.stages.append([named.group(1) if named else msg.split(":")[0], 0.0])
        self.last = now
        print(f"[{now - self.start:6.0f} s] {msg}", flush=True)


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def format_table(reports: dict[str, dict]) -> str:
    """Markdown table of the test figures of each arm."""
    cols = [("macro_f1", "macro-F1"), ("balanced_accuracy", "balanced acc."), ("tail_recall", "tail recall"), ("head_recall", "head recall")]
    lines = ["| arm | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for arm, rep in reports.items():
        lines.append(f"| {arm} | " + " | ".join(_pct(rep.get(k)) for k, _ in cols) + " |")
    return "\n".join(lines)


def pool_fidelity(audit: dict) -> tuple[float | None, float | None]:
    """Macro class fidelity over the generated classes, and the judge's macro accuracy on real images of the same
    classes (``None`` where the audit lacks a figure)."""
    rows = [v for v in audit["per_class"].values() if v.get("n") and v.get("fidelity") is not None]
    fid = [v["fidelity"] for v in rows]
    real = [v.get("real_accuracy") for v in rows]
    mean = lambda xs: sum(xs) / len(xs) if xs and None not in xs else None  # noqa: E731
    return mean(fid), mean(real)


def _audit_line(audit: dict, judge: str) -> str:
    o = audit["overall"]
    fid, real = pool_fidelity(audit)
    ratio = f" (ratio {fid / real:.2f})" if fid is not None and real else ""
    return (f"synthetic pool audit ({o['n']} images, judged by {judge}): class fidelity {_pct(fid)} % macro over the "
            f"generated subtypes, the judge on real images of those subtypes {_pct(real)} %{ratio}; sketch Dice "
            f"{o['sketch_dice']:.2f} (chance {o.get('sketch_dice_chance', float('nan')):.2f}); FID {o['fid']:.2f} (real vs real "
            f"{o['real_vs_real']['fid']:.2f}); near-copies of real images {o['near_copies']}, of real lesions {o.get('lesion_near_copies', 'n/a')}")


def _pool_samples(data: Path, classes: list[str], per_class: int = 4) -> dict:
    """Per class: its first real training image and its first ``per_class`` synthetic images, in [0, 1]."""
    read = lambda p: np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255.0  # noqa: E731
    real, _ = load_datalist(data / "datalist.json", "training")
    pool, _ = load_datalist(data / "pool" / "pool.json")
    out = {}
    for c, name in enumerate(classes):
        first = next((r["image"] for r in real if int(r["label"]) == c), None)
        syn = sorted((e for e in pool if int(e["label"]) == c), key=lambda e: e["id"])[:per_class]
        out[name] = (read(first) if first else None, [read(e["image"]) for e in syn])
    return out


def write_summary(out: Path, reports: dict[str, dict], audit: dict, args: argparse.Namespace, image_size: int, models: Path | None,
                  manifest: dict | None, clock: _Clock) -> Path:
    """``OUT/summary.md`` and ``OUT/summary.png``: the two arms, per class, the pool and how it was made."""
    data = out / "data"
    classes = reports["rl_sampler"]["classes"]
    history = read_json(out / "classification" / "rl_sampler" / "val_report.json").get("ratio_history", [])  # per validation
    plot_demo_summary(_pool_samples(data, classes), {arm: reports[arm]["recall"] for arm in ("plain_ce", "rl_sampler")},
                      history, out / "summary.png",
                      title="monai-breastlt demo: the RL sampler against plain cross-entropy (phantom test split)")
    real, _ = load_datalist(data / "datalist.json", "training")
    counts = [sum(int(r["label"]) == c for r in real) for c in range(len(classes))]
    made = (f"the pretrained models in `{models}` (made by `{manifest['made_by']['command']}`; sampled with "
            f"{manifest['sampling']['sampler'].upper()} {manifest['sampling']['num_inference_steps']} steps, guidance "
            f"{manifest['sampling']['guidance_scale']})" if manifest else "phase 1 trained in this run (few epochs: a weak generator)")
    judge = "the judge shipped with the models (trained on an independent, class-balanced phantom)" if manifest else "the plain-CE classifier"
    lines = [
        "# monai-breastlt demo: the RL sampler against plain cross-entropy", "",
        f"Phantom (seed {args.data_seed}): {len(classes)} subtypes, {image_size}×{image_size} px, training images per subtype {', '.join(map(str, counts))}; test split {sum(reports['plain_ce']['support'])} images.",
        f"Synthetic pool: {audit['overall']['n']} images from {made}.",
        f"Phase 2: the classification bundle, same seed ({args.seed}), plain cross-entropy on the real images against the "
        "RL sampler (real + synthetic, class-balanced epochs, per-class synthetic share set by PPO agents after each validation).",
        "", "![summary](summary.png)", "", format_table(reports), "",
        "| subtype | real training images | synthetic | test images | recall plain CE % | recall RL sampler % | final synthetic share % | pool fidelity % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    last = (history or [{"ratios": [None] * len(classes)}])[-1]["ratios"]
    for c, name in enumerate(classes):
        a = audit["per_class"].get(name, {})
        lines.append(f"| {name} | {counts[c]} | {a.get('n', 0)} | {reports['plain_ce']['support'][c]} | "
                     f"{_pct(reports['plain_ce']['recall'][c]) if reports['plain_ce']['support'][c] else 'n/a'} | "
                     f"{_pct(reports['rl_sampler']['recall'][c]) if reports['rl_sampler']['support'][c] else 'n/a'} | "
                     f"{_pct(last[c])} | {_pct(a.get('fidelity')) if a.get('n') else 'n/a'} |")
    lines += [
        "", _audit_line(audit, judge) + ".", "",
        f"Wall time {clock.elapsed():.0f} s on {os.cpu_count()} CPU cores ({platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() > 1 else ''}), {datetime.date.today().isoformat()}; per stage: "
        + ", ".join(f"{name} {sec:.0f} s" for name, sec in clock.stages[:-1]) + ".",
        "", f"Files: `{data / 'pool'}` (pool, `sample_grid.png`, `audit/`), `{out / 'classification'}/<arm>/` (models, reports, "
        f"confusion matrices, ratio trajectory), MLflow: `mlflow ui --backend-store-uri sqlite:///{out / 'mlruns.db'}`.",
    ]
    path = out / "summary.md"
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path
