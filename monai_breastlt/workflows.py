"""Running the two bundles from Python: the glue behind the ``demo``, ``generate`` and ``audit`` commands and the
benchmarks."""

from __future__ import annotations

import difflib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import monai_breastlt
from monai_breastlt.utils import atomic_write_json, read_json

__all__ = ["check_overrides", "classifier_from_bundle", "default_bundles_dir", "find_bundles", "ldm_def_from_checkpoint", "run_bundle", "train_synthesis", "TINY_NETS"]

# tiny synthesis networks for tests and smoke runs (bundle overrides)
TINY_NETS = {
    "ldm_def#ae_channels": [8, 16], "ldm_def#unet_channels": [16, 32], "ldm_def#unet_attention": [False, True],
    "ldm_def#num_head_channels": 16, "ldm_def#norm_num_groups": 8, "ldm_def#latent_channels": 2,
    "perception_def#features": [4, 4, 8, 8, 16, 4],
}


def default_bundles_dir() -> Path:
    """The bundles shipped inside the installed package (``monai_breastlt/bundles``)."""
    return Path(monai_breastlt.__file__).resolve().parent / "bundles"


def find_bundles(bundles_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The synthesis and classification bundle folders: those under ``bundles_dir`` (a user's own copy), else the
    package's own."""
    root = Path(bundles_dir) if bundles_dir else default_bundles_dir()
    syn, cls = root / "breastlt_synthesis", root / "breastlt_classification"
    for b in (syn, cls):
        if not (b / "configs" / "metadata.json").is_file():
            raise FileNotFoundError(f"{b}: bundle not found; pass --bundles (a folder holding breastlt_synthesis and "
                                    "breastlt_classification).")
    return syn, cls


def ldm_def_from_checkpoint(path: str | os.PathLike) -> dict:
    """The synthesis bundle's ``ldm_def`` for a saved ``SketchConditionedLDM`` (its architecture travels in the state
    dict), so a bundle run on trained models needs no network overrides.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: ``path`` was not saved from a ``SketchConditionedLDM``.
    """
    from monai_breastlt.networks import SketchConditionedLDM
    from monai_breastlt.utils import torch_load_safe

    try:
        config = SketchConditionedLDM.config_from_state_dict(torch_load_safe(path))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return {"_target_": "monai_breastlt.networks.SketchConditionedLDM", **config}


def check_overrides(config_files: list[str], overrides: Mapping, extra_keys: Sequence[str] = ()) -> None:
    """Refuse overrides that name no key of the configs: a typo (``max_epoch``) would otherwise add a new key
    silently and leave the intended setting at its default.

    Raises:
        ValueError: naming each unknown key, the config files, and the closest existing keys.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files)
    known = set(extra_keys) | set(parser.get().keys())
    unknown = [k for k in overrides if k not in known and k not in parser]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k.split("#")[0], sorted(known), n=2)
            hints.append(f"'{k}'" + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""))
        names = ", ".join(Path(c).name for c in config_files)
        raise ValueError(f"unknown config key(s) for {names}: {', '.join(hints)}.")


def run_bundle(bundle: Path, configs: list[str], workflow_type: str = "train", **overrides) -> None:
    """Run one bundle config through ``monai.bundle.ConfigWorkflow`` (what ``python -m monai.bundle run`` does).

    Overrides are checked against the configs first (:func:`check_overrides`); with ``tracking`` settings, their
    ``configs`` keys (``tracking_uri``, ``experiment_name``, ``run_name``...) are accepted too.
    """
    from monai.bundle import ConfigWorkflow

    files = [str(bundle / "configs" / c) for c in configs]
    tracking = overrides.get("tracking")
    extra = ["tracking"] + (list(tracking["configs"]) if isinstance(tracking, dict) else [])
    if tracking == "mlflow":
        from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

        extra += list(DEFAULT_MLFLOW_SETTINGS["configs"])
    check_overrides(files, overrides, extra)
    wf = ConfigWorkflow(
        config_file=files,
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        **overrides,
    )
    wf.initialize()
    wf.run()
    wf.finalize()


def train_synthesis(
    bundle: Path,
    common: Mapping,
    epochs: Mapping[str, int],
    generate: Mapping | None = None,
    log: Callable[[str], None] = print,
    stage_overrides: Mapping[str, Mapping] | None = None,
) -> dict[str, float]:
    """Phase 1 through the synthesis bundle: autoencoder, perception net, UNet, ControlNet, then the pool.

    Finished stages are recorded in ``<output_dir>/stages.json`` (atomically) and skipped when run again, so a
    killed run resumes at the stage it was in, and inside that stage from its newest resume checkpoint (the bundle's
    ``--resume True``); the seconds recorded for a resumed stage are those of the resumed part only.

    Args:
        bundle: the ``breastlt_synthesis`` bundle folder.
        common: overrides of every stage (``dataset_dir``, ``output_dir``, ``image_size``, ``batch_size``, ``seed``...).
        epochs: ``{"autoencoder", "perception", "unet", "controlnet"}`` epoch counts.
        generate: overrides of ``inference.yaml`` (e.g. ``num_inference_steps``, ``target_mode``); ``None``: no pool.
        log: progress printer.
        stage_overrides: per-stage overrides (e.g. ``{"unet": {"learning_rate": 5e-4}}``) over the defaults below.

    Returns:
        seconds per stage.
    """
    record = Path(common["output_dir"]) / "stages.json"
    done: dict[str, float] = read_json(record) if record.is_file() else {}
    stages = [
        ("autoencoder", ["common.yaml", "train_autoencoder.yaml"], "train", {"learning_rate": 1e-3}),
        ("perception", ["common.yaml", "train_perception.yaml"], "train", {}),
        ("unet", ["common.yaml", "train_diffusion.yaml"], "train", {"learning_rate": 2.5e-4}),
        ("controlnet", ["common.yaml", "train_diffusion.yaml"], "train", {"learning_rate": 1e-4, "use_controlnet": True}),
    ]
    if generate is not None:
        stages.append(("generate", ["common.yaml", "inference.yaml"], "infer", dict(generate)))
    for name, configs, kind, extra in stages:
        if name in done:
            log(f"synthesis: {name} already done ({done[name]:.0f} s), skipped")
            continue
        extra = {**extra, **((stage_overrides or {}).get(name, {})), **({"max_epochs": epochs[name], "resume": True} if name in epochs else {})}
        log(f"synthesis bundle: {configs[-1]} ({name}) {extra}")
        start = time.time()
        run_bundle(bundle, configs, workflow_type=kind, **common, **extra)
        done[name] = time.time() - start
        atomic_write_json(done, record)
    return done


def classifier_from_bundle(bundle: Path, num_classes: int, checkpoint: str | os.PathLike | None = None):
    """The classification bundle's network (``train.yaml``'s ``network_def``) for ``num_classes`` classes, with the
    weights of ``checkpoint`` (the bundle's ``models/model.pt``) when given."""
    from monai.bundle import ConfigParser

    from monai_breastlt.utils import torch_load_safe

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.yaml"))
    parser["num_classes"] = int(num_classes)
    net = parser.get_parsed_content("network_def")
    if checkpoint is not None:
        net.load_state_dict(torch_load_safe(checkpoint))
    return net
