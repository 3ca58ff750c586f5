"""Both bundles under ``torchrun --nproc_per_node 2`` on the CPU (gloo): the merged result equals a single-process run
(the same epoch plan, the same pool ids, one set of checkpoints) and only rank 0 writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from monai_breastlt.data import load_datalist
from monai_breastlt.utils import root_cause
from monai_breastlt.workflows import TINY_NETS, default_bundles_dir, run_bundle

BUNDLES = default_bundles_dir()
CLS, SYN = BUNDLES / "breastlt_classification", BUNDLES / "breastlt_synthesis"

# runs bundle workflows in one torchrun process and records, per rank, every atomic write (all the package's files
# go through os.replace), every epoch plan and shard the sampler drew, and the trained network's parameter sum. The
# process group is left (the configs' `finalize`) after the last run only: torch cannot join the torchrun group again
# once left, and the later runs' init_distributed finds it joined.
CHILD = r"""
import json, os, sys
log, runs = sys.argv[1], json.loads(sys.argv[2])
record = {"writes": [], "shards": [], "weights": []}
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    record["writes"].append(os.fspath(dst))
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace
from monai_breastlt.data import AdaptiveRatioSampler
real_iter = AdaptiveRatioSampler.__iter__
def recording_iter(self):
    shard = list(real_iter(self))
    record["shards"].append({"epoch": self.epoch, "plan": self.epoch_indices().tolist(), "shard": shard})
    return iter(shard)
AdaptiveRatioSampler.__iter__ = recording_iter
from monai.bundle import ConfigWorkflow
for i, run in enumerate(runs):
    net_id = run.pop("net_id", None)
    wf = ConfigWorkflow(**run)
    wf.initialize()
    wf.run()
    if net_id:
        record["weights"].append(sum(float(p.double().sum()) for p in wf.parser.get_parsed_content(net_id).parameters()))
    if i == len(runs) - 1:
        wf.finalize()
