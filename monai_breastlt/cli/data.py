"""``phantom``, ``data-info`` and ``split`` subcommands."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from monai_breastlt.data import (
    SECTIONS,
    check_image_files,
    generate_phantom,
    long_tail_profile,
    prepare_split,
    read_any_source,
    warn_leakage,
)
from monai_breastlt.utils import check_writable_dir


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantom", help="write the built-in long-tailed ultrasound phantom (images, masks, datalist)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--head-count", type=int, default=200, help="images of the largest class")
    p.add_argument("--imbalance-ratio", type=float, default=50.0, help="largest / smallest class count")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a datalist.json already in --out (other data or arguments)")
    p.add_argument("--overlay-strength", type=float, default=None,
                   help="burn in calipers and text whose presence tells the class apart at this strength in [0, 1] (a known shortcut)")
    p.add_argument("--overlay-classes", type=int, nargs="+", default=None, help="labels that carry overlays more often (default: odd)")
    p.set_defaults(func=run_phantom)

    p = sub.add_parser("data-info", help="print the long-tail profile of a data folder, CSV or datalist; warn about unusable "
                       "image files and split leakage")
    p.add_argument("source", help="datalist JSON, folder with datalist.json, BUS-BRA folder, CSV or ROOT/<class>/ folder")
    p.add_argument("--min-count", type=int, default=0, help="merge classes with fewer images into 'other' (BUS-BRA)")
    p.add_argument("--head-ratio", type=float, default=0.5, help="head: count >= head_ratio * max")
    p.add_argument("--tail-ratio", type=float, default=0.1, help="tail: count <= tail_ratio * max")
    p.add_argument("--frames", default="middle", choices=["first", "middle", "all"], help="frames of multi-frame DICOM files")
    p.add_argument("--no-screen", action="store_true", help="skip the scan filter (colour Doppler, split screen, near-blank)")
    p.set_defaults(func=run_data_info)

    p = sub.add_parser("split", help="write a stratified, patient-grouped train/validation/test datalist once")
    p.add_argument("source", help="as for data-info")
    p.add_argument("--out", required=True, help="datalist JSON to write (reused if it exists with the same settings)")
    p.add_argument("--fractions", type=float, nargs=3, default=(0.7, 0.15, 0.15))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-count", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out made with other settings")
    p.add_argument("--frames", default="middle", choices=["first", "middle", "all"],
                   help="frames of multi-frame DICOM files that become entries (all: one per frame, kept in one split)")
    p.set_defaults(func=run_split)


def run_phantom(args: argparse.Namespace) -> int:
    path = generate_phantom(args.out, args.head_count, args.imbalance_ratio, args.image_size, args.seed, overwrite=args.overwrite,
                            overlay_strength=args.overlay_strength, overlay_classes=args.overlay_classes)
    print(f"phantom written to {args.out}; datalist: {path}")
    return 0


def run_data_info(args: argparse.Namespace) -> int:
    sections, classes = read_any_source(args.source, args.min_count, args.frames)
    everything = [i for items in sections.values() for i in items]
    if not args.no_screen:  # first: what is in the images, before what their labels say
        from monai_breastlt.data.screening import format_screening, screen_items

        print(format_screening(screen_items(everything)) + "\n")
    prof = long_tail_profile([i["label"] for i in everything], classes, args.head_ratio, args.tail_ratio)
    print(prof.format_table())
    if set(sections) & set(SECTIONS):
        print("\nper split: " + ", ".join(f"{k} {len(v)}" for k, v in sections.items()))
    bad = check_image_files(sections, args.source, raise_error=False)  # a profile is still worth printing: warn
    if bad:
        logging.getLogger(__name__).warning("%s: %d unusable image file(s): %s", args.source, len(bad), "; ".join(bad))
    warn_leakage(sections, args.source)
    return 0


def run_split(args: argparse.Namespace) -> int:
    check_writable_dir(Path(args.out).parent, "folder of --out")
    sections, classes = read_any_source(args.source, args.min_count, args.frames)
    check_image_files(sections, args.source)  # before anything is written, every bad file named with its entry
    items = [i for v in sections.values() for i in v]
    doc = prepare_split(items, classes, args.out, tuple(args.fractions), args.seed, overwrite=args.overwrite, check_files=False,
                        source=args.source)
    print(f"{args.out}: " + ", ".join(f"{k} {len(doc[k])}" for k in SECTIONS))
    return 0
