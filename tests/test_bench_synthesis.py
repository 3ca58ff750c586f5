from __future__ import annotations

import pytest

import monai_breastlt.bench.synthesis as bench_synthesis
from monai_breastlt.bench.synthesis import benchmark_synthesis, format_synthesis_report
from monai_breastlt.data import generate_phantom
from monai_breastlt.data.datalist import load_datalist_file


def test_bad_profile_is_named(tmp_path):
    with pytest.raises(ValueError, match="profile must be one of"):
        benchmark_synthesis(tmp_path, "huge")


def test_tiny_phase1_on_a_given_data_source_then_resume(tmp_path):
    src = generate_phantom(tmp_path / "src", head_count=10, imbalance_ratio=3, image_size=32, seed=1)
    out = tmp_path / "bench"
    report = benchmark_synthesis(out, "tiny", data_source=src, target_mode="up_to", target_n=8, log=lambda m: None)
    data = load_datalist_file(out / "data" / "datalist.json")
    counts = [sum(i["label"] == c for i in data["training"]) for c in range(len(data["classes"]))]
    pool = load_datalist_file(out / "data" / "pool" / "pool.json")
    made = [sum(e["label"] == c for e in pool["training"]) for c in range(len(data["classes"]))]
    assert made == [max(8 - c, 0) for c in counts]  # the pool fills the given data's own training split
    assert report["settings"]["source"] == str(src) and "head_count" not in report["settings"] and set(report["per_class"]) == set(data["classes"])
    assert 0 <= report["overall"]["sketch_dice"] <= 1 and report["overall"]["fid"] >= 0
    assert "| subtype |" in (out / "synthesis_benchmark.md").read_text() == format_synthesis_report(report)
    logs: list[str] = []
    again = benchmark_synthesis(out, "tiny", data_source=src, target_mode="up_to", target_n=8, log=logs.append, cross_class_sketches=True)
    assert sum("already done" in m for m in logs) == 5  # every stage and the pool are skipped on resume
    # filtered by default: the manifest records per class what was kept and dropped; the report shows it
    filtered = load_datalist_file(out / "data" / "pool" / "pool_filtered.json")
    assert filtered["filtered"]["kept"] == len(filtered["training"]) == report["filtered"]["kept"]
    assert sum(c["kept"] for c in report["filtered"]["per_class"].values()) == report["filtered"]["kept"]
    assert "- filtered pool (pool_filtered.json):" in format_synthesis_report(report)
    assert again["per_class"] == report["per_class"]
    # the cross-class pool: the same models, another pool folder, audited and filtered the same way
    xc = load_datalist_file(out / "data" / "pool_xc" / "pool.json")
    assert [sum(e["label"] == c for e in xc["training"]) for c in range(len(data["classes"]))] == made
    assert again["cross_class"]["filtered"]["kept"] == len(load_datalist_file(out / "data" / "pool_xc" / "pool_filtered.json")["training"])
    assert "### Pool with cross-class sketches" in format_synthesis_report(again)
    # the recorded stage times are carried over, not re-measured (comparing wall times would make the test depend on
    # what else the machine runs)
    trained = ("autoencoder", "perception", "unet", "controlnet", "generate", "classifier")
    assert {k: again["seconds"][k] for k in trained} == {k: report["seconds"][k] for k in trained}


def test_tiny_phantom_judge_learns_from_an_independent_balanced_phantom(tmp_path, monkeypatch):
    calls = []
    real_run = bench_synthesis.run_bundle
    monkeypatch.setattr(bench_synthesis, "run_bundle", lambda b, c, *a, **kw: calls.append((b.name, c, kw)) or real_run(b, c, *a, **kw))
    report = benchmark_synthesis(tmp_path, "tiny", target_mode="each", target_n=2, log=lambda m: None)
    judge_train = [kw for b, c, kw in calls if b == "breastlt_classification" and c == ["train.yaml"]]
    assert [kw["smooth_prob"] for kw in judge_train] == [report["settings"]["judge_smooth_prob"]] * 2  # blur-trained judges
    assert [kw["seed"] for kw in judge_train] == [0, 1]  # two judges, two seeds: fidelity is their mean
    assert len(report["macro_fidelity_judges"]) == 2 and report["macro_fidelity"] == pytest.approx(sum(report["macro_fidelity_judges"]) / 2)
    assert report["macro_real_accuracy"] == pytest.approx(sum(report["macro_real_accuracy_judges"]) / 2)
    judge = load_datalist_file(tmp_path / "judge_data" / "datalist.json")
    data = load_datalist_file(tmp_path / "data" / "datalist.json")
    everything = judge["training"] + judge["validation"] + judge["test"]
    per_class = [sum(i["label"] == c for i in everything) for c in range(len(judge["classes"]))]
    assert judge["classes"] == data["classes"] and per_class == [report["settings"]["judge_count"]] * len(per_class)
    seen = {open(i["image"], "rb").read() for i in data["training"]}
    assert not any(open(i["image"], "rb").read() in seen for i in everything)  # another seed: no shared image
    assert report["real_test_balanced_accuracy"] is not None and all(v["synthetic"] == 2 for v in report["per_class"].values())
    assert all(sum(v["taken_for"].values()) == pytest.approx(1.0) for v in report["per_class"].values())
    assert 0 <= report["macro_real_accuracy"] <= 1  # the judge on real images of the same subtypes, held out from it
    # the report sets fidelity against what the judge gives real images of the same subtypes
    text = format_synthesis_report({**report, "macro_fidelity": 0.4, "macro_real_accuracy": 0.5, "macro_fidelity_judges": [0.3, 0.5],
                                    "macro_real_accuracy_judges": [0.4, 0.6]})
    assert "**40.0 %** (mean of 2 judges: 30.0, 50.0)" in text
    assert "on real images of the same subtypes (macro): 50.0 % (40.0, 60.0) (synthetic / real: 0.80; target >= 0.9)" in text
    assert "synthetic / real" not in format_synthesis_report({**report, "macro_real_accuracy": None})
