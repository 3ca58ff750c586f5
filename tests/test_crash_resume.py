"""SIGKILL a real classification-bundle training process mid-epoch and mid-checkpoint-save, resume it, and get the
weights of the uninterrupted run (RL ratio policy included: PPO weights, rollout buffer, RNG states)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from monai_breastlt.workflows import default_bundles_dir
from monai_breastlt.data import load_datalist_file, write_datalist
from monai_breastlt.utils import latest_checkpoint, torch_load_safe

CLS = default_bundles_dir() / "breastlt_classification"
EPOCHS = 4

# the child: optionally dies (SIGKILL, no clean-up) half-way through writing the n-th resume checkpoint
CHILD = r"""
import io, json, os, signal, sys
import torch
die_at = int(sys.argv[1])
if die_at:
    original, calls = torch.save, [0]
    def dying_save(obj, f, *args, **kwargs):
        name = getattr(f, "name", str(f))
        if "checkpoint_epoch" in os.path.basename(str(name)):
            calls[0] += 1
            if calls[0] == die_at:
                buf = io.BytesIO()
                original(obj, buf)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
        return original(obj, f, *args, **kwargs)
    torch.save = dying_save
from monai.bundle.scripts import run
run(**json.loads(sys.argv[2]))
"""


def _start(out: Path, data: Path, pool: Path, die_at_save: int = 0, resume: bool = False) -> subprocess.Popen:
    args = {
        "config_file": str(CLS / "configs" / "train.yaml"), "meta_file": str(CLS / "configs" / "metadata.json"),
        "logging_file": str(CLS / "configs" / "logging.conf"), "bundle_root": str(CLS),
        "dataset_dir": str(data.parent), "pool": str(pool), "output_dir": str(out), "max_epochs": EPOCHS,
        "image_size": 32, "batch_size": 8, "epoch_size": 32, "policy_name": "rl", "ppo_n_steps": 2, "seed": 3,
        "resume": resume,
    }
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(die_at_save), json.dumps(args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def _kill_when(proc: subprocess.Popen, marker: str) -> None:
    for line in proc.stdout:
        if marker in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _final(out: Path) -> dict:
    ckpt = torch_load_safe(latest_checkpoint(out / "models"))
    report = json.loads((out / "val_report.json").read_text())
    return {"epoch": ckpt["trainer"]["iteration"] // ckpt["trainer"]["epoch_length"], "model": ckpt["model"], "best": torch_load_safe(out / "models" / "model.pt"),
            "policy": ckpt["sampler"]["policy"], "history": report["ratio_history"]}


def _assert_same(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"] == EPOCHS
    assert [h["epoch"] for h in b["history"]] == list(range(1, EPOCHS + 1))
    assert a["history"] == b["history"]  # the RL policy took the same decisions
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-5), k
        assert torch.allclose(a["best"][k].float(), b["best"][k].float(), atol=1e-5), k
    pa, pb = a["policy"]["ppo"]["policy"], b["policy"]["ppo"]["policy"]
    assert all(torch.allclose(pa[k], pb[k], atol=1e-6) for k in pa) and a["policy"]["num_updates"] == b["policy"]["num_updates"] > 0


@pytest.mark.slow  # three real training processes, two killed: in CI's second step (`pytest -m slow`)
def test_sigkill_mid_epoch_and_mid_save_then_resume_equals_uninterrupted(tiny_phantom, tmp_path):
    doc = load_datalist_file(tiny_phantom)
    pool = write_datalist(tmp_path / "pool.json", {"synthetic": [{"image": i["image"], "label": i["label"]} for i in doc["training"]]}, doc["classes"])

    ref = tmp_path / "uninterrupted"
    _finish(_start(ref, tiny_phantom, pool))
    expected = _final(ref)

    # 1. killed in the middle of epoch 3 (after the epoch-2 checkpoint), then resumed
    mid_epoch = tmp_path / "mid_epoch"
    _kill_when(_start(mid_epoch, tiny_phantom, pool), "Epoch: 3/4, Iter: 2/")
    assert Path(latest_checkpoint(mid_epoch / "models")).name == "checkpoint_epoch=2.pt"
    log = _finish(_start(mid_epoch, tiny_phantom, pool, resume=True))
    assert "Epoch: 1/4" not in log and "Epoch: 3/4" in log  # continued at epoch 3, did not start over
    _assert_same(expected, _final(mid_epoch))

    # 2. killed half-way through writing the epoch-3 checkpoint: the half-written file is never taken as "latest"
    mid_save = tmp_path / "mid_save"
    proc = _start(mid_save, tiny_phantom, pool, die_at_save=3)
    proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL
    assert Path(latest_checkpoint(mid_save / "models")).name == "checkpoint_epoch=2.pt"
    assert torch_load_safe(latest_checkpoint(mid_save / "models"))["trainer"]["iteration"] == 8  # loads: not truncated
    _finish(_start(mid_save, tiny_phantom, pool, resume=True))
    _assert_same(expected, _final(mid_save))
