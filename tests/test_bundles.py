"""The two bundles run through `python -m monai.bundle run` (subprocess) and `ConfigWorkflow` (the demo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from conftest import TINY_BUNDLE_NETS, monai_bundle_cli, stats_handler_records

from monai_breastlt.workflows import default_bundles_dir, run_bundle
from monai_breastlt.cli.main import main

BUNDLES = default_bundles_dir()
CLS, SYN = BUNDLES / "breastlt_classification", BUNDLES / "breastlt_synthesis"




def _runs(db: Path):
    client = MlflowClient(f"sqlite:///{db}")
    exps = client.search_experiments()
    return client, client.search_runs([e.experiment_id for e in exps])


@pytest.mark.slow
def test_classification_bundle_cli_with_mlflow(tiny_phantom, tmp_path):
    out = tmp_path / "cls"
    monai_bundle_cli(
        "run", "--bundle_root", str(CLS), "--config_file", str(CLS / "configs/train.yaml"),
        "--meta_file", str(CLS / "configs/metadata.json"), "--logging_file", str(CLS / "configs/logging.conf"),
        "--dataset_dir", str(tiny_phantom.parent), "--output_dir", str(out), "--max_epochs", "2",
        "--image_size", "32", "--batch_size", "8", "--policy_name", "heuristic", "--tracking", "mlflow",
        cwd=tmp_path,
    )
    client, runs = _runs(out / "mlruns.db")
    assert len(runs) == 1
    run = runs[0]
    metrics = run.data.metrics
    assert {"train_loss", "long_tail", "long_tail_balanced_accuracy", "ratio/cyst", "ratio/phyllodes_tumor"} <= set(metrics)
    assert len(client.get_metric_history(run.info.run_id, "ratio/cyst")) == 2  # one per epoch
    assert run.data.params["max_epochs"] == "2"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pt", "val_confusion_matrix.png", "val_ratio_trajectory.png", "val_report.json"} <= artifacts
    report = json.loads((out / "val_report.json").read_text())
    assert len(report["ratio_history"]) == 2 and len(report["confusion_matrix"]) == 6
    # resume: the interval checkpoint restores the epoch, then trains to the new max_epochs
    run_bundle(CLS, ["train.yaml"], dataset_dir=str(tiny_phantom.parent), output_dir=str(out), max_epochs=3,
               image_size=32, batch_size=8, policy_name="heuristic", resume=True)
    assert (out / "models/checkpoint_epoch=3.pt").is_file()
    history = json.loads((out / "val_report.json").read_text())["ratio_history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]  # epochs 1-2 restored from the checkpoint, epoch 3 trained
    # inference: class probabilities per test image
    run_bundle(CLS, ["train.yaml", "inference.yaml"], workflow_type="infer", dataset_dir=str(tiny_phantom.parent),
               output_dir=str(out), image_size=32, batch_size=8)
    header, *rows = (out / "predictions.csv").read_text().strip().splitlines()
    doc = json.loads(tiny_phantom.read_text())
    assert header.split(",") == ["filename", *doc["classes"]]
    assert len(rows) == len(doc["test"]) and all(len(r.split(",")) == 7 for r in rows)


def test_synthesis_stage_cli(tiny_phantom, tmp_path):
    overrides = [x for k, v in TINY_BUNDLE_NETS.items() for x in (f"--{k}", json.dumps(v).replace(" ", "").lower())]
    monai_bundle_cli(
        "run", "--bundle_root", str(SYN), "--config_file", str([str(SYN / "configs/common.yaml"), str(SYN / "configs/train_autoencoder.yaml")]),
        "--meta_file", str(SYN / "configs/metadata.json"), "--dataset_dir", str(tiny_phantom.parent),
        "--output_dir", str(tmp_path / "syn"), "--max_epochs", "1", "--image_size", "32", "--batch_size", "8", "--tracking", "mlflow",
        *overrides, cwd=tmp_path,
    )
    assert (tmp_path / "syn/models/ldm.pt").is_file()
    client, runs = _runs(tmp_path / "syn/mlruns.db")
    assert "train_loss" in runs[0].data.metrics


def test_synthesis_bundle_samples_rare_classes_more_often(tiny_phantom):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(SYN / "configs/common.yaml")])
    parser.update({"dataset_dir": str(tiny_phantom.parent), "class_balance": 1.0})
    sampler = parser.get_parsed_content("train_sampler")
    labels = parser.get_parsed_content("train_labels")
    counts = [labels.count(c) for c in range(max(labels) + 1)]
    drawn = [labels[i] for i in sampler]
    assert len(drawn) == len(labels)  # an epoch keeps the size of the training set
    assert max(counts) > 2 * min(counts) and max(drawn.count(c) for c in range(len(counts))) - min(drawn.count(c) for c in range(len(counts))) <= 1
    sampler.set_epoch(1)
    assert [labels[i] for i in sampler] != drawn  # reshuffled per epoch (MONAI's trainer calls set_epoch)


@pytest.mark.slow  # CI also runs `demo --fast` from the installed wheel
def test_demo_fast_end_to_end(tmp_path, capsys):
    """Phase 1 trained (tiny), both arms, the audit and the summary; --verbose brings the bundles' per-iteration log."""
    with stats_handler_records() as records:
        assert main(["demo", "--fast", "--verbose", "--out", str(tmp_path / "demo")]) == 0
    text = capsys.readouterr().out
    assert "| rl_sampler |" in text and "| plain_ce |" in text and "mlflow ui --backend-store-uri sqlite:///" in text
    assert any("Epoch: 1/3, Iter: 1/" in r.getMessage() for r in records) and "judged by the plain-CE classifier" in text
    assert "phase 1 trained in this run" in (tmp_path / "demo/summary.md").read_text() and (tmp_path / "demo/summary.png").is_file()
    pool = json.loads((tmp_path / "demo/data/pool/pool.json").read_text())["training"]
    assert pool and all(p["source"] == "synthetic" for p in pool)
    assert (tmp_path / "demo/data/pool/sample_grid.png").is_file()
    audit = json.loads((tmp_path / "demo/data/pool/audit/audit_report.json").read_text())
    assert audit["overall"]["n"] == len(pool) and "synthetic pool audit" in text
    client, runs = _runs(tmp_path / "demo/mlruns.db")
    names = {r.info.run_name for r in runs}
    assert {"rl_sampler", "plain_ce"} <= names
    rl = next(r for r in runs if r.info.run_name == "rl_sampler")
    assert any(k.startswith("ratio/") for k in rl.data.metrics)
    assert rl.data.params["policy_name"] == "rl" and int(rl.data.params["synthetic_images"]) == len(pool)
    artifacts = {a.path for a in client.list_artifacts(rl.info.run_id)}
    assert {"sample_grid.png", "audit_report.json", "val_ratio_trajectory.png", "model.pt"} <= artifacts
    for arm in ("rl_sampler", "plain_ce"):
        report = json.loads((tmp_path / f"demo/classification/{arm}/test_report.json").read_text())
        assert 0 <= report["macro_f1"] <= 1


