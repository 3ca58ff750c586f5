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
    arm_options,
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
            "--seeds", "1", "--epochs", "2", "--epoch-size", "24", "--image-size", "32", "--batch-size", "8", "--threads", "1",
            "--unfiltered"]
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
    # a longer budget later: the finished runs resume to the new epoch count and are tested again
    assert main([*argv[: argv.index("--epochs") + 1], "3", *argv[argv.index("--epochs") + 2 :]]) == 0
    assert capsys.readouterr().out.count("bench lt: train") == 2
    assert json.loads((out / "runs" / "ce" / "seed0" / "train_done.json").read_text())["epochs"] == 3
    assert len(json.loads((out / "runs" / "ce" / "seed0" / "val_report.json").read_text())["val_history"]) == 3


def test_prepare_benchmark_data_subsamples_training_only(tiny_phantom, tmp_path):
    path = prepare_benchmark_data(tiny_phantom, tmp_path, imbalance_ratio=12)
    doc, src = load_datalist_file(path), load_datalist_file(tiny_phantom)
    counts = [sum(i["label"] == c for i in doc["training"]) for c in range(len(doc["classes"]))]
    assert max(counts) / min(counts) > max(c for c in counts) / 12 - 1e-9 and len(doc["training"]) <= len(src["training"])
    assert len(doc["validation"]) == len(src["validation"]) and len(doc["test"]) == len(src["test"])
    assert prepare_benchmark_data(tiny_phantom, tmp_path, imbalance_ratio=12) == path  # reused
    with pytest.raises(ValueError, match="made with"):
        prepare_benchmark_data(tiny_phantom, tmp_path, imbalance_ratio=5)


def test_agent_modifiers_set_the_bundle_keys_and_need_agents():
    opts = arm_options("syn_rl+lr+smooth")
    assert (opts["ppo_learning_rate"], opts["ppo_n_epochs"], opts["reward_smoothing"]) == (3e-3, 20, 0.7)
    with pytest.raises(ValueError, match=r"'\+lr' applies to rl arms only, not to 'syn_heuristic'"):
        arm_options("syn_heuristic+lr")


def test_bench_lt_refuses_bad_arms_and_missing_pool(tiny_phantom, tmp_path):
    with pytest.raises(ValueError, match="unknown arm"):
        LongTailBenchmark(tiny_phantom, tmp_path, arms=["ce", "mixup"])
    with pytest.raises(ValueError, match=r"need --pool POOL"):
        LongTailBenchmark(tiny_phantom, tmp_path, arms=["syn_rl"])
    with pytest.raises(FileNotFoundError, match="pool_filtered.json: synthetic pool manifest not found .run the audit with filtering"):
        LongTailBenchmark(tiny_phantom, tmp_path, pool=tmp_path / "none", arms=["syn_rl"])
    with pytest.raises(ValueError, match=r"need --pool-xc POOL_XC"):
        LongTailBenchmark(tiny_phantom, tmp_path, pool=_fake_pool(tiny_phantom, tmp_path / "p" / "pool.json"), arms=["syn_rl+xc"], unfiltered=True)
    other = load_datalist_file(tiny_phantom)
    write_datalist(tmp_path / "q" / "pool_filtered.json", {"synthetic": [{"image": i["image"], "label": 0} for i in other["training"][:2]]},
                   list(reversed(other["classes"])))
    with pytest.raises(ValueError, match=r"pool_filtered.json: its classes .* differ from the datalist's"):
        LongTailBenchmark(tiny_phantom, tmp_path, pool=tmp_path / "q", arms=["syn_rl"])
    assert set(ARMS) >= {"ce", "cb_oversampling", "crt", "ldam_drw", "logit_adjusted_posthoc", "syn_rl", "syn_fill"}


