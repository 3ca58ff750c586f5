"""Pretrained phase-1 models for the built-in phantom: where they live, how they are read, how they are made.

A models folder holds the synthesis bundle's two checkpoints (``ldm.pt``: autoencoder, UNet and ControlNet with the
latent scale factor and the architecture; ``perception.pt``), the audit's judge (``judge.pt``: a classification-bundle
network trained on real phantom images only, the benchmark's first judge) and ``pretrained.json``, which records what
the checkpoints need to be rebuilt (classes, image size, perception-net features), the sampling settings they were
benchmarked with, the run that made them, its audit figures and each file's SHA-256. The package ships one such folder,
``monai_breastlt/pretrained/phantom``, made by :func:`export_pretrained` from a ``bench synthesis --profile cpu`` run.
Everything loads offline and weights-only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

from monai_breastlt.utils import atomic_torch_save, atomic_write_json, read_json, torch_load_safe

__all__ = ["MANIFEST_NAME", "MODEL_FILES", "export_pretrained", "judge_network", "load_pretrained", "phantom_models_dir", "read_pretrained"]

MANIFEST_NAME = "pretrained.json"
MODEL_FILES = ("ldm.pt", "perception.pt", "judge.pt")
EXPORT_COMMAND = "python -m monai_breastlt export-models RUN"


def phantom_models_dir() -> Path:
    """The folder of the models shipped with the package for the built-in phantom."""
    return Path(__file__).resolve().parent / "phantom"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_pretrained(folder: str | os.PathLike | None = None) -> dict:
    """The manifest of a pretrained-models folder, after checking that every file it lists is there, unchanged.

    Args:
        folder: a folder written by :func:`export_pretrained` (default: the package's phantom models).

    Raises:
        FileNotFoundError: no manifest or a missing file (the message says how the folder is made).
        ValueError: a file whose content differs from the one the manifest recorded.
    """
    folder = Path(folder) if folder is not None else phantom_models_dir()
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{manifest_path}: no pretrained models here. Make them from a phase-1 run with "
            f"`python -m monai_breastlt bench synthesis --profile cpu --seed 0 --out RUN`, then `{EXPORT_COMMAND}`; "
            "or train phase 1 in the demo with `demo --train-synthesis`."
        )
    manifest = read_json(manifest_path)
    for name, record in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {manifest_path} but missing; export the models again ({EXPORT_COMMAND}).")
        if _sha256(path) != record["sha256"]:
            raise ValueError(f"{path}: its content differs from the one {manifest_path} recorded (sha256); export the models again.")
    missing = [n for n in MODEL_FILES if n not in manifest.get("files", {})]
    if missing:
        raise ValueError(f"{manifest_path}: entry 'files' lacks {missing}; export the models again ({EXPORT_COMMAND}).")
    return manifest


def judge_network(num_classes: int) -> torch.nn.Module:
    """The audit's judge as the synthesis bundle's ``audit.yaml`` defines it (``classifier_def``), for ``num_classes``."""
    from monai.bundle import ConfigParser

    from monai_breastlt.workflows import default_bundles_dir

    configs = default_bundles_dir() / "breastlt_synthesis" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "common.yaml"), str(configs / "audit.yaml")])  # audit.yaml extends common.yaml
    parser["num_classes"] = int(num_classes)
    return parser.get_parsed_content("classifier_def")


def load_pretrained(folder: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> dict:
    """The networks of a pretrained-models folder, weights loaded (weights-only), in eval mode.

    Args:
        folder: a folder written by :func:`export_pretrained` (default: the package's phantom models).
        device: where the networks go.

    Returns:
        ``{"ldm": SketchConditionedLDM, "perception": SketchPerceptionNet, "judge": ResNet, "manifest": dict}``.
    """
    from monai_breastlt.networks import SketchConditionedLDM, SketchPerceptionNet

    folder = Path(folder) if folder is not None else phantom_models_dir()
    manifest = read_pretrained(folder)
    ldm = SketchConditionedLDM.from_state_dict(torch_load_safe(folder / "ldm.pt"))
    perception = SketchPerceptionNet(features=manifest["perception_features"])
    perception.load_state_dict(torch_load_safe(folder / "perception.pt"))
    judge = judge_network(len(manifest["classes"]))
    judge.load_state_dict(torch_load_safe(folder / "judge.pt"))
    nets = {"ldm": ldm, "perception": perception, "judge": judge}
    return {**{k: v.to(device).eval() for k, v in nets.items()}, "manifest": manifest}


def _half(state_dict: dict) -> dict:
    """Floating-point weights in half precision (half the package size; ``load_state_dict`` casts them back); scalars
    such as the latent scale factor and non-tensor entries (the architecture) stay as they are."""
    return {k: v.half() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() > 0 else v for k, v in state_dict.items()}


def _perception_features(nets: dict) -> list[int]:
    """The perception net's features in a run: its ``perception_def#features`` override, else the bundle's default."""
    if "perception_def#features" in nets:
        return [int(f) for f in nets["perception_def#features"]]
    from monai.bundle import ConfigParser

    from monai_breastlt.workflows import default_bundles_dir

    parser = ConfigParser()
    parser.read_config(str(default_bundles_dir() / "breastlt_synthesis" / "configs" / "common.yaml"))
    return [int(f) for f in parser["perception_def#features"]]


def _benchmark_figures(report: dict) -> dict:
    """The audit figures of the shipped judge (the benchmark's first) and the benchmark's mean over its judges."""
    o = report["overall"]
    judges = report.get("macro_fidelity_judges") or [report["macro_fidelity"]]
    reals = report.get("macro_real_accuracy_judges") or [report.get("macro_real_accuracy")]
    return {
        "judge_macro_fidelity": judges[0], "judge_macro_real_accuracy": reals[0],
        "mean_macro_fidelity": report["macro_fidelity"], "mean_macro_real_accuracy": report.get("macro_real_accuracy"),
        "judges": len(judges), "pool_images": o["n"], "sketch_dice": o["sketch_dice"], "sketch_dice_chance": o.get("sketch_dice_chance"),
        "fid": o["fid"], "fid_real_vs_real": o["real_vs_real"]["fid"],
        "per_class_fidelity": {name: v.get("fidelity") for name, v in report["per_class"].items()},
    }


def export_pretrained(run_dir: str | os.PathLike, dest: str | os.PathLike | None = None, replace: bool = False) -> dict:
    """Copy the models of a phantom ``bench synthesis`` run into a pretrained-models folder, slimmed and atomically.

    Takes ``RUN/synthesis/models/ldm.pt`` (the diffusion stages' moving average of the weights, as the bundle saves it)
    and ``perception.pt``, and the first judge ``RUN/classifier/models/model.pt``; no optimizer state, no resume
    checkpoint; weights in half precision. The new folder is assembled beside ``dest`` and renamed into place, so
    ``dest`` never holds a mix of two runs.

    Args:
        run_dir: the ``--out`` folder of ``python -m monai_breastlt bench synthesis`` on the phantom (finished).
        dest: the models folder to write (default: the package's phantom models).
        replace: replace models already in ``dest``.

    Returns:
        the manifest written.

    Raises:
        FileNotFoundError: a file of the run is missing (the run is unfinished, or not a ``bench synthesis`` run).
        ValueError: the run was made on other data than the built-in phantom, or ``dest`` holds models and
            ``replace`` is false.
    """
    import monai_breastlt
    from monai_breastlt.data import DEFAULT_SUBTYPES

    run = Path(run_dir)
    dest = Path(dest) if dest is not None else phantom_models_dir()
    report = read_json(run / "synthesis_benchmark.json")
    sources = {"ldm.pt": run / "synthesis" / "models" / "ldm.pt", "perception.pt": run / "synthesis" / "models" / "perception.pt",
               "judge.pt": run / "classifier" / "models" / "model.pt"}
    for path in sources.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; is {run} a finished `bench synthesis` run?")
    settings = report["settings"]
    classes = read_json(run / "data" / "datalist.json")["classes"]
    if "source" in settings or classes != [s.name for s in DEFAULT_SUBTYPES]:
        raise ValueError(f"{run / 'synthesis_benchmark.json'}: made on {settings.get('source', 'another phantom')}; the "
                         "shipped models are for the built-in phantom (run `bench synthesis` without --data).")
    if (dest / MANIFEST_NAME).is_file() and not replace:
        raise ValueError(f"{dest}: holds pretrained models already; pass --replace to replace them.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for name, path in sources.items():
            atomic_torch_save(_half(torch_load_safe(path)), tmp / name)
        manifest = {
            "classes": classes,
            "image_size": int(settings["image_size"]),
            "perception_features": _perception_features(settings.get("nets", {})),
            "data_seed": int(report["seed"]),  # the phantom the models learnt from: a demo must draw another one
            "sampling": {"sampler": settings["sampler"], "num_inference_steps": int(settings["steps"]),
                         "guidance_scale": float(settings["guidance_scale"])},
            "made_by": {"command": f"python -m monai_breastlt bench synthesis --profile {report['profile']} --seed {report['seed']} --out RUN",
                        "export": EXPORT_COMMAND, "profile": report["profile"], "seed": report["seed"],
                        "package_version": monai_breastlt.__version__, "torch_version": torch.__version__,
                        "stage_seconds": report.get("seconds")},
            "figures": _benchmark_figures(report),
            "files": {name: {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size} for name in sources},
        }
        atomic_write_json(manifest, tmp / MANIFEST_NAME)
        os.chmod(tmp, 0o755)  # mkdtemp makes a private folder; the package's data is world-readable
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _swap_in(new: Path, dest: Path) -> None:
    """Rename ``new`` to ``dest``; an existing ``dest`` is renamed aside first and removed after."""
    if not dest.exists():
        os.replace(new, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
    os.replace(dest, old / dest.name)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)
