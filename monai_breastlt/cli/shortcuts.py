"""``shortcuts``: does a classifier read the lesion or the scanner's overlays? Accuracy per class with overlays as they
are, masked, and swapped between classes; optionally trains the plain and the overlay-masking classifier first."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

ARMS = ("plain", "masked")  # the classification bundle without and with mask_overlays


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shortcuts", help="shortcut audit: per-class accuracy with overlays as is, masked and swapped between classes",
                       description="Either audit a trained classifier (--classifier), or train the classification bundle "
                       "twice (--train-epochs: plain, and with the overlay masking transform) and audit both.")
    p.add_argument("data", help="datalist JSON, folder with datalist.json, BUS-BRA folder, CSV or ROOT/<class>/ folder")
    p.add_argument("--classifier", default=None, help="a trained classification bundle model (models/model.pt)")
    p.add_argument("--mask-overlays", action="store_true", help="with --classifier: it was trained with mask_overlays")
    p.add_argument("--train-epochs", type=int, default=None, help="train the plain and the masked arm for this many epochs")
    p.add_argument("--out", default="breastlt_shortcuts", help="output folder (split, models, shortcuts_report.json)")
    p.add_argument("--section", default="test", help="the datalist section audited")
    p.add_argument("--crop-scan-area", action="store_true", help="crop every image to the scan area (training and audit)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--min-count", type=int, default=0, help="BUS-BRA: merge classes with fewer images into 'other'")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the training and the swap partners")
    p.add_argument("--bundles", default=None, help="folder holding the two bundles (default: next to the package)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.set_defaults(func=run_shortcuts)


def run_shortcuts(args: argparse.Namespace) -> int:
    from monai_breastlt.data import load_datalist, prepare_benchmark_data
    from monai_breastlt.shortcuts import ShortcutAudit, format_shortcut_table
    from monai_breastlt.utils import atomic_write_json
    from monai_breastlt.workflows import classifier_from_bundle, find_bundles, run_bundle

    if (args.classifier is None) == (args.train_epochs is None):
        raise ValueError("give either --classifier (audit a trained model) or --train-epochs (train both arms, then audit).")
    if args.threads:
        torch.set_num_threads(args.threads)
    _, cls = find_bundles(args.bundles)
    out = Path(args.out)
    datalist = prepare_benchmark_data(args.data, out, None, args.min_count, seed=args.seed)
    items, classes = load_datalist(datalist, args.section)
    if args.classifier is not None:
        arms = {"masked" if args.mask_overlays else "plain": Path(args.classifier)}
    else:
        arms = {arm: out / arm / "models" / "model.pt" for arm in ARMS}
        for arm, ckpt in arms.items():
            if ckpt.is_file():
                print(f"{arm}: {ckpt} exists, not retrained")
                continue
            run_bundle(cls, ["train.yaml"], dataset_dir=str(out), datalist=str(datalist), pool=None, output_dir=str(out / arm),
                       policy_name="none", sampler_target="real", max_epochs=args.train_epochs, image_size=args.image_size,
                       batch_size=args.batch_size, seed=args.seed, mask_overlays=arm == "masked", crop_scan_area=args.crop_scan_area)
    report = {"datalist": str(datalist), "section": args.section, "arms": {}}
    for arm, ckpt in arms.items():
        net = classifier_from_bundle(cls, len(classes), ckpt)
        audit = ShortcutAudit(net, classes, args.image_size, mask_overlays=arm == "masked", crop_scan_area=args.crop_scan_area,
                              batch_size=args.batch_size, seed=args.seed)
        report["arms"][arm] = audit.audit(items)
        print(format_shortcut_table(report["arms"][arm], f"{arm} classifier ({ckpt}), {args.section} split, {len(items)} images") + "\n")
    atomic_write_json(report, out / "shortcuts_report.json")
    print(f"report: {out / 'shortcuts_report.json'}")
    return 0
