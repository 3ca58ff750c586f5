"""``demo``: both phases end to end on the embedded phantom, the RL sampler against plain cross-entropy."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from monai_breastlt.workflows import TINY_NETS, find_bundles, run_bundle, train_synthesis
from monai_breastlt.data import generate_phantom
from monai_breastlt.handlers import mlflow_tracking_settings

# CPU-sized settings; --fast is for tests (about 40 s), the default for the README (about 10 minutes on 2 cores)
PROFILES = {
    "fast": dict(image_size=32, head_count=24, imbalance_ratio=8, autoencoder_epochs=1, perception_epochs=1, unet_epochs=1,
                 controlnet_epochs=1, steps=3, cls_epochs=3, batch_size=8, tiny=True),
    "default": dict(image_size=64, head_count=150, imbalance_ratio=50, autoencoder_epochs=3, perception_epochs=3, unet_epochs=10,
                    controlnet_epochs=5, steps=8, cls_epochs=10, batch_size=16, tiny=False),
}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run both phases on the built-in phantom and compare the RL sampler with plain CE")
    p.add_argument("--out", default="breastlt_demo", help="output folder (data, models, MLflow store, plots)")
    p.add_argument("--fast", action="store_true", help="tiny settings (about a minute), for tests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bundles", default=None, help="folder holding the two bundles (default: next to the package)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    cfg = PROFILES["fast" if args.fast else "default"]
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    syn, cls = find_bundles(args.bundles)
    data = out / "data"
    tracking_uri = f"sqlite:///{out / 'mlruns.db'}"
    start = time.time()
    stamp = lambda msg: print(f"[{time.time() - start:6.0f} s] {msg}", flush=True)  # noqa: E731

    stamp(f"phantom -> {data}")
    generate_phantom(data, cfg["head_count"], cfg["imbalance_ratio"], cfg["image_size"], args.seed, overwrite=True)  # its own folder
    common = {"dataset_dir": str(data), "output_dir": str(out / "synthesis"), "image_size": cfg["image_size"],
              "batch_size": cfg["batch_size"], "seed": args.seed, **(TINY_NETS if cfg["tiny"] else {})}
    epochs = {k: cfg[f"{k}_epochs"] for k in ("autoencoder", "perception", "unet", "controlnet")}
    train_synthesis(syn, common, epochs, generate={"num_inference_steps": cfg["steps"]}, log=stamp)
    # plain CE first: its real-data-only classifier audits the pool, and the RL run then logs the audit to MLflow
    arms = {"plain_ce": {"policy_name": "none", "sampler_target": "real", "pool": str(data / "missing_pool.json")},
            "rl_sampler": {"policy_name": "rl", "sampler_target": "balanced"}}
    reports = {}
    for arm, extra in arms.items():
        arm_out = out / "classification" / arm
        shared = {"dataset_dir": str(data), "output_dir": str(arm_out), "image_size": cfg["image_size"],
                  "batch_size": cfg["batch_size"], "seed": args.seed, **extra}
        stamp(f"classification bundle: train.yaml ({arm})")
        run_bundle(cls, ["train.yaml"], max_epochs=cfg["cls_epochs"], tracking=mlflow_tracking_settings(), tracking_uri=tracking_uri,
                   experiment_name="breastlt_demo", run_name=arm, **shared)
        stamp(f"classification bundle: evaluate.yaml ({arm}, test split)")
        run_bundle(cls, ["train.yaml", "evaluate.yaml"], workflow_type="infer", **shared)
        reports[arm] = json.loads((arm_out / "test_report.json").read_text())
        if arm == "plain_ce":
            stamp("synthesis bundle: audit.yaml (pool against the real images, with the real-data-only classifier)")
            run_bundle(syn, ["common.yaml", "audit.yaml"], workflow_type="infer", classifier_ckpt=str(arm_out / "models" / "model.pt"), **common)
    audit = json.loads((data / "pool" / "audit" / "audit_report.json").read_text())["overall"]
    print(format_table({k: reports[k] for k in ('rl_sampler', 'plain_ce')}))
    print(
        f"\nsynthetic pool audit ({audit['n']} images): class fidelity {100 * audit['fidelity']:.1f} %, sketch Dice "
        f"{audit['sketch_dice']:.2f}, FID {audit['fid']:.2f} (real vs real {audit['real_vs_real']['fid']:.2f}), "
        f"near-copies of real images {audit['near_copies']}, of real lesions {audit.get('lesion_near_copies', 'n/a')}"
    )
    print(f"\nfinished in {time.time() - start:.0f} s")
    print(f"MLflow store : mlflow ui --backend-store-uri {tracking_uri}")
    print(f"plots        : {out / 'classification' / 'rl_sampler'} (test_confusion_matrix.png, val_ratio_trajectory.png)")
    print(f"sample grid  : {data / 'pool' / 'sample_grid.png'}; audit: {data / 'pool' / 'audit'}")
    return 0


def format_table(reports: dict[str, dict]) -> str:
    """Markdown table of the test figures of each arm."""
    cols = [("macro_f1", "macro-F1"), ("balanced_accuracy", "balanced acc."), ("tail_recall", "tail recall"), ("head_recall", "head recall")]
    fmt = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"  # noqa: E731
    lines = ["| arm | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for arm, rep in reports.items():
        lines.append(f"| {arm} | " + " | ".join(fmt(rep.get(k)) for k, _ in cols) + " |")
    return "\n".join(lines)
