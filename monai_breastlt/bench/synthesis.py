"""Phase-1 quality benchmark: train the whole synthesis phase on the phantom, then audit the pool.

Reports per-class class fidelity (a real-data classifier's accuracy on the synthetic images, next to the same
classifier's recall on real test images), sketch adherence (Dice), FID/MMD against a real-vs-real baseline and the
sample grid.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from monai_breastlt.data import generate_phantom, load_datalist, prepare_benchmark_data
from monai_breastlt.synthesis import filter_pool
from monai_breastlt.utils import atomic_write_json, read_json
from monai_breastlt.workflows import TINY_NETS, find_bundles, run_bundle, train_synthesis

__all__ = ["SYNTHESIS_PROFILES", "benchmark_synthesis", "format_synthesis_report"]

# 16x16 latents (a 4x autoencoder, as MONAI's 2D LDM tutorial at 64x64) and a small UNet: on a CPU budget the number
# of diffusion steps matters more than the width of the network
COMPACT_NETS = {"ldm_def#ae_channels": [32, 64, 64], "ldm_def#latent_channels": 4, "ldm_def#unet_channels": [32, 64, 64]}

# "cpu": under an hour on 2 cores; "gpu": a longer schedule for a GPU; "tiny": tests.
# judge_count: on the phantom, the audit's judge trains on an independent, class-balanced phantom set of this many
# images per class (its labels are ground truth), so fidelity measures the generator rather than how few real tail
# images a judge would otherwise learn from; with --data the judge trains on the real training split.
# judges: fidelity is the mean over this many judges (seeds seed, seed + 1...): one judge's figure moves by several
# points with its seed alone.
# judge_smooth_prob: the judge trains with random Gaussian blur, so it recognises a subtype by its lesion rather than
# by speckle grain, which every latent diffusion model loses in its autoencoder (the audit reports the judge's
# accuracy on autoencoded real images to show what is left attainable).
# perception: the ControlNet learns from ExtractSketch sketches of real images (mask contour included) and generates
# from the perception net's sketches of unannotated ones, so the perception net is what makes the two alike; 30
# epochs instead of 4 raised macro fidelity by 5.7 and 3.5 points on two seeds (CHANGELOG.md).
# sampler: ancestral DDPM (respaced to `steps`) against DDIM on the same models, 25 steps: macro fidelity +1.7 and
# +10.0 points on two seeds, sketch Dice +0.03 and +0.04, FID 3.1 and 1.8 higher; on BUS-BRA it also copies patient
# scans 2.5 times as often, which the audit flags (CHANGELOG.md).
SYNTHESIS_PROFILES = {
    "tiny": dict(head_count=16, imbalance_ratio=4, image_size=32, batch_size=8, autoencoder=1, perception=1, unet=1,
                 controlnet=1, steps=2, sampler="ddpm", guidance_scale=2.0, classifier_epochs=1, epoch_size=None, judge_count=6, judges=2,
                 nets=TINY_NETS, lr={}, class_balance=0.5, checkpoint_interval=1, judge_smooth_prob=0.5),
    "cpu": dict(head_count=300, imbalance_ratio=50, image_size=64, batch_size=16, autoencoder=15, perception=30, unet=220,
                controlnet=80, steps=25, sampler="ddpm", guidance_scale=5.0, classifier_epochs=12, epoch_size=None, judge_count=400, judges=3,
                nets=COMPACT_NETS, lr={"unet": 5e-4, "controlnet": 1e-3}, class_balance=0.5, checkpoint_interval=10,
                judge_smooth_prob=0.5),
    "gpu": dict(head_count=300, imbalance_ratio=50, image_size=64, batch_size=32, autoencoder=30, perception=30,
                unet=1500, controlnet=500, steps=100, sampler="ddpm", guidance_scale=3.0, classifier_epochs=30, epoch_size=None,
                judge_count=1000, judges=3, nets={}, lr={"controlnet": 1e-3}, class_balance=0.5, checkpoint_interval=10,
                judge_smooth_prob=0.5),
}


def benchmark_synthesis(
    out_dir: str | os.PathLike,
    profile: str = "cpu",
    seed: int = 0,
    bundles_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
    data_source: str | os.PathLike | None = None,
    min_count: int = 0,
    imbalance_ratio: float | None = None,
    image_size: int | None = None,
    target_mode: str = "fill",
    target_n: int | None = None,
    cross_class_sketches: bool = False,
    min_class_prob: float = 0.5,
) -> dict:
    """Phantom (or your data) -> synthesis bundle (all stages + pool) -> real-only classifiers (judges) -> audit ->
    filtered pool; resumable by stage.

    Args:
        out_dir: output folder (``data/`` with the phantom and ``data/pool``, ``synthesis/``, ``classifier*/``).
        profile: a key of :data:`SYNTHESIS_PROFILES`.
        seed: seed of the phantom, the networks and the sampling.
        bundles_dir: folder holding the two bundles (default: the package's).
        log: progress printer.
        data_source: real data instead of the phantom (anything :func:`~monai_breastlt.data.read_any_source` reads);
            it is split by patient exactly as ``bench lt`` splits it (same ``min_count``, seed 0), so the pool made
            here can feed ``bench lt --pool`` on the same data without test images leaking into the generator.
        min_count: with ``data_source``, BUS-BRA classes with fewer images merge into "other".
        imbalance_ratio: with ``data_source``, subsample its training split to this ratio (CIFAR-LT), as
            ``bench lt --imbalance-ratio`` does.
        image_size: image side (default: the profile's).
        target_mode, target_n: how many images per class the pool gets (see ``plan_targets``).
        cross_class_sketches: also make ``data/pool_xc``: the same models, sketches drawn from every class's images
            (layouts a tail class never had), audited and filtered the same way.
        min_class_prob: the filter's threshold on the judges' mean probability of an image's own class.

    Returns:
        the benchmark report (also written to ``synthesis_benchmark.json`` and ``.md``).
    """
    if profile not in SYNTHESIS_PROFILES:
        raise ValueError(f"profile must be one of {sorted(SYNTHESIS_PROFILES)}, got '{profile}'.")
    cfg = dict(SYNTHESIS_PROFILES[profile])
    if image_size:
        cfg["image_size"] = int(image_size)
    syn, cls = find_bundles(bundles_dir)
    out = Path(out_dir).resolve()
    data = out / "data"
    start = time.time()
    judge_data = _prepare_data(cfg, out, seed, data_source, min_count, imbalance_ratio)
    common = {"dataset_dir": str(data), "output_dir": str(out / "synthesis"), "image_size": cfg["image_size"],
              "batch_size": cfg["batch_size"], "seed": seed, "class_balance": cfg["class_balance"],
              "checkpoint_interval": cfg["checkpoint_interval"], **cfg["nets"]}
    epochs = {k: cfg[k] for k in ("autoencoder", "perception", "unet", "controlnet")}
    generate = {"num_inference_steps": cfg["steps"], "sampler": cfg["sampler"], "guidance_scale": cfg["guidance_scale"],
                "target_mode": target_mode, "target_n": target_n}
    lrs = {stage: {"learning_rate": lr} for stage, lr in cfg["lr"].items()}
    times = train_synthesis(syn, common, epochs, generate=generate, log=log, stage_overrides=lrs)
    judges = _train_judges(cls, cfg, judge_data, out, seed, times, log)
    t = time.time()
    report = {"profile": profile, "settings": cfg, "seed": seed,
              **_audit_and_filter(syn, common, data / "pool", judges, min_class_prob, log)}
    if cross_class_sketches:
        xc = data / "pool_xc"
        log("synthesis bundle: inference.yaml (pool with cross-class sketches)")
        run_bundle(syn, ["common.yaml", "inference.yaml"], workflow_type="infer", **common, **generate, pool_dir=str(xc),
                   cross_class_sketches=True)
        report["cross_class"] = _audit_and_filter(syn, common, xc, judges, min_class_prob, log)
    times["audit"] = time.time() - t
    report.update(seconds=times, total_s=sum(times.values()), wall_s=time.time() - start)
    atomic_write_json(report, out / "synthesis_benchmark.json")
    text = format_synthesis_report(report)
    (out / "synthesis_benchmark.md").write_text(text)  # a rendering of the JSON above, rewritten on every run
    return report


def _prepare_data(cfg: dict, out: Path, seed: int, data_source, min_count: int, imbalance_ratio) -> Path:
    """The generator's data in ``out/data`` (your data split as ``bench lt`` splits it, or a phantom) and the judges'
    data folder, which it returns: the same split for your data; for the phantom, whose labels are ground truth, an
    independent class-balanced phantom (another seed), so fidelity measures the generator rather than how few real
    tail images a judge learnt from."""
    data = out / "data"
    if data_source is not None:
        prepare_benchmark_data(data_source, data, imbalance_ratio, min_count)
        cfg.update(source=str(data_source), min_count=min_count, data_imbalance_ratio=imbalance_ratio)
        del cfg["head_count"], cfg["imbalance_ratio"], cfg["judge_count"]  # phantom settings, unused here
        return data
    if not (data / "datalist.json").is_file():
        generate_phantom(data, cfg["head_count"], cfg["imbalance_ratio"], cfg["image_size"], seed)
    judge_data = out / "judge_data"
    if not (judge_data / "datalist.json").is_file():
        n_classes = len(read_json(data / "datalist.json")["classes"])
        generate_phantom(judge_data, image_size=cfg["image_size"], seed=seed + 1000, counts=[cfg["judge_count"]] * n_classes)
    return judge_data


def _train_judges(cls: Path, cfg: dict, judge_data: Path, out: Path, seed: int, times: dict, log: Callable[[str], None]) -> list[Path]:
    """The judges: classifiers trained on real images only, class-balanced so the tail is learnt too, one per seed
    ``seed, seed + 1...`` (one judge's fidelity moves by several points with its seed, or only its floating-point
    rounding). Trained ones are skipped; ``times["classifier"]`` gets their training seconds."""
    judges = [out / ("classifier" if k == 0 else f"classifier_{k}") for k in range(cfg["judges"])]
    times["classifier"] = 0.0
    for k, judge in enumerate(judges):
        shared = {"dataset_dir": str(judge_data), "output_dir": str(judge), "image_size": cfg["image_size"], "seed": seed + k,
                  "pool": str(judge_data / "no_pool.json"), "policy_name": "none", "sampler_target": "balanced",
                  "epoch_size": cfg["epoch_size"], "smooth_prob": cfg["judge_smooth_prob"]}
        if not (judge / "test_report.json").is_file():
            log(f"classification bundle: real-data classifier {k + 1}/{len(judges)} for the audit")
            t = time.time()
            run_bundle(cls, ["train.yaml"], max_epochs=cfg["classifier_epochs"], **shared)
            run_bundle(cls, ["train.yaml", "evaluate.yaml"], workflow_type="infer", **shared)
            atomic_write_json({"seconds": time.time() - t}, judge / "train_seconds.json")
        else:
            log(f"classification bundle: real-data classifier {k + 1}/{len(judges)} already trained, skipped")
        if (judge / "train_seconds.json").is_file():  # kept across resumes so the total counts every stage once
            times["classifier"] += read_json(judge / "train_seconds.json")["seconds"]
    return judges


def _audit_and_filter(syn: Path, common: dict, pool_dir: Path, judges: list[Path], min_class_prob: float,
                      log: Callable[[str], None]) -> dict:
    """Audit ``pool_dir`` with every judge, write ``pool_filtered.json`` (near-copies and images the judges do not
    take for their class dropped) and summarise: per class and macro figures, each judge's, and the filter record."""
    log(f"synthesis bundle: audit.yaml ({pool_dir.name}, {len(judges)} judges)")
    manifest = pool_dir / "pool.json"
    audits = []
    for k, judge in enumerate(judges):
        # the first judge's audit is the report (FID on its features, memorisation...); the others add their fidelity
        # and their accuracy on real images
        audit_dir = pool_dir / ("audit" if k == 0 else f"audit_judge{k}")
        run_bundle(syn, ["common.yaml", "audit.yaml"], workflow_type="infer", classifier_ckpt=str(judge / "models" / "model.pt"),
                   pool_manifest=str(manifest), audit_dir=str(audit_dir), **common)
        audits.append(read_json(audit_dir / "audit_report.json"))
    pool_doc = read_json(manifest)
    filter_pool(load_datalist(manifest)[0], audits, pool_doc["classes"], pool_dir / "pool_filtered.json", min_class_prob)
    summary = _summarise(audits, read_json(judges[0] / "test_report.json"))
    summary["filtered"] = read_json(pool_dir / "pool_filtered.json")["filtered"]
    summary["filtered"].pop("dropped_images")  # listed in the manifest itself
    summary["sample_grid"] = str(pool_dir / "sample_grid.png")
    return summary


def _summarise(audits: list[dict], real: dict) -> dict:
    """Per-class figures (fidelity the mean over judges) and the macro figures of a pool's audits; ``real``: the first
    judge's test report."""
    audit = audits[0]
    per_class = {}
    for c, name in enumerate(audit["classes"]):
        a = audit["per_class"].get(name, {})
        each = [x["per_class"].get(name, {}) for x in audits]
        per_class[name] = {"synthetic": a.get("n", 0), "fidelity": _mean([e.get("fidelity") for e in each]),
                           "fidelity_judges": [e.get("fidelity") for e in each], "sketch_dice": a.get("sketch_dice"),
                           "sketch_dice_chance": a.get("sketch_dice_chance"), "fid": a.get("fid"),
                           "real_test_recall": real["recall"][c] if real["support"][c] else None,
                           "real_accuracy": _mean([e.get("real_accuracy") for e in each]),
                           "reconstruction_accuracy": _mean([e.get("reconstruction_accuracy") for e in each]),
                           "taken_for": a.get("taken_for", {}), "near_copies": a.get("near_copies"),
                           "lesion_near_copies": a.get("lesion_near_copies"), "nn_ratio_median": a.get("nn_ratio_median"),
                           "lesion_nn_ratio_median": a.get("lesion_nn_ratio_median")}
    fids = [v["fidelity"] for v in per_class.values() if v["fidelity"] is not None]
    # the same judges on real images of the same subtypes: what fidelity a perfect generator would get from them
    reals = [v["real_accuracy"] for v in per_class.values() if v["fidelity"] is not None and v["real_accuracy"] is not None]
    return {
        "macro_fidelity": sum(fids) / len(fids) if fids else float("nan"),
        "macro_real_accuracy": sum(reals) / len(reals) if reals and len(reals) == len(fids) else None,
        "macro_fidelity_judges": [_macro(x, "fidelity") for x in audits],
        "macro_real_accuracy_judges": [_macro(x, "real_accuracy") for x in audits],
        "overall": audit["overall"],
        "real_test_balanced_accuracy": real.get("balanced_accuracy"),
        "per_class": per_class,
    }


def _mean(values: list) -> float | None:
    """The mean, ``None`` when a value is missing."""
    return sum(values) / len(values) if values and None not in values else None


def _macro(audit: dict, key: str) -> float | None:
    """Macro over the generated classes of one judge's audit report (``None`` when a class lacks the figure)."""
    return _mean([v.get(key) for v in audit["per_class"].values() if v.get("n") and v.get("fidelity") is not None])


def _memorization_line(overall: dict) -> str:
    """Near-copies of real images and of real lesions, next to the rule's false-alarm rate on the real images."""
    m = overall.get("memorization")
    if m is None:  # a report written before the lesion check
        return f"- near-copies of real images: {overall['near_copies']}"
    text = (f"- near-copies (nearest real closer than {m['factor']} x the next {m['k']} of other patients): "
            f"{overall['near_copies']} of {overall['n']} images, median relative distance {overall['nn_ratio_median']:.2f} (real "
            f"images against other patients: {100 * m['real_flagged']:.1f} % flagged, median {m['real_median_ratio']:.2f})")
    if "real_lesions_flagged" in m:
        text += (f"; lesion near-copies: {overall['lesion_near_copies']} of the {overall['lesions_found']} images with a lesion "
                 f"found, median {overall['lesion_nn_ratio_median']:.2f} (real lesions: {100 * m['real_lesions_flagged']:.1f} % flagged, "
                 f"median {m['real_lesion_median_ratio']:.2f})")
    return text


def format_synthesis_report(report: dict) -> str:
    """Markdown: per-class table and overall figures against the targets, for the pool and, when made, the pool with
    cross-class sketches; then the stage times."""
    text = _format_pool(report, report["settings"])
    if "cross_class" in report:
        text += "\n### Pool with cross-class sketches\n\n" + _format_pool(report["cross_class"], report["settings"])
    return text + (f"\n- seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items())
                   + f"; total {report['total_s']:.0f} s (this invocation {report['wall_s']:.0f} s)\n")


def _format_pool(report: dict, settings: dict) -> str:
    """The per-class table and the overall lines of one pool's summary."""
    pct = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"  # noqa: E731
    num = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"  # noqa: E731
    o = report["overall"]
    # on the phantom the judge learns from an independent phantom; on a data source, from the same training split
    held = "its own training images" if "source" in settings else "held out from the judge"
    # fidelity relative to what the judges give real images: on a phantom with look-alike subtypes no generator that
    # draws the real class distribution can score above the real-image figure, so the ratio is the comparable one
    real_acc = report.get("macro_real_accuracy")
    ratio = f" (synthetic / real: {report['macro_fidelity'] / real_acc:.2f}; target >= 0.9)" if real_acc else ""
    each = report.get("macro_fidelity_judges") or []
    judges = (f" (mean of {len(each)} judges: " + ", ".join(pct(f) for f in each) + ")") if len(each) > 1 else ""
    each_real = report.get("macro_real_accuracy_judges") or []
    judges_real = (" (" + ", ".join(pct(f) for f in each_real) + ")") if len(each_real) > 1 and None not in each_real else ""
    lines = [
        "| subtype | synthetic images | class fidelity % | judge recall on real test % (first judge) | judges on real / "
        "autoencoded real training images % | otherwise taken for % (first judge) | sketch Dice (chance) | FID vs real | near-copies: image / lesion | "
        "median relative distance to the nearest real: image / lesion | kept by the filter |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    kept = (report.get("filtered") or {}).get("per_class", {})
    for name, v in report["per_class"].items():
        others = sorted(((f, n) for n, f in v.get("taken_for", {}).items() if n != name), reverse=True)
        lines.append(
            f"| {name} | {v['synthetic']} | {pct(v['fidelity'])} | {pct(v['real_test_recall'])} | "
            f"{pct(v.get('real_accuracy'))} / {pct(v.get('reconstruction_accuracy'))} | "
            f"{', '.join(f'{n} {pct(f)}' for f, n in others[:2]) or '-'} | "
            f"{num(v['sketch_dice'])} ({num(v.get('sketch_dice_chance'))}) | {num(v['fid'])} | "
            f"{v.get('near_copies', 'n/a')} / {v.get('lesion_near_copies', 'n/a')} | "
            f"{num(v.get('nn_ratio_median'))} / {num(v.get('lesion_nn_ratio_median'))} | {kept.get(name, {}).get('kept', 'n/a')} |"
        )
    lines += [
        "",
        f"- class fidelity, macro over classes: **{pct(report['macro_fidelity'])} %**{judges}; the judges on real images of "
        f"the same subtypes (macro): {pct(report.get('macro_real_accuracy'))} %{judges_real}{ratio}; over all "
        f"{o['n']} images (first judge): {pct(o['fidelity'])} %; the first judge's balanced accuracy on real test images: "
        f"{pct(report['real_test_balanced_accuracy'])} %",
        f"- the first judge on the generator's real training images ({held}), balanced: "
        f"{pct(o.get('real_balanced_accuracy'))} %; on their "
        f"autoencoder reconstructions: {pct(o.get('reconstruction_balanced_accuracy'))} % (what the first stage leaves "
        "attainable)",
        f"- sketch adherence (Dice): **{num(o['sketch_dice'])}** (target >= 0.5); chance level (each sketch against "
        f"another generated image): {num(o.get('sketch_dice_chance'))}",
        f"- FID on the judge's features: **{num(o['fid'])}** vs **{num(o['real_vs_real']['fid'])}** real vs real "
        f"(MMD {o['mmd']:.4f} vs {o['real_vs_real']['mmd']:.4f})",
        _memorization_line(o),
    ]
    f = report.get("filtered")
    if f:
        reasons = {r: sum(c[r] for c in f["per_class"].values()) for r in ("near_copy", "lesion_near_copy", "low_class_prob")}
        lines.append(f"- filtered pool (pool_filtered.json): {f['kept']} of {f['kept'] + f['dropped']} images kept; dropped as "
                     f"near-copies of a real image {reasons['near_copy']}, of a real lesion {reasons['lesion_near_copy']}, "
                     f"with the judges' mean probability of their class below {f['min_class_prob']} {reasons['low_class_prob']} "
                     "(an image may have several reasons)")
    lines.append(f"- sample grid: {report['sample_grid']}")
    return "\n".join(lines) + "\n"