def test_demo_without_bundles_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--fast", "--out", str(tmp_path), "--bundles", str(tmp_path / "nope")]) == 2
    assert "bundle not found" in capsys.readouterr().err


def test_synthesis_stages_resume(tiny_phantom, tmp_path, capsys):
    """Each training stage writes resume checkpoints; --resume True continues the stage instead of restarting."""
    common = {"dataset_dir": str(tiny_phantom.parent), "output_dir": str(tmp_path / "syn"), "image_size": 32, "batch_size": 8, **TINY_BUNDLE_NETS}
    run_bundle(SYN, ["common.yaml", "train_autoencoder.yaml"], max_epochs=1, **common)
    for config, extra, prefix in (("train_perception.yaml", {}, "perception"), ("train_diffusion.yaml", {}, "unet"),
                                  ("train_diffusion.yaml", {"use_controlnet": True}, "controlnet")):
        run_bundle(SYN, ["common.yaml", config], max_epochs=1, **common, **extra)
        assert (tmp_path / f"syn/models/{prefix}_checkpoint_epoch=1.pt").is_file()
        capsys.readouterr()
        run_bundle(SYN, ["common.yaml", config], max_epochs=2, resume=True, **common, **extra)
        text = capsys.readouterr().out  # the bundle's logging.conf logs to stdout
        assert f"{prefix}_checkpoint_epoch=1.pt" in text and "Epoch[1] Complete" not in text and "Epoch[2] Complete" in text, prefix
        assert (tmp_path / f"syn/models/{prefix}_checkpoint_epoch=2.pt").is_file()
        if prefix != "perception":  # ldm.pt holds the moving average the resume checkpoint carries, not the last weights
            ckpt = torch.load(tmp_path / f"syn/models/{prefix}_checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
            final = torch.load(tmp_path / "syn/models/ldm.pt", map_location="cpu", weights_only=True)
            shadow = ckpt["ema"]["shadow"]
            assert shadow and all(k.startswith(f"{prefix}.") for k in shadow), prefix  # only what the stage trains
            assert all(torch.equal(final[k], v) for k, v in shadow.items())
            assert any(not torch.equal(ckpt["ldm"][k], v) for k, v in shadow.items())


def test_classification_bundle_phase2_options(tiny_phantom, tmp_path):
    """RL policy acting every 2 iterations on smoothed figures, synthetic items down-weighted: the counts are right and
    the options reach the run."""
    from monai_breastlt.data import load_datalist_file, write_datalist

    doc = load_datalist_file(tiny_phantom)
    pool = tmp_path / "pool.json"  # the training images again, as synthetic entries: enough to drive the pool side
    write_datalist(pool, {"synthetic": [{"image": i["image"], "label": i["label"]} for i in doc["training"]]}, doc["classes"])
    out = tmp_path / "cls"
    run_bundle(CLS, ["train.yaml"], dataset_dir=str(tiny_phantom.parent), pool=str(pool), output_dir=str(out), max_epochs=2,
               image_size=32, batch_size=8, epoch_size=32, policy_name="rl", ppo_n_steps=2, val_every_iterations=2,
               reward_smoothing=0.5, synthetic_weight=0.5, ppo_learning_rate=3e-3, ppo_n_epochs=2)
    history = json.loads((out / "val_report.json").read_text())["ratio_history"]
    assert [h["iteration"] for h in history] == [2, 4, 6, 8]  # 4 iterations an epoch, 2 epochs: 4 decisions
    out2 = tmp_path / "cls_epochwise"
    run_bundle(CLS, ["train.yaml"], dataset_dir=str(tiny_phantom.parent), pool=str(pool), output_dir=str(out2), max_epochs=2,
               image_size=32, batch_size=8, epoch_size=32, policy_name="heuristic", val_every_iterations=2, decide_every=2)
    assert [h["iteration"] for h in json.loads((out2 / "val_report.json").read_text())["ratio_history"]] == [4, 8]
