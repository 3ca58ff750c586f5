"""Running the two bundles from Python: the glue behind the ``demo``, ``generate`` and ``audit`` commands and the
benchmarks."""

from __future__ import annotations

import ast
import contextlib
import difflib
import inspect
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import monai_breastlt
from monai_breastlt.utils import SETTING_RANGES, atomic_write_json, bad_input_message, check_range, read_json

__all__ = [
    "CLASSES_FILE",
    "bundle_class_names",
    "check_bundle_run",
    "check_overrides",
    "check_settings",
    "classifier_from_bundle",
    "default_bundles_dir",
    "distributed_device",
    "distributed_module",
    "finalize_distributed",
    "find_bundles",
    "init_distributed",
    "is_main_process",
    "pretrained_overrides",
    "read_ldm_checkpoint",
    "report_bad_input",
    "run_bundle",
    "train_synthesis",
    "write_class_names",
    "TINY_NETS",
]

# the class names of a trained model, next to its weights: export, verification and inference need no dataset
CLASSES_FILE = "classes.json"

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


def _choices() -> dict[str, Sequence[str]]:
    """The allowed values of each named-choice setting (imported here: rl pulls in stable-baselines3)."""
    from monai_breastlt.losses.factory import LOSS_NAMES
    from monai_breastlt.rl.factory import POLICY_NAMES

    return {"policy_name": POLICY_NAMES, "loss_name": LOSS_NAMES}


def check_settings(settings: Mapping[str, Any], names: Mapping[str, str] | None = None) -> None:
    """Refuse a bundle or command setting outside its range (:data:`~monai_breastlt.utils.SETTING_RANGES`) or not one of
    its choices.

    Args:
        settings: config key -> value; ``None`` values (left at a default) and unknown keys are not checked.
        names: config key -> the name to show (a command-line option), default the key.

    Raises:
        ValueError: ``"batch_size must be an integer >= 1, got 0."``
    """
    names = names or {}
    choices = _choices() if set(settings) & {"policy_name", "loss_name"} else {}
    for key, value in settings.items():
        if value is None:
            continue
        if key in SETTING_RANGES:
            check_range(names.get(key, key), value, **SETTING_RANGES[key])
        elif key in choices and value not in choices[key]:
            close = difflib.get_close_matches(str(value), choices[key], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"{names.get(key, key)} must be one of {', '.join(choices[key])}; got '{value}'{hint}.")


def report_bad_input() -> None:
    """Make a run that ends on bad input print the package's one-line message first and last, around the traceback.

    ``python -m monai.bundle run`` shows an error as a traceback of 100-200 lines in which MONAI wraps the package's
    message (``Failed to instantiate ...``); this hook (installed once, by a bundle's preflight) prints ``error: ...``
    before and after it. Other errors keep the plain traceback.
    """
    if getattr(sys.excepthook, "breastlt", False):
        return
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        message = bad_input_message(value) if isinstance(value, Exception) else None
        if message:
            print(f"error: {message}", file=sys.stderr, flush=True)
        previous(kind, value, tb)
        if message:
            print(f"error: {message}", file=sys.stderr, flush=True)

    hook.breastlt = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def _monai_run_arguments() -> set[str]:
    """The options ``python -m monai.bundle run`` takes itself (not config overrides)."""
    from monai.bundle import ConfigWorkflow
    from monai.bundle.scripts import create_workflow, run
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    names = set(DEFAULT_MLFLOW_SETTINGS["configs"])
    for fn in (run, create_workflow, ConfigWorkflow.__init__):
        names |= {p.name for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD}
    return names - {"self"}