def test_summary_and_comparison_by_hand():
    runs = [{"arm": "ce", "seed": s, "macro_f1": f, "balanced_accuracy": 0.5, "g_mean": 0.0, "head_recall": 0.9,
             "medium_recall": 0.5, "tail_recall": 0.0, "accuracy": 0.8} for s, f in ((0, 0.4), (1, 0.6))]
    runs += [{**runs[0], "arm": "syn_rl", "macro_f1": 0.55, "tail_recall": 0.2, "head_recall": 0.85}]
    rows = summarize_runs(runs, ["ce", "syn_rl"])
    assert rows[0]["macro_f1_mean"] == pytest.approx(0.5) and rows[0]["macro_f1_std"] == pytest.approx(0.1414, abs=1e-4)
    c = compare_to_baselines(rows)
    assert c["best_baseline"] == "ce" and c["d_macro_f1"] == pytest.approx(0.05) and c["d_tail_recall"] == pytest.approx(0.2)
    assert c["d_head_recall_vs_ce"] == pytest.approx(-0.05)
    text = format_markdown(rows, [c])
    assert "| ce | 2 | 50.0 ± 14.1 |" in text
    assert "macro-F1 +5.0 target >= +3: met; tail recall +20.0 target >= +5: met; head recall vs ce -5.0 (target >= -2: not met)" in text