with open(os.path.join(log, f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump(record, f)
"""


def _torchrun(tmp_path: Path, runs: list[dict]) -> list[dict]:
    child, log = tmp_path / "child.py", tmp_path / "log"
    child.write_text(CHILD)
    log.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2", str(child), str(log), json.dumps(runs)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # a hung collective: end torchrun and its workers together
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    assert proc.returncode == 0, out[-3000:] + err[-5000:]
    return [json.loads((log / f"rank{r}.json").read_text()) for r in (0, 1)]


def _workflow(bundle: Path, configs: list[str], kind: str = "train", **overrides) -> dict:
    return {"config_file": [str(bundle / "configs" / c) for c in configs], "meta_file": str(bundle / "configs" / "metadata.json"),
            "logging_file": str(bundle / "configs" / "logging.conf"), "workflow_type": kind, **overrides}


def _assert_one_plan_in_disjoint_shards(r0: dict, r1: dict) -> None:
    assert [s["epoch"] for s in r0["shards"]] == [s["epoch"] for s in r1["shards"]]
    for a, b in zip(r0["shards"], r1["shards"]):
        assert a["plan"] == b["plan"]  # every rank derived the same plan (same ratios, same seed and epoch)
        merged = [i for pair in zip(a["shard"], b["shard"]) for i in pair]
        assert merged == a["plan"] and len(a["shard"]) == len(b["shard"])  # disjoint, equal shards that make up the plan


def _single_process_plan(parser: ConfigParser, sampler_id: str, epoch: int = 1) -> list[int]:
    sampler = parser.get_parsed_content(sampler_id)
    sampler.set_epoch(epoch)  # MONAI's workflow sets the engine's epoch (1 first)
    return sampler.epoch_indices().tolist()


def test_classification_bundle_on_two_cpu_processes(tiny_phantom, tmp_path):
    out = tmp_path / "cls"
    settings = {"dataset_dir": str(tiny_phantom.parent), "output_dir": str(out), "image_size": 32, "batch_size": 4, "epoch_size": 16,
                "policy_name": "rl", "ppo_n_steps": 2, "seed": 3}
    r0, r1 = _torchrun(tmp_path, [_workflow(CLS, ["train.yaml", "multi_gpu_train.yaml"], max_epochs=2, tracking="mlflow",
                                            net_id="network", **settings)])
    # only rank 0 writes: one set of checkpoints, reports and plots, one MLflow run
    assert not [w for w in r1["writes"] if w.startswith(str(out))]
    assert sorted(p.name for p in (out / "models").iterdir()) == ["checkpoint_epoch=2.pt", "classes.json", "model.pt"]
    assert {"val_report.json", "val_confusion_matrix.png", "val_ratio_trajectory.png"} <= {Path(w).name for w in r0["writes"]}
    client = MlflowClient(f"sqlite:///{out / 'mlruns.db'}")
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == 1
    # DDP averaged the gradients: both ranks end with the same weights
    assert r0["weights"] == r1["weights"]
    # one epoch plan per epoch, split between the ranks (the RL policy took the same decisions on both) ...
    _assert_one_plan_in_disjoint_shards(r0, r1)
    assert len(r0["shards"]) == 2
    # ... and the first is the plan a single process draws
    parser = ConfigParser()
    parser.read_config([str(CLS / "configs" / "train.yaml")])
    parser.update({**settings, "output_dir": str(tmp_path / "single")})
    parser.get_parsed_content("adaptive_handler")  # sets the initial ratios on the sampler, as in a run
    assert r0["shards"][0]["plan"] == _single_process_plan(parser, "train#sampler")


def test_synthesis_stages_and_pool_generation_on_two_cpu_processes(tiny_phantom, tmp_path):
    out, pool = tmp_path / "syn", tmp_path / "pool"
    common = {"dataset_dir": str(tiny_phantom.parent), "output_dir": str(out), "image_size": 32, "batch_size": 4, "max_epochs": 1, **TINY_NETS}
    generate = {"pool_dir": str(pool), "target_mode": "each", "target_n": 2, "num_inference_steps": 2}
    r0, r1 = _torchrun(tmp_path, [
        _workflow(SYN, ["common.yaml", "train_autoencoder.yaml", "multi_gpu_train.yaml"], net_id="ldm", **common),
        _workflow(SYN, ["common.yaml", "train_perception.yaml", "multi_gpu_train.yaml"], net_id="perception", **common),
        _workflow(SYN, ["common.yaml", "train_diffusion.yaml", "multi_gpu_train.yaml"], net_id="ldm", **common),
        _workflow(SYN, ["common.yaml", "train_diffusion.yaml", "multi_gpu_train.yaml"], net_id="ldm", use_controlnet=True, **common),
        _workflow(SYN, ["common.yaml", "inference.yaml", "multi_gpu_train.yaml"], "infer", **common, **generate),
    ])
    # one set of checkpoints, written by rank 0; rank 1 wrote only its share of the pool and its own manifest
    assert sorted(p.name for p in (out / "models").iterdir()) == [
        "autoencoder_checkpoint_epoch=1.pt", "classes.json", "controlnet_checkpoint_epoch=1.pt", "ldm.pt", "perception.pt",
        "perception_checkpoint_epoch=1.pt", "unet_checkpoint_epoch=1.pt"]
    assert r1["writes"] and all(Path(w).parent.parent == pool and w.endswith(".png") or w == str(pool / "pool.rank1.json") for w in r1["writes"])
    assert r0["weights"] == r1["weights"] and len(r0["weights"]) == 4  # gradients averaged in every stage
    _assert_one_plan_in_disjoint_shards(r0, r1)
    parser = ConfigParser()
    parser.read_config([str(SYN / "configs" / "common.yaml")])
    parser.update({**common, "output_dir": str(tmp_path / "single")})
    assert r0["shards"][0]["plan"] == _single_process_plan(parser, "train_sampler")
    # the merged pool is the one a single process generates from the same models: same ids, seeds, sketches, images
    assert not list(pool.glob("pool.rank*.json")) and (pool / "sample_grid.png").is_file()
    run_bundle(SYN, ["common.yaml", "inference.yaml"], workflow_type="infer", **common, **{**generate, "pool_dir": str(tmp_path / "single")})
    merged, single = load_datalist(pool / "pool.json")[0], load_datalist(tmp_path / "single" / "pool.json")[0]
    keys = ("id", "label", "seed", "sketch_from")
    assert [tuple(e[k] for k in keys) for e in merged] == [tuple(e[k] for k in keys) for e in single] and len(merged) == 12
    for a, b in zip(merged, single):  # batching may round a pixel differently
        assert np.abs(np.asarray(Image.open(a["image"]), int) - np.asarray(Image.open(b["image"]), int)).max() <= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="NCCL is available where CUDA is: nothing to refuse")
def test_a_backend_the_machine_lacks_stops_before_training(tiny_phantom, tmp_path):
    out = tmp_path / "cls"
    wf = ConfigWorkflow(**_workflow(CLS, ["train.yaml", "multi_gpu_train.yaml"], dataset_dir=str(tiny_phantom.parent), output_dir=str(out),
                                    dist_backend="nccl"))
    with pytest.raises(RuntimeError) as caught:
        wf.initialize()  # the configs' first step, before any data is read or any network built
    assert str(root_cause(caught.value)) == (
        "dist_backend 'nccl' is not available on this machine (device cpu): pass --dist_backend gloo, or leave dist_backend "
        "null (nccl on CUDA, gloo on CPU).")
    assert not out.exists() and not torch.distributed.is_initialized()