def command_line_overrides(argv: Sequence[str] | None = None) -> tuple[list[str], list[str]] | None:
    """The config files and the override keys of a ``python -m monai.bundle run`` command line (``None`` when the
    process was started otherwise): MONAI adds an unknown key silently, so a mistyped ``--max_epoch`` would leave
    ``max_epochs`` at its default."""
    if argv is None:
        if getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", None) != "monai.bundle.__main__":
            return None
        argv = sys.argv[1:]
    if not argv or argv[0] != "run":
        return None
    keys, files, args = [], [], list(argv[1:])
    for n, token in enumerate(args):
        if not token.startswith("--"):
            continue
        key, _, value = token[2:].partition("=")
        if not value and n + 1 < len(args) and not args[n + 1].startswith("--"):
            value = args[n + 1]
        keys.append(key)
        if key == "config_file":
            try:
                parsed = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                parsed = value
            files = [str(f) for f in (parsed if isinstance(parsed, (list, tuple)) else [parsed])]
    return files, keys


def check_bundle_run(
    datalist: str | os.PathLike | None = None,
    pool: str | os.PathLike | None = None,
    required_sections: Sequence[str] = ("training",),
    files: Mapping[str, str | os.PathLike | None] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> None:
    """A bundle's preflight (its first ``initialize`` step): refuse bad input before any long work, in one message.

    In order: errors of the run are reported first and last around their traceback (:func:`report_bad_input`); a
    command-line override that names no config key is refused with the closest keys; settings out of range; named
    files that do not exist; then the datalist (:func:`~monai_breastlt.data.check_datalist`: every entry and file of
    every section and of the pool, all bad files at once; required sections non-empty; split leakage warned).

    Args:
        datalist: the datalist JSON (``None``: no datalist to check).
        pool: the synthetic pool manifest, if any.
        required_sections: sections that must hold entries.
        files: setting name -> a file it must name (``None``: not set).
        settings: setting name -> value (see :func:`check_settings`).

    Raises:
        ValueError, FileNotFoundError: naming the setting, file, entry and field.
    """
    from monai_breastlt.data import check_datalist

    report_bad_input()
    given = command_line_overrides()
    if given is not None and given[0]:
        known = _monai_run_arguments()
        check_overrides(given[0], {k: None for k in given[1] if k not in known}, sorted(known))
    check_settings(settings or {})
    for name, path in (files or {}).items():
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{name} {path}: file not found" + (" (it is a folder)." if Path(path).is_dir() else "."))
    if datalist is None:
        return
    if not Path(datalist).is_file():
        folder = Path(datalist).parent
        why = "the folder does not exist" if not folder.is_dir() else "no such file"
        raise FileNotFoundError(f"{datalist}: datalist not found ({why}); pass --dataset_dir, a folder holding datalist.json "
                                "(write one with `python -m monai_breastlt split SOURCE --out DIR/datalist.json`).")
    check_datalist(datalist, pool, required_sections)


def is_main_process() -> bool:
    """Rank 0 of a ``torch.distributed`` run, or the only process: the one that writes files and tracking records.
    Before the process group is joined, ``torchrun``'s ``RANK`` tells."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", 0)) == 0


def bundle_class_names(datalist: str | os.PathLike, ckpt_dir: str | os.PathLike) -> list[str]:
    """The class names of a bundle run: the datalist's when there is one (training, evaluation), else those a training
    run wrote next to its model (``<ckpt_dir>/classes.json``), so that ``ckpt_export``, ``verify_net_in_out`` and
    inference on a folder of unlabelled images need no dataset.

    Raises:
        ValueError: both exist and differ (the model in ``ckpt_dir`` was trained on other classes), or the class file
            is not a list of names.
        FileNotFoundError: neither exists.
    """
    from monai_breastlt.data import load_datalist_file

    recorded = Path(ckpt_dir) / CLASSES_FILE
    saved = read_json(recorded) if recorded.is_file() else None
    if saved is not None and (not isinstance(saved, list) or not saved or not all(isinstance(c, str) for c in saved)):
        raise ValueError(f"{recorded}: expected a JSON list of class names, got {saved!r}.")
    if Path(datalist).is_file():
        classes = list(load_datalist_file(datalist)["classes"])
        if saved is not None and saved != classes:
            raise ValueError(f"{recorded}: the models in {ckpt_dir} were trained on classes {saved}, but {datalist} has {classes}: "
                             "give another output_dir (or ckpt_dir).")
        return classes
    if saved is None:
        raise FileNotFoundError(f"no class names: neither {datalist} nor {recorded} exists; pass --dataset_dir (a folder with "
                                "datalist.json) or the --output_dir (or --ckpt_dir) of a trained run.")
    return saved


def write_class_names(class_names: Sequence[str], ckpt_dir: str | os.PathLike) -> None:
    """Record the class names next to the model being trained (``<ckpt_dir>/classes.json``, atomically, on rank 0 only);
    :func:`bundle_class_names` reads them back."""
    if is_main_process():
        atomic_write_json(list(class_names), Path(ckpt_dir) / CLASSES_FILE)


def distributed_device() -> torch.device:
    """The device of this ``torchrun`` process: ``cuda:<LOCAL_RANK>`` where CUDA is available, else the CPU."""
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if torch.cuda.is_available() else torch.device("cpu")


def init_distributed(backend: str | None, device: torch.device | str) -> str:
    """Join the ``torchrun`` process group, before any data is read or any network trained.

    Args:
        backend: ``"nccl"``, ``"gloo"`` or ``"mpi"``; ``None``: NCCL for a CUDA device, gloo for the CPU.
        device: this process's device (:func:`distributed_device`).

    Returns:
        the backend in use.

    Raises:
        ValueError: the machine lacks the backend (NCCL without CUDA, for example), naming the override to use.
    """
    device = torch.device(device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    available = {
        "nccl": dist.is_available() and dist.is_nccl_available() and torch.cuda.is_available(),
        "gloo": dist.is_available() and dist.is_gloo_available(),
        "mpi": dist.is_available() and dist.is_mpi_available(),
    }
    if backend not in available:
        raise ValueError(f"dist_backend '{backend}' is not one of {sorted(available)}: pass --dist_backend gloo (CPU) or nccl (CUDA).")
    if not available[backend] or (backend == "nccl" and device.type != "cuda"):
        other = "gloo" if backend != "gloo" else "nccl"
        raise ValueError(f"dist_backend '{backend}' is not available on this machine (device {device}): pass --dist_backend {other}, "
                         "or leave dist_backend null (nccl on CUDA, gloo on CPU).")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return backend


def finalize_distributed() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def distributed_module(module: torch.nn.Module, device: torch.device | str, trainable: Sequence | None = None) -> torch.nn.Module:
    """``module`` wrapped in ``DistributedDataParallel`` inside a process group (gradients are averaged over the
    ranks), else ``module`` itself: one training config serves one process and ``torchrun``.

    Args:
        module: the network a trainer optimises (already on ``device``).
        device: its device.
        trainable: the parameters being trained, when only part of ``module`` is (DDP registers the parameters that
            require gradients when it is built, so the others are frozen first); ``None``: every parameter.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return module
    if trainable is not None:
        keep = {id(p) for p in trainable}
        for p in module.parameters():
            p.requires_grad_(id(p) in keep)
    device = torch.device(device)
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def read_ldm_checkpoint(path: str | os.PathLike) -> tuple[dict, list[int] | None]:
    """The synthesis bundle's ``ldm_def`` for a saved ``SketchConditionedLDM`` (its architecture travels in the state
    dict, so a bundle run on trained models needs no network overrides) and the ``(H, W)`` its diffusion stages were
    trained on (``None`` for a checkpoint saved before the size was recorded).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: ``path`` cannot be loaded safely, or was not saved from a ``SketchConditionedLDM``.
    """
    from monai_breastlt.networks import SketchConditionedLDM
    from monai_breastlt.utils import torch_load_safe

    state = torch_load_safe(path)
    try:
        if not isinstance(state, dict):
            raise ValueError(f"holds a {type(state).__name__}, not a state dict")
        config = SketchConditionedLDM.config_from_state_dict(state)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return {"_target_": "monai_breastlt.networks.SketchConditionedLDM", **config}, SketchConditionedLDM.image_size_from_state_dict(state)


def pretrained_overrides(models: str | os.PathLike) -> dict:
    """Synthesis-bundle overrides that run ``inference.yaml`` or ``audit.yaml`` on a pretrained-models folder
    (:mod:`monai_breastlt.pretrained`): its checkpoints, their architectures and image size. The sampling settings
    the models were benchmarked with are the manifest's ``sampling`` entry (``inference.yaml`` keys).
    """
    from monai_breastlt.pretrained import read_pretrained

    manifest = read_pretrained(models)
    return {"ckpt_dir": str(Path(models)), "ldm_def": read_ldm_checkpoint(Path(models) / "ldm.pt")[0],
            "perception_def#features": manifest["perception_features"], "image_size": manifest["image_size"]}


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


def run_bundle(bundle: Path, configs: list[str], workflow_type: str = "train", verbose: bool = True, **overrides) -> None:
    """Run one bundle config through ``monai.bundle.ConfigWorkflow`` (what ``python -m monai.bundle run`` does).

    Overrides are checked against the configs first (:func:`check_overrides`); with ``tracking`` settings, their
    ``configs`` keys (``tracking_uri``, ``experiment_name``, ``run_name``...) are accepted too.

    Args:
        bundle: the bundle folder.
        configs: config files of ``bundle/configs``, merged in this order.
        workflow_type: ``"train"`` or ``"infer"``.
        verbose: the bundle's own logging (``configs/logging.conf``: every iteration's loss); ``False``: warnings
            only, and a training run shows a progress bar instead.
        overrides: config overrides.
    """
    from monai.bundle import ConfigWorkflow

    files = [str(bundle / "configs" / c) for c in configs]
    tracking = overrides.get("tracking")
    extra = ["tracking"] + (list(tracking["configs"]) if isinstance(tracking, dict) else [])
    if tracking == "mlflow":
        from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

        extra += list(DEFAULT_MLFLOW_SETTINGS["configs"])
    check_overrides(files, overrides, extra)
    with _quiet(not verbose):
        wf = ConfigWorkflow(
            config_file=files,
            meta_file=str(bundle / "configs" / "metadata.json"),
            logging_file=str(bundle / "configs" / "logging.conf"),
            workflow_type=workflow_type,
            **overrides,
        )
        wf.initialize()
        if not verbose and workflow_type == "train":
            _progress_bar(wf.trainer, f"{bundle.name} {Path(configs[-1]).stem}")
        wf.run()
        wf.finalize()


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """While enabled, log records below WARNING are dropped, whichever logger makes them (``logging.disable``: MONAI's
    handlers set their own loggers to INFO when they are created, so logger levels set beforehand do not hold)."""
    if not enabled:
        yield
        return
    before = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(before)


def _progress_bar(trainer, desc: str) -> None:
    """An ignite ``ProgressBar`` over each epoch's iterations, with the loss, cleared at the end of the epoch."""
    from ignite.handlers import ProgressBar

    def loss(output):
        out = output[0] if isinstance(output, list) else output
        return {"loss": float(out["loss"])} if isinstance(out, dict) and "loss" in out else {}

    ProgressBar(desc=desc).attach(trainer, output_transform=loss)


def train_synthesis(
    bundle: Path,
    common: Mapping,
    epochs: Mapping[str, int],
    generate: Mapping | None = None,
    log: Callable[[str], None] = print,
    stage_overrides: Mapping[str, Mapping] | None = None,
    verbose: bool = True,
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
        verbose: the bundles' per-iteration logs; ``False``: progress bars (see :func:`run_bundle`).

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
            log(f"synthesis ({name}): already done in {done[name]:.0f} s, skipped")
            continue
        extra = {**extra, **((stage_overrides or {}).get(name, {})), **({"max_epochs": epochs[name], "resume": True} if name in epochs else {})}
        log(f"synthesis bundle: {configs[-1]} ({name}) {extra}")
        start = time.time()
        run_bundle(bundle, configs, workflow_type=kind, verbose=verbose, **common, **extra)
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