def test_pretrained_rl_arm_gets_a_warm_start_once(tiny_phantom, tmp_path):
    from monai_breastlt.rl import MultiAgentRatioPolicy

    pool = tmp_path / "pool.json"
    write_datalist(pool, {"training": []}, load_datalist_file(tiny_phantom)["classes"])
    bench = LongTailBenchmark(prepare_benchmark_data(tiny_phantom, tmp_path), tmp_path, pool=pool, arms=["syn_rl_pretrained", "syn_rl"], unfiltered=True,
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


def test_bench_lt_additions_statistics_and_a_second_test_set(tiny_phantom, tmp_path, capsys):
    """+modifiers reach the runs, validation every iteration gives the policies their decisions, the filtered pool is
    the default, per-image predictions give paired bootstrap intervals, and a second test set is scored through a
    class map (subtypes and a benign/malignant reading)."""
    out = tmp_path / "bench"
    pool_dir = tmp_path / "pool"
    _fake_pool(tiny_phantom, pool_dir / "pool.json")
    doc = load_datalist_file(tiny_phantom)
    write_datalist(pool_dir / "pool_filtered.json", {"synthetic": [{"image": i["image"], "label": i["label"]} for i in doc["training"][::2]]},
                   doc["classes"])
    classes = doc["classes"]
    cmap = tmp_path / "map.json"  # the phantom's own test split as "another hospital": 2 subtypes mapped, the rest grouped
    cmap.write_text(json.dumps({"classes": {classes[0]: classes[0], classes[1]: classes[1]},
                                "groups": {c: ("malignant" if "carcinoma" in c else "benign") for c in classes},
                                "label_groups": {c: ("malignant" if "carcinoma" in c else "benign") for c in classes[2:]}}))
    argv = ["bench", "lt", "--data", str(tiny_phantom), "--pool", str(pool_dir), "--out", str(out), "--arms", "ce",
            "syn_rl+freq+smooth+w+crt", "--seeds", "2", "--epochs", "3", "--epoch-size", "24", "--image-size", "32",
            "--batch-size", "8", "--val-every", "1", "--ppo-n-steps", "2", "--test", str(tiny_phantom), "--class-map", str(cmap),
            "--threads", "1"]
    assert main(argv) == 0
    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert [r["arm"] for r in runs] == ["ce", "syn_rl+freq+smooth+w+crt"] * 2
    assert all(r["validations"] == "9" and r["plateaued"] in ("True", "False") for r in runs)  # 3 epochs x 3 iterations
    stage1 = out / "runs" / "syn_rl+freq+smooth+w" / "seed0"
    history = json.loads((stage1 / "val_report.json").read_text())["ratio_history"]
    assert len(history) == 9 and history[-1]["ppo_updates"] == 4  # a decision at every validation; n_steps 2
    ce_history = json.loads((out / "runs" / "ce" / "seed0" / "val_report.json").read_text())["val_history"]
    assert len(ce_history) == 9
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlruns.db'}")
    params = {r.info.run_name: r.data.params for r in client.search_runs([client.get_experiment_by_name("breastlt_bench_lt").experiment_id])}
    assert params["syn_rl+freq+smooth+w-seed0"]["synthetic_weight"] == "0.5" and params["syn_rl+freq+smooth+w-seed0"]["reward_smoothing"] == "0.7"
    assert params["syn_rl+freq+smooth+w-seed0"]["synthetic_images"] == str(len(doc["training"][::2]))  # the filtered pool
    assert params["syn_rl+freq+smooth+w+crt-seed0"]["classifier_only"] == "True"
    # per-image predictions of every run, and the paired comparison with intervals over test images
    preds = list(csv.DictReader((out / "runs" / "ce" / "seed1" / "test_predictions.csv").open()))
    assert len(preds) == len(doc["test"]) and set(preds[0]) >= {"image", "label", "predicted", f"p_{classes[0]}"}
    comp = json.loads((out / "comparisons.json").read_text())
    boot = comp["comparisons"][0]["bootstrap"]
    assert comp["comparisons"][0]["method"] == "syn_rl+freq+smooth+w+crt" and boot["seeds"] == [0, 1]
    assert len(boot["macro_f1"]["per_seed"]) == 2 and boot["macro_f1"]["ci95"][0] <= boot["macro_f1"]["mean"] <= boot["macro_f1"]["ci95"][1]
    text = (out / "results.md").read_text()
    assert "95 % CI over test images" in text and "| val. plateaued |" in text
    # the second test set: mapped subtypes, and the malignancy reading of every grouped image
    mapping = json.loads((out / "external" / "datalist" / "mapping.json").read_text())
    assert mapping["mapped"] == sum(i["label"] in (0, 1) for i in doc["test"]) and mapping["grouped"] == len(doc["test"])
    ext = comp["external"]["datalist"]["arms"]["ce"]
    assert 0 <= ext["auc"][0] <= 1 and 0 <= ext["macro_f1"][0] <= 1
    assert "Test set 'datalist'" in text and "| ce |" in text.split("Test set 'datalist'")[1]


def test_external_test_set_errors(tiny_phantom, tmp_path):
    from monai_breastlt.bench.long_tail import prepare_external_test

    classes = load_datalist_file(tiny_phantom)["classes"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"classes": {classes[0]: "angiosarcoma"}}))
    with pytest.raises(ValueError, match=r"'classes' values name unknown classes \['angiosarcoma'\]"):
        prepare_external_test(tiny_phantom, bad, classes, tmp_path / "x")
    bad.write_text(json.dumps({"classes": {"no such label": classes[0]}}))
    with pytest.raises(ValueError, match=r"'classes' keys name unknown classes \['no such label'\]"):
        prepare_external_test(tiny_phantom, bad, classes, tmp_path / "x")
    doc = load_datalist_file(tiny_phantom)
    gone = tmp_path / "gone.json"
    write_datalist(gone, {"test": [{"image": str(tmp_path / f"missing{k}.png"), "label": 0} for k in range(4)]}, classes)
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"classes": {classes[0]: classes[0]}}))
    with pytest.raises(FileNotFoundError, match=r"4 test image\(s\) missing, first: .*missing0.png"):
        prepare_external_test(gone, ok, classes, tmp_path / "x")
    assert doc["test"]


def test_plateau_rule():
    import numpy as np

    from monai_breastlt.bench.lt_stats import has_plateaued

    rng = np.random.default_rng(0)
    rising = list(np.linspace(0.2, 0.6, 40) + rng.normal(0, 0.01, 40))
    flat_noisy = list(0.4 + rng.normal(0, 0.05, 40))
    assert has_plateaued(rising) is False and has_plateaued(flat_noisy) is True
    assert has_plateaued([0.1, 0.5, 0.4, 0.45, 0.42, 0.44, 0.43, 0.41, 0.44, 0.42]) is True
    assert has_plateaued([0.1, 0.2, 0.3]) is None
