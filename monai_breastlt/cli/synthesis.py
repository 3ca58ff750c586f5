"""``generate`` and ``audit``: a synthetic pool from trained phase-1 models, and its audit, through the synthesis bundle;
``export-models``: the package's pretrained phantom models from a phase-1 benchmark run.

``generate`` and ``audit`` run the bundle's ``inference.yaml`` / ``audit.yaml`` (what ``python -m monai.bundle run``
runs), so the command and the bundle give the same pool and the same report. A setting left out keeps the bundle
config's default.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from monai_breastlt.cli import json_in
from monai_breastlt.utils import read_json


def add_parsers(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="generate a synthetic pool with trained phase-1 models (resumable)",
                       description="Sketches come from the perception net on the data's unannotated training images; "
                       "settings left out keep the synthesis bundle's inference.yaml defaults.")
    g.add_argument("data", help="data folder holding datalist.json (the split the models were trained on)")
    g.add_argument("--models", required=True, help="folder holding ldm.pt and perception.pt (the synthesis bundle's models/, "
                   "or a pretrained-models folder such as monai_breastlt/pretrained/phantom)")
    g.add_argument("--pool", default=None, help="pool folder (default: DATA/pool); re-running resumes it")
    g.add_argument("--target-mode", default=None, choices=["fill", "up_to", "each"], help="fill: up to the largest class")
    g.add_argument("--target-n", type=int, default=None, help="N of up_to / each")
    g.add_argument("--sampler", default=None, choices=["ddim", "ddpm"], help="ddpm: ancestral, respaced to --steps")
    g.add_argument("--steps", type=int, default=None, help="sampling steps")
    g.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (1: none)")
    g.add_argument("--guidance-interval", type=int, nargs=2, default=None, metavar=("T_LOW", "T_HIGH"), help="guide only these timesteps")
    g.add_argument("--conditioning-scale", type=float, default=None, help="ControlNet (sketch) scale")
    g.add_argument("--perturb", type=float, default=None, help="sketch perturbation probability")
    g.add_argument("--cross-class-sketches", action="store_const", const=True, default=None,
                   help="take sketches from images of every class, not only the generated one")
    g.add_argument("--image-size", type=int, default=None, help="the models' training image side")
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--bundles", default=None, help="folder holding the two bundles (default: next to the package)")
    g.set_defaults(func=run_generate)

    a = sub.add_parser("audit", help="audit a synthetic pool: class fidelity, sketch Dice, FID/MMD, near-copies of real images")
    a.add_argument("pool", help="pool manifest (POOL/pool.json) or its folder")
    a.add_argument("--real", required=True, help="datalist JSON (or its folder) whose training images the pool is compared with")
    a.add_argument("--classifier", required=True, help="a classifier trained on real data only (the classification bundle's models/model.pt)")
    a.add_argument("--models", required=True, help="folder holding perception.pt, and ldm.pt for the autoencoder figures")
    a.add_argument("--out", default=None, help="report folder (default: POOL/audit)")
    a.add_argument("--filter", action="store_true", help="also write POOL/pool_filtered.json without near-copies and low-fidelity images")
    a.add_argument("--min-class-prob", type=float, default=None, help="with --filter: the classifier's least probability of the image's class")
    a.add_argument("--no-autoencoder", action="store_true", help="skip the classifier on autoencoded real images (needs ldm.pt)")
    a.add_argument("--image-size", type=int, default=None, help="the models' training image side")
    a.add_argument("--batch-size", type=int, default=None)
    a.add_argument("--bundles", default=None, help="folder holding the two bundles (default: next to the package)")
    a.set_defaults(func=run_audit)

    e = sub.add_parser("export-models", help="make the pretrained phantom models (the demo's default) from a `bench synthesis` run",
                       description="Copies RUN/synthesis/models/{ldm,perception}.pt and the first judge RUN/classifier/models/model.pt, "
                       "weights only and in half precision, with a manifest (pretrained.json: architectures, sampling settings, "
                       "the run's audit figures, SHA-256 of each file), into the package's pretrained/phantom folder; the "
                       "folder is assembled beside it and renamed into place.")
    e.add_argument("run", help="the --out folder of a finished `python -m monai_breastlt bench synthesis` run on the phantom")
    e.add_argument("--dest", default=None, help="models folder to write (default: the package's monai_breastlt/pretrained/phantom)")
    e.add_argument("--replace", action="store_true", help="replace the models already there")
    e.set_defaults(func=run_export_models)


def _given(args: argparse.Namespace, names: dict[str, str]) -> dict:
    """Bundle overrides for the options given (argument name -> config key), each checked against its range first."""
    from monai_breastlt.workflows import check_settings

    given = {key: getattr(args, name) for name, key in names.items() if getattr(args, name) is not None}
    check_settings(given, {key: "--" + name.replace("_", "-") for name, key in names.items()})
    return given


def _ldm(models: Path, image_size: int | None) -> dict:
    """``ldm_def`` and ``image_size`` overrides from ``models/ldm.pt``: the size its diffusion stages were trained on,
    unless ``--image-size`` gives it (refused when it differs from the recorded one)."""
    import logging

    from monai_breastlt.workflows import read_ldm_checkpoint

    ldm_def, trained = read_ldm_checkpoint(models / "ldm.pt")
    if trained is None:
        if image_size is None:
            logging.getLogger(__name__).warning("%s records no training image size (saved by an older version): the bundle's "
                                                "image_size is used; pass --image-size if the models were trained at another size.",
                                                models / "ldm.pt")
        return {"ldm_def": ldm_def}
    if image_size is not None and [image_size, image_size] != trained:
        raise ValueError(f"--image-size {image_size}: {models / 'ldm.pt'} was trained on {'x'.join(map(str, trained))} images; "
                         f"leave --image-size out (it is read from the checkpoint) or pass {trained[0]}.")
    return {"ldm_def": ldm_def, "image_size": trained[0]}


def _models_overrides(models: Path, image_size: int | None, ldm: bool = True) -> dict:
    """Bundle overrides for a models folder: ``ckpt_dir`` and the LDM's architecture and image size (read from
    ``ldm.pt``, see :func:`_ldm`); for a pretrained-models folder (with ``pretrained.json``) also the perception net's
    features."""
    from monai_breastlt.pretrained import MANIFEST_NAME
    from monai_breastlt.workflows import pretrained_overrides

    if (models / MANIFEST_NAME).is_file():
        return pretrained_overrides(models)
    return {"ckpt_dir": str(models), **(_ldm(models, image_size) if ldm else {})}


def run_generate(args: argparse.Namespace) -> int:
    from monai_breastlt.workflows import find_bundles, run_bundle

    syn, _ = find_bundles(args.bundles)
    models = Path(args.models)
    if not (Path(args.data) / "datalist.json").is_file():
        raise FileNotFoundError(f"{Path(args.data) / 'datalist.json'}: no datalist (write one with `split` or `phantom`).")
    pool = Path(args.pool) if args.pool else Path(args.data) / "pool"
    overrides = {"dataset_dir": str(args.data), "pool_dir": str(pool), **_models_overrides(models, args.image_size),
                 **_given(args, {"target_mode": "target_mode", "target_n": "target_n", "sampler": "sampler", "steps": "num_inference_steps",
                                 "guidance_scale": "guidance_scale", "guidance_interval": "guidance_interval",
                                 "conditioning_scale": "conditioning_scale", "perturb": "perturb",
                                 "cross_class_sketches": "cross_class_sketches", "image_size": "image_size",
                                 "batch_size": "batch_size", "seed": "seed"})}
    run_bundle(syn, ["common.yaml", "inference.yaml"], workflow_type="infer", **overrides)
    doc = read_json(pool / "pool.json")
    print(f"pool: {len(doc['training'])} images in {pool} (manifest pool.json, sample_grid.png)")
    return 0


def run_audit(args: argparse.Namespace) -> int:
    from monai_breastlt.workflows import find_bundles, run_bundle

    syn, _ = find_bundles(args.bundles)
    manifest, real = json_in(args.pool, "pool.json"), json_in(args.real, "datalist.json")
    for path, what in ((manifest, "pool manifest"), (real, "real datalist")):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: {what} not found.")
    models = Path(args.models)
    out = Path(args.out) if args.out else manifest.parent / "audit"
    overrides = {"dataset_dir": str(real.parent), "datalist": str(real), "classifier_ckpt": str(args.classifier),
                 "pool_manifest": str(manifest), "audit_dir": str(out), "filter": args.filter,
                 "filtered_manifest": str(manifest.parent / "pool_filtered.json"), "use_autoencoder": not args.no_autoencoder,
                 **_models_overrides(models, args.image_size, ldm=not args.no_autoencoder),
                 **_given(args, {"min_class_prob": "min_class_prob", "image_size": "image_size", "batch_size": "batch_size"})}
    run_bundle(syn, ["common.yaml", "audit.yaml"], workflow_type="infer", **overrides)
    report = read_json(out / "audit_report.json")
    o = report["overall"]
    print(f"audit of {o['n']} images: class fidelity {100 * o['fidelity']:.1f} %, sketch Dice {o['sketch_dice']:.2f} "
          f"(chance {o['sketch_dice_chance']:.2f}), FID {o['fid']:.2f} (real vs real {o['real_vs_real']['fid']:.2f}), "
          f"near-copies {o['near_copies']} images / {o['lesion_near_copies']} lesions")
    print(f"report: {out / 'audit_report.json'} (per class), {out / 'audit_grid.png'}")
    if args.filter:
        print(f"filtered pool: {len(read_json(manifest.parent / 'pool_filtered.json')['training'])} images in {manifest.parent / 'pool_filtered.json'}")
    return 0


def run_export_models(args: argparse.Namespace) -> int:
    from monai_breastlt.pretrained import export_pretrained, phantom_models_dir

    manifest = export_pretrained(args.run, args.dest, replace=args.replace)
    dest = Path(args.dest) if args.dest else phantom_models_dir()
    f = manifest["figures"]
    size = sum(v["bytes"] for v in manifest["files"].values()) / 1e6
    print(f"models: {dest} ({', '.join(manifest['files'])}, {size:.1f} MB), made by `{manifest['made_by']['command']}`")
    real = f["judge_macro_real_accuracy"]
    print(f"audit of that run, with the judge shipped: macro class fidelity {100 * f['judge_macro_fidelity']:.1f} %"
          + (f" (the judge on real images of those subtypes: {100 * real:.1f} %)" if real is not None else ""))
    return 0
