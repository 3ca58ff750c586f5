from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# the CPU here has 2 cores: one thread avoids oversubscription when pytest and torch compete
torch.set_num_threads(1)
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory) -> Path:
    """A 6-class phantom, 32x32, head 12 images, imbalance ratio 4 (datalist path)."""
    from monai_breastlt.data import generate_phantom

    out = tmp_path_factory.mktemp("phantom")
    return generate_phantom(out, head_count=12, imbalance_ratio=4, image_size=32, seed=0)


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data not available: {path} is absent")
    return path


# The tests' one tiny synthesis configuration: SketchConditionedLDM and SketchPerceptionNet arguments, and the same
# networks as synthesis-bundle overrides (TINY_BUNDLE_NETS, for bundle runs)
TINY_LDM = dict(
    ae_channels=(8, 16), unet_channels=(16, 32), unet_attention=(False, True), num_head_channels=16, norm_num_groups=8, latent_channels=2
)
TINY_PERCEPTION = dict(features=(4, 4, 8, 8, 16, 4))
TINY_BUNDLE_NETS = {
    **{f"ldm_def#{k}": list(v) if isinstance(v, tuple) else v for k, v in TINY_LDM.items()},
    **{f"perception_def#{k}": list(v) for k, v in TINY_PERCEPTION.items()},
}


def tiny_perception():
    from monai_breastlt.networks import SketchPerceptionNet

    return SketchPerceptionNet(**TINY_PERCEPTION)


def tiny_ldm(num_classes: int = 6, seed: int = 0, **kwargs):
    from monai_breastlt.networks import SketchConditionedLDM

    torch.manual_seed(seed)
    model = SketchConditionedLDM(num_classes, **{**TINY_LDM, **kwargs})
    # MONAI zero-initialises the UNet output and ControlNet residual convolutions; randomise them so an
    # untrained model's output depends on its class and sketch inputs
    for p in list(model.unet.parameters()) + list(model.controlnet.parameters()):
        if p.dim() > 1 and p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    return model.eval()


@contextlib.contextmanager
def stats_handler_records():
    """The records MONAI's ``StatsHandler`` logs meanwhile (a bundle's per-iteration and per-epoch lines). Its logger
    keeps the stdout handler it got when first used in the process, so ``capsys`` does not always see those lines."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("monai.handlers.StatsHandler")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def monai_bundle_cli(*args: str, cwd: str | os.PathLike, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle ARGS`` (or ``LAUNCHER -m monai.bundle ARGS``, e.g. torchrun) in a subprocess; fail with
    its output unless it exits with 0."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [*(launcher or (sys.executable,)), "-m", "monai.bundle", *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
