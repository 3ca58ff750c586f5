from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import pytest
import torch

from monai_breastlt.bench.long_tail import (
    ARMS,
    LongTailBenchmark,
    compare_to_baselines,
    format_markdown,
    summarize_runs,
)
from monai_breastlt.cli.main import main
from monai_breastlt.data import load_datalist_file, prepare_benchmark_data, write_datalist


def _fake_pool(datalist, path):
    """Real training images relabelled as 'synthetic' entries: enough to drive the sampler's pool side."""
    doc = load_datalist_file(datalist)
    write_datalist(path, {"synthetic": [{"image": i["image"], "label": i["label"]} for i in doc["training"]]}, doc["classes"])
    return path


def test_bench_lt_tiny_table_parses_and_resumes(tiny_phantom, tmp_path, capsys):
    out = tmp_path / "bench"
    pool = _fake_pool(tiny_phantom, tmp_path / "pool.json")
    argv = ["bench", "lt", "--data", str(tiny_phantom), "--pool", str(pool), "--out", str(out), "--arms", "ce", "syn_fixed",
            "--seeds", "1", "--epochs", "2", "--epoch-size", "24", "--image-size", "32", "--batch-size", "8", "--threads", "1"]
    assert main(argv) == 0
    table = (out / "results.md").read_text().splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:3] == ["arm", "seeds", "macro-F1"]
    body = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in table[2:4]}
    assert set(body) == {"ce", "syn_fixed"}
    for cells in body.values():
        mean, std = cells[2].split(" ± ")
        assert 0 <= float(mean) <= 100 and float(std) == 0.0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["arm"] for r in rows] == ["ce", "syn_fixed"] and all(0 <= float(r["macro_f1_mean"]) <= 1 for r in rows)
    assert (out / "results.png").stat().st_size > 0
    # the synthetic arm really mixed the pool in; the CE arm did not
    assert json.loads((out / "runs" / "syn_fixed" / "seed0" / "val_report.json").read_text())["ratio_history"]
    # one MLflow experiment, one run per arm/seed, with the test figures
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlruns.db'}")
    exp = client.get_experiment_by_name("breastlt_bench_lt")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["ce-seed0", "syn_fixed-seed0"]
    assert all("test_macro_f1" in r.data.metrics and "long_tail_balanced_accuracy" in r.data.metrics for r in runs)
    # resumable: a second invocation reads finished runs back and trains nothing
    stamp = (out / "runs" / "ce" / "seed0" / "train_done.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    assert "bench lt: train" not in capsys.readouterr().out
    assert (out / "runs" / "ce" / "seed0" / "train_done.json").stat().st_mtime_ns == stamp


def test_prepare_benchmark_data_subsamples_training_only(tiny_phantom, tmp_path):
    path = prepare_benchmark_data(tiny_phantom, tmp_path, imbalance_ratio=12)
    doc, src = load_datalist_file(path), load_datalist_file(tiny_phantom)
    counts = [sum(i["label"] == c for i in doc["training"]) for c in range(len(doc["classes"]))]
    assert max(counts) / min(counts) > max(c for c in counts) / 12 - 1e-9 and len(doc["training"]) <= len(src["training"])
    assert len(doc["validation"]) == len(src["validation"]) and len(doc["test"]) == len(src["test"])
    assert prepare_benchmark_data(tiny_phantom, tmp_path, imbalance_ratio=12) == path  # reused
    with pytest.raises(ValueError, match="made with"):
        prepare_benchmark_data(tiny_phantom, tmp_path, imbalance_ratio=5)


def test_bench_lt_refuses_bad_arms_and_missing_pool(tiny_phantom, tmp_path):
    with pytest.raises(ValueError, match="unknown arm"):
        LongTailBenchmark(tiny_phantom, tmp_path, arms=["ce", "mixup"])
    with pytest.raises(ValueError, match="need a synthetic pool"):
        LongTailBenchmark(tiny_phantom, tmp_path, arms=["syn_rl"])
    with pytest.raises(FileNotFoundError, match="pool manifest not found"):
        LongTailBenchmark(tiny_phantom, tmp_path, pool=tmp_path / "none.json", arms=["syn_rl"])
    assert set(ARMS) >= {"ce", "cb_oversampling", "crt", "ldam_drw", "logit_adjusted_posthoc", "syn_rl", "syn_fill"}


def test_summary_and_comparison_by_hand():
    runs = [{"arm": "ce", "seed": s, "macro_f1": f, "balanced_accuracy": 0.5, "g_mean": 0.0, "head_recall": 0.9,
             "medium_recall": 0.5, "tail_recall": 0.0, "accuracy": 0.8} for s, f in ((0, 0.4), (1, 0.6))]
    runs += [{**runs[0], "arm": "syn_rl", "macro_f1": 0.55, "tail_recall": 0.2, "head_recall": 0.85}]
    rows = summarize_runs(runs, ["ce", "syn_rl"])
    assert rows[0]["macro_f1_mean"] == pytest.approx(0.5) and rows[0]["macro_f1_std"] == pytest.approx(0.1414, abs=1e-4)
    c = compare_to_baselines(rows)
    assert c["best_baseline"] == "ce" and c["d_macro_f1"] == pytest.approx(5.0) and c["d_tail_recall"] == pytest.approx(20.0)
    assert c["d_head_recall_vs_ce"] == pytest.approx(-5.0)
    assert "| ce | 2 | 50.0 ± 14.1 |" in format_markdown(rows, c)


def test_pretrained_rl_arm_gets_a_warm_start_once(tiny_phantom, tmp_path):
    from monai_breastlt.rl import MultiAgentRatioPolicy

    pool = tmp_path / "pool.json"
    write_datalist(pool, {"training": []}, load_datalist_file(tiny_phantom)["classes"])
    bench = LongTailBenchmark(prepare_benchmark_data(tiny_phantom, tmp_path), tmp_path, pool=pool, arms=["syn_rl_pretrained"],
                              epochs=3, pretrain_steps=256)
    common = bench._common("syn_rl_pretrained", 0)
    path = Path(common["policy_model_path"])
    assert path.is_file() and common["policy_name"] == "rl" and "policy_model_path" not in bench._common("syn_rl", 0)
    stamp = path.stat().st_mtime_ns
    assert bench.pretrained_policy(0) == path and path.stat().st_mtime_ns == stamp  # made once, then reused
    doc = load_datalist_file(bench.datalist)
    counts = [sum(i["label"] == c for i in doc["training"]) for c in range(len(doc["classes"]))]
    warm, cold = MultiAgentRatioPolicy(seed=0, model_path=path), MultiAgentRatioPolicy(seed=0)
    warm.reset(counts, 0.3), cold.reset(counts, 0.3)
    w, c = (p.model.policy.state_dict() for p in (warm, cold))
    assert any(not torch.equal(w[k], c[k]) for k in w)  # the pre-trained weights were loaded, not a fresh init
